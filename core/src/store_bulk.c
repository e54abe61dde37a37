/*
 * Bulk ingest (m3/store.h, "bulk ingest"): records appended to segments in
 * large unsynced writes, and at each checkpoint one fdatasync per touched
 * segment, one sorted SST of catalog entries ingested into RocksDB, one
 * small write batch of segment ends, then the location table.
 *
 * Workload: 10^5..10^7 small records from one thread (a generator, the
 * encoder, a merge of partial stores), while other threads fetch.
 *
 * Why it is crash-safe: a segment is the truth, and its committed end ('S')
 * moves only after the records before it are synced and their catalog
 * entries ingested. A crash before the ingest leaves records past the
 * committed end, which the next open rolls forward (or cuts as a torn
 * tail); a crash between the ingest and the end's commit leaves entries
 * that the roll-forward writes again, identical.
 *
 * Locking: the bulk thread changes only what writers change (the segment
 * files past their committed ends, new segments, the table), and writers
 * (put, delete, compact) are refused while s->bulk is set; so it reads
 * s->segs and the table without the lock and takes the exclusive lock only
 * to roll a segment and to publish a checkpoint.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "m3/error.h"
#include "m3/fault.h"
#include "m3/log.h"
#include "store_int.h"

#define DEFAULT_CKPT_RECORDS 262144
#define DEFAULT_CKPT_BYTES (256u << 20)
#define WRITE_CHUNK (4u << 20) /* record bytes staged before a pwrite */

typedef struct staged {
  uint64_t id;
  m3_location loc;
  size_t text_off, text_len; /* in arena */
  size_t emb_off;            /* in arena; emb_bytes from the layout */
} staged;

typedef struct touched {
  uint32_t seg;
  uint64_t end; /* bytes of the file that this bulk has filled */
} touched;

struct m3_store_bulk {
  m3_store *s;
  m3_store_bulk_options o;
  size_t emb_bytes;
  uint8_t *buf; /* record bytes for segment `seg` not yet written */
  size_t len, cap;
  uint32_t seg;     /* the segment records go to */
  uint32_t first_new; /* segments with ids from here were created by this bulk */
  uint64_t written; /* file offset in seg up to which buf was written */
  uint64_t end;     /* offset past the last staged record (written + len) */
  touched *t;       /* segments filled past their committed end */
  size_t nt, capt;
  staged *v;        /* records since the last checkpoint, in add order */
  size_t n, capv;
  m3_loctab *pend;  /* their ids and locations: the latest content of an id
                       is the staged one when there is one */
  uint8_t *arena;   /* their texts and embeddings */
  size_t alen, acap;
  int failed;       /* 1: a checkpoint failed before the ingest; 2: after */
  m3_store_bulk_stats st;
};

void m3_store_bulk_options_init(m3_store_bulk_options *o) {
  o->checkpoint_records = DEFAULT_CKPT_RECORDS;
  o->checkpoint_bytes = DEFAULT_CKPT_BYTES;
}

int m3__store_bulk_busy(m3_store *s) {
  return m3__seterr(M3_EBUSY, "store %s: a bulk ingest is open (finish it first)", s->dir);
}

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap : 1024;
  while (c < need) c *= 2;
  void *n = realloc(*p, c * elem);
  if (n == NULL) return m3__seterr(M3_ENOMEM, "bulk ingest: out of memory (%zu bytes)", c * elem);
  *p = n;
  *cap = c;
  return 0;
}

int m3_store_bulk_begin(m3_store *s, const m3_store_bulk_options *o, m3_store_bulk **out) {
  if (s->opts.read_only) return m3__seterr(M3_EUNSUPPORTED, "store %s: opened read-only", s->dir);
  m3_store_bulk *b = calloc(1, sizeof *b);
  if (b == NULL) return m3__seterr(M3_ENOMEM, "bulk ingest: out of memory");
  b->s = s;
  m3_store_bulk_options_init(&b->o);
  if (o && o->checkpoint_records) b->o.checkpoint_records = o->checkpoint_records;
  if (o && o->checkpoint_bytes) b->o.checkpoint_bytes = o->checkpoint_bytes;
  b->emb_bytes = 4u * s->ident.layout.emb_dim;
  int rc = m3__loctab_create((uint32_t)m3_record_mem_size(&s->ident.layout), s->ident.align,
                             b->o.checkpoint_records, &b->pend);
  if (rc) {
    free(b);
    return rc;
  }
  pthread_rwlock_wrlock(&s->rw);
  b->first_new = s->next_seg;
  if (s->bulk) rc = m3__store_bulk_busy(s);
  else if (s->nsegs == 0) rc = m3__store_roll_segment(s);
  if (rc == 0) {
    m3_segment *seg = &s->segs[s->nsegs - 1];
    b->seg = seg->id;
    b->written = b->end = seg->size;
    s->bulk = b;
  }
  pthread_rwlock_unlock(&s->rw);
  if (rc) {
    m3__loctab_destroy(b->pend);
    free(b);
    return rc;
  }
  *out = b;
  return 0;
}

