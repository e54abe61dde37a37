/*
 * Verify (scrub) at disk speed: m3_store_verify streams every segment once,
 * front to back, in large sequential reads (m3__segment_scan checks every
 * record's checksums), and keeps the records the location table points at;
 * then walks the catalog's texts and embeddings once, in id order, against
 * the locations' text CRCs; then compares the table with the catalog's
 * locations. No point lookup per record, so a 10^7-memory store verifies in
 * the time its files take to read. When the counts disagree (a live record
 * not found, a text missing) it runs the record-by-record verify
 * (m3__store_verify_entries) to name each problem.
 *
 * Chain of checks: a record's own CRCs cover its bytes; its CRCs equal the
 * location's; the catalog's text and embedding hash to the location's
 * text CRC. Equivalent to reading each record and comparing texts, as the
 * slow path does, up to CRC32C collisions.
 */
#include <stdio.h>
#include <string.h>

#include "m3/crc32c.h"
#include "m3/error.h"
#include "m3/log.h"
#include "store_int.h"

static m3_progress_fn g_progress;
static void *g_progress_ud;

void m3_store_set_progress(m3_progress_fn fn, void *ud) {
  g_progress = fn;
  g_progress_ud = ud;
}

void m3__progress(const char *what, uint64_t done, uint64_t total) {
  if (g_progress && (done % 65536 == 0 || done == total)) g_progress(g_progress_ud, what, done, total);
}

typedef struct vctx {
  m3_store *s;
  m3_problem_fn fn;
  void *ud;
  uint64_t live, texts, bad, total, scanned_bytes, seg_base, all_bytes;
} vctx;

/* The streaming pass only counts problems: when there is any, the
 * record-by-record pass names them all (each once). */
static void report(vctx *c, uint64_t id, uint32_t seg, uint64_t off, int err, const char *detail) {
  (void)id, (void)seg, (void)off, (void)err;
  if (c->bad++ < 4) M3_DEBUG("store", "verify: %s", detail);
}

/* The record at (seg, off) is live when the table points there. */
static int live_at(vctx *c, uint64_t id, uint32_t seg, uint64_t off, m3_location *loc) {
  return m3__loctab_get(c->s->loc, id, loc) == 0 && loc->segment == seg && loc->offset == off;
}

static int on_record(void *ud, const m3_segment *seg, uint64_t off, const m3_record *r,
                     uint32_t rec_len) {
  vctx *c = ud;
  m3_location loc;
  m3__progress("verify bytes", c->seg_base + off, c->all_bytes);
  if (off >= seg->size || (r->flags & M3_RECORD_TOMBSTONE)) return 0;
  if (!live_at(c, r->chunk_id, seg->id, off, &loc)) return 0; /* replaced or deleted */
  c->live++;
  const char *why = NULL;
  if (loc.rec_len != rec_len) why = "record length differs from the catalog's";
  else if (r->mem_crc != loc.mem_crc || r->text_crc != loc.text_crc)
    why = "checksums differ from the catalog's";
  else if (!m3_layout_equal(&r->layout, &c->s->ident.layout))
    why = "layout differs from the store's";
  if (why) report(c, r->chunk_id, seg->id, off, M3_ECORRUPT, why);
  return 0;
}

static void on_problem(void *ud, const m3_problem *p) {
  vctx *c = ud;
  m3_location loc;
  if (p->chunk_id != UINT64_MAX && live_at(c, p->chunk_id, p->segment, p->offset, &loc)) {
    c->live++;
    report(c, p->chunk_id, p->segment, p->offset, p->err, p->detail);
  } else {
    /* A damaged record nothing points at (or whose id is unreadable: if a
     * live one sat there, the live count says so below). */
    M3_WARN("store", "verify: segment %u offset %llu: %s (no live memory there)", p->segment,
            (unsigned long long)p->offset, p->detail);
  }
}

