/*
 * The search pipeline (search.h): queries checked and embedded on the loop,
 * searched in batches on the threadpool, results handed back to each
 * request's done on the loop. One job in flight at a time; requests that
 * arrive meanwhile make up the next batch.
 */
#include "search.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embedder.h"
#include "m3/error.h"

static void search_start(server *s);

/* A text query's row past its last positive score: the built-in embedders'
 * vectors share no feature with those memories (score 0; a negative score
 * is hash-sign noise), so they would be fillers ranked by id alone. Cut
 * like the pads past the store's size. Rows are sorted by score. */
static unsigned drop_fillers(uint64_t *ids, float *scores, unsigned k) {
  unsigned cut = 0;
  for (unsigned j = 0; j < k; j++)
    if (ids[j] != UINT64_MAX && !(scores[j] > 0.0f)) {
      ids[j] = UINT64_MAX;
      scores[j] = -INFINITY;
      cut++;
    }
  return cut;
}

static void search_work(uv_work_t *w) {
  server *s = w->data;
  /* OpenMP's thread count is per calling thread: set it on this one. */
  if (s->omp_set_num_threads) s->omp_set_num_threads((int)s->cfg.search_threads);
  /* One index call for every query of every request in the batch. */
  size_t nq = 0, kmax = 0;
  for (search_req *r = s->search_batch; r; r = r->qnext) {
    nq += r->nq;
    if (r->k > kmax) kmax = r->k;
  }
  /* A batch of one searches its request's own queries: no copy. */
  int one = s->search_batch->qnext == NULL;
  float *q = one ? NULL : malloc(nq * s->emb_dim * sizeof *q);
  uint64_t *ids = malloc(nq * kmax * sizeof *ids);
  float *scores = malloc(nq * kmax * sizeof *scores);
  int rc = ((q || one) && ids && scores) ? 0 : M3_ENOMEM;
  if (rc == 0 && !one) {
    size_t at = 0;
    for (search_req *r = s->search_batch; r; r = r->qnext) {
      memcpy(q + at * s->emb_dim, r->queries, (size_t)r->nq * s->emb_dim * sizeof *q);
      at += r->nq;
    }
  }
  /* Every request of a batch has the same params (search_start). */
  char params[64] = "";
  const search_req *head = s->search_batch;
  if (head->nprobe) snprintf(params, sizeof params, "nprobe=%u", head->nprobe);
  else if (head->ef_search) snprintf(params, sizeof params, "efSearch=%u", head->ef_search);
  uint64_t t0 = now_ns();
  if (rc == 0)
    rc = m3_index_search_params(s->index, one ? head->queries : q, nq, kmax, ids, scores, params);
  s->search_job_s = rc == 0 ? (double)(now_ns() - t0) * 1e-9 : -1.0;
  size_t at = 0;
  for (search_req *r = s->search_batch; r; r = r->qnext) {
    r->status = rc;
    if (rc) {
      snprintf(r->errmsg, sizeof r->errmsg, "%s", m3_errmsg());
      continue;
    }
    size_t first = at; /* this request's rows in the batch's results */
    at += r->nq;
    for (unsigned i = 0; i < r->nq; i++) {
      memcpy(r->ids + (size_t)i * r->k, ids + (first + i) * kmax, r->k * sizeof *ids);
      memcpy(r->scores + (size_t)i * r->k, scores + (first + i) * kmax, r->k * sizeof *scores);
      if (r->drop_fillers[i])
        r->fillers += drop_fillers(r->ids + (size_t)i * r->k, r->scores + (size_t)i * r->k, r->k);
    }
  }
  free(q);
  free(ids);
  free(scores);
}

static void search_done(uv_work_t *w, int status) {
  server *s = w->data;
  s->m.search_batches++;
  if (s->search_job_s >= 0) metrics_hist_observe(&s->m.index_search, s->search_job_s);
  search_req *batch = s->search_batch;
  s->search_batch = NULL;
  s->search_running = 0;
  for (search_req *r = batch, *next; r; r = next) {
    next = r->qnext;
    r->qnext = NULL;
    s->m.search_queries += r->nq;
    s->m.fillers_dropped += r->fillers;
    s->search_held -= r->nq;
    if (call_work_back(r->cl, status, r->status, "search", r->errmsg)) r->done(r);
  }
  if (s->search_queue) search_start(s);
}

/* The next batch: the oldest request, and after it, in queue order, the
 * requests with the same IndexParams that fit in cfg.max_batch_queries
 * queries; the others keep their places for a later batch. (A request
 * that does not fit ends the batch, so none is overtaken forever.) */
static void search_start(server *s) {
  if (s->search_running || s->search_queue == NULL) return;
  search_req *head = s->search_queue, *last = head;
  search_req *rest = head->qnext, *kept = NULL, *kept_tail = NULL;
  size_t nq = head->nq;
  s->search_queue = NULL;
  while (rest) {
    search_req *r = rest;
    rest = r->qnext;
    r->qnext = NULL;
    if (r->nprobe == head->nprobe && r->ef_search == head->ef_search) {
      if (nq + r->nq > s->cfg.max_batch_queries) {
        r->qnext = rest; /* full: r and everything after it wait */
        rest = r;
        break;
      }
      nq += r->nq;
      last->qnext = r;
      last = r;
    } else {
      if (kept_tail) kept_tail->qnext = r;
      else kept = r;
      kept_tail = r;
    }
  }
  /* What waits: the left-behind requests, then the rest, in their order. */
  if (kept_tail) {
    kept_tail->qnext = rest;
    s->search_queue = kept;
  } else {
    s->search_queue = rest;
  }
  if (s->search_queue == NULL) s->search_tail = NULL;
  else if (rest == NULL) s->search_tail = kept_tail;
  last->qnext = NULL;
  s->search_batch = head;
  s->search_running = 1;
  s->search_work.data = s;
  uv_queue_work(s->loop, &s->search_work, search_work, search_done);
}

