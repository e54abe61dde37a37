/*
 * Inside the cluster part of libm3client. One module per concern, each
 * owning its part of struct m3_cluster and its lock; calls between the
 * files run one way, top to bottom (no file calls a file above it; results
 * come back up through return values and the op callbacks a module is
 * given, as uv_write_cb does):
 *
 *   cluster.c          open and close: starts and stops the modules below
 *   cluster_async.c    async ops, the completion queue, the eventfd
 *   cluster_call.c     the calls (search, retrieve, fetch: sync, and the
 *                      runner async ops use), info, check
 *   cluster_scatter.c  search fan-out over the shards and the top-k merge
 *   cluster_fetch.c    fetch planning, delivery, the Memory bound checks
 *   cluster_hedge.c    a race of attempts on several replicas of a shard
 *   cluster_shard.c    a call's per-shard jobs: call state, running them
 *                      on the pool, failover over a shard's replicas
 *   cluster_replica.c  replicas: connection pools, health, the reference
 *                      layout, the prober thread
 *   cluster_status.c   the per-thread error of the last call, counters
 *   cluster_workers.c  the worker pool        (leaves: call nothing above)
 *   cluster_copy.c     copies of memories and queries
 *   cluster_map.c      the cluster map
 *
 * Immutable after m3_cluster_open (read anywhere without a lock): cl->o,
 * cl->token, cl->client_name, cl->n_shards, the shards array and each
 * replica's addr, shard and idx.
 *
 * Lock order. A thread holding one of these may take only those below it;
 * the ones in the last group are leaves, never held together:
 *
 *   1. async.dispatch_mu  (cluster_async.c) one m3_cluster_dispatch at a
 *                         time; held while dispatched callbacks run
 *   2. call.mu            (cluster_shard.c) serialises one call's memory
 *                         callbacks; held while they run
 *   3. race.mu            (cluster_hedge.c) a race and its attempts
 *   4. leaves: async.mu (ops, event queue), replica.mu (one replica's pool
 *      and health; cluster_replica.c), reps.mu (reference layout, prober
 *      stop), stats.mu (counters; cluster_status.c), workers.mu (the task
 *      queue), call.wmu (a phase's jobs still running)
 *
 * User callbacks run under 1 or 2 (memory callbacks) or under 1 or no lock
 * (done callbacks), so they may take leaves only: submit or cancel async
 * ops, read counters and replica state; never close the cluster.
 * No lock is held across network I/O, and none while a worker runs a task.
 */
#ifndef M3_CLUSTER_INT_H
#define M3_CLUSTER_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "m3/client.h"
#include "m3/cluster.h"
#include "m3/status.h" /* M3_STATUS_*: gRPC codes, the status table */

/* ---- time (inline: every module needs it, none should call another) -- */

static inline int64_t m3__now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ms (CLOCK_MONOTONIC) as a deadline for a cond made by m3__cond_init. */
static inline void m3__abs_time(int64_t ms, struct timespec *ts) {
  ts->tv_sec = (time_t)(ms / 1000);
  ts->tv_nsec = (long)(ms % 1000) * 1000000;
}

static inline void m3__cond_init(pthread_cond_t *cv) {
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(cv, &a);
  pthread_condattr_destroy(&a);
}

/* ---- the map (cluster_map.c) ---------------------------------------- */

struct m3_cluster_map {
  uint32_t n_shards;
  uint32_t *n_replicas; /* (n_shards) */
  char ***replicas;     /* (n_shards, n_replicas[s]) malloc'ed strings */
  char *token;          /* NULL when absent */
  char *tls_ca, *tls_cert, *tls_key, *tls_name; /* the "tls" object; NULL when absent */
  int has_fp;
  uint64_t fp;
};

/* ---- worker pool (cluster_workers.c) -------------------------------- */

/* A unit of work for the pool, embedded in its owner's struct. run gets the
 * task back (container_of); the pool never touches t after calling run. */
typedef struct m3__task {
  void (*run)(struct m3__task *t);
  struct m3__task *prev, *next; /* the queue, under m3__workers.mu */
  int queued;                   /* on the queue, not yet taken */
} m3__task;

typedef struct m3__workers {
  pthread_mutex_t mu;
  pthread_cond_t cv;   /* a task was posted, or stop */
  m3__task *head, *tail;
  unsigned n, idle;    /* threads; threads waiting for a task */
  int stop, inited;
  pthread_t *t;        /* (n) */
} m3__workers;

/* Start n threads. On failure the started ones are stopped by
 * m3__workers_stop (which m3_cluster_close calls). */
