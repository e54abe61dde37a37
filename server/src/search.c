/*
 * The search pipeline (search.h): queries checked and embedded on the loop,
 * searched in batches on the threadpool, results handed back to each
 * request's done on the loop. One job in flight at a time; requests that
 * arrive meanwhile make up the next batch.
 */
#include "search.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embedder.h"
#include "m3/error.h"

static void search_start(server *s);

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
  float *q = malloc(nq * s->emb_dim * sizeof *q);
  uint64_t *ids = malloc(nq * kmax * sizeof *ids);
  float *scores = malloc(nq * kmax * sizeof *scores);
  int rc = (q && ids && scores) ? 0 : M3_ENOMEM;
  if (rc == 0) {
    size_t at = 0;
    for (search_req *r = s->search_batch; r; r = r->qnext) {
      memcpy(q + at * s->emb_dim, r->queries, (size_t)r->nq * s->emb_dim * sizeof *q);
      at += r->nq;
    }
    rc = m3_index_search(s->index, q, nq, kmax, ids, scores);
  }
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
    }
  }
  free(q);
  free(ids);
  free(scores);
}

static void search_done(uv_work_t *w, int status) {
  server *s = w->data;
  s->m.search_batches++;
  search_req *batch = s->search_batch;
  s->search_batch = NULL;
  s->search_running = 0;
  for (search_req *r = batch, *next; r; r = next) {
    next = r->qnext;
    r->qnext = NULL;
    s->m.search_queries += r->nq;
    if (call_work_back(r->cl, status, r->status, "search", r->errmsg)) r->done(r);
  }
  if (s->search_queue) search_start(s);
}

static void search_start(server *s) {
  if (s->search_running || s->search_queue == NULL) return;
  s->search_batch = s->search_queue;
  s->search_queue = s->search_tail = NULL;
  s->search_running = 1;
  s->search_work.data = s;
  uv_queue_work(s->loop, &s->search_work, search_work, search_done);
}

void search_enqueue(search_req *r) {
  server *s = r->cl->c->s;
  r->cl->working = 1;
  r->qnext = NULL;
  if (s->search_tail) s->search_tail->qnext = r;
  else s->search_queue = r;
  s->search_tail = r;
  search_start(s);
}

int search_load(search_req *r, call *cl, unsigned k, M3__Query **qs, size_t nq) {
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
  if (nq == 0 || nq > s->cfg.max_queries) {
    call_end(cl, nq ? M3_STATUS_RESOURCE_EXHAUSTED : M3_STATUS_INVALID_ARGUMENT,
             "%zu queries; a call takes 1 to %u", nq, s->cfg.max_queries);
    return -1;
  }
  r->queries = call_alloc(cl, nq * s->emb_dim * sizeof *r->queries);
  r->ids = call_alloc(cl, nq * k * sizeof *r->ids);
  r->scores = call_alloc(cl, nq * k * sizeof *r->scores);
  if (!r->queries || !r->ids || !r->scores) {
    call_end(cl, M3_STATUS_RESOURCE_EXHAUSTED, "out of memory for %zu queries", nq);
    return -1;
  }
  for (size_t i = 0; i < nq; i++) {
    float *q = r->queries + i * s->emb_dim;
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
  }
  r->nq = (unsigned)nq;
  return 0;
}
