/*
 * The CPU forward of the memory layers against the naive reference
 * (ref_forward.c) on a tiny random model: keys after rotary and values of
 * the selected tokens within 1e-4 relative, the selection equal to brute
 * force, padding in a batch changing nothing, prefix tokens never chosen.
 */
#include <math.h>
#include <stdlib.h>

#include "encoder/ref_forward.h"
#include "encoder/select_tie.h"
#include "m3/forward.h"
#include "m3/model.h"
#include "unit/testutil.h"

#define T_SEL 8

static char *g_dir;

static int setup(void **state) {
  g_dir = m3t_mkdtemp("enc-fwd");
  m3_testmodel_params p;
  m3_testmodel_params_default(&p); /* 4 layers, hidden 64, 4 heads, 2 KV, hd 16, vocab 97 */
  p.seed = 7;
  return m3_testmodel_write(g_dir, &p);
}

static int teardown(void **state) {
  m3t_rmrf(g_dir);
  free(g_dir);
  return 0;
}

/* ||a - b|| <= tol * ||b|| over D values, elementwise printed on failure. */
static void check_vec(const float *a, const double *b, int D, double tol, const char *what, int l,
                      int g, int t) {
  double num = 0, den = 0;
  for (int d = 0; d < D; d++) num += (a[d] - b[d]) * (a[d] - b[d]), den += b[d] * b[d];
  if (sqrt(num) > tol * sqrt(den) + 1e-12)
    fail_msg("%s layer %d head %d token %d: relative error %.3g > %.3g (a[0]=%.9g b[0]=%.9g)",
             what, l, g, t, sqrt(num / (den > 0 ? den : 1)), tol, a[0], b[0]);
}

/* Compare one sequence's memory with the reference: selection vs brute
 * force (near-ties excepted), K/V at the chosen positions. */
static void check_seq(const ref_out *r, int n_prefix, const uint16_t *pos, const float *kv, int L,
                      int K, int D) {
  for (int l = 0; l < L; l++)
    for (int g = 0; g < K; g++) {
      const uint16_t *p = pos + ((size_t)l * K + g) * T_SEL;
      const double *lw = r->logw + ((size_t)l * K + g) * r->len;
      uint16_t want[T_SEL];
      int n = ref_select(lw, r->len, n_prefix, T_SEL, want);
      /* Only a near-tie at the boundary may differ (f32 vs double). */
      double mag = 1;
      for (int j = 0; j < r->len; j++) mag = fmax(mag, fabs(lw[j]));
      char why[300];
      if (sel_tie_check(lw, r->len, n_prefix, T_SEL, p, want, 1e-5 * mag, why, sizeof why) < 0)
        fail_msg("layer %d head %d: forward (a) against brute force (b): %s", l, g, why);
      for (int k = 0; k < n; k++) {
        const float *ko = kv + ((((size_t)l * 2 + 0) * K + g) * T_SEL + k) * D;
        const float *vo = kv + ((((size_t)l * 2 + 1) * K + g) * T_SEL + k) * D;
        check_vec(ko, r->k + (((size_t)l * K + g) * r->len + p[k]) * D, D, 1e-4, "K", l, g, p[k]);
        check_vec(vo, r->v + (((size_t)l * K + g) * r->len + p[k]) * D, D, 1e-4, "V", l, g, p[k]);
      }
    }
}

