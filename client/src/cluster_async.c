/*
 * Async cluster calls: an op copies its request, runs as one task on the
 * cluster's worker pool (the same m3__cluster_run as a sync call, with a
 * cancel flag), and completes in the handle's mode (m3/cluster.h):
 *
 *   callback: the memory and done callbacks run on the worker threads;
 *   dispatch: memories are copied into a queue of events with the done
 *             events behind them, an eventfd says the queue is not empty,
 *             and m3_cluster_dispatch runs the callbacks on the
 *             application's (event loop) thread.
 *
 * Lifetime: an op holds one reference for the caller's handle (when asked
 * for) and one for the cluster until its done callback returned; the last
 * one frees it. The cluster keeps a list of the ops whose done has not run,
 * so that close can cancel them and owes no callback when it returns.
 *
 * Owns cl->async: async.mu (a leaf: the op list and the event queue) and
 * dispatch_mu (first in cluster_int.h's lock order: dispatched callbacks
 * run under it). Calls down only: the call runner, the pool, the copies.
 *
 * Workload: tens to hundreds of ops in flight (a worker's retrieval rounds
 * of several batches), each of ~100 memories of tens to hundreds of KB; a
 * dispatch-mode memory costs one malloc and one copy.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "cluster_int.h"
#include "m3/error.h"

struct m3_cluster_op {
  m3__task task; /* first member: the op runs as one pool task */
  m3_cluster *cl;
  m3__req rq;    /* the request, pointing into the copies below */
  m3_client_query *q;
  float *vecs;
  char *texts;
  uint64_t *ids;
  uint64_t *res;  /* search: ids (nq * k), scores, counts in one block */
  m3_client_memory_fn fn;
  m3_cluster_done_fn done;
  void *ud;
  atomic_int cancel;  /* m3_cluster_op_cancel, or close */
  atomic_int stop_rc; /* dispatch mode: fn's non-zero return in dispatch */
  atomic_int refs;    /* the caller's handle, and the cluster's until done ran */
  m3_cluster_error out; /* how the call ended (m3__cluster_run) */
  m3_cluster_op *prev, *next; /* cl->async.live, under cl->async.mu */
};

struct m3__event {
  m3__event *next;
  m3_cluster_op *op;
  int is_done;
  m3__memcopy mc; /* a memory event's copy */
};

static int dispatch_mode(const m3_cluster *cl) {
  return cl->o.completion == M3_CLUSTER_COMPLETION_DISPATCH;
}

static void op_destroy(m3_cluster_op *op) {
  free(op->q);
  free(op->vecs);
  free(op->texts);
  free(op->ids);
  free(op->res);
  free(op);
}

static void op_unref(m3_cluster_op *op) {
  if (atomic_fetch_sub(&op->refs, 1) == 1) op_destroy(op);
}

/* What done gets: the call's outcome, unless the op was stopped in
 * dispatch or cancelled before its done ran. */
static void op_result(m3_cluster_op *op, m3_cluster_result *res, char *msg, size_t cap) {
  const m3_cluster_error *o = &op->out;
  memset(res, 0, sizeof *res);
  res->rc = o->rc;
  res->status = o->status;
  res->shard = o->shard;
  res->replica = o->replica;
  res->addr = o->addr;
  snprintf(msg, cap, "%s", o->msg);
  int stop = atomic_load(&op->stop_rc);
  if (stop) {
    res->rc = stop;
    res->status = M3_STATUS_CANCELLED;
    res->shard = res->replica = -1;
    res->addr = "";
    snprintf(msg, cap, "stopped by the callback (%d)", stop);
  } else if (atomic_load(&op->cancel) && !(o->rc && o->status == M3_STATUS_CANCELLED)) {
    res->rc = M3_ECANCELED;
    res->status = M3_STATUS_CANCELLED;
    res->shard = res->replica = -1;
    res->addr = "";
    snprintf(msg, cap, "cancelled (m3_cluster_op_cancel or m3_cluster_close)");
  }
  res->msg = msg;
  if (op->rq.kind == M3__REQ_SEARCH) {
    res->nq = op->rq.nq;
    res->k = op->rq.k;
    res->ids = op->rq.ids_out;
    res->scores = op->rq.scores_out;
    res->counts = op->rq.counts_out;
  }
}

