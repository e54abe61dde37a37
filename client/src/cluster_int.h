/*
 * Inside the cluster part of libm3client: the parsed map (cluster_map.c),
 * the replicas with their connection pools and health (cluster_pool.c), and
 * the calls that scatter over shards and merge (cluster.c).
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
  uint64_t calls, errors;
  char last_err[256];
} m3__replica;

typedef struct m3__shard {
  uint32_t n;
  m3__replica *r; /* (n) */
  atomic_uint rr; /* rotates the first replica tried among the healthy */
} m3__shard;

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
  unsigned detached; /* hedged attempts still running after their call */
  int stop;
  int prober_on;
  pthread_t prober;
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

/* The order to try shard's replicas in: healthy ones first (rotating),
 * then backed-off ones, soonest back first. Returns how many (= n). */
uint32_t m3__replica_order(m3_cluster *cl, uint32_t shard, uint32_t *order);

/* Make sure a reference layout exists: connect in map order until a server
 * answers. 0, or M3_EBUSY / M3_EFINGERPRINT with a message. */
int m3__cluster_ensure_ref(m3_cluster *cl, int64_t deadline);

/* The prober thread (started by m3_cluster_open when probe_interval_ms > 0). */
void *m3__cluster_prober(void *arg);

#endif /* M3_CLUSTER_INT_H */
