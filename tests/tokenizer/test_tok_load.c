/*
 * Loading tokenizers: the kind is told from the content, special ids and
 * accessors, folders, and every malformed-file error: code plus a message
 * that names the file and what is wrong.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <sys/stat.h>

#include "m3/error.h"
#include "m3/tokenizer.h"
#include "tok_testlib.h"

#define ASSERT_MSG_HAS(needle)                                              \
  do {                                                                      \
    if (!strstr(m3_errmsg(), (needle)))                                     \
      fail_msg("message \"%s\" lacks \"%s\"", m3_errmsg(), (needle));       \
  } while (0)

static const tpiece kPieces[] = {
    {"\xE2\x96\x81", -1, 0}, {"a", -2, 0}, {"b", -3, 0}, {"\xE2\x96\x81" "a", -4, 0},
};
static const tmodel_opts kBpe = {2, 1, -1, -1, -1};

/* Load path, expecting failure rc; the message must name the file. */
static void expect_fail(const char *path, int rc, const char *needle) {
  m3_tokenizer *tok = (m3_tokenizer *)0x1;
  int got = m3_tokenizer_load(path, &tok);
  if (got != rc)
    fail_msg("load %s: got %s (%s), want %s", path, m3_err_name(got),
             m3_errmsg(), m3_err_name(rc));
  assert_null(tok);
  ASSERT_MSG_HAS(path);
  if (needle)
    ASSERT_MSG_HAS(needle);
}

static void test_spm_ok(void **state) {
  char *path = tl_write_model("ok.model", kPieces, 4, &kBpe);
  m3_tokenizer *tok = NULL;
  int rc = m3_tokenizer_load(path, &tok);
  if (rc)
    fail_msg("%s: %s", m3_err_name(rc), m3_errmsg());
  assert_int_equal(m3_tokenizer_get_kind(tok), M3_TOKENIZER_SPM_BPE);
  assert_string_equal(m3_tokenizer_kind_name(M3_TOKENIZER_SPM_BPE), "spm-bpe");
  assert_int_equal(m3_tokenizer_vocab_size(tok), 3 + 4 + 256);
  assert_int_equal(m3_tokenizer_unk_id(tok), 0);
  assert_int_equal(m3_tokenizer_bos_id(tok), 1);
  assert_int_equal(m3_tokenizer_eos_id(tok), 2);
  assert_int_equal(m3_tokenizer_pad_id(tok), -1);
  assert_string_equal(m3_tokenizer_id_to_piece(tok, 4), "a");
  assert_string_equal(m3_tokenizer_id_to_piece(tok, 7), "<0x00>");
  assert_null(m3_tokenizer_id_to_piece(tok, 3 + 4 + 256));
  assert_null(m3_tokenizer_id_to_piece(tok, -1));
  assert_int_equal(m3_tokenizer_piece_to_id(tok, "\xE2\x96\x81" "a"), 6);
  assert_int_equal(m3_tokenizer_piece_to_id(tok, "<s>"), 1);
  assert_int_equal(m3_tokenizer_piece_to_id(tok, "zz"), -1);
  assert_true(m3_tokenizer_score(tok, 5) == -3.0f);
  m3_tokenizer_free(tok);
  m3_tokenizer_free(NULL);

  /* a folder holding tokenizer.model */
  char dir[300];
  snprintf(dir, sizeof(dir), "%s/folder", tl_tmpdir());
  assert_int_equal(mkdir(dir, 0755), 0);
  size_t len;
  uint8_t *buf = tl_pack_model(kPieces, 4, &kBpe, &len);
  free(tl_write("folder/tokenizer.model", buf, len));
  free(buf);
  assert_int_equal(m3_tokenizer_load(dir, &tok), 0);
  assert_int_equal(m3_tokenizer_vocab_size(tok), 263);
  m3_tokenizer_free(tok);
  free(path);
}

static void test_missing(void **state) {
  char p[300];
  snprintf(p, sizeof(p), "%s/nope.model", tl_tmpdir());
  expect_fail(p, M3_ENOTFOUND, NULL);
  snprintf(p, sizeof(p), "%s/emptydir", tl_tmpdir());
  assert_int_equal(mkdir(p, 0755), 0);
  expect_fail(p, M3_ENOTFOUND, "neither tokenizer.model nor tokenizer.json");
  char *e = tl_write("empty.model", "", 0);
  expect_fail(e, M3_EBADFORMAT, "empty");
  free(e);
}

