/*
 * Inside the cluster part of libm3client: the parsed map (cluster_map.c),
 * the replicas with their connection pools and health (cluster_pool.c), the
 * worker pool (cluster_workers.c), the calls that scatter over shards and
 * merge (cluster.c), and async operations with their completion modes
 * (cluster_async.c).
 */
#ifndef M3_CLUSTER_INT_H
#define M3_CLUSTER_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "m3/client.h"
#include "m3/cluster.h"

struct m3_cluster_map {
  uint32_t n_shards;
  uint32_t *n_replicas; /* (n_shards) */
  char ***replicas;     /* (n_shards, n_replicas[s]) malloc'ed strings */
  char *token;          /* NULL when absent */
  int has_fp;
  uint64_t fp;
};

/* One pooled connection and how much of its byte counter was accounted. */
typedef struct m3__pconn {
  m3_client *c;
  uint64_t read_seen;
} m3__pconn;

typedef struct m3__replica {
  char addr[256];
  uint32_t shard, idx;
  pthread_mutex_t mu;
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

/* ---- a memory copied out of a receive buffer ------------------------ */

/* One block holds the record header copy, data, text and error, so the
 * copy can move (arrays of them) and its pointers stay valid. */
typedef struct m3__memcopy {
  m3_client_memory m; /* every pointer into blk */
  void *blk;
} m3__memcopy;

int m3__memcopy_make(m3__memcopy *c, const m3_client_memory *m);
void m3__memcopy_free(m3__memcopy *c);

/* Copy nq queries with their vectors and texts: *qo (nq) points into *vo
 * and *to; all three malloc'ed, freed by the caller (also on failure,
 * M3_ENOMEM). */
int m3__queries_copy(const m3_client_query *q, size_t nq, m3_client_query **qo, float **vo,
                     char **to);

/* ---- async operations (cluster_async.c) ----------------------------- */

typedef struct m3__event m3__event; /* a completion waiting for dispatch */

struct m3_cluster {
  m3_cluster_options o;
  char *token, *client_name;
  uint32_t n_shards;
  m3__shard *shards;

  pthread_mutex_t mu; /* guards everything below */
  pthread_cond_t cv;  /* prober wakeup; detached attempts finishing */
  int have_ref;
  m3_client_info ref; /* the reference server's Hello */
  char ref_from[300]; /* where the reference layout came from */
  int want_fp_set;
  uint64_t want_fp;
  m3_cluster_counters ctr;
  int stop;
  int prober_on;
  pthread_t prober;

  m3__workers workers;

  /* async operations */
  pthread_mutex_t amu;      /* guards the fields below */
  pthread_cond_t acv;       /* an op finished on the workers */
  int closing;              /* m3_cluster_close started: no new ops */
  m3_cluster_op *live;      /* ops whose done callback has not run */
  unsigned running;         /* ops not yet finished on the workers */
  m3__event *ev_head, *ev_tail; /* dispatch mode: waiting completions */
  int efd;                  /* dispatch mode: eventfd, else -1 */
  pthread_mutex_t dispatch_mu; /* one m3_cluster_dispatch at a time */
};

int64_t m3__now_ms(void);

/* Counters under cl->mu. */
void m3__cluster_count(m3_cluster *cl, uint64_t *field, uint64_t n);

/*
 * Borrow a connection to rep, connecting (Hello + layout check) when no idle
 * one exists and the replica has fewer than max_conns_per_replica; waits for
 * one otherwise, until deadline (ms). *reused says whether it came from the
 * pool (a pooled connection may have died since). On failure the message
 * (m3_errmsg) names the server; M3_EFINGERPRINT marks a layout refusal.
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
 * answers. 0, or M3_EBUSY / M3_EFINGERPRINT with a message. */
int m3__cluster_ensure_ref(m3_cluster *cl, int64_t deadline);

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
  void *ud;
  uint64_t *ids_out;        /* search: (nq, k) */
  float *scores_out;        /* search: (nq, k) */
  uint32_t *counts_out;     /* search: (nq) */
  int64_t deadline;         /* ms, CLOCK_MONOTONIC */
  const atomic_int *cancel; /* async: stops the call once non-zero */
} m3__req;

/* How a call ended: what the sync call returns and leaves for
 * m3_cluster_last_status. */
typedef struct m3__outcome {
  int rc, status, shard;
  char msg[1024];
} m3__outcome;

/* Run one call on this thread (its shard jobs on the pool as well). */
void m3__cluster_run(m3_cluster *cl, const m3__req *rq, m3__outcome *out);

/* Stop and free every async op (m3_cluster_close): cancel them, wait for
 * the workers to finish them, run the done callbacks still owed. */
void m3__cluster_async_close(m3_cluster *cl);

/* The prober thread (started by m3_cluster_open when probe_interval_ms > 0). */
void *m3__cluster_prober(void *arg);

#endif /* M3_CLUSTER_INT_H */