static void run_against_reference(int n_mem) {
  m3_model *m = NULL;
  m3_forward *f = NULL;
  m3_model_opts mo = {.n_mem_layers = n_mem};
  CHECK_OK(m3_model_open(g_dir, &mo, &m));
  m3_forward_opts fo = {.backend = "cpu", .max_batch = 4, .max_seq = 32, .n_tokens = T_SEL};
  CHECK_OK(m3_forward_create(m, &fo, &f));
  m3_spec sp = m3_forward_spec(f);
  assert_int_equal(sp.n_layers, n_mem ? n_mem : 2); /* default: half of 4 layers */
  assert_int_equal(sp.n_kv_heads, 2);
  assert_int_equal(sp.head_dim, 16);
  int L = sp.n_layers, K = sp.n_kv_heads, D = sp.head_dim, S = 24;
  /* Three sequences of different lengths, right-padded with junk ids. */
  int32_t lens[3] = {24, 17, 11}, npre[3] = {3, 3, 1}, tokens[3 * 24];
  uint64_t rs = 99;
  for (int s = 0; s < 3; s++)
    for (int t = 0; t < S; t++)
      tokens[s * S + t] = t == 0 ? 1 : t < lens[s] ? (int32_t)(m3t_rand(&rs) % 97) : 96;
  size_t mem_kv = (size_t)L * 2 * K * T_SEL * D, mem_pos = (size_t)L * K * T_SEL;
  uint16_t *pos = calloc(3 * mem_pos, 2);
  float *kv = calloc(3 * mem_kv, sizeof(float));
  int32_t nsel[3];
  m3_batch b = {3, S, tokens, lens, npre};
  m3_memories out = {pos, kv, nsel};
  CHECK_OK(m3_forward_run(f, &b, &out));
  for (int s = 0; s < 3; s++) {
    assert_int_equal(nsel[s], T_SEL);
    ref_out r;
    CHECK_OK(ref_forward(g_dir, L, tokens + s * S, lens[s], &r));
    check_seq(&r, npre[s], pos + s * mem_pos, kv + s * mem_kv, L, K, D);
    ref_out_free(&r);
  }

  /* Companions and padding change nothing, to the bit: each sequence
   * alone and unpadded, and each beside other companions at another padded
   * length (31) and place, gives the very memory it gave in the batch (what
   * makes fleet slices the bytes of one process); other padding ids too. */
  uint16_t *pos1 = calloc(mem_pos, 2);
  float *kv1 = calloc(mem_kv, sizeof(float));
  for (int s = 0; s < 3; s++) {
    m3_batch b1 = {1, lens[s], tokens + s * S, &lens[s], &npre[s]};
    m3_memories o1 = {pos1, kv1, NULL};
    CHECK_OK(m3_forward_run(f, &b1, &o1));
    assert_memory_equal(pos1, pos + s * mem_pos, mem_pos * 2);
    for (size_t i = 0; i < mem_kv; i++)
      if (memcmp(&kv1[i], &kv[s * mem_kv + i], sizeof(float)))
        fail_msg("seq %d alone differs from batched at %zu: %.9g vs %.9g", s, i, kv1[i],
                 kv[s * mem_kv + i]);
  }
  enum { S4 = 31 };
  int32_t lens4[4], npre4[4], tokens4[4 * S4];
  uint16_t *pos4 = calloc(4 * mem_pos, 2);
  float *kv4 = calloc(4 * mem_kv, sizeof(float));
  for (int s = 0; s < 3; s++) {
    int at = 2 - s; /* sequence s at slot 2 - s, among random companions */
    for (int q = 0; q < 4; q++) {
      lens4[q] = q == at ? lens[s] : 5 + 8 * q, npre4[q] = q == at ? npre[s] : 1;
      for (int t = 0; t < S4; t++)
        tokens4[q * S4 + t] = q == at && t < S ? tokens[s * S + t] :
                              t == 0 ? 1 : (int32_t)(m3t_rand(&rs) % 97);
    }
    m3_batch b4 = {4, S4, tokens4, lens4, npre4};
    m3_memories o4 = {pos4, kv4, NULL};
    CHECK_OK(m3_forward_run(f, &b4, &o4));
    assert_memory_equal(pos4 + at * mem_pos, pos + s * mem_pos, mem_pos * 2);
    if (memcmp(kv4 + at * mem_kv, kv + s * mem_kv, mem_kv * sizeof(float)))
      fail_msg("seq %d beside other companions differs from its first batch", s);
  }
  free(pos4), free(kv4);
  for (int s = 0; s < 3; s++)
    for (int t = lens[s]; t < S; t++) tokens[s * S + t] = (int32_t)(m3t_rand(&rs) % 97);
  uint16_t *pos2 = calloc(3 * mem_pos, 2);
  float *kv2 = calloc(3 * mem_kv, sizeof(float));
  m3_memories out2 = {pos2, kv2, NULL};
  CHECK_OK(m3_forward_run(f, &b, &out2));
  assert_memory_equal(pos2, pos, 3 * mem_pos * 2);
  assert_memory_equal(kv2, kv, 3 * mem_kv * sizeof(float));

  free(pos), free(kv), free(pos1), free(kv1), free(pos2), free(kv2);
  m3_forward_destroy(f);
  m3_model_close(m);
}

static void test_forward_matches_reference_2_layers(void **state) { run_against_reference(0); }
static void test_forward_matches_reference_3_layers(void **state) { run_against_reference(3); }

/* BOS scores highest in the raw w_j of a real forward and is still never
 * chosen; chunks shorter than n_tokens leave M3_POS_NONE and zeros. */
