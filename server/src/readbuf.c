/*
 * Read buffers and the read pump (readbuf.h).
 *
 * A Retrieve (after its search) or Fetch becomes nitems store reads, one
 * buffer each. Buffers come from the server's budget (fetch_memory): a call
 * waits in s->fetch_queue until it gets some, oldest call first, and none
 * while its connection's queued writes are past the high-water mark.
 *
 * With io_uring the reads are submitted from the loop (m3_store_aio) as
 * buffers allow, and every memory read by the time the loop looks is sent
 * in one write; a buffer returns to the budget when the write that carried
 * it completes. So a call's memories stream out as they are read, and a
 * call larger than the budget goes through it piece by piece.
 *
 * Otherwise (pread backend, or with_text: chunk texts come from the
 * catalog, a blocking lookup) the reads run as threadpool jobs (the
 * owner's run_job), one at a time per call, each over as many items as it
 * got buffers for.
 */
#include "readbuf.h"

#include <poll.h>
#include <stdlib.h>

#include "m3/error.h"
#include "m3/log.h"

static int busy(const rb_reads *r) {
  return r->reading > 0 || r->queued || r->flushing || r->job_running;
}

void rb_settle(rb_reads *r) {
  r->cl->working = busy(r);
  call_maybe_free(r->cl);
}

static void *buf_get(server *s) {
  void *b = s->nbufs ? s->bufs[--s->nbufs] : m3_store_buf_alloc(s->store, s->buf_cap);
  if (b && ++s->bufs_out > s->bufs_peak) s->bufs_peak = s->bufs_out;
  return b;
}

void rb_bufs_put(server *s, conn *c, void **bufs, size_t n) {
  size_t had = c->lent;
  for (size_t i = 0; i < n; i++) {
    if (bufs[i] == NULL) continue;
    if (s->nbufs < s->bufs_max) s->bufs[s->nbufs++] = bufs[i];
    else free(bufs[i]);
    s->bufs_out--;
    c->lent--;
  }
  if (had && c->lent == 0) s->borrowers--;
}

/* Lend up to n buffers to r's items from r->started on; returns how many. */
static size_t lend(server *s, rb_reads *r, size_t n) {
  size_t k = 0;
  for (; k < n; k++) {
    void *b = buf_get(s);
    if (b == NULL) break;
    r->items[r->started + k].buf = b;
    r->items[r->started + k].cap = s->buf_cap;
  }
  r->cl->c->fetching += k * s->buf_cap;
  if (r->cl->c->lent == 0 && k) s->borrowers++;
  r->cl->c->lent += k;
  return k;
}

/* Item i of r is read (at now): its latency into the histogram. */
static void read_done(server *s, rb_reads *r, size_t i, uint64_t now) {
  metrics_hist_observe(&s->m.store_read, (double)(now - r->t_start[i]) * 1e-9);
}

/* An item's read completed (from m3_store_aio_reap, on the loop). */
static void on_read(void *ud, m3_fetch_item *it) {
  rb_reads *r = ud;
  server *s = r->cl->c->s;
  r->reading--;
  read_done(s, r, (size_t)(it - r->items), now_ns());
  r->ready[r->nready++] = (size_t)(it - r->items);
  if (!r->flushing) {
    r->flushing = 1;
    r->flnext = s->flush;
    s->flush = r;
  }
}

/* Start the reads of k items from r->started on (buffers lent): 0, or an
 * m3 code (M3_EBUSY: a writer holds the store; nothing started). */
static int start_reads(server *s, rb_reads *r, size_t k) {
  uint64_t t0 = now_ns();
  for (size_t j = 0; j < k; j++) r->t_start[r->started + j] = t0;
  if (r->spans && !r->pool) {
    /* From the page cache: only the headers are read; the sender sends
     * the records' byte ranges from the files (flushed by rb_pump). */
    int rc = m3_store_spans(s->store, &r->items[r->started], k, &r->spans[r->started],
                            M3_SPANS_CACHED);
    if (rc < 0) return rc;
    if (rc == M3_SPANS_COLD) {
      s->m.sendfile_cold_batches++;
      goto read; /* not all in the page cache: read them on the io_uring */
    }
    uint64_t t1 = now_ns();
    for (size_t j = 0; j < k; j++) read_done(s, r, r->started + j, t1);
    for (size_t j = 0; j < k; j++) r->ready[r->nready++] = r->started + j;
    r->started += k;
    if (!r->flushing) {
      r->flushing = 1;
      r->flnext = s->flush;
      s->flush = r;
    }
    return 0;
  }
read:
  if (!r->pool) {
    int rc = m3_store_aio_submit(s->aio, &r->items[r->started], k, on_read, r);
    if (rc) return rc;
  } else {
    r->job_running = 1;
    r->run_job(r, r->started, k);
  }
  r->started += k;
  r->reading += k;
  return 0;
}

