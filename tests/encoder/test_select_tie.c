/*
 * The tie check the CUDA test relies on (select_tie.c), on hand-made scores:
 * equal selections pass with 0 differences; a swap at the boundary between
 * two scores within the tolerance passes and is counted; a swap with a
 * score off the boundary, a position outside the candidates (prefix or past
 * len), a repeated or unordered position, a wrong count of selected slots
 * all fail with a reason naming the slot.
 */
#include <math.h>

#include "encoder/select_tie.h"
#include "m3/forward.h"
#include "unit/testutil.h"

#define N 4
#define NONE M3_POS_NONE

/* Candidates are positions 1..9 (position 0 is the prefix). The top 4:
 * 3 (5.0), 7 (4.0), 2 (3.0), and at the boundary 5 (1.0) tied with 8
 * (1.0 + 1e-7); 4 scores 0.5, well below. */
static const double logw[10] = {9.0, 0.1, 3.0, 5.0, 0.5, 1.0, 0.2, 4.0, 1.0 + 1e-7, 0.3};

static void expect_fail(const uint16_t *a, const uint16_t *b, int len, int n_prefix, const char *want) {
  char why[300] = "";
  int d = sel_tie_check(logw, len, n_prefix, N, a, b, 1e-5, why, sizeof why);
  if (d != -1) fail_msg("%s: returned %d, want -1", want, d);
  if (strstr(why, want) == NULL) fail_msg("reason '%s' does not say '%s'", why, want);
}

static void test_equal_and_ties(void **state) {
  (void)state;
  char why[300] = "";
  uint16_t best[N] = {2, 3, 5, 7}, tie[N] = {2, 3, 7, 8};
  assert_int_equal(sel_tie_check(logw, 10, 1, N, best, best, 1e-5, why, sizeof why), 0);
  /* 5 and 8 tie at the boundary: one position differs, either way. */
  assert_int_equal(sel_tie_check(logw, 10, 1, N, best, tie, 1e-5, why, sizeof why), 1);
  assert_int_equal(sel_tie_check(logw, 10, 1, N, tie, best, 1e-5, why, sizeof why), 1);
  /* The same swap with a tolerance below the gap is not a tie. */
  assert_int_equal(sel_tie_check(logw, 10, 1, N, best, tie, 1e-8, why, sizeof why), -1);
  assert_non_null(strstr(why, "not a tie"));
  /* Fewer candidates than slots: the rest is none, on both sides. */
  assert_int_equal(sel_tie_check(logw, 4, 1, N, (uint16_t[N]){1, 2, 3, NONE},
                                 (uint16_t[N]){1, 2, 3, NONE}, 1e-5, why, sizeof why), 0);
  assert_int_equal(sel_tie_check(logw, 3, 1, N, (uint16_t[N]){1, 2, NONE, NONE},
                                 (uint16_t[N]){1, 2, NONE, NONE}, 1e-5, why, sizeof why), 0);
  /* No candidates at all: every slot none. */
  uint16_t none[N] = {NONE, NONE, NONE, NONE};
  assert_int_equal(sel_tie_check(logw, 1, 1, N, none, none, 1e-5, why, sizeof why), 0);
}

static void test_not_ties(void **state) {
  (void)state;
  uint16_t best[N] = {2, 3, 5, 7};
  /* 4 (0.5) for 5 (1.0): off the boundary by 0.5. */
  expect_fail(best, (uint16_t[N]){2, 3, 4, 7}, 10, 1, "b slot 2: position 4 (log w 0.5) is not in a");
  /* 2 (3.0, well above the boundary) swapped for 8 (a tie): 2 is no tie. */
  expect_fail(best, (uint16_t[N]){3, 5, 7, 8}, 10, 1, "a slot 0: position 2 (log w 3) is not in b");
  /* The prefix position 0 is never a candidate, whatever it scores. */
  expect_fail(best, (uint16_t[N]){0, 2, 3, 7}, 10, 1, "b slot 0: position 0 outside the candidates [1, 10)");
  /* Past len. */
  expect_fail((uint16_t[N]){2, 3, 5, 12}, best, 10, 1, "a slot 3: position 12 outside");
  /* Repeated and unordered positions. */
  expect_fail(best, (uint16_t[N]){2, 3, 3, 7}, 10, 1, "b slot 2: position 3 after 3");
  expect_fail(best, (uint16_t[N]){3, 2, 5, 7}, 10, 1, "b slot 1: position 2 after 3");
  /* A slot left empty while candidates remain, and one filled past them. */
  expect_fail(best, (uint16_t[N]){2, 3, 7, NONE}, 10, 1, "b slot 3: position 65535 outside");
  expect_fail((uint16_t[N]){1, 2, 3, NONE}, (uint16_t[N]){1, 2, 3, 3}, 4, 1,
              "b slot 3: position 3, want none (only 3 candidates)");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_equal_and_ties),
      cmocka_unit_test(test_not_ties),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
