/*
 * The cluster calls: Search scattered over every shard and merged to the
 * global top-k, Retrieve (that search, then Fetch of the winners from their
 * owning shards, streamed to the caller tagged with query and rank), and
 * Fetch by ids. One thread per shard per phase; within a shard, replicas
 * are tried in turn (m3__replica_order) until one answers or the call's
 * deadline passes (failover rules in m3/cluster.h).
 *
 * Workload: a retrieval round every 64 generated tokens of a batch of up to
 * a few hundred queries x top-5; shards in the single digits; calls of
 * milliseconds, so a thread per shard and call costs little beside them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"
#include "m3/error.h"
#include "m3/frame.h"
#include "m3/log.h"

/* m3.proto StatusCode values used here (the public header does not pull
 * in the generated code). */
enum {
  ST_OK = 0,
  ST_CANCELLED = 1,
  ST_INVALID_ARGUMENT = 3,
  ST_DEADLINE_EXCEEDED = 4,
  ST_NOT_FOUND = 5,
  ST_ALREADY_EXISTS = 6,
  ST_PERMISSION_DENIED = 7,
  ST_FAILED_PRECONDITION = 9,
  ST_OUT_OF_RANGE = 11,
  ST_UNIMPLEMENTED = 12,
  ST_UNAVAILABLE = 14,
  ST_DATA_LOSS = 15,
  ST_UNAUTHENTICATED = 16,
};

/* ---- per-thread status ---------------------------------------------- */

static _Thread_local struct {
  int code;
  int shard;
  char msg[1024];
} last;

int m3_cluster_last_status(int *shard, const char **msg) {
  if (shard) *shard = last.shard;
  if (msg) *msg = last.msg;
  return last.code;
}

/* Errors a server gives every replica alike: failing over cannot help. */
static int retryable(int grpc) {
  switch (grpc) {
  case ST_INVALID_ARGUMENT: case ST_NOT_FOUND: case ST_ALREADY_EXISTS: case ST_PERMISSION_DENIED:
  case ST_FAILED_PRECONDITION: case ST_OUT_OF_RANGE: case ST_UNIMPLEMENTED:
  case ST_UNAUTHENTICATED:
    return 0;
  default:
    return 1;
  }
}

/* ---- call state ----------------------------------------------------- */

typedef struct slot {
  uint64_t id;
  uint32_t q, r; /* query and global rank (Fetch: index in ids, 0) */
  float score;
} slot;

typedef struct item_fail {
  int status, grpc;
  char err[200];
} item_fail;

struct call;

typedef struct job {
  struct call *call;
  uint32_t shard;
  /* search phase: this shard's top-k, (nq, k) and (nq) */
  uint64_t *ids;
  float *scores;
  uint32_t *counts;
  /* fetch phase: the slots this shard owns, sorted by id; distinct ids
   * uids[u] fill slots [ustart[u], ustart[u + 1]) */
  slot *slots;
  size_t n_slots;
  uint64_t *uids;
  size_t *ustart;
  size_t nu, n_done;
  uint8_t *done;     /* (nu) delivered */
  item_fail *fails;  /* (nu) last item-level failure, status 0 = none */
  uint64_t *batch;   /* (nu) ids of the current attempt */
  size_t *batch_u;   /* (nu) their u */
  size_t batch_base; /* offset of the current Fetch in batch */
  /* result */
  int rc, grpc;
  char msg[900];
} job;

typedef struct call {
  m3_cluster *cl;
  int64_t deadline;
  const m3_client_query *q;
  size_t nq;
  uint32_t k;
  int with_text;
  m3_client_memory_fn fn;
  void *ud;
  pthread_mutex_t mu;  /* serialises fn */
  atomic_int stop_rc;  /* non-zero once fn stopped the call */
  job *jobs;
} call;

