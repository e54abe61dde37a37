/*
 * The BPE trainer of m3-encode test-model (encoder/src/cmd/bpe_train.c):
 * the tokenizer.json it writes loads in m3's tokenizer, round-trips every
 * line of the bundled corpus and text with characters it never saw (byte
 * fallback), respects the vocabulary size, actually merges (fewer tokens
 * than characters), and is deterministic.
 */
#include <stdlib.h>

#include "encode_int.h"
#include "m3/tokenizer.h"
#include "unit/testutil.h"

static char *corpus;
static size_t corpus_len;

static int setup(void **state) {
  (void)state;
  const char *src = getenv("M3_SOURCE_DIR");
  char path[4096];
  snprintf(path, sizeof path, "%s/examples/kb/corpus.txt", src ? src : ".");
  return enc_read_file(path, &corpus, &corpus_len);
}

static int teardown(void **state) {
  (void)state;
  free(corpus);
  return 0;
}

static void roundtrip(m3_tokenizer *tok, const char *line, size_t len, size_t *n_tokens) {
  int32_t ids[4096];
  size_t n = 0, dl = 0;
  char out[8192];
  CHECK_OK(m3_tokenizer_encode(tok, line, len, 0, ids, 4096, &n));
  CHECK_OK(m3_tokenizer_decode(tok, ids, n, out, sizeof out, &dl));
  if (dl != len || memcmp(out, line, len))
    fail_msg("round trip: '%.*s' -> '%s'", (int)len, line, out);
  *n_tokens += n;
}

static void test_train_roundtrip(void **state) {
  (void)state;
  char *dir = m3t_mkdtemp("bpe");
  char path[4200];
  snprintf(path, sizeof path, "%s/tokenizer.json", dir);
  enc_bpe_opts o = {.vocab_size = 800, .min_frequency = 2};
  unsigned nv = 0;
  CHECK_OK(enc_bpe_train(corpus, corpus_len, &o, path, &nv));
  CHECK_U64(nv, 800);
  m3_tokenizer *tok;
  CHECK_OK(m3_tokenizer_load(path, &tok));
  CHECK_U64(m3_tokenizer_vocab_size(tok), 800);
  CHECK_U64(m3_tokenizer_bos_id(tok), 1);
  CHECK_U64(m3_tokenizer_eos_id(tok), 2);
  CHECK_U64(m3_tokenizer_unk_id(tok), 0);
  size_t chars = 0, toks = 0, lines = 0;
  for (char *p = corpus; p < corpus + corpus_len;) {
    char *e = memchr(p, '\n', (size_t)(corpus + corpus_len - p));
    if (!e) e = corpus + corpus_len;
    if (e > p) {
      roundtrip(tok, p, (size_t)(e - p), &toks);
      chars += (size_t)(e - p), lines++;
    }
    p = e + 1;
  }
  assert_true(lines > 200);
  if (toks * 2 > chars) fail_msg("BPE barely merges: %zu tokens for %zu bytes", toks, chars);
  /* unseen characters, digits, runs of spaces: byte fallback */
  static const char *odd[] = {"Grüße aus Köln ☃ 東京 🙂", "a  b   c", "x\ty", "1234567890",
                              "zzzqqq", "<s> literal"};
  for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) roundtrip(tok, odd[i], strlen(odd[i]), &toks);
  /* with BOS */
  int32_t ids[64];
  size_t n;
  CHECK_OK(m3_tokenizer_encode(tok, "The Sun", 7, 1, ids, 64, &n));
  CHECK_U64(ids[0], 1);
  m3_tokenizer_free(tok);

  /* deterministic: the same file again */
  char path2[4200], *a, *b;
  size_t la, lb;
  snprintf(path2, sizeof path2, "%s/again.json", dir);
  CHECK_OK(enc_bpe_train(corpus, corpus_len, &o, path2, &nv));
  CHECK_OK(enc_read_file(path, &a, &la));
  CHECK_OK(enc_read_file(path2, &b, &lb));
  assert_true(la == lb && !memcmp(a, b, la));
  free(a), free(b);
  m3t_rmrf(dir);
  free(dir);
}

static void test_small_corpus_stops(void **state) {
  (void)state;
  char *dir = m3t_mkdtemp("bpe2");
  char path[4200];
  snprintf(path, sizeof path, "%s/tokenizer.json", dir);
  const char *text = "aaa bbb aaa";
  enc_bpe_opts o = {.vocab_size = 5000, .min_frequency = 2};
  unsigned nv = 0;
  CHECK_OK(enc_bpe_train(text, strlen(text), &o, path, &nv));
  assert_true(nv > 259 && nv < 300);
  m3_tokenizer *tok;
  CHECK_OK(m3_tokenizer_load(path, &tok));
  size_t t = 0;
  roundtrip(tok, "aaa bbb ccc", 11, &t);
  m3_tokenizer_free(tok);
  CHECK_RC(enc_bpe_train(text, strlen(text), &(enc_bpe_opts){.vocab_size = 100}, path, &nv), M3_EINVAL);
  m3t_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_train_roundtrip),
                                     cmocka_unit_test(test_small_corpus_stops)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
