/*
 * Store operations that walk everything: stats, verify (scrub), compact and
 * repair (rebuild the catalog from the segments). They run offline or in the
 * background and favour sequential I/O: records are visited in file order.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "m3/crc32c.h"
#include "m3/error.h"
#include "m3/fault.h"
#include "m3/internal/fsutil.h"
#include "m3/log.h"
#include "store_int.h"

/* ---- collecting the catalog ---------------------------------------- */

typedef struct entry {
  uint64_t id;
  m3_location loc;
} entry;

typedef struct entries {
  entry *v;
  size_t n, cap;
} entries;

static int collect(void *ud, uint64_t id, const m3_location *loc) {
  entries *e = ud;
  if (e->n == e->cap) {
    size_t cap = e->cap ? e->cap * 2 : 1024;
    entry *nv = realloc(e->v, cap * sizeof *nv);
    if (nv == NULL) return m3__seterr(M3_ENOMEM, "out of memory listing the catalog");
    e->v = nv;
    e->cap = cap;
  }
  e->v[e->n].id = id;
  e->v[e->n].loc = *loc;
  e->n++;
  return 0;
}

static int by_location(const void *a, const void *b) {
  const m3_location *x = &((const entry *)a)->loc, *y = &((const entry *)b)->loc;
  if (x->segment != y->segment) return x->segment < y->segment ? -1 : 1;
  return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int list_by_location(m3_store *s, entries *e) {
  memset(e, 0, sizeof *e);
  int rc = m3__catalog_chunks(&s->cat, collect, e);
  if (rc == 0 && e->n > 1) qsort(e->v, e->n, sizeof *e->v, by_location); /* qsort(NULL, 0) is UB */
  return rc;
}

/* ---- stats ---------------------------------------------------------- */

static int stats_locked(m3_store *s, m3_store_stats *st);

int m3_store_stats_get(m3_store *s, m3_store_stats *st) {
  pthread_rwlock_rdlock(&s->rw);
  int rc = stats_locked(s, st);
  pthread_rwlock_unlock(&s->rw);
  return rc;
}

typedef struct stats_ctx {
  m3_store_stats *st;
  uint64_t used; /* aligned bytes live records take */
  uint32_t align;
  uint32_t emb_bytes; /* of one record's embedding (after its text) */
} stats_ctx;

static int stats_entry(void *ud, uint64_t id, const m3_location *l) {
  (void)id;
  stats_ctx *c = ud;
  c->st->records++;
  c->st->payload_bytes += l->mem_len - M3_RECORD_HEADER_SIZE;
  uint32_t tail = l->rec_len - l->mem_len, emb = tail >= c->emb_bytes ? c->emb_bytes : tail;
  c->st->text_bytes += tail - emb;
  c->st->embedding_bytes += emb;
  c->st->record_bytes += l->rec_len;
  c->used += (l->rec_len + c->align - 1) / c->align * c->align;
  return 0;
}

static int stats_locked(m3_store *s, m3_store_stats *st) {
  memset(st, 0, sizeof *st);
  stats_ctx c = {st, 0, s->ident.align, 4u * s->ident.layout.emb_dim};
  /* The table when there is one: no RocksDB walk, no sort. */
  int rc = s->loc ? m3__loctab_each(s->loc, stats_entry, &c)
                  : m3__catalog_chunks(&s->cat, stats_entry, &c);
  if (rc) return rc;
  uint64_t used = c.used;
  for (size_t i = 0; i < s->nsegs; i++) {
    st->segment_bytes += s->segs[i].size;
    used += s->ident.align; /* segment header */
  }
  st->segments = s->nsegs;
  st->dead_bytes = st->segment_bytes > used ? st->segment_bytes - used : 0;
  uint64_t payload = st->payload_bytes + st->text_bytes + st->embedding_bytes;
  st->overhead = payload ? (double)st->segment_bytes / (double)payload - 1.0 : 0.0;
  st->catalog_bytes = m3__catalog_disk_bytes(&s->cat);
  st->loc_table_bytes = s->loc ? m3__loctab_bytes(s->loc) : 0;
  st->catalog_ram_bytes = m3__catalog_ram_bytes(&s->cat);
  if (s->cache) {
    m3_cache_stats cs;
    m3__cache_stats(s->cache, &cs);
    st->cache_hits = cs.hits;
    st->cache_misses = cs.misses;
  }
  return 0;
}

/* ---- verify --------------------------------------------------------- */

static void problem(m3_problem_fn fn, void *ud, uint64_t id, uint32_t seg, uint64_t off, int err,
                    const char *detail) {
  if (fn == NULL) return;
  m3_problem p = {id, seg, off, err, detail};
  fn(ud, &p);
}

/* Verify record by record, in file order, from the catalog's list: the slow
 * path that names every problem (m3__store_verify_entries, store_int.h). */
int m3__store_verify_entries(m3_store *s, m3_io *io, m3_problem_fn fn, void *ud,
                             uint64_t *checked) {
  enum { BATCH = 16 };
  entries e;
  int rc = list_by_location(s, &e), bad = 0;
  uint64_t nchecked = 0;
  uint8_t *bufs[BATCH] = {0};
  if (rc) goto out;
  size_t bufcap = 0;
  for (size_t i = 0; i < e.n; i++)
    if (e.v[i].loc.rec_len > bufcap) bufcap = e.v[i].loc.rec_len;
  for (int i = 0; i < BATCH; i++) {
    bufs[i] = malloc(bufcap ? bufcap : 1);
    if (bufs[i] == NULL) {
      rc = m3__seterr(M3_ENOMEM, "verify: out of memory");
      goto out;
    }
  }

  for (size_t base = 0; base < e.n; base += BATCH) {
    size_t m = e.n - base < BATCH ? e.n - base : BATCH;
    m3_read reads[BATCH];
    int skip[BATCH] = {0};
    size_t nreads = 0;
    for (size_t j = 0; j < m; j++) {
      const entry *en = &e.v[base + j];
      m3_segment *seg = m3__store_seg(s, en->loc.segment);
      if (seg == NULL || en->loc.offset + en->loc.rec_len > seg->size) {
        char msg[256];
        snprintf(msg, sizeof msg, "catalog points at segment %u offset %llu, past its data",
                 en->loc.segment, (unsigned long long)en->loc.offset);
        problem(fn, ud, en->id, en->loc.segment, en->loc.offset, M3_ENOTFOUND, msg);
        bad++;
        skip[j] = 1;
        continue;
      }
      reads[nreads++] = (m3_read){seg->fd, en->loc.offset, en->loc.rec_len, bufs[j], 0};
    }
    if (nreads && (rc = io->ops->read_batch(io, reads, nreads)) != 0) goto out;
    size_t k = 0;
    for (size_t j = 0; j < m; j++) {
      if (skip[j]) continue;
      const entry *en = &e.v[base + j];
      m3_read *r = &reads[k++];
      nchecked++;
      int err = 0;
      if (r->res < 0) {
        err = m3__syserr(-r->res, "read failed");
      } else if ((uint32_t)r->res < en->loc.rec_len) {
        err = m3__seterr(M3_ECORRUPT, "segment ends inside the record");
      } else {
        m3_record rec;
        err = m3_record_parse(bufs[j], en->loc.rec_len, M3_PARSE_ALL, &rec);
        if (err == 0 && rec.chunk_id != en->id)
          err = m3__seterr(M3_ECORRUPT, "the catalog's location holds chunk %llu",
                           (unsigned long long)rec.chunk_id);
        else if (err == 0 && (rec.mem_crc != en->loc.mem_crc || rec.text_crc != en->loc.text_crc))
          err = m3__seterr(M3_ECORRUPT, "checksums differ from the catalog's");
        else if (err == 0 && !m3_layout_equal(&rec.layout, &s->ident.layout))
          err = m3__seterr(M3_ECORRUPT, "layout differs from the store's");
        if (err == 0) {
          char *text = NULL;
          size_t tlen = 0;
          size_t emb_bytes = 4u * rec.layout.emb_dim;
          err = m3__catalog_get_text(&s->cat, en->id, &text, &tlen);
          if (err == 0 && m3_crc32c(m3_crc32c(0, text, tlen), rec.embedding, emb_bytes) != rec.text_crc)
            err = m3__seterr(M3_ECORRUPT, "catalog text differs from the record's");
          else if (err == M3_ENOTFOUND)
            err = m3__seterr(M3_ECORRUPT, "catalog has no text for it");
          free(text);
          if (err == 0 && emb_bytes) {
            float *emb = malloc(emb_bytes);
            err = emb ? m3__catalog_get_embedding(&s->cat, en->id, emb, rec.layout.emb_dim) : M3_ENOMEM;
            if (err == 0 && memcmp(emb, rec.embedding, emb_bytes) != 0)
              err = m3__seterr(M3_ECORRUPT, "catalog embedding differs from the record's");
            else if (err == M3_ENOTFOUND)
              err = m3__seterr(M3_ECORRUPT, "catalog has no embedding for it");
            free(emb);
          }
        }
        if (err == M3_EBADFORMAT || err == M3_EVERSION) err = M3_ECORRUPT;
      }
      if (err) {
        bad++;
        problem(fn, ud, en->id, en->loc.segment, en->loc.offset, err, m3_errmsg());
      }
    }
  }
  if (rc == 0 && bad)
    rc = m3__seterr(M3_ECORRUPT, "store %s: %d of %llu records failed verification", s->dir, bad,
                    (unsigned long long)e.n);
out:
  for (int i = 0; i < BATCH; i++) free(bufs[i]);
  free(e.v);
  if (checked) *checked = nchecked;
  return rc;
}

/* ---- compact -------------------------------------------------------- */

static int compact_locked(m3_store *s, uint64_t *reclaimed);

int m3_store_compact(m3_store *s, uint64_t *reclaimed) {
  pthread_rwlock_wrlock(&s->rw);
  s->gen++;
  int rc = compact_locked(s, reclaimed);
  pthread_rwlock_unlock(&s->rw);
  return rc;
}

static int compact_locked(m3_store *s, uint64_t *reclaimed) {
  if (s->opts.read_only) return m3__seterr(M3_EUNSUPPORTED, "store %s: opened read-only", s->dir);
  if (s->bulk) return m3__store_bulk_busy(s);
  m3_store_stats st;
  int rc = stats_locked(s, &st);
  if (reclaimed) *reclaimed = 0;
  if (rc) return rc;
  if (st.dead_bytes == 0) return 0;

  entries e;
  m3_segment *out = NULL;
  size_t nout = 0, capout = 0;
  m3__wbatch *b = NULL;
  uint8_t *buf = NULL;
  uint64_t before = st.segment_bytes, after = 0;
  uint32_t align = s->ident.align;
  if ((rc = list_by_location(s, &e)) != 0) return rc;
  size_t bufcap = 0;
  for (size_t i = 0; i < e.n; i++)
    if (e.v[i].loc.rec_len > bufcap) bufcap = e.v[i].loc.rec_len;
  bufcap = m3__round_up(bufcap ? bufcap : 1, align);
  buf = malloc(bufcap);
  b = m3__batch_new();
  if (buf == NULL) {
    rc = m3__seterr(M3_ENOMEM, "compact: out of memory");
    goto out;
  }

  /* 1. Copy every live record, checked, into new segments. */
  uint32_t id = s->next_seg;
  for (size_t i = 0; i < e.n; i++) {
    const entry *en = &e.v[i];
    m3_segment *src = m3__store_seg(s, en->loc.segment);
    char path[4096];
    if (src == NULL) {
      rc = m3__seterr(M3_ECORRUPT, "compact: chunk %llu points at missing segment %u; run verify",
                      (unsigned long long)en->id, en->loc.segment);
      goto out;
    }
    if (pread(src->fd, buf, en->loc.rec_len, (off_t)en->loc.offset) != (ssize_t)en->loc.rec_len) {
      rc = m3__syserr(errno ? errno : EIO, "compact: read chunk %llu from %s",
                      (unsigned long long)en->id, m3__segment_path(s->dir, src->id, path, sizeof path));
      goto out;
    }
    m3_record r;
    if ((rc = m3_record_parse(buf, en->loc.rec_len, M3_PARSE_ALL, &r)) != 0 || r.chunk_id != en->id) {
      rc = m3__seterr(M3_ECORRUPT, "compact: chunk %llu in %s offset %llu is damaged (%s); "
                      "run verify and repair first", (unsigned long long)en->id,
                      m3__segment_path(s->dir, src->id, path, sizeof path),
                      (unsigned long long)en->loc.offset, rc ? m3_errmsg() : "wrong chunk id");
      goto out;
    }
    size_t padded = m3__round_up(en->loc.rec_len, align);
    memset(buf + en->loc.rec_len, 0, padded - en->loc.rec_len);
    m3_segment *dst = nout ? &out[nout - 1] : NULL;
    if (dst == NULL || (dst->size + padded > s->opts.segment_bytes && dst->size > align)) {
      if (nout == capout) {
        capout = capout ? capout * 2 : 4;
        m3_segment *n = realloc(out, capout * sizeof *n);
        if (n == NULL) {
          rc = m3__seterr(M3_ENOMEM, "compact: out of memory");
          goto out;
        }
        out = n;
      }
      /* Created under its final name but not in the catalog: if we crash,
       * the next open removes it as an orphan. */
      if ((rc = m3__segment_create(s->dir, id++, &s->ident, s->opts.direct, &out[nout])) != 0)
        goto out;
      dst = &out[nout++];
    }
    if ((rc = m3__segment_append(dst, s->dir, buf, padded)) != 0) goto out;
    m3_location loc = en->loc;
    loc.segment = dst->id;
    loc.offset = dst->size;
    m3__batch_put_loc(b, en->id, &loc);
    e.v[i].loc = loc; /* for the location table, once committed */
    dst->size += padded;
  }

  /* 2. One catalog commit switches to the new segments. */
  for (size_t i = 0; i < s->nsegs; i++) m3__batch_del_segment(b, s->segs[i].id);
  for (size_t i = 0; i < nout; i++) {
    m3__batch_put_segment(b, out[i].id, out[i].size);
    after += out[i].size;
  }
  m3__batch_put_next_seg(b, id);
  if ((rc = m3__catalog_commit(&s->cat, b, 1)) != 0) goto out;
  for (size_t i = 0; i < e.n; i++) m3__store_loc_set(s, e.v[i].id, &e.v[i].loc);

  /* 3. The old segments are now orphans: drop them (reads in flight keep
   * their descriptors until they complete). */
  for (size_t i = 0; i < s->nsegs; i++) {
    char path[4096];
    m3__store_retire(s, &s->segs[i]);
    unlink(m3__segment_path(s->dir, s->segs[i].id, path, sizeof path));
  }
  m3__fsync_dir(s->dir);
  free(s->segs);
  s->segs = out;
  s->nsegs = nout;
  s->capsegs = capout;
  s->next_seg = id;
  out = NULL;
  nout = 0;
  /* The cache stays: compaction moves records, it does not change them. */
  if (reclaimed) *reclaimed = before > after ? before - after : 0;
  M3_INFO("store", "%s: compacted %llu records, %llu -> %llu segment bytes", s->dir,
          (unsigned long long)e.n, (unsigned long long)before, (unsigned long long)after);
out:
  for (size_t i = 0; i < nout; i++) {
    char path[4096];
    m3__segment_close(&out[i]);
    unlink(m3__segment_path(s->dir, out[i].id, path, sizeof path));
  }
  free(out);
  free(buf);
  free(e.v);
  m3__batch_free(b);
  return rc;
}

/* ---- repair --------------------------------------------------------- */

/*
 * Repair streams the segments once, in id order and file order (the order
 * the records were written in: the last record of an id wins, a tombstone
 * deletes), and builds the new catalog the way bulk ingest does: records
 * are staged up to REPAIR_BATCH (or REPAIR_BYTES of text and embeddings),
 * sorted by id with repeats resolved, and ingested as sorted SSTs
 * (m3__catalog_ingest). A later batch is ingested later, so it overrides
 * an earlier one for the ids both hold, deletions included. No write batch
 * per record and no WAL: a 10^7-memory store repairs at the speed its
 * segments read.
 */
#define REPAIR_BATCH 262144
#define REPAIR_BYTES (256u << 20)

size_t m3__repair_batch = REPAIR_BATCH;

typedef struct repair_rec {
  uint64_t id;
  m3_location loc;
  size_t text_off, text_len, emb_off; /* in the arena */
  int tombstone;
} repair_rec;

typedef struct repair_ctx {
  m3_catalog *cat;
  const char *dir;
  size_t emb_bytes;
  repair_rec *v;
  size_t n, cap;
  uint8_t *arena;
  size_t alen, acap;
  size_t *order;
  m3__chunk_entry *ents;
  uint64_t batches;
  size_t batch; /* records per SST ingest (m3__repair_batch) */
  uint64_t seg_base, all_bytes; /* progress in bytes */
  m3_repair_report *rep;
  m3_problem_fn fn;
  void *ud;
} repair_ctx;

static int repair_grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap : 4096;
  while (c < need) c *= 2;
  void *n = realloc(*p, c * elem);
  if (n == NULL) return m3__seterr(M3_ENOMEM, "repair: out of memory (%zu bytes)", c * elem);
  *p = n;
  *cap = c;
  return 0;
}

