/*
 * Encoding and decoding on tiny hand-made models whose results can be worked
 * out by hand: SentencePiece BPE merge order, unigram Viterbi, byte fallback,
 * unknown runs, whitespace normalization, invalid UTF-8, BOS, the M3_ERANGE
 * contract, tokenizer.json merges and unk fusing, decode, and clones used
 * from several threads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>

#include "m3/error.h"
#include "m3/tokenizer.h"
#include "tok_testlib.h"

#define U2581 "\xE2\x96\x81"
#define BYTE0 12 /* id of <0x00> in the BPE test model */

static void assert_ids(const int32_t *got, size_t n, const int32_t *want,
                       size_t wn, const char *text) {
  int same = n == wn;
  for (size_t i = 0; same && i < n; i++)
    same = got[i] == want[i];
  if (same)
    return;
  char g[512] = "", w[512] = "";
  for (size_t i = 0; i < n && strlen(g) < 480; i++)
    snprintf(g + strlen(g), sizeof(g) - strlen(g), " %d", got[i]);
  for (size_t i = 0; i < wn && strlen(w) < 480; i++)
    snprintf(w + strlen(w), sizeof(w) - strlen(w), " %d", want[i]);
  fail_msg("encode \"%s\": got [%s ] want [%s ]", text, g, w);
}

#define EXPECT(tok, text, bos, ...)                                          \
  do {                                                                      \
    const int32_t want_[] = {__VA_ARGS__};                                  \
    int32_t got_[64];                                                       \
    size_t n_ = 0;                                                          \
    int rc_ = m3_tokenizer_encode(tok, text, strlen(text), bos, got_, 64,   \
                                  &n_);                                     \
    if (rc_)                                                                \
      fail_msg("encode: %s: %s", m3_err_name(rc_), m3_errmsg());            \
    assert_ids(got_, n_, want_, sizeof(want_) / sizeof(want_[0]), text);    \
  } while (0)

static m3_tokenizer *load(const char *path) {
  m3_tokenizer *tok = NULL;
  int rc = m3_tokenizer_load(path, &tok);
  if (rc)
    fail_msg("load %s: %s: %s", path, m3_err_name(rc), m3_errmsg());
  return tok;
}

/* ids: 3 ▁, 4 a, 5 b, 6 c, 7 ab, 8 bc, 9 ▁ab, 10 abc, 11 ▁abc, 12.. bytes */
static const tpiece kBpePieces[] = {
    {U2581, -10, 0}, {"a", -10, 0},    {"b", -10, 0},         {"c", -10, 0},
    {"ab", -1, 0},   {"bc", -2, 0},    {U2581 "ab", -3, 0},   {"abc", -4, 0},
    {U2581 "abc", -5, 0},
};

static m3_tokenizer *bpe_model(const char *name, int remove_ws) {
  tmodel_opts o = {2, 1, -1, remove_ws, -1};
  char *p = tl_write_model(name, kBpePieces, 9, &o);
  m3_tokenizer *tok = load(p);
  free(p);
  return tok;
}

static void test_spm_bpe(void **state) {
  m3_tokenizer *tok = bpe_model("bpe.model", -1);
  /* ab (-1) first, then ▁ab (-3) beats bc (stale) and abc (-4), then ▁abc */
  EXPECT(tok, "abc", 0, 11);
  EXPECT(tok, "bca", 0, 3, 8, 4);
  EXPECT(tok, "abc", 1, 1, 11);
  m3_tokenizer_free(tok);
}

