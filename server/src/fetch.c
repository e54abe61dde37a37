/*
 * The memories of a Retrieve or Fetch (fetch.h): the plan (one item per
 * id), the threadpool reads (pread backend, or with chunk texts), and the
 * sending: every memory read since the last look goes out in one write,
 * whose completion gives its read buffers back to the budget.
 */
#include "fetch.h"

#include <stdio.h>
#include <stdlib.h>

#include "m3/crc32c.h"
#include "m3/error.h"

/* The payload CRC32C without another pass over the bytes: the store has
 * just checked the record's memory against the mem_crc in its header, so
 * the CRC of header + memory is that CRC combined with the header's. */
static uint32_t payload_crc(const m3_fetch_item *it) {
  m3_record r;
  if (m3_record_parse(it->data, it->len, M3_PARSE_HEADER, &r) == 0 &&
      it->len == M3_RECORD_HEADER_SIZE + (size_t)r.mem_bytes)
    return m3_crc32c_combine(m3_crc32c(0, it->data, M3_RECORD_HEADER_SIZE), r.mem_crc,
                             r.mem_bytes);
  return m3_crc32c(0, it->data, it->len);
}

/* Make the send arrays hold n memories. */
static int send_scratch(server *s, size_t n) {
  if (n <= s->send.cap) return 0;
  size_t cap = s->send.cap ? s->send.cap : 256;
  while (cap < n) cap *= 2;
  size_t *ends = realloc(s->send.ends, cap * sizeof *ends);
  if (ends) s->send.ends = ends;
  size_t *att_lens = realloc(s->send.att_lens, cap * sizeof *att_lens);
  if (att_lens) s->send.att_lens = att_lens;
  const void **atts = realloc(s->send.atts, cap * sizeof *atts);
  if (atts) s->send.atts = atts;
  void **back = realloc(s->send.back, cap * sizeof *back);
  if (back) s->send.back = back;
  const m3_span **spans = realloc(s->send.spans, cap * sizeof *spans);
  if (spans) s->send.spans = spans;
  if (!ends || !att_lens || !atts || !back || !spans) return M3_ENOMEM;
  s->send.cap = cap;
  return 0;
}

void fetch_close(server *s) {
  free(s->send.ends);
  free(s->send.att_lens);
  free(s->send.atts);
  free(s->send.back);
  free(s->send.spans);
  s->send.cap = 0;
}

/* A write of memories: the read buffers it carries, given back once it is
 * done. Allocated by send_ready, freed by sent. */
typedef struct batch {
  call *cl;
  size_t n;
  size_t nspans; /* file spans it sends (m3_store_spans_release when done) */
  void *bufs[];
} batch;

static void sent(void *ud, int status) {
  batch *b = ud;
  (void)status;
  call *cl = b->cl;
  if (b->nspans) m3_store_spans_release(cl->c->s->store, b->nspans);
  rb_bufs_put(cl->c->s, cl->c, b->bufs, b->n);
  free(b);
  call_write_done(cl);
}

/* Queue frames [0, n) of the send arrays (s->send) with their attachments
 * as one write: attachments with a span go from the segment file (the
 * header, already read and checked, included), the others from memory. */
static int send_frames(conn *c, m3_wbuf *frames, size_t n, conn_write_cb cb, void *ud) {
  server *s = c->s;
  size_t nspans = 0;
  for (size_t i = 0; i < n; i++) nspans += s->send.spans[i] != NULL;
  if (nspans == 0)
    return conn_send_batch(c, frames, s->send.ends, s->send.atts, s->send.att_lens, n, cb, ud);
  conn_piece *p = malloc(2 * n * sizeof *p);
  if (p == NULL) return M3_ENOMEM;
  size_t np = 0, start = 0;
  for (size_t i = 0; i < n; i++) {
    p[np++] = (conn_piece){frames->data + start, -1, 0, s->send.ends[i] - start};
    start = s->send.ends[i];
    const m3_span *sp = s->send.spans[i];
    if (sp) p[np++] = (conn_piece){NULL, sp->fd, sp->off, sp->len};
    else if (s->send.att_lens[i]) p[np++] = (conn_piece){s->send.atts[i], -1, 0, s->send.att_lens[i]};
  }
  int rc = conn_send_pieces(c, frames->data, p, np, cb, ud);
  if (rc) {
    free(p);
    return rc;
  }
  frames->data = NULL;
  frames->len = frames->cap = 0;
  return 0;
}