/* Run done, forget the op, drop the cluster's reference. */
static void op_complete(m3_cluster_op *op) {
  m3_cluster *cl = op->cl;
  m3_cluster_result res;
  char msg[1024];
  op_result(op, &res, msg, sizeof msg);
  if (op->done) op->done(op->ud, &res);
  pthread_mutex_lock(&cl->async.mu);
  if (op->prev) op->prev->next = op->next;
  else cl->async.live = op->next;
  if (op->next) op->next->prev = op->prev;
  pthread_mutex_unlock(&cl->async.mu);
  op_unref(op);
}

/* ---- dispatch mode: the event queue --------------------------------- */

static void ev_push(m3_cluster *cl, m3__event *ev) {
  ev->next = NULL;
  pthread_mutex_lock(&cl->async.mu);
  int was_empty = cl->async.ev_head == NULL;
  if (cl->async.ev_tail) cl->async.ev_tail->next = ev;
  else cl->async.ev_head = ev;
  cl->async.ev_tail = ev;
  /* Readable from the first event on; dispatch reads the fd before it
   * takes the queue, so an event pushed after that take writes again. */
  if (was_empty) {
    uint64_t one = 1;
    if (write(cl->async.efd, &one, sizeof one) < 0) { /* counter full: already readable */
    }
  }
  pthread_mutex_unlock(&cl->async.mu);
}

/* The memory callback of a dispatch-mode op, on a worker: copy, queue. */
static int queue_memory(void *ud, const m3_client_memory *m) {
  m3_cluster_op *op = ud;
  int stop = atomic_load(&op->stop_rc);
  if (stop) return stop;
  m3__event *ev = malloc(sizeof *ev);
  if (ev == NULL) return M3_ENOMEM;
  if (m3__memcopy_make(&ev->mc, m) != 0) {
    free(ev);
    return M3_ENOMEM;
  }
  ev->op = op;
  ev->is_done = 0;
  ev_push(op->cl, ev);
  return 0;
}

/* Run a list of events on this thread; returns how many callbacks ran. */
static int run_events(m3__event *ev) {
  int n = 0;
  while (ev) {
    m3__event *next = ev->next;
    m3_cluster_op *op = ev->op;
    if (ev->is_done) {
      op_complete(op);
      n++;
    } else {
      if (!atomic_load(&op->cancel) && !atomic_load(&op->stop_rc)) {
        int rc = op->fn(op->ud, &ev->mc.m);
        n++;
        int z = 0;
        if (rc) atomic_compare_exchange_strong(&op->stop_rc, &z, rc);
      }
      m3__memcopy_free(&ev->mc);
    }
    free(ev);
    ev = next;
  }
  return n;
}

static m3__event *ev_take_all(m3_cluster *cl) {
  pthread_mutex_lock(&cl->async.mu);
  m3__event *ev = cl->async.ev_head;
  cl->async.ev_head = cl->async.ev_tail = NULL;
  pthread_mutex_unlock(&cl->async.mu);
  return ev;
}

int m3_cluster_event_fd(m3_cluster *cl) {
  if (!dispatch_mode(cl))
    return m3__seterr(M3_EINVAL, "m3_cluster_event_fd: the cluster completes async ops by "
                                 "callback (options.completion), it has no event fd");
  return cl->async.efd;
}

int m3_cluster_dispatch(m3_cluster *cl) {
  if (!dispatch_mode(cl))
    return m3__seterr(M3_EINVAL, "m3_cluster_dispatch: the cluster completes async ops by "
                                 "callback (options.completion)");
  if (pthread_mutex_trylock(&cl->async.dispatch_mu) != 0)
    return m3__seterr(M3_EBUSY, "m3_cluster_dispatch: already dispatching (another thread, "
                                "or called from a dispatched callback)");
  uint64_t v;
  if (read(cl->async.efd, &v, sizeof v) < 0) { /* EAGAIN: not readable, nothing to clear */
  }
  int n = run_events(ev_take_all(cl));
  pthread_mutex_unlock(&cl->async.dispatch_mu);
  return n;
}

/* ---- running an op -------------------------------------------------- */