static void test_spm_bpe_edges(void **state) {
  m3_tokenizer *tok = bpe_model("bpe2.model", -1);
  int32_t ids[8];
  size_t n = 99;
  assert_int_equal(m3_tokenizer_encode(tok, "", 0, 0, ids, 8, &n), 0);
  assert_int_equal(n, 0);
  assert_int_equal(m3_tokenizer_encode(tok, "   ", 3, 1, ids, 8, &n), 0);
  assert_int_equal(n, 1);
  assert_int_equal(ids[0], 1);
  /* é is not a piece: its UTF-8 bytes */
  EXPECT(tok, "\xC3\xA9", 0, 3, BYTE0 + 0xC3, BYTE0 + 0xA9);
  /* an invalid byte is U+FFFD, then byte fallback */
  EXPECT(tok, "\xFF", 0, 3, BYTE0 + 0xEF, BYTE0 + 0xBF, BYTE0 + 0xBD);
  /* remove_extra_whitespaces: "▁ab▁c" */
  EXPECT(tok, "  ab   c  ", 0, 9, 3, 6);
  /* M3_ERANGE: the count of the whole encoding, the first cap ids */
  ids[2] = -7;
  assert_int_equal(m3_tokenizer_encode(tok, "bca", 3, 0, ids, 2, &n), M3_ERANGE);
  assert_int_equal(n, 3);
  assert_int_equal(ids[0], 3);
  assert_int_equal(ids[1], 8);
  assert_int_equal(ids[2], -7);
  assert_int_equal(m3_tokenizer_encode(tok, "bca", 3, 0, NULL, 0, &n), M3_ERANGE);
  assert_int_equal(n, 3);
  m3_tokenizer_free(tok);

  /* whitespace kept (Llama): "▁▁ab▁▁▁c▁▁" */
  tok = bpe_model("bpe3.model", 0);
  EXPECT(tok, " ab  c ", 0, 3, 9, 3, 3, 6, 3);
  m3_tokenizer_free(tok);
}

static void test_decode(void **state) {
  m3_tokenizer *tok = bpe_model("bpe4.model", -1);
  char buf[64];
  size_t len = 0;
  const int32_t a[] = {1, 9, 3, 6, 2};
  assert_int_equal(m3_tokenizer_decode(tok, a, 5, buf, sizeof(buf), &len), 0);
  assert_string_equal(buf, "ab c");
  assert_int_equal(len, 4);
  const int32_t b[] = {3, BYTE0 + 0xC3, BYTE0 + 0xA9, 4};
  assert_int_equal(m3_tokenizer_decode(tok, b, 4, buf, sizeof(buf), &len), 0);
  assert_string_equal(buf, "\xC3\xA9" "a");
  const int32_t c[] = {4, BYTE0 + 0xC3, 0};
  assert_int_equal(m3_tokenizer_decode(tok, c, 3, buf, sizeof(buf), &len), 0);
  assert_string_equal(buf, "a\xEF\xBF\xBD \xE2\x81\x87 ");
  /* too small: truncated, terminated, and the needed length */
  assert_int_equal(m3_tokenizer_decode(tok, a, 5, buf, 3, &len), M3_ERANGE);
  assert_int_equal(len, 4);
  assert_string_equal(buf, "ab");
  const int32_t bad[] = {4, 100000};
  assert_int_equal(m3_tokenizer_decode(tok, bad, 2, buf, sizeof(buf), &len), M3_ERANGE);
  assert_non_null(strstr(m3_errmsg(), "100000"));
  m3_tokenizer_free(tok);
}

/* ids: 3 ▁, 4 a, 5 b, 6 ab, 7 ▁a */
static const tpiece kUniPieces[] = {
    {U2581, -2, 0}, {"a", -3, 0}, {"b", -3, 0}, {"ab", -4, 0}, {U2581 "a", -2.5f, 0},
};

static void test_spm_unigram(void **state) {
  tmodel_opts o = {1, 1, -1, -1, -1};
  char *p = tl_write_model("uni.model", kUniPieces, 5, &o);
  m3_tokenizer *tok = load(p);
  free(p);
  assert_int_equal(m3_tokenizer_get_kind(tok), M3_TOKENIZER_SPM_UNIGRAM);
  /* ▁a + b = -5.5 beats ▁ + ab = -6 and ▁ + a + b = -8 */
  EXPECT(tok, "ab", 0, 7, 5);
  EXPECT(tok, "ba", 0, 3, 5, 4);
  EXPECT(tok, "bab", 0, 3, 5, 6);
  /* x is unknown: bytes with byte fallback (bytes follow the 5 pieces) */
  EXPECT(tok, "x", 0, 3, 8 + 'x');
  m3_tokenizer_free(tok);

  /* without byte fallback a run of unknowns is one unk id */
  tmodel_opts ou = {1, 0, -1, -1, -1};
  p = tl_write_model("uni2.model", kUniPieces, 5, &ou);
  tok = load(p);
  free(p);
  EXPECT(tok, "xy\xE6\x97\xA5" "a", 0, 3, 0, 4);
  EXPECT(tok, "axb", 0, 7, 0, 5);
  m3_tokenizer_free(tok);
}

