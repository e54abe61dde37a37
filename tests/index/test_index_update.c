/*
 * Keeping the index current: add new ids, add an id again (replaces its
 * vector), add a zero vector (removes), remove present and absent ids; after
 * each step search equals the brute force over what should be there. Bad
 * batches (repeated id, UINT64_MAX, non-finite values) fail and change
 * nothing.
 */
#include <math.h>
#include <stdlib.h>

#include "index/index_testlib.h"

enum { DIM = 16 };

typedef struct fixture {
  char *dir;
  m3_store *s;
  m3_index *ix;
  it_ref ref;
  float q[10 * DIM];
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->dir = m3t_mkdtemp("update");
  it_ref_init(&f->ref, DIM);
  f->s = it_store_open(f->dir, DIM);
  uint64_t seed = 11;
  uint64_t ids[200];
  float embs[200 * DIM];
  for (int i = 0; i < 200; i++) {
    ids[i] = (uint64_t)i * 10;
    m3t_randvec(&seed, embs + i * DIM, DIM);
    it_ref_set(&f->ref, ids[i], embs + i * DIM);
  }
  CHECK_OK(it_put(f->s, ids, embs, 200));
  CHECK_OK(m3_index_open(f->s, NULL, &f->ix));
  for (int i = 0; i < 10 * DIM; i++) f->q[i] = m3t_randf(&seed);
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

static void check(fixture *f) {
  CHECK_U64(m3_index_count(f->ix), f->ref.n);
  it_check_against_ref(f->ix, &f->ref, f->q, 10, 8, 1e-5);
}

static void test_add_new(void **state) {
  fixture *f = *state;
  uint64_t seed = 12, ids[50];
  float v[50 * DIM];
  for (int i = 0; i < 50; i++) {
    ids[i] = 100000 + (uint64_t)i;
    m3t_randvec(&seed, v + i * DIM, DIM);
    it_ref_set(&f->ref, ids[i], v + i * DIM);
  }
  CHECK_OK(m3_index_add(f->ix, ids, v, 50));
  check(f);
  /* ids with the top bit set are fine (FAISS sees them negative) */
  uint64_t big = (1ull << 63) + 5;
  CHECK_OK(m3_index_add(f->ix, &big, f->q, 1));
  it_ref_set(&f->ref, big, f->q);
  check(f);
  uint64_t got;
  CHECK_OK(m3_index_search(f->ix, f->q, 1, 1, &got, NULL));
  CHECK_U64(got, big);
}

static void test_replace(void **state) {
  fixture *f = *state;
  /* give ids 0..90 the queries' own vectors: each query must find its id */
  uint64_t ids[10];
  for (int i = 0; i < 10; i++) {
    ids[i] = (uint64_t)i * 10;
    it_ref_set(&f->ref, ids[i], f->q + i * DIM);
  }
  size_t before = m3_index_count(f->ix);
  CHECK_OK(m3_index_add(f->ix, ids, f->q, 10));
  CHECK_U64(m3_index_count(f->ix), before); /* replaced, not duplicated */
  check(f);
  uint64_t got[10];
  float sc[10];
  CHECK_OK(m3_index_search(f->ix, f->q, 10, 1, got, sc));
  for (int i = 0; i < 10; i++) {
    CHECK_U64(got[i], ids[i]);
    CHECK_NEAR(sc[i], 1.0, 1e-5);
  }
}

static void test_remove(void **state) {
  fixture *f = *state;
  uint64_t ids[] = {0, 10, 20, 777777, 1990};
  size_t removed = 99;
  CHECK_OK(m3_index_remove(f->ix, ids, 5, &removed));
  CHECK_U64(removed, 4);
  for (int i = 0; i < 5; i++) it_ref_del(&f->ref, ids[i]);
  check(f);
  CHECK_OK(m3_index_remove(f->ix, ids, 5, &removed));
  CHECK_U64(removed, 0);
  CHECK_OK(m3_index_remove(f->ix, ids, 0, NULL));
  /* a zero vector removes too */
  float zero[DIM] = {0};
  uint64_t id = 30;
  CHECK_OK(m3_index_add(f->ix, &id, zero, 1));
  it_ref_del(&f->ref, 30);
  check(f);
  m3_index_info inf;
  m3_index_info_get(f->ix, &inf);
  CHECK_U64(inf.unsaved, 3); /* the n = 0 remove is no call */
}

static void test_bad_batches(void **state) {
  fixture *f = *state;
  uint64_t dup[3] = {5, 6, 5};
  CHECK_RC(m3_index_add(f->ix, dup, f->q, 3), M3_EINVAL);
  CHECK_CONTAINS(m3_errmsg(), "twice");
  uint64_t max = UINT64_MAX;
  CHECK_RC(m3_index_add(f->ix, &max, f->q, 1), M3_ERANGE);
  float inf[DIM];
  memcpy(inf, f->q, sizeof inf);
  inf[5] = INFINITY;
  uint64_t id = 12345;
  CHECK_RC(m3_index_add(f->ix, &id, inf, 1), M3_EINVAL);
  CHECK_OK(m3_index_add(f->ix, &id, f->q, 0));
  check(f); /* nothing changed */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_add_new, setup, teardown),
      cmocka_unit_test_setup_teardown(test_replace, setup, teardown),
      cmocka_unit_test_setup_teardown(test_remove, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_batches, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
