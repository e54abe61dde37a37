/*
 * Trained indexes at small scale, recall measured against exact search: a
 * store of clustered embeddings (as real ones are), "IVF32,Flat" trained on
 * a sample; recall@5 against the brute-force reference rises with nprobe
 * (per-call override), reaches 1.0 when nprobe covers every list, and the
 * override does not stick (the next plain search uses the open's nprobe).
 * The stamp records the factory: a reopen loads it (no training), asking for
 * another factory ("IVF16,SQ8") rebuilds, a change to the store rebuilds.
 */
#include <stdlib.h>

#include "index/index_testlib.h"

enum { DIM = 32, N = 3000, NQ = 32, K = 5, CLUSTERS = 40 };

static double recall(m3_index *ix, const it_ref *ref, const float *q, const char *params) {
  uint64_t got[NQ * K], want[K];
  float sc[K];
  CHECK_OK(m3_index_search_params(ix, q, NQ, K, got, NULL, params));
  size_t hit = 0;
  for (int i = 0; i < NQ; i++) {
    it_ref_topk(ref, q + i * DIM, K, want, sc);
    for (int a = 0; a < K; a++)
      for (int b = 0; b < K; b++) hit += got[i * K + a] == want[b];
  }
  return (double)hit / (NQ * K);
}

static void test_recall(void **state) {
  (void)state;
  char *dir = m3t_mkdtemp("recall");
  m3_store *s = it_store_open(dir, DIM);
  it_ref ref;
  it_ref_init(&ref, DIM);
  uint64_t seed = 5;
  float *centers = malloc(CLUSTERS * DIM * sizeof *centers), *embs = malloc(N * DIM * sizeof *embs);
  uint64_t *ids = malloc(N * sizeof *ids);
  for (int i = 0; i < CLUSTERS * DIM; i++) centers[i] = m3t_randf(&seed);
  for (int i = 0; i < N; i++) {
    ids[i] = (uint64_t)i * 7 + 1;
    const float *c = centers + (m3t_rand(&seed) % CLUSTERS) * DIM;
    for (int d = 0; d < DIM; d++) embs[i * DIM + d] = c[d] + 0.15f * m3t_randf(&seed);
    it_ref_set(&ref, ids[i], embs + i * DIM);
  }
  for (int i = 0; i < N; i += 500) CHECK_OK(it_put(s, ids + i, embs + i * DIM, 500));
  float q[NQ * DIM];
  for (int i = 0; i < NQ; i++) { /* queries near stored vectors */
    const float *e = embs + (m3t_rand(&seed) % N) * DIM;
    for (int d = 0; d < DIM; d++) q[i * DIM + d] = e[d] + 0.1f * m3t_randf(&seed);
  }

  m3_index_options o;
  m3_index_options_init(&o);
  o.factory = "IVF32,Flat";
  o.train_sample = 1000;
  o.params = "nprobe=2";
  m3_index *ix;
  CHECK_OK(m3_index_open(s, &o, &ix));
  m3_index_info info;
  m3_index_info_get(ix, &info);
  assert_int_equal(info.trained, 1);
  double r1 = recall(ix, &ref, q, "nprobe=1"), r2 = recall(ix, &ref, q, NULL);
  double r8 = recall(ix, &ref, q, "nprobe=8"), rall = recall(ix, &ref, q, "nprobe=32");
  print_message("recall@5: nprobe 1 %.3f, 2 %.3f, 8 %.3f, 32 %.3f\n", r1, r2, r8, rall);
  assert_true(r1 <= r8);
  assert_true(r8 >= 0.9);
  assert_true(rall == 1.0);
  CHECK_NEAR(recall(ix, &ref, q, NULL), r2, 1e-9); /* the override did not stick */
  CHECK_RC(m3_index_search_params(ix, q, 1, K, ids, NULL, "efSearch=9"), M3_EINVAL);
  m3_index_close(ix);

  CHECK_OK(m3_index_open(s, &o, &ix)); /* the stamp matches: loaded, no training */
  m3_index_info_get(ix, &info);
  assert_int_equal(info.loaded, 1);
  assert_int_equal(info.trained, 0);
  CHECK_NEAR(recall(ix, &ref, q, "nprobe=32"), 1.0, 1e-9);
  m3_index_close(ix);

  o.factory = "IVF16,SQ8";
  o.params = NULL;
  CHECK_OK(m3_index_open(s, &o, &ix)); /* another factory: rebuilt and trained */
  m3_index_info_get(ix, &info);
  assert_int_equal(info.loaded, 0);
  assert_int_equal(info.trained, 1);
  double rsq = recall(ix, &ref, q, "nprobe=16");
  print_message("recall@5 of IVF16,SQ8 at nprobe 16: %.3f\n", rsq);
  assert_true(rsq >= 0.8);
  m3_index_close(ix);

  CHECK_OK(it_put(s, ids, embs + DIM, 1)); /* the store changed: rebuilt */
  it_ref_set(&ref, ids[0], embs + DIM);
  CHECK_OK(m3_index_open(s, &o, &ix));
  m3_index_info_get(ix, &info);
  assert_int_equal(info.loaded, 0);
  CHECK_CONTAINS(info.reason, "store changed");
  m3_index_close(ix);

  m3_store_close(s);
  it_ref_free(&ref);
  free(centers);
  free(embs);
  free(ids);
  m3t_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_recall)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
