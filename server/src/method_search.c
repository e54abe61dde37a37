/* Search (m3.proto): the top-k chunk ids and scores of each query, from the
 * search pipeline (search.h), in one response. */
#include <stdlib.h>

#include "m3_handlers.h"
#include "search.h"

/* search_req.done: the results, without the ranks past the store's size. */
static void reply(search_req *r) {
  call *cl = r->cl;
  M3__SearchResponse out = M3__SEARCH_RESPONSE__INIT;
  size_t nids = (size_t)r->nq * r->k;
  M3__SearchResult *res = calloc(r->nq, sizeof *res);
  M3__SearchResult **resp = calloc(r->nq, sizeof *resp);
  uint64_t *ids = malloc(nids * sizeof *ids);
  float *scores = malloc(nids * sizeof *scores);
  if (!res || !resp || !ids || !scores) {
    call_end(cl, M3_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto out;
  }
  size_t n = 0;
  for (unsigned i = 0; i < r->nq; i++) {
    m3__search_result__init(&res[i]);
    res[i].ids = ids + n;
    res[i].scores = scores + n;
    for (unsigned j = 0; j < r->k; j++) {
      uint64_t id = r->ids[(size_t)i * r->k + j];
      if (id == UINT64_MAX) break; /* fewer memories than k */
      ids[n] = id;
      scores[n] = r->scores[(size_t)i * r->k + j];
      n++;
      res[i].n_ids++;
      res[i].n_scores++;
    }
    resp[i] = &res[i];
  }
  out.n_results = r->nq;
  out.results = resp;
  call_reply(cl, &out.base);
out:
  free(res);
  free(resp);
  free(ids);
  free(scores);
}

void method_search(call *cl, const uint8_t *att, size_t att_len) {
  (void)att;
  (void)att_len;
  M3__SearchRequest *q = (M3__SearchRequest *)cl->req;
  search_req *r = cl->state = call_alloc(cl, sizeof *r);
  if (r == NULL) {
    call_end(cl, M3_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  r->done = reply;
  if (search_load(r, cl, q->k, q->queries, q->n_queries, q->params) == 0) search_enqueue(r);
}
