/*
 * Pooled hidden states of the CPU forward (m3_forward_opts.hidden, used by
 * m3-encode --embed hidden:LAYER): layer 0 is the mean of the chunk tokens'
 * embedding rows; a deeper layer does not depend on the batch around the
 * sequence; asking for them leaves the memories unchanged; a layer outside
 * the memory layers is refused.
 */
#include <math.h>
#include <stdlib.h>

#include "m3/forward.h"
#include "m3/model.h"
#include "unit/testutil.h"

#define E 64
#define S 12

static char *dir;

static int setup(void **state) {
  (void)state;
  dir = m3t_mkdtemp("hidden");
  m3_testmodel_params p;
  m3_testmodel_params_default(&p);
  return m3_testmodel_write(dir, &p);
}

static int teardown(void **state) {
  (void)state;
  m3t_rmrf(dir);
  free(dir);
  return 0;
}

static const int32_t toks[3][S] = {{1, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
                                   {1, 5, 6, 40, 41, 42, 43, 44, 0, 0, 0, 0},
                                   {1, 5, 6, 70, 71, 72, 73, 74, 75, 76, 0, 0}};
static const int32_t lens[3] = {12, 8, 10}, npre[3] = {3, 3, 3};

static void run(m3_model *m, int layer, int n, const int32_t *t, const int32_t *l, const int32_t *np,
                float *hidden, uint16_t *pos, float *kv) {
  m3_forward_opts fo = {.backend = "cpu", .max_batch = 3, .max_seq = S, .hidden = hidden,
                        .hidden_layer = layer};
  m3_forward *f;
  CHECK_OK(m3_forward_create(m, &fo, &f));
  m3_batch b = {n, S, t, l, np};
  m3_memories out = {pos, kv, NULL};
  CHECK_OK(m3_forward_run(f, &b, &out));
  m3_forward_destroy(f);
}

static void test_layer0_is_mean_embedding(void **state) {
  (void)state;
  m3_model *m;
  CHECK_OK(m3_model_open(dir, NULL, &m));
  m3_safetensors *st;
  CHECK_OK(m3_safetensors_open(dir, &st));
  int64_t shape[2] = {97, E};
  float *emb = malloc(97 * E * sizeof *emb);
  CHECK_OK(m3_safetensors_read_f32(st, "model.embed_tokens.weight", 2, shape, emb));
  float hidden[3 * E];
  static uint16_t pos[3 * 2 * 2 * 8];
  static float kv[3 * 2 * 2 * 2 * 8 * 16];
  run(m, 0, 3, &toks[0][0], lens, npre, hidden, pos, kv);
  for (int s = 0; s < 3; s++)
    for (int e = 0; e < E; e++) {
      double want = 0;
      for (int t = npre[s]; t < lens[s]; t++) want += emb[toks[s][t] * E + e];
      want /= lens[s] - npre[s];
      if (fabs(hidden[s * E + e] - want) > 1e-6)
        fail_msg("seq %d dim %d: %g != %g", s, e, hidden[s * E + e], want);
    }
  free(emb);
  m3_safetensors_close(st);
  m3_model_close(m);
}

static void test_layer1_batch_independent(void **state) {
  (void)state;
  m3_model *m;
  CHECK_OK(m3_model_open(dir, NULL, &m));
  float h3[3 * E], h1[E];
  static uint16_t pos3[3 * 32], pos1[32], posn[3 * 32];
  static float kv3[3 * 1024], kv1[1024], kvn[3 * 1024];
  run(m, 1, 3, &toks[0][0], lens, npre, h3, pos3, kv3);
  run(m, 1, 1, &toks[2][0], &lens[2], &npre[2], h1, pos1, kv1);
  double mx = 0;
  for (int e = 0; e < E; e++) {
    double d = fabs(h3[2 * E + e] - h1[e]);
    mx = d > mx ? d : mx;
  }
  if (mx > 1e-5) fail_msg("layer 1 pooled state differs alone vs in a batch by %g", mx);
  /* the memories do not change when hidden states are asked for */
  run(m, 1, 3, &toks[0][0], lens, npre, NULL, posn, kvn);
  assert_memory_equal(pos3, posn, sizeof pos3);
  assert_memory_equal(kv3, kvn, sizeof kv3);
  /* a layer outside the memory layers (2 of 4) */
  m3_forward_opts fo = {.backend = "cpu", .max_batch = 3, .max_seq = S, .hidden = h3, .hidden_layer = 2};
  m3_forward *f;
  CHECK_OK(m3_forward_create(m, &fo, &f));
  m3_batch b = {1, S, &toks[0][0], lens, npre};
  m3_memories out = {pos1, kv1, NULL};
  CHECK_RC(m3_forward_run(f, &b, &out), M3_EINVAL);
  CHECK_CONTAINS(m3_errmsg(), "hidden_layer 2");
  m3_forward_destroy(f);
  m3_model_close(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_layer0_is_mean_embedding),
                                     cmocka_unit_test(test_layer1_batch_independent)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
