/*
 * The GEMM encoder against FAISS's sa_encode on the same vectors: for the
 * paper's codec family (OPQ + multi-index or flat coarse stage + PQ on the
 * residual, and PQ alone) at least 99% of the codes are equal and the
 * reconstruction error is no worse (within 1%); memories encode the same
 * through m3_codec_encode; a set reopened from its file bytes encodes alike;
 * a string the GEMM encoder does not read is refused with the reason and
 * AUTO falls back to FAISS for it.
 */
#include "codec_testlib.h"

#define DIM 16
#define NTRAIN 3000
#define NTEST 3000

static double rel_mse(m3_codec_set *cs, int kv, const float *x, const uint8_t *codes, size_t n) {
  float *y = malloc(n * DIM * sizeof(float));
  CHECK_OK(m3_codec_decode_vectors_faiss(cs, 0, kv, codes, n, y));
  double e = 0, s = 0;
  for (size_t i = 0; i < n * DIM; i++) {
    e += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
    s += (double)x[i] * x[i];
  }
  free(y);
  return e / s;
}

static void check_string(const char *factory) {
  m3_codec_set *cs = ct_train(factory, DIM, 0, NTRAIN, 4321);
  m3_codec_enc_info ei;
  CHECK_OK(m3_codec_encoder_info(cs, 0, M3_KV_K, &ei));
  if (strcmp(ei.encoder, "gemm") != 0)
    fail_msg("'%s': AUTO encodes with %s (%s)", factory, ei.encoder, ei.no_gemm);
  assert_true(ei.flops_per_vector > 0 && ei.gemm_m > 0 && ei.gemm_n > 0 && ei.gemm_k > 0);
  const size_t cb = m3_codec_set_code_bytes(cs);
  float *x = ct_vectors(NTEST, DIM, 99, 0.5);
  uint8_t *cf = malloc(NTEST * cb), *cg = malloc(NTEST * cb);
  for (int kv = 0; kv < 2; kv++) {
    CHECK_OK(m3_codec_set_encoder(cs, M3_CODEC_ENC_FAISS));
    CHECK_OK(m3_codec_encode_vectors(cs, 0, kv, x, NTEST, cf));
    CHECK_OK(m3_codec_set_encoder(cs, M3_CODEC_ENC_GEMM));
    CHECK_OK(m3_codec_encode_vectors(cs, 0, kv, x, NTEST, cg));
    size_t eq = 0;
    for (size_t i = 0; i < NTEST; i++)
      eq += memcmp(cf + i * cb, cg + i * cb, cb) == 0;
    double ef = rel_mse(cs, kv, x, cf, NTEST), eg = rel_mse(cs, kv, x, cg, NTEST);
    print_message("%-28s kv %d: %zu/%d codes equal, rel_mse faiss %.6f gemm %.6f\n", factory, kv,
                  eq, NTEST, ef, eg);
    if ((double)eq < 0.99 * NTEST)
      fail_msg("'%s' kv %d: only %zu of %d GEMM codes equal FAISS's", factory, kv, eq, NTEST);
    if (eg > ef * 1.01)
      fail_msg("'%s' kv %d: GEMM rel_mse %.6g worse than FAISS's %.6g", factory, kv, eg, ef);
  }
  /* whole memories, batched per codec, and a set reopened from its bytes */
  const m3_spec spec = {.n_layers = 2, .n_kv_heads = 2, .n_tokens = 8, .head_dim = DIM};
  const size_t nmem = 3, nvec = nmem * 2 * 2 * 2 * 8;
  float *kv = ct_vectors(nvec, DIM, 5, 0.2);
  uint8_t *m1 = malloc(nvec * cb), *m2 = malloc(nvec * cb), *m3 = malloc(nvec * cb);
  CHECK_OK(m3_codec_encode(cs, &spec, kv, nmem, m1));
  for (size_t b = 0; b < nvec / 16; b++)
    CHECK_OK(m3_codec_encode_vectors(cs, 0, (int)(b % 2), kv + b * 16 * DIM, 16, m2 + b * 16 * cb));
  assert_memory_equal(m1, m2, nvec * cb);
  size_t len;
  uint8_t *bytes = ct_bytes(cs, &len);
  m3_codec_set *re = NULL;
  CHECK_OK(m3_codec_set_load(bytes, len, "reloaded", &re));
  CHECK_OK(m3_codec_encode(re, &spec, kv, nmem, m3));
  assert_memory_equal(m1, m3, nvec * cb);
  m3_codec_set_close(re);
  free(bytes);
  free(m1);
  free(m2);
  free(m3);
  free(kv);
  free(cf);
  free(cg);
  free(x);
  m3_codec_set_close(cs);
}

static void test_paper_family(void **st) {
  (void)st;
  check_string("OPQ4_16,Residual2x4,PQ4x4");
}

static void test_multi_index_wide(void **st) {
  (void)st;
  check_string("Residual2x6,PQ4x6"); /* 64 centroids per half, dsub 4 */
}

static void test_flat_coarse(void **st) {
  (void)st;
  check_string("Residual64,PQ4x4");
}

static void test_pq_alone(void **st) {
  (void)st;
  check_string("PQ4x6np");
}

static void test_pq_gemm_distances(void **st) {
  (void)st;
  check_string("Residual2x4,PQ1x6"); /* dsub 16: FAISS too uses GEMM distances */
}

static void test_unsupported_falls_back(void **st) {
  (void)st;
  m3_codec_train_opts o = {0};
  o.kind = M3_CODEC_FAISS;
  o.head_dim = DIM;
  o.factory_k = "SQ8";
  float *x = ct_vectors(500, DIM, 1, 0);
  m3_codec_sample sm[2] = {{x, 500}, {x, 500}};
  m3_codec_set *cs = NULL;
  CHECK_OK(m3_codec_set_train(&o, sm, &cs));
  int rc = m3_codec_set_encoder(cs, M3_CODEC_ENC_GEMM);
  assert_int_equal(rc, M3_EUNSUPPORTED);
  if (!strstr(m3_errmsg(), "codec 0 (K) 'SQ8'") || !strstr(m3_errmsg(), "not an IndexPQ"))
    fail_msg("unexpected message: %s", m3_errmsg());
  assert_int_equal(m3_codec_set_encoder(cs, 7), M3_EINVAL);
  m3_codec_enc_info ei;
  CHECK_OK(m3_codec_encoder_info(cs, 0, M3_KV_V, &ei));
  assert_string_equal(ei.encoder, "faiss");
  assert_true(strstr(ei.no_gemm, "not an IndexPQ") != NULL);
  /* AUTO (still the choice) encodes through FAISS */
  uint8_t *c = malloc(500 * (size_t)m3_codec_set_code_bytes(cs));
  CHECK_OK(m3_codec_encode_vectors(cs, 0, M3_KV_K, x, 500, c));
  free(c);
  free(x);
  m3_codec_set_close(cs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_paper_family),      cmocka_unit_test(test_multi_index_wide),
      cmocka_unit_test(test_flat_coarse),       cmocka_unit_test(test_pq_alone),
      cmocka_unit_test(test_pq_gemm_distances), cmocka_unit_test(test_unsupported_falls_back),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
