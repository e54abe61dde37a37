/*
 * Exact search over a real store: the default "IDMap,Flat" index returns the
 * brute-force cosine top-k (ids exact, scores to 1e-5); a batch of queries
 * equals the same queries searched one by one; ties are ordered by id, also
 * at the k-th place; short lists pad; memories without an embedding are not
 * indexed; bad arguments and stores without embeddings fail with their codes.
 */
#include <math.h>
#include <stdlib.h>

#include "index/index_testlib.h"

enum { DIM = 32, N = 500 };

typedef struct fixture {
  char *dir;
  m3_store *s;
  m3_index *ix;
  it_ref ref;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->dir = m3t_mkdtemp("search");
  it_ref_init(&f->ref, DIM);
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

/* N random embeddings under ids 1000 + 3i, put in batches of 100. */
static void fill(fixture *f, uint64_t seed) {
  f->s = it_store_open(f->dir, DIM);
  uint64_t ids[100];
  float embs[100 * DIM];
  for (size_t b = 0; b < N / 100; b++) {
    for (size_t i = 0; i < 100; i++) {
      ids[i] = 1000 + 3 * (b * 100 + i);
      m3t_randvec(&seed, embs + i * DIM, DIM);
      it_ref_set(&f->ref, ids[i], embs + i * DIM);
    }
    CHECK_OK(it_put(f->s, ids, embs, 100));
  }
}

static void test_exact_equals_brute_force(void **state) {
  fixture *f = *state;
  fill(f, 1);
  CHECK_OK(m3_index_open(f->s, NULL, &f->ix));
  CHECK_U64(m3_index_count(f->ix), N);
  CHECK_U64(m3_index_dim(f->ix), DIM);
  uint64_t seed = 99;
  float q[20 * DIM];
  for (int i = 0; i < 20; i++) m3t_randvec(&seed, q + i * DIM, DIM);
  it_check_against_ref(f->ix, &f->ref, q, 20, 10, 1e-5);
  it_check_against_ref(f->ix, &f->ref, q, 1, 1, 1e-5);
  /* a stored vector scaled finds itself first with cosine 1 */
  float v[DIM];
  for (int j = 0; j < DIM; j++) v[j] = 7.5f * f->ref.vecs[17 * DIM + j];
  uint64_t id;
  float sc;
  CHECK_OK(m3_index_search(f->ix, v, 1, 1, &id, &sc));
  CHECK_U64(id, f->ref.ids[17]);
  CHECK_NEAR(sc, 1.0, 1e-5);
}

static void test_batch_equals_single(void **state) {
  fixture *f = *state;
  fill(f, 2);
  CHECK_OK(m3_index_open(f->s, NULL, &f->ix));
  /* 64 queries: past FAISS's BLAS threshold (20), so the batch takes the
   * other code path than a single query does */
  enum { NQ = 64, K = 5 };
  float *q = malloc(NQ * DIM * sizeof *q);
  uint64_t seed = 7;
  for (int i = 0; i < NQ * DIM; i++) q[i] = m3t_randf(&seed);
  uint64_t ids[NQ * K], one[K];
  float sc[NQ * K], os[K];
  CHECK_OK(m3_index_search(f->ix, q, NQ, K, ids, sc));
  for (int i = 0; i < NQ; i++) {
    CHECK_OK(m3_index_search(f->ix, q + i * DIM, 1, K, one, os));
    for (int j = 0; j < K; j++) {
      CHECK_U64(ids[i * K + j], one[j]);
      CHECK_NEAR(sc[i * K + j], os[j], 1e-5);
    }
  }
  /* scores may be NULL */
  CHECK_OK(m3_index_search(f->ix, q, NQ, K, ids, NULL));
  for (int j = 0; j < K; j++) CHECK_U64(ids[(NQ - 1) * K + j], one[j]);
  free(q);
}

static void test_ties_ordered_by_id(void **state) {
  fixture *f = *state;
  f->s = it_store_open(f->dir, DIM);
  /* 40 copies of one vector (ids 300..261 put in descending order) and 40 of
   * another, plus noise: the tie spans the k-th place and the look-ahead */
  enum { C = 40 };
  uint64_t ids[2 * C + 10];
  float embs[(2 * C + 10) * DIM];
  uint64_t seed = 3;
  float a[DIM], b[DIM];
  m3t_randvec(&seed, a, DIM);
  m3t_randvec(&seed, b, DIM);
  for (int i = 0; i < C; i++) {
    ids[i] = 300 - (uint64_t)i;
    memcpy(embs + i * DIM, a, sizeof a);
    ids[C + i] = 5000 + (uint64_t)i;
    memcpy(embs + (C + i) * DIM, b, sizeof b);
  }
  for (int i = 0; i < 10; i++) {
    ids[2 * C + i] = 9000 + (uint64_t)i;
    m3t_randvec(&seed, embs + (2 * C + i) * DIM, DIM);
  }
  CHECK_OK(it_put(f->s, ids, embs, 2 * C + 10));
  CHECK_OK(m3_index_open(f->s, NULL, &f->ix));
  /* A rebuild adds in chunk id order, and FAISS keeps the first of equal
   * scores it meets: re-add the copies of a with the highest ids first, so
   * that only the tie-breaking (looking past k) can put 261.. on top. */
  CHECK_OK(m3_index_add(f->ix, ids, embs, C));
  enum { K = 25 };
  uint64_t got[32 * K];
  float sc[32 * K];
  float q[32 * DIM];
  for (int i = 0; i < 32; i++) memcpy(q + i * DIM, a, sizeof a);
  for (int round = 0; round < 2; round++) { /* single, then a batch of 32 */
    size_t nq = round ? 32 : 1;
    CHECK_OK(m3_index_search(f->ix, q, nq, K, got, sc));
    for (size_t r = 0; r < nq; r++)
      for (int j = 0; j < K; j++) {
        CHECK_U64(got[r * K + j], 261 + (uint64_t)j); /* all ties: ids ascending */
        CHECK_NEAR(sc[r * K + j], 1.0, 1e-5);
      }
  }
}

static void test_pads_and_zero_vectors(void **state) {
  fixture *f = *state;
  f->s = it_store_open(f->dir, DIM);
  uint64_t ids[4] = {1, 2, 3, 4};
  float embs[4 * DIM];
  uint64_t seed = 5;
  for (int i = 0; i < 4 * DIM; i++) embs[i] = m3t_randf(&seed);
  memset(embs + 2 * DIM, 0, DIM * sizeof(float)); /* id 3: zero, not indexed */
  CHECK_OK(it_put(f->s, ids, embs, 4));
  uint64_t nid = 5;
  CHECK_OK(it_put(f->s, &nid, NULL, 1)); /* no embedding: zeros */
  CHECK_OK(m3_index_open(f->s, NULL, &f->ix));
  CHECK_U64(m3_index_count(f->ix), 3);
  uint64_t got[6];
  float sc[6];
  CHECK_OK(m3_index_search(f->ix, embs, 1, 6, got, sc));
  CHECK_U64(got[0], 1);
  for (int j = 3; j < 6; j++) {
    CHECK_U64(got[j], UINT64_MAX);
    assert_true(isinf(sc[j]) && sc[j] < 0);
  }
  for (int j = 0; j < 3; j++) assert_true(got[j] == 1 || got[j] == 2 || got[j] == 4);
  /* an all-zero query scores 0 against everything: ids in order */
  float zq[DIM] = {0};
  CHECK_OK(m3_index_search(f->ix, zq, 1, 3, got, sc));
  CHECK_U64(got[0], 1);
  CHECK_U64(got[1], 2);
  CHECK_U64(got[2], 4);
  for (int j = 0; j < 3; j++) CHECK_NEAR(sc[j], 0.0, 1e-7);
  /* nq = 0 or k = 0: nothing to do */
  CHECK_OK(m3_index_search(f->ix, zq, 0, 3, got, sc));
  CHECK_OK(m3_index_search(f->ix, zq, 1, 0, got, sc));
  /* bad arguments */
  float bad[DIM] = {0};
  bad[3] = NAN;
  CHECK_RC(m3_index_search(f->ix, bad, 1, 3, got, sc), M3_EINVAL);
  CHECK_CONTAINS(m3_errmsg(), "non-finite");
  CHECK_RC(m3_index_search(f->ix, zq, 1, M3_INDEX_MAX_K + 1, got, sc), M3_ERANGE);
}

static void test_empty_store(void **state) {
  fixture *f = *state;
  f->s = it_store_open(f->dir, DIM);
  CHECK_OK(m3_index_open(f->s, NULL, &f->ix));
  CHECK_U64(m3_index_count(f->ix), 0);
  float q[DIM] = {1};
  uint64_t got[2];
  float sc[2];
  CHECK_OK(m3_index_search(f->ix, q, 1, 2, got, sc));
  CHECK_U64(got[0], UINT64_MAX);
  CHECK_U64(got[1], UINT64_MAX);
}

static void test_store_without_embeddings(void **state) {
  fixture *f = *state;
  f->s = it_store_open(f->dir, 0);
  CHECK_RC(m3_index_open(f->s, NULL, &f->ix), M3_EUNSUPPORTED);
  CHECK_CONTAINS(m3_errmsg(), "emb_dim 0");
  CHECK_CONTAINS(m3_errmsg(), f->dir);
  assert_null(f->ix);
}

static void test_bad_factories(void **state) {
  fixture *f = *state;
  fill(f, 4);
  m3_index_options o;
  m3_index_options_init(&o);
  o.factory = "NoSuchIndex42";
  CHECK_RC(m3_index_open(f->s, &o, &f->ix), M3_EINVAL);
  CHECK_CONTAINS(m3_errmsg(), "NoSuchIndex42");
  o.factory = "Flat"; /* takes no ids */
  CHECK_RC(m3_index_open(f->s, &o, &f->ix), M3_EINVAL);
  CHECK_CONTAINS(m3_errmsg(), "IDMap,Flat");
  o.factory = "IDMap,Flat\nseqno 1";
  CHECK_RC(m3_index_open(f->s, &o, &f->ix), M3_EINVAL);
  o.factory = "IDMap,Flat";
  o.params = "nosuchparam=3";
  CHECK_RC(m3_index_open(f->s, &o, &f->ix), M3_EINVAL);
  CHECK_CONTAINS(m3_errmsg(), "nosuchparam");
  assert_null(f->ix);
}

/* 3000 copies of one vector: every row is one tie. The search looks deeper
 * once per query (never a walk down the index), and still returns k ties. */
static void test_tie_depth_capped(void **state) {
  fixture *f = *state;
  f->s = it_store_open(f->dir, DIM);
  enum { NDUP = 3000, K = 4 };
  uint64_t *ids = malloc(NDUP * sizeof *ids);
  float *embs = malloc((size_t)NDUP * DIM * sizeof *embs);
  uint64_t seed = 5;
  float a[DIM];
  m3t_randvec(&seed, a, DIM);
  for (int i = 0; i < NDUP; i++) {
    ids[i] = (uint64_t)i;
    memcpy(embs + (size_t)i * DIM, a, sizeof a);
  }
  CHECK_OK(it_put(f->s, ids, embs, NDUP));
  CHECK_OK(m3_index_open(f->s, NULL, &f->ix));
  float q[3 * DIM];
  for (int i = 0; i < 3; i++) memcpy(q + i * DIM, a, sizeof a);
  uint64_t got[3 * K];
  float sc[3 * K];
  CHECK_OK(m3_index_search(f->ix, q, 3, K, got, sc));
  m3_index_info info;
  m3_index_info_get(f->ix, &info);
  CHECK_U64(info.tie_scans, 3); /* one extra scan per query */
  for (int j = 0; j < 3 * K; j++) {
    assert_true(got[j] < NDUP);
    CHECK_NEAR(sc[j], 1.0, 1e-5);
  }
  free(ids);
  free(embs);
}

/* A store vector the index cannot hold (NaN) is left out of a rebuild and
 * counted; the rest is indexed. */
static void test_rebuild_skips_non_finite(void **state) {
  fixture *f = *state;
  f->s = it_store_open(f->dir, DIM);
  uint64_t ids[3] = {1, 2, 3};
  float embs[3 * DIM];
  uint64_t seed = 9;
  for (int i = 0; i < 3; i++) m3t_randvec(&seed, embs + i * DIM, DIM);
  embs[DIM + 4] = NAN; /* chunk 2 */
  CHECK_OK(it_put(f->s, ids, embs, 3));
  CHECK_OK(m3_index_open(f->s, NULL, &f->ix));
  m3_index_info info;
  m3_index_info_get(f->ix, &info);
  CHECK_U64(info.skipped, 1);
  CHECK_U64(info.count, 2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_exact_equals_brute_force, setup, teardown),
      cmocka_unit_test_setup_teardown(test_batch_equals_single, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ties_ordered_by_id, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pads_and_zero_vectors, setup, teardown),
      cmocka_unit_test_setup_teardown(test_empty_store, setup, teardown),
      cmocka_unit_test_setup_teardown(test_store_without_embeddings, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_factories, setup, teardown),
      cmocka_unit_test_setup_teardown(test_tie_depth_capped, setup, teardown),
      cmocka_unit_test_setup_teardown(test_rebuild_skips_non_finite, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
