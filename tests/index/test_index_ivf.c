/*
 * Factories other than exact Flat: "IVF4,Flat" trains (on a sample when
 * train_sample is smaller than the store) and with nprobe covering every
 * list returns exactly the brute-force top-k, before and after a reload and
 * across add/remove; a quantized "IVF4,SQ8" finds each stored vector first;
 * training with too few or no vectors fails with M3_EINVAL; "IDMap,HNSW16"
 * searches but cannot remove (M3_EUNSUPPORTED).
 */
#include <stdlib.h>

#include "index/index_testlib.h"

enum { DIM = 32, N = 400, NQ = 16, K = 10 };

typedef struct fixture {
  char *dir;
  m3_store *s;
  m3_index *ix;
  it_ref ref;
  float q[NQ * DIM];
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->dir = m3t_mkdtemp("ivf");
  it_ref_init(&f->ref, DIM);
  f->s = it_store_open(f->dir, DIM);
  uint64_t seed = 31;
  for (int i = 0; i < NQ * DIM; i++) f->q[i] = m3t_randf(&seed);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  m3_index_close(f->ix);
  m3_store_close(f->s);
  it_ref_free(&f->ref);
  m3t_rmrf(f->dir);
  free(f->dir);
  free(f);
  return 0;
}

static void fill(fixture *f, size_t n) {
  uint64_t seed = 32, *ids = malloc(n * sizeof *ids);
  float *embs = malloc(n * DIM * sizeof *embs);
  for (size_t i = 0; i < n; i++) {
    ids[i] = 10 + 2 * i;
    m3t_randvec(&seed, embs + i * DIM, DIM);
    it_ref_set(&f->ref, ids[i], embs + i * DIM);
  }
  CHECK_OK(it_put(f->s, ids, embs, n));
  free(ids);
  free(embs);
}

static void test_ivf_flat_exact(void **state) {
  fixture *f = *state;
  fill(f, N);
  m3_index_options o;
  m3_index_options_init(&o);
  o.factory = "IVF4,Flat";
  o.params = "nprobe=4";
  o.train_sample = 200; /* a sample of half the store */
  CHECK_OK(m3_index_open(f->s, &o, &f->ix));
  m3_index_info inf;
  m3_index_info_get(f->ix, &inf);
  CHECK_U64(inf.trained, 1);
  CHECK_U64(inf.loaded, 0);
  CHECK_U64(inf.count, N);
  assert_string_equal(inf.factory, "IVF4,Flat");
  it_check_against_ref(f->ix, &f->ref, f->q, NQ, K, 1e-5);

  /* add, replace, remove */
  uint64_t ids[3] = {10, 12, 99999};
  CHECK_OK(m3_index_add(f->ix, ids, f->q, 3));
  for (int i = 0; i < 3; i++) it_ref_set(&f->ref, ids[i], f->q + i * DIM);
  uint64_t rm[2] = {14, 16};
  size_t removed;
  CHECK_OK(m3_index_remove(f->ix, rm, 2, &removed));
  CHECK_U64(removed, 2);
  it_ref_del(&f->ref, 14);
  it_ref_del(&f->ref, 16);
  CHECK_U64(m3_index_count(f->ix), f->ref.n);
  it_check_against_ref(f->ix, &f->ref, f->q, NQ, K, 1e-5);
  m3_index_close(f->ix);
  f->ix = NULL;

  /* the saved file (the store's state before those edits) reloads */
  it_ref_free(&f->ref);
  it_ref_init(&f->ref, DIM);
  {
    uint64_t seed = 32;
    float v[DIM];
    for (size_t i = 0; i < N; i++) {
      m3t_randvec(&seed, v, DIM);
      it_ref_set(&f->ref, 10 + 2 * i, v);
    }
  }
  CHECK_OK(m3_index_open(f->s, &o, &f->ix));
  m3_index_info_get(f->ix, &inf);
  CHECK_U64(inf.loaded, 1);
  CHECK_U64(inf.trained, 0);
  it_check_against_ref(f->ix, &f->ref, f->q, NQ, K, 1e-5);
}

static void test_ivf_sq8_finds_itself(void **state) {
  fixture *f = *state;
  fill(f, N);
  m3_index_options o;
  m3_index_options_init(&o);
  o.factory = "IVF4,SQ8";
  o.params = "nprobe=4";
  CHECK_OK(m3_index_open(f->s, &o, &f->ix));
  enum { M = 50 };
  uint64_t got[M];
  float sc[M];
  CHECK_OK(m3_index_search(f->ix, f->ref.vecs, M, 1, got, sc));
  for (int i = 0; i < M; i++) {
    CHECK_U64(got[i], f->ref.ids[i]);
    CHECK_NEAR(sc[i], 1.0, 0.02);
  }
}

static void test_training_needs_vectors(void **state) {
  fixture *f = *state;
  m3_index_options o;
  m3_index_options_init(&o);
  o.factory = "IVF16,Flat";
  CHECK_RC(m3_index_open(f->s, &o, &f->ix), M3_EINVAL); /* empty store */
  CHECK_CONTAINS(m3_errmsg(), "needs training");
  fill(f, 10);
  CHECK_RC(m3_index_open(f->s, &o, &f->ix), M3_EINVAL); /* 10 points, 16 lists */
  CHECK_CONTAINS(m3_errmsg(), "IVF16,Flat");
  assert_null(f->ix);
}

static void test_hnsw_cannot_remove(void **state) {
  fixture *f = *state;
  fill(f, N);
  m3_index_options o;
  m3_index_options_init(&o);
  o.factory = "IDMap,HNSW16";
  CHECK_OK(m3_index_open(f->s, &o, &f->ix));
  uint64_t got;
  CHECK_OK(m3_index_search(f->ix, f->ref.vecs + 5 * DIM, 1, 1, &got, NULL));
  CHECK_U64(got, f->ref.ids[5]);
  CHECK_RC(m3_index_remove(f->ix, &got, 1, NULL), M3_EUNSUPPORTED);
  CHECK_CONTAINS(m3_errmsg(), "IDMap,HNSW16");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_ivf_flat_exact, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ivf_sq8_finds_itself, setup, teardown),
      cmocka_unit_test_setup_teardown(test_training_needs_vectors, setup, teardown),
      cmocka_unit_test_setup_teardown(test_hnsw_cannot_remove, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