static void unqueue(server *s, rb_reads *r) {
  if (!r->queued) return;
  if (r->qprev) r->qprev->qnext = r->qnext;
  else s->fetch_queue = r->qnext;
  if (r->qnext) r->qnext->qprev = r->qprev;
  else s->fetch_tail = r->qprev;
  r->qnext = r->qprev = NULL;
  r->queued = 0;
  s->fetch_waiting--;
}

/* call.on_end: a call that ended leaves the queue for buffers at once. */
static void forget(void *ud) {
  rb_reads *r = ud;
  if (!r->queued) return;
  unqueue(r->cl->c->s, r);
  /* Reads it started still complete (and give their buffers back). */
  r->cl->working = busy(r);
}

static void on_aio_retry(uv_timer_t *t) {
  server *s = t->data;
  s->aio_busy = 0;
  rb_pump(s);
}

/*
 * Lend buffers and start reads, oldest call first; a call leaves the queue
 * once all its reads have started (a call that ends leaves at once:
 * forget). A call gets no more than its connection may take: nothing
 * while the connection's answers are past the write high-water mark, and
 * at most a fair share of the budget lent to one connection at a time:
 * a quarter, and no more than the budget over the connections holding
 * buffers plus one, so that there are always buffers for a newcomer
 * (buffers stay lent until the client has read their memories: a client
 * that stops reading, or reads at a trickle, pins its share until conn.c
 * closes it for draining below --min-drain-kb-per-s, and no more).
 */
static void flush_all(server *s);

static void pump_once(server *s) {
  size_t share = s->bufs_max / 4, hw = s->cfg.write_high_water;
  if (share > s->bufs_max / (s->borrowers + 1)) share = s->bufs_max / (s->borrowers + 1);
  if (share == 0) share = 1;
  for (rb_reads *r = s->fetch_queue, *next; r; r = next) {
    next = r->qnext;
    size_t avail = s->bufs_max > s->bufs_out ? s->bufs_max - s->bufs_out : 0;
    if (avail == 0 || s->aio_busy) break;
    conn *c = r->cl->c;
    size_t backlog = c->queued + c->fetching;
    if (backlog > 0 && backlog >= hw) {
      /* Its client is not reading: no buffers for it, and no more calls
       * from it until its writes drain (conn.c reads it again). */
      conn_pause_reading(c);
      continue;
    }
    if (r->job_running || c->lent >= share) continue;
    size_t want = r->nitems - r->started;
    size_t room = backlog < hw ? (hw - backlog + s->buf_cap - 1) / s->buf_cap : 1;
    if (want > avail) want = avail;
    if (want > room) want = room;
    if (want > share - c->lent) want = share - c->lent;
    size_t k = lend(s, r, want);
    int rc = k ? start_reads(s, r, k) : M3_ENOMEM;
    if (rc) {
      for (size_t j = 0; j < k; j++) rb_bufs_put(s, c, &r->items[r->started + j].buf, 1);
      c->fetching -= k * s->buf_cap;
      if (rc == M3_EBUSY) { /* a commit holds the store: try again in a moment */
        s->m.reads_deferred++;
        s->aio_busy = 1;
        uv_timer_start(&s->aio_retry, on_aio_retry, 1, 0);
        break;
      }
      call_fail(r->cl, rc, "fetch: %s",
                rc == M3_ENOMEM ? "out of memory for read buffers" : m3_errmsg());
    } else if (r->started < r->nitems) {
      continue;
    }
    unqueue(s, r);
    rb_settle(r);
  }
}

void rb_pump(server *s) {
  /* Spans are ready at once: send them, and go on while that gave buffers
   * back (failed items) and calls wait. */
  do {
    pump_once(s);
    if (!s->flush) break;
    flush_all(s);
  } while (s->fetch_queue);
}