static void test_prefix_never_selected_and_short_chunks(void **state) {
  m3_model *m = NULL;
  m3_forward *f = NULL;
  CHECK_OK(m3_model_open(g_dir, NULL, &m));
  m3_forward_opts fo = {.backend = "cpu", .max_batch = 2, .max_seq = 16};
  CHECK_OK(m3_forward_create(m, &fo, &f));
  m3_spec sp = m3_forward_spec(f);
  assert_int_equal(sp.n_tokens, 8);
  size_t mem_kv = (size_t)sp.n_layers * 2 * sp.n_kv_heads * 8 * sp.head_dim;
  size_t mem_pos = (size_t)sp.n_layers * sp.n_kv_heads * 8;
  int32_t tokens[2 * 16], lens[2] = {16, 5}, npre[2] = {4, 3}, nsel[2];
  for (int i = 0; i < 32; i++) tokens[i] = 1 + i % 5; /* repetitive: high-scoring prefix */
  uint16_t *pos = calloc(2 * mem_pos, 2);
  float *kv = calloc(2 * mem_kv, sizeof(float));
  m3_batch b = {2, 16, tokens, lens, npre};
  m3_memories out = {pos, kv, nsel};
  CHECK_OK(m3_forward_run(f, &b, &out));
  assert_int_equal(nsel[0], 8);
  assert_int_equal(nsel[1], 2);
  ref_out r;
  CHECK_OK(ref_forward(g_dir, sp.n_layers, tokens, 16, &r));
  int prefix_would_win = 0;
  for (size_t lg = 0; lg < (size_t)sp.n_layers * sp.n_kv_heads; lg++) {
    const double *lw = r.logw + lg * 16;
    uint16_t all[8];
    ref_select(lw, 16, 0, 8, all); /* what an unguarded selection picks */
    for (int k = 0; k < 8; k++) prefix_would_win += all[k] < 4;
    for (int k = 0; k < 8; k++) assert_true(pos[lg * 8 + k] >= 4);
  }
  assert_true(prefix_would_win > 0); /* the guard was exercised */
  check_seq(&r, 4, pos, kv, sp.n_layers, sp.n_kv_heads, sp.head_dim);
  ref_out_free(&r);
  for (size_t lg = 0; lg < (size_t)sp.n_layers * sp.n_kv_heads; lg++) {
    const uint16_t *p = pos + mem_pos + lg * 8;
    assert_int_equal(p[0], 3);
    assert_int_equal(p[1], 4);
    for (int k = 2; k < 8; k++) assert_int_equal(p[k], M3_POS_NONE);
  }
  const float *kv1 = kv + mem_kv;
  for (int l = 0; l < sp.n_layers; l++)
    for (int kvi = 0; kvi < 2; kvi++)
      for (int g = 0; g < sp.n_kv_heads; g++)
        for (int k = 2; k < 8; k++)
          for (int d = 0; d < sp.head_dim; d++)
            assert_true(kv1[((((size_t)l * 2 + kvi) * sp.n_kv_heads + g) * 8 + k) * sp.head_dim + d] == 0.0f);
  free(pos), free(kv);
  m3_forward_destroy(f);
  m3_model_close(m);
}

static void test_bad_batches(void **state) {
  m3_model *m = NULL;
  m3_forward *f = NULL;
  CHECK_OK(m3_model_open(g_dir, NULL, &m));
  m3_forward_opts fo = {.backend = "cpu", .max_batch = 2, .max_seq = 8};
  CHECK_OK(m3_forward_create(m, &fo, &f));
  assert_string_equal(m3_forward_backend_name(f), "cpu");
  int32_t tokens[16] = {1, 5, 6, 7, 97, 0, 0, 0}, lens[3] = {5, 3, 3}, npre[3] = {1, 1, 1};
  uint16_t pos[2 * 2 * 2 * 8];
  float kv[2 * 2 * 2 * 2 * 8 * 16];
  m3_memories out = {pos, kv, NULL};
  m3_batch b = {1, 8, tokens, lens, npre};
  CHECK_RC(m3_forward_run(f, &b, &out), M3_EINVAL); /* token 97 >= vocab */
  CHECK_CONTAINS(m3_errmsg(), "position 4");
  tokens[4] = 8;
  CHECK_OK(m3_forward_run(f, &b, &out));
  b.n_seq = 3;
  CHECK_RC(m3_forward_run(f, &b, &out), M3_EINVAL); /* > max_batch */
  b.n_seq = 1, b.seq_len = 9;
  CHECK_RC(m3_forward_run(f, &b, &out), M3_EINVAL); /* > max_seq */
  b.seq_len = 8, npre[0] = 6;
  CHECK_RC(m3_forward_run(f, &b, &out), M3_EINVAL); /* prefix longer than the sequence */
  m3_forward_destroy(f);
  fo.backend = "tpu";
  CHECK_RC(m3_forward_create(m, &fo, &f), M3_EINVAL);
  m3_model_close(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_forward_matches_reference_2_layers),
      cmocka_unit_test(test_forward_matches_reference_3_layers),
      cmocka_unit_test(test_prefix_never_selected_and_short_chunks),
      cmocka_unit_test(test_bad_batches),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