static void test_spm_truncated(void **state) {
  size_t len;
  uint8_t *buf = tl_pack_model(kPieces, 4, &kBpe, &len);
  /* every cut inside the pieces must fail cleanly; some cuts land on a
   * message boundary and parse (fewer pieces) and then fail a later check */
  int parse_errors = 0;
  for (size_t cut = 1; cut < len; cut += 7) {
    char *p = tl_write("cut.model", buf, cut);
    m3_tokenizer *tok = NULL;
    int rc = m3_tokenizer_load(p, &tok);
    if (rc == 0) {
      m3_tokenizer_free(tok); /* a prefix that is itself a valid model */
    } else {
      assert_true(rc == M3_EBADFORMAT || rc == M3_EUNSUPPORTED);
      ASSERT_MSG_HAS(p);
      if (strstr(m3_errmsg(), "does not parse"))
        parse_errors++;
    }
    free(p);
  }
  assert_true(parse_errors > 0);
  char *p = tl_write("half.model", buf, len / 2 + 1);
  expect_fail(p, M3_EBADFORMAT, NULL);
  free(p);
  free(buf);
}

static void test_spm_bad_fields(void **state) {
  /* no pieces at all: a valid, empty ModelProto */
  char *p = tl_write("nopieces.model", "\x12\x02\x18\x02", 4);
  expect_fail(p, M3_EBADFORMAT, "no pieces");
  free(p);

  /* no unknown piece */
  tpiece nounk[] = {{"a", -1, 0}};
  size_t len;
  tmodel_opts o = {2, 0, -1, -1, -1};
  uint8_t *buf = tl_pack_model(nounk, 1, &o, &len);
  /* turn <unk> (type 2) into a NORMAL piece: rewrite its type byte */
  for (size_t i = 0; i + 1 < len; i++)
    if (buf[i] == 0x18 && buf[i + 1] == 0x02) {
      buf[i + 1] = 0x01;
      break;
    }
  p = tl_write("nounk.model", buf, len);
  expect_fail(p, M3_EBADFORMAT, "UNKNOWN");
  free(p);
  free(buf);

  tpiece dup[] = {{"a", -1, 0}, {"a", -2, 0}};
  p = tl_write_model("dup.model", dup, 2, &o);
  expect_fail(p, M3_EBADFORMAT, "defined twice");
  free(p);

  tpiece emptyp[] = {{"", -1, 0}};
  p = tl_write_model("emptypiece.model", emptyp, 1, &o);
  expect_fail(p, M3_EBADFORMAT, "empty");
  free(p);

  /* byte pieces without byte_fallback */
  tpiece byte[] = {{"<0x41>", 0, 6}};
  p = tl_write_model("byte.model", byte, 1, &o);
  expect_fail(p, M3_EBADFORMAT, "byte_fallback");
  free(p);

  /* byte_fallback with a byte piece missing */
  tmodel_opts ob = {2, 1, -1, -1, -1};
  buf = tl_pack_model(kPieces, 4, &ob, &len);
  Sentencepiece__ModelProto *mp = sentencepiece__model_proto__unpack(NULL, len, buf);
  assert_non_null(mp);
  mp->n_pieces--; /* drop <0xFF> */
  size_t len2 = sentencepiece__model_proto__get_packed_size(mp);
  uint8_t *buf2 = malloc(len2);
  sentencepiece__model_proto__pack(mp, buf2);
  mp->n_pieces++;
  sentencepiece__model_proto__free_unpacked(mp, NULL);
  p = tl_write("nobyte.model", buf2, len2);
  expect_fail(p, M3_EBADFORMAT, "<0xFF>");
  free(p);
  free(buf);
  free(buf2);

  /* WORD model */
  tmodel_opts ow = {3, 0, -1, -1, -1};
  p = tl_write_model("word.model", kPieces, 4, &ow);
  expect_fail(p, M3_EUNSUPPORTED, "WORD");
  free(p);

  /* garbage that is not a protobuf */
  p = tl_write("garbage.model", "\xff\xff\xff\xff\xff\xff", 6);
  expect_fail(p, M3_EBADFORMAT, "does not parse");
  free(p);
}

static const char kJsonHead[] =
    "{\"version\": \"1.0\", \"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\", "
    "\"special\": true}, {\"id\": 1, \"content\": \"<s>\", \"special\": true}, "
    "{\"id\": 2, \"content\": \"</s>\", \"special\": true}],\n";

static char *write_json(const char *name, const char *rest) {
  char buf[4096];
  snprintf(buf, sizeof(buf), "%s%s", kJsonHead, rest);
  return tl_write(name, buf, strlen(buf));
}

