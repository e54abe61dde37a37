/* Put (m3.proto, admin): complete records back to back in the attachment,
 * checked and written to the store and the index on the threadpool. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "call.h"
#include "m3/error.h"
#include "m3/fault.h"
#include "m3/log.h"
#include "m3_handlers.h"

typedef struct put_state {
  call_job job;
  uint8_t *attach;      /* the records, copied into the arena */
  uint64_t index_count; /* vectors in the index after the add */
  uint64_t seq;         /* s->admin_seq when it was counted */
} put_state;

static void put_work(uv_work_t *w) {
  call *cl = w->data;
  put_state *st = cl->state;
  server *s = cl->c->s;
  M3__PutRequest *r = (M3__PutRequest *)cl->req;
  const m3_layout *l = m3_store_layout(s->store);
  m3_record_in *in = calloc(r->n_sizes ? r->n_sizes : 1, sizeof *in);
  float *emb = l->emb_dim ? malloc(r->n_sizes * l->emb_dim * sizeof *emb) : NULL;
  uint64_t *ids = malloc((r->n_sizes ? r->n_sizes : 1) * sizeof *ids);
  if (!in || !ids || (l->emb_dim && !emb)) {
    st->job.status = M3_ENOMEM;
    goto out;
  }
  size_t off = 0;
  for (size_t i = 0; i < r->n_sizes; i++) {
    m3_record rec;
    int rc = m3_record_parse(st->attach + off, r->sizes[i], M3_PARSE_ALL, &rec);
    if (rc == 0 && (rec.flags & M3_RECORD_TOMBSTONE))
      rc = m3__seterr(M3_EINVAL, "a tombstone; use Delete");
    if (rc == 0 && !m3_layout_equal(&rec.layout, l))
      rc = m3__seterr(M3_ESHAPE, "its shape, codec or fingerprint differ from the store's");
    if (rc) {
      st->job.status = rc == M3_ECORRUPT ? M3_ECORRUPT : M3_EINVAL;
      snprintf(st->job.errmsg, sizeof st->job.errmsg, "record %zu: %s", i, m3_errmsg());
      goto out;
    }
    in[i].chunk_id = rec.chunk_id;
    in[i].chunk_len = rec.chunk_len;
    in[i].positions = rec.positions;
    in[i].codes = rec.codes;
    in[i].text = rec.text;
    in[i].text_len = rec.text_bytes;
    if (l->emb_dim) {
      memcpy(emb + i * l->emb_dim, rec.embedding, l->emb_dim * sizeof *emb);
      in[i].embedding = emb + i * l->emb_dim;
    }
    ids[i] = rec.chunk_id;
    off += r->sizes[i];
  }
  /* Everything the index would refuse is refused before the store makes
   * the batch durable: a record the index cannot hold would stay in the
   * store, unsearchable. */
  if (s->index && (st->job.status = m3_index_check(l->emb_dim, ids, emb, r->n_sizes)) != 0) {
    snprintf(st->job.errmsg, sizeof st->job.errmsg, "nothing written: %s", m3_errmsg());
    st->job.status = M3_EINVAL;
    goto out;
  }
  /* admin_lock, then the store, then the index (the lock order in server.h). */
  pthread_mutex_lock(&s->admin_lock);
  st->job.status = m3_store_put(s->store, in, r->n_sizes);
  if (m3__fault("admin.between")) usleep(20000); /* tests widen the window (m3/fault.h) */
  if (st->job.status == 0 && s->index) st->job.status = m3_index_add(s->index, ids, emb, r->n_sizes);
  /* Counted here, on the threadpool: the loop never waits for the index. */
  if (st->job.status == 0 && s->index) {
    st->index_count = m3_index_count(s->index);
    st->seq = ++s->admin_seq;
  }
  if (st->job.status) snprintf(st->job.errmsg, sizeof st->job.errmsg, "%s", m3_errmsg());
  else st->job.count = r->n_sizes;
  pthread_mutex_unlock(&s->admin_lock);
out:
  free(in);
  free(emb);
  free(ids);
}

static void put_done(uv_work_t *w, int status) {
  call *cl = w->data;
  put_state *st = cl->state;
  server *s = cl->c->s;
  /* Every admin write is logged: who, how many, the outcome. */
  M3__PutRequest *r = (M3__PutRequest *)cl->req;
  if (st->job.status == 0 && status == 0)
    M3_INFO("admin", "%s: Put of %zu records: %llu written", cl->c->peer, r->n_sizes,
            (unsigned long long)st->job.count);
  else
    M3_WARN("admin", "%s: Put of %zu records failed: %s", cl->c->peer, r->n_sizes,
            st->job.errmsg[0] ? st->job.errmsg : m3_strerror(st->job.status ? st->job.status : M3_EINTERNAL));
  if (st->job.status == 0 && status == 0) {
    /* Replacements leave the count unchanged; recount cheaply from the index
     * when there is one. */
    if (s->index && st->seq > s->index_vectors_seq) {
      s->records = s->index_vectors = st->index_count;
      s->index_vectors_seq = st->seq;
    } else if (!s->index) {
      s->records += st->job.count;
    }
  }
  if (!call_work_back(cl, status, st->job.status, "Put", st->job.errmsg)) return;
  M3__PutResponse out = M3__PUT_RESPONSE__INIT;
  out.written = (uint32_t)st->job.count;
  call_reply(cl, &out.base);
}

void method_put(call *cl, const uint8_t *att, size_t att_len) {
  M3__PutRequest *r = (M3__PutRequest *)cl->req;
  uint64_t total = 0;
  for (size_t i = 0; i < r->n_sizes; i++) total += r->sizes[i];
  if (r->n_sizes == 0 || total != att_len) {
    call_end(cl, M3_STATUS_INVALID_ARGUMENT,
             "Put: %zu records of %llu bytes declared, attachment has %zu", r->n_sizes,
             (unsigned long long)total, att_len);
    return;
  }
  put_state *st = cl->state = call_alloc(cl, sizeof *st);
  if (st) st->attach = call_alloc(cl, att_len);
  if (st == NULL || st->attach == NULL) {
    call_end(cl, M3_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  memcpy(st->attach, att, att_len);
  call_queue_job(cl, &st->job, put_work, put_done);
}