static void job_err(job *j, int rc, int grpc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void job_err(job *j, int rc, int grpc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(j->msg, sizeof j->msg, fmt, ap);
  va_end(ap);
  j->rc = rc;
  j->grpc = grpc;
}

/* Append "addr: why" to a shard's list of replica errors. */
static void note(char *buf, size_t cap, size_t *len, const char *addr, const char *why) {
  if (*len >= cap - 1) return;
  /* Messages from the pool already start with "shard N replica ADDR: ". */
  const char *p = strstr(why, "replica ");
  if (p && !strncmp(p + 8, addr, strlen(addr)) && p[8 + strlen(addr)] == ':') {
    why = p + 8 + strlen(addr) + 1;
    while (*why == ' ') why++;
  }
  int n = snprintf(buf + *len, cap - *len, "%s%s: %.200s", *len ? "; " : "", addr, why);
  if (n > 0) *len += (size_t)n < cap - *len ? (size_t)n : cap - *len - 1;
}

static void run_jobs(job *jobs, uint32_t n, void *(*fn)(void *), int skip_empty) {
  pthread_t *t = calloc(n, sizeof *t);
  uint8_t *started = calloc(n, 1);
  for (uint32_t i = 1; i < n; i++) {
    if (skip_empty && jobs[i].nu == 0) continue;
    if (t && started && pthread_create(&t[i], NULL, fn, &jobs[i]) == 0) started[i] = 1;
    else fn(&jobs[i]);
  }
  if (!(skip_empty && jobs[0].nu == 0)) fn(&jobs[0]);
  for (uint32_t i = 1; i < n; i++)
    if (started && started[i]) pthread_join(t[i], NULL);
  free(t);
  free(started);
}

/* ---- search --------------------------------------------------------- */

/* Search nq queries on one connection, in batches the server accepts. */
static int search_batches(m3_client *c, const m3_client_query *q, size_t nq, uint32_t k,
                          uint64_t *ids, float *scores, uint32_t *counts) {
  size_t maxq = m3_client_info_get(c)->max_queries_per_call;
  if (maxq == 0) maxq = nq;
  for (size_t off = 0; off < nq; off += maxq) {
    size_t nb = nq - off < maxq ? nq - off : maxq;
    int rc = m3_client_search(c, q + off, nb, k, ids + off * k, scores + off * k, counts + off);
    if (rc) return rc;
  }
  return 0;
}

/* Hedged search: attempts run on detached threads against copies of the
 * queries, so that an abandoned one can outlive the call. */
typedef struct race {
  m3_cluster *cl;
  uint32_t shard;
  m3_client_query *q; /* (nq) pointing into vecs / texts */
  float *vecs;
  char *texts;
  size_t nq;
  uint32_t k;
  int64_t deadline;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int refs, done, running, fatal, refused, tried;
  int fatal_grpc;
  uint64_t *ids; /* the winner's answer */
  float *scores;
  uint32_t *counts;
  char errs[700];
  size_t elen;
} race;

typedef struct attempt {
  race *r;
  m3__replica *rep;
} attempt;

static void race_unref(race *r) {
  pthread_mutex_lock(&r->mu);
  int left = --r->refs;
  pthread_mutex_unlock(&r->mu);
  if (left) return;
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
  free(r->q);
  free(r->vecs);
  free(r->texts);
  free(r->ids);
  free(r);
}

static void *attempt_main(void *arg) {
  attempt *a = arg;
  race *r = a->r;
  m3_cluster *cl = r->cl;
  m3__replica *rep = a->rep;
  free(a);
  size_t n = r->nq * r->k;
  uint64_t *ids = malloc(n * sizeof *ids + n * sizeof(float) + r->nq * sizeof(uint32_t));
  float *scores = ids ? (float *)(ids + n) : NULL;
  uint32_t *counts = ids ? (uint32_t *)(scores + n) : NULL;
  int rc = 0, refused = 0, grpc = ST_UNAVAILABLE, broken = 1;
  char why[400] = "out of memory";
  for (int fresh = 0; ids && fresh < 2; fresh++) {
    int64_t now = m3__now_ms();
    int64_t end = now + cl->o.try_timeout_ms < r->deadline ? now + cl->o.try_timeout_ms
                                                           : r->deadline;
    m3__pconn *pc;
    int reused;
    rc = m3__conn_get(cl, rep, end, &pc, &reused);
    if (rc) {
      refused = rc == M3_EFINGERPRINT;
      snprintf(why, sizeof why, "%s", m3_errmsg());
      break;
    }
    int64_t left = end - m3__now_ms();
    m3_client_set_timeout(pc->c, left > 0 ? (int)left : 1);
    rc = search_batches(pc->c, r->q, r->nq, r->k, ids, scores, counts);
    const char *msg = "";
    grpc = rc ? m3_client_last_status(pc->c, &msg) : ST_OK;
    broken = !m3_client_ok(pc->c);
    snprintf(why, sizeof why, "%s", msg);
    m3__conn_put(cl, rep, pc, !broken);
    if (rc && broken && reused && fresh == 0) {
      m3__replica_drop_idle(cl, rep);
      continue;
    }
    break;
  }
  if (ids == NULL) rc = M3_ENOMEM;
  if (rc == 0) m3__replica_ok(cl, rep);
  else if (refused || broken || retryable(grpc)) m3__replica_fail(cl, rep, refused, why);
  pthread_mutex_lock(&r->mu);
  r->running--;
  if (rc == 0 && !r->done) {
    r->done = 1;
    r->ids = ids;
    r->scores = scores;
    r->counts = counts;
    ids = NULL;
  } else if (rc) {
    if (!refused && !broken && !retryable(grpc) && !r->fatal) {
      r->fatal = rc;
      r->fatal_grpc = grpc;
      r->elen = 0;
    }
    if (refused) r->refused++;
    note(r->errs, sizeof r->errs, &r->elen, rep->addr, why);
  }
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
  free(ids);
  race_unref(r);
  pthread_mutex_lock(&cl->mu);
  cl->detached--;
  pthread_cond_broadcast(&cl->cv);
  pthread_mutex_unlock(&cl->mu);
  return NULL;
}

static int race_launch(race *r, m3__replica *rep) {
  attempt *a = malloc(sizeof *a);
  if (a == NULL) return -1;
  *a = (attempt){r, rep};
  pthread_mutex_lock(&r->mu);
  r->refs++;
  r->running++;
  r->tried++;
  pthread_mutex_unlock(&r->mu);
  pthread_mutex_lock(&r->cl->mu);
  r->cl->detached++;
  pthread_mutex_unlock(&r->cl->mu);
  pthread_attr_t at;
  pthread_attr_init(&at);
  pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
  pthread_t t;
  int e = pthread_create(&t, &at, attempt_main, a);
  pthread_attr_destroy(&at);
  if (e != 0) attempt_main(a); /* runs inline; it undoes the counts itself */
  return 0;
}

static void search_hedged(job *j) {
  call *ca = j->call;
  m3_cluster *cl = ca->cl;
  race *r = calloc(1, sizeof *r);
  size_t nv = 0, nt = 0;
  for (size_t i = 0; i < ca->nq; i++) {
    if (ca->q[i].vector) nv += ca->q[i].dim;
    else if (ca->q[i].text) nt += strlen(ca->q[i].text) + 1;
  }
  if (r) {
    r->q = calloc(ca->nq, sizeof *r->q);
    r->vecs = malloc((nv ? nv : 1) * sizeof(float));
    r->texts = malloc(nt ? nt : 1);
  }
  if (r == NULL || r->q == NULL || r->vecs == NULL || r->texts == NULL) {
    if (r) {
      free(r->q);
      free(r->vecs);
      free(r->texts);
      free(r);
    }
    job_err(j, M3_ENOMEM, 8, "shard %u: out of memory", j->shard);
    return;
  }
  float *v = r->vecs;
  char *t = r->texts;
  for (size_t i = 0; i < ca->nq; i++) {
    r->q[i] = ca->q[i];
    if (ca->q[i].vector) {
      memcpy(v, ca->q[i].vector, ca->q[i].dim * sizeof *v);
      r->q[i].vector = v;
      v += ca->q[i].dim;
    } else if (ca->q[i].text) {
      size_t l = strlen(ca->q[i].text) + 1;
      memcpy(t, ca->q[i].text, l);
      r->q[i].text = t;
      t += l;
    }
  }
  r->cl = cl;
  r->shard = j->shard;
  r->nq = ca->nq;
  r->k = ca->k;
  r->deadline = ca->deadline;
  r->refs = 1;
  pthread_mutex_init(&r->mu, NULL);
  pthread_condattr_t ca_;
  pthread_condattr_init(&ca_);
  pthread_condattr_setclock(&ca_, CLOCK_MONOTONIC);
  pthread_cond_init(&r->cv, &ca_);
  pthread_condattr_destroy(&ca_);

  uint32_t order[256], n = m3__replica_order(cl, j->shard, order), next = 0;
  m3__shard *sh = &cl->shards[j->shard];
  race_launch(r, &sh->r[order[next++]]);
  int64_t hedge_at = m3__now_ms() + cl->o.hedge_delay_ms;
  pthread_mutex_lock(&r->mu);
  for (;;) {
    if (r->done) {
      size_t nn = ca->nq * ca->k;
      memcpy(j->ids, r->ids, nn * sizeof *j->ids);
      memcpy(j->scores, r->scores, nn * sizeof *j->scores);
      memcpy(j->counts, r->counts, ca->nq * sizeof *j->counts);
      j->rc = 0;
      break;
    }
    if (r->fatal) {
      job_err(j, r->fatal, r->fatal_grpc, "shard %u: %s", j->shard, r->errs);
      break;
    }
    int64_t now = m3__now_ms();
    if (r->running == 0 && next >= n) {
      if (r->refused == r->tried)
        job_err(j, M3_EFINGERPRINT, ST_FAILED_PRECONDITION, "shard %u: every replica refused: %s",
                j->shard, r->errs);
      else
        job_err(j, M3_EBUSY, ST_UNAVAILABLE, "shard %u unavailable: all %u replicas failed: %s",
                j->shard, n, r->errs);
      break;
    }
    if (now >= ca->deadline) {
      job_err(j, M3_EBUSY, ST_DEADLINE_EXCEEDED, "shard %u: deadline of %d ms passed: %s",
              j->shard, cl->o.call_timeout_ms, r->elen ? r->errs : "no replica answered");
      break;
    }
    if (next < n && (r->running == 0 || now >= hedge_at)) {
      m3__cluster_count(cl, r->running ? &cl->ctr.hedges : &cl->ctr.failovers, 1);
      pthread_mutex_unlock(&r->mu);
      race_launch(r, &sh->r[order[next++]]);
      hedge_at = m3__now_ms() + cl->o.hedge_delay_ms;
      pthread_mutex_lock(&r->mu);
      continue;
    }
    int64_t until = ca->deadline;
    if (next < n && hedge_at < until) until = hedge_at;
    struct timespec ts = {(time_t)(until / 1000), (long)(until % 1000) * 1000000};
    pthread_cond_timedwait(&r->cv, &r->mu, &ts);
  }
  pthread_mutex_unlock(&r->mu);
  race_unref(r);
}

/* ---- failover driver ------------------------------------------------ */

typedef int (*op_fn)(call *ca, job *j, m3_client *c);

static int search_op(call *ca, job *j, m3_client *c) {
  return search_batches(c, ca->q, ca->nq, ca->k, j->ids, j->scores, j->counts);
}

/* Run op on one replica of j's shard after another until one succeeds (for
 * Fetch: until every id was delivered), a request error ends it, or the
 * deadline passes. Sets j->rc, j->grpc and j->msg. */
static void run_shard(job *j, op_fn op, int is_fetch) {
  call *ca = j->call;
  m3_cluster *cl = ca->cl;
  m3__shard *sh = &cl->shards[j->shard];
  uint32_t order[256], n = m3__replica_order(cl, j->shard, order);
  char errs[700] = "";
  size_t elen = 0;
  int refused = 0, answered = 0;
  j->rc = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (is_fetch && j->n_done == j->nu) return;
    m3__replica *rep = &sh->r[order[i]];
    if (i > 0) m3__cluster_count(cl, &cl->ctr.failovers, 1);
    for (int fresh = 0; fresh < 2; fresh++) {
      int64_t now = m3__now_ms();
      if (now >= ca->deadline) {
        job_err(j, M3_EBUSY, ST_DEADLINE_EXCEEDED, "shard %u: deadline of %d ms passed: %s",
                j->shard, cl->o.call_timeout_ms, elen ? errs : "no replica answered in time");
        return;
      }
      int64_t end = now + cl->o.try_timeout_ms < ca->deadline ? now + cl->o.try_timeout_ms
                                                              : ca->deadline;
      m3__pconn *pc;
      int reused;
      int rc = m3__conn_get(cl, rep, end, &pc, &reused);
      if (rc) {
        refused += rc == M3_EFINGERPRINT;
        note(errs, sizeof errs, &elen, rep->addr, m3_errmsg());
        m3__replica_fail(cl, rep, rc == M3_EFINGERPRINT, m3_errmsg());
        break;
      }
      int64_t left = end - m3__now_ms();
      m3_client_set_timeout(pc->c, left > 0 ? (int)left : 1);
      rc = op(ca, j, pc->c);
      if (rc == 0) {
        m3__conn_put(cl, rep, pc, 1);
        m3__replica_ok(cl, rep);
        answered = 1;
        if (!is_fetch || j->n_done == j->nu) return;
        break; /* items that failed alone: ask the next replica for them */
      }
      int stop = atomic_load(&ca->stop_rc);
      if (stop) {
        m3__conn_put(cl, rep, pc, 1);
        job_err(j, stop, ST_CANCELLED, "stopped by the callback");
        return;
      }
      const char *msg;
      int grpc = m3_client_last_status(pc->c, &msg);
      int broken = !m3_client_ok(pc->c);
      if (!broken && !retryable(grpc)) {
        job_err(j, rc, grpc, "shard %u: %s", j->shard, msg);
        m3__conn_put(cl, rep, pc, 1);
        return;
      }
      char why[400];
      snprintf(why, sizeof why, "%s", msg);
      m3__conn_put(cl, rep, pc, !broken);
      if (broken && reused && fresh == 0) {
        /* The pooled connection may have died while idle: one fresh try. */
        m3__replica_drop_idle(cl, rep);
        continue;
      }
      note(errs, sizeof errs, &elen, rep->addr, why);
      m3__replica_fail(cl, rep, 0, why);
      break;
    }
  }
  if (is_fetch && answered) {
    /* Every replica was asked; what is left failed alone on each. */
    for (size_t u = 0; u < j->nu; u++) {
      if (j->done[u]) continue;
      if (j->fails == NULL || j->fails[u].status == 0) goto unavailable;
    }
    for (size_t u = 0; u < j->nu; u++) {
      if (j->done[u]) continue;
      item_fail *f = &j->fails[u];
      m3_client_memory m = {.chunk_id = j->uids[u], .status = f->status,
                            .grpc_status = f->grpc, .error = f->err, .text = ""};
      pthread_mutex_lock(&ca->mu);
      int rc = atomic_load(&ca->stop_rc);
      for (size_t s = j->ustart[u]; s < j->ustart[u + 1] && !rc; s++) {
        m.query = j->slots[s].q;
        m.rank = j->slots[s].r;
        m.score = j->slots[s].score;
        if ((rc = ca->fn(ca->ud, &m)) != 0) atomic_store(&ca->stop_rc, rc);
      }
      pthread_mutex_unlock(&ca->mu);
      if (rc) {
        job_err(j, rc, ST_CANCELLED, "stopped by the callback");
        return;
      }
      j->done[u] = 1;
      j->n_done++;
    }
    return;
  }
unavailable:
  if (refused == (int)n)
    job_err(j, M3_EFINGERPRINT, ST_FAILED_PRECONDITION, "shard %u: every replica refused: %s",
            j->shard, errs);
  else
    job_err(j, M3_EBUSY, ST_UNAVAILABLE, "shard %u unavailable: all %u replicas failed: %s",
            j->shard, n, errs);
}

