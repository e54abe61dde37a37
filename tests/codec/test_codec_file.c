/*
 * Codec set files: a hand-built table codec decodes as the format says, and
 * every kind of bad file is refused with a message naming the file and the
 * field (m3core only: no FAISS needed to read or check a file).
 */
#include <unistd.h>

#include "codec_testlib.h"

#include "../../core/src/codec_internal.h"

#define DIM 4
/* fields: 4 bits (16 rows), 4 bits (16 rows), 8 bits (200 rows) -> 2 bytes + pad */
static const m3__codec_field kFields[3] = {{0, 4, 16, 0}, {4, 4, 16, 16}, {8, 8, 200, 32}};
#define ROWS 232

static float g_bias[DIM], g_tables[ROWS * DIM];

static m3_codec_set *handmade(void) {
  for (int j = 0; j < DIM; j++)
    g_bias[j] = 0.5f * (float)j;
  for (int r = 0; r < ROWS; r++)
    for (int j = 0; j < DIM; j++)
      g_tables[r * DIM + j] = (float)r + 0.001f * (float)j;
  m3__codec_in in[2];
  memset(in, 0, sizeof in);
  static const char blob[] = "not really a faiss index";
  for (int i = 0; i < 2; i++) {
    in[i].kind = M3_CODEC_FAISS;
    in[i].dim = DIM;
    in[i].code_bytes = 2;
    in[i].factory = i ? "PQ1x4,handmade-V" : "PQ1x4,handmade-K";
    in[i].n_fields = 3;
    in[i].fields = kFields;
    in[i].bias = g_bias;
    in[i].tables = g_tables;
    in[i].faiss = blob;
    in[i].faiss_bytes = sizeof blob;
  }
  m3_codec_set *cs = NULL;
  CHECK_OK(m3__codec_set_build(0, in, 2, "handmade", &cs));
  return cs;
}

static void test_handmade_tables_decode(void **state) {
  m3_codec_set *cs = handmade();
  uint8_t codes[2 * 3] = {0x21, 0x07, 0xff, 0xc7, 0x00, 0x00};
  float out[3 * DIM];
  /* code 2 would hold field 2 = 0xc7 = 199 < 200: fine; the second code: f0 15, f1 15, f2 199 */
  codes[2] = 0xff;
  codes[3] = 199;
  CHECK_OK(m3_codec_decode_vectors(cs, 0, M3_KV_K, codes, 3, M3_DTYPE_F32, out));
  uint32_t rows[3][3] = {{1, 16 + 2, 32 + 7}, {15, 16 + 15, 32 + 199}, {0, 16, 32}};
  for (int v = 0; v < 3; v++)
    for (int j = 0; j < DIM; j++) {
      float want = g_bias[j];
      for (int f = 0; f < 3; f++)
        want += g_tables[rows[v][f] * DIM + j];
      if (out[v * DIM + j] != want)
        fail_msg("vector %d dim %d: %a, want %a", v, j, (double)out[v * DIM + j], (double)want);
    }
  codes[3] = 200; /* outside field 2's 200 rows */
  CHECK_RC(m3_codec_decode_vectors(cs, 0, M3_KV_K, codes, 3, M3_DTYPE_F32, out), M3_ECORRUPT);
  CHECK_CONTAINS(m3_errmsg(), "vector 1");
  m3_codec_info info;
  CHECK_OK(m3_codec_set_info(cs, 3, M3_KV_V, &info));
  assert_string_equal(info.factory, "PQ1x4,handmade-V");
  assert_int_equal(info.has_tables, 1);
  assert_int_equal(info.table_rows, ROWS);
  CHECK_RC(m3_codec_set_info(cs, 0, 2, &info), M3_EINVAL);
  m3_codec_set_close(cs);
}

/* Load buf as a file named path; expect rc and a message naming path and field. */
static void expect_refused(const uint8_t *buf, size_t len, int want, const char *field) {
  char path[] = "/tmp/m3-codec-bad-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, buf, len), (ssize_t)len);
  close(fd);
  m3_codec_set *cs = (m3_codec_set *)1;
  CHECK_RC(m3_codec_set_open(path, &cs), want);
  assert_null(cs);
  CHECK_CONTAINS(m3_errmsg(), path);
  CHECK_CONTAINS(m3_errmsg(), field);
  unlink(path);
}