/* Write order within a batch: id, then staging order (the last one wins). */
static int repair_by_id(const void *x, const void *y, void *ud) {
  const repair_rec *v = ud;
  size_t i = *(const size_t *)x, j = *(const size_t *)y;
  if (v[i].id != v[j].id) return v[i].id < v[j].id ? -1 : 1;
  return i < j ? -1 : i > j;
}

static int repair_flush(repair_ctx *c) {
  if (c->n == 0) return 0;
  for (size_t i = 0; i < c->n; i++) c->order[i] = i;
  qsort_r(c->order, c->n, sizeof *c->order, repair_by_id, c->v);
  size_t ne = 0;
  for (size_t k = 0; k < c->n; k++) {
    const repair_rec *e = &c->v[c->order[k]];
    if (k + 1 < c->n && c->v[c->order[k + 1]].id == e->id) continue; /* a later one wins */
    c->ents[ne++] = (m3__chunk_entry){e->id,
                                      e->loc,
                                      (const char *)c->arena + e->text_off,
                                      e->text_len,
                                      c->emb_bytes ? c->arena + e->emb_off : NULL,
                                      c->emb_bytes,
                                      e->tombstone};
  }
  char sst[4200];
  snprintf(sst, sizeof sst, "%s/bulk-repair-%llu.sst", c->dir, (unsigned long long)c->batches++);
  int rc = m3__catalog_ingest(c->cat, sst, c->ents, ne);
  c->n = c->alen = 0;
  return rc;
}

