/*
 * The cluster calls: Search (the search phase, cluster_scatter.c),
 * Retrieve (that search, then Fetch of the winners from their owning
 * shards, cluster_fetch.c, streamed to the caller tagged with query and
 * rank), and Fetch by ids; how a call ended, as an m3_cluster_error with
 * the shard and replica that decided it; the sync entry points, and the
 * runner async ops use (m3__cluster_run, cluster_async.c). Also the
 * whole-cluster calls m3_cluster_info and m3_cluster_check.
 *
 * Workload: a retrieval round every 64 generated tokens of a batch of up to
 * a few hundred queries x top-5; shards in the single digits; calls of
 * milliseconds, many threads or async ops at once.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"
#include "m3/error.h"

/* End the call into *out: the first failed shard (lowest number) decides;
 * a callback stop or a cancel wins over everything. */
static void call_end(m3__call *ca, int rc, m3_cluster_error *out) {
  int stop = atomic_load(&ca->stop_rc);
  m3__cluster_error_from_errmsg(out, 0);
  if (stop) {
    rc = stop;
    out->status = M3_STATUS_CANCELLED;
    if (atomic_load(&ca->cancelled))
      snprintf(out->msg, sizeof out->msg, "cancelled (m3_cluster_op_cancel or m3_cluster_close)");
    else
      snprintf(out->msg, sizeof out->msg, "stopped by the callback (%d)", stop);
  } else if (rc == 0 && ca->jobs) {
    for (uint32_t s = 0; s < ca->cl->n_shards; s++) {
      const m3__job *j = &ca->jobs[s];
      if (j->rc == 0) continue;
      rc = j->rc;
      out->status = j->grpc;
      out->shard = (int)s;
      out->replica = j->replica;
      if (j->replica >= 0)
        snprintf(out->addr, sizeof out->addr, "%s",
                 m3__replica_at(ca->cl, s, (uint32_t)j->replica)->addr);
      snprintf(out->msg, sizeof out->msg, "%s", j->msg);
      break;
    }
  } else if (rc) {
    m3__cluster_error_from_errmsg(out, rc);
  }
  out->rc = rc;
  if (rc && !stop) M3__COUNT(ca->cl, failed, 1);
  m3__call_destroy(ca);
}

static int check_queries(const m3_client_query *q, size_t nq, uint32_t k) {
  if (q == NULL || nq == 0) return m3__seterr(M3_EINVAL, "no queries");
  if (k == 0) return m3__seterr(M3_EINVAL, "k must be at least 1");
  return 0;
}

static int do_search(m3__call *ca, const m3__req *rq) {
  int rc = check_queries(rq->q, rq->nq, rq->k);
  if (rc == 0) rc = m3__scatter_search(ca, rq->ids_out, rq->scores_out, rq->counts_out);
  return rc;
}

static int do_retrieve(m3__call *ca) {
  m3_cluster *cl = ca->cl;
  int rc = check_queries(ca->q, ca->nq, ca->k);
  if (rc) return rc;
  size_t n = ca->nq * ca->k, k = ca->k;
  uint64_t *ids = malloc(n * (sizeof *ids + sizeof(float)) + ca->nq * sizeof(uint32_t));
  m3__slot *slots = malloc(n * sizeof *slots);
  if (ids == NULL || slots == NULL) {
    rc = m3__seterr(M3_ENOMEM, "out of memory for %zu results", n);
    goto out;
  }
  float *scores = (float *)(ids + n);
  uint32_t *counts = (uint32_t *)(scores + n);
  if ((rc = m3__scatter_search(ca, ids, scores, counts)) != 0) goto out;
  for (uint32_t s = 0; s < cl->n_shards; s++)
    if (ca->jobs[s].rc) goto out; /* a shard failed: nothing was delivered */
  if (m3__call_stopped(ca)) goto out; /* cancelled during the search */
  size_t ns = 0;
  for (size_t q = 0; q < ca->nq; q++)
    for (uint32_t r = 0; r < counts[q]; r++)
      slots[ns++] = (m3__slot){ids[q * k + r], (uint32_t)q, r, scores[q * k + r]};
  m3__jobs_free(ca);
  if ((rc = m3__jobs_make(ca)) != 0) goto out;
  if (ns == 0) goto out;
  rc = m3__fetch_run(ca, slots, ns);
out:
  free(ids);
  free(slots);
  return rc;
}

static int do_fetch(m3__call *ca, const uint64_t *ids, size_t n) {
  if (ids == NULL || n == 0) return m3__seterr(M3_EINVAL, "no ids");
  m3__slot *slots = malloc(n * sizeof *slots);
  int rc = slots ? 0 : m3__seterr(M3_ENOMEM, "out of memory for %zu ids", n);
  if (rc == 0) rc = m3__cluster_ensure_ref(ca->cl, ca->deadline);
  if (rc == 0) rc = m3__jobs_make(ca);
  if (rc == 0) {
    for (size_t i = 0; i < n; i++) slots[i] = (m3__slot){ids[i], (uint32_t)i, 0, 0};
    rc = m3__fetch_run(ca, slots, n);
  }
  free(slots);
  return rc;
}

void m3__cluster_run(m3_cluster *cl, const m3__req *rq, m3_cluster_error *out) {
  m3__call ca;
  m3__call_init(&ca, cl, rq);
  int rc;
  if (m3__call_stopped(&ca)) rc = 0; /* cancelled before it started */
  else if (rq->kind == M3__REQ_SEARCH) rc = do_search(&ca, rq);
  else if (rq->kind == M3__REQ_RETRIEVE) rc = do_retrieve(&ca);
  else rc = do_fetch(&ca, rq->ids, rq->n);
  call_end(&ca, rc, out);
}