static void op_run(m3__task *t) {
  m3_cluster_op *op = (m3_cluster_op *)t;
  m3_cluster *cl = op->cl;
  m3__cluster_run(cl, &op->rq, &op->out);
  if (dispatch_mode(cl)) {
    m3__event *ev = calloc(1, sizeof *ev);
    /* Without memory for the event the done is owed still: m3_cluster_close
     * finds the op in cl->async.live and completes it. */
    if (ev) {
      ev->op = op;
      ev->is_done = 1;
      ev_push(cl, ev);
    }
  } else {
    op_complete(op);
  }
  pthread_mutex_lock(&cl->async.mu);
  cl->async.running--;
  pthread_cond_broadcast(&cl->async.cv);
  pthread_mutex_unlock(&cl->async.mu);
}

static m3_cluster_op *op_new(m3_cluster *cl, int kind, m3_client_memory_fn fn,
                             m3_cluster_done_fn done, void *ud) {
  m3_cluster_op *op = calloc(1, sizeof *op);
  if (op == NULL) return NULL;
  op->cl = cl;
  op->task.run = op_run;
  op->fn = fn;
  op->done = done;
  op->ud = ud;
  op->rq.kind = kind;
  atomic_init(&op->cancel, 0);
  atomic_init(&op->stop_rc, 0);
  atomic_init(&op->refs, 1);
  op->rq.cancel = &op->cancel;
  if (dispatch_mode(cl)) {
    op->rq.fn = queue_memory;
    op->rq.ud = op;
  } else {
    op->rq.fn = fn;
    op->rq.ud = ud;
  }
  return op;
}

static int op_submit(m3_cluster *cl, m3_cluster_op *op, m3_cluster_op **op_out) {
  pthread_mutex_lock(&cl->async.mu);
  if (cl->async.closing) {
    pthread_mutex_unlock(&cl->async.mu);
    op_destroy(op);
    return m3__seterr(M3_EBUSY, "m3_cluster: the cluster is closing, no new async ops");
  }
  op->prev = NULL;
  op->next = cl->async.live;
  if (cl->async.live) cl->async.live->prev = op;
  cl->async.live = op;
  cl->async.running++;
  pthread_mutex_unlock(&cl->async.mu);
  /* The deadline counts from submission, as the caller waits from now. */
  op->rq.deadline = m3__now_ms() + cl->o.call_timeout_ms;
  op->rq.params = m3__cluster_search_params(cl);
  if (op_out) {
    atomic_store(&op->refs, 2);
    *op_out = op;
  }
  m3__task_post(&cl->workers, &op->task);
  return 0;
}

static int copy_queries(m3_cluster_op *op, const m3_client_query *q, size_t nq, uint32_t k) {
  if (q == NULL || nq == 0) return m3__seterr(M3_EINVAL, "no queries");
  if (k == 0) return m3__seterr(M3_EINVAL, "k must be at least 1");
  if (m3__queries_copy(q, nq, &op->q, &op->vecs, &op->texts) != 0)
    return m3__seterr(M3_ENOMEM, "out of memory copying %zu queries", nq);
  op->rq.q = op->q;
  op->rq.nq = nq;
  op->rq.k = k;
  return 0;
}

int m3_cluster_retrieve_async(m3_cluster *cl, const m3_client_query *queries, size_t nq,
                              uint32_t k, int with_text, m3_client_memory_fn fn,
                              m3_cluster_done_fn done, void *ud, m3_cluster_op **op_out) {
  if (op_out) *op_out = NULL;
  if (fn == NULL) return m3__seterr(M3_EINVAL, "m3_cluster_retrieve_async: no memory callback");
  m3_cluster_op *op = op_new(cl, M3__REQ_RETRIEVE, fn, done, ud);
  if (op == NULL) return m3__seterr(M3_ENOMEM, "out of memory");
  int rc = copy_queries(op, queries, nq, k);
  if (rc) {
    op_destroy(op);
    return rc;
  }
  op->rq.with_text = with_text;
  return op_submit(cl, op, op_out);
}