static int note_touched(m3_store_bulk *b) {
  if (b->end == m3__store_seg(b->s, b->seg)->size) return 0;
  if (b->nt && b->t[b->nt - 1].seg == b->seg) {
    b->t[b->nt - 1].end = b->end;
    return 0;
  }
  int rc = grow((void **)&b->t, &b->capt, b->nt + 1, sizeof *b->t);
  if (rc) return rc;
  b->t[b->nt++] = (touched){b->seg, b->end};
  return 0;
}

/* pwrite the staged bytes at `written` (no sync: the checkpoint syncs). */
static int write_out(m3_store_bulk *b) {
  m3_segment *seg = m3__store_seg(b->s, b->seg);
  size_t done = 0;
  int err = 0;
  while (done < b->len && err == 0) {
    if ((err = m3__fault("segment.write")) != 0) break;
    ssize_t k = pwrite(seg->fd, b->buf + done, b->len - done, (off_t)(b->written + done));
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) err = errno;
    else if (k == 0) err = EIO;
    else done += (size_t)k;
  }
  if (err) {
    char path[4096];
    return m3__syserr(err, "bulk ingest: write %zu bytes to %s at offset %llu", b->len,
                      m3__segment_path(b->s->dir, b->seg, path, sizeof path),
                      (unsigned long long)b->written);
  }
  b->written += b->len;
  b->len = 0;
  return note_touched(b);
}

/* Room for a record of padded bytes: write out and roll when the segment
 * would pass segment_bytes. */
static int place(m3_store_bulk *b, size_t padded) {
  m3_store *s = b->s;
  int rc;
  if (b->end + padded > s->opts.segment_bytes && b->end > s->ident.align) {
    if ((rc = write_out(b)) != 0) return rc;
    pthread_rwlock_wrlock(&s->rw);
    rc = m3__store_roll_segment(s);
    if (rc == 0) {
      m3_segment *seg = &s->segs[s->nsegs - 1];
      b->seg = seg->id;
      b->written = b->end = seg->size;
    }
    pthread_rwlock_unlock(&s->rw);
    if (rc) return rc;
  }
  if (b->len + padded > b->cap) {
    size_t cap = b->cap ? b->cap : WRITE_CHUNK;
    while (cap < b->len + padded) cap *= 2;
    uint8_t *n = realloc(b->buf, cap);
    if (n == NULL) return m3__seterr(M3_ENOMEM, "bulk ingest: out of memory");
    b->buf = n;
    b->cap = cap;
  }
  return 0;
}

/* Is this already the id's latest content, staged or stored? (the resume
 * case) */
static int same_as_latest(m3_store_bulk *b, uint64_t id, const m3_record *r, size_t size) {
  m3_location old;
  int st;
  if (m3__loctab_get(b->pend, id, &old) != 0 &&
      (m3__store_locs(b->s, &id, 1, &old, &st) != 0 || st != 0))
    return 0;
  return old.mem_crc == r->mem_crc && old.text_crc == r->text_crc && old.rec_len == size;
}

