/*
 * A call's per-shard jobs: the state a call's jobs share (the deadline,
 * the callback serialised by call.mu, the stop and cancel flags), running
 * one phase's jobs on the worker pool and the calling thread
 * (m3__jobs_run), and failover: a job's request tried on one replica of
 * its shard after another (m3__shard_run; rules in m3/cluster.h). What a
 * request is comes from the phase (cluster_scatter.c, cluster_fetch.c) as
 * an op callback; this file calls only the replicas and the pool.
 *
 * Workload: a job per shard per phase (single-digit shards), a replica or
 * two tried each; call.wmu is held for a counter update.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"
#include "m3/error.h"

/* ---- call state ----------------------------------------------------- */

void m3__call_init(m3__call *ca, m3_cluster *cl, const m3__req *rq) {
  memset(ca, 0, sizeof *ca);
  ca->cl = cl;
  ca->deadline = rq->deadline;
  ca->q = rq->q;
  ca->nq = rq->nq;
  ca->k = rq->k;
  ca->params = rq->params;
  ca->with_text = rq->with_text;
  ca->fn = rq->fn;
  ca->land = rq->land;
  ca->ud = rq->ud;
  ca->cancel = rq->cancel;
  pthread_mutex_init(&ca->mu, NULL);
  pthread_mutex_init(&ca->wmu, NULL);
  pthread_cond_init(&ca->wcv, NULL);
  atomic_init(&ca->stop_rc, 0);
  atomic_init(&ca->cancelled, 0);
  M3__COUNT(cl, calls, 1);
}

void m3__call_destroy(m3__call *ca) {
  m3__jobs_free(ca);
  pthread_mutex_destroy(&ca->mu);
  pthread_mutex_destroy(&ca->wmu);
  pthread_cond_destroy(&ca->wcv);
}

int m3__jobs_make(m3__call *ca) {
  uint32_t ns = ca->cl->n_shards;
  ca->jobs = calloc(ns, sizeof *ca->jobs);
  if (ca->jobs == NULL) return m3__seterr(M3_ENOMEM, "out of memory");
  for (uint32_t s = 0; s < ns; s++) {
    ca->jobs[s].call = ca;
    ca->jobs[s].shard = s;
    ca->jobs[s].replica = -1;
  }
  return 0;
}

void m3__jobs_free(m3__call *ca) {
  if (ca->jobs == NULL) return;
  for (uint32_t s = 0; s < ca->cl->n_shards; s++) {
    m3__job *j = &ca->jobs[s];
    free(j->uids);
    free(j->ustart);
    free(j->done);
    free(j->fails);
    free(j->batch);
    free(j->batch_u);
  }
  /* The phases hang their one block of every job's arrays on job 0. */
  free(ca->jobs[0].slots);
  free(ca->jobs[0].ids);
  free(ca->jobs);
  ca->jobs = NULL;
}

int m3__call_stop(m3__call *ca, int rc) {
  int z = 0;
  if (!atomic_compare_exchange_strong(&ca->stop_rc, &z, rc)) return z;
  return rc;
}

int m3__call_stopped(m3__call *ca) {
  int s = atomic_load(&ca->stop_rc);
  if (s == 0 && ca->cancel && atomic_load(ca->cancel)) {
    int z = 0;
    if (atomic_compare_exchange_strong(&ca->stop_rc, &z, M3_ECANCELED)) atomic_store(&ca->cancelled, 1);
    s = atomic_load(&ca->stop_rc);
  }
  return s;
}

void m3__job_err(m3__job *j, int rc, int grpc, int replica, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(j->msg, sizeof j->msg, fmt, ap);
  va_end(ap);
  j->rc = rc;
  j->grpc = grpc;
  j->replica = replica;
}

void m3__job_stopped(m3__job *j, int stop) {
  m3__job_err(j, stop, M3_STATUS_CANCELLED, -1, "%s",
              atomic_load(&j->call->cancelled) ? "cancelled" : "stopped by the callback");
}

int m3__retryable(int grpc) {
  if (grpc <= 0 || grpc >= M3_STATUS_COUNT) return 1;
  return m3_status_retryable(grpc);
}

void m3__errs_add(char *buf, size_t cap, size_t *len, const char *addr, const char *why) {
  if (*len >= cap - 1) return;
  int n = snprintf(buf + *len, cap - *len, "%s%s: %.200s", *len ? "; " : "", addr, why);
  if (n > 0) *len += (size_t)n < cap - *len ? (size_t)n : cap - *len - 1;
}

/* ---- running a phase's jobs ----------------------------------------- */

static void job_task(m3__task *t) {
  m3__job *j = (m3__job *)t; /* task is the first member */
  m3__call *ca = j->call;
  j->fn(j);
  pthread_mutex_lock(&ca->wmu);
  if (--ca->pending == 0) pthread_cond_signal(&ca->wcv);
  pthread_mutex_unlock(&ca->wmu);
}

