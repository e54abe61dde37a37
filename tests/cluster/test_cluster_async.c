/*
 * Async calls in callback mode on a 2-shard x 2-replica local cluster: 64
 * retrieves in flight at once on a 2-thread pool (and again hedged, with
 * searches and fetches raced over both replicas while one replica of shard
 * 0 answers nothing, so that hedges are sent: at least one race starts on
 * it) deliver exactly what the
 * sync m3_cluster_retrieve delivers for the same queries (ids, scores,
 * record bytes, texts), with the queries' memory scribbled over and freed
 * right after submission (the call copied them); callbacks run on the
 * cluster's worker threads, never on the submitting thread, and no memory
 * arrives after its op's done. Fetch and Search async against their sync
 * forms too.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "cluster/cluster_testlib.h"

#define NOPS 64
#define DIM 32

static ct_store st;
static cl_cluster cc;
static pthread_t main_thread;

typedef struct op_ctx {
  cl_round r;
  int done, rc, status, late, on_main;
  char msg[300];
  /* search */
  uint64_t ids[8 * 5];
  float scores[8 * 5];
  uint32_t counts[8];
} op_ctx;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int n_done;

static int on_mem(void *ud, const m3_client_memory *m) {
  op_ctx *c = ud;
  if (pthread_equal(pthread_self(), main_thread)) c->on_main++;
  pthread_mutex_lock(&mu);
  if (c->done) c->late++;
  pthread_mutex_unlock(&mu);
  return cl_round_on_mem(&c->r, m);
}

static void on_done(void *ud, const m3_cluster_result *res) {
  op_ctx *c = ud;
  if (pthread_equal(pthread_self(), main_thread)) c->on_main++;
  c->rc = res->rc;
  c->status = res->status;
  snprintf(c->msg, sizeof c->msg, "%s", res->msg);
  if (res->ids) {
    memcpy(c->ids, res->ids, res->nq * res->k * sizeof *c->ids);
    memcpy(c->scores, res->scores, res->nq * res->k * sizeof *c->scores);
    memcpy(c->counts, res->counts, res->nq * sizeof *c->counts);
  }
  pthread_mutex_lock(&mu);
  c->done++;
  n_done++;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
}

static void wait_done(int n) {
  long long end = m3t_now_ms() + 60000;
  pthread_mutex_lock(&mu);
  while (n_done < n) {
    pthread_mutex_unlock(&mu);
    if (m3t_now_ms() > end) fail_msg("only %d of %d ops done after 60 s", n_done, n);
    usleep(2000);
    pthread_mutex_lock(&mu);
  }
  pthread_mutex_unlock(&mu);
}

static int setup(void **state) {
  (void)state;
  main_thread = pthread_self();
  cl_store_up(&cc, &st, 600, DIM, 2, 2);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  cl_store_down(&cc, &st);
  return 0;
}

/* 64 retrieves of 1..8 queries x top-3/5 in flight at once on a 2-thread
 * pool equal the same rounds run sync. hedged: with shard 0's replica 1
 * stopped (SIGSTOP) for the async part, the races that start on it can
 * only be won by a hedge: hedges must have been sent. */
static void run_64(const m3_cluster_options *o, const char *what, int hedged) {
  m3_cluster *cl = cl_open(&cc, o);
  uint64_t rng = 99;
  static float pristine[NOPS][8 * DIM];
  static op_ctx got[NOPS];
  cl_round want[NOPS];
  size_t nq[NOPS];
  uint32_t k[NOPS];
  m3_client_query q[8];
  for (int i = 0; i < NOPS; i++) {
    nq[i] = 1 + (size_t)i % 8;
    k[i] = i % 3 == 0 ? 3 : 5;
    for (size_t j = 0; j < nq[i]; j++) {
      m3t_rand_unit(&rng, pristine[i] + j * DIM, DIM);
      q[j] = (m3_client_query){.vector = pristine[i] + j * DIM, .dim = DIM};
    }
    cl_round_init(&want[i], nq[i], k[i]);
    CHECK_OK(m3_cluster_retrieve(cl, q, nq[i], k[i], i % 4 == 1, cl_round_on_mem, &want[i]));
  }
  memset(got, 0, sizeof got);
  n_done = 0;
  if (hedged) cl_pause(&cc, 0, 1);
  for (int i = 0; i < NOPS; i++) {
    cl_round_init(&got[i].r, nq[i], k[i]);
    /* The caller's buffers die right after the call: the op has copies. */
    float *v = malloc(nq[i] * DIM * sizeof *v);
    m3_client_query *qq = calloc(nq[i], sizeof *qq);
    memcpy(v, pristine[i], nq[i] * DIM * sizeof *v);
    for (size_t j = 0; j < nq[i]; j++) qq[j] = (m3_client_query){.vector = v + j * DIM, .dim = DIM};
    m3_cluster_op *op = NULL;
    CHECK_OK(m3_cluster_retrieve_async(cl, qq, nq[i], k[i], i % 4 == 1, on_mem, on_done, &got[i],
                                       i % 2 ? &op : NULL));
    for (size_t j = 0; j < nq[i] * DIM; j++) v[j] = 1e30f;
    free(v);
    free(qq);
    m3_cluster_op_free(op); /* before it completed: the op lives on */
  }
  wait_done(NOPS);
  if (hedged) cl_resume(&cc, 0, 1);
  for (int i = 0; i < NOPS; i++) {
    op_ctx *c = &got[i];
    if (c->rc != 0) fail_msg("%s op %d: %s (status %d): %s", what, i, m3_err_name(c->rc),
                             c->status, c->msg);
    CHECK_U64(c->done, 1);
    CHECK_U64(c->status, 0);
    CHECK_U64(c->late, 0);
    CHECK_U64(c->on_main, 0);
    char name[64];
    snprintf(name, sizeof name, "%s op %d", what, i);
    cl_round_expect_equal(&want[i], &c->r, name);
    cl_round_free(&want[i]);
    cl_round_free(&c->r);
  }
  m3_cluster_counters ctr;
  m3_cluster_counters_get(cl, &ctr);
  print_message("%s: %d async retrieves equal the sync ones; %llu calls, %llu hedges, %llu "
                "failed\n", what, NOPS, (unsigned long long)ctr.calls,
                (unsigned long long)ctr.hedges, (unsigned long long)ctr.failed);
  CHECK_U64(ctr.calls, 2 * NOPS);
  CHECK_U64(ctr.failed, 0);
  if (hedged && ctr.hedges == 0) fail_msg("%s: no hedge sent around a stopped replica", what);
  m3_cluster_close(cl);
}