int m3_cluster_fetch_async(m3_cluster *cl, const uint64_t *ids, size_t n, int with_text,
                           m3_client_memory_fn fn, m3_cluster_done_fn done, void *ud,
                           m3_cluster_op **op_out) {
  if (op_out) *op_out = NULL;
  if (fn == NULL) return m3__seterr(M3_EINVAL, "m3_cluster_fetch_async: no memory callback");
  if (ids == NULL || n == 0) return m3__seterr(M3_EINVAL, "m3_cluster_fetch_async: no ids");
  m3_cluster_op *op = op_new(cl, M3__REQ_FETCH, fn, done, ud);
  if (op) op->ids = malloc(n * sizeof *op->ids);
  if (op == NULL || op->ids == NULL) {
    if (op) op_destroy(op);
    return m3__seterr(M3_ENOMEM, "out of memory copying %zu ids", n);
  }
  memcpy(op->ids, ids, n * sizeof *ids);
  op->rq.ids = op->ids;
  op->rq.n = n;
  op->rq.with_text = with_text;
  return op_submit(cl, op, op_out);
}

int m3_cluster_search_async(m3_cluster *cl, const m3_client_query *queries, size_t nq,
                            uint32_t k, m3_cluster_done_fn done, void *ud,
                            m3_cluster_op **op_out) {
  if (op_out) *op_out = NULL;
  m3_cluster_op *op = op_new(cl, M3__REQ_SEARCH, NULL, done, ud);
  if (op == NULL) return m3__seterr(M3_ENOMEM, "out of memory");
  int rc = copy_queries(op, queries, nq, k);
  size_t n = nq * k;
  if (rc == 0) {
    op->res = malloc(n * sizeof(uint64_t) + n * sizeof(float) + nq * sizeof(uint32_t));
    if (op->res == NULL) rc = m3__seterr(M3_ENOMEM, "out of memory for %zu results", n);
  }
  if (rc) {
    op_destroy(op);
    return rc;
  }
  op->rq.ids_out = op->res;
  op->rq.scores_out = (float *)(op->res + n);
  op->rq.counts_out = (uint32_t *)(op->rq.scores_out + n);
  return op_submit(cl, op, op_out);
}

void m3_cluster_op_cancel(m3_cluster_op *op) {
  if (op) atomic_store(&op->cancel, 1);
}

void m3_cluster_op_free(m3_cluster_op *op) {
  if (op) op_unref(op);
}

/* ---- init / close --------------------------------------------------- */

int m3__async_init(m3_cluster *cl) {
  m3__async *a = &cl->async;
  a->efd = -1;
  pthread_mutex_init(&a->mu, NULL);
  pthread_cond_init(&a->cv, NULL);
  pthread_mutex_init(&a->dispatch_mu, NULL);
  if (dispatch_mode(cl) && (a->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
    return m3__syserr(errno, "m3_cluster_open: eventfd for dispatch mode");
  return 0;
}

void m3__async_free(m3_cluster *cl) {
  m3__async *a = &cl->async;
  if (a->efd >= 0) close(a->efd);
  a->efd = -1;
  pthread_mutex_destroy(&a->mu);
  pthread_cond_destroy(&a->cv);
  pthread_mutex_destroy(&a->dispatch_mu);
}

void m3__async_close(m3_cluster *cl) {
  pthread_mutex_lock(&cl->async.mu);
  cl->async.closing = 1;
  for (m3_cluster_op *op = cl->async.live; op; op = op->next) atomic_store(&op->cancel, 1);
  while (cl->async.running > 0) pthread_cond_wait(&cl->async.cv, &cl->async.mu);
  pthread_mutex_unlock(&cl->async.mu);
  if (!dispatch_mode(cl)) return;
  /* The done callbacks still queued run here; their memories are dropped
   * (the ops are cancelled). One dispatcher at a time, as ever. */
  pthread_mutex_lock(&cl->async.dispatch_mu);
  run_events(ev_take_all(cl));
  /* Ops whose done event could not be queued (out of memory). */
  for (;;) {
    pthread_mutex_lock(&cl->async.mu);
    m3_cluster_op *op = cl->async.live;
    pthread_mutex_unlock(&cl->async.mu);
    if (op == NULL) break;
    op_complete(op);
  }
  pthread_mutex_unlock(&cl->async.dispatch_mu);
}
