/* Retrieve (m3.proto): a search (search.h), then the memories of its top-k
 * streamed as they are read (fetch.h), each with its query, rank and score. */
#include "fetch.h"
#include "m3_handlers.h"
#include "search.h"

typedef struct retrieve_state {
  search_req search;
  fetch_req fetch;
  int with_text;
} retrieve_state;

/* search_req.done: read the ranks found. */
static void found(search_req *r) {
  retrieve_state *st = r->cl->state;
  fetch_start(&st->fetch, r->cl, r->ids, (size_t)r->nq * r->k, r->k, r->scores, st->with_text);
}

void method_retrieve(call *cl, const uint8_t *att, size_t att_len) {
  (void)att;
  (void)att_len;
  M3__RetrieveRequest *q = (M3__RetrieveRequest *)cl->req;
  retrieve_state *st = cl->state = call_alloc(cl, sizeof *st);
  if (st == NULL) {
    call_end(cl, M3_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  st->with_text = q->with_text;
  st->search.done = found;
  if (search_load(&st->search, cl, q->k, q->queries, q->n_queries, q->params) == 0)
    search_enqueue(&st->search);
}
