/* The RocksDB catalog; see catalog.h. RocksDB's errptr strings become m3
 * codes here, once, with the message kept in m3_errmsg(). */
#include "catalog.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "m3_endian.h"
#include "m3/error.h"
#include "m3/fault.h"

#define LOC_BYTES 28
/* Texts and embeddings are read through it (get_text, get_embedding, the
 * put path's checks); locations are served by the store's location table,
 * so this only needs to hold the hot part of the rest and the index and
 * filter blocks, which are pinned in it. */
#define CATALOG_CACHE_BYTES (64u << 20)

static void be32(uint8_t *p, uint32_t v) {
  for (int i = 3; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}
static void be64(uint8_t *p, uint64_t v) {
  for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}
static uint64_t ld_be(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = v << 8 | p[i];
  return v;
}

static int from_rocks(char *err, const char *what, const char *path) {
  int code = M3_EIO;
  if (strstr(err, "lock") || strstr(err, "LOCK") || strstr(err, "Resource temporarily"))
    code = M3_EBUSY;
  else if (strstr(err, "No space") || strstr(err, "NoSpace"))
    code = M3_ENOSPC;
  else if (strstr(err, "Corruption"))
    code = M3_ECORRUPT;
  else if (strstr(err, "does not exist"))
    code = M3_ENOTFOUND;
  m3__seterr(code, "catalog %s: %s: %s", path, what, err);
  rocksdb_free(err);
  return code;
}

int m3__catalog_open(m3_catalog *c, const char *path, int create, int read_only) {
  memset(c, 0, sizeof *c);
  c->path = strdup(path);
  c->opts = rocksdb_options_create();
  rocksdb_options_set_create_if_missing(c->opts, create ? 1 : 0);
  /* The catalog is small next to the segments: a modest memtable, and
   * point-lookup friendly bloom filters for the fetch path. */
  rocksdb_options_set_write_buffer_size(c->opts, 16u << 20);
  rocksdb_options_set_max_open_files(c->opts, 256);
  rocksdb_block_based_table_options_t *t = rocksdb_block_based_options_create();
  rocksdb_filterpolicy_t *bloom = rocksdb_filterpolicy_create_bloom(10);
  rocksdb_block_based_options_set_filter_policy(t, bloom);
  rocksdb_block_based_options_set_cache_index_and_filter_blocks(t, 1);
  rocksdb_block_based_options_set_pin_l0_filter_and_index_blocks_in_cache(t, 1);
  c->cache = rocksdb_cache_create_lru(CATALOG_CACHE_BYTES);
  rocksdb_block_based_options_set_block_cache(t, c->cache);
  rocksdb_options_set_block_based_table_factory(c->opts, t);
  rocksdb_block_based_options_destroy(t);
  rocksdb_options_set_info_log_level(c->opts, 3 /* ERROR */);
  rocksdb_options_set_keep_log_file_num(c->opts, 2);
  c->ropts = rocksdb_readoptions_create();
  c->scan_ropts = rocksdb_readoptions_create();
  rocksdb_readoptions_set_fill_cache(c->scan_ropts, 0);
  rocksdb_readoptions_set_readahead_size(c->scan_ropts, 2u << 20);
  c->wopts_async = rocksdb_writeoptions_create();
  c->wopts_sync = rocksdb_writeoptions_create();
  rocksdb_writeoptions_set_sync(c->wopts_sync, 1);

  if (!create) {
    char cur[4200];
    snprintf(cur, sizeof cur, "%s/CURRENT", path);
    struct stat st;
    if (stat(cur, &st) != 0) {
      m3__catalog_close(c);
      return m3__seterr(M3_ENOTFOUND, "catalog %s: missing", path);
    }
  }
  char *err = NULL;
  c->db = read_only ? rocksdb_open_for_read_only(c->opts, path, 0, &err)
                    : rocksdb_open(c->opts, path, &err);
  if (err) {
    int rc = from_rocks(err, "open", path);
    m3__catalog_close(c);
    return rc;
  }
  return 0;
}

void m3__catalog_close(m3_catalog *c) {
  if (c->db) rocksdb_close(c->db);
  if (c->opts) rocksdb_options_destroy(c->opts);
  if (c->ropts) rocksdb_readoptions_destroy(c->ropts);
  if (c->scan_ropts) rocksdb_readoptions_destroy(c->scan_ropts);
  if (c->cache) rocksdb_cache_destroy(c->cache);
  if (c->wopts_async) rocksdb_writeoptions_destroy(c->wopts_async);
  if (c->wopts_sync) rocksdb_writeoptions_destroy(c->wopts_sync);
  free(c->path);
  memset(c, 0, sizeof *c);
}

static int get(m3_catalog *c, const uint8_t *key, size_t klen, char **val, size_t *vlen,
               const char *what) {
  char *err = NULL;
  *val = rocksdb_get(c->db, c->ropts, (const char *)key, klen, vlen, &err);
  if (err) return from_rocks(err, what, c->path);
  if (*val == NULL) return M3_ENOTFOUND;
  return 0;
}

int m3__catalog_get_meta(m3_catalog *c, m3_ident *ident) {
  char *v;
  size_t n;
  int rc = get(c, (const uint8_t *)"M", 1, &v, &n, "read meta");
  if (rc == M3_ENOTFOUND) return m3__seterr(rc, "catalog %s: no store meta", c->path);
  if (rc) return rc;
  if (n != 50 || memcmp(v, "M3CT", 4) != 0) {
    rocksdb_free(v);
    return m3__seterr(M3_EBADFORMAT, "catalog %s: meta record malformed", c->path);
  }
  uint32_t version = m3__ld32(v + 4);
  if (version != M3_CATALOG_VERSION) {
    rocksdb_free(v);
    return m3__seterr(M3_EVERSION, "catalog %s: version %u (this build reads %u)", c->path,
                      version, M3_CATALOG_VERSION);
  }
  m3__ident_decode((const uint8_t *)v + 12, ident, m3__ld32(v + 8));
  ident->layout.emb_dim = m3__ld16(v + 48);
  rocksdb_free(v);
  return 0;
}

int m3__catalog_get_next_seg(m3_catalog *c, uint32_t *next) {
  char *v;
  size_t n;
  int rc = get(c, (const uint8_t *)"N", 1, &v, &n, "read next segment id");
  if (rc) return rc;
  *next = n == 4 ? m3__ld32(v) : 0;
  rocksdb_free(v);
  return 0;
}

static void loc_decode(const uint8_t *p, m3_location *l) {
  l->segment = m3__ld32(p);
  l->offset = m3__ld64(p + 4);
  l->mem_len = m3__ld32(p + 12);
  l->rec_len = m3__ld32(p + 16);
  l->mem_crc = m3__ld32(p + 20);
  l->text_crc = m3__ld32(p + 24);
}

static void loc_encode(uint8_t *p, const m3_location *l) {
  m3__st32(p, l->segment);
  m3__st64(p + 4, l->offset);
  m3__st32(p + 12, l->mem_len);
  m3__st32(p + 16, l->rec_len);
  m3__st32(p + 20, l->mem_crc);
  m3__st32(p + 24, l->text_crc);
}

int m3__catalog_get_loc(m3_catalog *c, uint64_t chunk_id, m3_location *loc) {
  uint8_t key[9] = {'C'};
  be64(key + 1, chunk_id);
  char *v;
  size_t n;
  int rc = get(c, key, sizeof key, &v, &n, "read location");
  if (rc) return rc;
  if (n != LOC_BYTES) {
    rocksdb_free(v);
    return m3__seterr(M3_ECORRUPT, "catalog %s: location of chunk %llu malformed", c->path,
                      (unsigned long long)chunk_id);
  }
  loc_decode((const uint8_t *)v, loc);
  rocksdb_free(v);
  return 0;
}

int m3__catalog_get_locs(m3_catalog *c, const uint64_t *ids, size_t n, m3_location *locs,
                         int *status) {
  enum { STACK = 64 };
  uint8_t keybuf[STACK][9];
  const char *keys[STACK];
  size_t klens[STACK], vlens[STACK];
  char *vals[STACK], *errs[STACK];
  int rc = 0;
  for (size_t base = 0; base < n && rc == 0; base += STACK) {
    size_t m = n - base < STACK ? n - base : STACK;
    for (size_t i = 0; i < m; i++) {
      keybuf[i][0] = 'C';
      be64(keybuf[i] + 1, ids[base + i]);
      keys[i] = (const char *)keybuf[i];
      klens[i] = 9;
    }
    rocksdb_multi_get(c->db, c->ropts, m, keys, klens, vals, vlens, errs);
    for (size_t i = 0; i < m; i++) {
      int *st = &status[base + i];
      if (errs[i]) {
        if (rc == 0) rc = from_rocks(errs[i], "multi-get", c->path);
        else rocksdb_free(errs[i]);
        *st = M3_EIO;
      } else if (vals[i] == NULL) {
        *st = M3_ENOTFOUND;
      } else if (vlens[i] != LOC_BYTES) {
        *st = M3_ECORRUPT;
      } else {
        loc_decode((const uint8_t *)vals[i], &locs[base + i]);
        *st = 0;
      }
      if (vals[i]) rocksdb_free(vals[i]);
    }
  }
  return rc;
}

int m3__catalog_get_text(m3_catalog *c, uint64_t chunk_id, char **text, size_t *len) {
  uint8_t key[9] = {'T'};
  be64(key + 1, chunk_id);
  char *v;
  size_t n;
  int rc = get(c, key, sizeof key, &v, &n, "read text");
  if (rc == M3_ENOTFOUND)
    return m3__seterr(rc, "chunk %llu: not in the store", (unsigned long long)chunk_id);
  if (rc) return rc;
  char *t = malloc(n + 1);
  if (t == NULL) {
    rocksdb_free(v);
    return m3__seterr(M3_ENOMEM, "chunk %llu: out of memory for text", (unsigned long long)chunk_id);
  }
  memcpy(t, v, n);
  t[n] = '\0';
  rocksdb_free(v);
  *text = t;
  *len = n;
  return 0;
}

/* Walk keys starting with prefix byte p. */
static int walk(m3_catalog *c, char p,
                int (*fn)(void *ud, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl),
                void *ud) {
  /* An upper bound at the next prefix: the iterator stops inside the
   * prefix's own files instead of opening the next prefix's to find its
   * first key (and skips deletions at the end without reading past). */
  char upper = (char)(p + 1);
  rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
  rocksdb_readoptions_set_fill_cache(ro, 0);
  rocksdb_readoptions_set_readahead_size(ro, 2u << 20);
  rocksdb_readoptions_set_iterate_upper_bound(ro, &upper, 1);
  rocksdb_iterator_t *it = rocksdb_create_iterator(c->db, ro);
  int rc = 0;
  for (rocksdb_iter_seek(it, &p, 1); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
    size_t kl, vl;
    const char *k = rocksdb_iter_key(it, &kl);
    if (kl == 0 || k[0] != p) break;
    const char *v = rocksdb_iter_value(it, &vl);
    if ((rc = fn(ud, (const uint8_t *)k, kl, (const uint8_t *)v, vl)) != 0) break;
  }
  if (rc == 0) {
    char *err = NULL;
    rocksdb_iter_get_error(it, &err);
    if (err) rc = from_rocks(err, "iterate", c->path);
  }
  rocksdb_iter_destroy(it);
  rocksdb_readoptions_destroy(ro);
  return rc;
}

int m3__catalog_texts(m3_catalog *c,
                      int (*fn)(void *ud, uint64_t id, const uint8_t *text, size_t tlen,
                                const uint8_t *emb, size_t elen),
                      void *ud) {
  rocksdb_iterator_t *t = rocksdb_create_iterator(c->db, c->scan_ropts);
  rocksdb_iterator_t *e = rocksdb_create_iterator(c->db, c->scan_ropts);
  int rc = 0;
  rocksdb_iter_seek(e, "E", 1);
  for (rocksdb_iter_seek(t, "T", 1); rocksdb_iter_valid(t); rocksdb_iter_next(t)) {
    size_t kl, vl, ekl = 0, evl = 0;
    const char *k = rocksdb_iter_key(t, &kl);
    if (kl == 0 || k[0] != 'T') break;
    if (kl != 9) {
      rc = m3__seterr(M3_ECORRUPT, "catalog %s: malformed text entry", c->path);
      break;
    }
    uint64_t id = ld_be((const uint8_t *)k + 1, 8);
    const char *v = rocksdb_iter_value(t, &vl), *ev = NULL;
    /* Step the embedding iterator up to id. */
    while (rocksdb_iter_valid(e)) {
      const char *ek = rocksdb_iter_key(e, &ekl);
      if (ekl != 9 || ek[0] != 'E' || ld_be((const uint8_t *)ek + 1, 8) >= id) break;
      rocksdb_iter_next(e);
    }
    if (rocksdb_iter_valid(e)) {
      const char *ek = rocksdb_iter_key(e, &ekl);
      if (ekl == 9 && ek[0] == 'E' && ld_be((const uint8_t *)ek + 1, 8) == id)
        ev = rocksdb_iter_value(e, &evl);
    }
    if ((rc = fn(ud, id, (const uint8_t *)v, vl, (const uint8_t *)ev, ev ? evl : 0)) != 0) break;
  }
  char *err = NULL;
  if (rc == 0) rocksdb_iter_get_error(t, &err);
  if (rc == 0 && !err) rocksdb_iter_get_error(e, &err);
  if (err) rc = from_rocks(err, "iterate texts", c->path);
  rocksdb_iter_destroy(t);
  rocksdb_iter_destroy(e);
  return rc;
}

typedef struct seg_walk {
  int (*fn)(void *ud, uint32_t seg, uint64_t end);
  void *ud;
  const char *path;
} seg_walk;

static int seg_entry(void *ud, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl) {
  seg_walk *w = ud;
  if (kl != 5 || vl != 8)
    return m3__seterr(M3_ECORRUPT, "catalog %s: malformed segment entry", w->path);
  return w->fn(w->ud, (uint32_t)ld_be(k + 1, 4), m3__ld64(v));
}

int m3__catalog_segments(m3_catalog *c, int (*fn)(void *ud, uint32_t seg, uint64_t end),
                         void *ud) {
  seg_walk w = {fn, ud, c->path};
  return walk(c, 'S', seg_entry, &w);
}

typedef struct chunk_walk {
  int (*fn)(void *ud, uint64_t id, const m3_location *loc);
  void *ud;
  const char *path;
} chunk_walk;

static int chunk_entry(void *ud, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl) {
  chunk_walk *w = ud;
  if (kl != 9 || vl != LOC_BYTES)
    return m3__seterr(M3_ECORRUPT, "catalog %s: malformed location entry", w->path);
  m3_location loc;
  loc_decode(v, &loc);
  return w->fn(w->ud, ld_be(k + 1, 8), &loc);
}

int m3__catalog_chunks(m3_catalog *c,
                       int (*fn)(void *ud, uint64_t id, const m3_location *loc), void *ud) {
  chunk_walk w = {fn, ud, c->path};
  return walk(c, 'C', chunk_entry, &w);
}

int m3__catalog_get_embedding(m3_catalog *c, uint64_t chunk_id, float *out, size_t n) {
  uint8_t key[9] = {'E'};
  be64(key + 1, chunk_id);
  char *v;
  size_t len;
  int rc = get(c, key, sizeof key, &v, &len, "read embedding");
  if (rc == M3_ENOTFOUND)
    return m3__seterr(rc, "chunk %llu: no embedding in the store", (unsigned long long)chunk_id);
  if (rc) return rc;
  if (len != 4 * n) {
    rocksdb_free(v);
    return m3__seterr(M3_ECORRUPT, "catalog %s: embedding of chunk %llu has %zu bytes, want %zu",
                      c->path, (unsigned long long)chunk_id, len, 4 * n);
  }
  for (size_t i = 0; i < n; i++) {
    uint32_t bits = m3__ld32(v + 4 * i);
    memcpy(&out[i], &bits, 4);
  }
  rocksdb_free(v);
  return 0;
}

typedef struct emb_walk {
  int (*fn)(void *ud, uint64_t id, const uint8_t *emb, size_t n);
  void *ud;
} emb_walk;

static int emb_entry(void *ud, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl) {
  emb_walk *w = ud;
  if (kl != 9 || vl % 4) return m3__seterr(M3_ECORRUPT, "catalog: malformed embedding entry");
  return w->fn(w->ud, ld_be(k + 1, 8), v, vl / 4);
}

int m3__catalog_embeddings(m3_catalog *c,
                           int (*fn)(void *ud, uint64_t id, const uint8_t *emb, size_t n),
                           void *ud) {
  emb_walk w = {fn, ud};
  return walk(c, 'E', emb_entry, &w);
}

static uint64_t prop(m3_catalog *c, const char *name) {
  uint64_t v = 0;
  return rocksdb_property_int(c->db, name, &v) == 0 ? v : 0;
}

uint64_t m3__catalog_estimate_chunks(m3_catalog *c, int with_emb) {
  return prop(c, "rocksdb.estimate-num-keys") / (with_emb ? 3 : 2);
}

uint64_t m3__catalog_ram_bytes(m3_catalog *c) {
  return (uint64_t)rocksdb_cache_get_usage(c->cache) + prop(c, "rocksdb.cur-size-all-mem-tables") +
         prop(c, "rocksdb.estimate-table-readers-mem");
}

uint64_t m3__catalog_disk_bytes(m3_catalog *c) {
  uint64_t total = 0;
  DIR *d = opendir(c->path);
  if (d == NULL) return 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    char p[4400];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", c->path, e->d_name);
    if (stat(p, &st) == 0 && S_ISREG(st.st_mode)) total += (uint64_t)st.st_size;
  }
  closedir(d);
  return total;
}