static int repair_record(void *ud, const m3_segment *seg, uint64_t off, const m3_record *r,
                         uint32_t rec_len) {
  repair_ctx *c = ud;
  int tomb = (r->flags & M3_RECORD_TOMBSTONE) != 0;
  size_t tlen = tomb ? 0 : r->text_bytes, elen = tomb ? 0 : c->emb_bytes;
  int rc;
  if ((rc = repair_grow((void **)&c->v, &c->cap, c->n + 1, sizeof *c->v)) != 0) return rc;
  if ((rc = repair_grow((void **)&c->arena, &c->acap, c->alen + tlen + elen, 1)) != 0) return rc;
  repair_rec *e = &c->v[c->n++];
  e->id = r->chunk_id;
  e->tombstone = tomb;
  e->loc = (m3_location){seg->id, off, M3_RECORD_HEADER_SIZE + r->mem_bytes, rec_len, r->mem_crc,
                         r->text_crc};
  e->text_off = c->alen;
  e->text_len = tlen;
  if (tlen) memcpy(c->arena + c->alen, r->text, tlen);
  c->alen += tlen;
  e->emb_off = c->alen;
  if (elen) memcpy(c->arena + c->alen, r->embedding, elen);
  c->alen += elen;
  if (tomb) c->rep->tombstones++;
  c->rep->records++;
  m3__progress("repair bytes", c->seg_base + off, c->all_bytes);
  if (c->n >= c->batch || c->alen >= REPAIR_BYTES) return repair_flush(c);
  return 0;
}

