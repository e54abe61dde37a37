/*
 * The cluster handle's life: options, m3_cluster_open (checks the
 * options, then starts the modules in cluster_int.h's order: replicas,
 * counters, async ops, the worker pool, the prober) and m3_cluster_close
 * (stops them in the reverse order of their dependencies: async ops
 * first, since they need the workers, then the prober, the workers, and
 * the replicas' connections last). Nothing else: the calls are in
 * cluster_call.c, async ops in cluster_async.c.
 *
 * Workload: once per worker process.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"
#include "m3/error.h"

void m3_cluster_options_init(m3_cluster_options *o) {
  memset(o, 0, sizeof *o);
  o->connect_timeout_ms = 2000;
  o->call_timeout_ms = 10000;
  o->try_timeout_ms = 3000;
  o->hedge_delay_ms = 0;
  o->max_conns_per_replica = 16;
  o->backoff_min_ms = 100;
  o->backoff_max_ms = 5000;
  o->probe_interval_ms = 100;
  o->client_name = "libm3client cluster";
  o->threads = 0;
  o->completion = M3_CLUSTER_COMPLETION_CALLBACK;
}

static int check_options(const m3_cluster_options *o) {
  if (o->call_timeout_ms <= 0 || o->connect_timeout_ms <= 0 || o->try_timeout_ms <= 0 ||
      o->max_conns_per_replica <= 0 || o->backoff_min_ms <= 0 ||
      o->backoff_max_ms < o->backoff_min_ms || o->hedge_delay_ms < 0 || o->probe_interval_ms < 0)
    return m3__seterr(M3_EINVAL, "m3_cluster_open: timeouts, backoffs and max_conns_per_replica "
                                 "must be positive (backoff_max_ms >= backoff_min_ms)");
  if (o->threads < 0 || o->threads > 1024)
    return m3__seterr(M3_EINVAL, "m3_cluster_open: threads %d is not 0 (2 x shards) .. 1024",
                      o->threads);
  if (o->completion != M3_CLUSTER_COMPLETION_CALLBACK &&
      o->completion != M3_CLUSTER_COMPLETION_DISPATCH)
    return m3__seterr(M3_EINVAL, "m3_cluster_open: completion %d is neither "
                                 "M3_CLUSTER_COMPLETION_CALLBACK nor _DISPATCH", o->completion);
  return 0;
}

/* Close cl after a failed open and return rc with the message that was
 * current (close may log or set others). */
static int open_failed(m3_cluster *cl, int rc) {
  char msg[300];
  snprintf(msg, sizeof msg, "%s", m3_errmsg());
  m3_cluster_close(cl);
  return m3__seterr(rc, "%s", msg);
}

int m3_cluster_open(const m3_cluster_map *map, const m3_cluster_options *o, m3_cluster **out) {
  m3_cluster_options defaults;
  if (o == NULL) {
    m3_cluster_options_init(&defaults);
    o = &defaults;
  }
  *out = NULL;
  if (map == NULL || map->n_shards == 0) return m3__seterr(M3_EINVAL, "m3_cluster_open: no map");
  int rc = check_options(o);
  if (rc) return rc;
  m3_cluster *cl = calloc(1, sizeof *cl);
  if (cl == NULL) return m3__seterr(M3_ENOMEM, "m3_cluster_open: out of memory");
  cl->o = *o;
  atomic_init(&cl->search_params, 0);
  const char *tok = o->token ? o->token : map->token;
  cl->token = strdup(tok ? tok : "");
  cl->client_name = strdup(o->client_name ? o->client_name : "libm3client cluster");
  cl->o.token = cl->token;
  cl->o.client_name = cl->client_name;
  /* TLS: the options' files, else the map's "tls" object. */
  int tls_opts = o->tls_ca != NULL;
  const char *t_ca = tls_opts ? o->tls_ca : map->tls_ca;
  const char *t_cert = tls_opts ? o->tls_cert : map->tls_cert;
  const char *t_key = tls_opts ? o->tls_key : map->tls_key;
  const char *t_name = o->tls_name ? o->tls_name : map->tls_name;
  int tls_nomem = (t_ca && !(cl->tls_ca = strdup(t_ca))) || (t_cert && !(cl->tls_cert = strdup(t_cert))) ||
                  (t_key && !(cl->tls_key = strdup(t_key))) || (t_name && !(cl->tls_name = strdup(t_name)));
  cl->o.tls_ca = cl->tls_ca;
  cl->o.tls_cert = cl->tls_cert;
  cl->o.tls_key = cl->tls_key;
  cl->o.tls_name = cl->tls_name;
  /* Each init first makes its locks, so that close can undo it whatever
   * failed. */
  m3__stats_init(&cl->stats);
  int reps_rc = m3__replicas_init(cl, map);
  if ((rc = m3__async_init(cl)) != 0) return open_failed(cl, rc);
  if (cl->token == NULL || cl->client_name == NULL || reps_rc != 0 || tls_nomem)
    return open_failed(cl, m3__seterr(M3_ENOMEM, "m3_cluster_open: out of memory"));
  /* A call keeps a job per shard busy (one on the caller); with hedging
   * each also runs up to two attempts at once: 3 x shards lets one hedged
   * call race every shard without running an attempt on its waiting job. */
  unsigned threads = o->threads ? (unsigned)o->threads
                                : (o->hedge_delay_ms > 0 ? 3 : 2) * map->n_shards;
  if ((rc = m3__workers_start(&cl->workers, threads < 2 ? 2 : threads)) != 0)
    return open_failed(cl, rc);
  if ((rc = m3__replicas_start_prober(cl)) != 0) return open_failed(cl, rc);
  *out = cl;
  return 0;
}

void m3_cluster_close(m3_cluster *cl) {
  if (cl == NULL) return;
  /* Async ops first: they need the workers to finish. */
  m3__async_close(cl);
  m3__replicas_stop_prober(cl);
  /* Abandoned hedged attempts hold connections: the workers finish them. */
  m3__workers_stop(&cl->workers);
  m3__replicas_free(cl);
  m3__async_free(cl);
  m3__stats_destroy(&cl->stats);
  free(cl->token);
  free(cl->client_name);
  free(cl->tls_ca);
  free(cl->tls_cert);
  free(cl->tls_key);
  free(cl->tls_name);
  free(cl);
}

uint32_t m3_cluster_shards(const m3_cluster *cl) { return cl->n_shards; }
