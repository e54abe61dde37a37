/*
 * The cluster calls: Search scattered over every shard and merged to the
 * global top-k, Retrieve (that search, then Fetch of the winners from their
 * owning shards, streamed to the caller tagged with query and rank), and
 * Fetch by ids. Each phase is one job per shard, run by the cluster's
 * worker pool (cluster_workers.c) and by the calling thread; within a
 * shard, replicas are tried in turn (m3__replica_order) until one answers
 * or the call's deadline passes (failover rules in m3/cluster.h). With
 * hedging on, a shard's Search or Fetch is a race of attempts on several
 * replicas (pool tasks too).
 *
 * The same code runs a sync call on its caller's thread and an async one
 * on a worker (m3__cluster_run; cluster_async.c).
 *
 * Workload: a retrieval round every 64 generated tokens of a batch of up to
 * a few hundred queries x top-5; shards in the single digits; calls of
 * milliseconds, many threads or async ops at once.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
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
  ST_RESOURCE_EXHAUSTED = 8,
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

static void abs_time(int64_t ms, struct timespec *ts) {
  ts->tv_sec = (time_t)(ms / 1000);
  ts->tv_nsec = (long)(ms % 1000) * 1000000;
}

/* ---- copied memories ------------------------------------------------ */

int m3__memcopy_make(m3__memcopy *c, const m3_client_memory *m) {
  size_t tl = m->text ? strlen(m->text) : 0;
  size_t el = m->error ? strlen(m->error) : 0;
  size_t dl = m->data ? m->len : 0;
  /* [m3_record][data][text NUL][error NUL]: the record first keeps it aligned */
  uint8_t *b = malloc(sizeof(m3_record) + dl + tl + 1 + el + 1);
  if (b == NULL) return M3_ENOMEM;
  c->m = *m;
  c->blk = b;
  m3_record *rec = (m3_record *)b;
  uint8_t *data = b + sizeof(m3_record);
  char *text = (char *)data + dl, *err = text + tl + 1;
  if (dl) memcpy(data, m->data, dl);
  memcpy(text, m->text ? m->text : "", tl + 1);
  memcpy(err, m->error ? m->error : "", el + 1);
  c->m.data = m->data ? data : NULL;
  c->m.text = text;
  c->m.text_len = m->text ? m->text_len : 0;
  c->m.error = err;
  c->m.record = NULL;
  if (m->record && m->data) {
    /* The parsed record points into data: point it into the copy. */
    *rec = *m->record;
    const uint8_t *lo = m->data, *hi = m->data + dl;
#define REBASE(f, T)                                                               \
  rec->f = (rec->f && (const uint8_t *)rec->f >= lo && (const uint8_t *)rec->f < hi) \
               ? (T)(data + ((const uint8_t *)rec->f - lo))                          \
               : NULL
    REBASE(positions, const uint16_t *);
    REBASE(codes, const uint8_t *);
    REBASE(text, const char *);
    REBASE(embedding, const uint8_t *);
#undef REBASE
    c->m.record = rec;
  }
  return 0;
}

