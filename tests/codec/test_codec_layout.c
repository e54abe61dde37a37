/*
 * Code field layouts read off FAISS factory strings: the paper's quantizer is
 * 14 bytes (2x14-bit multi-index list number in 4 bytes, then 8x10-bit PQ),
 * FAISS agrees on the code size of every supported string, and strings that
 * are not sums of code-selected vectors are refused with a reason.
 */
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/index_factory_c.h>

#include "codec_testlib.h"

#include "../../core/src/codec_internal.h"

static m3__codec_field g_f[M3_CODEC_MAX_FIELDS];

static void test_paper_layout(void **state) {
  uint32_t nf = 0, cb = 0;
  char why[160];
  CHECK_OK(m3__codec_layout(M3_CODEC_DEFAULT_FACTORY, 80, g_f, &nf, &cb, why, sizeof why));
  assert_int_equal(cb, 14);
  assert_int_equal(nf, 10);
  assert_int_equal(g_f[0].bit_off, 0);
  assert_int_equal(g_f[0].nbits, 14);
  assert_int_equal(g_f[1].bit_off, 14);
  assert_int_equal(g_f[1].count, 16384);
  for (int m = 0; m < 8; m++) {
    assert_int_equal(g_f[2 + m].bit_off, 32 + 10 * m);
    assert_int_equal(g_f[2 + m].nbits, 10);
    assert_int_equal(g_f[2 + m].count, 1024);
  }
  assert_int_equal(g_f[9].row0, 2 * 16384 + 7 * 1024);
}

/* every supported string: FAISS's sa_code_size equals the layout's */
static void test_layouts_agree_with_faiss_code_size(void **state) {
  static const char *ok[] = {
      "PQ8x10", "PQ4", "PQ16x4np", "OPQ4_16,PQ4x4", "PCAR16,PQ4x6", "RR,PQ2x12",
      "Residual2x4,PQ4x4", "OPQ4_16,Residual2x4,PQ4x4", "Residual300,PQ8", "IMI2x6,PQ4x5",
      "IVF1000,PQ8x8", "IVF70000,PQ2", "IMI2x5,SQ8", "IVF100,SQ4", "SQ8", "SQ4",
      "RQ3x6", "RQ2x8_1x4", "LSQ4x5", M3_CODEC_DEFAULT_FACTORY,
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    uint32_t nf = 0, cb = 0;
    char why[160];
    int rc = m3__codec_layout(ok[i], 16, g_f, &nf, &cb, why, sizeof why);
    if (i + 1 == sizeof ok / sizeof ok[0])
      rc = m3__codec_layout(ok[i], 80, g_f, &nf, &cb, why, sizeof why);
    if (rc)
      fail_msg("'%s' refused: %s", ok[i], why);
    FaissIndex *idx = NULL;
    unsigned d = i + 1 == sizeof ok / sizeof ok[0] ? 80 : 16;
    if (faiss_index_factory(&idx, (int)d, ok[i], METRIC_L2) != 0)
      fail_msg("FAISS refused '%s'", ok[i]);
    size_t sz = 0;
    assert_int_equal(faiss_Index_sa_code_size(idx, &sz), 0);
    if (sz != cb)
      fail_msg("'%s': layout says %u bytes, FAISS %zu", ok[i], cb, sz);
    faiss_Index_free(idx);
  }
}

static void test_unsupported_strings_have_reasons(void **state) {
  static const struct { const char *f, *why; } bad[] = {
      {"L2norm,PQ4", "L2norm"},
      {"Flat", "Flat"},
      {"HNSW32", "HNSW32"},
      {"PCAW8,PQ4", "whitening"},
      {"IVF16,Flat", "Flat"},
      {"PQ5x4", "sub-vectors"},
      {"RQ2x8_Nqint8", "RQ2x8_Nqint8"},
      {"Residual2x14,SQ8", "SQ8"},
      {"PQ2x32", "32-bit"},
      {"OPQ4", "no quantizer"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint32_t nf = 0, cb = 0;
    char why[160];
    CHECK_RC(m3__codec_layout(bad[i].f, 16, g_f, &nf, &cb, why, sizeof why), M3_EUNSUPPORTED);
    CHECK_CONTAINS(why, bad[i].why);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_paper_layout),
      cmocka_unit_test(test_layouts_agree_with_faiss_code_size),
      cmocka_unit_test(test_unsupported_strings_have_reasons),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
