/*
 * Memory3 token selection primitives against brute force: the log-sum-exp
 * scores equal log(sum exp) computed plainly, stay exact where a plain f32
 * sum overflows, rank like w_j (not like a per-query-normalized sum), and
 * the top-k never takes BOS/prefix tokens, breaks ties to the lower
 * position and returns positions in order.
 */
#include <math.h>
#include <stdlib.h>

#include "m3/forward.h"
#include "unit/testutil.h"

static double urand(uint64_t *s) { return m3t_unif(s) * 2 - 1; }

/* Brute force in double, in the log domain (exact for any magnitude). */
static void brute_logw(const float *q, int G, const float *k, int len, int D, double *lw) {
  for (int j = 0; j < len; j++) {
    double mx = -INFINITY, s[4096];
    int n = 0;
    for (int a = 0; a < G; a++)
      for (int i = 0; i < len; i++) {
        double dot = 0;
        for (int d = 0; d < D; d++) dot += (double)q[(size_t)i * G * D + a * D + d] * k[(size_t)j * D + d];
        s[n] = dot / sqrt((double)D);
        if (s[n] > mx) mx = s[n];
        n++;
      }
    double sum = 0;
    for (int t = 0; t < n; t++) sum += exp(s[t] - mx);
    lw[j] = mx + log(sum);
  }
}

static void check_logw(double amp, double tol) {
  enum { G = 3, LEN = 40, D = 16 };
  uint64_t rs = 5;
  float q[LEN * G * D], k[LEN * D], scratch[G * LEN * LEN];
  double lw[LEN], want[LEN];
  for (int i = 0; i < LEN * G * D; i++) q[i] = (float)(amp * urand(&rs));
  for (int i = 0; i < LEN * D; i++) k[i] = (float)(amp * urand(&rs));
  m3_select_logw(q, G * D, G, k, D, LEN, D, scratch, lw);
  brute_logw(q, G, k, LEN, D, want);
  for (int j = 0; j < LEN; j++) {
    assert_true(isfinite(lw[j]));
    if (fabs(lw[j] - want[j]) > tol * fmax(1.0, fabs(want[j])))
      fail_msg("amp %g: log w[%d] = %.12g, brute force %.12g", amp, j, lw[j], want[j]);
  }
}

static void test_logw_matches_brute_force(void **state) { check_logw(1.0, 1e-6); }

/* Scores of several hundred: exp overflows f32 (and a plain sum in f32
 * would be inf for every token); the per-key max keeps it exact. */
static void test_logw_no_overflow(void **state) { check_logw(16.0, 1e-6); }

/* One query with huge scores dominates w_j. Normalizing each query by its
 * own max (a tempting "stabilization") would rank by the other queries;
 * the true w_j ranks token 1 first. */
static void test_ranking_is_that_of_w(void **state) {
  enum { LEN = 3, D = 2 };
  /* keys: k0 = (1,0), k1 = (0,1), k2 = (0.5,0.5)*... */
  float k[LEN * D] = {1, 0, 0, 1, 0.7f, 0.7f};
  /* q0 strongly likes k1; q1, q2 mildly like k0. */
  float q[LEN * D] = {0, 60, 3, 0, 3, 0};
  float scratch[LEN * LEN];
  double lw[LEN];
  m3_select_logw(q, D, 1, k, D, LEN, D, scratch, lw);
  uint16_t pos[1];
  assert_int_equal(m3_select_topk(lw, LEN, 0, 1, pos), 1);
  assert_int_equal(pos[0], 1);
  /* Per-query normalization would have picked k0: check that it would. */
  double w0 = 0, w1 = 0;
  for (int i = 0; i < LEN; i++) {
    double s[LEN], mx = -INFINITY, z = 0;
    for (int j = 0; j < LEN; j++) {
      s[j] = (q[i * D] * k[j * D] + q[i * D + 1] * k[j * D + 1]) / sqrt(2.0);
      mx = fmax(mx, s[j]);
    }
    for (int j = 0; j < LEN; j++) z += exp(s[j] - mx);
    w0 += exp(s[0] - mx) / z, w1 += exp(s[1] - mx) / z;
  }
  assert_true(w0 > w1);
}

static void test_topk_skips_prefix_even_when_highest(void **state) {
  double lw[10] = {100, 90, 80, 1, 5, 3, 7, 2, 6, 4};
  uint16_t pos[4];
  assert_int_equal(m3_select_topk(lw, 10, 3, 4, pos), 4);
  /* top 4 of positions 3..9 by score: 6 (7), 8 (6), 4 (5), 9 (4) -> in position order */
  uint16_t want[4] = {4, 6, 8, 9};
  assert_memory_equal(pos, want, sizeof want);
}

static void test_topk_ties_lower_position_first(void **state) {
  double lw[6] = {0, 2, 2, 2, 1, 2};
  uint16_t pos[2];
  assert_int_equal(m3_select_topk(lw, 6, 1, 2, pos), 2);
  assert_int_equal(pos[0], 1);
  assert_int_equal(pos[1], 2);
}

static void test_topk_fewer_candidates(void **state) {
  double lw[5] = {9, 9, 9, 1, 2};
  uint16_t pos[8];
  assert_int_equal(m3_select_topk(lw, 5, 3, 8, pos), 2);
  assert_int_equal(pos[0], 3);
  assert_int_equal(pos[1], 4);
  for (int k = 2; k < 8; k++) assert_int_equal(pos[k], M3_POS_NONE);
  assert_int_equal(m3_select_topk(lw, 5, 5, 8, pos), 0);
  assert_int_equal(pos[0], M3_POS_NONE);
}

/* Random scores: top-k equals a full sort. */
static void test_topk_random_against_sort(void **state) {
  uint64_t rs = 11;
  for (int trial = 0; trial < 200; trial++) {
    int len = 1 + (int)(m3t_rand(&rs) % 128), np = (int)(m3t_rand(&rs) % 6), T = 1 + (int)(m3t_rand(&rs) % 12);
    if (np > len) np = len;
    double lw[128];
    for (int j = 0; j < len; j++) lw[j] = (double)(m3t_rand(&rs) % 50); /* many ties */
    uint16_t pos[12];
    int n = m3_select_topk(lw, len, np, T, pos);
    int cand = len - np;
    assert_int_equal(n, cand < T ? cand : T);
    /* every chosen one beats (or ties with a higher position than) every other candidate */
    for (int k = 0; k < n; k++) {
      assert_true(pos[k] >= np && pos[k] < len);
      if (k) assert_true(pos[k] > pos[k - 1]);
      for (int j = np; j < len; j++) {
        int chosen = 0;
        for (int c = 0; c < n; c++) chosen |= pos[c] == j;
        if (!chosen)
          assert_true(lw[pos[k]] > lw[j] || (lw[pos[k]] == lw[j] && pos[k] < j));
      }
    }
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_logw_matches_brute_force),
      cmocka_unit_test(test_logw_no_overflow),
      cmocka_unit_test(test_ranking_is_that_of_w),
      cmocka_unit_test(test_topk_skips_prefix_even_when_highest),
      cmocka_unit_test(test_topk_ties_lower_position_first),
      cmocka_unit_test(test_topk_fewer_candidates),
      cmocka_unit_test(test_topk_random_against_sort),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
