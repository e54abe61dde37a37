/*
 * What a user of the bundled example sees: recall of the built-in embedders
 * on examples/kb/kb.jsonl (297 chunks) with the hand-written queries of
 * examples/kb/queries.jsonl ({"query", "relevant": [chunk ids]}; a line
 * with no relevant id is a question the knowledge base cannot answer).
 *
 * Each embedder embeds every chunk as m3-encode does (words:DIM with the
 * IDF table counted over the same chunks), each query as m3-server does,
 * and ranks the chunks by exact cosine (ties by id, as the index). A query
 * counts for recall@k when one of its right chunks is among the first k.
 * Printed for hash:256 (the old default), words at 128 to 2048 dims (the
 * sweep the default was chosen from) and words:1024 (m3-encode's default);
 * asserted: the default reaches recall@5 >= 0.8 and recall@1 >= 0.6, and
 * beats hash:256 at both. docs/INDEX.md quotes the figures printed here.
 *
 * Arguments (optional): KB.jsonl QUERIES.jsonl; default: the source tree's
 * examples/kb/ ($M3_SOURCE_DIR).
 */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>

#include "index/index_testlib.h"
#include "m3/embed.h"

/* m3-encode's default embedder (encoder/src/cmd/m3_encode.c) */
#define M3_DEFAULT_WORDS "words:1024"

typedef struct kb {
  size_t n;
  uint64_t *ids;
  char **texts;
  size_t nq;
  char **queries;
  uint64_t (*rel)[4]; /* up to 4 right ids per query */
  unsigned *nrel;
} kb;

static kb K;
static const char *kb_path, *q_path;

static json_t *load_line(const char *path, long line, const char *buf) {
  json_error_t je;
  json_t *j = json_loads(buf, 0, &je);
  if (!j || !json_is_object(j)) fail_msg("%s:%ld: not a JSON object (%s)", path, line, je.text);
  return j;
}

static void read_kb(void) {
  FILE *f = fopen(kb_path, "r");
  if (!f) fail_msg("%s: cannot open", kb_path);
  char buf[8192];
  long line = 0;
  size_t cap = 0;
  while (fgets(buf, sizeof buf, f)) {
    line++;
    json_t *j = load_line(kb_path, line, buf);
    if (K.n == cap) {
      cap = cap ? 2 * cap : 512;
      K.ids = realloc(K.ids, cap * sizeof *K.ids);
      K.texts = realloc(K.texts, cap * sizeof *K.texts);
    }
    K.ids[K.n] = (uint64_t)json_integer_value(json_object_get(j, "id"));
    K.texts[K.n] = strdup(json_string_value(json_object_get(j, "text")));
    K.n++;
    json_decref(j);
  }
  fclose(f);
  f = fopen(q_path, "r");
  if (!f) fail_msg("%s: cannot open", q_path);
  cap = 0;
  line = 0;
  while (fgets(buf, sizeof buf, f)) {
    line++;
    json_t *j = load_line(q_path, line, buf);
    if (K.nq == cap) {
      cap = cap ? 2 * cap : 64;
      K.queries = realloc(K.queries, cap * sizeof *K.queries);
      K.rel = realloc(K.rel, cap * sizeof *K.rel);
      K.nrel = realloc(K.nrel, cap * sizeof *K.nrel);
    }
    const char *q = json_string_value(json_object_get(j, "query"));
    json_t *r = json_object_get(j, "relevant");
    if (!q || !json_is_array(r) || json_array_size(r) > 4)
      fail_msg("%s:%ld: want {\"query\": text, \"relevant\": [at most 4 ids]}", q_path, line);
    K.queries[K.nq] = strdup(q);
    K.nrel[K.nq] = (unsigned)json_array_size(r);
    for (unsigned i = 0; i < K.nrel[K.nq]; i++) {
      uint64_t id = (uint64_t)json_integer_value(json_array_get(r, i));
      int found = 0;
      for (size_t c = 0; c < K.n; c++) found |= K.ids[c] == id;
      if (!found) fail_msg("%s:%ld: relevant id %llu is not in %s", q_path, line, (unsigned long long)id, kb_path);
      K.rel[K.nq][i] = id;
    }
    K.nq++;
    json_decref(j);
  }
  fclose(f);
  if (K.n < 100 || K.nq < 30) fail_msg("%zu chunks, %zu queries: want >= 100 and >= 30", K.n, K.nq);
}

typedef struct result {
  double r1, r5;
  size_t counted;
  size_t fillers; /* top-5 entries with score <= 0, over all queries */
} result;

/* Embed the KB and the queries with sp (words: an IDF table counted over
 * the chunks) and measure. */
