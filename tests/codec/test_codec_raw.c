/*
 * The raw codec kinds round-trip: f32 exactly, f16 / bf16 to the nearest
 * representable value, into every output dtype, through a saved and reopened
 * codec set file.
 */
#include <unistd.h>

#include "codec_testlib.h"

static void round_trip(int kind, unsigned dim) {
  m3_codec_set *cs = NULL, *re = NULL;
  CHECK_OK(m3_codec_set_create_raw(kind, (uint16_t)dim, &cs));
  assert_int_equal(m3_codec_set_kind(cs), kind);
  assert_int_equal(m3_codec_set_code_bytes(cs), kind == M3_CODEC_RAW_F32 ? 4 * dim : 2 * dim);
  char path[] = "/tmp/m3-codec-raw-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  CHECK_OK(m3_codec_set_save(cs, path));
  CHECK_OK(m3_codec_set_open(path, &re));
  assert_true(m3_codec_set_fingerprint(re) == m3_codec_set_fingerprint(cs));
  unlink(path);

  const size_t n = 500;
  float *x = ct_vectors(n, dim, 11, 0.3);
  x[0] = 1e-30f; /* subnormal in f16 / flush */
  x[1] = 70000.0f; /* overflows f16 */
  uint8_t *codes = malloc(n * m3_codec_set_code_bytes(re));
  float *y = malloc(n * dim * sizeof(float));
  uint16_t *h = malloc(n * dim * 2);
  CHECK_OK(m3_codec_encode_vectors(re, 0, M3_KV_V, x, n, codes));
  CHECK_OK(m3_codec_decode_vectors(re, 0, M3_KV_V, codes, n, M3_DTYPE_F32, y));
  double err = 0, norm = 0;
  for (size_t i = 0; i < n * dim; i++) {
    if (kind == M3_CODEC_RAW_F32 && memcmp(&x[i], &y[i], 4) != 0)
      fail_msg("raw-f32 element %zu: %a became %a", i, (double)x[i], (double)y[i]);
    if (i == 1 && kind == M3_CODEC_RAW_F16) {
      assert_true(isinf(y[i]));
      continue;
    }
    err += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
    norm += (double)x[i] * x[i];
  }
  double bound = kind == M3_CODEC_RAW_F32 ? 0 : kind == M3_CODEC_RAW_F16 ? 1e-6 : 2e-5;
  if (err / norm > bound)
    fail_msg("%s: relative squared error %.3g above %.3g", m3_codec_kind_name(kind), err / norm,
             bound);
  /* other dtypes: the f32 decode, converted */
  CHECK_OK(m3_codec_decode_vectors(re, 0, M3_KV_K, codes, n, M3_DTYPE_BF16, h));
  for (size_t i = 0; i < n * dim; i++) {
    uint32_t u;
    memcpy(&u, &y[i], 4);
    uint32_t want = (u + 0x7fff + ((u >> 16) & 1)) >> 16;
    if (h[i] != (uint16_t)want)
      fail_msg("bf16 output element %zu: 0x%04x, want 0x%04x", i, h[i], want);
  }
  CHECK_OK(m3_codec_decode_vectors(re, 0, M3_KV_K, codes, n, M3_DTYPE_F16, h));
  if (kind == M3_CODEC_RAW_F16)
    assert_memory_equal(h, codes, n * dim * 2);
  CHECK_RC(m3_codec_decode_vectors(re, 0, M3_KV_K, codes, n, 9, h), M3_EINVAL);
  free(h);
  free(y);
  free(codes);
  free(x);
  m3_codec_set_close(re);
  m3_codec_set_close(cs);
}

static void test_raw_f32(void **state) { round_trip(M3_CODEC_RAW_F32, 80); }
static void test_raw_f16(void **state) { round_trip(M3_CODEC_RAW_F16, 80); }
static void test_raw_bf16(void **state) { round_trip(M3_CODEC_RAW_BF16, 64); }

static void test_raw_kinds_have_distinct_fingerprints(void **state) {
  m3_codec_set *a, *b, *c, *d;
  CHECK_OK(m3_codec_set_create_raw(M3_CODEC_RAW_F32, 80, &a));
  CHECK_OK(m3_codec_set_create_raw(M3_CODEC_RAW_F16, 80, &b));
  CHECK_OK(m3_codec_set_create_raw(M3_CODEC_RAW_BF16, 80, &c));
  CHECK_OK(m3_codec_set_create_raw(M3_CODEC_RAW_BF16, 64, &d));
  uint64_t f[4] = {m3_codec_set_fingerprint(a), m3_codec_set_fingerprint(b),
                   m3_codec_set_fingerprint(c), m3_codec_set_fingerprint(d)};
  for (int i = 0; i < 4; i++)
    for (int j = i + 1; j < 4; j++)
      assert_true(f[i] != f[j]);
  m3_codec_set_close(a);
  CHECK_RC(m3_codec_set_create_raw(M3_CODEC_FAISS, 80, &a), M3_EINVAL);
  m3_codec_set_close(b);
  m3_codec_set_close(c);
  m3_codec_set_close(d);
  m3_codec_set_close(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_raw_f32),
      cmocka_unit_test(test_raw_f16),
      cmocka_unit_test(test_raw_bf16),
      cmocka_unit_test(test_raw_kinds_have_distinct_fingerprints),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
