/*
 * The memory record: one explicit memory as stored in a segment, sent on the
 * wire and handed to decoders. Self-describing and checksummed, so that a
 * store's catalog can be rebuilt from its segments and corruption is caught
 * wherever the bytes travel.
 *
 * Layout (little-endian; offsets in bytes):
 *
 *   off size field
 *     0    4 magic        "M3MR"
 *     4    2 version      1
 *     6    2 flags        bit 0: tombstone (the chunk id was deleted)
 *     8    8 chunk_id
 *    16    4 chunk_len    tokens in the reference chunk (prefix excluded)
 *    20    2 n_layers     |
 *    22    2 n_kv_heads   | the memory's shape (m3_spec)
 *    24    2 n_tokens     |
 *    26    2 head_dim     |
 *    28    2 codec_kind   m3_codec_kind
 *    30    2 code_bytes   bytes per coded vector
 *    32    8 codec_fp     fingerprint of the codec set that made the codes
 *    40    4 mem_bytes    positions + codes bytes that follow the header
 *    44    4 text_bytes   UTF-8 chunk text after the memory
 *    48    4 mem_crc      CRC32C of the mem_bytes after the header
 *    52    4 text_crc     CRC32C of the tail: text and embedding
 *    56    2 emb_dim      dims of the retrieval embedding (0: none)
 *    58    2 reserved     0
 *    60    4 header_crc   CRC32C of bytes 0..59
 *    64      positions    u16 (n_layers, n_kv_heads, n_tokens), zero-padded
 *                         to a multiple of 8 bytes
 *     .      codes        u8  (n_layers, 2 [K,V], n_kv_heads, n_tokens,
 *                         code_bytes): a decoder walks them in order and
 *                         writes a (layer, K|V, head, token, dim) tensor
 *     .      text         text_bytes of UTF-8 (not NUL-terminated)
 *     .      embedding    f32 (emb_dim): the chunk's retrieval embedding
 *
 * The memory part (header + positions + codes, m3_record_mem_size) is what a
 * fetch reads and returns; the tail (text and embedding) rides along so that
 * the catalog and the retrieval index can be rebuilt from segments, and is
 * normally served from the catalog. A tombstone has mem_bytes = text_bytes = 0.
 * Inside a segment each record starts on the segment's alignment (512 bytes by
 * default) and the gap after it is zero.
 */
#ifndef M3_RECORD_H
#define M3_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "m3/spec.h"

#define M3_RECORD_MAGIC "M3MR"
#define M3_RECORD_VERSION 1
#define M3_RECORD_HEADER_SIZE 64
#define M3_RECORD_TOMBSTONE 0x1u

/* A parsed record: fields from the header, pointers into the caller's bytes. */
typedef struct m3_record {
  uint64_t chunk_id;
  uint32_t chunk_len;
  uint16_t flags;
  m3_layout layout;          /* shape, codec kind, code bytes, fingerprint */
  uint32_t mem_bytes;
  uint32_t text_bytes;
  uint32_t mem_crc;
  uint32_t text_crc;
  const uint16_t *positions; /* (n_layers, n_kv_heads, n_tokens); NULL for tombstones */
  const uint8_t *codes;      /* (n_layers, 2, n_kv_heads, n_tokens, code_bytes) */
  const char *text;          /* text_bytes, or NULL when not in the parsed bytes */
  const uint8_t *embedding;  /* layout.emb_dim little-endian f32, or NULL when
                                absent or not in the parsed bytes */
} m3_record;

/* What a writer supplies for one memory. The pointers are borrowed for the
 * duration of the call. */
typedef struct m3_record_in {
  uint64_t chunk_id;
  uint32_t chunk_len;
  const uint16_t *positions; /* m3_spec_positions(spec) entries */
  const void *codes;         /* m3_layout_codes_bytes(layout) bytes */
  const char *text;          /* may be NULL when text_len is 0 */
  size_t text_len;
  const float *embedding;    /* layout.emb_dim floats; NULL stores zeros */
} m3_record_in;

/* Header + positions + codes: the bytes a fetch returns. */
size_t m3_record_mem_size(const m3_layout *l);
/* Whole record: header + memory + text + embedding (unpadded). */
size_t m3_record_size(const m3_layout *l, size_t text_len);

/*
 * Write one record into buf (cap bytes). Returns the record's size, or a
 * negative m3 code (M3_EINVAL when cap is too small or the layout is bad).
 */
long m3_record_encode(void *buf, size_t cap, const m3_layout *l, const m3_record_in *in);

/* Write a tombstone for chunk_id into buf (at least M3_RECORD_HEADER_SIZE). */
long m3_record_encode_tombstone(void *buf, size_t cap, uint64_t chunk_id);

/* Whole size of a parsed record: header + memory + text + embedding. */
size_t m3_record_total_size(const m3_record *r);

/* How much checking m3_record_parse does beyond the header. */
enum {
  M3_PARSE_HEADER = 0,   /* header fields and header CRC only */
  M3_PARSE_MEM = 1,      /* also the memory CRC (needs the memory bytes) */
  M3_PARSE_TEXT = 2,     /* also the tail CRC (needs the text and embedding) */
  M3_PARSE_ALL = 3,
};

/*
 * Parse and validate the record at buf (len bytes available). Every header
 * field is checked: magic (M3_EBADFORMAT), version (M3_EVERSION), header CRC
 * (M3_ECORRUPT), shape and sizes consistent with the codec (M3_EBADFORMAT),
 * and, as `check` asks, the memory and text CRCs (M3_ECORRUPT). On success
 * fills *out with pointers into buf. The m3_errmsg() detail names the field.
 */
int m3_record_parse(const void *buf, size_t len, int check, m3_record *out);

#endif /* M3_RECORD_H */
