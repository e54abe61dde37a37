/*
 * Decode tables match FAISS's own sa_decode within 1e-5 relative, on random
 * codes and on the codes FAISS gives real vectors, for PQ, residual
 * (multi-index), OPQ + residual, IVF and additive strings; faiss codecs
 * round-trip; a codec whose tables cannot be built or fail the check is
 * refused for table decoding with a clear error.
 */
#include "codec_testlib.h"

#define DIM 16
#define NTRAIN 3000

/* max over vectors of |table - faiss|_inf / |faiss|_inf */
static double compare(m3_codec_set *cs, int kv, const uint8_t *codes, size_t n) {
  float *a = malloc(n * DIM * sizeof(float)), *b = malloc(n * DIM * sizeof(float));
  CHECK_OK(m3_codec_decode_vectors(cs, 0, kv, codes, n, M3_DTYPE_F32, a));
  CHECK_OK(m3_codec_decode_vectors_faiss(cs, 0, kv, codes, n, b));
  double worst = 0;
  for (size_t i = 0; i < n; i++) {
    double d = 0, m = 0;
    for (int j = 0; j < DIM; j++) {
      d = fmax(d, fabs((double)a[i * DIM + j] - b[i * DIM + j]));
      m = fmax(m, fabs((double)b[i * DIM + j]));
    }
    worst = fmax(worst, d / m);
  }
  free(a);
  free(b);
  return worst;
}

static void check_string(const char *factory, double max_rel_mse) {
  m3_codec_set *cs = ct_train(factory, DIM, 0, NTRAIN, 1234);
  m3_codec_info info;
  CHECK_OK(m3_codec_set_info(cs, 0, M3_KV_K, &info));
  if (!info.has_tables)
    fail_msg("'%s' has no tables: %s", factory, info.no_tables);
  const size_t cb = info.code_bytes, n = 2000;
  /* random codes: every field value drawn in range, as FAISS packs them */
  double max_abs = 0, max_rel = 0;
  CHECK_OK(m3_codec_set_verify(cs, 4096, 99, 1e-5, &max_abs, &max_rel));
  if (max_rel > 1e-5)
    fail_msg("'%s': verify max rel %.3g", factory, max_rel);
  /* codes of held-out vectors, encoded by FAISS */
  float *x = ct_vectors(n, DIM, 777, 0.5);
  uint8_t *codes = malloc(n * cb);
  for (int kv = 0; kv < 2; kv++) {
    CHECK_OK(m3_codec_encode_vectors(cs, 0, kv, x, n, codes));
    double rel = compare(cs, kv, codes, n);
    if (rel > 1e-5)
      fail_msg("'%s' kv %d: table decode vs FAISS decode %.3g relative", factory, kv, rel);
    /* round trip: error well below the signal */
    float *y = malloc(n * DIM * sizeof(float));
    CHECK_OK(m3_codec_decode_vectors(cs, 0, kv, codes, n, M3_DTYPE_F32, y));
    double err = 0, norm = 0;
    for (size_t i = 0; i < n * DIM; i++) {
      err += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
      norm += (double)x[i] * x[i];
    }
    print_message("%-28s kv %d: %zu-byte codes, rel_mse %.4f, table-vs-faiss %.2g (max abs %.2g)\n",
                  factory, kv, cb, err / norm, rel, max_abs);
    if (err / norm > max_rel_mse)
      fail_msg("'%s' round trip: rel mse %.3f above %.3f", factory, err / norm, max_rel_mse);
    free(y);
  }
  free(codes);
  free(x);
  m3_codec_set_close(cs);
}

static void test_pq(void **state) { check_string("PQ4x4", 0.6); }
static void test_pq_8bit(void **state) { check_string("PQ8np", 0.3); }
static void test_residual(void **state) { check_string("Residual2x4,PQ4x4", 0.6); }
static void test_opq_residual(void **state) { check_string("OPQ4_16,Residual2x4,PQ4x4", 0.6); }
static void test_ivf_pq(void **state) { check_string("IMI2x4,PQ4x6np", 0.6); }
static void test_flat_residual(void **state) { check_string("Residual20,PQ4x5", 0.6); }
static void test_pca_sq8(void **state) { check_string("PCAR16,SQ8", 0.01); }
static void test_rq(void **state) { check_string("RQ2x5", 0.8); }