static void *search_job(void *arg) {
  job *j = arg;
  if (j->call->cl->o.hedge_delay_ms > 0 && j->call->cl->shards[j->shard].n > 1)
    search_hedged(j);
  else
    run_shard(j, search_op, 0);
  return NULL;
}

/* ---- fetch ---------------------------------------------------------- */

static int on_item(void *ud, const m3_client_memory *m) {
  job *j = ud;
  call *ca = j->call;
  size_t u = j->batch_u[j->batch_base + m->query];
  if (j->done[u]) return 0;
  if (m->status == 0 && m->chunk_id != j->uids[u]) {
    item_fail *f = &j->fails[u];
    f->status = M3_ECORRUPT;
    f->grpc = ST_DATA_LOSS;
    snprintf(f->err, sizeof f->err, "asked for chunk %llu, the server sent chunk %llu",
             (unsigned long long)j->uids[u], (unsigned long long)m->chunk_id);
    return atomic_load(&ca->stop_rc);
  }
  if (m->status != 0 && m->status != M3_ENOTFOUND) {
    /* Bad bytes on this replica: another one may have good ones. */
    item_fail *f = &j->fails[u];
    f->status = m->status;
    f->grpc = m->grpc_status;
    snprintf(f->err, sizeof f->err, "%s", m->error);
    return atomic_load(&ca->stop_rc);
  }
  j->done[u] = 1;
  j->n_done++;
  pthread_mutex_lock(&ca->mu);
  int rc = atomic_load(&ca->stop_rc);
  for (size_t s = j->ustart[u]; s < j->ustart[u + 1] && !rc; s++) {
    m3_client_memory m2 = *m;
    m2.query = j->slots[s].q;
    m2.rank = j->slots[s].r;
    m2.score = j->slots[s].score;
    if ((rc = ca->fn(ca->ud, &m2)) != 0) atomic_store(&ca->stop_rc, rc);
  }
  pthread_mutex_unlock(&ca->mu);
  return rc;
}

