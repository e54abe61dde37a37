/*
 * The memory attention reference (m3_attn_ref) against the formula written
 * out naively here (long double, its own rotary and bf16 conversion): one
 * softmax over memory slots and causal context, GQA head mapping, parallel
 * position encoding; and the properties a worker relies on: empty slots get
 * no weight whatever their K/V hold, memories are in parallel (their order
 * does not matter), only relative positions matter.
 */
#include <math.h>
#include <stdlib.h>

#include "worker/worker_testlib.h"

enum { NH = 10, NKV = 2, D = 16, T = 8, K = 5, S = K * T, C = 7, NQ = 3 };

typedef struct prob {
  float q[NQ * NH * D];
  int32_t q_pos[NQ];
  float mk[NKV * S * D], mv[NKV * S * D];
  uint16_t mk16[NKV * S * D], mv16[NKV * S * D]; /* bf16 copies */
  int32_t mpos[NKV * S];
  float ck[NKV * C * D], cv[NKV * C * D];
} prob;

static float unif(uint64_t *s, double lo, double hi) {
  return (float)(lo + (hi - lo) * (double)(m3t_rand(s) >> 11) / 9007199254740992.0);
}

static uint16_t to_bf16(float f) { /* truncation is fine: both sides read the same bits */
  uint32_t u;
  memcpy(&u, &f, 4);
  return (uint16_t)(u >> 16);
}
static float from_bf16(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* naive rotate_half at pos: angle pos / theta^(2j/D) */
static void naive_rope(const float *x, long double pos, long double *out) {
  for (int j = 0; j < D / 2; j++) {
    long double a = pos / powl(10000.0L, 2.0L * j / D);
    out[j] = x[j] * cosl(a) - x[j + D / 2] * sinl(a);
    out[j + D / 2] = x[j + D / 2] * cosl(a) + x[j] * sinl(a);
  }
}

/* the formula: keys are memories (rotated at their positions, query
 * rotated at q_pos - mem_base) then causal context */
static void naive(const prob *p, int bf16, int32_t mem_base, uint32_t n_ctx, float *out,
                  float *mw) {
  for (int t = 0; t < NQ; t++)
    for (int h = 0; h < NH; h++) {
      int g = h / (NH / NKV);
      long double qm[D], qc[D], lg[S + C], mx = -INFINITY;
      float vals[S + C][D];
      int n = 0, nmem = 0;
      naive_rope(p->q + (t * NH + h) * D, (long double)p->q_pos[t] - mem_base, qm);
      naive_rope(p->q + (t * NH + h) * D, p->q_pos[t], qc);
      for (int s = 0; s < S; s++) {
        if (p->mpos[g * S + s] < 0) continue;
        long double dot = 0;
        for (int d = 0; d < D; d++) {
          float kk = bf16 ? from_bf16(p->mk16[(g * S + s) * D + d]) : p->mk[(g * S + s) * D + d];
          dot += qm[d] * kk;
          vals[n][d] = bf16 ? from_bf16(p->mv16[(g * S + s) * D + d]) : p->mv[(g * S + s) * D + d];
        }
        lg[n++] = dot / sqrtl(D);
        nmem++;
      }
      int vis = (int)n_ctx - NQ + t + 1;
      for (int j = 0; j < vis; j++) {
        long double dot = 0;
        for (int d = 0; d < D; d++) {
          dot += qc[d] * p->ck[(g * n_ctx + j) * D + d];
          vals[n][d] = p->cv[(g * n_ctx + j) * D + d];
        }
        lg[n++] = dot / sqrtl(D);
      }
      for (int i = 0; i < n; i++) mx = lg[i] > mx ? lg[i] : mx;
      long double sum = 0, msum = 0, acc[D] = {0};
      for (int i = 0; i < n; i++) {
        long double w = expl(lg[i] - mx);
        sum += w;
        if (i < nmem) msum += w;
        for (int d = 0; d < D; d++) acc[d] += w * vals[i][d];
      }
      for (int d = 0; d < D; d++) out[(t * NH + h) * D + d] = n ? (float)(acc[d] / sum) : 0.0f;
      mw[t * NH + h] = n ? (float)(msum / sum) : 0.0f;
    }
}

static void make(prob *p, uint64_t seed) {
  uint64_t s = seed;
  for (int i = 0; i < NQ * NH * D; i++) p->q[i] = unif(&s, -1.5, 1.5);
  for (int t = 0; t < NQ; t++) p->q_pos[t] = M3_ATTN_MEM_SPAN + C - NQ + t;
  for (int i = 0; i < NKV * S * D; i++) {
    p->mk[i] = unif(&s, -1.5, 1.5);
    p->mv[i] = unif(&s, -2, 2);
    p->mk16[i] = to_bf16(p->mk[i]);
    p->mv16[i] = to_bf16(p->mv[i]);
  }
  for (int g = 0; g < NKV; g++)
    for (int s2 = 0; s2 < S; s2++) /* memory 3 has 5 real tokens; rank 4 is empty */
      p->mpos[g * S + s2] = (s2 / T == 4 || (s2 / T == 3 && s2 % T >= 5)) ? -1 : 3 + 7 * (s2 % T) + g;
  for (int i = 0; i < NKV * C * D; i++) {
    p->ck[i] = unif(&s, -1.5, 1.5);
    p->cv[i] = unif(&s, -2, 2);
  }
}

static m3_attn_ref_args args_of(const prob *p, int bf16, float *out, float *mw) {
  m3_attn_ref_args a = {0};
  a.n_heads = NH;
  a.n_kv_heads = NKV;
  a.head_dim = D;
  a.rope_theta = 10000.0;
  a.n_q = NQ;
  a.q = p->q;
  a.q_pos = p->q_pos;
  a.n_slots = S;
  a.mem_dtype = bf16 ? M3_DTYPE_BF16 : M3_DTYPE_F32;
  a.mem_k = bf16 ? (const void *)p->mk16 : (const void *)p->mk;
  a.mem_v = bf16 ? (const void *)p->mv16 : (const void *)p->mv;
  a.mem_pos = p->mpos;
  a.n_ctx = C;
  a.ctx_k = p->ck;
  a.ctx_v = p->cv;
  a.out = out;
  a.mem_weight = mw;
  return a;
}

static void close_enough(const float *got, const float *want, int n, double tol, const char *what) {
  for (int i = 0; i < n; i++)
    if (fabs((double)got[i] - want[i]) > tol * (1 + fabs(want[i])))
      fail_msg("%s[%d]: %.9g != %.9g", what, i, got[i], want[i]);
}

static void test_matches_formula(void **state) {
  prob *p = calloc(1, sizeof *p);
  make(p, 1);
  float out[NQ * NH * D], mw[NQ * NH], wo[NQ * NH * D], wmw[NQ * NH];
  for (int bf16 = 0; bf16 < 2; bf16++) {
    for (int32_t base = 0; base <= 64; base += 64) {
      m3_attn_ref_args a = args_of(p, bf16, out, mw);
      a.mem_base = base;
      CHECK_OK(m3_attn_ref(&a));
      naive(p, bf16, base, C, wo, wmw);
      close_enough(out, wo, NQ * NH * D, 1e-6, "out");
      close_enough(mw, wmw, NQ * NH, 1e-6, "mem_weight");
    }
  }
  for (int i = 0; i < NQ * NH; i++)
    if (!(mw[i] > 0 && mw[i] < 1)) fail_msg("mem_weight[%d] = %g, want in (0, 1)", i, mw[i]);
  free(p);
}

/* empty slots: no weight, whatever their K/V hold */
static void test_empty_slots_get_no_weight(void **state) {
  prob *p = calloc(1, sizeof *p);
  make(p, 2);
  float a1[NQ * NH * D], a2[NQ * NH * D], mw[NQ * NH];
  m3_attn_ref_args a = args_of(p, 0, a1, mw);
  CHECK_OK(m3_attn_ref(&a));
  for (int i = 0; i < NKV * S; i++)
    if (p->mpos[i] < 0)
      for (int d = 0; d < D; d++) {
        p->mk[i * D + d] = 50.0f; /* would dominate any softmax */
        p->mv[i * D + d] = 1e6f;
      }
  a.out = a2;
  CHECK_OK(m3_attn_ref(&a));
  if (memcmp(a1, a2, sizeof a1) != 0) fail_msg("an empty slot changed the output");
  /* all memories empty, no context: zeros */
  for (int i = 0; i < NKV * S; i++) p->mpos[i] = -1;
  a.n_ctx = 0;
  CHECK_OK(m3_attn_ref(&a));
  for (int i = 0; i < NQ * NH * D; i++)
    if (a2[i] != 0.0f) fail_msg("no keys: out[%d] = %g", i, a2[i]);
  for (int i = 0; i < NQ * NH; i++)
    if (mw[i] != 0.0f) fail_msg("no keys: mem_weight %g", mw[i]);
  free(p);
}

/* parallel: the order of the k memories does not matter; only relative
 * positions do (shift query and interval together) */
static void test_parallel_positions(void **state) {
  prob *p = calloc(1, sizeof *p), *r = calloc(1, sizeof *r);
  make(p, 3);
  *r = *p;
  const int perm[K] = {2, 0, 4, 1, 3}; /* rank i of r = rank perm[i] of p */
  for (int g = 0; g < NKV; g++)
    for (int i = 0; i < K; i++)
      for (int t = 0; t < T; t++) {
        int src = g * S + perm[i] * T + t, dst = g * S + i * T + t;
        r->mpos[dst] = p->mpos[src];
        memcpy(r->mk + dst * D, p->mk + src * D, D * 4);
        memcpy(r->mv + dst * D, p->mv + src * D, D * 4);
      }
  float o1[NQ * NH * D], o2[NQ * NH * D], mw1[NQ * NH], mw2[NQ * NH];
  m3_attn_ref_args a = args_of(p, 0, o1, mw1), b = args_of(r, 0, o2, mw2);
  CHECK_OK(m3_attn_ref(&a));
  CHECK_OK(m3_attn_ref(&b));
  close_enough(o2, o1, NQ * NH * D, 1e-9, "permuted memories");
  /* memories only: moving query and interval by 1000 changes nothing */
  a.n_ctx = b.n_ctx = 0;
  CHECK_OK(m3_attn_ref(&a));
  int32_t shifted[NQ];
  for (int t = 0; t < NQ; t++) shifted[t] = p->q_pos[t] + 1000;
  a.q_pos = shifted;
  a.mem_base = 1000;
  a.out = o2;
  a.mem_weight = mw2;
  CHECK_OK(m3_attn_ref(&a));
  close_enough(o2, o1, NQ * NH * D, 1e-6, "shifted");
  for (int i = 0; i < NQ * NH; i++)
    if (mw2[i] != 1.0f) fail_msg("memories only: mem_weight %g", mw2[i]);
  free(p);
  free(r);
}

/* GQA: query head h reads KV head h / (NH / NKV) */
static void test_gqa_head_mapping(void **state) {
  prob *p = calloc(1, sizeof *p);
  make(p, 4);
  for (int g = 0; g < NKV; g++)
    for (int i = 0; i < S * D; i++) p->mv[g * S * D + i] = (float)(g + 1);
  float o[NQ * NH * D];
  m3_attn_ref_args a = args_of(p, 0, o, NULL);
  a.n_ctx = 0;
  CHECK_OK(m3_attn_ref(&a));
  for (int t = 0; t < NQ; t++)
    for (int h = 0; h < NH; h++)
      for (int d = 0; d < D; d++)
        if (fabsf(o[(t * NH + h) * D + d] - (float)(h / (NH / NKV) + 1)) > 1e-6f)
          fail_msg("head %d dim %d: %g, want %d", h, d, o[(t * NH + h) * D + d], h / (NH / NKV) + 1);
  free(p);
}

static void test_argument_checks(void **state) {
  prob *p = calloc(1, sizeof *p);
  make(p, 5);
  float o[NQ * NH * D];
  m3_attn_ref_args a = args_of(p, 0, o, NULL);
  a.n_kv_heads = 3;
  CHECK_RC(m3_attn_ref(&a), M3_EINVAL);
  a = args_of(p, 0, o, NULL);
  a.head_dim = 15;
  CHECK_RC(m3_attn_ref(&a), M3_EINVAL);
  a = args_of(p, 0, o, NULL);
  a.mem_pos = NULL;
  CHECK_RC(m3_attn_ref(&a), M3_EINVAL);
  CHECK_RC(m3_attn_ref(NULL), M3_EINVAL);
  free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_matches_formula),
      cmocka_unit_test(test_empty_slots_get_no_weight),
      cmocka_unit_test(test_parallel_positions),
      cmocka_unit_test(test_gqa_head_mapping),
      cmocka_unit_test(test_argument_checks),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
