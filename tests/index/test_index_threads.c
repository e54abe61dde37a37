/*
 * Concurrency: 4 threads search batches while a fifth adds, replaces and
 * removes vectors and saves; every search succeeds and returns a well-formed
 * row (scores non-increasing, ids distinct and known), and the final index
 * equals the brute force over the final set. Run it under ASan/TSan builds
 * as well.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "index/index_testlib.h"

enum { DIM = 16, N0 = 300, SEARCHERS = 4, NQ = 8, K = 5, ROUNDS = 200, ADD = 20 };

typedef struct shared {
  m3_index *ix;
  atomic_int stop;
  atomic_int failures;
  atomic_long searches;
  atomic_int exited; /* searchers that returned (a failed search ends one) */
  char first_error[256];
  pthread_mutex_t mu;
} shared;

static int known_id(uint64_t id) {
  return (id < N0) || (id >= 100000 && id < 100000 + (uint64_t)ROUNDS * ADD);
}

static void fail_once(shared *sh, const char *msg) {
  pthread_mutex_lock(&sh->mu);
  if (!sh->first_error[0]) snprintf(sh->first_error, sizeof sh->first_error, "%s", msg);
  pthread_mutex_unlock(&sh->mu);
  atomic_fetch_add(&sh->failures, 1);
}

static void *searcher(void *arg) {
  shared *sh = arg;
  uint64_t seed = (uint64_t)(uintptr_t)&seed;
  float q[NQ * DIM];
  uint64_t ids[NQ * K];
  float sc[NQ * K];
  char msg[200];
  while (!atomic_load(&sh->stop)) {
    for (int i = 0; i < NQ * DIM; i++) q[i] = m3t_randf(&seed);
    int rc = m3_index_search(sh->ix, q, NQ, K, ids, sc);
    if (rc) {
      snprintf(msg, sizeof msg, "search: %s: %s", m3_err_name(rc), m3_errmsg());
      fail_once(sh, msg);
      break;
    }
    for (int r = 0; r < NQ; r++)
      for (int j = 0; j < K; j++) {
        uint64_t id = ids[r * K + j];
        if (!known_id(id) || (j && sc[r * K + j] > sc[r * K + j - 1]) ||
            (j && id == ids[r * K + j - 1])) {
          snprintf(msg, sizeof msg, "row %d rank %d: id %llu score %f", r, j, (unsigned long long)id,
                   sc[r * K + j]);
          fail_once(sh, msg);
        }
      }
    atomic_fetch_add(&sh->searches, 1);
  }
  atomic_fetch_add(&sh->exited, 1);
  return NULL;
}

static void test_search_while_adding(void **state) {
  (void)state;
  char *dir = m3t_mkdtemp("threads");
  m3_store *s = it_store_open(dir, DIM);
  it_ref ref;
  it_ref_init(&ref, DIM);
  uint64_t seed = 41, ids[N0];
  float *embs = malloc(N0 * DIM * sizeof *embs);
  for (int i = 0; i < N0; i++) {
    ids[i] = (uint64_t)i;
    m3t_randvec(&seed, embs + i * DIM, DIM);
    it_ref_set(&ref, ids[i], embs + i * DIM);
  }
  CHECK_OK(it_put(s, ids, embs, N0));
  free(embs);

  shared sh = {0};
  pthread_mutex_init(&sh.mu, NULL);
  CHECK_OK(m3_index_open(s, NULL, &sh.ix));
  pthread_t th[SEARCHERS];
  for (int i = 0; i < SEARCHERS; i++) assert_int_equal(pthread_create(&th[i], NULL, searcher, &sh), 0);

  /* this thread writes: adds new ids, replaces old ones, removes some */
  float v[ADD * DIM];
  uint64_t add_ids[ADD];
  for (int r = 0; r < ROUNDS; r++) {
    for (int i = 0; i < ADD; i++) {
      add_ids[i] = 100000 + (uint64_t)(r * ADD + i);
      m3t_randvec(&seed, v + i * DIM, DIM);
      it_ref_set(&ref, add_ids[i], v + i * DIM);
    }
    CHECK_OK(m3_index_add(sh.ix, add_ids, v, ADD));
    uint64_t old = (uint64_t)(r * 3) % N0;
    m3t_randvec(&seed, v, DIM);
    it_ref_set(&ref, old, v);
    CHECK_OK(m3_index_add(sh.ix, &old, v, 1));
    uint64_t gone = (uint64_t)(r * 3 + 1) % N0;
    CHECK_OK(m3_index_remove(sh.ix, &gone, 1, NULL));
    it_ref_del(&ref, gone);
    if (r % 50 == 49) CHECK_OK(m3_index_save(sh.ix, 1000 + (uint64_t)r));
  }
  /* Let the searchers run against the final state for a moment too: until
   * 50 searches each, or every searcher has stopped (a failed search ends
   * one), or 60 s (a machine too loaded to search is a failure too). */
  long long end = m3t_now_ms() + 60000;
  while (atomic_load(&sh.searches) < 50 * SEARCHERS && atomic_load(&sh.exited) < SEARCHERS &&
         m3t_now_ms() < end)
    sched_yield();
  atomic_store(&sh.stop, 1);
  for (int i = 0; i < SEARCHERS; i++) pthread_join(th[i], NULL);
  if (atomic_load(&sh.failures)) fail_msg("%d bad searches; first: %s", atomic_load(&sh.failures), sh.first_error);
  if (atomic_load(&sh.searches) < 50 * SEARCHERS)
    fail_msg("only %ld searches in 60 s, want %d", atomic_load(&sh.searches), 50 * SEARCHERS);

  CHECK_U64(m3_index_count(sh.ix), ref.n);
  float q[10 * DIM];
  for (int i = 0; i < 10 * DIM; i++) q[i] = m3t_randf(&seed);
  it_check_against_ref(sh.ix, &ref, q, 10, K, 1e-5);
  m3_index_close(sh.ix);
  pthread_mutex_destroy(&sh.mu);
  it_ref_free(&ref);
  m3_store_close(s);
  m3t_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_search_while_adding),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