static int fetch_op(call *ca, job *j, m3_client *c) {
  size_t np = 0;
  for (size_t u = 0; u < j->nu; u++) {
    if (j->done[u]) continue;
    j->batch[np] = j->uids[u];
    j->batch_u[np++] = u;
  }
  size_t maxids = m3_client_info_get(c)->max_ids_per_call;
  if (maxids == 0) maxids = np;
  for (size_t off = 0; off < np; off += maxids) {
    size_t nb = np - off < maxids ? np - off : maxids;
    j->batch_base = off;
    int rc = m3_client_fetch(c, j->batch + off, nb, ca->with_text, on_item, j);
    if (rc) return rc;
  }
  return 0;
}

static void *fetch_job(void *arg) {
  run_shard(arg, fetch_op, 1);
  return NULL;
}

static int cmp_slot(const void *a, const void *b) {
  const slot *x = a, *y = b;
  if (x->id != y->id) return x->id < y->id ? -1 : 1;
  if (x->q != y->q) return x->q < y->q ? -1 : 1;
  return x->r < y->r ? -1 : x->r > y->r;
}

/* Give each job its slots (sorted by id) and distinct ids. slots: all
 * slots of the call, grouped here by owning shard. */
static int plan_fetch(call *ca, slot *slots, size_t n) {
  uint32_t ns = ca->cl->n_shards;
  size_t *cnt = calloc(ns + 1, sizeof *cnt);
  slot *sorted = malloc((n ? n : 1) * sizeof *sorted);
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
    job *j = &ca->jobs[s];
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

/* ---- the calls ------------------------------------------------------ */

static void call_begin(call *ca, m3_cluster *cl) {
  memset(ca, 0, sizeof *ca);
  ca->cl = cl;
  ca->deadline = m3__now_ms() + cl->o.call_timeout_ms;
  pthread_mutex_init(&ca->mu, NULL);
  atomic_init(&ca->stop_rc, 0);
  last.code = ST_OK;
  last.shard = -1;
  last.msg[0] = '\0';
  m3__cluster_count(cl, &cl->ctr.calls, 1);
}

static void jobs_free(call *ca) {
  if (ca->jobs == NULL) return;
  for (uint32_t s = 0; s < ca->cl->n_shards; s++) {
    job *j = &ca->jobs[s];
    free(j->uids);
    free(j->ustart);
    free(j->done);
    free(j->fails);
    free(j->batch);
    free(j->batch_u);
  }
  free(ca->jobs[0].slots);
  free(ca->jobs[0].ids);
  free(ca->jobs);
  ca->jobs = NULL;
}

/* End the call: the first failed shard (lowest number) decides; a callback
 * stop wins over everything. */
static int call_end(call *ca, int rc) {
  int stop = atomic_load(&ca->stop_rc);
  if (stop) {
    rc = stop;
    last.code = ST_CANCELLED;
    snprintf(last.msg, sizeof last.msg, "stopped by the callback (%d)", stop);
  } else if (rc == 0 && ca->jobs) {
    for (uint32_t s = 0; s < ca->cl->n_shards; s++) {
      job *j = &ca->jobs[s];
      if (j->rc == 0) continue;
      rc = j->rc;
      last.code = j->grpc;
      last.shard = (int)s;
      snprintf(last.msg, sizeof last.msg, "%s", j->msg);
      m3__seterr(rc, "%s", j->msg);
      break;
    }
  } else if (rc) {
    last.code = m3_status_from_err(rc);
    if (rc == M3_EBUSY) last.code = ST_UNAVAILABLE;
    snprintf(last.msg, sizeof last.msg, "%s", m3_errmsg());
  }
  if (rc && !stop) m3__cluster_count(ca->cl, &ca->cl->ctr.failed, 1);
  jobs_free(ca);
  pthread_mutex_destroy(&ca->mu);
  return rc;
}

static int call_jobs(call *ca) {
  uint32_t ns = ca->cl->n_shards;
  ca->jobs = calloc(ns, sizeof *ca->jobs);
  if (ca->jobs == NULL) return m3__seterr(M3_ENOMEM, "out of memory");
  for (uint32_t s = 0; s < ns; s++) {
    ca->jobs[s].call = ca;
    ca->jobs[s].shard = s;
  }
  return 0;
}

/* The search phase: every shard's top-k, merged into ids/scores/counts. */
static int scatter_search(call *ca, uint64_t *ids, float *scores, uint32_t *counts) {
  m3_cluster *cl = ca->cl;
  uint32_t ns = cl->n_shards;
  size_t nq = ca->nq, k = ca->k, n = nq * k;
  int rc = m3__cluster_ensure_ref(cl, ca->deadline);
  if (rc) return rc;
  if ((rc = call_jobs(ca)) != 0) return rc;
  uint64_t *all = malloc(ns * (n * sizeof(uint64_t) + n * sizeof(float) + nq * sizeof(uint32_t)));
  if (all == NULL) return m3__seterr(M3_ENOMEM, "out of memory for %u x %zu results", ns, n);
  float *sc = (float *)(all + (size_t)ns * n);
  uint32_t *cn = (uint32_t *)(sc + (size_t)ns * n);
  for (uint32_t s = 0; s < ns; s++) {
    ca->jobs[s].ids = all + s * n;
    ca->jobs[s].scores = sc + s * n;
    ca->jobs[s].counts = cn + s * nq;
    ca->jobs[s].nu = 1; /* not empty for run_jobs */
  }
  run_jobs(ca->jobs, ns, search_job, 0);
  for (uint32_t s = 0; s < ns; s++) {
    ca->jobs[s].ids = NULL;
    ca->jobs[s].nu = 0;
    if (ca->jobs[s].rc) rc = ca->jobs[s].rc;
  }
  ca->jobs[0].ids = all; /* freed with the jobs */
  if (rc) return 0;      /* call_end reports the failed shard */
  /* Merge: score descending, then chunk id ascending (the index's order). */
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

static int check_queries(const m3_client_query *q, size_t nq, uint32_t k) {
  if (q == NULL || nq == 0) return m3__seterr(M3_EINVAL, "no queries");
  if (k == 0) return m3__seterr(M3_EINVAL, "k must be at least 1");
  return 0;
}

int m3_cluster_search(m3_cluster *cl, const m3_client_query *queries, size_t nq, uint32_t k,
                      uint64_t *ids, float *scores, uint32_t *counts) {
  call ca;
  call_begin(&ca, cl);
  int rc = check_queries(queries, nq, k);
  if (rc == 0) {
    ca.q = queries;
    ca.nq = nq;
    ca.k = k;
    rc = scatter_search(&ca, ids, scores, counts);
  }
  return call_end(&ca, rc);
}

int m3_cluster_retrieve(m3_cluster *cl, const m3_client_query *queries, size_t nq, uint32_t k,
                        int with_text, m3_client_memory_fn fn, void *ud) {
  call ca;
  call_begin(&ca, cl);
  int rc = check_queries(queries, nq, k);
  if (rc) return call_end(&ca, rc);
  ca.q = queries;
  ca.nq = nq;
  ca.k = k;
  ca.with_text = with_text;
  ca.fn = fn;
  ca.ud = ud;
  size_t n = nq * k;
  uint64_t *ids = malloc(n * (sizeof *ids + sizeof(float)) + nq * sizeof(uint32_t));
  slot *slots = malloc(n * sizeof *slots);
  if (ids == NULL || slots == NULL) {
    rc = m3__seterr(M3_ENOMEM, "out of memory for %zu results", n);
    goto out;
  }
  float *scores = (float *)(ids + n);
  uint32_t *counts = (uint32_t *)(scores + n);
  if ((rc = scatter_search(&ca, ids, scores, counts)) != 0) goto out;
  for (uint32_t s = 0; s < cl->n_shards; s++)
    if (ca.jobs[s].rc) goto out; /* a shard failed: nothing was delivered */
  size_t ns = 0;
  for (size_t q = 0; q < nq; q++)
    for (uint32_t r = 0; r < counts[q]; r++)
      slots[ns++] = (slot){ids[q * k + r], (uint32_t)q, r, scores[q * k + r]};
  jobs_free(&ca);
  if ((rc = call_jobs(&ca)) != 0) goto out;
  if (ns == 0) goto out;
  if ((rc = plan_fetch(&ca, slots, ns)) != 0) goto out;
  run_jobs(ca.jobs, cl->n_shards, fetch_job, 1);
out:
  free(ids);
  free(slots);
  return call_end(&ca, rc);
}

int m3_cluster_fetch(m3_cluster *cl, const uint64_t *ids, size_t n, int with_text,
                     m3_client_memory_fn fn, void *ud) {
  call ca;
  call_begin(&ca, cl);
  if (ids == NULL || n == 0) return call_end(&ca, m3__seterr(M3_EINVAL, "no ids"));
  ca.with_text = with_text;
  ca.fn = fn;
  ca.ud = ud;
  slot *slots = malloc(n * sizeof *slots);
  int rc = slots ? 0 : m3__seterr(M3_ENOMEM, "out of memory for %zu ids", n);
  if (rc == 0) rc = m3__cluster_ensure_ref(cl, ca.deadline);
  if (rc == 0) rc = call_jobs(&ca);
  if (rc == 0) {
    for (size_t i = 0; i < n; i++) slots[i] = (slot){ids[i], (uint32_t)i, 0, 0};
    rc = plan_fetch(&ca, slots, n);
  }
  if (rc == 0) run_jobs(ca.jobs, cl->n_shards, fetch_job, 1);
  free(slots);
  return call_end(&ca, rc);
}

/* ---- whole-cluster calls -------------------------------------------- */

int m3_cluster_info(m3_cluster *cl, m3_client_info *out) {
  int rc = m3__cluster_ensure_ref(cl, m3__now_ms() + cl->o.call_timeout_ms);
  if (rc) return rc;
  pthread_mutex_lock(&cl->mu);
  *out = cl->ref;
  pthread_mutex_unlock(&cl->mu);
  return 0;
}

int m3_cluster_check(m3_cluster *cl) {
  int64_t deadline = m3__now_ms() + cl->o.call_timeout_ms;
  int first = m3__cluster_ensure_ref(cl, deadline);
  char errs[1000] = "";
  size_t len = 0;
  if (first) snprintf(errs, sizeof errs, "%s", m3_errmsg());
  for (uint32_t s = 0; first == 0 && s < cl->n_shards; s++) {
    for (uint32_t r = 0; r < cl->shards[s].n; r++) {
      m3__replica *rep = &cl->shards[s].r[r];
      m3__pconn *pc;
      int reused;
      int rc = m3__conn_get(cl, rep, deadline, &pc, &reused);
      if (rc == 0 && reused) {
        /* Prove the pooled connection is alive. */
        int serving;
        m3_client_set_timeout(pc->c, cl->o.try_timeout_ms);
        if (m3_client_health(pc->c, &serving, NULL, 0) != 0) {
          m3__conn_put(cl, rep, pc, 0);
          m3__replica_drop_idle(cl, rep);
          rc = m3__conn_get(cl, rep, deadline, &pc, &reused);
        }
      }
      if (rc == 0) {
        m3__conn_put(cl, rep, pc, 1);
        continue;
      }
      m3__replica_fail(cl, rep, rc == M3_EFINGERPRINT, m3_errmsg());
      if (len < sizeof errs - 1)
        len += (size_t)snprintf(errs + len, sizeof errs - len, "%s%s", len ? "; " : "",
                                m3_errmsg());
      if (first == 0) first = rc;
    }
  }
  last.code = first ? m3_status_from_err(first) : ST_OK;
  last.shard = -1;
  snprintf(last.msg, sizeof last.msg, "%s", errs);
  if (first) m3__seterr(first, "%s", errs);
  return first;
}