int m3__workers_start(m3__workers *w, unsigned n);
/* Let the threads run what is queued, then join them. */
void m3__workers_stop(m3__workers *w);
/* Queue t (FIFO); a worker will run it unless m3__task_take takes it back. */
void m3__task_post(m3__workers *w, m3__task *t);
/* Take t back if no worker has started it: returns 1 and the caller runs
 * it; 0 when a worker has it (t must still be valid memory). */
int m3__task_take(m3__workers *w, m3__task *t);
/* Threads now waiting for a task. */
unsigned m3__workers_idle(m3__workers *w);

/* ---- copies (cluster_copy.c) ---------------------------------------- */

/* One block holds the record header copy, data, text and error, so the
 * copy can move (arrays of them) and its pointers stay valid. */
typedef struct m3__memcopy {
  m3_client_memory m; /* every pointer into blk */
  void *blk;
} m3__memcopy;

/* Copy m into c (c->blk malloc'ed, freed by m3__memcopy_free). M3_ENOMEM. */
int m3__memcopy_make(m3__memcopy *c, const m3_client_memory *m);
void m3__memcopy_free(m3__memcopy *c);

/* Copy nq queries with their vectors and texts: *qo (nq) points into *vo
 * and *to; all three malloc'ed, freed by the caller (also on failure,
 * M3_ENOMEM). */
int m3__queries_copy(const m3_client_query *q, size_t nq, m3_client_query **qo, float **vo,
                     char **to);

/* ---- status: last error, counters (cluster_status.c) ---------------- */

typedef struct m3__stats {
  pthread_mutex_t mu; /* guards c */
  m3_cluster_counters c;
} m3__stats;

void m3__stats_init(m3__stats *s);
void m3__stats_destroy(m3__stats *s);
/* Add n to the counter at offset off of m3_cluster_counters (M3__COUNT). */
void m3__stats_add(m3_cluster *cl, size_t off, uint64_t n);
#define M3__COUNT(cl, field, n) \
  m3__stats_add((cl), offsetof(m3_cluster_counters, field), (uint64_t)(n))

/* Leave e as this thread's m3_cluster_last_error (and its message as
 * m3_errmsg when e->rc is non-zero). */
void m3__cluster_error_set(const m3_cluster_error *e);

/* Fill e for a failure that no shard's replicas decided (bad arguments,
 * out of memory, no server answering for the reference layout): rc, the
 * gRPC status for it (m3__cluster_status), m3_errmsg() as the text. */
void m3__cluster_error_from_errmsg(m3_cluster_error *e, int rc);

/* The gRPC status a cluster call reports for m3 code rc. M3_EBUSY is
 * UNAVAILABLE here (no replica could serve), where the single-connection
 * table says otherwise; the one place that knows, until the status table
 * (issue 10) says it. */
int m3__cluster_status(int rc);

/* ---- replicas (cluster_replica.c) ----------------------------------- */

/* One pooled connection and how much of its byte counter was accounted. */
typedef struct m3__pconn {
  m3_client *c;
  uint64_t read_seen;
} m3__pconn;

typedef struct m3__replica {
  char addr[256];      /* immutable after open, as shard and idx */
  uint32_t shard, idx;
  pthread_mutex_t mu;  /* guards everything below */
  pthread_cond_t cv;   /* a connection came back or a slot freed */
  m3__pconn **idle;    /* (max_conns) idle connections, LIFO */
  unsigned n_idle;
  unsigned n_open;     /* idle + borrowed + being connected */
  int down;            /* backed off after a failure */
  int refused;         /* last failure was a layout/fingerprint refusal */
  unsigned failures;   /* consecutive */
  int64_t down_until;  /* ms, CLOCK_MONOTONIC */
  unsigned slow_streak; /* hedge races lost while still working, in a row */
  int64_t slow_until;  /* ordered after the others until then (ms) */
  uint64_t calls, errors;
  char last_err[256];
} m3__replica;

typedef struct m3__shard {
  uint32_t n;
  m3__replica *r; /* (n) */
  atomic_uint rr; /* rotates the first replica tried among the healthy */
} m3__shard;

/* The replicas' shared state: the reference layout and the prober. */
typedef struct m3__reps {
  pthread_mutex_t mu; /* guards everything below */
  pthread_cond_t cv;  /* wakes the prober (stop) */
  int have_ref;
  m3_client_info ref; /* the reference server's Hello */
  char ref_from[300]; /* where the reference layout came from */
  int want_fp_set;
  uint64_t want_fp;
  int stop;
  int prober_on;
  pthread_t prober;
} m3__reps;

