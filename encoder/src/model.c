/*
 * Opening a Llama-family model: config.json, the weights of the memory
 * layers (or of every layer, the final norm and lm_head, for a decoder)
 * converted to f32 (fused q|k|v and gate|up, so that each is one GEMM), and
 * the helpers every backend shares (embedding rows, the RoPE table). It
 * calls nothing of the forward: backends (forward_cpu.c, the CUDA library,
 * worker/'s decoder) call into it, never back.
 *
 * Workload: one open per encoder process; weights of up to ~10 GB f32 for a
 * Memory3-size model (22 memory layers), read once from the mapping.
 */
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "m3/error.h"
#include "m3/model.h"
#include "model_int.h"

/* ---- config.json ------------------------------------------------------ */

static int cfg_int(json_t *root, const char *path, const char *key, int required, int def,
                   int *out) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) {
    if (required) return m3__seterr(M3_EBADFORMAT, "config %s: missing key \"%s\"", path, key);
    *out = def;
    return 0;
  }
  if (json_is_array(v) && json_array_size(v) > 0) v = json_array_get(v, 0); /* eos lists */
  if (!json_is_integer(v) || json_integer_value(v) < INT_MIN || json_integer_value(v) > INT_MAX)
    return m3__seterr(M3_EBADFORMAT, "config %s: \"%s\" is not an integer", path, key);
  *out = (int)json_integer_value(v);
  return 0;
}

static int cfg_float(json_t *root, const char *path, const char *key, float def, float *out) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) {
    *out = def;
    return 0;
  }
  if (!json_is_number(v))
    return m3__seterr(M3_EBADFORMAT, "config %s: \"%s\" is not a number", path, key);
  *out = (float)json_number_value(v);
  return 0;
}

static int config_from_json(json_t *root, const char *path, m3_model_config *out);

int m3_model_config_load(const char *path, m3_model_config *out) {
  char buf[PATH_MAX];
  struct stat sb;
  int rc = 0;
  if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
    snprintf(buf, sizeof buf, "%s/config.json", path);
    path = buf;
  }
  json_error_t jerr;
  json_t *root = json_load_file(path, 0, &jerr);
  if (!root) {
    if (stat(path, &sb) < 0) return m3__seterr(M3_ENOTFOUND, "config %s: no such file", path);
    return m3__seterr(M3_EBADFORMAT, "config %s: bad JSON (%s, line %d)", path, jerr.text,
                      jerr.line);
  }
  rc = config_from_json(root, path, out);
  json_decref(root);
  return rc;
}

int m3_model_config_parse(const char *name, const char *json, size_t len, m3_model_config *out) {
  json_error_t jerr;
  json_t *root = json_loadb(json, len, 0, &jerr);
  if (!root)
    return m3__seterr(M3_EBADFORMAT, "config %s: bad JSON (%s, line %d)", name, jerr.text,
                      jerr.line);
  int rc = config_from_json(root, name, out);
  json_decref(root);
  return rc;
}

