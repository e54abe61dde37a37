/*
 * Hedged races: one shard's request sent to one replica and, after
 * hedge_delay_ms without an answer, to the next one too; the first
 * complete answer wins. What the request is (Search, Fetch) is the
 * phase's business (m3__race_ops from cluster_scatter.c and
 * cluster_fetch.c): this file runs attempts, decides the race, and stops
 * the losers.
 *
 * Attempts are pool tasks working on the race's own copy of the request,
 * so that a loser can outlive its call (close waits for it). The race is
 * refcounted: the waiting job and each attempt. Owns struct m3__race and
 * its lock (race.mu, cluster_int.h's lock order: below call.mu, above the
 * leaves).
 *
 * Workload: a race per shard per phase of a hedged call; two attempts
 * mostly; the waiting job wakes at the hedge time and on each attempt's end.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "cluster_int.h"
#include "m3/error.h"

typedef struct attempt {
  m3__task task; /* first member */
  m3__race *r;
  m3__replica *rep;
  m3__pconn *pc;   /* the connection its request is on, under r->mu */
  int state;       /* 0 queued, 1 working, 2 finished; under r->mu */
  int interrupted; /* the race ended while it ran: its connection was shut */
} attempt;

struct m3__race {
  m3_cluster *cl;
  uint32_t shard;
  int64_t deadline;
  const m3__race_ops *ops;
  void *arg;    /* the request, owned by the race */
  attempt *att; /* (shard's replicas): each replica once */
  uint32_t n_att;
  pthread_mutex_t mu; /* guards everything below */
  pthread_cond_t cv;  /* an attempt finished */
  int refs, done, running, queued, fatal, refused, tried, abandoned;
  int fatal_grpc, fatal_rep, last_rep;
  void *win;    /* the winner's result */
  char errs[700];
  size_t elen;
};

static void race_unref(m3__race *r) {
  pthread_mutex_lock(&r->mu);
  int left = --r->refs;
  pthread_mutex_unlock(&r->mu);
  if (left) return;
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
  if (r->win) r->ops->free_res(r->win);
  if (r->arg) r->ops->free_arg(r->arg);
  free(r->att);
  free(r);
}

int m3__race_over(m3__race *r) {
  pthread_mutex_lock(&r->mu);
  int over = r->done || r->abandoned;
  pthread_mutex_unlock(&r->mu);
  return over;
}