void rb_queue(rb_reads *r) {
  call *cl = r->cl;
  server *s = cl->c->s;
  cl->on_end = forget;
  cl->on_end_ud = r;
  r->pool = r->pool || s->aio == NULL;
  r->queued = 1;
  cl->working = 1;
  r->qprev = s->fetch_tail;
  r->qnext = NULL;
  if (s->fetch_tail) s->fetch_tail->qnext = r;
  else s->fetch_queue = r;
  s->fetch_tail = r;
  s->fetch_waiting++;
  rb_pump(s);
}

void rb_job_done(rb_reads *r, size_t first, size_t n) {
  server *s = r->cl->c->s;
  r->job_running = 0;
  uint64_t now = now_ns();
  for (size_t j = 0; j < n; j++) read_done(s, r, first + j, now);
  for (size_t j = 0; j < n; j++) r->ready[r->nready++] = first + j;
  r->reading -= n;
  r->send(r); /* or, after an error, gives the buffers back */
  rb_settle(r);
  if (s->fetch_queue) rb_pump(s);
}

static void flush_all(server *s) {
  rb_reads *list = s->flush;
  s->flush = NULL;
  for (rb_reads *r = list, *next; r; r = next) {
    next = r->flnext;
    r->flushing = 0;
    r->send(r);
    rb_settle(r);
  }
}

static void on_aio(uv_poll_t *h, int status, int events) {
  server *s = h->data;
  (void)events;
  if (status < 0) M3_ERROR("server", "polling store reads: %s", uv_strerror(status));
  if (m3_store_aio_reap(s->aio) < 0) M3_ERROR("server", "store reads: %s", m3_errmsg());
  flush_all(s);
  if (s->fetch_queue) rb_pump(s);
}

void rb_written(conn *c) {
  /* Under the high-water mark again: its calls may get read buffers. */
  if (c->s->fetch_queue) rb_pump(c->s);
}

int rb_init(server *s) {
  s->buf_cap = m3_store_fetch_cap(s->store);
  s->bufs_max = s->cfg.fetch_memory / s->buf_cap;
  if (s->bufs_max == 0) s->bufs_max = 1;
  s->bufs = malloc(s->bufs_max * sizeof *s->bufs);
  if (s->bufs == NULL) return m3__seterr(M3_ENOMEM, "read buffer pool: out of memory");
  uv_timer_init(s->loop, &s->aio_retry);
  s->aio_retry.data = s;
  /* The default: memories in the page cache go out with sendfile (their
   * headers probed with RWF_NOWAIT, so the loop never waits for the disk
   * on this path); a batch with a record not in the page cache is read on
   * the io_uring into buffers and checked by the server. --no-sendfile and
   * O_DIRECT stores: always the buffers. */
  s->splice = s->cfg.sendfile && !s->cfg.direct;
  M3_INFO("server", "memories are sent %s",
          s->splice ? "from the page cache with sendfile where cached (the client checks their "
                      "CRC32C), the rest read into buffers"
                    : "from read buffers, checked by the server");
  int rc = m3_store_aio_open(s->store, 256, &s->aio);
  if (rc != 0) {
    M3_INFO("server", "memory reads run on the threadpool: %s", m3_errmsg());
    s->aio = NULL;
    return 0;
  }
  uv_poll_init(s->loop, &s->aio_poll, m3_store_aio_fd(s->aio));
  s->aio_poll.data = s;
  uv_poll_start(&s->aio_poll, UV_READABLE, on_aio);
  return 0;
}

void rb_close(server *s) {
  /* Calls that ended (deadline, closed connection) may still have reads in
   * flight: complete them, so that their buffers and the calls are freed. */
  for (int i = 0; s->aio && m3_store_aio_pending(s->aio) > 0 && i < 500; i++) {
    struct pollfd p = {m3_store_aio_fd(s->aio), POLLIN, 0};
    poll(&p, 1, 10);
    m3_store_aio_reap(s->aio);
    flush_all(s);
  }
  m3_store_aio_close(s->aio);
  s->aio = NULL;
  for (size_t i = 0; i < s->nbufs; i++) free(s->bufs[i]);
  free(s->bufs);
  s->bufs = NULL;
  s->nbufs = 0;
}
