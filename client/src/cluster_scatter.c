/*
 * The search phase of a call: Search scattered over every shard (a job
 * per shard, replicas tried in turn by cluster_shard.c, or raced by
 * cluster_hedge.c with hedging on) and the shards' top-k merged into the
 * global top-k of each query: score descending, then chunk id ascending,
 * the server's index order, so that a round equals what one unsharded
 * store gives.
 *
 * Workload: up to a few hundred queries x top-5 per call, single-digit
 * shards: the merge is a few thousand comparisons.
 */
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"
#include "m3/error.h"

/* Search nq queries on one connection, in batches the server accepts. */
static int search_batches(m3_client *c, const m3_client_query *q, size_t nq, uint32_t k,
                          const m3_search_params *p, uint64_t *ids, float *scores,
                          uint32_t *counts) {
  /* Set on every call: a pooled connection keeps what the last call set. */
  m3_client_set_search_params(c, p);
  size_t maxq = m3_client_info_get(c)->max_queries_per_call;
  if (maxq == 0) maxq = nq;
  for (size_t off = 0; off < nq; off += maxq) {
    size_t nb = nq - off < maxq ? nq - off : maxq;
    int rc = m3_client_search(c, q + off, nb, k, ids + off * k, scores + off * k, counts + off);
    if (rc) return rc;
  }
  return 0;
}

static int search_op(m3__job *j, m3_client *c) {
  m3__call *ca = j->call;
  return search_batches(c, ca->q, ca->nq, ca->k, &ca->params, j->ids, j->scores, j->counts);
}

/* ---- hedged: the race's own copy of the queries --------------------- */

typedef struct search_req {
  m3_client_query *q; /* (nq) pointing into vecs / texts */
  float *vecs;
  char *texts;
  size_t nq;
  uint32_t k;
  m3_search_params params;
} search_req;

static void search_req_free(void *arg) {
  search_req *s = arg;
  free(s->q);
  free(s->vecs);
  free(s->texts);
  free(s);
}

/* A result: ids (nq * k), scores, counts in one block. */
static int search_attempt(m3__race *r, void *arg, m3_client *c, void **out, char *why) {
  (void)r;
  (void)why;
  search_req *s = arg;
  size_t n = s->nq * s->k;
  uint64_t *ids = malloc(n * sizeof *ids + n * sizeof(float) + s->nq * sizeof(uint32_t));
  if (ids == NULL) return M3_ENOMEM;
  float *scores = (float *)(ids + n);
  uint32_t *counts = (uint32_t *)(scores + n);
  int rc = search_batches(c, s->q, s->nq, s->k, &s->params, ids, scores, counts);
  if (rc) free(ids);
  else *out = ids;
  return rc;
}

static const m3__race_ops search_race = {search_attempt, free, search_req_free};

static void search_hedged(m3__job *j) {
  m3__call *ca = j->call;
  search_req *s = calloc(1, sizeof *s);
  if (s == NULL || m3__queries_copy(ca->q, ca->nq, &s->q, &s->vecs, &s->texts) != 0) {
    if (s) search_req_free(s);
    m3__job_err(j, M3_ENOMEM, M3_STATUS_RESOURCE_EXHAUSTED, -1, "shard %u: out of memory",
                j->shard);
    return;
  }
  s->nq = ca->nq;
  s->k = ca->k;
  s->params = ca->params;
  uint64_t *ids = m3__race_run(j, &search_race, s);
  if (ids == NULL) return;
  size_t nn = ca->nq * ca->k;
  float *scores = (float *)(ids + nn);
  uint32_t *counts = (uint32_t *)(scores + nn);
  memcpy(j->ids, ids, nn * sizeof *j->ids);
  memcpy(j->scores, scores, nn * sizeof *j->scores);
  memcpy(j->counts, counts, ca->nq * sizeof *j->counts);
  free(ids);
}

static void search_job(m3__job *j) {
  m3_cluster *cl = j->call->cl;
  if (cl->o.hedge_delay_ms > 0 && m3__shard_size(cl, j->shard) > 1) search_hedged(j);
  else m3__shard_run(j, search_op, NULL, 0);
}

/* ---- the phase ------------------------------------------------------ */

/* Merge the shards' top-k lists (all, sc, cn: (ns, nq, k), (ns, nq, k),
 * (ns, nq)) into the global top-k. */
static int merge(const m3__call *ca, const uint64_t *all, const float *sc, const uint32_t *cn,
                 uint64_t *ids, float *scores, uint32_t *counts) {
  uint32_t ns = ca->cl->n_shards;
  size_t nq = ca->nq, k = ca->k, n = nq * k;
  uint32_t *head = calloc(ns, sizeof *head);
  if (head == NULL) return m3__seterr(M3_ENOMEM, "out of memory");
  for (size_t q = 0; q < nq; q++) {
    memset(head, 0, ns * sizeof *head);
    uint32_t r = 0;
    for (; r < k; r++) {
      int best = -1;
      uint64_t bid = 0;
      float bsc = 0;
      for (uint32_t s = 0; s < ns; s++) {
        if (head[s] >= cn[s * nq + q]) continue;
        size_t at = s * n + q * k + head[s];
        uint64_t id = all[at];
        float v = sc[at];
        if (best < 0 || v > bsc || (v == bsc && id < bid)) {
          best = (int)s;
          bid = id;
          bsc = v;
        }
      }
      if (best < 0) break;
      head[best]++;
      ids[q * k + r] = bid;
      scores[q * k + r] = bsc;
    }
    counts[q] = r;
    for (; r < k; r++) {
      ids[q * k + r] = UINT64_MAX;
      scores[q * k + r] = 0;
    }
  }
  free(head);
  return 0;
}

int m3__scatter_search(m3__call *ca, uint64_t *ids, float *scores, uint32_t *counts) {
  m3_cluster *cl = ca->cl;
  uint32_t ns = cl->n_shards;
  size_t nq = ca->nq, n = nq * ca->k;
  int rc = m3__cluster_ensure_ref(cl, ca->deadline);
  if (rc) return rc;
  if ((rc = m3__jobs_make(ca)) != 0) return rc;
  uint64_t *all = malloc(ns * (n * sizeof(uint64_t) + n * sizeof(float) + nq * sizeof(uint32_t)));
  if (all == NULL) return m3__seterr(M3_ENOMEM, "out of memory for %u x %zu results", ns, n);
  float *sc = (float *)(all + (size_t)ns * n);
  uint32_t *cn = (uint32_t *)(sc + (size_t)ns * n);
  for (uint32_t s = 0; s < ns; s++) {
    ca->jobs[s].ids = all + s * n;
    ca->jobs[s].scores = sc + s * n;
    ca->jobs[s].counts = cn + s * nq;
  }
  m3__jobs_run(ca, search_job, 0);
  int failed = 0;
  for (uint32_t s = 0; s < ns; s++) {
    ca->jobs[s].ids = NULL;
    failed |= ca->jobs[s].rc != 0;
  }
  ca->jobs[0].ids = all; /* freed with the jobs */
  if (failed) return 0;  /* the call reports the failed shard */
  return merge(ca, all, sc, cn, ids, scores, counts);
}