static void test_json_errors(void **state) {
  /* bad JSON: line and column */
  char *p = write_json("bad.json", "\"model\": {\"type\": \"BPE\",\n  \"vocab\": {,}}}");
  expect_fail(p, M3_EBADFORMAT, ":3:");
  ASSERT_MSG_HAS("bad JSON");
  free(p);

  p = write_json("nomodel.json", "\"x\": 1}");
  expect_fail(p, M3_EBADFORMAT, "\"model\"");
  free(p);

  p = write_json("wp.json", "\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}");
  expect_fail(p, M3_EUNSUPPORTED, "WordPiece");
  free(p);

  static const char vocab[] =
      "\"vocab\": {\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2, \"a\": 3, \"b\": 4, \"ab\": 5}";
  char rest[2048];
  snprintf(rest, sizeof(rest),
           "\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false},"
           "\"model\": {\"type\": \"BPE\", %s, \"merges\": [\"a b\"]}}", vocab);
  p = write_json("bytelevel.json", rest);
  expect_fail(p, M3_EUNSUPPORTED, "ByteLevel");
  free(p);

  snprintf(rest, sizeof(rest),
           "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFKC\"}]},"
           "\"model\": {\"type\": \"BPE\", %s, \"merges\": [\"a b\"]}}", vocab);
  p = write_json("nfkc.json", rest);
  expect_fail(p, M3_EUNSUPPORTED, "NFKC");
  free(p);

  snprintf(rest, sizeof(rest), "\"model\": {\"type\": \"BPE\", %s, \"merges\": [\"a c\"]}}",
           vocab);
  p = write_json("merge.json", rest);
  expect_fail(p, M3_EBADFORMAT, "merges[0]");
  free(p);

  snprintf(rest, sizeof(rest), "\"model\": {\"type\": \"BPE\", %s, \"merges\": [\"ab\"]}}",
           vocab);
  p = write_json("merge2.json", rest);
  expect_fail(p, M3_EBADFORMAT, "merges[0]");
  free(p);

  snprintf(rest, sizeof(rest), "\"model\": {\"type\": \"BPE\", \"vocab\": {\"<unk>\": 0, "
           "\"a\": 5}, \"merges\": []}}");
  p = write_json("gap.json", rest);
  expect_fail(p, M3_EBADFORMAT, "no piece");
  free(p);

  snprintf(rest, sizeof(rest), "\"model\": {\"type\": \"BPE\", %s, \"merges\": [], "
           "\"continuing_subword_prefix\": \"##\"}}", vocab);
  p = write_json("csp.json", rest);
  expect_fail(p, M3_EUNSUPPORTED, "continuing_subword_prefix");
  free(p);

  snprintf(rest, sizeof(rest), "\"model\": {\"type\": \"BPE\", %s, \"merges\": [], "
           "\"unk_token\": \"<oops>\"}}", vocab);
  p = write_json("unk.json", rest);
  expect_fail(p, M3_EBADFORMAT, "unk_token");
  free(p);

  /* and a good one, through its folder */
  char dir[300];
  snprintf(dir, sizeof(dir), "%s/hf", tl_tmpdir());
  assert_int_equal(mkdir(dir, 0755), 0);
  snprintf(rest, sizeof(rest), "\"model\": {\"type\": \"BPE\", %s, \"merges\": [[\"a\", \"b\"]], "
           "\"unk_token\": \"<unk>\"}}", vocab);
  p = write_json("hf/tokenizer.json", rest);
  m3_tokenizer *tok = NULL;
  int rc = m3_tokenizer_load(dir, &tok);
  if (rc)
    fail_msg("%s: %s", m3_err_name(rc), m3_errmsg());
  assert_int_equal(m3_tokenizer_get_kind(tok), M3_TOKENIZER_HF_BPE);
  assert_int_equal(m3_tokenizer_vocab_size(tok), 6);
  assert_int_equal(m3_tokenizer_bos_id(tok), 1);
  assert_int_equal(m3_tokenizer_eos_id(tok), 2);
  assert_int_equal(m3_tokenizer_unk_id(tok), 0);
  m3_tokenizer_free(tok);
  free(p);
}

static int teardown(void **state) {
  tl_cleanup();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_spm_ok),
      cmocka_unit_test(test_missing),
      cmocka_unit_test(test_spm_truncated),
      cmocka_unit_test(test_spm_bad_fields),
      cmocka_unit_test(test_json_errors),
  };
  return cmocka_run_group_tests(tests, NULL, teardown);
}