static void test_bad_files_are_refused(void **state) {
  m3_codec_set *cs = handmade();
  size_t len;
  uint8_t *good = ct_bytes(cs, &len), *b = malloc(len + 8);
  ct_entry e0 = ct_entry_at(good, 0);
#define FRESH() memcpy(b, good, len)

  FRESH();
  expect_refused(b, 40, M3_EBADFORMAT, "header");
  FRESH();
  b[0] = 'X';
  expect_refused(b, len, M3_EBADFORMAT, "'magic'");
  FRESH();
  b[8] = 2;
  ct_reseal(b, len);
  expect_refused(b, len, M3_EVERSION, "'version'");
  FRESH();
  b[61] ^= 1;
  expect_refused(b, len, M3_ECORRUPT, "'header_crc'");
  FRESH();
  b[len - 3] ^= 0x10;
  expect_refused(b, len, M3_ECORRUPT, "'body_crc'");
  FRESH();
  b[24] ^= 1;
  ct_st32(b + 60, m3_crc32c(0, b, 60));
  expect_refused(b, len, M3_ECORRUPT, "'fingerprint'");
  FRESH();
  b[12] = 99;
  ct_reseal(b, len);
  expect_refused(b, len, M3_EBADFORMAT, "'kind'");
  FRESH();
  b[14] = 0;
  ct_reseal(b, len);
  expect_refused(b, len, M3_EBADFORMAT, "'head_dim'");
  FRESH();
  b[20] = 3;
  ct_reseal(b, len);
  expect_refused(b, len, M3_EBADFORMAT, "'n_codecs'");
  FRESH();
  ct_st64(b + 32, len - 64 - 8);
  ct_reseal(b, len);
  expect_refused(b, len, M3_EBADFORMAT, "'body_bytes'");
  /* entry fields */
  FRESH();
  b[e0.off] = 'X';
  ct_reseal(b, len);
  expect_refused(b, len, M3_EBADFORMAT, "entry 0 (K)");
  FRESH();
  b[e0.off + 6] = 5; /* dim */
  ct_reseal(b, len);
  expect_refused(b, len, M3_EBADFORMAT, "'dim'");
  FRESH();
  b[e0.off + 40] += 8; /* entry_bytes */
  ct_reseal(b, len);
  expect_refused(b, len, M3_EBADFORMAT, "'entry_bytes'");
  FRESH();
  b[e0.off + 48] = 0x01; /* factory byte */
  ct_reseal(b, len);
  expect_refused(b, len, M3_EBADFORMAT, "'factory'");
  FRESH();
  ct_st32(b + e0.fields_off + 16 * 2 + 4, 0); /* field 2 nbits */
  ct_reseal(b, len);
  expect_refused(b, len, M3_EBADFORMAT, "'nbits'");
  FRESH();
  ct_st32(b + e0.fields_off + 16 * 1 + 8, 17); /* field 1 count > 2^4 */
  ct_reseal(b, len);
  expect_refused(b, len, M3_EBADFORMAT, "'count'");
  FRESH();
  ct_st32(b + e0.fields_off + 16 * 1, 2); /* field 1 overlaps field 0 */
  ct_reseal(b, len);
  expect_refused(b, len, M3_EBADFORMAT, "'bit_off'");
  FRESH();
  ct_st32(b + e0.fields_off + 16 * 2, 12); /* field 2 leaves the 2-byte code */
  ct_reseal(b, len);
  expect_refused(b, len, M3_EBADFORMAT, "'bit_off'");
  FRESH();
  ct_st32(b + e0.fields_off + 16 * 2 + 12, 31); /* row0 */
  ct_reseal(b, len);
  expect_refused(b, len, M3_EBADFORMAT, "'row0'");
  FRESH();
  ct_st32(b + e0.off + 20, ROWS + 1); /* table_rows; entry size changes too */
  ct_reseal(b, len);
  expect_refused(b, len, M3_EBADFORMAT, "entry 0 (K)");
  /* trailing garbage */
  FRESH();
  memset(b + len, 0, 8);
  ct_st64(b + 32, len + 8 - 64);
  ct_reseal(b, len + 8);
  expect_refused(b, len + 8, M3_EBADFORMAT, "after the last entry");
  /* a missing file */
  m3_codec_set *none = NULL;
  int rc = m3_codec_set_open("/nonexistent/m3-codecs.m3c", &none);
  assert_true(rc < 0);
  CHECK_CONTAINS(m3_errmsg(), "/nonexistent/m3-codecs.m3c");
  /* and the good bytes load, from memory too */
  CHECK_OK(m3_codec_set_load(good, len, "good", &none));
  m3_codec_set_close(none);
#undef FRESH
  free(b);
  free(good);
  m3_codec_set_close(cs);
}

static void test_fingerprint_ignores_nothing_in_the_body(void **state) {
  m3_codec_set *cs = handmade();
  size_t len;
  uint8_t *b = ct_bytes(cs, &len);
  uint64_t fp0 = m3_codec_set_fingerprint(cs), fp;
  CHECK_OK(m3_codec_fingerprint(b, len, &fp));
  assert_true(fp == fp0);
  for (size_t i = 8; i < len; i++) {
    if (i >= 24 && i < 64)
      continue; /* fingerprint, body_bytes, CRCs, reserved: not hashed */
    b[i] ^= 0x80;
    CHECK_OK(m3_codec_fingerprint(b, len, &fp));
    if (fp == fp0)
      fail_msg("flipping byte %zu left the fingerprint unchanged", i);
    b[i] ^= 0x80;
  }
  free(b);
  m3_codec_set_close(cs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_handmade_tables_decode),
      cmocka_unit_test(test_bad_files_are_refused),
      cmocka_unit_test(test_fingerprint_ignores_nothing_in_the_body),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
