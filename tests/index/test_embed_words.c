/*
 * The built-in "words:DIM" embedder and its IDF table (m3/embed.h): pinned
 * output bits (a store embedded today must match a server built later),
 * unit norm, stop words and case, the plural rule, character n-grams,
 * IDF weighting, the idf.bin file (round trip, every damage refused with
 * its own code), and the "words:DIM" spec.
 */
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#include "index/index_testlib.h"
#include "m3/crc32c.h"
#include "m3/embed.h"

#define D 1024

static double dot(const float *a, const float *b, unsigned d) {
  double s = 0;
  for (unsigned i = 0; i < d; i++) s += (double)a[i] * b[i];
  return s;
}

static void emb(const char *t, const m3_idf *idf, float *out) {
  CHECK_OK(m3_embed_words(t, strlen(t), idf, out, D));
}

static const char *docs[] = {
    "The Sun is a star at the centre of the Solar System.",
    "The Moon orbits the Earth; the Sun lights the Moon.",
    "Caramelization is the browning of sugar when it is heated.",
    "Mount Everest is the highest mountain above sea level.",
    "The Sun rises in the east and sets in the west.",
};

static m3_idf *small_idf(void) {
  m3_idf *t;
  CHECK_OK(m3_idf_create(&t));
  for (size_t i = 0; i < sizeof docs / sizeof *docs; i++) CHECK_OK(m3_idf_add(t, docs[i], strlen(docs[i])));
  return t;
}

/* The output bits are part of every words:DIM store: pinned by CRC. */
static void test_pinned_bits(void **state) {
  (void)state;
  m3_idf *t = small_idf();
  float v[D];
  emb("Which mountains are the highest above sea level?", t, v);
  uint32_t crc = m3_crc32c(0, v, sizeof v);
  uint32_t tcrc = m3_idf_crc(t);
  /* A change here changes every words:DIM store's vectors: bump the
   * embedder's feature version (m3/embed.h) and re-pin. */
  if (crc != 0xd59f5b02u || tcrc != 0xf083baa4u)
    fail_msg("embedding crc32c %08x (pinned d59f5b02), idf crc32c %08x (pinned f083baa4)", crc,
             tcrc);
  m3_idf_free(t);
}

static void test_norm_case_stop_plural(void **state) {
  (void)state;
  float a[D], b[D];
  emb("The planets of the Solar System", NULL, a);
  double n = sqrt(dot(a, a, D));
  if (fabs(n - 1.0) > 1e-6) fail_msg("norm %.9f, want 1", n);
  emb("planet solar system", NULL, b); /* stop words, case and plural */
  if (memcmp(a, b, sizeof a)) fail_msg("'The planets of the Solar System' != 'planet solar system'");
  emb("bodies", NULL, a); /* ies -> y */
  emb("body", NULL, b);
  if (memcmp(a, b, sizeof a)) fail_msg("'bodies' != 'body'");
  emb("glass", NULL, a); /* ss stays: glass is not glas */
  emb("glas", NULL, b);
  if (dot(a, b, D) > 0.99) fail_msg("'glass' == 'glas'");
  emb("virus", NULL, a); /* us stays */
  emb("viru", NULL, b);
  if (dot(a, b, D) > 0.99) fail_msg("'virus' == 'viru'");
  float z[D];
  CHECK_RC(m3_embed_words("The of and, is it?", 18, NULL, z, D), M3_EINVAL);
  for (unsigned i = 0; i < D; i++)
    if (z[i] != 0) fail_msg("stop words only: component %u is %g, want 0", i, (double)z[i]);
  CHECK_RC(m3_embed_words("", 0, NULL, z, D), M3_EINVAL);
  CHECK_RC(m3_embed_words("x", 1, NULL, z, 0), M3_EINVAL);
  CHECK_RC(m3_embed_words("x", 1, NULL, z, 65536), M3_EINVAL);
  assert_true(m3_embed_words_is_stop("the", 3));
  assert_true(m3_embed_words_is_stop("yourselves", 10));
  assert_true(m3_embed_words_is_stop("a", 1));
  assert_false(m3_embed_words_is_stop("sun", 3));
  assert_false(m3_embed_words_is_stop("th", 2));
  assert_false(m3_embed_words_is_stop("zzz", 3));
}

