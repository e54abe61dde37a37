/*
 * The CUDA paths against the CPU ones: device attention buffers
 * (m3_attn_create_cuda) equal the host buffers byte for byte (raw and PQ
 * codecs, f32/f16/bf16, dense and layer-major, empty tokens and ranks), and
 * the CUDA memory attention reference equals m3_attn_ref to rounding.
 * Skipped (exit 77) without a CUDA device.
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdlib.h>

#include "worker/worker_testlib.h"

static const m3_spec kSpec = {3, 2, 8, 16};

static void compare_backends(m3_codec_set *cs, const wt_mems *m, m3_attn_geom *g) {
  const int assign[8] = {0, 4, -1, 2, 5, 1, 3, -1};
  const size_t kvb = m3_attn_kv_elems(g) * m3_dtype_size(g->dtype), pb = m3_attn_pos_elems(g) * 4;
  void *hk = malloc(kvb), *dk_host = malloc(kvb), *dk = NULL;
  int32_t *hp = malloc(pb), *dp_host = malloc(pb), *dp = NULL;
  assert_int_equal(cudaMalloc(&dk, kvb), cudaSuccess);
  assert_int_equal(cudaMalloc((void **)&dp, pb), cudaSuccess);
  assert_int_equal(cudaMemset(dk, 0x3C, kvb), cudaSuccess);
  assert_int_equal(cudaMemset(dp, 0x3C, pb), cudaSuccess);
  m3_attn *ah = NULL, *ad = NULL;
  CHECK_OK(m3_attn_create_host(cs, g, &ah));
  m3_attn_cuda_options o;
  m3_attn_cuda_options_init(&o);
  o.lanes = 3;
  CHECK_OK(m3_attn_create_cuda(cs, g, &o, &ad));
  assert_int_equal(m3_attn_is_device(ad), 1);
  CHECK_OK(m3_attn_begin(ah, &(m3_attn_round){.kv = hk, .pos = hp}));
  CHECK_OK(m3_attn_begin(ad, &(m3_attn_round){.kv = dk, .pos = dp}));
  for (uint32_t i = 0; i < g->n_queries * g->k; i++) {
    if (assign[i] < 0) continue;
    size_t len;
    m3_record rec;
    uint8_t *buf = wt_record(m, (size_t)assign[i], &len, &rec);
    m3_client_memory cm = {.chunk_id = (uint64_t)assign[i], .query = i / g->k, .rank = i % g->k,
                           .error = "", .data = buf, .len = len, .record = &rec};
    CHECK_OK(m3_attn_memory_fn(ah, &cm));
    CHECK_OK(m3_attn_memory_fn(ad, &cm));
    free(buf); /* the device path copied it into pinned staging */
  }
  m3_attn_stats sh, sd;
  CHECK_OK(m3_attn_finish(ah, &sh));
  CHECK_OK(m3_attn_finish(ad, &sd)); /* stream NULL: waits */
  assert_int_equal(sh.placed, sd.placed);
  assert_int_equal(cudaMemcpy(dk_host, dk, kvb, cudaMemcpyDeviceToHost), cudaSuccess);
  assert_int_equal(cudaMemcpy(dp_host, dp, pb, cudaMemcpyDeviceToHost), cudaSuccess);
  if (memcmp(hk, dk_host, kvb) != 0) fail_msg("device K/V differ from host (dtype %d)", g->dtype);
  if (memcmp(hp, dp_host, pb) != 0) fail_msg("device positions differ from host");
  wt_check_round(m, cs, g, dk_host, dp_host, assign, 0);
  m3_attn_destroy(ad);
  m3_attn_destroy(ah);
  cudaFree(dk);
  cudaFree(dp);
  free(hk);
  free(dk_host);
  free(hp);
  free(dp_host);
}

static void test_device_buffers_equal_host(void **state) {
  m3_codec_set *raw = NULL;
  CHECK_OK(m3_codec_set_create_raw(M3_CODEC_RAW_F32, kSpec.head_dim, &raw));
  wt_mems m;
  wt_mems_make(&m, raw, &kSpec, 6, 4, 8);
  wt_mems_encode_raw(&m);
  for (int dtype = M3_DTYPE_F32; dtype <= M3_DTYPE_BF16; dtype++)
    for (int lm = 0; lm < 2; lm++) {
      m3_attn_geom g;
      CHECK_OK(m3_attn_geom_init(&g, &kSpec, 2, 4, dtype));
      if (lm) m3_attn_geom_layer_major(&g);
      compare_backends(raw, &m, &g);
    }
  wt_mems_free(&m);
  m3_codec_set_close(raw);

  const size_t nt = 2000;
  float *x = malloc(2 * nt * kSpec.head_dim * 4);
  uint64_t s = 3;
  for (size_t i = 0; i < 2 * nt * kSpec.head_dim; i++)
    x[i] = (float)((double)(m3t_rand(&s) >> 11) / 9007199254740992.0 * 4.0 - 2.0);
  m3_codec_sample sm[2] = {{x, nt}, {x + nt * kSpec.head_dim, nt}};
  m3_codec_train_opts o = {0};
  o.kind = M3_CODEC_FAISS;
  o.head_dim = kSpec.head_dim;
  o.factory_k = "PQ8x4np";
  m3_codec_set *pq = NULL;
  CHECK_OK(m3_codec_set_train(&o, sm, &pq));
  wt_mems_make(&m, pq, &kSpec, 6, 4, 9);
  CHECK_OK(m3_codec_encode(pq, &kSpec, m.kv, m.n, m.codes));
  m3_attn_geom g;
  CHECK_OK(m3_attn_geom_init(&g, &kSpec, 2, 4, M3_DTYPE_BF16));
  compare_backends(pq, &m, &g);
  wt_mems_free(&m);
  m3_codec_set_close(pq);
  free(x);
}