static const char kHf[] =
    "{\"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\", \"special\": true},"
    " {\"id\": 1, \"content\": \"<s>\", \"special\": true},"
    " {\"id\": 2, \"content\": \"</s>\", \"special\": true}],"
    " %s,"
    " \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true,"
    "  \"byte_fallback\": false, \"dropout\": null,"
    "  \"vocab\": {\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2, \"" U2581 "\": 3, \"a\": 4,"
    "   \"b\": 5, \"c\": 6, \"ab\": 7, \"bc\": 8, \"" U2581 "a\": 9},"
    "  \"merges\": [\"" U2581 " a\", \"a b\", \"b c\"]}}";

static m3_tokenizer *hf_model(const char *name, const char *pre) {
  char buf[2048];
  snprintf(buf, sizeof(buf), kHf, pre);
  char *p = tl_write(name, buf, strlen(buf));
  m3_tokenizer *tok = load(p);
  free(p);
  return tok;
}

static void test_hf(void **state) {
  m3_tokenizer *tok = hf_model("llama.json",
      "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": ["
      "{\"type\": \"Prepend\", \"prepend\": \"" U2581 "\"},"
      "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"" U2581 "\"}]}");
  /* ▁a (rank 0) first; then (▁a, b) is no merge and b c (rank 2) is */
  EXPECT(tok, "abc", 0, 9, 8);
  EXPECT(tok, "abc", 1, 1, 9, 8);
  /* unknown characters fuse into one unk */
  EXPECT(tok, "a\xC3\xA9\xE2\x82\xAC" "b", 0, 9, 0, 5);
  EXPECT(tok, "b a", 0, 3, 5, 9);
  char buf[32];
  size_t len;
  const int32_t ids[] = {1, 9, 8, 3, 5};
  assert_int_equal(m3_tokenizer_decode(tok, ids, 5, buf, sizeof(buf), &len), 0);
  assert_string_equal(buf, "abc b");
  m3_tokenizer_free(tok);

  /* Metaspace split: merges stop at word starts */
  tok = hf_model("meta.json", "\"pre_tokenizer\": {\"type\": \"Metaspace\", "
                 "\"replacement\": \"" U2581 "\", \"prepend_scheme\": \"always\", \"split\": true}");
  EXPECT(tok, "a a", 0, 9, 9);
  EXPECT(tok, U2581 "a", 0, 9);
  m3_tokenizer_free(tok);
}

typedef struct worker {
  m3_tokenizer *tok;
  int ok;
} worker;

static void *work(void *arg) {
  worker *w = arg;
  static const char text[] = "abc bca  abab \xC3\xA9 cab";
  int32_t ref[64], ids[64];
  size_t nref = 0, n = 0;
  w->ok = m3_tokenizer_encode(w->tok, text, sizeof(text) - 1, 1, ref, 64, &nref) == 0;
  for (int i = 0; w->ok && i < 2000; i++) {
    w->ok = m3_tokenizer_encode(w->tok, text, sizeof(text) - 1, 1, ids, 64, &n) == 0 &&
            n == nref && memcmp(ids, ref, n * sizeof(*ids)) == 0;
    /* a longer text grows the scratch mid-run */
    if (i == 1000) {
      char big[3000];
      memset(big, 'a', sizeof(big));
      int32_t many[4096];
      w->ok = w->ok && m3_tokenizer_encode(w->tok, big, sizeof(big), 0, many,
                                           4096, &n) == 0;
    }
  }
  return NULL;
}

static void test_clone_threads(void **state) {
  m3_tokenizer *tok = bpe_model("bpe5.model", -1);
  worker w[4];
  pthread_t th[4];
  for (int i = 0; i < 4; i++) {
    assert_int_equal(m3_tokenizer_clone(tok, &w[i].tok), 0);
    assert_int_equal(pthread_create(&th[i], NULL, work, &w[i]), 0);
  }
  m3_tokenizer_free(tok); /* clones keep the vocabulary alive */
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    assert_true(w[i].ok);
    m3_tokenizer_free(w[i].tok);
  }
}

static int teardown(void **state) {
  tl_cleanup();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_spm_bpe),
      cmocka_unit_test(test_spm_bpe_edges),
      cmocka_unit_test(test_decode),
      cmocka_unit_test(test_spm_unigram),
      cmocka_unit_test(test_hf),
      cmocka_unit_test(test_clone_threads),
  };
  return cmocka_run_group_tests(tests, NULL, teardown);
}
