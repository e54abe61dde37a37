/*
 * A record encoded with one codec set is refused by another: the fingerprint
 * in the record header must match the decoding set (M3_EFINGERPRINT), and the
 * memory shape must fit it (M3_ESHAPE).
 */
#include "codec_testlib.h"

static const m3_spec kSpec = {2, 2, 4, 16};

static uint8_t *make_record(m3_codec_set *cs, long *size) {
  m3_layout l;
  CHECK_OK(m3_codec_set_layout(cs, &kSpec, &l));
  const size_t nv = m3_spec_vectors(&kSpec);
  float *kv = ct_vectors(nv, 16, 3, 0.2);
  uint8_t *codes = malloc(m3_layout_codes_bytes(&l));
  CHECK_OK(m3_codec_encode(cs, &kSpec, kv, 1, codes));
  uint16_t pos[2 * 2 * 4];
  for (int i = 0; i < 16; i++)
    pos[i] = (uint16_t)(i * 3);
  m3_record_in in = {
      .chunk_id = 42, .chunk_len = 100, .positions = pos, .codes = codes, .text = "text",
      .text_len = 4};
  size_t cap = m3_record_size(&l, 4);
  uint8_t *buf = malloc(cap);
  *size = m3_record_encode(buf, cap, &l, &in);
  assert_true(*size > 0);
  free(codes);
  free(kv);
  return buf;
}

static void test_other_codec_set_is_refused(void **state) {
  m3_codec_set *a = ct_train("Residual2x4,PQ4x4", 16, 0, 2000, 10);
  m3_codec_set *b = ct_train("Residual2x4,PQ4x4", 16, 0, 2000, 11);
  m3_codec_set *raw = NULL;
  CHECK_OK(m3_codec_set_create_raw(M3_CODEC_RAW_BF16, 16, &raw));
  long size;
  uint8_t *buf = make_record(a, &size);
  m3_record rec;
  CHECK_OK(m3_record_parse(buf, (size_t)size, M3_PARSE_ALL, &rec));
  assert_true(rec.layout.codec_fp == m3_codec_set_fingerprint(a));
  size_t out_size = m3_codec_decoded_size(&kSpec, M3_DTYPE_F32);
  float *out = malloc(out_size), *ref = malloc(out_size);
  CHECK_RC(m3_codec_decode_record(b, &rec, M3_DTYPE_F32, out, out_size), M3_EFINGERPRINT);
  CHECK_CONTAINS(m3_errmsg(), "chunk 42");
  CHECK_RC(m3_codec_decode_record(raw, &rec, M3_DTYPE_F32, out, out_size), M3_EFINGERPRINT);
  CHECK_RC(m3_codec_set_check_layout(b, &rec.layout), M3_EFINGERPRINT);
  /* the right set decodes it, as m3_codec_decode does */
  CHECK_OK(m3_codec_decode_record(a, &rec, M3_DTYPE_F32, out, out_size));
  CHECK_OK(m3_codec_decode(a, &kSpec, rec.codes, 1, M3_DTYPE_F32, ref));
  assert_memory_equal(out, ref, out_size);
  CHECK_RC(m3_codec_decode_record(a, &rec, M3_DTYPE_F32, out, out_size - 1), M3_EINVAL);
  /* shapes that do not fit */
  m3_layout l = rec.layout;
  l.spec.head_dim = 8;
  CHECK_RC(m3_codec_set_check_layout(a, &l), M3_ESHAPE);
  m3_spec s8 = {2, 2, 4, 8};
  CHECK_RC(m3_codec_decode(a, &s8, rec.codes, 1, M3_DTYPE_F32, out), M3_ESHAPE);
  free(ref);
  free(out);
  free(buf);
  m3_codec_set_close(raw);
  m3_codec_set_close(b);
  m3_codec_set_close(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_other_codec_set_is_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
