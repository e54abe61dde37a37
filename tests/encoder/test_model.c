/*
 * Model folders: config.json parsing and its errors, test models written in
 * f32 / f16 / bf16 and in one or two shards giving the same memories
 * (bf16/f16 within their rounding), and model-level errors (a tensor of the
 * wrong shape, a missing layer) naming the tensor and the file.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "m3/forward.h"
#include "m3/model.h"
#include "unit/testutil.h"

static char *g_dir;

static int setup(void **state) {
  g_dir = m3t_mkdtemp("enc-model");
  return 0;
}
static int teardown(void **state) {
  m3t_rmrf(g_dir);
  free(g_dir);
  return 0;
}

static char *sub(const char *name) {
  static char buf[4][512];
  static int k;
  k = (k + 1) % 4;
  snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
  return buf[k];
}

static void write_text(const char *path, const char *s) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(s, f);
  fclose(f);
}

static void test_config(void **state) {
  char *d = sub("cfg");
  m3_testmodel_params p;
  m3_testmodel_params_default(&p);
  p.n_layers = 2;
  CHECK_OK(m3_testmodel_write(d, &p));
  m3_model_config c;
  CHECK_OK(m3_model_config_load(d, &c));
  assert_int_equal(c.hidden_size, 64);
  assert_int_equal(c.n_layers, 2);
  assert_int_equal(c.n_heads, 4);
  assert_int_equal(c.n_kv_heads, 2);
  assert_int_equal(c.head_dim, 16);
  assert_int_equal(c.intermediate_size, 192);
  assert_int_equal(c.vocab_size, 97);
  assert_int_equal(c.bos_token_id, 1);
  assert_true(fabsf(c.rope_theta - 10000.0f) < 1e-3f);

  char path[600];
  snprintf(path, sizeof path, "%s/config.json", d);
  /* defaults: no num_key_value_heads (= heads), no head_dim (= hidden / heads) */
  write_text(path, "{\"hidden_size\": 3200, \"num_hidden_layers\": 44, \"num_attention_heads\": 40,"
                   " \"intermediate_size\": 8640, \"vocab_size\": 60416, \"eos_token_id\": [2, 3]}");
  CHECK_OK(m3_model_config_load(path, &c));
  assert_int_equal(c.n_kv_heads, 40);
  assert_int_equal(c.head_dim, 80);
  assert_int_equal(c.eos_token_id, 2);
  assert_int_equal(c.bos_token_id, -1);

  write_text(path, "{\"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"intermediate_size\": 8,"
                   " \"vocab_size\": 9}");
  CHECK_RC(m3_model_config_load(path, &c), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "hidden_size");
  CHECK_CONTAINS(m3_errmsg(), "config.json");
  write_text(path, "{\"hidden_size\": 64, \"num_hidden_layers\": 4, \"num_attention_heads\": 4,"
                   " \"num_key_value_heads\": 3, \"intermediate_size\": 8, \"vocab_size\": 9}");
  CHECK_RC(m3_model_config_load(path, &c), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "num_key_value_heads");
  write_text(path, "{\"hidden_size\": 64, \"num_hidden_layers\": 4, \"num_attention_heads\": 4,"
                   " \"intermediate_size\": 8, \"vocab_size\": 9,"
                   " \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}}");
  CHECK_RC(m3_model_config_load(path, &c), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "rope_scaling");
  write_text(path, "{\"hidden_size\": \"64\"}");
  CHECK_RC(m3_model_config_load(path, &c), M3_EBADFORMAT);
  write_text(path, "{oops");
  CHECK_RC(m3_model_config_load(path, &c), M3_EBADFORMAT);
  CHECK_RC(m3_model_config_load(sub("nothing-here"), &c), M3_ENOTFOUND);
}