static int add_one(m3_store_bulk *b, const m3_record_in *in, size_t i) {
  m3_store *s = b->s;
  const m3_layout *l = &s->ident.layout;
  size_t size = m3_record_size(l, in->text_len);
  size_t padded = m3__round_up(size, s->ident.align);
  int rc = place(b, padded);
  if (rc) return rc;
  uint8_t *rec = b->buf + b->len;
  long k = m3_record_encode(rec, b->cap - b->len, l, in);
  if (k < 0) return m3__seterr((int)k, "bulk ingest: item %zu (chunk %llu): %s", i,
                               (unsigned long long)in->chunk_id, m3_errmsg());
  m3_record r;
  m3_record_parse(rec, (size_t)k, M3_PARSE_HEADER, &r);
  b->st.added++;
  if (same_as_latest(b, in->chunk_id, &r, size)) {
    b->st.skipped++;
    return 0;
  }
  if ((rc = grow((void **)&b->v, &b->capv, b->n + 1, sizeof *b->v)) != 0) return rc;
  if ((rc = grow((void **)&b->arena, &b->acap, b->alen + in->text_len + b->emb_bytes, 1)) != 0)
    return rc;
  m3_location loc = {b->seg, b->end, (uint32_t)(M3_RECORD_HEADER_SIZE + r.mem_bytes),
                     (uint32_t)size, r.mem_crc, r.text_crc};
  if ((rc = m3__loctab_put(b->pend, in->chunk_id, &loc)) != 0) return rc;
  memset(rec + size, 0, padded - size);
  staged *e = &b->v[b->n++];
  e->id = in->chunk_id;
  e->loc = loc;
  e->text_off = b->alen;
  e->text_len = in->text_len;
  if (in->text_len) memcpy(b->arena + b->alen, in->text, in->text_len);
  b->alen += in->text_len;
  e->emb_off = b->alen;
  /* The record's own copy: little-endian f32, zeros when the item had none. */
  memcpy(b->arena + b->alen, rec + size - b->emb_bytes, b->emb_bytes);
  b->alen += b->emb_bytes;
  b->len += padded;
  b->end += padded;
  if (b->len >= WRITE_CHUNK) return write_out(b);
  return 0;
}

int m3_store_bulk_add(m3_store_bulk *b, const m3_record_in *items, size_t n) {
  if (b->failed)
    return m3__seterr(M3_EIO, "store %s: this bulk ingest failed earlier; abort it", b->s->dir);
  for (size_t i = 0; i < n; i++) {
    int rc = add_one(b, &items[i], i);
    if (rc) return rc;
    if (b->n >= b->o.checkpoint_records || b->alen >= b->o.checkpoint_bytes)
      if ((rc = m3_store_bulk_checkpoint(b)) != 0) return rc;
  }
  return 0;
}

/* Sort order of staged records: id, then add order (the last one wins). */
static int by_id(const void *x, const void *y, void *ctx) {
  const staged *v = ctx;
  size_t i = *(const size_t *)x, j = *(const size_t *)y;
  uint64_t a = v[i].id, c = v[j].id;
  if (a != c) return a < c ? -1 : 1;
  return i < j ? -1 : i > j;
}