/* Make the shards and replicas of map, and the fingerprint the cluster
 * wants (options, else the map). M3_ENOMEM; m3__replicas_free undoes a
 * partial init. */
int m3__replicas_init(m3_cluster *cl, const m3_cluster_map *map);
/* Start the prober (probe_interval_ms > 0). M3_EIO. */
int m3__replicas_start_prober(m3_cluster *cl);
/* Stop the prober (its thread joined). */
void m3__replicas_stop_prober(m3_cluster *cl);
/* Close every idle connection and free the replicas (after the workers
 * stopped: no connection is borrowed any more). */
void m3__replicas_free(m3_cluster *cl);

static inline m3__replica *m3__replica_at(m3_cluster *cl, uint32_t shard, uint32_t idx);
static inline uint32_t m3__shard_size(const m3_cluster *cl, uint32_t shard);

/*
 * Borrow a connection to rep, connecting (Hello + layout check) when no idle
 * one exists and the replica has fewer than max_conns_per_replica; waits for
 * one otherwise, until deadline (ms). *reused says whether it came from the
 * pool (a pooled connection may have died since). On failure m3_errmsg()
 * says why, without the replica's name (the caller has rep);
 * M3_EFINGERPRINT marks a layout refusal.
 */
int m3__conn_get(m3_cluster *cl, m3__replica *rep, int64_t deadline, m3__pconn **out,
                 int *reused);

/* Return a borrowed connection: kept idle when keep and still usable,
 * otherwise closed. */
void m3__conn_put(m3_cluster *cl, m3__replica *rep, m3__pconn *pc, int keep);

/* Close rep's idle connections (after one of them turned out dead). */
void m3__replica_drop_idle(m3_cluster *cl, m3__replica *rep);

/* A call on rep failed (err: why, for status) / succeeded. */
void m3__replica_fail(m3_cluster *cl, m3__replica *rep, int refused, const char *err);
void m3__replica_ok(m3_cluster *cl, m3__replica *rep);

/* rep lost a hedge race while its attempt was still working (connecting
 * or waiting for the answer): order it after the others for a backoff
 * (backoff_min_ms doubling per race lost in a row, up to backoff_max_ms),
 * so that a replica gone slow does not take every first attempt and pile
 * up attempts stuck on it. Not a failure: it stays up. m3__replica_ok ends
 * it. */
void m3__replica_slow(m3_cluster *cl, m3__replica *rep);

/* The order to try shard's replicas in: healthy ones first (rotating),
 * then slow ones, then backed-off ones, soonest back first. Returns how
 * many (= n). */
uint32_t m3__replica_order(m3_cluster *cl, uint32_t shard, uint32_t *order);

/* Make sure a reference layout exists: connect in map order until a server
 * answers. 0, or M3_EBUSY / M3_EFINGERPRINT with a message naming each
 * replica tried. */
int m3__cluster_ensure_ref(m3_cluster *cl, int64_t deadline);

/* The reference layout into *out (after m3__cluster_ensure_ref). */
void m3__cluster_ref(m3_cluster *cl, m3_client_info *out);

/* ---- async (cluster_async.c) ---------------------------------------- */

typedef struct m3__event m3__event; /* a completion waiting for dispatch */

typedef struct m3__async {
  pthread_mutex_t mu;       /* guards the fields below */
  pthread_cond_t cv;        /* an op finished on the workers */
  int closing;              /* m3_cluster_close started: no new ops */
  m3_cluster_op *live;      /* ops whose done callback has not run */
  unsigned running;         /* ops not yet finished on the workers */
  m3__event *ev_head, *ev_tail; /* dispatch mode: waiting completions */
  int efd;                  /* dispatch mode: eventfd, else -1 */
  pthread_mutex_t dispatch_mu; /* one m3_cluster_dispatch at a time */
} m3__async;

/* Set up (the eventfd in dispatch mode). M3_EIO with a message. */
int m3__async_init(m3_cluster *cl);
/* Stop and free every async op: cancel them, wait for the workers to
 * finish them, run the done callbacks still owed. */
void m3__async_close(m3_cluster *cl);
/* Free what m3__async_init made (after m3__async_close). */
void m3__async_free(m3_cluster *cl);

/* ---- the handle ----------------------------------------------------- */

