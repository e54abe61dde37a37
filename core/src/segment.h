/*
 * Segment files: the append-only home of memory records, and the store's
 * source of truth. Private to core/.
 *
 * A segment file seg-NNNNNN.m3s starts with one header unit (the store's
 * record alignment, at least 512 bytes; only the first 64 are used, the rest
 * is zero), followed by records (m3/record.h), each starting on an alignment
 * boundary with zeros up to the next one.
 *
 * Segment header (little-endian):
 *   off size field
 *     0    4 magic       "M3SG"
 *     4    2 version     1
 *     6    2 emb_dim     retrieval embedding dims stored with each record
 *     8    4 segment id
 *    12    4 align       record alignment of the store
 *    16   16 store uuid  the same in every segment and the catalog
 *    32    8 n_layers, n_kv_heads, n_tokens, head_dim (u16 each)
 *    40    2 codec_kind
 *    42    2 code_bytes
 *    44    8 codec_fp
 *    52    8 created     unix time, nanoseconds
 *    60    4 header_crc  CRC32C of bytes 0..59
 */
#ifndef M3_SEGMENT_H
#define M3_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "m3/record.h"
#include "m3/spec.h"
#include "m3/store.h"

#define M3_SEGMENT_MAGIC "M3SG"
#define M3_SEGMENT_VERSION 1

/* What every segment of a store and its catalog agree on. */
typedef struct m3_ident {
  uint8_t uuid[16];
  m3_layout layout;
  uint32_t align;
} m3_ident;

typedef struct m3_segment {
  uint32_t id;
  int fd;             /* read-write (or read-only) buffered descriptor */
  int dfd;            /* O_DIRECT read descriptor, or -1 */
  uint32_t dio_align; /* offset/length alignment O_DIRECT needs here */
  uint64_t size;      /* bytes in the file that belong to the store */
} m3_segment;

/* "DIR/seg-%06u.m3s" into buf. */
char *m3__segment_path(const char *dir, uint32_t id, char *buf, size_t cap);

/* Parse "seg-%06u.m3s"; returns 1 and the id when name is a segment file. */
int m3__segment_parse_name(const char *name, uint32_t *id);

/*
 * Create segment id in dir with its header, synced (file and directory).
 * The file is first written as NAME.tmp and renamed, so that a crash never
 * leaves a segment without a header. *out owns the descriptors
 * (m3__segment_close).
 */
int m3__segment_create(const char *dir, uint32_t id, const m3_ident *ident, int direct,
                       m3_segment *out);

/*
 * Open segment id and check its header against ident (when not NULL), or
 * return the header's identity in *found (when not NULL). Errors name the file.
 */
int m3__segment_open(const char *dir, uint32_t id, int read_only, int direct,
                     const m3_ident *ident, m3_ident *found, m3_segment *out);

void m3__segment_close(m3_segment *seg);

/* fsync a directory (after creating or renaming entries in it). */
int m3__fsync_dir(const char *dir);

/* Append len bytes at seg->size (fault point segment.write) and fdatasync
 * (segment.sync). On failure the file is cut back to seg->size. seg->size is
 * NOT advanced: the caller does that once the catalog commit succeeded. */
int m3__segment_append(m3_segment *seg, const char *dir, const void *buf, size_t len);

/* Cut the file back to size bytes (and sync). */
int m3__segment_truncate(m3_segment *seg, const char *dir, uint64_t size);

/* Callbacks of a scan: on_record for each valid record (all checksums
 * checked, text included), on_problem for each damaged one. */
typedef struct m3_scan_cb {
  void *ud;
  int (*on_record)(void *ud, const m3_segment *seg, uint64_t off, const m3_record *r,
                   uint32_t rec_len);
  void (*on_problem)(void *ud, const m3_problem *p);
  /* The store's layout: a valid record of another layout is reported
   * (M3_ESHAPE) and skipped, never given to on_record (its sizes would
   * overflow buffers planned for the store's layout). NULL: no check. */
  const m3_layout *layout;
} m3_scan_cb;

/*
 * Walk the records of seg from offset start to its end of file. A damaged
 * record whose header is intact is reported and skipped by its length; when
 * the header is unreadable the scan looks for the next valid record at each
 * alignment boundary. *good_end receives the end of the last complete record
 * (valid, or damaged with an intact header; at least start): the bytes after
 * it hold no complete record and may be cut. They are a torn write (not
 * reported) when they are zeros, or a record with a valid header that the
 * file ends inside or whose end is zeros (an interrupted write after the
 * file grew); garbage where a record should start is damage (reported).
 * *damaged counts reported problems.
 */
int m3__segment_scan(const m3_segment *seg, const char *dir, uint64_t start, uint32_t align,
                     const m3_scan_cb *cb, uint64_t *good_end, uint64_t *damaged);

/* Encode/parse the identity fields shared by segment headers and the catalog
 * meta (36 bytes: uuid, layout, align... see the header layout above). */
void m3__ident_encode(uint8_t *p, const m3_ident *id);   /* writes 16+20 bytes */
void m3__ident_decode(const uint8_t *p, m3_ident *id, uint32_t align);
int m3__ident_equal(const m3_ident *a, const m3_ident *b);

static inline uint64_t m3__round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

#endif /* M3_SEGMENT_H */