static void attempt_run(m3__task *t) {
  attempt *a = (attempt *)t;
  m3__race *r = a->r;
  m3_cluster *cl = r->cl;
  m3__replica *rep = a->rep;
  pthread_mutex_lock(&r->mu);
  r->queued--;
  int skip = r->done || r->abandoned;
  a->state = skip ? 2 : 1;
  pthread_mutex_unlock(&r->mu);
  void *res = NULL;
  int rc = 1, refused = 0, grpc = M3_STATUS_UNAVAILABLE, broken = 0, lost = skip;
  char why[400] = "";
  for (int fresh = 0; !skip && fresh < 2; fresh++) {
    int64_t now = m3__now_ms();
    int64_t end = now + cl->o.try_timeout_ms < r->deadline ? now + cl->o.try_timeout_ms
                                                           : r->deadline;
    m3__pconn *pc;
    int reused;
    rc = m3__conn_get(cl, rep, end, &pc, &reused);
    if (rc) {
      refused = rc == M3_EFINGERPRINT;
      broken = 1;
      snprintf(why, sizeof why, "%s", m3_errmsg());
      break;
    }
    pthread_mutex_lock(&r->mu);
    int over = r->done || r->abandoned;
    if (!over) a->pc = pc; /* from now on the waiter may interrupt it */
    pthread_mutex_unlock(&r->mu);
    if (over) {
      m3__conn_put(cl, rep, pc, 1);
      rc = 1;
      lost = 1;
      break;
    }
    int64_t left = end - m3__now_ms();
    m3_client_set_timeout(pc->c, left > 0 ? (int)left : 1);
    char peer[200] = "";
    rc = r->ops->attempt(r, r->arg, pc->c, &res, peer);
    pthread_mutex_lock(&r->mu);
    a->pc = NULL;
    int interrupted = a->interrupted;
    pthread_mutex_unlock(&r->mu);
    if (rc == M3_EBADFORMAT && peer[0]) {
      /* The replica broke the protocol: a failure of the replica, and its
       * connection is not to be reused. */
      snprintf(why, sizeof why, "%s", peer);
      broken = 1;
      lost = interrupted;
      m3__conn_put(cl, rep, pc, 0);
      break;
    }
    const char *msg = "";
    grpc = rc ? m3_client_last_status(pc->c, &msg) : M3_STATUS_OK;
    broken = !m3_client_ok(pc->c);
    lost = interrupted || (rc == 1 && !broken);
    snprintf(why, sizeof why, "%s", rc == M3_ENOMEM && !*msg ? "out of memory" : msg);
    /* Interrupted after its answer was in, it still looks usable: its
     * socket is shut all the same. */
    m3__conn_put(cl, rep, pc, !broken && !interrupted);
    if (rc && !lost && broken && reused && fresh == 0) {
      m3__replica_drop_idle(cl, rep);
      continue;
    }
    break;
  }
  if (rc == 0) m3__replica_ok(cl, rep);
  else if (!lost && (refused || broken || m3__retryable(grpc)))
    m3__replica_fail(cl, rep, refused, why);
  pthread_mutex_lock(&r->mu);
  r->running--;
  a->state = 2;
  if (rc == 0 && !r->done) {
    r->done = 1;
    r->win = res;
    res = NULL;
  } else if (rc && !lost) {
    if (!refused && !broken && !m3__retryable(grpc) && !r->fatal) {
      r->fatal = rc;
      r->fatal_grpc = grpc;
      r->fatal_rep = (int)rep->idx;
      r->elen = 0;
    }
    if (refused) r->refused++;
    r->last_rep = (int)rep->idx;
    m3__errs_add(r->errs, sizeof r->errs, &r->elen, rep->addr, why);
  }
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
  if (res) r->ops->free_res(res);
  race_unref(r);
}

static void race_launch(m3__race *r, m3__replica *rep) {
  attempt *a = &r->att[r->n_att++];
  *a = (attempt){.r = r, .rep = rep};
  a->task.run = attempt_run;
  pthread_mutex_lock(&r->mu);
  r->refs++;
  r->running++;
  r->queued++;
  r->tried++;
  pthread_mutex_unlock(&r->mu);
  m3__task_post(&r->cl->workers, &a->task);
}

/* Run one of r's attempts that no worker has started on this thread. */
static void race_steal(m3__race *r) {
  for (uint32_t i = 0; i < r->n_att; i++) {
    if (m3__task_take(&r->cl->workers, &r->att[i].task)) {
      attempt_run(&r->att[i].task);
      return;
    }
  }
}

static m3__race *race_new(m3__job *j, const m3__race_ops *ops, void *arg) {
  m3__call *ca = j->call;
  m3__race *r = calloc(1, sizeof *r);
  if (r == NULL) {
    ops->free_arg(arg);
    return NULL;
  }
  r->cl = ca->cl;
  r->shard = j->shard;
  r->deadline = ca->deadline;
  r->ops = ops;
  r->arg = arg;
  r->refs = 1;
  r->fatal_rep = r->last_rep = -1;
  r->att = calloc(m3__shard_size(ca->cl, j->shard), sizeof *r->att);
  pthread_mutex_init(&r->mu, NULL);
  m3__cond_init(&r->cv);
  if (r->att == NULL) {
    race_unref(r);
    return NULL;
  }
  return r;
}

/* Wait for r (see m3__race_run). An attempt that no worker picked up (the
 * pool is busy) is run here: that attempt is then not hedged, but nothing
 * waits on a queue. */