struct m3_cluster {
  m3_cluster_options o;
  char *token, *client_name;
  char *tls_ca, *tls_cert, *tls_key, *tls_name; /* options', else the map's; NULL: plain */
  uint32_t n_shards;
  m3__shard *shards; /* (n_shards) cluster_replica.c */
  m3__reps reps;     /* cluster_replica.c */
  m3__stats stats;   /* cluster_status.c */
  m3__workers workers; /* cluster_workers.c */
  m3__async async;   /* cluster_async.c */
  /* m3_cluster_set_search_params: nprobe in the low 32 bits, ef_search in
   * the high ones, read once as each call starts (cluster_call.c). */
  atomic_uint_least64_t search_params;
};

static inline m3__replica *m3__replica_at(m3_cluster *cl, uint32_t shard, uint32_t idx) {
  return &cl->shards[shard].r[idx];
}

static inline uint32_t m3__shard_size(const m3_cluster *cl, uint32_t shard) {
  return cl->shards[shard].n;
}

/* ---- calls (cluster_call.c) ----------------------------------------- */

/* One call's request, sync or async (m3__cluster_run). */
enum { M3__REQ_SEARCH, M3__REQ_RETRIEVE, M3__REQ_FETCH };

typedef struct m3__req {
  int kind;
  const m3_client_query *q; /* search, retrieve: (nq) */
  size_t nq;
  uint32_t k;
  const uint64_t *ids;      /* fetch: (n) */
  size_t n;
  int with_text;
  m3_client_memory_fn fn;   /* retrieve, fetch */
  m3_client_land_fn land;   /* retrieve, fetch: may be NULL */
  void *ud;
  uint64_t *ids_out;        /* search: (nq, k) */
  float *scores_out;        /* search: (nq, k) */
  uint32_t *counts_out;     /* search: (nq) */
  int64_t deadline;         /* ms, CLOCK_MONOTONIC */
  const atomic_int *cancel; /* async: stops the call once non-zero */
  m3_search_params params;  /* search, retrieve: sent with every shard's Search */
} m3__req;

/* The cluster's search params now (m3_cluster_set_search_params). */
m3_search_params m3__cluster_search_params(m3_cluster *cl);

/* Run one call on this thread (its shard jobs on the pool as well); *out
 * gets how it ended. */
void m3__cluster_run(m3_cluster *cl, const m3__req *rq, m3_cluster_error *out);

/* ---- a call's per-shard jobs (cluster_shard.c) ---------------------- */

typedef struct m3__slot {
  uint64_t id;
  uint32_t q, r; /* query and global rank (Fetch: index in ids, 0) */
  float score;
} m3__slot;

typedef struct m3__item_fail {
  int status, grpc;
  char err[200];
} m3__item_fail;

typedef struct m3__call m3__call;

/* One shard's part of a call phase. Written by the thread running it;
 * read by the call after run_jobs returned. */
typedef struct m3__job {
  m3__task task;      /* first member: run on the pool (m3__jobs_run) */
  void (*fn)(struct m3__job *j);
  m3__call *call;
  uint32_t shard;
  /* search phase (cluster_scatter.c): this shard's top-k, (nq, k), (nq) */
  uint64_t *ids;
  float *scores;
  uint32_t *counts;
  /* fetch phase (cluster_fetch.c): the slots this shard owns, sorted by
   * id; distinct ids uids[u] fill slots [ustart[u], ustart[u + 1]) */
  m3__slot *slots;
  size_t n_slots;
  uint64_t *uids;
  size_t *ustart;
  size_t nu, n_done;
  uint8_t *done;         /* (nu) delivered */
  m3__item_fail *fails;  /* (nu) last item-level failure, status 0 = none */
  uint64_t *batch;       /* (nu) ids of the current attempt */
  size_t *batch_u;       /* (nu) their u */
  size_t batch_base, batch_n; /* the current Fetch: batch[base, base + n) */
  char peer_err[200];    /* why the current replica broke the protocol */
  /* result */
  int rc, grpc;
  int replica;           /* the replica whose error decided rc, or -1 */
  char msg[900];
} m3__job;

struct m3__call {
  m3_cluster *cl;
  int64_t deadline;
  const m3_client_query *q;
  size_t nq;
  uint32_t k;
  m3_search_params params;
  int with_text;
  m3_client_memory_fn fn;
  m3_client_land_fn land;   /* may be NULL (called with ud, outside mu) */
  void *ud;
  pthread_mutex_t mu;       /* serialises fn */
  atomic_int stop_rc;       /* non-zero once fn stopped the call (or a cancel) */
  atomic_int cancelled;     /* stop_rc came from *cancel */
  const atomic_int *cancel; /* async: the op's cancel flag; NULL for sync */
  m3__job *jobs;            /* (n_shards) */
  pthread_mutex_t wmu;      /* m3__jobs_run: jobs still running */
  pthread_cond_t wcv;
  unsigned pending;
};