/* Encode one fixed batch with the model in dir; returns malloc'ed kv. */
static float *encode(const char *dir, uint16_t **pos_out, size_t *n_kv) {
  m3_model *m = NULL;
  m3_forward *f = NULL;
  CHECK_OK(m3_model_open(dir, NULL, &m));
  m3_forward_opts fo = {.backend = "cpu", .max_batch = 2, .max_seq = 20};
  CHECK_OK(m3_forward_create(m, &fo, &f));
  m3_spec sp = m3_forward_spec(f);
  size_t mem_kv = (size_t)sp.n_layers * 2 * sp.n_kv_heads * sp.n_tokens * sp.head_dim;
  size_t mem_pos = (size_t)sp.n_layers * sp.n_kv_heads * sp.n_tokens;
  int32_t tokens[40], lens[2] = {20, 14}, npre[2] = {2, 2};
  for (int i = 0; i < 40; i++) tokens[i] = (i * 37 + 11) % 97;
  uint16_t *pos = calloc(2 * mem_pos, 2);
  float *kv = calloc(2 * mem_kv, sizeof(float));
  m3_batch b = {2, 20, tokens, lens, npre};
  m3_memories out = {pos, kv, NULL};
  CHECK_OK(m3_forward_run(f, &b, &out));
  m3_forward_destroy(f);
  m3_model_close(m);
  *pos_out = pos;
  *n_kv = 2 * mem_kv;
  return kv;
}

static double rel_err(const float *a, const float *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) num += (double)(a[i] - b[i]) * (a[i] - b[i]), den += (double)b[i] * b[i];
  return sqrt(num / den);
}

static void test_dtypes_and_shards(void **state) {
  m3_testmodel_params p;
  m3_testmodel_params_default(&p);
  p.seed = 3;
  CHECK_OK(m3_testmodel_write(sub("f32"), &p));
  p.n_shards = 2;
  CHECK_OK(m3_testmodel_write(sub("f32x2"), &p));
  p.n_shards = 1, p.dtype = M3_DTYPE_BF16;
  CHECK_OK(m3_testmodel_write(sub("bf16"), &p));
  p.dtype = M3_DTYPE_F16, p.n_shards = 2;
  CHECK_OK(m3_testmodel_write(sub("f16x2"), &p));

  /* weights: bf16 / f16 are the f32 values rounded */
  m3_safetensors *a = NULL, *b = NULL, *c = NULL;
  CHECK_OK(m3_safetensors_open(sub("f32"), &a));
  CHECK_OK(m3_safetensors_open(sub("bf16"), &b));
  CHECK_OK(m3_safetensors_open(sub("f16x2"), &c));
  assert_int_equal(m3_safetensors_count(a), m3_safetensors_count(c));
  int64_t shape[2] = {97, 64};
  float *wa = malloc(97 * 64 * 4), *wb = malloc(97 * 64 * 4), *wc = malloc(97 * 64 * 4);
  CHECK_OK(m3_safetensors_read_f32(a, "model.embed_tokens.weight", 2, shape, wa));
  CHECK_OK(m3_safetensors_read_f32(b, "model.embed_tokens.weight", 2, shape, wb));
  CHECK_OK(m3_safetensors_read_f32(c, "model.embed_tokens.weight", 2, shape, wc));
  for (int i = 0; i < 97 * 64; i++) {
    assert_true(fabsf(wa[i] - wb[i]) <= ldexpf(fabsf(wa[i]), -8));
    assert_true(fabsf(wa[i] - wc[i]) <= ldexpf(fabsf(wa[i]), -11) + 1e-7f);
  }
  free(wa), free(wb), free(wc);
  m3_safetensors_close(a), m3_safetensors_close(b), m3_safetensors_close(c);

  uint16_t *p32, *p32x2, *pbf, *pf16;
  size_t n;
  float *k32 = encode(sub("f32"), &p32, &n), *k32x2 = encode(sub("f32x2"), &p32x2, &n);
  float *kbf = encode(sub("bf16"), &pbf, &n), *kf16 = encode(sub("f16x2"), &pf16, &n);
  assert_memory_equal(k32, k32x2, n * sizeof(float)); /* sharding changes nothing */
  /* Rounded weights: compare only where the same tokens were chosen. */
  size_t same_bf = 0, same_f16 = 0;
  double ebf = rel_err(kbf, k32, n), ef16 = rel_err(kf16, k32, n);
  size_t npos = n / 2 / 16; /* one position per K,V pair of head_dim 16 */
  for (size_t i = 0; i < npos; i++) same_bf += pbf[i] == p32[i], same_f16 += pf16[i] == p32[i];
  print_message("bf16: rel err %.3g, %zu/%zu positions equal; f16: %.3g, %zu/%zu\n", ebf, same_bf,
                npos, ef16, same_f16, npos);
  if (same_f16 == npos) assert_true(ef16 < 5e-3);
  if (same_bf == npos) assert_true(ebf < 5e-2);
  assert_true(same_f16 >= npos * 9 / 10);
  assert_true(same_bf >= npos * 7 / 10);
  free(k32), free(k32x2), free(kbf), free(kf16), free(p32), free(p32x2), free(pbf), free(pf16);
}