static void *race_wait(m3__job *j, m3__race *r) {
  m3__call *ca = j->call;
  m3_cluster *cl = ca->cl;
  uint32_t order[256], n = m3__replica_order(cl, j->shard, order), next = 0;
  race_launch(r, m3__replica_at(cl, j->shard, order[next++]));
  int64_t hedge_at = m3__now_ms() + cl->o.hedge_delay_ms;
  void *win = NULL;
  pthread_mutex_lock(&r->mu);
  for (;;) {
    if (r->done) {
      win = r->win;
      r->win = NULL;
      j->rc = 0;
      break;
    }
    if (r->fatal) {
      m3__job_err(j, r->fatal, r->fatal_grpc, r->fatal_rep, "shard %u: %s", j->shard, r->errs);
      break;
    }
    int stop = m3__call_stopped(ca);
    if (stop) {
      m3__job_stopped(j, stop);
      break;
    }
    int64_t now = m3__now_ms();
    if (r->running == 0 && next >= n) {
      if (r->refused == r->tried)
        m3__job_err(j, M3_EFINGERPRINT, M3_STATUS_FAILED_PRECONDITION, r->last_rep,
                    "shard %u: every replica refused: %s", j->shard, r->errs);
      else
        m3__job_err(j, M3_EBUSY, M3_STATUS_UNAVAILABLE, r->last_rep,
                    "shard %u unavailable: all %u replicas failed: %s", j->shard, n, r->errs);
      break;
    }
    if (now >= ca->deadline) {
      m3__job_err(j, M3_EBUSY, M3_STATUS_DEADLINE_EXCEEDED, r->last_rep,
                  "shard %u: deadline of %d ms passed: %s", j->shard, cl->o.call_timeout_ms,
                  r->elen ? r->errs : "no replica answered");
      break;
    }
    if (next < n && (r->running == 0 || now >= hedge_at)) {
      int hedge = r->running > 0;
      pthread_mutex_unlock(&r->mu);
      if (hedge) M3__COUNT(cl, hedges, 1);
      else M3__COUNT(cl, failovers, 1);
      race_launch(r, m3__replica_at(cl, j->shard, order[next++]));
      hedge_at = m3__now_ms() + cl->o.hedge_delay_ms;
      pthread_mutex_lock(&r->mu);
      continue;
    }
    /* Queued with no idle worker: every worker is busy, and the attempt
     * could wait behind other tasks for as long as they take. (An idle
     * worker with tasks queued is one signalled and about to take them.) */
    if (r->queued > 0 && m3__workers_idle(&cl->workers) == 0) {
      pthread_mutex_unlock(&r->mu);
      race_steal(r);
      pthread_mutex_lock(&r->mu);
      continue;
    }
    int64_t until = ca->deadline;
    if (next < n && hedge_at < until) until = hedge_at;
    if (r->queued > 0 && now + 1 < until) until = now + 1;
    if (ca->cancel && now + 20 < until) until = now + 20; /* notice a cancel */
    struct timespec ts;
    m3__abs_time(until, &ts);
    pthread_cond_timedwait(&r->cv, &r->mu, &ts);
  }
  /* Losers still queued skip their work; running ones are interrupted, so
   * that they free their worker now rather than after try_timeout_ms (a
   * slow replica would otherwise hold the pool). Their connections are
   * closed; the replica is not counted as failed but as slow (one still
   * connecting cannot be interrupted: it ends within connect_timeout_ms). */
  r->abandoned = 1;
  m3__replica *slow[256];
  uint32_t n_slow = 0;
  for (uint32_t i = 0; i < r->n_att; i++) {
    attempt *a = &r->att[i];
    if (win && a->state == 1) slow[n_slow++] = a->rep; /* lost, still working */
    if (a->pc == NULL) continue;
    a->interrupted = 1;
    m3__client_interrupt(a->pc->c);
  }
  pthread_mutex_unlock(&r->mu);
  for (uint32_t i = 0; i < n_slow; i++) m3__replica_slow(cl, slow[i]);
  return win;
}

void *m3__race_run(m3__job *j, const m3__race_ops *ops, void *arg) {
  m3__race *r = race_new(j, ops, arg);
  if (r == NULL) {
    m3__job_err(j, M3_ENOMEM, M3_STATUS_RESOURCE_EXHAUSTED, -1, "shard %u: out of memory",
                j->shard);
    return NULL;
  }
  void *win = race_wait(j, r);
  race_unref(r);
  return win;
}
