/*
 * The CUDA decoder gives the CPU decoder's bits, for table and raw codecs, in
 * every output dtype. Skipped (exit 77) without a CUDA device.
 */
#include <cuda_runtime_api.h>

#include "codec_testlib.h"

static const m3_spec kSpec = {22, 8, 8, 80}; /* Memory3 */

static void check_set(m3_codec_set *cs, size_t nmem) {
  const size_t nv = m3_spec_vectors(&kSpec) * nmem, cb = m3_codec_set_code_bytes(cs);
  float *kv = ct_vectors(nv, 80, 1, 0.1);
  uint8_t *codes = malloc(nv * cb);
  CHECK_OK(m3_codec_encode(cs, &kSpec, kv, nmem, codes));
  m3_codec_cuda *g = NULL;
  CHECK_OK(m3_codec_cuda_create(cs, &g));
  void *d_codes = NULL, *d_out = NULL;
  assert_int_equal(cudaMalloc(&d_codes, nv * cb), cudaSuccess);
  assert_int_equal(cudaMalloc(&d_out, nv * 80 * 4), cudaSuccess);
  assert_int_equal(cudaMemcpy(d_codes, codes, nv * cb, cudaMemcpyHostToDevice), cudaSuccess);
  void *cpu = malloc(nv * 80 * 4), *gpu = malloc(nv * 80 * 4);
  for (int dtype = M3_DTYPE_F32; dtype <= M3_DTYPE_BF16; dtype++) {
    size_t bytes = nv * 80 * m3_dtype_size(dtype);
    CHECK_OK(m3_codec_decode(cs, &kSpec, codes, nmem, dtype, cpu));
    CHECK_OK(m3_codec_cuda_decode(g, &kSpec, d_codes, nmem, dtype, d_out, NULL));
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
    assert_int_equal(cudaMemcpy(gpu, d_out, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    if (memcmp(cpu, gpu, bytes) != 0)
      fail_msg("%s: GPU decode differs from CPU decode (dtype %d)",
               m3_codec_kind_name(m3_codec_set_kind(cs)), dtype);
  }
  free(gpu);
  free(cpu);
  cudaFree(d_out);
  cudaFree(d_codes);
  m3_codec_cuda_destroy(g);
  free(codes);
  free(kv);
}

static void test_cuda_matches_cpu_tables(void **state) {
  m3_codec_set *cs = ct_train("OPQ8_80,Residual2x6,PQ8x6", 80, 0, 5000, 3);
  check_set(cs, 5);
  m3_codec_set_close(cs);
}

static void test_cuda_matches_cpu_raw(void **state) {
  for (int kind = M3_CODEC_RAW_F32; kind <= M3_CODEC_RAW_BF16; kind++) {
    m3_codec_set *cs = NULL;
    CHECK_OK(m3_codec_set_create_raw(kind, 80, &cs));
    check_set(cs, 2);
    m3_codec_set_close(cs);
  }
}

int main(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    fprintf(stderr, "codec_cuda: no CUDA device, skipped\n");
    return 77;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cuda_matches_cpu_tables),
      cmocka_unit_test(test_cuda_matches_cpu_raw),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