void m3__memcopy_free(m3__memcopy *c) {
  free(c->blk);
  c->blk = NULL;
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
  m3__task task;      /* run on the pool (run_jobs) */
  void (*fn)(struct job *j);
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
  pthread_mutex_t mu;       /* serialises fn */
  atomic_int stop_rc;       /* non-zero once fn stopped the call (or a cancel) */
  atomic_int cancelled;     /* stop_rc came from *cancel */
  const atomic_int *cancel; /* async: the op's cancel flag; NULL for sync */
  job *jobs;
  pthread_mutex_t wmu;      /* run_jobs: jobs still running */
  pthread_cond_t wcv;
  unsigned pending;
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

/* Stop the call with rc unless it already stopped; returns the rc it
 * stopped with. */
static int call_stop(call *ca, int rc) {
  int z = 0;
  if (!atomic_compare_exchange_strong(&ca->stop_rc, &z, rc)) return z;
  return rc;
}

/* Non-zero once the call must end: the callback stopped it, or (async) it
 * was cancelled, which stops it with M3_ECANCELED (status CANCELLED). */
static int call_stopped(call *ca) {
  int s = atomic_load(&ca->stop_rc);
  if (s == 0 && ca->cancel && atomic_load(ca->cancel)) {
    int z = 0;
    if (atomic_compare_exchange_strong(&ca->stop_rc, &z, M3_ECANCELED)) atomic_store(&ca->cancelled, 1);
    s = atomic_load(&ca->stop_rc);
  }
  return s;
}

static void job_stopped(job *j, int stop) {
  job_err(j, stop, ST_CANCELLED, "%s",
          atomic_load(&j->call->cancelled) ? "cancelled" : "stopped by the callback");
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

/* ---- running a phase's jobs ----------------------------------------- */

static void job_task(m3__task *t) {
  job *j = (job *)t; /* task is the first member */
  call *ca = j->call;
  j->fn(j);
  pthread_mutex_lock(&ca->wmu);
  if (--ca->pending == 0) pthread_cond_signal(&ca->wcv);
  pthread_mutex_unlock(&ca->wmu);
}

/* Run fn on every job (skip_empty: those with ids to fetch): all but one go
 * to the pool, the calling thread runs that one, then takes back and runs
 * whichever the pool has not started, then waits for the rest. */
static void run_jobs(call *ca, void (*fn)(job *), int skip_empty) {
  m3_cluster *cl = ca->cl;
  uint32_t n = cl->n_shards;
  job *mine = NULL;
  ca->pending = 0;
  for (uint32_t i = 0; i < n; i++) {
    job *j = &ca->jobs[i];
    if (skip_empty && j->nu == 0) continue;
    j->fn = fn;
    j->task.run = job_task;
    if (mine == NULL) {
      mine = j;
      continue;
    }
    pthread_mutex_lock(&ca->wmu);
    ca->pending++;
    pthread_mutex_unlock(&ca->wmu);
    m3__task_post(&cl->workers, &j->task);
  }
  if (mine == NULL) return;
  fn(mine);
  for (uint32_t i = 0; i < n; i++) {
    job *j = &ca->jobs[i];
    if (j != mine && !(skip_empty && j->nu == 0) && m3__task_take(&cl->workers, &j->task))
      job_task(&j->task);
  }
  pthread_mutex_lock(&ca->wmu);
  while (ca->pending > 0) pthread_cond_wait(&ca->wcv, &ca->wmu);
  pthread_mutex_unlock(&ca->wmu);
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

/* ---- hedged attempts ------------------------------------------------ */

/*
 * A race: one shard's Search or Fetch sent to one replica and, after
 * hedge_delay_ms without an answer, to the next one too; the first complete
 * answer wins. Attempts are pool tasks working on the race's own copy of
 * the request, so that a loser can outlive its call (close waits for it).
 * A Fetch attempt buffers its memories (m3__memcopy): only the winner's
 * reach the caller, so none is delivered twice. The race is refcounted: the
 * waiting job and each attempt.
 */
typedef struct race race;

typedef struct attempt {
  m3__task task; /* first member */
  race *r;
  m3__replica *rep;
  m3__pconn *pc;   /* the connection its request is on, under r->mu */
  int state;       /* 0 queued, 1 working, 2 finished; under r->mu */
  int interrupted; /* the race ended while it ran: its connection was shut */
} attempt;

/* A Fetch attempt's memories; m.query is the index in race.ids. */
typedef struct fbuf {
  m3__memcopy *v;
  size_t n, cap;
} fbuf;

struct race {
  m3_cluster *cl;
  uint32_t shard;
  int is_fetch;
  int64_t deadline;
  m3_client_query *q; /* search: (nq) pointing into vecs / texts */
  float *vecs;
  char *texts;
  size_t nq;
  uint32_t k;
  uint64_t *ids; /* fetch: (n_ids) */
  size_t n_ids;
  int with_text;
  attempt *att; /* (shard's replicas): each replica once */
  uint32_t n_att;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int refs, done, running, queued, fatal, refused, tried, abandoned;
  int fatal_grpc;
  void *win; /* search: ids (nq * k), scores, counts in one block; fetch: fbuf */
  char errs[700];
  size_t elen;
};

static void fbuf_free(fbuf *b) {
  if (b == NULL) return;
  for (size_t i = 0; i < b->n; i++) m3__memcopy_free(&b->v[i]);
  free(b->v);
  free(b);
}

static void race_unref(race *r) {
  pthread_mutex_lock(&r->mu);
  int left = --r->refs;
  pthread_mutex_unlock(&r->mu);
  if (left) return;
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
  if (r->is_fetch) fbuf_free(r->win);
  else free(r->win);
  free(r->q);
  free(r->vecs);
  free(r->texts);
  free(r->ids);
  free(r->att);
  free(r);
}

/* The race was decided or given up: attempts stop working for it. */
static int race_over(race *r) {
  pthread_mutex_lock(&r->mu);
  int over = r->done || r->abandoned;
  pthread_mutex_unlock(&r->mu);
  return over;
}

typedef struct fctx {
  race *r;
  fbuf *b;
  size_t off;
} fctx;

static int buffer_item(void *ud, const m3_client_memory *m) {
  fctx *f = ud;
  /* Another replica won: stop the stream (the client sends CANCEL). */
  if (race_over(f->r)) return 1;
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

/* One attempt's request on c into a fresh result (*out). Returns the
 * call's code; 1 when it stopped because the race was over. */
static int attempt_op(race *r, m3_client *c, void **out) {
  if (!r->is_fetch) {
    size_t n = r->nq * r->k;
    uint64_t *ids = malloc(n * sizeof *ids + n * sizeof(float) + r->nq * sizeof(uint32_t));
    if (ids == NULL) return M3_ENOMEM;
    float *scores = (float *)(ids + n);
    uint32_t *counts = (uint32_t *)(scores + n);
    int rc = search_batches(c, r->q, r->nq, r->k, ids, scores, counts);
    if (rc) free(ids);
    else *out = ids;
    return rc;
  }
  fbuf *b = calloc(1, sizeof *b);
  if (b == NULL) return M3_ENOMEM;
  size_t maxids = m3_client_info_get(c)->max_ids_per_call;
  if (maxids == 0) maxids = r->n_ids;
  int rc = 0;
  for (size_t off = 0; off < r->n_ids && rc == 0; off += maxids) {
    size_t nb = r->n_ids - off < maxids ? r->n_ids - off : maxids;
    fctx f = {r, b, off};
    rc = m3_client_fetch(c, r->ids + off, nb, r->with_text, buffer_item, &f);
  }
  if (rc) fbuf_free(b);
  else *out = b;
  return rc;
}

static void attempt_run(m3__task *t) {
  attempt *a = (attempt *)t;
  race *r = a->r;
  m3_cluster *cl = r->cl;
  m3__replica *rep = a->rep;
  pthread_mutex_lock(&r->mu);
  r->queued--;
  int skip = r->done || r->abandoned;
  a->state = skip ? 2 : 1;
  pthread_mutex_unlock(&r->mu);
  void *res = NULL;
  int rc = 1, refused = 0, grpc = ST_UNAVAILABLE, broken = 0, lost = skip;
  char why[400] = "";
  for (int fresh = 0; !skip && fresh < 2; fresh++) {
    int64_t now = m3__now_ms();
    int64_t end = now + cl->o.try_timeout_ms < r->deadline ? now + cl->o.try_timeout_ms
                                                           : r->deadline;
    m3__pconn *pc;
    int reused;
    rc = m3__conn_get(cl, rep, end, &pc, &reused);
    if (rc) {
      refused = rc == M3_EFINGERPRINT;
      broken = 1;
      snprintf(why, sizeof why, "%s", m3_errmsg());
      break;
    }
    pthread_mutex_lock(&r->mu);
    int over = r->done || r->abandoned;
    if (!over) a->pc = pc; /* from now on the waiter may interrupt it */
    pthread_mutex_unlock(&r->mu);
    if (over) {
      m3__conn_put(cl, rep, pc, 1);
      rc = 1;
      lost = 1;
      break;
    }
    int64_t left = end - m3__now_ms();
    m3_client_set_timeout(pc->c, left > 0 ? (int)left : 1);
    rc = attempt_op(r, pc->c, &res);
    pthread_mutex_lock(&r->mu);
    a->pc = NULL;
    int interrupted = a->interrupted;
    pthread_mutex_unlock(&r->mu);
    const char *msg = "";
    grpc = rc ? m3_client_last_status(pc->c, &msg) : ST_OK;
    broken = !m3_client_ok(pc->c);
    lost = interrupted || (rc == 1 && !broken);
    snprintf(why, sizeof why, "%s", rc == M3_ENOMEM && !*msg ? "out of memory" : msg);
    /* Interrupted after its answer was in, it still looks usable: its
     * socket is shut all the same. */
    m3__conn_put(cl, rep, pc, !broken && !interrupted);
    if (rc && !lost && broken && reused && fresh == 0) {
      m3__replica_drop_idle(cl, rep);
      continue;
    }
    break;
  }
  if (rc == 0) m3__replica_ok(cl, rep);
  else if (!lost && (refused || broken || retryable(grpc)))
    m3__replica_fail(cl, rep, refused, why);
  pthread_mutex_lock(&r->mu);
  r->running--;
  a->state = 2;
  if (rc == 0 && !r->done) {
    r->done = 1;
    r->win = res;
    res = NULL;
  } else if (rc && !lost) {
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
  if (r->is_fetch) fbuf_free(res);
  else free(res);
  race_unref(r);
}

static void race_launch(race *r, m3__replica *rep) {
  attempt *a = &r->att[r->n_att++];
  *a = (attempt){.r = r, .rep = rep};
  a->task.run = attempt_run;
  pthread_mutex_lock(&r->mu);
  r->refs++;
  r->running++;
  r->queued++;
  r->tried++;
  pthread_mutex_unlock(&r->mu);
  m3__task_post(&r->cl->workers, &a->task);
}

/* Run one of r's attempts that no worker has started on this thread. */
static void race_steal(race *r) {
  for (uint32_t i = 0; i < r->n_att; i++) {
    if (m3__task_take(&r->cl->workers, &r->att[i].task)) {
      attempt_run(&r->att[i].task);
      return;
    }
  }
}

static race *race_new(job *j, int is_fetch) {
  call *ca = j->call;
  race *r = calloc(1, sizeof *r);
  if (r == NULL) return NULL;
  r->cl = ca->cl;
  r->shard = j->shard;
  r->is_fetch = is_fetch;
  r->deadline = ca->deadline;
  r->refs = 1;
  r->att = calloc(ca->cl->shards[j->shard].n, sizeof *r->att);
  pthread_mutex_init(&r->mu, NULL);
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(&r->cv, &a);
  pthread_condattr_destroy(&a);
  if (r->att == NULL) {
    race_unref(r);
    return NULL;
  }
  return r;
}

int m3__queries_copy(const m3_client_query *q, size_t nq, m3_client_query **qo, float **vo,
                     char **to) {
  size_t nv = 0, nt = 0;
  for (size_t i = 0; i < nq; i++) {
    if (q[i].vector) nv += q[i].dim;
    else if (q[i].text) nt += strlen(q[i].text) + 1;
  }
  *qo = calloc(nq, sizeof **qo);
  *vo = malloc((nv ? nv : 1) * sizeof(float));
  *to = malloc(nt ? nt : 1);
  if (*qo == NULL || *vo == NULL || *to == NULL) return M3_ENOMEM;
  float *v = *vo;
  char *t = *to;
  for (size_t i = 0; i < nq; i++) {
    (*qo)[i] = q[i];
    if (q[i].vector) {
      memcpy(v, q[i].vector, q[i].dim * sizeof *v);
      (*qo)[i].vector = v;
      v += q[i].dim;
    } else if (q[i].text) {
      size_t l = strlen(q[i].text) + 1;
      memcpy(t, q[i].text, l);
      (*qo)[i].text = t;
      t += l;
    }
  }
  return 0;
}

/* Copy the call's queries into r (the race may outlive the call). */
static int race_copy_queries(race *r, const call *ca) {
  r->nq = ca->nq;
  r->k = ca->k;
  return m3__queries_copy(ca->q, ca->nq, &r->q, &r->vecs, &r->texts);
}

/*
 * Wait for r: launch the first attempt, hedge to the next replica after
 * hedge_delay_ms (or at once when every running attempt failed), until one
 * wins. Returns the winner's result (the caller frees it), or NULL with
 * j->rc set. An attempt that no worker picked up (the pool is busy) is run
 * here: that attempt is then not hedged, but nothing waits on a queue.
 */
static void *race_run(job *j, race *r) {
  call *ca = j->call;
  m3_cluster *cl = ca->cl;
  uint32_t order[256], n = m3__replica_order(cl, j->shard, order), next = 0;
  m3__shard *sh = &cl->shards[j->shard];
  race_launch(r, &sh->r[order[next++]]);
  int64_t hedge_at = m3__now_ms() + cl->o.hedge_delay_ms;
  void *win = NULL;
  pthread_mutex_lock(&r->mu);
  for (;;) {
    if (r->done) {
      win = r->win;
      r->win = NULL;
      j->rc = 0;
      break;
    }
    if (r->fatal) {
      job_err(j, r->fatal, r->fatal_grpc, "shard %u: %s", j->shard, r->errs);
      break;
    }
    int stop = call_stopped(ca);
    if (stop) {
      job_stopped(j, stop);
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
    /* Queued with no idle worker: every worker is busy, and the attempt
     * could wait behind other tasks for as long as they take. (An idle
     * worker with tasks queued is one signalled and about to take them.) */
    if (r->queued > 0 && m3__workers_idle(&cl->workers) == 0) {
      pthread_mutex_unlock(&r->mu);
      race_steal(r);
      pthread_mutex_lock(&r->mu);
      continue;
    }
    int64_t until = ca->deadline;
    if (next < n && hedge_at < until) until = hedge_at;
    if (r->queued > 0 && now + 1 < until) until = now + 1;
    if (ca->cancel && now + 20 < until) until = now + 20; /* notice a cancel */
    struct timespec ts;
    abs_time(until, &ts);
    pthread_cond_timedwait(&r->cv, &r->mu, &ts);
  }
  /* Losers still queued skip their work; running ones are interrupted, so
   * that they free their worker now rather than after try_timeout_ms (a
   * slow replica would otherwise hold the pool). Their connections are
   * closed; the replica is not counted as failed but as slow (one still
   * connecting cannot be interrupted: it ends within connect_timeout_ms). */
  r->abandoned = 1;
  m3__replica *slow[256];
  uint32_t n_slow = 0;
  for (uint32_t i = 0; i < r->n_att; i++) {
    attempt *a = &r->att[i];
    if (win && a->state == 1) slow[n_slow++] = a->rep; /* lost, still working */
    if (a->pc == NULL) continue;
    a->interrupted = 1;
    m3__client_interrupt(a->pc->c);
  }
  pthread_mutex_unlock(&r->mu);
  for (uint32_t i = 0; i < n_slow; i++) m3__replica_slow(cl, slow[i]);
  return win;
}

static void search_hedged(job *j) {
  race *r = race_new(j, 0);
  if (r == NULL || race_copy_queries(r, j->call) != 0) {
    if (r) race_unref(r);
    job_err(j, M3_ENOMEM, ST_RESOURCE_EXHAUSTED, "shard %u: out of memory", j->shard);
    return;
  }
  uint64_t *ids = race_run(j, r);
  if (ids) {
    call *ca = j->call;
    size_t nn = ca->nq * ca->k;
    float *scores = (float *)(ids + nn);
    uint32_t *counts = (uint32_t *)(scores + nn);
    memcpy(j->ids, ids, nn * sizeof *j->ids);
    memcpy(j->scores, scores, nn * sizeof *j->scores);
    memcpy(j->counts, counts, ca->nq * sizeof *j->counts);
    free(ids);
  }
  race_unref(r);
}

/* ---- failover driver ------------------------------------------------ */

typedef int (*op_fn)(call *ca, job *j, m3_client *c);

static int search_op(call *ca, job *j, m3_client *c) {
  return search_batches(c, ca->q, ca->nq, ca->k, j->ids, j->scores, j->counts);
}

/* Hand the items still owed, each of which failed alone on every replica
 * asked, to the callback with their last failure. */
static void deliver_fails(job *j) {
  call *ca = j->call;
  for (size_t u = 0; u < j->nu; u++) {
    if (j->done[u]) continue;
    item_fail *f = &j->fails[u];
    m3_client_memory m = {.chunk_id = j->uids[u], .status = f->status,
                          .grpc_status = f->grpc, .error = f->err, .text = ""};
    pthread_mutex_lock(&ca->mu);
    int rc = call_stopped(ca);
    for (size_t s = j->ustart[u]; s < j->ustart[u + 1] && !rc; s++) {
      m.query = j->slots[s].q;
      m.rank = j->slots[s].r;
      m.score = j->slots[s].score;
      if ((rc = ca->fn(ca->ud, &m)) != 0) rc = call_stop(ca, rc);
    }
    pthread_mutex_unlock(&ca->mu);
    if (rc) {
      job_stopped(j, rc);
      return;
    }
    j->done[u] = 1;
    j->n_done++;
  }
}

/* Run op on one replica of j's shard after another until one succeeds (for
 * Fetch: until every id was delivered), a request error ends it, or the
 * deadline passes. answered: a replica already answered this Fetch (the
 * winner of a race), whose failed items are what is left. Sets j->rc,
 * j->grpc and j->msg. */
static void run_shard(job *j, op_fn op, int is_fetch, int answered) {
  call *ca = j->call;
  m3_cluster *cl = ca->cl;
  m3__shard *sh = &cl->shards[j->shard];
  uint32_t order[256], n = m3__replica_order(cl, j->shard, order);
  char errs[700] = "";
  size_t elen = 0;
  int refused = 0;
  j->rc = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (is_fetch && j->n_done == j->nu) return;
    int stop = call_stopped(ca);
    if (stop) {
      job_stopped(j, stop);
      return;
    }
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
      if ((stop = call_stopped(ca)) != 0) {
        m3__conn_put(cl, rep, pc, 1);
        job_stopped(j, stop);
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
    for (size_t u = 0; u < j->nu; u++)
      if (!j->done[u] && j->fails[u].status == 0) goto unavailable;
    deliver_fails(j);
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

static void search_job(job *j) {
  if (j->call->cl->o.hedge_delay_ms > 0 && j->call->cl->shards[j->shard].n > 1)
    search_hedged(j);
  else
    run_shard(j, search_op, 0, 0);
}

/* ---- fetch ---------------------------------------------------------- */

/* One memory of this shard's Fetch (m->query: index in the current batch):
 * to the callback once per slot of its id, unless it failed alone here. */
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
    return call_stopped(ca);
  }
  if (m->status != 0 && m->status != M3_ENOTFOUND) {
    /* Bad bytes on this replica: another one may have good ones. */
    item_fail *f = &j->fails[u];
    f->status = m->status;
    f->grpc = m->grpc_status;
    snprintf(f->err, sizeof f->err, "%s", m->error);
    return call_stopped(ca);
  }
  j->done[u] = 1;
  j->n_done++;
  pthread_mutex_lock(&ca->mu);
  int rc = call_stopped(ca);
  for (size_t s = j->ustart[u]; s < j->ustart[u + 1] && !rc; s++) {
    m3_client_memory m2 = *m;
    m2.query = j->slots[s].q;
    m2.rank = j->slots[s].r;
    m2.score = j->slots[s].score;
    if ((rc = ca->fn(ca->ud, &m2)) != 0) rc = call_stop(ca, rc);
  }
  pthread_mutex_unlock(&ca->mu);
  return rc;
}

/* The ids not delivered yet into j->batch (their u in batch_u); returns
 * how many. */
static size_t fetch_pending(job *j) {
  size_t np = 0;
  for (size_t u = 0; u < j->nu; u++) {
    if (j->done[u]) continue;
    j->batch[np] = j->uids[u];
    j->batch_u[np++] = u;
  }
  j->batch_base = 0;
  return np;
}

static int fetch_op(call *ca, job *j, m3_client *c) {
  size_t np = fetch_pending(j);
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

/* Hedged Fetch: race the shard's pending ids over its replicas, hand the
 * winner's buffered memories to the callback, then ask the replicas again
 * (unhedged) for items that failed alone on the winner. */
static void fetch_hedged(job *j) {
  size_t np = fetch_pending(j);
  race *r = race_new(j, 1);
  if (r) r->ids = malloc(np * sizeof *r->ids);
  if (r == NULL || r->ids == NULL) {
    if (r) race_unref(r);
    job_err(j, M3_ENOMEM, ST_RESOURCE_EXHAUSTED, "shard %u: out of memory", j->shard);
    return;
  }
  memcpy(r->ids, j->batch, np * sizeof *r->ids);
  r->n_ids = np;
  r->with_text = j->call->with_text;
  fbuf *b = race_run(j, r);
  race_unref(r);
  if (b == NULL) return;
  int stop = 0;
  for (size_t i = 0; i < b->n && !stop; i++) stop = on_item(j, &b->v[i].m);
  fbuf_free(b);
  if (stop) job_stopped(j, stop);
  else if (j->n_done < j->nu) run_shard(j, fetch_op, 1, 1);
}

static void fetch_job(job *j) {
  if (j->call->cl->o.hedge_delay_ms > 0 && j->call->cl->shards[j->shard].n > 1)
    fetch_hedged(j);
  else
    run_shard(j, fetch_op, 1, 0);
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

static void call_begin(call *ca, m3_cluster *cl, const m3__req *rq) {
  memset(ca, 0, sizeof *ca);
  ca->cl = cl;
  ca->deadline = rq->deadline;
  ca->q = rq->q;
  ca->nq = rq->nq;
  ca->k = rq->k;
  ca->with_text = rq->with_text;
  ca->fn = rq->fn;
  ca->ud = rq->ud;
  ca->cancel = rq->cancel;
  pthread_mutex_init(&ca->mu, NULL);
  pthread_mutex_init(&ca->wmu, NULL);
  pthread_cond_init(&ca->wcv, NULL);
  atomic_init(&ca->stop_rc, 0);
  atomic_init(&ca->cancelled, 0);
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

/* End the call into *out: the first failed shard (lowest number) decides;
 * a callback stop or a cancel wins over everything. */
static void call_end(call *ca, int rc, m3__outcome *out) {
  int stop = atomic_load(&ca->stop_rc);
  out->shard = -1;
  out->msg[0] = '\0';
  out->status = ST_OK;
  if (stop) {
    rc = stop;
    out->status = ST_CANCELLED;
    if (atomic_load(&ca->cancelled))
      snprintf(out->msg, sizeof out->msg, "cancelled (m3_cluster_op_cancel or m3_cluster_close)");
    else
      snprintf(out->msg, sizeof out->msg, "stopped by the callback (%d)", stop);
  } else if (rc == 0 && ca->jobs) {
    for (uint32_t s = 0; s < ca->cl->n_shards; s++) {
      job *j = &ca->jobs[s];
      if (j->rc == 0) continue;
      rc = j->rc;
      out->status = j->grpc;
      out->shard = (int)s;
      snprintf(out->msg, sizeof out->msg, "%s", j->msg);
      break;
    }
  } else if (rc) {
    out->status = rc == M3_EBUSY ? ST_UNAVAILABLE : m3_status_from_err(rc);
    snprintf(out->msg, sizeof out->msg, "%s", m3_errmsg());
  }
  out->rc = rc;
  if (rc && !stop) m3__cluster_count(ca->cl, &ca->cl->ctr.failed, 1);
  jobs_free(ca);
  pthread_mutex_destroy(&ca->mu);
  pthread_mutex_destroy(&ca->wmu);
  pthread_cond_destroy(&ca->wcv);
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
  }
  run_jobs(ca, search_job, 0);
  for (uint32_t s = 0; s < ns; s++) {
    ca->jobs[s].ids = NULL;
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

static int do_search(call *ca, const m3__req *rq) {
  int rc = check_queries(rq->q, rq->nq, rq->k);
  if (rc == 0) rc = scatter_search(ca, rq->ids_out, rq->scores_out, rq->counts_out);
  return rc;
}

static int do_retrieve(call *ca) {
  m3_cluster *cl = ca->cl;
  int rc = check_queries(ca->q, ca->nq, ca->k);
  if (rc) return rc;
  size_t n = ca->nq * ca->k, k = ca->k;
  uint64_t *ids = malloc(n * (sizeof *ids + sizeof(float)) + ca->nq * sizeof(uint32_t));
  slot *slots = malloc(n * sizeof *slots);
  if (ids == NULL || slots == NULL) {
    rc = m3__seterr(M3_ENOMEM, "out of memory for %zu results", n);
    goto out;
  }
  float *scores = (float *)(ids + n);
  uint32_t *counts = (uint32_t *)(scores + n);
  if ((rc = scatter_search(ca, ids, scores, counts)) != 0) goto out;
  for (uint32_t s = 0; s < cl->n_shards; s++)
    if (ca->jobs[s].rc) goto out; /* a shard failed: nothing was delivered */
  if (call_stopped(ca)) goto out; /* cancelled during the search */
  size_t ns = 0;
  for (size_t q = 0; q < ca->nq; q++)
    for (uint32_t r = 0; r < counts[q]; r++)
      slots[ns++] = (slot){ids[q * k + r], (uint32_t)q, r, scores[q * k + r]};
  jobs_free(ca);
  if ((rc = call_jobs(ca)) != 0) goto out;
  if (ns == 0) goto out;
  if ((rc = plan_fetch(ca, slots, ns)) != 0) goto out;
  run_jobs(ca, fetch_job, 1);
out:
  free(ids);
  free(slots);
  return rc;
}

static int do_fetch(call *ca, const uint64_t *ids, size_t n) {
  if (ids == NULL || n == 0) return m3__seterr(M3_EINVAL, "no ids");
  slot *slots = malloc(n * sizeof *slots);
  int rc = slots ? 0 : m3__seterr(M3_ENOMEM, "out of memory for %zu ids", n);
  if (rc == 0) rc = m3__cluster_ensure_ref(ca->cl, ca->deadline);
  if (rc == 0) rc = call_jobs(ca);
  if (rc == 0) {
    for (size_t i = 0; i < n; i++) slots[i] = (slot){ids[i], (uint32_t)i, 0, 0};
    rc = plan_fetch(ca, slots, n);
  }
  if (rc == 0) run_jobs(ca, fetch_job, 1);
  free(slots);
  return rc;
}

void m3__cluster_run(m3_cluster *cl, const m3__req *rq, m3__outcome *out) {
  call ca;
  call_begin(&ca, cl, rq);
  int rc;
  if (call_stopped(&ca)) rc = 0; /* cancelled before it started */
  else if (rq->kind == M3__REQ_SEARCH) rc = do_search(&ca, rq);
  else if (rq->kind == M3__REQ_RETRIEVE) rc = do_retrieve(&ca);
  else rc = do_fetch(&ca, rq->ids, rq->n);
  call_end(&ca, rc, out);
}

/* A sync call: run it here, leave its status for m3_cluster_last_status
 * and m3_errmsg. */
static int run_sync(m3_cluster *cl, m3__req *rq) {
  rq->deadline = m3__now_ms() + cl->o.call_timeout_ms;
  m3__outcome out;
  m3__cluster_run(cl, rq, &out);
  last.code = out.status;
  last.shard = out.shard;
  snprintf(last.msg, sizeof last.msg, "%s", out.msg);
  if (out.rc) m3__seterr(out.rc, "%s", out.msg);
  return out.rc;
}

int m3_cluster_search(m3_cluster *cl, const m3_client_query *queries, size_t nq, uint32_t k,
                      uint64_t *ids, float *scores, uint32_t *counts) {
  m3__req rq = {.kind = M3__REQ_SEARCH, .q = queries, .nq = nq, .k = k, .ids_out = ids,
                .scores_out = scores, .counts_out = counts};
  return run_sync(cl, &rq);
}

int m3_cluster_retrieve(m3_cluster *cl, const m3_client_query *queries, size_t nq, uint32_t k,
                        int with_text, m3_client_memory_fn fn, void *ud) {
  m3__req rq = {.kind = M3__REQ_RETRIEVE, .q = queries, .nq = nq, .k = k,
                .with_text = with_text, .fn = fn, .ud = ud};
  return run_sync(cl, &rq);
}

int m3_cluster_fetch(m3_cluster *cl, const uint64_t *ids, size_t n, int with_text,
                     m3_client_memory_fn fn, void *ud) {
  m3__req rq = {.kind = M3__REQ_FETCH, .ids = ids, .n = n, .with_text = with_text, .fn = fn,
                .ud = ud};
  return run_sync(cl, &rq);
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