void m3__jobs_run(m3__call *ca, void (*fn)(m3__job *), int skip_empty) {
  m3_cluster *cl = ca->cl;
  uint32_t n = cl->n_shards;
  m3__job *mine = NULL;
  ca->pending = 0;
  for (uint32_t i = 0; i < n; i++) {
    m3__job *j = &ca->jobs[i];
    if (skip_empty && j->nu == 0) continue;
    j->fn = fn;
    j->task.run = job_task;
    if (mine == NULL) {
      mine = j;
      continue;
    }
    pthread_mutex_lock(&ca->wmu);
    ca->pending++;
    pthread_mutex_unlock(&ca->wmu);
    m3__task_post(&cl->workers, &j->task);
  }
  if (mine == NULL) return;
  fn(mine);
  for (uint32_t i = 0; i < n; i++) {
    m3__job *j = &ca->jobs[i];
    if (j != mine && !(skip_empty && j->nu == 0) && m3__task_take(&cl->workers, &j->task))
      job_task(&j->task);
  }
  pthread_mutex_lock(&ca->wmu);
  while (ca->pending > 0) pthread_cond_wait(&ca->wcv, &ca->wmu);
  pthread_mutex_unlock(&ca->wmu);
}

/* ---- failover driver ------------------------------------------------ */

void m3__shard_run(m3__job *j, m3__shard_op op, m3__shard_fails_fn fails, int answered) {
  m3__call *ca = j->call;
  m3_cluster *cl = ca->cl;
  int is_fetch = fails != NULL;
  uint32_t order[256], n = m3__replica_order(cl, j->shard, order);
  char errs[700] = "";
  size_t elen = 0;
  int refused = 0, last = -1; /* last: the replica that failed last */
  j->rc = 0;
  j->replica = -1;
  for (uint32_t i = 0; i < n; i++) {
    if (is_fetch && j->n_done == j->nu) return;
    int stop = m3__call_stopped(ca);
    if (stop) {
      m3__job_stopped(j, stop);
      return;
    }
    m3__replica *rep = m3__replica_at(cl, j->shard, order[i]);
    if (i > 0) M3__COUNT(cl, failovers, 1);
    for (int fresh = 0; fresh < 2; fresh++) {
      int64_t now = m3__now_ms();
      if (now >= ca->deadline) {
        m3__job_err(j, M3_EBUSY, M3_STATUS_DEADLINE_EXCEEDED, last,
                    "shard %u: deadline of %d ms passed: %s", j->shard, cl->o.call_timeout_ms,
                    elen ? errs : "no replica answered in time");
        return;
      }
      int64_t end = now + cl->o.try_timeout_ms < ca->deadline ? now + cl->o.try_timeout_ms
                                                              : ca->deadline;
      m3__pconn *pc;
      int reused;
      int rc = m3__conn_get(cl, rep, end, &pc, &reused);
      if (rc) {
        refused += rc == M3_EFINGERPRINT;
        m3__errs_add(errs, sizeof errs, &elen, rep->addr, m3_errmsg());
        m3__replica_fail(cl, rep, rc == M3_EFINGERPRINT, m3_errmsg());
        last = (int)rep->idx;
        break;
      }
      int64_t left = end - m3__now_ms();
      m3_client_set_timeout(pc->c, left > 0 ? (int)left : 1);
      j->peer_err[0] = '\0';
      rc = op(j, pc->c);
      if (rc == 0) {
        m3__conn_put(cl, rep, pc, 1);
        m3__replica_ok(cl, rep);
        answered = 1;
        if (!is_fetch || j->n_done == j->nu) return;
        break; /* items that failed alone: ask the next replica for them */
      }
      if ((stop = m3__call_stopped(ca)) != 0) {
        m3__conn_put(cl, rep, pc, 1);
        m3__job_stopped(j, stop);
        return;
      }
      char why[400];
      int broken;
      if (rc == M3_EBADFORMAT && j->peer_err[0]) {
        /* The replica broke the protocol: its answer cannot be trusted, nor
         * the rest of its stream on this connection. */
        snprintf(why, sizeof why, "%s", j->peer_err);
        m3__conn_put(cl, rep, pc, 0);
        broken = 0;
      } else {
        const char *msg;
        int grpc = m3_client_last_status(pc->c, &msg);
        broken = !m3_client_ok(pc->c);
        if (!broken && !m3__retryable(grpc)) {
          m3__job_err(j, rc, grpc, (int)rep->idx, "shard %u: %s", j->shard, msg);
          m3__conn_put(cl, rep, pc, 1);
          return;
        }
        snprintf(why, sizeof why, "%s", msg);
        m3__conn_put(cl, rep, pc, !broken);
      }
      if (broken && reused && fresh == 0) {
        /* The pooled connection may have died while idle: one fresh try. */
        m3__replica_drop_idle(cl, rep);
        continue;
      }
      m3__errs_add(errs, sizeof errs, &elen, rep->addr, why);
      m3__replica_fail(cl, rep, 0, why);
      last = (int)rep->idx;
      break;
    }
  }
  if (is_fetch && answered) {
    /* Every replica was asked; what is left failed alone on each. */
    for (size_t u = 0; u < j->nu; u++)
      if (!j->done[u] && j->fails[u].status == 0) goto unavailable;
    fails(j);
    return;
  }
unavailable:
  if (refused == (int)n)
    m3__job_err(j, M3_EFINGERPRINT, M3_STATUS_FAILED_PRECONDITION, last,
                "shard %u: every replica refused: %s", j->shard, errs);
  else
    m3__job_err(j, M3_EBUSY, M3_STATUS_UNAVAILABLE, last,
                "shard %u unavailable: all %u replicas failed: %s", j->shard, n, errs);
}
