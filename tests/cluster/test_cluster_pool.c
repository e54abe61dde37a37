/*
 * The worker pool: 8 threads calling one cluster handle whose pool has 2
 * threads (fewer than the shard jobs and hedged attempts in flight) never
 * deadlock, every round equals the same round run alone beforehand, and
 * the calls start no thread: the process's thread count stays at what it
 * was after m3_cluster_open plus the 8 callers, sampled all along. Run
 * without and with hedging (1 ms: most searches and fetches race; shard
 * 0's replica 1 is stopped for the concurrent part, so the races that
 * start on it are won by hedges, and hedges must have been sent).
 */
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "cluster/cluster_testlib.h"

#define DIM 32
#define CALLERS 8
#define CALLS 12
#define NQ 6
#define K 5

static ct_store st;
static cl_cluster cc;
static m3_cluster *cl;
static float v[CALLERS][CALLS][NQ * DIM];
static cl_round want[CALLERS][CALLS];
static atomic_int running, max_threads;

static int threads_now(void) {
  DIR *d = opendir("/proc/self/task");
  if (d == NULL) fail_msg("opendir /proc/self/task");
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

static void *sampler(void *arg) {
  (void)arg;
  while (atomic_load(&running)) {
    int n = threads_now();
    if (n > atomic_load(&max_threads)) atomic_store(&max_threads, n);
    usleep(500);
  }
  return NULL;
}

typedef struct caller {
  pthread_t t;
  int id, errors, wrong;
  char first[400];
} caller;

static void queries(int c, int i, m3_client_query *q) {
  for (int j = 0; j < NQ; j++) q[j] = (m3_client_query){.vector = v[c][i] + j * DIM, .dim = DIM};
}

static void *call_loop(void *arg) {
  caller *me = arg;
  m3_client_query q[NQ];
  for (int i = 0; i < CALLS; i++) {
    queries(me->id, i, q);
    cl_round got;
    cl_round_init(&got, NQ, K);
    int rc = m3_cluster_retrieve(cl, q, NQ, K, 0, cl_round_on_mem, &got);
    if (rc && me->errors++ == 0)
      snprintf(me->first, sizeof me->first, "%s: %s", m3_err_name(rc), m3_errmsg());
    for (size_t h = 0; rc == 0 && h < NQ * K; h++) {
      const cl_hit *x = &want[me->id][i].h[h], *y = &got.h[h];
      /* Scores may differ in the last bits from call to call (the server's
       * search splits its work differently under load). */
      if (y->seen != 1 || x->id != y->id || fabsf(x->score - y->score) > 1e-6f ||
          y->len != x->len || memcmp(x->data, y->data, x->len) != 0) {
        if (me->wrong++ == 0)
          snprintf(me->first, sizeof me->first, "call %d (query %zu rank %zu): chunk %llu seen %d "
                   "score %.9g len %zu, want chunk %llu score %.9g len %zu%s", i, h / K, h % K,
                   (unsigned long long)y->id, y->seen, (double)y->score, y->len,
                   (unsigned long long)x->id, (double)x->score, x->len,
                   y->len == x->len && memcmp(x->data, y->data, x->len) ? " (bytes differ)" : "");
        break;
      }
    }
    cl_round_free(&got);
  }
  return NULL;
}

static void run(int hedge_ms) {
  m3_cluster_options o;
  m3_cluster_options_init(&o);
  o.threads = 2;
  o.hedge_delay_ms = hedge_ms;
  if (hedge_ms) o.connect_timeout_ms = 500; /* a Hello to the stopped replica */
  cl = cl_open(&cc, &o);
  uint64_t rng = 7 + (uint64_t)hedge_ms;
  m3_client_query q[NQ];
  for (int c = 0; c < CALLERS; c++) {
    for (int i = 0; i < CALLS; i++) {
      for (int j = 0; j < NQ; j++) m3t_rand_unit(&rng, v[c][i] + j * DIM, DIM);
      queries(c, i, q);
      cl_round_init(&want[c][i], NQ, K);
      CHECK_OK(m3_cluster_retrieve(cl, q, NQ, K, 0, cl_round_on_mem, &want[c][i]));
    }
  }
  int base = threads_now();
  atomic_store(&max_threads, base);
  atomic_store(&running, 1);
  pthread_t samp;
  pthread_create(&samp, NULL, sampler, NULL);
  caller cs[CALLERS];
  memset(cs, 0, sizeof cs);
  if (hedge_ms) cl_pause(&cc, 0, 1);
  long long t0 = m3t_now_ms();
  for (int c = 0; c < CALLERS; c++) {
    cs[c].id = c;
    pthread_create(&cs[c].t, NULL, call_loop, &cs[c]);
  }
  for (int c = 0; c < CALLERS; c++) pthread_join(cs[c].t, NULL);
  long long ms = m3t_now_ms() - t0;
  if (hedge_ms) cl_resume(&cc, 0, 1);
  atomic_store(&running, 0);
  pthread_join(samp, NULL);
  m3_cluster_counters ctr;
  m3_cluster_counters_get(cl, &ctr);
  print_message("hedge %d ms: %d callers x %d rounds on a 2-thread pool in %lld ms, %llu hedges;"
                " threads: %d after open, at most %d during the calls\n", hedge_ms, CALLERS,
                CALLS, ms, (unsigned long long)ctr.hedges, base, atomic_load(&max_threads));
  for (int c = 0; c < CALLERS; c++) {
    if (cs[c].errors || cs[c].wrong)
      fail_msg("caller %d: %d errors, %d wrong rounds; the first: %s", c, cs[c].errors,
               cs[c].wrong, cs[c].first);
    for (int i = 0; i < CALLS; i++) cl_round_free(&want[c][i]);
  }
  if (hedge_ms && ctr.hedges == 0) fail_msg("no hedge sent around a stopped replica");
  /* The callers and the sampler, nothing else. */
  if (atomic_load(&max_threads) > base + CALLERS + 1)
    fail_msg("%d threads during the calls, %d after open: calls started threads",
             atomic_load(&max_threads), base);
  m3_cluster_close(cl);
}

static void test_small_pool_many_callers(void **state) {
  (void)state;
  run(0);
}

static void test_small_pool_many_hedged_callers(void **state) {
  (void)state;
  run(1);
}

static int setup(void **state) {
  (void)state;
  cl_store_up(&cc, &st, 600, DIM, 2, 2);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  cl_store_down(&cc, &st);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_small_pool_many_callers),
      cmocka_unit_test(test_small_pool_many_hedged_callers),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