m3__wbatch *m3__batch_new(void) { return rocksdb_writebatch_create(); }

void m3__batch_free(m3__wbatch *b) {
  if (b) rocksdb_writebatch_destroy(b);
}

void m3__batch_clear(m3__wbatch *b) { rocksdb_writebatch_clear(b); }

void m3__batch_put_meta(m3__wbatch *b, const m3_ident *ident) {
  uint8_t v[50];
  memcpy(v, "M3CT", 4);
  m3__st32(v + 4, M3_CATALOG_VERSION);
  m3__st32(v + 8, ident->align);
  m3__ident_encode(v + 12, ident);
  m3__st16(v + 48, ident->layout.emb_dim);
  rocksdb_writebatch_put(b, "M", 1, (const char *)v, sizeof v);
}

void m3__batch_put_next_seg(m3__wbatch *b, uint32_t next) {
  uint8_t v[4];
  m3__st32(v, next);
  rocksdb_writebatch_put(b, "N", 1, (const char *)v, sizeof v);
}

void m3__batch_put_segment(m3__wbatch *b, uint32_t seg, uint64_t end) {
  uint8_t k[5] = {'S'}, v[8];
  be32(k + 1, seg);
  m3__st64(v, end);
  rocksdb_writebatch_put(b, (const char *)k, sizeof k, (const char *)v, sizeof v);
}