static void test_64_async_retrieves_equal_sync(void **state) {
  (void)state;
  m3_cluster_options o;
  m3_cluster_options_init(&o);
  o.threads = 2;
  run_64(&o, "2 threads", 0);
}

static void test_64_hedged_async_retrieves_equal_sync(void **state) {
  (void)state;
  m3_cluster_options o;
  m3_cluster_options_init(&o);
  o.threads = 3;
  o.hedge_delay_ms = 1; /* most searches and fetches race both replicas */
  o.connect_timeout_ms = 500; /* a Hello to the stopped replica gives up soon */
  run_64(&o, "hedged, 3 threads", 1);
}

static void test_fetch_and_search_async(void **state) {
  (void)state;
  m3_cluster *cl = cl_open(&cc, NULL);
  uint64_t ids[] = {3, 4, 3, 599, 600, 0, 12345, 1};
  size_t n = sizeof ids / sizeof ids[0];
  cl_round want;
  cl_round_init(&want, n, 1);
  CHECK_OK(m3_cluster_fetch(cl, ids, n, 1, cl_round_on_mem, &want));
  static op_ctx f, s;
  memset(&f, 0, sizeof f);
  memset(&s, 0, sizeof s);
  n_done = 0;
  cl_round_init(&f.r, n, 1);
  uint64_t *copy = malloc(sizeof ids);
  memcpy(copy, ids, sizeof ids);
  CHECK_OK(m3_cluster_fetch_async(cl, copy, n, 1, on_mem, on_done, &f, NULL));
  free(copy);

  uint64_t rng = 5;
  float v[8 * DIM];
  m3_client_query q[8];
  for (int j = 0; j < 8; j++) {
    m3t_rand_unit(&rng, v + j * DIM, DIM);
    q[j] = (m3_client_query){.vector = v + j * DIM, .dim = DIM};
  }
  uint64_t wids[8 * 5];
  float wsc[8 * 5];
  uint32_t wcn[8];
  CHECK_OK(m3_cluster_search(cl, q, 8, 5, wids, wsc, wcn));
  m3_cluster_op *op;
  CHECK_OK(m3_cluster_search_async(cl, q, 8, 5, on_done, &s, &op));
  wait_done(2);
  m3_cluster_op_cancel(op); /* after done: does nothing */
  m3_cluster_op_free(op);
  if (f.rc) fail_msg("fetch_async: %s: %s", m3_err_name(f.rc), f.msg);
  CHECK_U64(f.late, 0);
  CHECK_U64(f.on_main, 0);
  cl_round_expect_equal(&want, &f.r, "fetch_async");
  CHECK_RC(f.r.h[4].status, M3_ENOTFOUND);
  if (s.rc) fail_msg("search_async: %s: %s", m3_err_name(s.rc), s.msg);
  for (int i = 0; i < 8; i++) CHECK_U64(s.counts[i], wcn[i]);
  for (int i = 0; i < 8 * 5; i++) {
    CHECK_U64(s.ids[i], wids[i]);
    if (fabsf(s.scores[i] - wsc[i]) > 1e-6f)
      fail_msg("search_async score %d: %.7f vs %.7f", i, (double)s.scores[i], (double)wsc[i]);
  }
  cl_round_free(&want);
  cl_round_free(&f.r);
  m3_cluster_close(cl);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_64_async_retrieves_equal_sync),
      cmocka_unit_test(test_64_hedged_async_retrieves_equal_sync),
      cmocka_unit_test(test_fetch_and_search_async),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
