/*
 * The built-in hash embedder: exact values for a fixed text (the algorithm
 * of m3/embed.h, checked against an independent reference implementation
 * when these numbers were written), unit norm, word splitting and ASCII case
 * folding, bigrams, sublinear term frequency, related texts closer than
 * unrelated ones, empty text, and the "hash:DIM" spec.
 */
#include <math.h>
#include <stdlib.h>

#include "index/index_testlib.h"
#include "m3/embed.h"

static double dot(const float *a, const float *b, unsigned d) {
  double s = 0;
  for (unsigned i = 0; i < d; i++) s += (double)a[i] * b[i];
  return s;
}

static void embed(const char *t, float *out, unsigned dim) { CHECK_OK(m3_embed_hash(t, strlen(t), out, dim)); }

static void test_fixed_values(void **state) {
  (void)state;
  float v[64];
  embed("The quick brown fox jumps over the lazy dog; the fox!", v, 64);
  /* Bit-exact: 13 non-zero buckets (features that share a bucket add up or
   * cancel); "the" (tf 3) and "fox" (tf 2) land in buckets 49 and 48. */
  static const struct {
    int i;
    float x;
  } want[] = {
      {2, 0x1.bc0e18p-3f},  {7, 0x1.bc0e18p-3f},   {20, 0x1.bc0e18p-3f}, {22, -0x1.bc0e18p-3f},
      {27, -0x1.bc0e18p-3f}, {42, 0x1.bc0e18p-3f}, {43, 0x1.bc0e18p-3f}, {47, 0x1.bc0e18p-3f},
      {48, -0x1.77ecdep-2f}, {49, -0x1.d1f31ep-2f}, {50, 0x1.bc0e18p-3f}, {57, -0x1.bc0e18p-3f},
      {58, -0x1.bc0e18p-2f},
  };
  float exp_v[64] = {0};
  for (size_t i = 0; i < sizeof want / sizeof *want; i++) exp_v[want[i].i] = want[i].x;
  for (int i = 0; i < 64; i++)
    if (v[i] != exp_v[i]) fail_msg("component %d: %a, want %a", i, (double)v[i], (double)exp_v[i]);
  CHECK_NEAR(dot(v, v, 64), 1.0, 1e-6);
  /* a word's weight: "hello" alone is one feature, +-1 in one bucket */
  float w[64];
  embed("hello", w, 64);
  int nz = 0;
  for (int i = 0; i < 64; i++) nz += w[i] != 0;
  CHECK_U64(nz, 1);
}

static void test_norm_and_determinism(void **state) {
  (void)state;
  float a[256], b[256];
  const char *t = "Memory layers store keys and values of 8 selected tokens per head.";
  embed(t, a, 256);
  embed(t, b, 256);
  assert_memory_equal(a, b, sizeof a);
  CHECK_NEAR(dot(a, a, 256), 1.0, 1e-6);
  /* dim 1: everything in one bucket, still unit length */
  float one;
  embed("a b c", &one, 1);
  CHECK_NEAR(fabs(one), 1.0, 1e-7);
}

static void test_tokens_and_case(void **state) {
  (void)state;
  float a[128], b[128], c[128];
  /* case folding and any run of separators are the same */
  embed("Hello, WORLD", a, 128);
  embed("hello world", b, 128);
  assert_memory_equal(a, b, sizeof a);
  embed("  hello...\t\nworld!!  ", c, 128);
  assert_memory_equal(a, c, sizeof a);
  /* digits are word characters, "_" and "-" separate */
  embed("hello_world", c, 128);
  assert_memory_equal(a, c, sizeof a);
  embed("hello-world-2", c, 128);
  assert_true(memcmp(a, c, sizeof a) != 0);
  /* word order matters through bigrams only */
  embed("world hello", c, 128);
  assert_true(memcmp(a, c, sizeof a) != 0);
  double d = dot(a, c, 128);
  assert_true(d > 0.3 && d < 0.99);
  /* UTF-8 bytes are word characters and are not case-folded */
  embed("caf\xc3\xa9 na\xc3\xafve", a, 128);
  embed("CAF\xc3\xa9 NA\xc3\xafVE", b, 128);
  assert_memory_equal(a, b, sizeof a);
  embed("caf\xc3\x89 na\xc3\xafve", c, 128); /* É is not folded to é */
  assert_true(memcmp(a, c, sizeof a) != 0);
  embed("caf na ve", c, 128); /* and the bytes do not split words */
  assert_true(memcmp(a, c, sizeof a) != 0);
  /* NUL is a separator like any other non-word byte, not an end */
  const char nul[] = "hello\0world";
  CHECK_OK(m3_embed_hash(nul, sizeof nul - 1, a, 128));
  embed("hello world", b, 128);
  assert_memory_equal(a, b, sizeof a);
}