static int on_text(void *ud, uint64_t id, const uint8_t *text, size_t tlen, const uint8_t *emb,
                   size_t elen) {
  vctx *c = ud;
  m3_location loc;
  char msg[160];
  m3__progress("verify texts", c->texts, c->total);
  if (m3__loctab_get(c->s->loc, id, &loc) != 0) {
    snprintf(msg, sizeof msg, "the catalog has a text for chunk %llu but no location",
             (unsigned long long)id);
    report(c, id, 0, 0, M3_ECORRUPT, msg);
    return 0;
  }
  c->texts++;
  size_t want = 4u * c->s->ident.layout.emb_dim;
  if (elen != want) {
    snprintf(msg, sizeof msg, "catalog embedding has %zu bytes, want %zu", elen, want);
    report(c, id, loc.segment, loc.offset, M3_ECORRUPT, msg);
  } else if (m3_crc32c(m3_crc32c(0, text, tlen), emb, elen) != loc.text_crc) {
    report(c, id, loc.segment, loc.offset, M3_ECORRUPT,
           "catalog text or embedding differs from the record's");
  }
  return 0;
}

static int verify_stream(m3_store *s, m3_io *io, m3_problem_fn fn, void *ud, uint64_t *checked) {
  vctx c = {s, fn, ud, 0, 0, 0, m3__loctab_count(s->loc), 0, 0, 0};
  uint64_t nloc = 0;
  int rc = m3__store_loc_check(s, &nloc), table_bad = 0;
  if (rc == M3_ECORRUPT) {
    table_bad = 1;
    if (fn) {
      m3_problem p = {UINT64_MAX, 0, 0, rc, m3_errmsg()};
      fn(ud, &p);
    }
    rc = 0;
  }
  if (rc) return rc;
  for (size_t i = 0; i < s->nsegs; i++) c.all_bytes += s->segs[i].size;
  for (size_t i = 0; i < s->nsegs && rc == 0; i++) {
    uint64_t good_end = 0, damaged = 0;
    m3_scan_cb cb = {&c, on_record, on_problem, &s->ident.layout};
    rc = m3__segment_scan(&s->segs[i], s->dir, s->ident.align, s->ident.align, &cb, &good_end,
                          &damaged);
    c.seg_base += s->segs[i].size;
  }
  if (rc == 0) rc = m3__catalog_texts(&s->cat, on_text, &c);
  if (rc) return rc;
  if (c.bad || c.live != c.total || c.texts != c.total) {
    /* Find out which memories, record by record, and name each. */
    M3_WARN("store", "%s: verify found %llu problems, %llu of %llu memories at their locations "
            "and %llu texts; checking each", s->dir, (unsigned long long)c.bad,
            (unsigned long long)c.live, (unsigned long long)c.total, (unsigned long long)c.texts);
    rc = m3__store_verify_entries(s, io, fn, ud, checked);
    if (rc == 0) {
      rc = m3__seterr(M3_ECORRUPT, "store %s: the catalog's texts and locations disagree "
                      "(%llu texts for %llu memories)", s->dir, (unsigned long long)c.texts,
                      (unsigned long long)c.total);
      if (fn) {
        m3_problem p = {UINT64_MAX, 0, 0, rc, m3_errmsg()};
        fn(ud, &p);
      }
    }
    return rc;
  }
  if (checked) *checked = c.live;
  if (table_bad)
    return m3__seterr(M3_ECORRUPT, "store %s: the location table differs from the catalog", s->dir);
  return 0;
}

int m3_store_verify(m3_store *s, m3_problem_fn fn, void *ud, uint64_t *checked) {
  m3_io *io;
  int rc = m3__store_io_get(s, &io);
  if (rc) return rc;
  pthread_rwlock_rdlock(&s->rw);
  if (checked) *checked = 0;
  rc = s->loc ? verify_stream(s, io, fn, ud, checked)
              : m3__store_verify_entries(s, io, fn, ud, checked);
  pthread_rwlock_unlock(&s->rw);
  m3__store_io_put(s, io);
  return rc;
}