static result measure(const char *spec, int verbose) {
  m3_embed_spec sp;
  CHECK_OK(m3_embed_spec_parse(spec, &sp));
  m3_idf *idf = NULL;
  if (sp.kind == M3_EMBED_WORDS) {
    CHECK_OK(m3_idf_create(&idf));
    for (size_t i = 0; i < K.n; i++) CHECK_OK(m3_idf_add(idf, K.texts[i], strlen(K.texts[i])));
    sp.idf = idf;
  }
  float *e = calloc(K.n * sp.dim, sizeof *e), *q = calloc(sp.dim, sizeof *q);
  double *score = calloc(K.n, sizeof *score);
  assert_non_null(e);
  for (size_t i = 0; i < K.n; i++) {
    int rc = m3_embed(&sp, K.texts[i], strlen(K.texts[i]), e + i * sp.dim);
    if (rc != 0 && rc != M3_EINVAL) fail_msg("%s: chunk %zu: %s", spec, i, m3_errmsg());
  }
  result res = {0};
  size_t h1 = 0, h5 = 0;
  for (size_t j = 0; j < K.nq; j++) {
    int rc = m3_embed(&sp, K.queries[j], strlen(K.queries[j]), q);
    if (rc != 0 && rc != M3_EINVAL) fail_msg("%s: query %zu: %s", spec, j, m3_errmsg());
    for (size_t i = 0; i < K.n; i++) {
      double s = 0;
      for (unsigned d = 0; d < sp.dim; d++) s += (double)q[d] * e[i * sp.dim + d];
      score[i] = s;
    }
    /* top 5 by score descending, then id ascending */
    size_t top[5];
    for (int r = 0; r < 5; r++) {
      size_t best = SIZE_MAX;
      for (size_t i = 0; i < K.n; i++) {
        int taken = 0;
        for (int t = 0; t < r; t++) taken |= top[t] == i;
        if (taken) continue;
        if (best == SIZE_MAX || score[i] > score[best] ||
            (score[i] == score[best] && K.ids[i] < K.ids[best]))
          best = i;
      }
      top[r] = best;
      if (score[best] <= 0) res.fillers++;
    }
    if (K.nrel[j] == 0) {
      if (verbose)
        printf("  %-10s (no answer in the KB) '%s': top chunk %llu, score %.3f\n", spec, K.queries[j],
               (unsigned long long)K.ids[top[0]], score[top[0]]);
      continue;
    }
    res.counted++;
    int at = -1;
    for (int r = 0; r < 5 && at < 0; r++)
      for (unsigned t = 0; t < K.nrel[j]; t++)
        if (K.ids[top[r]] == K.rel[j][t]) at = r;
    h1 += at == 0;
    h5 += at >= 0;
    if (verbose && at != 0)
      printf("  %-10s miss@1 '%s': got %llu (%.3f) '%.50s', right %llu (rank %s)\n", spec, K.queries[j],
             (unsigned long long)K.ids[top[0]], score[top[0]], K.texts[top[0]],
             (unsigned long long)K.rel[j][0], at < 0 ? ">5" : at == 1 ? "2" : at == 2 ? "3" : at == 3 ? "4" : "5");
  }
  res.r1 = (double)h1 / (double)res.counted;
  res.r5 = (double)h5 / (double)res.counted;
  printf("%-10s recall@1 %.3f (%zu/%zu)  recall@5 %.3f (%zu/%zu)  top-5 entries with score <= 0: %zu\n",
         spec, res.r1, h1, res.counted, res.r5, h5, res.counted, res.fillers);
  free(e);
  free(q);
  free(score);
  m3_idf_free(idf);
  return res;
}

static void test_recall(void **state) {
  (void)state;
  read_kb();
  int verbose = getenv("M3_RECALL_VERBOSE") != NULL;
  printf("%zu chunks (%s), %zu queries (%s)\n", K.n, kb_path, K.nq, q_path);
  result old = measure("hash:256", verbose);
  /* the dimension sweep docs/INDEX.md chose the default from */
  static const char *const sweep[] = {"words:128", "words:256", "words:512", "words:2048"};
  for (size_t i = 0; i < sizeof sweep / sizeof sweep[0]; i++) (void)measure(sweep[i], 0);
  result neu = measure(M3_DEFAULT_WORDS, verbose);
  if (neu.r5 < 0.8) fail_msg("%s recall@5 %.3f, want >= 0.8", M3_DEFAULT_WORDS, neu.r5);
  if (neu.r1 < 0.6) fail_msg("%s recall@1 %.3f, want >= 0.6", M3_DEFAULT_WORDS, neu.r1);
  if (!(neu.r5 > old.r5 && neu.r1 > old.r1))
    fail_msg("%s (%.3f, %.3f) does not beat hash:256 (%.3f, %.3f) at recall@1 and @5",
             M3_DEFAULT_WORDS, neu.r1, neu.r5, old.r1, old.r5);
}

int main(int argc, char **argv) {
  static char kbp[4200], qp[4200];
  const char *src = getenv("M3_SOURCE_DIR");
  snprintf(kbp, sizeof kbp, "%s/examples/kb/kb.jsonl", src ? src : ".");
  snprintf(qp, sizeof qp, "%s/examples/kb/queries.jsonl", src ? src : ".");
  kb_path = argc > 1 ? argv[1] : kbp;
  q_path = argc > 2 ? argv[2] : qp;
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_recall)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
