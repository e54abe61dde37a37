/* Fetch (m3.proto): memories by chunk id, streamed as they are read
 * (fetch.h); an id the store lacks gets a Memory with NOT_FOUND. */
#include "fetch.h"
#include "m3_handlers.h"

void method_fetch(call *cl, const uint8_t *att, size_t att_len) {
  (void)att;
  (void)att_len;
  M3__FetchRequest *q = (M3__FetchRequest *)cl->req;
  server *s = cl->c->s;
  if (q->n_ids == 0 || q->n_ids > s->cfg.max_ids) {
    call_end(cl, q->n_ids ? M3_STATUS_RESOURCE_EXHAUSTED : M3_STATUS_INVALID_ARGUMENT,
             "%zu ids; a Fetch takes 1 to %u", q->n_ids, s->cfg.max_ids);
    return;
  }
  for (size_t i = 0; i < q->n_ids; i++)
    if (q->ids[i] == UINT64_MAX) {
      call_end(cl, M3_STATUS_INVALID_ARGUMENT, "id %zu: %llu is reserved", i,
               (unsigned long long)UINT64_MAX);
      return;
    }
  fetch_req *fr = cl->state = call_alloc(cl, sizeof *fr);
  if (fr == NULL) {
    call_end(cl, M3_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  /* The request lives in the call's arena as long as the call. */
  fetch_start(fr, cl, q->ids, q->n_ids, 0, NULL, q->with_text);
}