int m3_store_bulk_checkpoint(m3_store_bulk *b) {
  m3_store *s = b->s;
  if (b->failed)
    return m3__seterr(M3_EIO, "store %s: this bulk ingest failed earlier; abort it", s->dir);
  if (b->n == 0 && b->len == 0) return 0;
  size_t *order = NULL;
  m3__chunk_entry *ents = NULL;
  m3__wbatch *wb = NULL;
  int rc;
  double t0 = m3__now_s(), t1 = 0, t2 = 0, t3 = 0, t4 = 0;
  if ((rc = write_out(b)) != 0) goto fail;
  /* 1. The records reach the disk. */
  for (size_t i = 0; i < b->nt; i++) {
    m3_segment *seg = m3__store_seg(s, b->t[i].seg);
    int err = m3__fault("segment.sync");
    if (err == 0 && fdatasync(seg->fd) != 0) err = errno;
    if (err) {
      char path[4096];
      rc = m3__syserr(err, "bulk ingest: fdatasync %s",
                      m3__segment_path(s->dir, seg->id, path, sizeof path));
      goto fail;
    }
  }
  t1 = m3__now_s();
  /* 2. Their catalog entries, sorted and without repeats, in SSTs. */
  order = malloc((b->n ? b->n : 1) * sizeof *order);
  ents = malloc((b->n ? b->n : 1) * sizeof *ents);
  if (!order || !ents) {
    rc = m3__seterr(M3_ENOMEM, "bulk ingest: out of memory sorting %zu records", b->n);
    goto fail;
  }
  for (size_t i = 0; i < b->n; i++) order[i] = i;
  qsort_r(order, b->n, sizeof *order, by_id, b->v);
  size_t ne = 0;
  for (size_t k = 0; k < b->n; k++) {
    const staged *e = &b->v[order[k]];
    if (k + 1 < b->n && b->v[order[k + 1]].id == e->id) continue; /* a later one wins */
    ents[ne++] = (m3__chunk_entry){e->id, e->loc, (const char *)b->arena + e->text_off,
                                   e->text_len, b->emb_bytes ? b->arena + e->emb_off : NULL,
                                   b->emb_bytes, 0};
  }
  t2 = m3__now_s();
  char sst[4200];
  snprintf(sst, sizeof sst, "%s/bulk-%06u-%llu.sst", s->dir, b->seg,
           (unsigned long long)b->st.checkpoints);
  if ((rc = m3__catalog_ingest(&s->cat, sst, ents, ne)) != 0) goto fail;
  t3 = m3__now_s();
  /* 3. The segments' ends: from here on the records are committed. */
  wb = m3__batch_new();
  for (size_t i = 0; i < b->nt; i++) m3__batch_put_segment(wb, b->t[i].seg, b->t[i].end);
  if ((rc = m3__catalog_commit(&s->cat, wb, 1)) != 0) {
    b->failed = 2;
    M3_ERROR("store", "%s: bulk checkpoint ingested but could not commit segment ends (%s); "
             "close and reopen the store to roll forward", s->dir, m3_errmsg());
    goto out;
  }
  /* 4. Publish to readers. */
  t4 = m3__now_s();
  pthread_rwlock_wrlock(&s->rw);
  s->gen++;
  for (size_t i = 0; i < b->nt; i++) m3__store_seg(s, b->t[i].seg)->size = b->t[i].end;
  for (size_t i = 0; i < ne; i++) {
    m3__store_loc_set(s, ents[i].id, &ents[i].loc);
    if (s->cache) m3__cache_drop(s->cache, ents[i].id);
  }
  pthread_rwlock_unlock(&s->rw);
  M3_DEBUG("store", "%s: bulk checkpoint %llu: %zu records; write+sync %.3f s, sort %.3f s, "
           "SST+ingest %.3f s, commit %.3f s, publish %.3f s", s->dir,
           (unsigned long long)b->st.checkpoints, ne, t1 - t0, t2 - t1, t3 - t2, t4 - t3,
           m3__now_s() - t4);
  b->st.durable += ne;
  b->st.checkpoints++;
  b->n = b->alen = b->nt = 0;
  m3__loctab_clear(b->pend);
  goto out;
fail:
  b->failed = 1;
out:
  m3__batch_free(wb);
  free(order);
  free(ents);
  return rc;
}

void m3_store_bulk_stats_get(const m3_store_bulk *b, m3_store_bulk_stats *st) { *st = b->st; }

static void bulk_free(m3_store_bulk *b) {
  m3_store *s = b->s;
  pthread_rwlock_wrlock(&s->rw);
  s->bulk = NULL;
  pthread_rwlock_unlock(&s->rw);
  free(b->buf);
  free(b->t);
  free(b->v);
  free(b->arena);
  m3__loctab_destroy(b->pend);
  free(b);
}

int m3_store_bulk_finish(m3_store_bulk *b) {
  if (b == NULL) return 0;
  int rc = m3_store_bulk_checkpoint(b);
  if (rc) m3_store_bulk_abort(b);
  else bulk_free(b);
  return rc;
}

void m3_store_bulk_abort(m3_store_bulk *b) {
  if (b == NULL) return;
  m3_store *s = b->s;
  /* Cut what no checkpoint committed; after a failure past the ingest the
   * catalog may point at it, so leave it for the next open's roll-forward. */
  if (b->failed != 2) {
    b->len = 0;
    note_touched(b);
    for (size_t i = 0; i < b->nt; i++) {
      m3_segment *seg = m3__store_seg(s, b->t[i].seg);
      if (m3__segment_truncate(seg, s->dir, seg->size) != 0)
        M3_WARN("store", "%s (the next open cuts the tail)", m3_errmsg());
    }
    /* Segments this bulk rolled that no checkpoint filled: nothing points
     * into them. */
    pthread_rwlock_wrlock(&s->rw);
    if (m3__store_drop_empty(s, b->first_new) != 0)
      M3_WARN("store", "%s (the next open removes the empty segments)", m3_errmsg());
    pthread_rwlock_unlock(&s->rw);
  }
  bulk_free(b);
}
