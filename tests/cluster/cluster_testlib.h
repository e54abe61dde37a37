/*
 * Shared by the cluster tests: a local cluster started with
 * deploy/local/m3-cluster (real m3-server processes on loopback over shard
 * stores split from a store written by `m3-bench gen`), its servers' pids
 * and addresses, and a cluster handle over its map.
 */
#ifndef M3_CLUSTER_TESTLIB_H
#define M3_CLUSTER_TESTLIB_H

#include "client/client_testlib.h"
#include "m3/cluster.h"

#define CL_MAX_SERVERS 16

typedef struct cl_cluster {
  char dir[600]; /* RUNDIR */
  char map[700]; /* RUNDIR/cluster.json */
  unsigned shards, replicas;
  int pid[CL_MAX_SERVERS];       /* s * replicas + r */
  char addr[CL_MAX_SERVERS][64]; /* "127.0.0.1:PORT" */
} cl_cluster;

/* `m3-cluster up --store store --shards S --replicas R --dir rundir`; skips
 * the test (exit 77) when m3-server is not built. Stopped at exit (atexit)
 * if the test does not stop it first. */
void cl_up(cl_cluster *c, const char *store, const char *rundir, unsigned shards,
           unsigned replicas);
/* cl_up with extra m3-server flags (`m3-cluster up ... -- FLAGS`; a shell
 * word list, NULL: none). */
void cl_up_args(cl_cluster *c, const char *store, const char *rundir, unsigned shards,
                unsigned replicas, const char *server_flags);
/* `m3-cluster down`. */
void cl_down(cl_cluster *c);
/* The usual test setup: a store of n memories with emb_dim-dim embeddings
 * (ct_store_make) and a shards x replicas cluster over it in st->dir/run;
 * and its teardown (cl_down, ct_store_free). */
void cl_store_up(cl_cluster *c, ct_store *st, size_t n, unsigned emb_dim, unsigned shards,
                 unsigned replicas);
void cl_store_down(cl_cluster *c, ct_store *st);
/* SIGKILL replica r of shard s and wait until it is gone. */
void cl_kill(cl_cluster *c, unsigned s, unsigned r);
/* Start replica r of shard s again (after cl_kill) on its old port and
 * store copy, wait until it listens, and record its pid for cl_down. */
void cl_restart(cl_cluster *c, unsigned s, unsigned r);

/* SIGSTOP replica r of shard s: it keeps accepting connections (the
 * kernel does) but answers nothing, a replica gone slow. Resumed by
 * cl_resume, or at exit (before the cluster is stopped). */
void cl_pause(cl_cluster *c, unsigned s, unsigned r);
void cl_resume(cl_cluster *c, unsigned s, unsigned r);

/* A handle on the cluster's map with o (NULL: defaults). */
m3_cluster *cl_open(const cl_cluster *c, const m3_cluster_options *o);

/* What a retrieval round (or a fetch: k 1, m.query the index) delivered,
 * per (query, rank). */
typedef struct cl_hit {
  uint64_t id;
  float score;
  int status, seen;
  uint8_t *data; /* malloc'ed copy */
  size_t len;
  char text[64];
} cl_hit;

typedef struct cl_round {
  size_t nq;
  uint32_t k;
  cl_hit *h;  /* (nq, k) */
  int bad;    /* out-of-range tags, or a parsed record that does not match */
  char why[200];
} cl_round;

void cl_round_init(cl_round *r, size_t nq, uint32_t k);
void cl_round_free(cl_round *r);
/* An m3_client_memory_fn filling the cl_round in ud (not thread-safe: one
 * call's callbacks are serialised). Checks that m.record, when set, is the
 * parse of m.data (chunk id, codes and positions inside data). */
int cl_round_on_mem(void *ud, const m3_client_memory *m);
/* got equals want: each (query, rank) delivered once by both, same id,
 * status, score (1e-6), record bytes and text; fails the test naming
 * `what` and the first difference. */
void cl_round_expect_equal(const cl_round *want, const cl_round *got, const char *what);

#endif