static void test_sublinear_tf(void **state) {
  (void)state;
  /* one unigram feature repeated: 1 + ln tf in one bucket, normalized away;
   * with a second word the ratio of their weights shows it */
  float v[4096];
  embed("alpha alpha alpha alpha beta", v, 4096);
  /* features: alpha (tf 4), beta (1), "alpha alpha" (3), "alpha beta" (1) */
  float w[4096];
  embed("beta", w, 4096);
  int bb = -1;
  for (int i = 0; i < 4096; i++)
    if (w[i] != 0) bb = i;
  assert_true(bb >= 0);
  embed("alpha", w, 4096);
  int ba = -1;
  for (int i = 0; i < 4096; i++)
    if (w[i] != 0) ba = i;
  assert_true(ba >= 0 && ba != bb);
  double ratio = fabs(v[ba]) / fabs(v[bb]);
  CHECK_NEAR(ratio, 1.0 + log(4.0), 1e-5);
}

static void test_similar_closer(void **state) {
  (void)state;
  enum { D = 256 };
  float q[D], near1[D], near2[D], far1[D], far2[D];
  embed("how do explicit memories reduce the cost of retrieval in language models", q, D);
  embed("explicit memories reduce the retrieval cost of large language models", near1, D);
  embed("the cost of retrieval for language models with explicit memories", near2, D);
  embed("a recipe for banana bread with walnuts and cinnamon", far1, D);
  embed("the weather in paris will be sunny on tuesday", far2, D);
  double n1 = dot(q, near1, D), n2 = dot(q, near2, D), f1 = dot(q, far1, D), f2 = dot(q, far2, D);
  if (!(n1 > 0.3 && n2 > 0.3 && n1 > f1 + 0.2 && n1 > f2 + 0.2 && n2 > f1 + 0.2 && n2 > f2 + 0.2))
    fail_msg("near %.3f %.3f, far %.3f %.3f", n1, n2, f1, f2);
}

static void test_empty_and_bad(void **state) {
  (void)state;
  float v[8];
  for (int i = 0; i < 8; i++) v[i] = 5;
  CHECK_RC(m3_embed_hash("", 0, v, 8), M3_EINVAL);
  for (int i = 0; i < 8; i++) assert_true(v[i] == 0);
  CHECK_RC(m3_embed_hash(NULL, 0, v, 8), M3_EINVAL);
  CHECK_RC(m3_embed_hash(" ,.;!? ", 7, v, 8), M3_EINVAL);
  CHECK_CONTAINS(m3_errmsg(), "no word");
  for (int i = 0; i < 8; i++) assert_true(v[i] == 0);
  CHECK_RC(m3_embed_hash("x", 1, v, 0), M3_EINVAL);
  CHECK_RC(m3_embed_hash("x", 1, v, 65536), M3_EINVAL);
}

static void test_spec(void **state) {
  (void)state;
  m3_embed_spec sp;
  CHECK_OK(m3_embed_spec_parse("hash:256", &sp));
  CHECK_U64(sp.kind, M3_EMBED_HASH);
  CHECK_U64(sp.dim, 256);
  char buf[32];
  assert_string_equal(m3_embed_spec_format(&sp, buf, sizeof buf), "hash:256");
  float a[256], b[256];
  CHECK_OK(m3_embed(&sp, "some text", 9, a));
  embed("some text", b, 256);
  assert_memory_equal(a, b, sizeof a);
  const char *bad[] = {"hash", "hash:", "hash:0", "hash:65536", "hash:12x", "hash:-3", "bge:1024", ""};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) CHECK_RC(m3_embed_spec_parse(bad[i], &sp), M3_EINVAL);
  CHECK_CONTAINS(m3_errmsg(), "hash:DIM");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fixed_values),   cmocka_unit_test(test_norm_and_determinism),
      cmocka_unit_test(test_tokens_and_case), cmocka_unit_test(test_sublinear_tf),
      cmocka_unit_test(test_similar_closer), cmocka_unit_test(test_empty_and_bad),
      cmocka_unit_test(test_spec),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
