/*
 * The fetch phase of a call: plan (group the slots, one per (query, rank)
 * of a retrieval round or per index of a Fetch, by owning shard, each
 * distinct id asked once), fetch each shard's ids from its replicas (in
 * turn, cluster_shard.c, or raced, cluster_hedge.c), and hand each memory
 * to the caller once per slot of its id. A Fetch that fails mid-stream
 * resumes on the next replica with the ids not yet delivered; an item that
 * failed alone (bad bytes) is asked of the other replicas.
 *
 * Memory.query and Memory.rank come from the server: query indexes this
 * file's arrays, so an item whose query is not one of the ids asked, or
 * that carries a rank (only Retrieve items have one), is refused as a
 * protocol error (M3_EBADFORMAT, the replica fails) before it is used.
 *
 * Workload: a few hundred ids per call over single-digit shards; hedged
 * Fetch copies each memory once (m3__memcopy).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"
#include "m3/error.h"

/* An item of a Fetch of n ids must name one of them (query < n) and carry
 * no rank (rank < 1: Fetch items have k = 1). M3_EBADFORMAT with why. */
static int check_item(const m3_client_memory *m, size_t n, char *why, size_t cap) {
  if (m->query >= n) {
    snprintf(why, cap, "protocol error: Memory.query %u of chunk %llu, but the Fetch asked "
             "for %zu ids", m->query, (unsigned long long)m->chunk_id, n);
    return M3_EBADFORMAT;
  }
  if (m->rank != 0) {
    snprintf(why, cap, "protocol error: Memory.rank %u of chunk %llu in a Fetch answer (only "
             "Retrieve items have a rank)", m->rank, (unsigned long long)m->chunk_id);
    return M3_EBADFORMAT;
  }
  return 0;
}

/* One memory of this shard's Fetch (m->query: index in the current batch):
 * to the callback once per slot of its id, unless it failed alone here. */
static int on_item(void *ud, const m3_client_memory *m) {
  m3__job *j = ud;
  m3__call *ca = j->call;
  int bad = check_item(m, j->batch_n, j->peer_err, sizeof j->peer_err);
  if (bad) return bad;
  size_t u = j->batch_u[j->batch_base + m->query];
  if (j->done[u]) return 0;
  if (m->status == 0 && m->chunk_id != j->uids[u]) {
    m3__item_fail *f = &j->fails[u];
    f->status = M3_ECORRUPT;
    f->grpc = M3_STATUS_DATA_LOSS;
    snprintf(f->err, sizeof f->err, "asked for chunk %llu, the server sent chunk %llu",
             (unsigned long long)j->uids[u], (unsigned long long)m->chunk_id);
    return m3__call_stopped(ca);
  }
  if (m->status != 0 && m->status != M3_ENOTFOUND) {
    /* Bad bytes on this replica: another one may have good ones. */
    m3__item_fail *f = &j->fails[u];
    f->status = m->status;
    f->grpc = m->grpc_status;
    snprintf(f->err, sizeof f->err, "%s", m->error);
    return m3__call_stopped(ca);
  }
  j->done[u] = 1;
  j->n_done++;
  pthread_mutex_lock(&ca->mu);
  int rc = m3__call_stopped(ca);
  for (size_t s = j->ustart[u]; s < j->ustart[u + 1] && !rc; s++) {
    m3_client_memory m2 = *m;
    m2.query = j->slots[s].q;
    m2.rank = j->slots[s].r;
    m2.score = j->slots[s].score;
    if ((rc = ca->fn(ca->ud, &m2)) != 0) rc = m3__call_stop(ca, rc);
  }
  pthread_mutex_unlock(&ca->mu);
  return rc;
}

/* Hand the items still owed, each of which failed alone on every replica
 * asked, to the callback with their last failure. */
static void deliver_fails(m3__job *j) {
  m3__call *ca = j->call;
  for (size_t u = 0; u < j->nu; u++) {
    if (j->done[u]) continue;
    m3__item_fail *f = &j->fails[u];
    m3_client_memory m = {.chunk_id = j->uids[u], .status = f->status,
                          .grpc_status = f->grpc, .error = f->err, .text = ""};
    pthread_mutex_lock(&ca->mu);
    int rc = m3__call_stopped(ca);
    for (size_t s = j->ustart[u]; s < j->ustart[u + 1] && !rc; s++) {
      m.query = j->slots[s].q;
      m.rank = j->slots[s].r;
      m.score = j->slots[s].score;
      if ((rc = ca->fn(ca->ud, &m)) != 0) rc = m3__call_stop(ca, rc);
    }
    pthread_mutex_unlock(&ca->mu);
    if (rc) {
      m3__job_stopped(j, rc);
      return;
    }
    j->done[u] = 1;
    j->n_done++;
  }
}

/* The ids not delivered yet into j->batch (their u in batch_u); returns
 * how many. */