static void *to_dev(const void *p, size_t n) {
  void *d = NULL;
  assert_int_equal(cudaMalloc(&d, n), cudaSuccess);
  assert_int_equal(cudaMemcpy(d, p, n, cudaMemcpyHostToDevice), cudaSuccess);
  return d;
}

static void test_cuda_reference_equals_cpu(void **state) {
  enum { NH = 8, NKV = 2, D = 16, S = 24, C = 9, NQ = 4 };
  static float q[NQ * NH * D], mk[NKV * S * D], mv[NKV * S * D], ck[NKV * C * D], cv[NKV * C * D];
  static int32_t qp[NQ], mp[NKV * S];
  uint64_t s = 1;
  float *all[] = {q, mk, mv, ck, cv};
  size_t ns[] = {NQ * NH * D, NKV * S * D, NKV * S * D, NKV * C * D, NKV * C * D};
  for (int a = 0; a < 5; a++)
    for (size_t i = 0; i < ns[a]; i++)
      all[a][i] = (float)((double)(m3t_rand(&s) >> 11) / 9007199254740992.0 * 3.0 - 1.5);
  for (int t = 0; t < NQ; t++) qp[t] = M3_ATTN_MEM_SPAN + C - NQ + t;
  for (int i = 0; i < NKV * S; i++) mp[i] = (i % 7 == 3) ? -1 : 3 + i % S;
  m3_attn_ref_args a = {NH, NKV, D, 10000.0, NQ, q, qp, S, M3_DTYPE_F32, mk, mv, mp, 0,
                        C, ck, cv, NULL, NULL};
  float out[NQ * NH * D], mw[NQ * NH], gout[NQ * NH * D], gmw[NQ * NH];
  a.out = out;
  a.mem_weight = mw;
  CHECK_OK(m3_attn_ref(&a));
  m3_attn_ref_args d = a;
  d.q = to_dev(q, sizeof q);
  d.q_pos = to_dev(qp, sizeof qp);
  d.mem_k = to_dev(mk, sizeof mk);
  d.mem_v = to_dev(mv, sizeof mv);
  d.mem_pos = to_dev(mp, sizeof mp);
  d.ctx_k = to_dev(ck, sizeof ck);
  d.ctx_v = to_dev(cv, sizeof cv);
  assert_int_equal(cudaMalloc((void **)&d.out, sizeof out), cudaSuccess);
  assert_int_equal(cudaMalloc((void **)&d.mem_weight, sizeof mw), cudaSuccess);
  CHECK_OK(m3_attn_ref_cuda(&d, NULL));
  assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
  assert_int_equal(cudaMemcpy(gout, d.out, sizeof out, cudaMemcpyDeviceToHost), cudaSuccess);
  assert_int_equal(cudaMemcpy(gmw, d.mem_weight, sizeof mw, cudaMemcpyDeviceToHost), cudaSuccess);
  for (int i = 0; i < NQ * NH * D; i++)
    if (fabsf(gout[i] - out[i]) > 1e-6f * (1 + fabsf(out[i])))
      fail_msg("out[%d]: GPU %.9g CPU %.9g", i, gout[i], out[i]);
  for (int i = 0; i < NQ * NH; i++)
    if (fabsf(gmw[i] - mw[i]) > 1e-6f) fail_msg("mem_weight[%d]: GPU %g CPU %g", i, gmw[i], mw[i]);
  cudaFree((void *)d.q);
  cudaFree((void *)d.q_pos);
  cudaFree((void *)d.mem_k);
  cudaFree((void *)d.mem_v);
  cudaFree((void *)d.mem_pos);
  cudaFree((void *)d.ctx_k);
  cudaFree((void *)d.ctx_v);
  cudaFree(d.out);
  cudaFree(d.mem_weight);
}

int main(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    fprintf(stderr, "worker_attn_cuda: no CUDA device, skipped\n");
    return 77;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_device_buffers_equal_host),
      cmocka_unit_test(test_cuda_reference_equals_cpu),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
