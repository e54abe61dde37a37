/*
 * The catalog: a RocksDB database inside the store directory that maps chunk
 * ids to record locations and texts and lists the live segments. Everything
 * in it can be rebuilt from the segments (m3_store_repair). Private to core/.
 *
 * Keys (one column family; ids big-endian so that iteration is in id order):
 *   "M"                  store meta: "M3CT", version u32, align u32, ident (36 B),
 *                        emb_dim u16
 *   "N"                  next segment id, u32
 *   'S' + be32 segment   committed end of a live segment, u64
 *   'C' + be64 chunk id  location: segment u32, offset u64, mem_len u32,
 *                        rec_len u32, mem_crc u32, text_crc u32 (28 B)
 *   'T' + be64 chunk id  chunk text
 *   'E' + be64 chunk id  retrieval embedding (emb_dim little-endian f32)
 */
#ifndef M3_CATALOG_H
#define M3_CATALOG_H

#include <rocksdb/c.h>
#include <stddef.h>
#include <stdint.h>

#include "m3/store.h"
#include "segment.h"

#define M3_CATALOG_VERSION 1

typedef struct m3_catalog {
  rocksdb_t *db;
  rocksdb_options_t *opts;
  rocksdb_readoptions_t *ropts;
  rocksdb_readoptions_t *scan_ropts; /* full walks: no block caching, readahead */
  rocksdb_cache_t *cache;            /* block cache (CATALOG_CACHE_BYTES) */
  rocksdb_writeoptions_t *wopts_async;
  rocksdb_writeoptions_t *wopts_sync;
  char *path;
} m3_catalog;

/* Open the catalog at path (create when create). M3_EBUSY when another
 * process holds it; M3_ENOTFOUND when absent and not create. */
int m3__catalog_open(m3_catalog *c, const char *path, int create, int read_only);
void m3__catalog_close(m3_catalog *c);

/* Store meta. M3_ENOTFOUND when the catalog has none. */
int m3__catalog_get_meta(m3_catalog *c, m3_ident *ident);
int m3__catalog_get_next_seg(m3_catalog *c, uint32_t *next);

/* Location of chunk_id; M3_ENOTFOUND when absent. */
int m3__catalog_get_loc(m3_catalog *c, uint64_t chunk_id, m3_location *loc);
/* Locations of n ids in one MultiGet; status[i] is 0 or M3_ENOTFOUND. */
int m3__catalog_get_locs(m3_catalog *c, const uint64_t *ids, size_t n, m3_location *locs,
                         int *status);
/* Text of chunk_id (malloc'ed, NUL-terminated). */
int m3__catalog_get_text(m3_catalog *c, uint64_t chunk_id, char **text, size_t *len);

/* Walk the 'S' entries (segment id, committed end) in order. */
int m3__catalog_segments(m3_catalog *c, int (*fn)(void *ud, uint32_t seg, uint64_t end),
                         void *ud);
/* Embedding of chunk_id into out (n floats). M3_ENOTFOUND when absent. */
int m3__catalog_get_embedding(m3_catalog *c, uint64_t chunk_id, float *out, size_t n);
/* Walk the 'E' entries in id order; emb holds n little-endian f32. */
int m3__catalog_embeddings(m3_catalog *c,
                           int (*fn)(void *ud, uint64_t id, const uint8_t *emb, size_t n),
                           void *ud);

/* Walk the 'T' entries in id order with each id's 'E' entry beside it
 * (emb NULL, elen 0 when it has none): two iterators in step. */
int m3__catalog_texts(m3_catalog *c,
                      int (*fn)(void *ud, uint64_t id, const uint8_t *text, size_t tlen,
                                const uint8_t *emb, size_t elen),
                      void *ud);

/* Walk the 'C' entries in id order. */
int m3__catalog_chunks(m3_catalog *c,
                       int (*fn)(void *ud, uint64_t id, const m3_location *loc), void *ud);

/* About how many 'C' entries there are (RocksDB's key estimate divided by
 * the keys per memory: 3 with embeddings, 2 without), for sizing; may be 0
 * or off by a factor. */
uint64_t m3__catalog_estimate_chunks(m3_catalog *c, int with_emb);
/* RAM RocksDB holds for the catalog: block cache in use, memtables, table
 * readers (index and filter blocks outside the cache). */
uint64_t m3__catalog_ram_bytes(m3_catalog *c);

/* Approximate bytes of the catalog's files. */
uint64_t m3__catalog_disk_bytes(m3_catalog *c);

/* ---- write batches -------------------------------------------------- */
typedef rocksdb_writebatch_t m3__wbatch;

m3__wbatch *m3__batch_new(void);
void m3__batch_free(m3__wbatch *b);
void m3__batch_clear(m3__wbatch *b);
void m3__batch_put_meta(m3__wbatch *b, const m3_ident *ident);
void m3__batch_put_next_seg(m3__wbatch *b, uint32_t next);
void m3__batch_put_segment(m3__wbatch *b, uint32_t seg, uint64_t end);
void m3__batch_del_segment(m3__wbatch *b, uint32_t seg);
void m3__batch_put_chunk(m3__wbatch *b, uint64_t id, const m3_location *loc, const char *text,
                         size_t text_len, const uint8_t *emb, size_t emb_bytes);
/* Only the location (the text is unchanged, e.g. after compaction). */
void m3__batch_put_loc(m3__wbatch *b, uint64_t id, const m3_location *loc);
void m3__batch_del_chunk(m3__wbatch *b, uint64_t id);

/* Apply the batch atomically (fault point catalog.write). */
int m3__catalog_commit(m3_catalog *c, m3__wbatch *b, int sync);

/* ---- bulk ingest ----------------------------------------------------- */

/* One memory's catalog entries ('C', 'E', 'T'), for m3__catalog_ingest. */
typedef struct m3__chunk_entry {
  uint64_t id;
  m3_location loc;
  const char *text;   /* text_len bytes, borrowed */
  size_t text_len;
  const uint8_t *emb; /* emb_bytes bytes (little-endian f32), borrowed; NULL when 0 */
  size_t emb_bytes;
  int deleted;        /* 1: remove the id's entries instead (loc, text, emb unused) */
} m3__chunk_entry;

/*
 * Write the entries of v (n, sorted by id, no id twice) as sorted SST
 * files, one per key prefix ('C', 'E', 'T'), named after tmp_path
 * ("DIR/bulk-1-0.sst" gives DIR/bulk-1-0-C.sst, -E.sst, -T.sst), and
 * ingest them into the catalog in one RocksDB IngestExternalFile (the
 * files moved in): all of them become visible at once, or none. Entries
 * replace what the catalog held for those ids (deleted ones remove it).
 * Files left by a crash are garbage (the store removes bulk-*.sst at
 * open). Fault point catalog.ingest.
 */
int m3__catalog_ingest(m3_catalog *c, const char *tmp_path, const m3__chunk_entry *v, size_t n);

#endif /* M3_CATALOG_H */
