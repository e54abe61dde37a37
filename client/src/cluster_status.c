/*
 * What the cluster reports: the error of each thread's last m3_cluster
 * call (rc, gRPC status, and the shard and replica that decided it as
 * fields, m3/cluster.h m3_cluster_last_error), and the handle's counters.
 * A leaf: it calls no other cluster file.
 *
 * Workload: one error per call per thread; counters bumped a few times a
 * call under a lock held for one add.
 */
#include <stdio.h>
#include <string.h>

#include "cluster_int.h"
#include "m3/error.h"

/* ---- per-thread error ----------------------------------------------- */

static _Thread_local m3_cluster_error last = {.shard = -1, .replica = -1};

const m3_cluster_error *m3_cluster_last_error(void) { return &last; }

int m3_cluster_last_status(int *shard, const char **msg) {
  if (shard) *shard = last.shard;
  if (msg) *msg = last.msg;
  return last.status;
}

void m3__cluster_error_set(const m3_cluster_error *e) {
  if (e != &last) last = *e;
  if (e->rc) m3__seterr(e->rc, "%s", e->msg);
}

/* The status table sends M3_EBUSY as UNAVAILABLE (a replica that cannot
 * answer in time is one to fail over from). */
int m3__cluster_status(int rc) { return rc == 0 ? M3_STATUS_OK : m3_status_from_err(rc); }

void m3__cluster_error_from_errmsg(m3_cluster_error *e, int rc) {
  e->rc = rc;
  e->status = m3__cluster_status(rc);
  e->shard = -1;
  e->replica = -1;
  e->addr[0] = '\0';
  snprintf(e->msg, sizeof e->msg, "%s", rc ? m3_errmsg() : "");
}

/* ---- counters ------------------------------------------------------- */

void m3__stats_init(m3__stats *s) {
  memset(&s->c, 0, sizeof s->c);
  pthread_mutex_init(&s->mu, NULL);
}

void m3__stats_destroy(m3__stats *s) { pthread_mutex_destroy(&s->mu); }

void m3__stats_add(m3_cluster *cl, size_t off, uint64_t n) {
  pthread_mutex_lock(&cl->stats.mu);
  *(uint64_t *)((char *)&cl->stats.c + off) += n;
  pthread_mutex_unlock(&cl->stats.mu);
}

void m3_cluster_counters_get(m3_cluster *cl, m3_cluster_counters *out) {
  pthread_mutex_lock(&cl->stats.mu);
  *out = cl->stats.c;
  pthread_mutex_unlock(&cl->stats.mu);
}
