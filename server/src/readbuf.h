/*
 * Read buffers and the read pump (readbuf.c): the server-wide budget of
 * read buffers (fetch_memory bytes, one memory each), the queue of calls
 * waiting for them, oldest first, and the io_uring reads (m3_store_aio)
 * that run on the loop. A call's memories are its owner's (fetch.c): the
 * pump lends buffers to a call's items, starts their reads (on the loop,
 * or through the owner's run_job on the threadpool), and hands the items
 * read back through the owner's send.
 */
#ifndef M3_SERVER_READBUF_H
#define M3_SERVER_READBUF_H

#include "call.h"

/* One call's reads: items[0, nitems), each given a buffer in order. */
struct rb_reads {
  call *cl;
  m3_fetch_item *items;
  size_t nitems;
  size_t started;     /* items [0, started) have buffers and were started */
  size_t reading;     /* items started and not yet read */
  size_t *ready;      /* (nitems) items read, waiting to be sent */
  uint64_t *t_start;  /* (nitems) when each item's read started (now_ns;
                         m3_store_read_duration_seconds) */
  size_t nready;
  m3_span *spans;     /* (nitems) with s->splice: where each memory lies
                         (m3_store_spans); the sender releases them */
  int pool;           /* reads run as threadpool jobs (run_job) */
  int job_running;    /* a job is on the threadpool (set by the pump) */
  int queued;         /* in s->fetch_queue */
  int flushing;       /* in s->flush */
  rb_reads *qnext, *qprev, *flnext;
  /* The owner's: start a threadpool job reading items [first, first + n)
   * (pool only); it calls rb_job_done when it is back. */
  void (*run_job)(rb_reads *r, size_t first, size_t n);
  /* The owner's: send the items in ready[0, nready), give their buffers to
   * the writes or back (rb_bufs_put), and empty ready. */
  void (*send)(rb_reads *r);
};

/* Queue r for buffers (r->cl held until its reads are done) and pump. The
 * call's on_end takes it out of the queue when it ends. */
void rb_queue(rb_reads *r);

/* Start reads that wait for buffers, oldest call first. */
void rb_pump(server *s);

/* A threadpool job of r is back: its n items are read (ready), sent. */
void rb_job_done(rb_reads *r, size_t first, size_t n);

/* Whether the reads still hold the call (reads out, waiting for buffers,
 * memories to send, a threadpool job); sets cl->working from it and frees
 * the call when nothing references it any more. */
void rb_settle(rb_reads *r);

/* Give n read buffers lent to c back to the server's budget (NULL entries
 * are skipped); starts nothing: the caller pumps. */
void rb_bufs_put(server *s, conn *c, void **bufs, size_t n);

/* conn_hooks.written: c's backlog went down; calls waiting may go on. */
void rb_written(conn *c);

/* Set up and tear down the budget and the loop reads (aio NULL: threadpool
 * reads only). rb_close completes reads still in flight first. */
int rb_init(server *s);
void rb_close(server *s);

#endif /* M3_SERVER_READBUF_H */
