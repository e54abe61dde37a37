/*
 * The fingerprint changes when any codebook byte changes: every byte of the
 * decode tables and of the serialized FAISS index (the codebooks themselves)
 * of a trained codec set, one at a time. Retraining on other data changes it;
 * saving and reopening keeps it.
 */
#include <unistd.h>

#include "codec_testlib.h"

static void test_every_codebook_byte_changes_fingerprint(void **state) {
  m3_codec_set *cs = ct_train("OPQ4_16,Residual2x4,PQ4x4", 16, 0, 2000, 1);
  size_t len;
  uint8_t *b = ct_bytes(cs, &len);
  uint64_t fp0 = m3_codec_set_fingerprint(cs), fp;
  size_t checked = 0;
  for (unsigned i = 0; i < 2; i++) {
    ct_entry e = ct_entry_at(b, i);
    assert_true(e.tables_len > 0 && e.faiss_len > 0);
    size_t ranges[2][2] = {{e.tables_off, e.tables_len}, {e.faiss_off, e.faiss_len}};
    for (int r = 0; r < 2; r++)
      for (size_t k = ranges[r][0]; k < ranges[r][0] + ranges[r][1]; k++) {
        for (int bit = 0; bit < 8; bit += 7) { /* lowest and highest bit */
          b[k] ^= (uint8_t)(1u << bit);
          CHECK_OK(m3_codec_fingerprint(b, len, &fp));
          if (fp == fp0)
            fail_msg("entry %u byte %zu bit %d: fingerprint unchanged", i, k, bit);
          b[k] ^= (uint8_t)(1u << bit);
        }
        checked++;
      }
  }
  print_message("checked %zu codebook bytes of %zu file bytes\n", checked, len);
  CHECK_OK(m3_codec_fingerprint(b, len, &fp));
  assert_true(fp == fp0);
  free(b);
  m3_codec_set_close(cs);
}

static void test_retrain_and_reopen(void **state) {
  m3_codec_set *a = ct_train("PQ4x4", 16, 0, 2000, 1);
  m3_codec_set *b = ct_train("PQ4x4", 16, 0, 2000, 2);
  assert_true(m3_codec_set_fingerprint(a) != m3_codec_set_fingerprint(b));
  char path[] = "/tmp/m3-codec-fp-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  CHECK_OK(m3_codec_set_save(a, path));
  m3_codec_set *re = NULL;
  CHECK_OK(m3_codec_set_open(path, &re));
  assert_true(m3_codec_set_fingerprint(re) == m3_codec_set_fingerprint(a));
  assert_string_equal(m3_codec_set_name(re), path);
  /* the reopened set encodes exactly like the trained one */
  float *x = ct_vectors(300, 16, 9, 0);
  uint8_t c1[300 * 8], c2[300 * 8];
  CHECK_OK(m3_codec_encode_vectors(a, 0, M3_KV_V, x, 300, c1));
  CHECK_OK(m3_codec_encode_vectors(re, 0, M3_KV_V, x, 300, c2));
  assert_memory_equal(c1, c2, 300 * m3_codec_set_code_bytes(a));
  free(x);
  unlink(path);
  m3_codec_set_close(re);
  m3_codec_set_close(b);
  m3_codec_set_close(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_codebook_byte_changes_fingerprint),
      cmocka_unit_test(test_retrain_and_reopen),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