static size_t fetch_pending(m3__job *j) {
  size_t np = 0;
  for (size_t u = 0; u < j->nu; u++) {
    if (j->done[u]) continue;
    j->batch[np] = j->uids[u];
    j->batch_u[np++] = u;
  }
  j->batch_base = 0;
  j->batch_n = np;
  return np;
}

/* m3_client_land_fn of a shard's Fetch (query: index in the current
 * batch, checked by the client): the caller's buffer of the first slot of
 * that id, when the call has a landing function. */
static void *land_item(void *ud, uint64_t chunk_id, uint32_t query, uint32_t rank, size_t len) {
  m3__job *j = ud;
  m3__call *ca = j->call;
  size_t u = j->batch_u[j->batch_base + query];
  if (rank != 0 || j->done[u] || chunk_id != j->uids[u]) return NULL;
  const m3__slot *s = &j->slots[j->ustart[u]];
  return ca->land(ca->ud, chunk_id, s->q, s->r, len);
}

static int fetch_op(m3__job *j, m3_client *c) {
  size_t np = fetch_pending(j);
  m3_client_set_landing(c, j->call->land ? land_item : NULL, j);
  size_t maxids = m3_client_info_get(c)->max_ids_per_call;
  if (maxids == 0) maxids = np;
  for (size_t off = 0; off < np; off += maxids) {
    size_t nb = np - off < maxids ? np - off : maxids;
    j->batch_base = off;
    j->batch_n = nb;
    int rc = m3_client_fetch(c, j->batch + off, nb, j->call->with_text, on_item, j);
    if (rc) {
      m3_client_set_landing(c, NULL, NULL);
      return rc;
    }
  }
  m3_client_set_landing(c, NULL, NULL); /* the connection goes back to the pool */
  return 0;
}

/* ---- hedged: attempts buffer their memories ------------------------- */

/* The race's own copy of the ids (the race may outlive the call). */
typedef struct fetch_req {
  uint64_t *ids; /* (n) */
  size_t n;
  int with_text;
} fetch_req;

static void fetch_req_free(void *arg) {
  fetch_req *f = arg;
  free(f->ids);
  free(f);
}

/* An attempt's memories; m.query is the index in fetch_req.ids. */
typedef struct fbuf {
  m3__memcopy *v;
  size_t n, cap;
} fbuf;

static void fbuf_free(void *res) {
  fbuf *b = res;
  if (b == NULL) return;
  for (size_t i = 0; i < b->n; i++) m3__memcopy_free(&b->v[i]);
  free(b->v);
  free(b);
}

typedef struct fctx {
  m3__race *r;
  fbuf *b;
  size_t off, nb; /* this Fetch asked for ids [off, off + nb) */
  char *why;
} fctx;

static int buffer_item(void *ud, const m3_client_memory *m) {
  fctx *f = ud;
  int bad = check_item(m, f->nb, f->why, 200);
  if (bad) return bad;
  /* Another replica won: stop the stream (the client sends CANCEL). */
  if (m3__race_over(f->r)) return 1;
  if (f->b->n == f->b->cap) {
    size_t cap = f->b->cap ? f->b->cap * 2 : 64;
    m3__memcopy *v = realloc(f->b->v, cap * sizeof *v);
    if (v == NULL) return M3_ENOMEM;
    f->b->v = v;
    f->b->cap = cap;
  }
  m3__memcopy *c = &f->b->v[f->b->n];
  if (m3__memcopy_make(c, m) != 0) return M3_ENOMEM;
  c->m.query = (uint32_t)(f->off + m->query);
  f->b->n++;
  return 0;
}

static int fetch_attempt(m3__race *r, void *arg, m3_client *c, void **out, char *why) {
  fetch_req *q = arg;
  fbuf *b = calloc(1, sizeof *b);
  if (b == NULL) return M3_ENOMEM;
  size_t maxids = m3_client_info_get(c)->max_ids_per_call;
  if (maxids == 0) maxids = q->n;
  int rc = 0;
  m3_client_set_landing(c, NULL, NULL); /* the race keeps its own copies */
  for (size_t off = 0; off < q->n && rc == 0; off += maxids) {
    size_t nb = q->n - off < maxids ? q->n - off : maxids;
    fctx f = {r, b, off, nb, why};
    rc = m3_client_fetch(c, q->ids + off, nb, q->with_text, buffer_item, &f);
  }
  if (rc) fbuf_free(b);
  else *out = b;
  return rc;
}

static const m3__race_ops fetch_race = {fetch_attempt, fbuf_free, fetch_req_free};

/* Hedged Fetch: race the shard's pending ids over its replicas, hand the
 * winner's buffered memories to the callback, then ask the replicas again
 * (unhedged) for items that failed alone on the winner. */