/* The keys of config.json's root object (path: what messages call it). */
static int config_from_json(json_t *root, const char *path, m3_model_config *out) {
  int rc = 0;
  m3_model_config c;
  memset(&c, 0, sizeof c);
  if ((rc = cfg_int(root, path, "hidden_size", 1, 0, &c.hidden_size)) ||
      (rc = cfg_int(root, path, "num_hidden_layers", 1, 0, &c.n_layers)) ||
      (rc = cfg_int(root, path, "num_attention_heads", 1, 0, &c.n_heads)) ||
      (rc = cfg_int(root, path, "intermediate_size", 1, 0, &c.intermediate_size)) ||
      (rc = cfg_int(root, path, "vocab_size", 1, 0, &c.vocab_size)) ||
      (rc = cfg_int(root, path, "num_key_value_heads", 0, c.n_heads, &c.n_kv_heads)) ||
      (rc = cfg_int(root, path, "max_position_embeddings", 0, 4096,
                    &c.max_position_embeddings)) ||
      (rc = cfg_int(root, path, "bos_token_id", 0, -1, &c.bos_token_id)) ||
      (rc = cfg_int(root, path, "eos_token_id", 0, -1, &c.eos_token_id)) ||
      (rc = cfg_float(root, path, "rms_norm_eps", 1e-6f, &c.rms_norm_eps)) ||
      (rc = cfg_float(root, path, "rope_theta", 10000.0f, &c.rope_theta)))
    goto out;
  if (c.n_heads <= 0 || c.hidden_size <= 0) {
    rc = m3__seterr(M3_EBADFORMAT, "config %s: hidden_size and num_attention_heads must be > 0",
                    path);
    goto out;
  }
  if ((rc = cfg_int(root, path, "head_dim", 0, c.hidden_size / c.n_heads, &c.head_dim))) goto out;
  json_t *tie = json_object_get(root, "tie_word_embeddings");
  c.tie_word_embeddings = json_is_true(tie);
  json_t *rs = json_object_get(root, "rope_scaling");
  if (rs && !json_is_null(rs)) {
    rc = m3__seterr(M3_EBADFORMAT, "config %s: \"rope_scaling\" is set; only plain RoPE is supported",
                    path);
    goto out;
  }
  json_t *act = json_object_get(root, "hidden_act");
  if (json_is_string(act) && strcmp(json_string_value(act), "silu")) {
    rc = m3__seterr(M3_EBADFORMAT, "config %s: \"hidden_act\" is \"%s\"; only silu is supported",
                    path, json_string_value(act));
    goto out;
  }
  if (c.n_layers <= 0 || c.intermediate_size <= 0 || c.vocab_size <= 0 || c.n_kv_heads <= 0 ||
      c.head_dim <= 0 || c.rms_norm_eps <= 0 || c.rope_theta <= 0) {
    rc = m3__seterr(M3_EBADFORMAT, "config %s: sizes, rms_norm_eps and rope_theta must be > 0",
                    path);
    goto out;
  }
  if (c.n_heads % c.n_kv_heads) {
    rc = m3__seterr(M3_EBADFORMAT,
                    "config %s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                    path, c.n_heads, c.n_kv_heads);
    goto out;
  }
  if (c.head_dim % 2) {
    rc = m3__seterr(M3_EBADFORMAT, "config %s: head_dim %d is odd (RoPE rotates pairs)", path,
                    c.head_dim);
    goto out;
  }
  *out = c;
out:
  return rc;
}

/* ---- the model -------------------------------------------------------- */

void m3_model_close(m3_model *m) {
  if (!m) return;
  m3_safetensors_close(m->st);
  free(m->layers);
  free(m->arena);
  free(m);
}

const m3_model_config *m3_model_get_config(const m3_model *m) { return &m->cfg; }
int m3_model_mem_layers(const m3_model *m) { return m->n_mem; }
size_t m3_model_weight_bytes(const m3_model *m) { return m->arena_floats * sizeof(float); }

void m3__model_embed_row(const m3_model *m, int32_t tok, float *dst) {
  size_t e = (size_t)m->cfg.hidden_size;
  const uint8_t *row = (const uint8_t *)m->embed.data + (size_t)tok * e * m3_dtype_size(m->embed.dtype);
  m3_safetensors_convert_f32(m->embed.dtype, row, dst, e);
}

static int read_w(const m3_model *m, int layer, const char *what, int ndim, int64_t d0, int64_t d1,
                  float *dst) {
  char name[160];
  int64_t shape[2] = {d0, d1};
  snprintf(name, sizeof name, "model.layers.%d.%s.weight", layer, what);
  return m3_safetensors_read_f32(m->st, name, ndim, shape, dst);
}

int m3_model_open(const char *dir, const m3_model_opts *opts, m3_model **out) {
  int rc = 0;
  *out = NULL;
  m3_model *m = calloc(1, sizeof *m);
  if (!m) return m3__seterr(M3_ENOMEM, "model: out of memory");
  if ((rc = m3_model_config_load(dir, &m->cfg))) goto out;
  const m3_model_config *c = &m->cfg;
  m->n_mem = opts && opts->n_mem_layers > 0 ? opts->n_mem_layers : c->n_layers / 2;
  if (m->n_mem < 1) m->n_mem = 1;
  if (m->n_mem > c->n_layers) {
    rc = m3__seterr(M3_EINVAL, "model %s: %d memory layers asked, the model has %d", dir,
                    m->n_mem, c->n_layers);
    goto out;
  }
  if ((rc = m3_safetensors_open(dir, &m->st))) goto out;
  if (m3_safetensors_find(m->st, "model.embed_tokens.weight", &m->embed)) {
    rc = m3__seterr(M3_EBADFORMAT, "%s", m3_errmsg());
    goto out;
  }
  if (m->embed.dtype == M3_TENSOR_DTYPE_OTHER) {
    rc = m3__seterr(M3_EBADFORMAT, "tensor 'model.embed_tokens.weight' in %s has unsupported dtype %s",
                    m->embed.file, m->embed.dtype_name);
    goto out;
  }
  if (m->embed.ndim != 2 || m->embed.shape[0] != c->vocab_size ||
      m->embed.shape[1] != c->hidden_size) {
    rc = m3__seterr(M3_EBADFORMAT,
                    "tensor 'model.embed_tokens.weight' in %s: shape is not (vocab_size %d, "
                    "hidden_size %d)",
                    m->embed.file, c->vocab_size, c->hidden_size);
    goto out;
  }
  size_t E = (size_t)c->hidden_size, HD = (size_t)c->n_heads * c->head_dim,
         KD = (size_t)c->n_kv_heads * c->head_dim, I = (size_t)c->intermediate_size;
  size_t V = (size_t)c->vocab_size;
  size_t full = E + (HD + 2 * KD) * E + E * HD + E + 2 * I * E + E * I;
  size_t last = E + (HD + 2 * KD) * E;
  int all = opts && opts->all_layers;
  m->n_load = all ? c->n_layers : m->n_mem;
  m->arena_floats = all ? (size_t)m->n_load * full + E + V * E
                        : (size_t)(m->n_mem - 1) * full + last;
  m->arena = malloc(m->arena_floats * sizeof(float));
  m->layers = calloc((size_t)m->n_load, sizeof *m->layers);
  if (!m->arena || !m->layers) {
    rc = m3__seterr(M3_ENOMEM, "model %s: cannot allocate %zu MB of f32 weights", dir,
                    m->arena_floats * sizeof(float) >> 20);
    goto out;
  }
  float *p = m->arena;
  for (int l = 0; l < m->n_load; l++) {
    m3__layer *L = &m->layers[l];
    L->w_in = p, p += E;
    L->w_qkv = p, p += (HD + 2 * KD) * E;
    if ((rc = read_w(m, l, "input_layernorm", 1, (int64_t)E, 0, L->w_in)) ||
        (rc = read_w(m, l, "self_attn.q_proj", 2, (int64_t)HD, (int64_t)E, L->w_qkv)) ||
        (rc = read_w(m, l, "self_attn.k_proj", 2, (int64_t)KD, (int64_t)E, L->w_qkv + HD * E)) ||
        (rc = read_w(m, l, "self_attn.v_proj", 2, (int64_t)KD, (int64_t)E,
                     L->w_qkv + (HD + KD) * E)))
      goto out;
    /* An encoder does not need the last memory layer's output. */
    if (!all && l == m->n_mem - 1) break;
    L->w_o = p, p += E * HD;
    L->w_post = p, p += E;
    L->w_gu = p, p += 2 * I * E;
    L->w_down = p, p += E * I;
    if ((rc = read_w(m, l, "self_attn.o_proj", 2, (int64_t)E, (int64_t)HD, L->w_o)) ||
        (rc = read_w(m, l, "post_attention_layernorm", 1, (int64_t)E, 0, L->w_post)) ||
        (rc = read_w(m, l, "mlp.gate_proj", 2, (int64_t)I, (int64_t)E, L->w_gu)) ||
        (rc = read_w(m, l, "mlp.up_proj", 2, (int64_t)I, (int64_t)E, L->w_gu + I * E)) ||
        (rc = read_w(m, l, "mlp.down_proj", 2, (int64_t)E, (int64_t)I, L->w_down)))
      goto out;
  }
  if (all) {
    int64_t ne = (int64_t)E, head_shape[2] = {(int64_t)V, (int64_t)E};
    m3_tensor head;
    m->w_norm = p, p += E;
    m->w_head = p, p += V * E;
    if ((rc = m3_safetensors_read_f32(m->st, "model.norm.weight", 1, &ne, m->w_norm))) goto out;
    /* Tied (or no lm_head tensor): the head is the embedding table. */
    const char *head_name = !c->tie_word_embeddings &&
                                    m3_safetensors_find(m->st, "lm_head.weight", &head) == 0
                                ? "lm_head.weight"
                                : "model.embed_tokens.weight";
    if ((rc = m3_safetensors_read_f32(m->st, head_name, 2, head_shape, m->w_head))) goto out;
  }
  M3_ASSERT(p == m->arena + m->arena_floats);
out:
  if (rc) m3_model_close(m);
  else *out = m;
  return rc;
}

/* ---- shared helpers --------------------------------------------------- */

void m3__rope_table(int max_seq, int head_dim, float theta, float *cos_t, float *sin_t) {
  int half = head_dim / 2;
  for (int p = 0; p < max_seq; p++)
    for (int i = 0; i < half; i++) {
      double f = pow((double)theta, -2.0 * i / head_dim), a = p * f;
      cos_t[p * half + i] = (float)cos(a);
      sin_t[p * half + i] = (float)sin(a);
    }
}