static void test_subwords_and_idf(void **state) {
  (void)state;
  float a[D], b[D], c[D];
  /* Character n-grams: a word's other forms are near, others are not. */
  emb("caramelization", NULL, a);
  emb("caramelize", NULL, b);
  emb("mountain", NULL, c);
  double ab = dot(a, b, D), ac = dot(a, c, D);
  if (!(ab > 0.3 && ab > ac + 0.2)) fail_msg("caramelization . caramelize = %.3f, . mountain = %.3f", ab, ac);
  /* IDF: "sun" is in 3 of 5 documents, "everest" in 1: with the table, a
   * query of both leans to the rare one; without it, they are even. */
  m3_idf *t = small_idf();
  float q[D], s[D], e[D];
  emb("sun everest", t, q);
  emb("sun", t, s);
  emb("everest", t, e);
  double qs = dot(q, s, D), qe = dot(q, e, D);
  if (!(qe > qs + 0.1)) fail_msg("with IDF: query . everest %.3f, . sun %.3f: the rare word should weigh more", qe, qs);
  emb("sun everest", NULL, q);
  emb("sun", NULL, s);
  emb("everest", NULL, e);
  qs = dot(q, s, D), qe = dot(q, e, D);
  if (fabs(qe - qs) > 0.15) fail_msg("without IDF: query . everest %.3f, . sun %.3f", qe, qs);
  assert_int_equal(m3_idf_docs(t), 5);
  /* The spec with a table equals the direct call. */
  m3_embed_spec sp;
  CHECK_OK(m3_embed_spec_parse("words:1024", &sp));
  assert_int_equal(sp.kind, M3_EMBED_WORDS);
  assert_int_equal(sp.dim, 1024);
  assert_null(sp.idf);
  char buf[32];
  assert_string_equal(m3_embed_spec_format(&sp, buf, sizeof buf), "words:1024");
  sp.idf = t;
  float v[D], w[D];
  CHECK_OK(m3_embed(&sp, "sun everest", 11, v));
  emb("sun everest", t, w);
  if (memcmp(v, w, sizeof v)) fail_msg("m3_embed(words) != m3_embed_words");
  const char *bad[] = {"words", "words:", "words:0", "words:65536", "words:-1", "word:8", "words:8x"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) CHECK_RC(m3_embed_spec_parse(bad[i], &sp), M3_EINVAL);
  m3_idf_free(t);
}

static void flip_at(const char *path, long off, int delta) {
  FILE *f = fopen(path, "r+b");
  assert_non_null(f);
  if (off < 0) fseek(f, off, SEEK_END);
  else fseek(f, off, SEEK_SET);
  int c = fgetc(f);
  if (off < 0) fseek(f, off, SEEK_END);
  else fseek(f, off, SEEK_SET);
  fputc((c + delta) & 0xff, f);
  fclose(f);
}

static void copy_file(const char *from, const char *to) {
  char cmd[9000];
  snprintf(cmd, sizeof cmd, "cp '%s' '%s'", from, to);
  assert_int_equal(system(cmd), 0);
}

static void test_file(void **state) {
  (void)state;
  char *dir = m3t_mkdtemp("idf");
  char path[4200], p2[4300];
  snprintf(path, sizeof path, "%s/idf.bin", dir);
  m3_idf *t = small_idf(), *u = NULL;
  CHECK_OK(m3_idf_save(t, path));
  CHECK_OK(m3_idf_load(path, &u));
  assert_int_equal(m3_idf_docs(u), 5);
  assert_int_equal(m3_idf_crc(u), m3_idf_crc(t));
  float a[D], b[D];
  emb("highest sun", t, a);
  emb("highest sun", u, b);
  if (memcmp(a, b, sizeof a)) fail_msg("embedding with the loaded table differs");
  m3_idf_free(u);
  u = NULL;

  snprintf(p2, sizeof p2, "%s/missing.bin", dir);
  CHECK_RC(m3_idf_load(p2, &u), M3_ENOTFOUND);
  assert_null(u);
  /* a flipped count byte: checksum */
  snprintf(p2, sizeof p2, "%s/flip.bin", dir);
  copy_file(path, p2);
  flip_at(p2, 32 + 4 * 1000, 1);
  CHECK_RC(m3_idf_load(p2, &u), M3_ECORRUPT);
  if (!strstr(m3_errmsg(), "flip.bin") || !strstr(m3_errmsg(), "checksum"))
    fail_msg("message '%s' should name the file and the checksum", m3_errmsg());
  /* a truncated file */
  snprintf(p2, sizeof p2, "%s/short.bin", dir);
  copy_file(path, p2);
  assert_int_equal(truncate(p2, 1000), 0);
  CHECK_RC(m3_idf_load(p2, &u), M3_ECORRUPT);
  assert_int_equal(truncate(p2, 10), 0);
  CHECK_RC(m3_idf_load(p2, &u), M3_ECORRUPT);
  /* another format version, another features version: EVERSION */
  snprintf(p2, sizeof p2, "%s/ver.bin", dir);
  copy_file(path, p2);
  flip_at(p2, 8, 1);
  CHECK_RC(m3_idf_load(p2, &u), M3_EVERSION);
  copy_file(path, p2);
  flip_at(p2, 12, 1);
  CHECK_RC(m3_idf_load(p2, &u), M3_EVERSION);
  if (!strstr(m3_errmsg(), "features version 2")) fail_msg("message '%s'", m3_errmsg());
  /* not an IDF file at all */
  copy_file(path, p2);
  flip_at(p2, 0, 1);
  CHECK_RC(m3_idf_load(p2, &u), M3_EBADFORMAT);
  assert_null(u);
  m3_idf_free(t);
  m3t_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pinned_bits),
      cmocka_unit_test(test_norm_case_stop_plural),
      cmocka_unit_test(test_subwords_and_idf),
      cmocka_unit_test(test_file),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