static void test_no_tables_refused(void **state) {
  float *x = ct_vectors(NTRAIN, DIM, 5, 0);
  m3_codec_sample sm[2] = {{x, NTRAIN}, {x, NTRAIN}};
  m3_codec_train_opts o = {0};
  o.head_dim = DIM;
  o.factory_k = "L2norm,PQ4x4";
  m3_codec_set *cs = NULL;
  CHECK_RC(m3_codec_set_train(&o, sm, &cs), M3_EUNSUPPORTED);
  CHECK_CONTAINS(m3_errmsg(), "no decode tables");
  CHECK_CONTAINS(m3_errmsg(), "L2norm");
  assert_null(cs);
  /* allowed: encodes and decodes through FAISS, refuses table decoding */
  o.allow_no_tables = 1;
  CHECK_OK(m3_codec_set_train(&o, sm, &cs));
  m3_codec_info info;
  CHECK_OK(m3_codec_set_info(cs, 0, M3_KV_V, &info));
  assert_int_equal(info.has_tables, 0);
  CHECK_CONTAINS(info.no_tables, "L2norm");
  uint8_t codes[10 * 2];
  float y[10 * DIM];
  CHECK_OK(m3_codec_encode_vectors(cs, 0, M3_KV_K, x, 10, codes));
  CHECK_OK(m3_codec_decode_vectors_faiss(cs, 0, M3_KV_K, codes, 10, y));
  CHECK_RC(m3_codec_decode_vectors(cs, 0, M3_KV_K, codes, 10, M3_DTYPE_F32, y), M3_EUNSUPPORTED);
  CHECK_CONTAINS(m3_errmsg(), "no decode tables");
  m3_codec_set_close(cs);
  /* FAISS refuses the string itself */
  o.factory_k = "PQ5x4";
  CHECK_RC(m3_codec_set_train(&o, sm, &cs), M3_EINVAL);
  CHECK_CONTAINS(m3_errmsg(), "PQ5x4");
  /* K and V codes must have one size */
  o.factory_k = "PQ4x4";
  o.factory_v = "PQ8x4";
  CHECK_RC(m3_codec_set_train(&o, sm, &cs), M3_EINVAL);
  CHECK_CONTAINS(m3_errmsg(), "one code size");
  free(x);
}

/* Tables that disagree with the FAISS index they came with fail the check. */
static void test_tampered_tables_fail_verify(void **state) {
  m3_codec_set *cs = ct_train("OPQ4_16,Residual2x4,PQ4x4", DIM, 0, NTRAIN, 4321);
  size_t len;
  uint8_t *b = ct_bytes(cs, &len);
  ct_entry e = ct_entry_at(b, 1);
  float v;
  size_t at = e.tables_off + 4 * (DIM * 20 + 3); /* row 19, dim 3 */
  memcpy(&v, b + at, 4);
  v += 0.05f;
  memcpy(b + at, &v, 4);
  ct_reseal(b, len);
  m3_codec_set *bad = NULL;
  CHECK_OK(m3_codec_set_load(b, len, "tampered", &bad));
  assert_true(m3_codec_set_fingerprint(bad) != m3_codec_set_fingerprint(cs));
  double a, r;
  CHECK_RC(m3_codec_set_verify(bad, 4096, 1, 1e-5, &a, &r), M3_ECORRUPT);
  CHECK_CONTAINS(m3_errmsg(), "codec 1 (V)");
  CHECK_CONTAINS(m3_errmsg(), "differs from FAISS");
  CHECK_OK(m3_codec_set_verify(cs, 4096, 1, 1e-5, &a, &r));
  m3_codec_set_close(bad);
  m3_codec_set_close(cs);
  free(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pq),
      cmocka_unit_test(test_pq_8bit),
      cmocka_unit_test(test_residual),
      cmocka_unit_test(test_opq_residual),
      cmocka_unit_test(test_ivf_pq),
      cmocka_unit_test(test_flat_residual),
      cmocka_unit_test(test_pca_sq8),
      cmocka_unit_test(test_rq),
      cmocka_unit_test(test_no_tables_refused),
      cmocka_unit_test(test_tampered_tables_fail_verify),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