void m3__batch_del_segment(m3__wbatch *b, uint32_t seg) {
  uint8_t k[5] = {'S'};
  be32(k + 1, seg);
  rocksdb_writebatch_delete(b, (const char *)k, sizeof k);
}

void m3__batch_put_loc(m3__wbatch *b, uint64_t id, const m3_location *loc) {
  uint8_t k[9] = {'C'}, v[LOC_BYTES];
  be64(k + 1, id);
  loc_encode(v, loc);
  rocksdb_writebatch_put(b, (const char *)k, sizeof k, (const char *)v, sizeof v);
}

void m3__batch_put_chunk(m3__wbatch *b, uint64_t id, const m3_location *loc, const char *text,
                         size_t text_len, const uint8_t *emb, size_t emb_bytes) {
  m3__batch_put_loc(b, id, loc);
  uint8_t k[9] = {'T'};
  be64(k + 1, id);
  rocksdb_writebatch_put(b, (const char *)k, sizeof k, text ? text : "", text_len);
  if (emb_bytes) {
    k[0] = 'E';
    rocksdb_writebatch_put(b, (const char *)k, sizeof k, (const char *)emb, emb_bytes);
  }
}

void m3__batch_del_chunk(m3__wbatch *b, uint64_t id) {
  uint8_t k[9] = {'C'};
  be64(k + 1, id);
  rocksdb_writebatch_delete(b, (const char *)k, sizeof k);
  k[0] = 'T';
  rocksdb_writebatch_delete(b, (const char *)k, sizeof k);
  k[0] = 'E';
  rocksdb_writebatch_delete(b, (const char *)k, sizeof k);
}