static void fetch_hedged(m3__job *j) {
  size_t np = fetch_pending(j);
  fetch_req *q = calloc(1, sizeof *q);
  if (q) q->ids = malloc(np * sizeof *q->ids);
  if (q == NULL || q->ids == NULL) {
    free(q);
    m3__job_err(j, M3_ENOMEM, M3_STATUS_RESOURCE_EXHAUSTED, -1, "shard %u: out of memory",
                j->shard);
    return;
  }
  memcpy(q->ids, j->batch, np * sizeof *q->ids);
  q->n = np;
  q->with_text = j->call->with_text;
  fbuf *b = m3__race_run(j, &fetch_race, q);
  if (b == NULL) return;
  int stop = 0;
  /* The buffered items index the whole of batch (checked on arrival). */
  for (size_t i = 0; i < b->n && !stop; i++) stop = on_item(j, &b->v[i].m);
  fbuf_free(b);
  if (stop) m3__job_stopped(j, stop);
  else if (j->n_done < j->nu) m3__shard_run(j, fetch_op, deliver_fails, 1);
}

static void fetch_job(m3__job *j) {
  m3_cluster *cl = j->call->cl;
  if (cl->o.hedge_delay_ms > 0 && m3__shard_size(cl, j->shard) > 1) fetch_hedged(j);
  else m3__shard_run(j, fetch_op, deliver_fails, 0);
}

/* ---- planning ------------------------------------------------------- */

static int cmp_slot(const void *a, const void *b) {
  const m3__slot *x = a, *y = b;
  if (x->id != y->id) return x->id < y->id ? -1 : 1;
  if (x->q != y->q) return x->q < y->q ? -1 : 1;
  return x->r < y->r ? -1 : x->r > y->r;
}

/* Give each job its slots (sorted by id) and distinct ids. slots: all
 * slots of the call, grouped here by owning shard. */
static int plan_fetch(m3__call *ca, const m3__slot *slots, size_t n) {
  uint32_t ns = ca->cl->n_shards;
  size_t *cnt = calloc(ns + 1, sizeof *cnt);
  m3__slot *sorted = malloc((n ? n : 1) * sizeof *sorted);
  if (cnt == NULL || sorted == NULL) {
    free(cnt);
    free(sorted);
    return m3__seterr(M3_ENOMEM, "out of memory planning a fetch of %zu ids", n);
  }
  for (size_t i = 0; i < n; i++) cnt[m3_cluster_shard_of(slots[i].id, ns) + 1]++;
  for (uint32_t s = 0; s < ns; s++) cnt[s + 1] += cnt[s];
  size_t *pos = calloc(ns, sizeof *pos);
  if (pos == NULL) {
    free(cnt);
    free(sorted);
    return m3__seterr(M3_ENOMEM, "out of memory");
  }
  for (size_t i = 0; i < n; i++) {
    uint32_t s = m3_cluster_shard_of(slots[i].id, ns);
    sorted[cnt[s] + pos[s]++] = slots[i];
  }
  free(pos);
  int rc = 0;
  for (uint32_t s = 0; s < ns; s++) {
    m3__job *j = &ca->jobs[s];
    j->slots = sorted + cnt[s];
    j->n_slots = cnt[s + 1] - cnt[s];
    if (j->n_slots == 0) continue;
    qsort(j->slots, j->n_slots, sizeof *j->slots, cmp_slot);
    size_t nu = 1;
    for (size_t i = 1; i < j->n_slots; i++) nu += j->slots[i].id != j->slots[i - 1].id;
    j->uids = malloc(nu * sizeof *j->uids);
    j->ustart = malloc((nu + 1) * sizeof *j->ustart);
    j->done = calloc(nu, 1);
    j->fails = calloc(nu, sizeof *j->fails);
    j->batch = malloc(nu * sizeof *j->batch);
    j->batch_u = malloc(nu * sizeof *j->batch_u);
    if (!j->uids || !j->ustart || !j->done || !j->fails || !j->batch || !j->batch_u) {
      rc = m3__seterr(M3_ENOMEM, "out of memory planning a fetch of %zu ids", n);
      break;
    }
    size_t u = 0;
    for (size_t i = 0; i < j->n_slots; i++) {
      if (i == 0 || j->slots[i].id != j->slots[i - 1].id) {
        j->uids[u] = j->slots[i].id;
        j->ustart[u++] = i;
      }
    }
    j->ustart[nu] = j->n_slots;
    j->nu = nu;
  }
  free(cnt);
  /* jobs[0].slots is the start of `sorted` whether or not it owns any. */
  ca->jobs[0].slots = sorted;
  return rc;
}

int m3__fetch_run(m3__call *ca, m3__slot *slots, size_t n) {
  int rc = plan_fetch(ca, slots, n);
  if (rc == 0) m3__jobs_run(ca, fetch_job, 1);
  return rc;
}