static void test_model_errors_name_tensor_and_file(void **state) {
  char *d = sub("bad");
  m3_testmodel_params p;
  m3_testmodel_params_default(&p);
  CHECK_OK(m3_testmodel_write(d, &p));
  char path[600];
  snprintf(path, sizeof path, "%s/config.json", d);
  m3_model *m = NULL;
  /* the config says 200, the checkpoint has 192 */
  write_text(path, "{\"hidden_size\": 64, \"num_hidden_layers\": 4, \"num_attention_heads\": 4,"
                   " \"num_key_value_heads\": 2, \"head_dim\": 16, \"intermediate_size\": 200,"
                   " \"vocab_size\": 97}");
  CHECK_RC(m3_model_open(d, NULL, &m), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "model.layers.0.mlp.gate_proj.weight");
  CHECK_CONTAINS(m3_errmsg(), "model.safetensors");
  CHECK_CONTAINS(m3_errmsg(), "(192, 64)");
  /* more layers than written: layer 4 is missing */
  write_text(path, "{\"hidden_size\": 64, \"num_hidden_layers\": 12, \"num_attention_heads\": 4,"
                   " \"num_key_value_heads\": 2, \"head_dim\": 16, \"intermediate_size\": 192,"
                   " \"vocab_size\": 97}");
  CHECK_RC(m3_model_open(d, NULL, &m), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "model.layers.4.input_layernorm.weight");
  CHECK_CONTAINS(m3_errmsg(), "model.safetensors");
  /* vocab mismatch with the embedding table */
  write_text(path, "{\"hidden_size\": 64, \"num_hidden_layers\": 4, \"num_attention_heads\": 4,"
                   " \"num_key_value_heads\": 2, \"head_dim\": 16, \"intermediate_size\": 192,"
                   " \"vocab_size\": 100}");
  CHECK_RC(m3_model_open(d, NULL, &m), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "model.embed_tokens.weight");
  m3_model_opts mo = {.n_mem_layers = 9};
  write_text(path, "{\"hidden_size\": 64, \"num_hidden_layers\": 4, \"num_attention_heads\": 4,"
                   " \"num_key_value_heads\": 2, \"head_dim\": 16, \"intermediate_size\": 192,"
                   " \"vocab_size\": 97}");
  CHECK_RC(m3_model_open(d, &mo, &m), M3_EINVAL);
  mo.n_mem_layers = 4;
  CHECK_OK(m3_model_open(d, &mo, &m));
  assert_int_equal(m3_model_mem_layers(m), 4);
  assert_true(m3_model_weight_bytes(m) > 0);
  m3_model_close(m);
}

static void test_testmodel_tokenizer_hook(void **state) {
  char *tok = sub("tokenizer.json");
  write_text(tok, "{\"model\": {\"type\": \"BPE\"}}");
  m3_testmodel_params p;
  m3_testmodel_params_default(&p);
  p.tokenizer_path = tok;
  p.tie_word_embeddings = 1;
  CHECK_OK(m3_testmodel_write(sub("withtok"), &p));
  FILE *f = fopen(sub("withtok/tokenizer.json"), "r");
  assert_non_null(f);
  fclose(f);
  m3_safetensors *st = NULL;
  CHECK_OK(m3_safetensors_open(sub("withtok"), &st));
  CHECK_RC(m3_safetensors_find(st, "lm_head.weight", NULL), M3_ENOTFOUND); /* tied */
  CHECK_OK(m3_safetensors_find(st, "model.norm.weight", NULL));
  m3_safetensors_close(st);
  p.n_heads = 3; /* not a multiple of 2 KV heads */
  CHECK_RC(m3_testmodel_write(sub("badp"), &p), M3_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_config),
      cmocka_unit_test(test_dtypes_and_shards),
      cmocka_unit_test(test_model_errors_name_tensor_and_file),
      cmocka_unit_test(test_testmodel_tokenizer_hook),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
