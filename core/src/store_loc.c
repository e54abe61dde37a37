/*
 * Where records live: the store's id -> location lookups through the
 * in-RAM location table (loctab.h), kept equal to the catalog's 'C'
 * entries, and the check that they are equal. The fetch path (store.c,
 * store_aio.c) asks here, never RocksDB.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "m3/error.h"
#include "m3/internal/fsutil.h"
#include "m3/log.h"
#include "store_int.h"

typedef struct build_ctx {
  m3_loctab *t;
  uint64_t n, expect;
} build_ctx;

static int build_entry(void *ud, uint64_t id, const m3_location *loc) {
  build_ctx *b = ud;
  b->n++;
  m3__progress("locations", b->n, b->expect > b->n ? b->expect : b->n);
  return m3__loctab_put(b->t, id, loc);
}

int m3__store_loc_build(m3_store *s) {
  m3_loctab *t;
  uint64_t expect = m3__catalog_estimate_chunks(&s->cat, s->ident.layout.emb_dim != 0);
  int rc = m3__loctab_create((uint32_t)m3_record_mem_size(&s->ident.layout), s->ident.align,
                             (size_t)expect, &t);
  if (rc) return rc;
  build_ctx bc = {t, 0, expect};
  if ((rc = m3__catalog_chunks(&s->cat, build_entry, &bc)) != 0) {
    m3__loctab_destroy(t);
    return rc;
  }
  m3__loctab_destroy(s->loc);
  s->loc = t;
  return 0;
}

int m3__store_locs(m3_store *s, const uint64_t *ids, size_t n, m3_location *locs, int *status) {
  if (s->loc == NULL) return m3__catalog_get_locs(&s->cat, ids, n, locs, status);
  m3__loctab_get_many(s->loc, ids, n, locs, status);
  return 0;
}

void m3__store_loc_set(m3_store *s, uint64_t id, const m3_location *loc) {
  if (s->loc == NULL) return;
  if (loc == NULL) {
    m3__loctab_del(s->loc, id);
    return;
  }
  if (m3__loctab_put(s->loc, id, loc) == 0) return;
  M3_ERROR("store", "%s: %s; dropping the location table (fetches now ask the catalog)", s->dir,
           m3_errmsg());
  m3__loctab_destroy(s->loc);
  s->loc = NULL;
}

int m3_store_locate(m3_store *s, uint64_t chunk_id, m3_location *loc) {
  int st;
  pthread_rwlock_rdlock(&s->rw);
  int rc = m3__store_locs(s, &chunk_id, 1, loc, &st);
  pthread_rwlock_unlock(&s->rw);
  if (rc) return rc;
  if (st == M3_ENOTFOUND)
    return m3__seterr(st, "chunk %llu: not in the store", (unsigned long long)chunk_id);
  return st;
}

int m3_store_contains(m3_store *s, uint64_t chunk_id) {
  m3_location loc;
  int st;
  pthread_rwlock_rdlock(&s->rw);
  int rc = m3__store_locs(s, &chunk_id, 1, &loc, &st);
  pthread_rwlock_unlock(&s->rw);
  if (rc) return rc;
  return st == 0 ? 1 : st == M3_ENOTFOUND ? 0 : st;
}

/* ---- the table against the catalog ---------------------------------- */

typedef struct check_ctx {
  m3_store *s;
  uint64_t seen, bad;
} check_ctx;

static int check_entry(void *ud, uint64_t id, const m3_location *want) {
  check_ctx *c = ud;
  m3_location got;
  c->seen++;
  m3__progress("locations", c->seen, m3__loctab_count(c->s->loc));
  if (m3__loctab_get(c->s->loc, id, &got) != 0) {
    if (c->bad++ < 8) M3_ERROR("store", "%s: chunk %llu is in the catalog, not in the location table",
                               c->s->dir, (unsigned long long)id);
  } else if (got.segment != want->segment || got.offset != want->offset ||
             got.mem_len != want->mem_len || got.rec_len != want->rec_len ||
             got.mem_crc != want->mem_crc || got.text_crc != want->text_crc) {
    if (c->bad++ < 8)
      M3_ERROR("store", "%s: chunk %llu: table says segment %u offset %llu, catalog %u offset %llu",
               c->s->dir, (unsigned long long)id, got.segment, (unsigned long long)got.offset,
               want->segment, (unsigned long long)want->offset);
  }
  return 0;
}

