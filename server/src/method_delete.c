/* Delete (m3.proto, admin): ids removed from the store and the index on the
 * threadpool; answers how many were there. */
#include <stdio.h>

#include "call.h"
#include "m3/error.h"
#include "m3/log.h"
#include "m3_handlers.h"

typedef struct delete_state {
  call_job job;
  uint64_t index_count; /* vectors in the index after the removal */
  uint64_t seq;         /* s->admin_seq when it was counted */
} delete_state;

static void delete_work(uv_work_t *w) {
  call *cl = w->data;
  delete_state *ds = cl->state;
  call_job *st = &ds->job;
  server *s = cl->c->s;
  M3__DeleteRequest *r = (M3__DeleteRequest *)cl->req;
  size_t deleted = 0;
  /* admin_lock, then the store, then the index (the lock order in server.h). */
  pthread_mutex_lock(&s->admin_lock);
  st->status = m3_store_delete(s->store, r->ids, r->n_ids, &deleted);
  if (st->status == 0 && s->index) st->status = m3_index_remove(s->index, r->ids, r->n_ids, NULL);
  if (st->status == 0 && s->index) {
    ds->index_count = m3_index_count(s->index);
    ds->seq = ++s->admin_seq;
  }
  if (st->status) snprintf(st->errmsg, sizeof st->errmsg, "%s", m3_errmsg());
  pthread_mutex_unlock(&s->admin_lock);
  st->count = deleted;
}

static void delete_done(uv_work_t *w, int status) {
  call *cl = w->data;
  delete_state *ds = cl->state;
  call_job *st = &ds->job;
  server *s = cl->c->s;
  M3__DeleteRequest *r = (M3__DeleteRequest *)cl->req;
  if (st->status == 0 && status == 0)
    M3_INFO("admin", "%s: Delete of %zu ids: %llu deleted", cl->c->peer, r->n_ids,
            (unsigned long long)st->count);
  else
    M3_WARN("admin", "%s: Delete of %zu ids failed: %s", cl->c->peer, r->n_ids,
            st->errmsg[0] ? st->errmsg : m3_strerror(st->status ? st->status : M3_EINTERNAL));
  if (st->status == 0 && status == 0) {
    s->records -= st->count;
    if (s->index && ds->seq > s->index_vectors_seq) {
      s->index_vectors = ds->index_count;
      s->index_vectors_seq = ds->seq;
    }
  }
  if (!call_work_back(cl, status, st->status, "Delete", st->errmsg)) return;
  M3__DeleteResponse out = M3__DELETE_RESPONSE__INIT;
  out.deleted = (uint32_t)st->count;
  call_reply(cl, &out.base);
}

void method_delete(call *cl, const uint8_t *att, size_t att_len) {
  (void)att;
  (void)att_len;
  M3__DeleteRequest *r = (M3__DeleteRequest *)cl->req;
  if (r->n_ids == 0) {
    call_end(cl, M3_STATUS_INVALID_ARGUMENT, "Delete: no ids");
    return;
  }
  delete_state *ds = cl->state = call_alloc(cl, sizeof *ds);
  if (ds == NULL) {
    call_end(cl, M3_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  ds->index_count = ds->seq = 0;
  call_queue_job(cl, &ds->job, delete_work, delete_done);
}
