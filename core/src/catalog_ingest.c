/*
 * Bulk loading of the catalog: chunk entries written as sorted SST files
 * (RocksDB SstFileWriter) and ingested with IngestExternalFile, for
 * m3_store_merge, which writes millions of entries into a fresh catalog at
 * once; a write batch per record would go through the memtable and WAL and
 * be compacted again. The key schema is catalog.h's; this file is the one
 * place outside catalog.c that knows RocksDB's bulk API.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "catalog.h"
#include "m3/error.h"

struct m3__sst {
  rocksdb_envoptions_t *env;
  rocksdb_options_t *opts;
  rocksdb_sstfilewriter_t *w;
  char *path;
  uint8_t last[9];
  uint64_t n;
  int finished;
};

int m3__sst_open(const char *path, m3__sst **out) {
  m3__sst *t = calloc(1, sizeof *t);
  if (t == NULL || (t->path = strdup(path)) == NULL) {
    free(t);
    return m3__seterr(M3_ENOMEM, "sst %s: out of memory", path);
  }
  t->env = rocksdb_envoptions_create();
  t->opts = rocksdb_options_create();
  t->w = rocksdb_sstfilewriter_create(t->env, t->opts);
  char *err = NULL;
  rocksdb_sstfilewriter_open(t->w, path, &err);
  if (err) {
    int rc = m3__catalog_rocks_err(err, "open sst", path);
    m3__sst_free(t);
    return rc;
  }
  *out = t;
  return 0;
}

int m3__sst_put(m3__sst *t, char kind, uint64_t id, const void *val, size_t len) {
  uint8_t key[9];
  m3__catalog_chunk_key(key, kind, id);
  if (t->n && memcmp(key, t->last, sizeof key) <= 0)
    return m3__seterr(M3_EINVAL, "sst %s: key %c%llu not after the previous one", t->path, kind,
                      (unsigned long long)id);
  char *err = NULL;
  rocksdb_sstfilewriter_put(t->w, (const char *)key, sizeof key, val ? val : "", len, &err);
  if (err) return m3__catalog_rocks_err(err, "sst put", t->path);
  memcpy(t->last, key, sizeof key);
  t->n++;
  return 0;
}

uint64_t m3__sst_entries(const m3__sst *t) { return t->n; }

int m3__sst_finish(m3__sst *t) {
  char *err = NULL;
  rocksdb_sstfilewriter_finish(t->w, &err);
  if (err) return m3__catalog_rocks_err(err, "finish sst", t->path);
  t->finished = 1;
  return 0;
}

void m3__sst_free(m3__sst *t) {
  if (t == NULL) return;
  if (t->w) rocksdb_sstfilewriter_destroy(t->w);
  if (t->opts) rocksdb_options_destroy(t->opts);
  if (t->env) rocksdb_envoptions_destroy(t->env);
  if (!t->finished && t->path) unlink(t->path);
  free(t->path);
  free(t);
}

int m3__catalog_ingest(m3_catalog *c, const char *const *paths, size_t n) {
  rocksdb_ingestexternalfileoptions_t *io = rocksdb_ingestexternalfileoptions_create();
  rocksdb_ingestexternalfileoptions_set_move_files(io, 1);
  char *err = NULL;
  rocksdb_ingest_external_file(c->db, paths, n, io, &err);
  rocksdb_ingestexternalfileoptions_destroy(io);
  if (err) return m3__catalog_rocks_err(err, "ingest sst", c->path);
  return 0;
}