int m3_store_check_locations(m3_store *s, uint64_t *checked) {
  pthread_rwlock_rdlock(&s->rw);
  int rc = m3__store_loc_check(s, checked);
  pthread_rwlock_unlock(&s->rw);
  return rc;
}

int m3__store_loc_check(m3_store *s, uint64_t *checked) {
  check_ctx c = {s, 0, 0};
  int rc = 0;
  if (s->loc == NULL) {
    rc = m3__seterr(M3_ECORRUPT, "store %s: no location table (dropped after a failure)", s->dir);
    goto out;
  }
  if ((rc = m3__catalog_chunks(&s->cat, check_entry, &c)) != 0) goto out;
  if (c.bad == 0 && c.seen != m3__loctab_count(s->loc))
    c.bad = 1, M3_ERROR("store", "%s: the location table holds %zu ids, the catalog %llu", s->dir,
                        m3__loctab_count(s->loc), (unsigned long long)c.seen);
  if (c.bad)
    rc = m3__seterr(M3_ECORRUPT, "store %s: location table differs from the catalog (%llu of %llu)",
                    s->dir, (unsigned long long)c.bad, (unsigned long long)c.seen);
out:
  if (checked) *checked = c.seen;
  return rc;
}

size_t m3_store_ram_bytes(m3_store *s) {
  pthread_rwlock_rdlock(&s->rw);
  size_t n = s->loc ? m3__loctab_bytes(s->loc) : 0;
  pthread_rwlock_unlock(&s->rw);
  return n + (size_t)m3__catalog_ram_bytes(&s->cat);
}

/* ---- the table's snapshot ------------------------------------------- */

/* RocksDB's id of the catalog (catalog/IDENTITY, a UUID written when the
 * database was created): a repaired or replaced catalog has another one. */
static void catalog_identity(m3_store *s, char *buf, size_t cap) {
  char path[4300];
  buf[0] = '\0';
  snprintf(path, sizeof path, "%s/IDENTITY", s->cat.path);
  FILE *f = fopen(path, "r");
  if (f == NULL) return;
  if (fgets(buf, (int)cap, f) == NULL) buf[0] = '\0';
  fclose(f);
  buf[strcspn(buf, "\r\n")] = '\0';
}

static char *snap_path(m3_store *s, char *buf, size_t cap) {
  snprintf(buf, cap, "%s/" M3__LOC_SNAPSHOT, s->dir);
  return buf;
}

m3_loctab *m3__store_loc_snap_take(m3_store *s, uint64_t *seqno) {
  char path[4300], id[64];
  m3_loctab *t = NULL;
  snap_path(s, path, sizeof path);
  catalog_identity(s, id, sizeof id);
  *seqno = m3_store_seqno(s);
  if (id[0]) {
    int rc = m3__loctab_load(path, (uint32_t)m3_record_mem_size(&s->ident.layout), s->ident.align,
                             *seqno, id, &t);
    if (rc && rc != M3_ENOTFOUND)
      M3_WARN("store", "%s (building the location table from the catalog)", m3_errmsg());
  }
  /* From now on this process may change the catalog: the snapshot must not
   * outlive that (a snapshot exists only between a close and the next
   * writing open, so no catalog state it does not describe can carry its
   * sequence number). */
  if (!s->opts.read_only && unlink(path) == 0) m3__fsync_dir(s->dir);
  return t;
}

void m3__store_loc_snap_save(m3_store *s) {
  if (s->opts.read_only || s->loc == NULL || s->bulk) return;
  char path[4300], id[64];
  catalog_identity(s, id, sizeof id);
  if (!id[0]) return;
  double t0 = m3__now_s();
  if (m3__loctab_save(s->loc, snap_path(s, path, sizeof path), m3_store_seqno(s), id) != 0) {
    M3_WARN("store", "%s (the next open builds the table from the catalog)", m3_errmsg());
    return;
  }
  M3_DEBUG("store", "%s: location table snapshot of %zu ids written in %.3f s", s->dir,
           m3__loctab_count(s->loc), m3__now_s() - t0);
}