/* Start / end a call's state (ca's locks; counters.calls). */
void m3__call_init(m3__call *ca, m3_cluster *cl, const m3__req *rq);
void m3__call_destroy(m3__call *ca);
/* Make the call's jobs, one per shard (M3_ENOMEM); free them (and what
 * the phases hung on them). */
int m3__jobs_make(m3__call *ca);
void m3__jobs_free(m3__call *ca);

/* Stop the call with rc unless it already stopped; returns the rc it
 * stopped with. */
int m3__call_stop(m3__call *ca, int rc);
/* Non-zero once the call must end: the callback stopped it, or (async) it
 * was cancelled, which stops it with M3_ECANCELED (status CANCELLED). */
int m3__call_stopped(m3__call *ca);

/* j's result: rc, gRPC status, the replica (index, -1) and the message. */
void m3__job_err(m3__job *j, int rc, int grpc, int replica, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* j ended because the call stopped (stop: m3__call_stopped's value). */
void m3__job_stopped(m3__job *j, int stop);

/* Errors a server gives every replica alike: failing over cannot help
 * (0); others are the replica's (1). The status table's retryable column;
 * a code outside it (or none) is the replica's. */
int m3__retryable(int grpc);

/* Append "addr: why" to a shard's list of replica errors in buf (cap). */
void m3__errs_add(char *buf, size_t cap, size_t *len, const char *addr, const char *why);

/* Run fn on every job (skip_empty: only those with ids to fetch): all but
 * one go to the pool, the calling thread runs that one, then takes back
 * and runs whichever the pool has not started, then waits for the rest. */
void m3__jobs_run(m3__call *ca, void (*fn)(m3__job *), int skip_empty);

/* One request of a job on one connection: 0, or an m3 code. A peer that
 * broke the protocol is reported by returning M3_EBADFORMAT with the
 * reason in j->peer_err. */
typedef int (*m3__shard_op)(m3__job *j, m3_client *c);

/* Fetch only: hand the items still owed, each of which failed alone on
 * every replica asked, to the callback with their last failure. */
typedef void (*m3__shard_fails_fn)(m3__job *j);

/*
 * Run op on one replica of j's shard after another until one succeeds (for
 * Fetch, fails not NULL: until every id was delivered; items that failed
 * alone on every replica go to fails), a request error ends it, or the
 * deadline passes. answered: a replica already answered this Fetch (the
 * winner of a race), whose failed items are what is left. Sets j's result.
 */
void m3__shard_run(m3__job *j, m3__shard_op op, m3__shard_fails_fn fails, int answered);

/* ---- hedged races (cluster_hedge.c) --------------------------------- */

typedef struct m3__race m3__race;

/* What a race runs: one attempt's request on connection c into a fresh
 * result *out (0), an m3 code, 1 when it stopped because the race was
 * over (m3__race_over), or M3_EBADFORMAT with the reason in why (cap 200)
 * when the replica broke the protocol. free_res frees a result; free_arg
 * the request (when the race, which may outlive its call, is freed). */
typedef struct m3__race_ops {
  int (*attempt)(m3__race *r, void *arg, m3_client *c, void **out, char *why);
  void (*free_res)(void *res);
  void (*free_arg)(void *arg);
} m3__race_ops;

/*
 * Race j's shard: launch the first attempt, hedge to the next replica
 * after hedge_delay_ms (or at once when every running attempt failed),
 * until one wins. arg (owned by the race from here on, also on failure)
 * is the request ops->attempt gets. Returns the winner's result (the
 * caller frees it with ops->free_res), or NULL with j's result set.
 */
void *m3__race_run(m3__job *j, const m3__race_ops *ops, void *arg);

/* The race was decided or given up: attempts stop working for it. */
int m3__race_over(m3__race *r);

/* ---- phases (cluster_scatter.c, cluster_fetch.c) -------------------- */

/* The search phase: every shard's top-k, merged into ids/scores/counts
 * (nq, k), (nq). 0 also when a shard failed (its job holds why); an m3
 * code when the phase could not run. */
int m3__scatter_search(m3__call *ca, uint64_t *ids, float *scores, uint32_t *counts);

/* The fetch phase: give each job its slots (n, grouped here by owning
 * shard), then fetch them (jobs that own none are skipped). M3_ENOMEM. */
int m3__fetch_run(m3__call *ca, m3__slot *slots, size_t n);

#endif /* M3_CLUSTER_INT_H */