static void repair_problem(void *ud, const m3_problem *p) {
  repair_ctx *ctx = ud;
  ctx->rep->damaged++;
  if (ctx->fn) ctx->fn(ctx->ud, p);
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static int count_chunk(void *ud, uint64_t id, const m3_location *loc) {
  (void)id;
  (void)loc;
  (*(uint64_t *)ud)++;
  return 0;
}

static int rm_tree(const char *path) {
  DIR *d = opendir(path);
  if (d == NULL) return errno == ENOENT ? 0 : m3__syserr(errno, "open %s", path);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char p[4400];
    snprintf(p, sizeof p, "%s/%s", path, e->d_name);
    if (unlink(p) != 0 && errno == EISDIR) rm_tree(p);
  }
  closedir(d);
  return rmdir(path) == 0 ? 0 : m3__syserr(errno, "remove %s", path);
}

int m3_store_repair(const char *dir, m3_problem_fn fn, void *ud, m3_repair_report *rep) {
  m3_repair_report local;
  if (rep == NULL) rep = &local;
  memset(rep, 0, sizeof *rep);
  char catpath[4200], newpath[4200];
  snprintf(catpath, sizeof catpath, "%s/catalog", dir);
  snprintf(newpath, sizeof newpath, "%s/catalog.repair", dir);
  uint32_t *ids = NULL;
  size_t nids = 0, capids = 0;
  m3_catalog cat = {0};
  repair_ctx ctx = {0};
  ctx.cat = &cat;
  ctx.dir = dir;
  ctx.rep = rep;
  ctx.fn = fn;
  ctx.ud = ud;
  m3__wbatch *wb = NULL;
  int rc = 0, have_ident = 0, opened = 0;
  m3_ident ident;

  /* Refuse while someone has the store open: their catalog LOCK is held. */
  struct stat st;
  if (stat(catpath, &st) == 0) {
    m3_catalog old;
    rc = m3__catalog_open(&old, catpath, 0, 0);
    if (rc == M3_EBUSY)
      return m3__seterr(rc, "store %s is open in another process; stop it before repair", dir);
    if (rc == 0) m3__catalog_close(&old);
    rc = 0;
  }

  DIR *d = opendir(dir);
  if (d == NULL) return m3__syserr(errno, "open store directory %s", dir);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    uint32_t id;
    if (!m3__segment_parse_name(e->d_name, &id)) continue;
    if (nids == capids) {
      capids = capids ? capids * 2 : 16;
      uint32_t *n = realloc(ids, capids * sizeof *n);
      if (n == NULL) {
        closedir(d);
        free(ids);
        return m3__seterr(M3_ENOMEM, "repair: out of memory");
      }
      ids = n;
    }
    ids[nids++] = id;
  }
  closedir(d);
  if (nids == 0) {
    free(ids);
    return m3__seterr(M3_ENOTFOUND, "repair %s: no segment files (seg-*.m3s) to rebuild from", dir);
  }
  qsort(ids, nids, sizeof *ids, cmp_u32);
  for (size_t i = 0; i < nids; i++) {
    char path[4096];
    struct stat sst;
    if (stat(m3__segment_path(dir, ids[i], path, sizeof path), &sst) == 0)
      ctx.all_bytes += (uint64_t)sst.st_size;
  }

  /* A location table snapshot describes the old catalog (its identity
   * differs from the new one's anyway). */
  char snappath[4200];
  snprintf(snappath, sizeof snappath, "%s/" M3__LOC_SNAPSHOT, dir);
  unlink(snappath);
  if ((rc = rm_tree(newpath)) != 0) goto out;
  if ((rc = m3__catalog_open(&cat, newpath, 1, 0)) != 0) goto out;
  opened = 1;
  wb = m3__batch_new();
  ctx.batch = m3__repair_batch ? m3__repair_batch : REPAIR_BATCH;
  ctx.order = malloc(ctx.batch * sizeof *ctx.order);
  ctx.ents = malloc(ctx.batch * sizeof *ctx.ents);
  if (!ctx.order || !ctx.ents) {
    rc = m3__seterr(M3_ENOMEM, "repair: out of memory");
    goto out;
  }

  for (size_t i = 0; i < nids; i++) {
    m3_segment seg;
    m3_ident found;
    rc = m3__segment_open(dir, ids[i], 0, 0, NULL, &found, &seg);
    if (rc == 0 && have_ident && !m3__ident_equal(&found, &ident)) {
      m3__segment_close(&seg);
      rc = m3__seterr(M3_EBADFORMAT, "segment %u belongs to another store (uuid or layout differ)",
                      ids[i]);
    }
    if (rc) {
      char path[4096];
      problem(fn, ud, UINT64_MAX, ids[i], 0, rc, m3_errmsg());
      rep->damaged++;
      M3_ERROR("store", "repair: skipping %s: %s", m3__segment_path(dir, ids[i], path, sizeof path),
               m3_errmsg());
      if (rc != M3_EBADFORMAT && rc != M3_ECORRUPT && rc != M3_EVERSION) goto out;
      rc = 0;
      continue;
    }
    if (!have_ident) {
      ident = found;
      have_ident = 1;
      ctx.emb_bytes = 4u * ident.layout.emb_dim;
    }
    rep->segments++;
    uint64_t good_end = 0, damaged = 0;
    m3_scan_cb cb = {&ctx, repair_record, repair_problem, &ident.layout};
    rc = m3__segment_scan(&seg, dir, ident.align, ident.align, &cb, &good_end, &damaged);
    if (rc == 0 && good_end < seg.size) {
      rep->truncated_bytes += seg.size - good_end;
      M3_WARN("store", "repair: segment %u: cutting %llu bytes after offset %llu (torn tail)",
              seg.id, (unsigned long long)(seg.size - good_end), (unsigned long long)good_end);
      rc = m3__segment_truncate(&seg, dir, good_end);
      seg.size = good_end;
    }
    if (rc == 0) m3__batch_put_segment(wb, seg.id, seg.size);
    ctx.seg_base += seg.size;
    m3__segment_close(&seg);
    if (rc) goto out;
  }
  if ((rc = repair_flush(&ctx)) != 0) goto out;
  m3__progress("repair bytes", ctx.all_bytes, ctx.all_bytes);
  if (!have_ident) {
    rc = m3__seterr(M3_ECORRUPT, "repair %s: no readable segment", dir);
    goto out;
  }
  m3__batch_put_meta(wb, &ident);
  m3__batch_put_next_seg(wb, ids[nids - 1] + 1);
  if ((rc = m3__catalog_commit(&cat, wb, 1)) != 0) goto out;
  rep->records = 0; /* counted as scanned above; now the live ones */
  if ((rc = m3__catalog_chunks(&cat, count_chunk, &rep->records)) != 0) goto out;
  m3__catalog_close(&cat);
  opened = 0;

  /* Swap the rebuilt catalog in: the old one aside first (catalog.old),
   * then the new one in, then the old one removed, each step made durable
   * before the next. A crash at any point leaves a catalog to open: before
   * the first rename the old one; between the renames only catalog.old,
   * which m3_store_open puts back (M3__CATALOG_ASIDE); after the second
   * the new one (a catalog.old left over is removed by the next repair). */
  char oldpath[4200];
  snprintf(oldpath, sizeof oldpath, "%s/" M3__CATALOG_ASIDE, dir);
  if ((rc = rm_tree(oldpath)) != 0) goto out;
  int had_old = stat(catpath, &st) == 0;
  if (had_old && rename(catpath, oldpath) != 0) {
    rc = m3__syserr(errno, "rename %s to %s", catpath, oldpath);
    goto out;
  }
  if ((rc = m3__fsync_dir(dir)) != 0) goto out;
  int ferr = m3__fault("repair.swap"); /* a crash between the renames */
  if (ferr) {
    rc = m3__syserr(ferr, "repair %s: swapping the catalog in", dir);
    goto out;
  }
  if (rename(newpath, catpath) != 0) {
    rc = m3__syserr(errno, "rename %s to %s", newpath, catpath);
    goto out;
  }
  if ((rc = m3__fsync_dir(dir)) != 0) goto out;
  if (had_old && (rc = rm_tree(oldpath)) != 0) goto out;
  if (rep->damaged)
    rc = m3__seterr(M3_ECORRUPT, "repair %s: rebuilt, but %llu damaged records were skipped",
                    dir, (unsigned long long)rep->damaged);
out:
  if (opened) m3__catalog_close(&cat);
  m3__batch_free(wb);
  free(ctx.v);
  free(ctx.arena);
  free(ctx.order);
  free(ctx.ents);
  free(ids);
  return rc;
}