int m3__catalog_commit(m3_catalog *c, m3__wbatch *b, int sync) {
  int ferr = m3__fault("catalog.write");
  if (ferr) return m3__syserr(ferr, "catalog %s: write batch", c->path);
  char *err = NULL;
  rocksdb_write(c->db, sync ? c->wopts_sync : c->wopts_async, b, &err);
  if (err) return from_rocks(err, "write batch", c->path);
  return 0;
}

/* ---- bulk ingest ------------------------------------------------------ */

/* One SST of the ingest: the keys of one prefix ('C', 'E' or 'T'). The
 * writer is opened at the first key, so that a prefix with no key (no
 * embeddings) makes no file: RocksDB refuses empty SSTs. */
typedef struct sst_out {
  rocksdb_sstfilewriter_t *w;
  char path[4300];
  int open;
} sst_out;

static int sst_key(sst_out *o, char p, uint64_t id, const void *v, size_t vl, int del,
                   char **err) {
  if (!o->open) {
    rocksdb_sstfilewriter_open(o->w, o->path, err);
    if (*err) return -1;
    o->open = 1;
  }
  uint8_t k[9] = {(uint8_t)p};
  be64(k + 1, id);
  if (del) rocksdb_sstfilewriter_delete(o->w, (const char *)k, sizeof k, err);
  else rocksdb_sstfilewriter_put(o->w, (const char *)k, sizeof k, v ? (const char *)v : "", vl, err);
  return *err ? -1 : 0;
}

