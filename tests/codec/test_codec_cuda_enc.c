/*
 * The CUDA GEMM encoder against the CPU GEMM encoder on the same vectors:
 * at least 99% of the codes equal and the reconstruction error no worse
 * (within 1%), for the paper's codec family, a flat coarse quantizer and PQ
 * alone; a set the GEMM encoder cannot read is refused with the reason.
 * Skipped (exit 77) without a CUDA device.
 */
#include <cuda_runtime_api.h>

#include "codec_testlib.h"

#define DIM 16
#define N 3000

static double rel_mse(m3_codec_set *cs, int kv, const float *x, const uint8_t *codes) {
  float *y = malloc((size_t)N * DIM * sizeof(float));
  CHECK_OK(m3_codec_decode_vectors_faiss(cs, 0, kv, codes, N, y));
  double e = 0, s = 0;
  for (size_t i = 0; i < (size_t)N * DIM; i++) {
    e += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
    s += (double)x[i] * x[i];
  }
  free(y);
  return e / s;
}

static void check_string(const char *factory) {
  m3_codec_set *cs = ct_train(factory, DIM, 0, N, 77);
  const size_t cb = m3_codec_set_code_bytes(cs);
  float *x = ct_vectors(N, DIM, 8, 0.5);
  uint8_t *cc = malloc(N * cb), *cg = malloc(N * cb);
  m3_codec_cuda_enc *e = NULL;
  CHECK_OK(m3_codec_cuda_enc_create(cs, &e));
  float *d_x = NULL;
  uint8_t *d_c = NULL;
  assert_int_equal(cudaMalloc((void **)&d_x, (size_t)N * DIM * 4), cudaSuccess);
  assert_int_equal(cudaMalloc((void **)&d_c, N * cb), cudaSuccess);
  assert_int_equal(cudaMemcpy(d_x, x, (size_t)N * DIM * 4, cudaMemcpyHostToDevice), cudaSuccess);
  CHECK_OK(m3_codec_set_encoder(cs, M3_CODEC_ENC_GEMM));
  for (int kv = 0; kv < 2; kv++) {
    CHECK_OK(m3_codec_encode_vectors(cs, 0, kv, x, N, cc));
    CHECK_OK(m3_codec_cuda_encode_vectors(e, 0, kv, d_x, N, d_c, NULL));
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
    assert_int_equal(cudaMemcpy(cg, d_c, N * cb, cudaMemcpyDeviceToHost), cudaSuccess);
    size_t eq = 0;
    for (size_t i = 0; i < N; i++)
      eq += memcmp(cc + i * cb, cg + i * cb, cb) == 0;
    double ec = rel_mse(cs, kv, x, cc), eg = rel_mse(cs, kv, x, cg);
    print_message("%-28s kv %d: %zu/%d GPU codes equal the CPU's, rel_mse cpu %.6f gpu %.6f\n",
                  factory, kv, eq, N, ec, eg);
    if ((double)eq < 0.99 * N)
      fail_msg("'%s' kv %d: only %zu of %d GPU codes equal the CPU's", factory, kv, eq, N);
    if (eg > ec * 1.01)
      fail_msg("'%s' kv %d: GPU rel_mse %.6g worse than CPU's %.6g", factory, kv, eg, ec);
  }
  cudaFree(d_x);
  cudaFree(d_c);
  m3_codec_cuda_enc_destroy(e);
  free(cc);
  free(cg);
  free(x);
  m3_codec_set_close(cs);
}

static void test_paper_family(void **st) {
  (void)st;
  check_string("OPQ4_16,Residual2x4,PQ4x4");
}

static void test_flat_coarse(void **st) {
  (void)st;
  check_string("OPQ4_16,Residual64,PQ4x4");
}

static void test_pq_alone(void **st) {
  (void)st;
  check_string("PQ4x6np");
}

static void test_unsupported(void **st) {
  (void)st;
  m3_codec_set *cs = ct_train("SQ8", DIM, 0, 500, 1);
  m3_codec_cuda_enc *e = NULL;
  assert_int_equal(m3_codec_cuda_enc_create(cs, &e), M3_EUNSUPPORTED);
  assert_null(e);
  if (!strstr(m3_errmsg(), "not an IndexPQ"))
    fail_msg("unexpected message: %s", m3_errmsg());
  m3_codec_set_close(cs);
}

int main(void) {
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    fprintf(stderr, "codec_cuda_enc: no CUDA device, skipped\n");
    return 77;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_paper_family),
      cmocka_unit_test(test_flat_coarse),
      cmocka_unit_test(test_pq_alone),
      cmocka_unit_test(test_unsupported),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
