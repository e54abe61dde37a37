/*
 * m3 store dump against a direct forward: a raw-f32 store made by m3-encode
 * decodes (m3 store dump --json) to the keys and values m3_forward_run
 * computes for the same chunk (within 1e-6), with the same positions
 * (M3_POS_NONE slots of a short chunk included), and the dump's tokens are
 * [BOS] + tokenize("Reference:") + tokenize(text), n_prefix_tokens leading.
 * Real processes: m3-encode test-model, m3-encode, m3.
 */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>

#include "m3/forward.h"
#include "m3/model.h"
#include "m3/tokenizer.h"
#include "unit/testutil.h"

static const char *texts[] = {
    "The Moon is the only natural satellite of the Earth and it always shows the same face toward it.",
    "Hi.",
    "Venus has a thick atmosphere of carbon dioxide that traps heat, making it the hottest planet."};
static const unsigned long long ids[] = {10, 20, 30};

static char *run_capture(const char *cmd) {
  FILE *p = popen(cmd, "r");
  if (!p) return NULL;
  size_t cap = 1 << 20, n = 0;
  char *buf = malloc(cap);
  size_t got;
  while ((got = fread(buf + n, 1, cap - n - 1, p)) > 0) {
    n += got;
    if (n + 1 == cap) buf = realloc(buf, cap *= 2);
  }
  buf[n] = '\0';
  if (pclose(p) != 0) {
    free(buf);
    return NULL;
  }
  return buf;
}

static void test_dump_matches_forward(void **state) {
  (void)state;
  const char *bin = getenv("M3_BIN_DIR");
  if (!bin) skip();
  char *dir = m3t_mkdtemp("encdump"), cmd[8192], path[4200];
  snprintf(cmd, sizeof cmd, "%s/m3-encode test-model --out %s/model --vocab 600 2>/dev/null", bin, dir);
  assert_int_equal(system(cmd), 0);
  snprintf(path, sizeof path, "%s/in.jsonl", dir);
  FILE *f = fopen(path, "w");
  for (int i = 0; i < 3; i++) {
    json_t *j = json_pack("{s:I,s:s}", "id", (json_int_t)ids[i], "text", texts[i]);
    char *s = json_dumps(j, JSON_COMPACT);
    fprintf(f, "%s\n", s);
    free(s);
    json_decref(j);
  }
  fclose(f);
  snprintf(cmd, sizeof cmd,
           "%s/m3-encode --model %s/model --input %s --store %s/st --codec raw-f32 --batch 1 "
           "--embed hash:32 2>/dev/null",
           bin, dir, path, dir);
  assert_int_equal(system(cmd), 0);

  snprintf(path, sizeof path, "%s/model", dir);
  m3_model *m;
  CHECK_OK(m3_model_open(path, NULL, &m));
  m3_tokenizer *tok;
  CHECK_OK(m3_tokenizer_load(path, &tok));
  m3_forward *fw;
  CHECK_OK(m3_forward_create(m, &(m3_forward_opts){.backend = "cpu", .max_batch = 1, .max_seq = 128}, &fw));
  m3_spec sp = m3_forward_spec(fw);
  const int L = sp.n_layers, K = sp.n_kv_heads, T = sp.n_tokens, D = sp.head_dim;
  uint16_t *pos = malloc((size_t)L * K * T * sizeof *pos);
  float *kv = malloc((size_t)L * 2 * K * T * D * sizeof *kv);
  for (int i = 0; i < 3; i++) {
    int32_t seq[160];
    size_t n = 0, np = 0;
    seq[n++] = m3_tokenizer_bos_id(tok);
    CHECK_OK(m3_tokenizer_encode(tok, "Reference:", 10, 0, seq + n, 160 - n, &np));
    n += np;
    int n_prefix = (int)n;
    CHECK_OK(m3_tokenizer_encode(tok, texts[i], strlen(texts[i]), 0, seq + n, 160 - n, &np));
    n += np;
    int32_t len = (int32_t)n;
    m3_batch b = {1, len, seq, &len, &(int32_t){n_prefix}};
    m3_memories out = {pos, kv, NULL};
    CHECK_OK(m3_forward_run(fw, &b, &out));

    snprintf(cmd, sizeof cmd, "%s/m3 store dump %s/st --id %llu --json", bin, dir, ids[i]);
    char *txt = run_capture(cmd);
    assert_non_null(txt);
    json_error_t je;
    json_t *j = json_loads(txt, 0, &je);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "text")), texts[i]);
    assert_int_equal(json_integer_value(json_object_get(j, "n_prefix_tokens")), n_prefix);
    json_t *jt = json_object_get(j, "tokens");
    assert_int_equal(json_array_size(jt), n);
    for (size_t t = 0; t < n; t++) assert_int_equal(json_integer_value(json_array_get(jt, t)), seq[t]);
    double mx = 0;
    int none = 0;
    for (int l = 0; l < L; l++)
      for (int g = 0; g < K; g++)
        for (int t = 0; t < T; t++) {
          uint16_t want = pos[((size_t)l * K + g) * T + t];
          json_int_t got = json_integer_value(
              json_array_get(json_array_get(json_array_get(json_object_get(j, "positions"), l), g), t));
          if (got != want) fail_msg("chunk %llu layer %d head %d slot %d: position %lld != %u", ids[i], l, g, t, (long long)got, want);
          none += want == M3_POS_NONE;
          for (int kvi = 0; kvi < 2; kvi++) {
            json_t *vec = json_array_get(json_array_get(json_array_get(
                json_object_get(j, kvi ? "v" : "k"), l), g), t);
            assert_int_equal(json_array_size(vec), D);
            for (int d = 0; d < D; d++) {
              double w = kv[((((size_t)l * 2 + kvi) * K + g) * T + t) * D + d];
              double diff = fabs(json_number_value(json_array_get(vec, d)) - w);
              mx = diff > mx ? diff : mx;
            }
          }
        }
    if (mx > 1e-6) fail_msg("chunk %llu: decoded K/V differ from the forward by %g", ids[i], mx);
    if (i == 1 && none == 0) fail_msg("the short chunk should have empty (0xFFFF) slots");
    json_decref(j);
    free(txt);
  }
  /* a missing id: named, exit 2 (as m3 store get) */
  snprintf(cmd, sizeof cmd, "%s/m3 store dump %s/st --id 999 --json >/dev/null 2>&1", bin, dir);
  int st = system(cmd);
  assert_int_equal(WEXITSTATUS(st), 2);
  free(pos), free(kv);
  m3_forward_destroy(fw);
  m3_tokenizer_free(tok);
  m3_model_close(m);
  m3t_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_dump_matches_forward)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