/* rb_reads.send: send the call's memories read since the last time, in one
 * write; ends the call after its last memory. Buffers of failed items (and
 * of a call that already ended) go back at once. Never starts reads: the
 * caller pumps. */
static void send_ready(rb_reads *r) {
  fetch_req *fr = (fetch_req *)r;
  call *cl = r->cl;
  conn *c = cl->c;
  server *s = c->s;
  size_t n = r->nready;
  if (n == 0) return;
  r->nready = 0;
  fr->sent += n;
  c->fetching -= n * s->buf_cap; /* queued for writing (or given back) now */
  m3_wbuf frames = {0};
  batch *b = malloc(sizeof *b + n * sizeof b->bufs[0]);
  if (b == NULL || send_scratch(s, n) != 0) {
    call_end(cl, M3_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t j = 0; j < n; j++) {
      size_t it = r->ready[j];
      rb_bufs_put(s, c, &r->items[it].buf, 1);
      if (r->spans && r->spans[it].fd >= 0) m3_store_spans_release(s->store, 1);
      if (fr->texts) free(fr->texts[it]);
    }
    free(b);
    return;
  }
  b->cl = cl;
  b->n = 0;
  b->nspans = 0;
  size_t *ends = s->send.ends, *att_lens = s->send.att_lens;
  const void **atts = s->send.atts;
  const m3_span **spans = s->send.spans;
  void **back = s->send.back;
  size_t nf = 0, nback = 0;
  for (size_t j = 0; j < n; j++) {
    m3_fetch_item *it = &r->items[r->ready[j]];
    size_t i = fr->slot[r->ready[j]];
    char *text = fr->texts ? fr->texts[r->ready[j]] : NULL;
    const m3_span *sp = r->spans && r->spans[r->ready[j]].fd >= 0 ? &r->spans[r->ready[j]] : NULL;
    if (cl->ended || it->status != 0) {
      back[nback++] = it->buf;
      if (sp) m3_store_spans_release(s->store, 1);
      sp = NULL;
    }
    if (!cl->ended) { /* else deadline, CANCEL, lost connection: drop */
      M3__Memory m = M3__MEMORY__INIT;
      m.chunk_id = it->chunk_id;
      m.query = fr->k ? (uint32_t)(i / fr->k) : (uint32_t)i;
      m.rank = fr->k ? (uint32_t)(i % fr->k) : 0;
      m.score = fr->k ? fr->scores[i] : 0;
      size_t att_len = 0;
      if (it->status == 0) {
        att_len = it->len;
        m.payload_bytes = (uint32_t)it->len;
        m.payload_crc = payload_crc(it);
        if (text) m.text = text;
        b->bufs[b->n++] = it->buf;
      } else {
        m.status = (M3__StatusCode)m3_status_from_err(it->status);
        if (m.status == M3__STATUS_CODE__NOT_FOUND) s->m.items_not_found++;
        else if (m.status == M3__STATUS_CODE__DATA_LOSS) s->m.items_data_loss++;
        m.error = it->status == M3_ENOTFOUND ? "not in the store" : (char *)m3_strerror(it->status);
      }
      m3_frame f = {M3_FRAME_RESPONSE, 0, cl->method, cl->stream, 0, (uint32_t)att_len, 0};
      if (m3_frame_append(&frames, &f, &m.base) != 0) {
        call_end(cl, M3_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        if (sp) m3_store_spans_release(s->store, 1);
      } else {
        ends[nf] = frames.len;
        atts[nf] = att_len ? it->data : NULL;
        att_lens[nf] = att_len;
        spans[nf] = sp;
        if (sp) b->nspans++;
        nf++;
      }
    }
    /* The text is packed into the frame (or dropped): the store's copy goes. */
    if (text) {
      free(text);
      fr->texts[r->ready[j]] = NULL;
    }
  }
  if (!cl->ended && nf && send_frames(c, &frames, nf, sent, b) == 0) {
    call_write_queued(cl);
    for (size_t f = 0; f < nf; f++) {
      s->m.memories_served += att_lens[f] != 0;
      s->m.payload_bytes_served += att_lens[f];
      if (spans[f]) s->m.sendfile_bytes += att_lens[f];
    }
    b = NULL; /* the write gives them back */
  } else {
    if (!cl->ended) call_end(cl, M3_STATUS_UNAVAILABLE, "connection lost");
    if (b->nspans) m3_store_spans_release(s->store, b->nspans);
    rb_bufs_put(s, c, b->bufs, b->n);
  }
  if (!cl->ended && fr->sent == r->nitems) call_end(cl, M3_STATUS_OK, "%s", "");
  rb_bufs_put(s, c, back, nback);
  m3_wbuf_free(&frames);
  free(b);
}

/* Threadpool reads: the items [job_first, job_first + job_n) of a call. */
static void pool_work(uv_work_t *w) {
  fetch_req *fr = w->data;
  server *s = fr->r.cl->c->s;
  m3_fetch_item *items = fr->r.items + fr->job_first;
  fr->status = m3_store_fetch(s->store, items, fr->job_n);
  if (fr->status) snprintf(fr->errmsg, sizeof fr->errmsg, "%s", m3_errmsg());
  if (fr->texts)
    for (size_t j = 0; j < fr->job_n; j++) {
      size_t len;
      if (items[j].status == 0)
        m3_store_get_text(s->store, items[j].chunk_id, &fr->texts[fr->job_first + j], &len);
    }
}

static void pool_done(uv_work_t *w, int status) {
  fetch_req *fr = w->data;
  if (status != 0 || fr->status != 0)
    call_fail(fr->r.cl, fr->status ? fr->status : M3_EINTERNAL, "fetch: %s",
              fr->errmsg[0] ? fr->errmsg : m3_strerror(fr->status));
  rb_job_done(&fr->r, fr->job_first, fr->job_n);
}

/* rb_reads.run_job */
static void run_job(rb_reads *r, size_t first, size_t n) {
  fetch_req *fr = (fetch_req *)r;
  fr->job_first = first;
  fr->job_n = n;
  fr->work.data = fr;
  uv_queue_work(r->cl->c->s->loop, &fr->work, pool_work, pool_done);
}

void fetch_start(fetch_req *fr, call *cl, const uint64_t *ids, size_t nids, unsigned k,
                 const float *scores, int with_text) {
  rb_reads *r = &fr->r;
  r->cl = cl;
  r->run_job = run_job;
  r->send = send_ready;
  fr->k = k;
  fr->scores = scores;
  size_t n = 0;
  for (size_t i = 0; i < nids; i++) n += ids[i] != UINT64_MAX;
  r->items = call_alloc(cl, (n ? n : 1) * sizeof *r->items);
  fr->slot = call_alloc(cl, (n ? n : 1) * sizeof *fr->slot);
  r->ready = call_alloc(cl, (n ? n : 1) * sizeof *r->ready);
  r->t_start = call_alloc(cl, (n ? n : 1) * sizeof *r->t_start);
  if (with_text) fr->texts = call_alloc(cl, (n ? n : 1) * sizeof *fr->texts);
  /* Spans where the reads would run on the loop (with io_uring); reads on
   * the threadpool (pread, with_text) go through buffers. */
  int spans = cl->c->s->splice && cl->c->s->aio && !with_text;
  if (spans) r->spans = call_alloc(cl, (n ? n : 1) * sizeof *r->spans);
  if (!r->items || !fr->slot || !r->ready || !r->t_start || (with_text && !fr->texts) || (spans && !r->spans)) {
    call_end(cl, M3_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    rb_settle(r);
    return;
  }
  n = 0;
  for (size_t i = 0; i < nids; i++)
    if (ids[i] != UINT64_MAX) {
      r->items[n].chunk_id = ids[i];
      fr->slot[n++] = i;
    }
  r->nitems = n;
  if (n == 0) { /* a Retrieve over an empty store */
    call_end(cl, M3_STATUS_OK, "%s", "");
    rb_settle(r);
    return;
  }
  r->pool = with_text;
  rb_queue(r);
}