/* A sync call: run it here, leave its error for m3_cluster_last_error and
 * m3_errmsg. */
static int run_sync(m3_cluster *cl, m3__req *rq) {
  rq->deadline = m3__now_ms() + cl->o.call_timeout_ms;
  rq->params = m3__cluster_search_params(cl);
  m3_cluster_error out;
  m3__cluster_run(cl, rq, &out);
  m3__cluster_error_set(&out);
  return out.rc;
}

void m3_cluster_set_search_params(m3_cluster *cl, const m3_search_params *p) {
  uint64_t v = p ? (uint64_t)p->nprobe | (uint64_t)p->ef_search << 32 : 0;
  atomic_store(&cl->search_params, v);
}

m3_search_params m3__cluster_search_params(m3_cluster *cl) {
  uint64_t v = atomic_load(&cl->search_params);
  return (m3_search_params){.nprobe = (uint32_t)v, .ef_search = (uint32_t)(v >> 32)};
}

int m3_cluster_search(m3_cluster *cl, const m3_client_query *queries, size_t nq, uint32_t k,
                      uint64_t *ids, float *scores, uint32_t *counts) {
  m3__req rq = {.kind = M3__REQ_SEARCH, .q = queries, .nq = nq, .k = k, .ids_out = ids,
                .scores_out = scores, .counts_out = counts};
  return run_sync(cl, &rq);
}

int m3_cluster_retrieve(m3_cluster *cl, const m3_client_query *queries, size_t nq, uint32_t k,
                        int with_text, m3_client_memory_fn fn, void *ud) {
  m3__req rq = {.kind = M3__REQ_RETRIEVE, .q = queries, .nq = nq, .k = k,
                .with_text = with_text, .fn = fn, .ud = ud};
  return run_sync(cl, &rq);
}

int m3_cluster_fetch(m3_cluster *cl, const uint64_t *ids, size_t n, int with_text,
                     m3_client_memory_fn fn, void *ud) {
  m3__req rq = {.kind = M3__REQ_FETCH, .ids = ids, .n = n, .with_text = with_text, .fn = fn,
                .ud = ud};
  return run_sync(cl, &rq);
}

int m3_cluster_retrieve_into(m3_cluster *cl, const m3_client_query *queries, size_t nq,
                             uint32_t k, int with_text, m3_client_land_fn land,
                             m3_client_memory_fn fn, void *ud) {
  m3__req rq = {.kind = M3__REQ_RETRIEVE, .q = queries, .nq = nq, .k = k,
                .with_text = with_text, .fn = fn, .land = land, .ud = ud};
  return run_sync(cl, &rq);
}

int m3_cluster_fetch_into(m3_cluster *cl, const uint64_t *ids, size_t n, int with_text,
                          m3_client_land_fn land, m3_client_memory_fn fn, void *ud) {
  m3__req rq = {.kind = M3__REQ_FETCH, .ids = ids, .n = n, .with_text = with_text, .fn = fn,
                .land = land, .ud = ud};
  return run_sync(cl, &rq);
}

/* ---- whole-cluster calls -------------------------------------------- */

int m3_cluster_info(m3_cluster *cl, m3_client_info *out) {
  int rc = m3__cluster_ensure_ref(cl, m3__now_ms() + cl->o.call_timeout_ms);
  if (rc) return rc;
  m3__cluster_ref(cl, out);
  return 0;
}

/* Hello on rep (a pooled connection proven alive by Health, else a new
 * one): 0, or the code with m3_errmsg() saying why. */
static int check_replica(m3_cluster *cl, m3__replica *rep, int64_t deadline) {
  m3__pconn *pc;
  int reused;
  int rc = m3__conn_get(cl, rep, deadline, &pc, &reused);
  if (rc == 0 && reused) {
    int serving;
    m3_client_set_timeout(pc->c, cl->o.try_timeout_ms);
    if (m3_client_health(pc->c, &serving, NULL, 0) != 0) {
      m3__conn_put(cl, rep, pc, 0);
      m3__replica_drop_idle(cl, rep);
      rc = m3__conn_get(cl, rep, deadline, &pc, &reused);
    }
  }
  if (rc == 0) m3__conn_put(cl, rep, pc, 1);
  return rc;
}

int m3_cluster_check(m3_cluster *cl) {
  int64_t deadline = m3__now_ms() + cl->o.call_timeout_ms;
  int first = m3__cluster_ensure_ref(cl, deadline);
  m3_cluster_error e;
  m3__cluster_error_from_errmsg(&e, first);
  size_t len = first ? strlen(e.msg) : 0;
  for (uint32_t s = 0; first == 0 && s < cl->n_shards; s++) {
    for (uint32_t r = 0; r < m3__shard_size(cl, s); r++) {
      m3__replica *rep = m3__replica_at(cl, s, r);
      int rc = check_replica(cl, rep, deadline);
      if (rc == 0) continue;
      m3__replica_fail(cl, rep, rc == M3_EFINGERPRINT, m3_errmsg());
      if (len < sizeof e.msg - 1)
        len += (size_t)snprintf(e.msg + len, sizeof e.msg - len, "%sshard %u replica %s: %s",
                                len ? "; " : "", s, rep->addr, m3_errmsg());
      if (first == 0) {
        /* The first failing replica in map order decides the code. */
        first = rc;
        e.shard = (int)s;
        e.replica = (int)r;
        snprintf(e.addr, sizeof e.addr, "%s", rep->addr);
      }
    }
  }
  e.rc = first;
  e.status = m3__cluster_status(first);
  m3__cluster_error_set(&e);
  return first;
}