void search_enqueue(search_req *r) {
  server *s = r->cl->c->s;
  r->cl->working = 1;
  r->qnext = NULL;
  s->search_held += r->nq; /* search_load checked that it fits the budget */
  if (s->search_tail) s->search_tail->qnext = r;
  else s->search_queue = r;
  s->search_tail = r;
  search_start(s);
}

/* The call's IndexParams into r: 0, or the call ended naming the field. */
static int params_load(search_req *r, call *cl, const M3__IndexParams *p) {
  server *s = cl->c->s;
  r->nprobe = r->ef_search = 0;
  if (p == NULL) return 0;
  if (p->nprobe) {
    if (s->index_nlist == 0) {
      call_end(cl, M3_STATUS_INVALID_ARGUMENT,
               "params.nprobe = %u: the index '%s' has no inverted lists (nprobe is for IVF "
               "indexes)",
               p->nprobe, s->index_factory);
      return -1;
    }
    if (p->nprobe > s->index_nlist) {
      call_end(cl, M3_STATUS_INVALID_ARGUMENT,
               "params.nprobe = %u; the index '%s' has %zu lists: 1 to %zu", p->nprobe,
               s->index_factory, s->index_nlist, s->index_nlist);
      return -1;
    }
  }
  if (p->ef_search) {
    if (!s->index_ef_search) {
      call_end(cl, M3_STATUS_INVALID_ARGUMENT,
               "params.ef_search = %u: the index '%s' is not an HNSW graph (ef_search is for "
               "HNSW indexes)",
               p->ef_search, s->index_factory);
      return -1;
    }
    if (p->ef_search > SEARCH_MAX_EF_SEARCH) {
      call_end(cl, M3_STATUS_INVALID_ARGUMENT, "params.ef_search = %u; 1 to %u", p->ef_search,
               SEARCH_MAX_EF_SEARCH);
      return -1;
    }
  }
  r->nprobe = p->nprobe;
  r->ef_search = p->ef_search;
  return 0;
}

int search_load(search_req *r, call *cl, unsigned k, M3__Query **qs, size_t nq,
                const M3__IndexParams *params) {
  server *s = cl->c->s;
  r->cl = cl;
  if (k == 0 || k > s->cfg.max_k) {
    call_end(cl, M3_STATUS_INVALID_ARGUMENT, "k = %u; the server allows 1 to %u", k, s->cfg.max_k);
    return -1;
  }
  r->k = k;
  if (s->index == NULL) {
    call_end(cl, M3_STATUS_UNIMPLEMENTED, "this store keeps no embeddings: search is not available");
    return -1;
  }
  if (params_load(r, cl, params) != 0) return -1;
  if (nq == 0 || nq > s->cfg.max_queries) {
    call_end(cl, nq ? M3_STATUS_RESOURCE_EXHAUSTED : M3_STATUS_INVALID_ARGUMENT,
             "%zu queries; a call takes 1 to %u", nq, s->cfg.max_queries);
    return -1;
  }
  if (s->search_held + nq > s->cfg.search_budget) {
    s->m.search_refused++;
    call_end(cl, M3_STATUS_RESOURCE_EXHAUSTED,
             "%zu queries; %zu of the server's search budget of %u are queued (--search-budget): "
             "retry later",
             nq, s->search_held, s->cfg.search_budget);
    return -1;
  }
  r->queries = call_alloc(cl, nq * s->emb_dim * sizeof *r->queries);
  r->ids = call_alloc(cl, nq * k * sizeof *r->ids);
  r->scores = call_alloc(cl, nq * k * sizeof *r->scores);
  r->drop_fillers = call_alloc(cl, nq);
  if (!r->queries || !r->ids || !r->scores || !r->drop_fillers) {
    call_end(cl, M3_STATUS_RESOURCE_EXHAUSTED, "out of memory for %zu queries", nq);
    return -1;
  }
  for (size_t i = 0; i < nq; i++) {
    float *q = r->queries + i * s->emb_dim;
    r->drop_fillers[i] = !qs[i]->n_vector && !qs[i]->allow_fillers;
    if (qs[i]->n_vector) {
      if (qs[i]->n_vector != s->emb_dim) {
        call_end(cl, M3_STATUS_INVALID_ARGUMENT,
                 "query %zu: vector of %zu dims; the store's embeddings have %u", i,
                 qs[i]->n_vector, s->emb_dim);
        return -1;
      }
      memcpy(q, qs[i]->vector, s->emb_dim * sizeof *q);
    } else if (qs[i]->text && qs[i]->text[0]) {
      if (server_embed_text(cl, i, qs[i]->text, q) != 0) return -1;
    } else {
      call_end(cl, M3_STATUS_INVALID_ARGUMENT, "query %zu: neither a vector nor text", i);
      return -1;
    }
    /* Checked here, per call: a bad query fails its own call, never the
     * calls batched with it. */
    int zero = 1;
    for (unsigned d = 0; d < s->emb_dim; d++) {
      if (!isfinite(q[d])) {
        call_end(cl, M3_STATUS_INVALID_ARGUMENT, "query %zu: component %u is %s", i, d,
                 isnan(q[d]) ? "NaN" : "infinite");
        return -1;
      }
      zero &= q[d] == 0.0f;
    }
    if (zero) {
      call_end(cl, M3_STATUS_INVALID_ARGUMENT,
               "query %zu: all zeros (a query needs a direction to rank by cosine)", i);
      return -1;
    }
  }
  r->nq = (unsigned)nq;
  return 0;
}