/*
 * Why one SST per key prefix, not one for all three: a file holding 'C',
 * 'E' and 'T' keys spans 'C'..'T', so every checkpoint's file overlaps
 * every other one (and the 'S' keys in the memtable, which forced a flush
 * per ingest): all of them landed in L0 and RocksDB compacted the whole
 * catalog into L1 again and again, O(N^2) bytes for N memories (bulk write
 * fell from 160k to 37k records/s between 10^6 and 10^7, and open, which
 * walks the 'C' keys through those overlapping files, from 1 s to 26 s).
 * Per-prefix files of increasing ids overlap nothing: RocksDB places each
 * at the bottom level as it is, with no compaction. The files of one call
 * are ingested in one IngestExternalFile, which is atomic.
 */
int m3__catalog_ingest(m3_catalog *c, const char *tmp_path, const m3__chunk_entry *v, size_t n) {
  if (n == 0) return 0;
  int ferr = m3__fault("catalog.ingest");
  if (ferr) return m3__syserr(ferr, "catalog %s: ingest %s", c->path, tmp_path);
  static const char prefixes[3] = {'C', 'E', 'T'};
  rocksdb_envoptions_t *env = rocksdb_envoptions_create();
  rocksdb_ingestexternalfileoptions_t *io = rocksdb_ingestexternalfileoptions_create();
  rocksdb_ingestexternalfileoptions_set_move_files(io, 1);
  sst_out out[3];
  size_t base = strlen(tmp_path);
  if (base > 4 && !strcmp(tmp_path + base - 4, ".sst")) base -= 4;
  for (int i = 0; i < 3; i++) {
    out[i].w = rocksdb_sstfilewriter_create(env, c->opts);
    out[i].open = 0;
    snprintf(out[i].path, sizeof out[i].path, "%.*s-%c.sst", (int)base, tmp_path, prefixes[i]);
  }
  char *err = NULL;
  int rc = 0;
  const char *what = "write SST";
  const char *where = tmp_path;
  /* Keys in byte order within each file. */
  for (size_t i = 0; i < n && !err; i++) {
    uint8_t val[LOC_BYTES];
    if (!v[i].deleted) loc_encode(val, &v[i].loc);
    sst_key(&out[0], 'C', v[i].id, val, sizeof val, v[i].deleted, &err);
  }
  where = out[0].path;
  for (size_t i = 0; i < n && !err; i++)
    if (v[i].emb_bytes || v[i].deleted)
      sst_key(&out[1], 'E', v[i].id, v[i].emb, v[i].emb_bytes, v[i].deleted, &err);
  if (!err) where = out[2].path;
  for (size_t i = 0; i < n && !err; i++)
    sst_key(&out[2], 'T', v[i].id, v[i].text, v[i].text_len, v[i].deleted, &err);
  const char *files[3];
  size_t nfiles = 0;
  for (int i = 0; i < 3 && !err; i++) {
    if (!out[i].open) continue;
    where = out[i].path;
    rocksdb_sstfilewriter_finish(out[i].w, &err);
    files[nfiles++] = out[i].path;
  }
  if (!err) {
    what = "ingest SST";
    where = tmp_path;
    rocksdb_ingest_external_file(c->db, files, nfiles, io, &err);
  }
  if (err) {
    char msg[4400];
    snprintf(msg, sizeof msg, "%s %s", what, where);
    rc = from_rocks(err, msg, c->path);
  }
  for (int i = 0; i < 3; i++) {
    if (out[i].open) unlink(out[i].path); /* moved in (a hard link) or garbage */
    rocksdb_sstfilewriter_destroy(out[i].w);
  }
  rocksdb_ingestexternalfileoptions_destroy(io);
  rocksdb_envoptions_destroy(env);
  return rc;
}
