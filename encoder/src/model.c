/*
 * Opening a Llama-family model for the encoder: config.json, the weights of
 * the memory layers converted to f32 (fused q|k|v and gate|up, so that each
 * is one GEMM), and the forward runner that puts a backend (CPU reference,
 * CUDA) behind one table.
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
#include "m3/forward.h"
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
  json_decref(root);
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
  size_t full = E + (HD + 2 * KD) * E + E * HD + E + 2 * I * E + E * I;
  size_t last = E + (HD + 2 * KD) * E;
  m->arena_floats = (size_t)(m->n_mem - 1) * full + last;
  m->arena = malloc(m->arena_floats * sizeof(float));
  m->layers = calloc((size_t)m->n_mem, sizeof *m->layers);
  if (!m->arena || !m->layers) {
    rc = m3__seterr(M3_ENOMEM, "model %s: cannot allocate %zu MB of f32 weights", dir,
                    m->arena_floats * sizeof(float) >> 20);
    goto out;
  }
  float *p = m->arena;
  for (int l = 0; l < m->n_mem; l++) {
    m3__layer *L = &m->layers[l];
    L->w_in = p, p += E;
    L->w_qkv = p, p += (HD + 2 * KD) * E;
    if ((rc = read_w(m, l, "input_layernorm", 1, (int64_t)E, 0, L->w_in)) ||
        (rc = read_w(m, l, "self_attn.q_proj", 2, (int64_t)HD, (int64_t)E, L->w_qkv)) ||
        (rc = read_w(m, l, "self_attn.k_proj", 2, (int64_t)KD, (int64_t)E, L->w_qkv + HD * E)) ||
        (rc = read_w(m, l, "self_attn.v_proj", 2, (int64_t)KD, (int64_t)E,
                     L->w_qkv + (HD + KD) * E)))
      goto out;
    if (l == m->n_mem - 1) break; /* the last memory layer's output is not needed */
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

int m3__batch_check(const m3_model *m, const m3_forward_opts *o, const m3_batch *b) {
  if (!b || !b->tokens || !b->lens || b->n_seq < 1 || b->n_seq > o->max_batch || b->seq_len < 1 ||
      b->seq_len > o->max_seq)
    return m3__seterr(M3_EINVAL, "forward: batch of %d x %d does not fit 1..%d x 1..%d",
                      b ? b->n_seq : 0, b ? b->seq_len : 0, o->max_batch, o->max_seq);
  if (b->seq_len > 65535) return m3__seterr(M3_EINVAL, "forward: positions are u16");
  for (int s = 0; s < b->n_seq; s++) {
    int len = b->lens[s], np = b->n_prefix ? b->n_prefix[s] : 0;
    if (len < 1 || len > b->seq_len)
      return m3__seterr(M3_EINVAL, "forward: sequence %d has length %d (1..%d)", s, len,
                        b->seq_len);
    if (np < 0 || np > len)
      return m3__seterr(M3_EINVAL, "forward: sequence %d: n_prefix %d outside 0..%d", s, np, len);
    for (int t = 0; t < len; t++) {
      int32_t tok = b->tokens[(size_t)s * b->seq_len + t];
      if (tok < 0 || tok >= m->cfg.vocab_size)
        return m3__seterr(M3_EINVAL, "forward: sequence %d position %d: token %d outside the vocab (%d)",
                          s, t, tok, m->cfg.vocab_size);
    }
  }
  return 0;
}

/* ---- the forward runner: a backend behind the table ------------------ */

struct m3_forward {
  const m3_backend *be;
  void *state;
  m3_forward_opts opts;
  const m3_model *m;
};

const m3_backend *m3_backend_cuda(void) {
#ifdef M3_ENCODER_CUDA
  return &m3__backend_cuda_table;
#else
  return NULL;
#endif
}

int m3_forward_create(const m3_model *m, const m3_forward_opts *opts, m3_forward **out) {
  int rc = 0;
  *out = NULL;
  m3_forward *f = calloc(1, sizeof *f);
  if (!f) return m3__seterr(M3_ENOMEM, "forward: out of memory");
  f->m = m;
  if (opts) f->opts = *opts;
  if (f->opts.max_batch <= 0) f->opts.max_batch = 8;
  if (f->opts.max_seq <= 0) f->opts.max_seq = 128;
  if (f->opts.n_tokens <= 0) f->opts.n_tokens = 8;
  const char *want = f->opts.backend && *f->opts.backend ? f->opts.backend : "auto";
  if (f->opts.max_seq > M3_SELECT_MAX_LEN || f->opts.n_tokens > f->opts.max_seq) {
    rc = m3__seterr(M3_EINVAL, "forward: max_seq %d (at most 4096) and n_tokens %d (at most max_seq)",
                    f->opts.max_seq, f->opts.n_tokens);
    goto out;
  }
  if (!strcmp(want, "cpu")) {
    f->be = m3_backend_cpu();
  } else if (!strcmp(want, "cuda") || !strcmp(want, "auto")) {
    f->be = m3_backend_cuda();
    if (!f->be && !strcmp(want, "cuda")) {
      rc = m3__seterr(M3_EUNSUPPORTED, "forward: m3 was built without CUDA");
      goto out;
    }
    if (f->be) {
      rc = f->be->load(m, &f->opts, &f->state);
      if (rc == M3_EUNSUPPORTED && !strcmp(want, "auto")) f->be = NULL, rc = 0;
      else goto out;
    }
    f->be = m3_backend_cpu();
  } else {
    rc = m3__seterr(M3_EINVAL, "forward: unknown backend '%s' (cpu, cuda, auto)", want);
    goto out;
  }
  rc = f->be->load(m, &f->opts, &f->state);
out:
  if (rc) {
    f->be = NULL;
    m3_forward_destroy(f);
  } else {
    *out = f;
  }
  return rc;
}

void m3_forward_destroy(m3_forward *f) {
  if (!f) return;
  if (f->be && f->state) f->be->free(f->state);
  free(f);
}

int m3_forward_run(m3_forward *f, const m3_batch *b, m3_memories *out) {
  int rc = m3__batch_check(f->m, &f->opts, b);
  if (rc) return rc;
  if (!out || !out->positions || !out->kv) return m3__seterr(M3_EINVAL, "forward: no output buffers");
  return f->be->forward(f->state, b, out);
}

const char *m3_forward_backend_name(const m3_forward *f) { return f->be->name; }

m3_spec m3_forward_spec(const m3_forward *f) {
  m3_spec s = {(uint16_t)f->m->n_mem, (uint16_t)f->m->cfg.n_kv_heads, (uint16_t)f->opts.n_tokens,
               (uint16_t)f->m->cfg.head_dim};
  return s;
}

m3_forward_opts m3_forward_get_opts(const m3_forward *f) { return f->opts; }

double m3_forward_flops(const m3_model *m, const m3_batch *b) {
  const m3_model_config *c = &m->cfg;
  double E = c->hidden_size, H = c->n_heads, K = c->n_kv_heads, D = c->head_dim,
         I = c->intermediate_size, S = b->seq_len, N = (double)b->n_seq * S, sum_len = 0;
  for (int s = 0; s < b->n_seq; s++) sum_len += b->lens[s];
  /* Scores are (query heads x padded rows) x valid keys per sequence. */
  double scores = 2.0 * H * S * sum_len * D;
  double last = 2.0 * N * E * (H + 2 * K) * D + scores;
  double full = last + 2 * scores /* QK^T and PV */ + 2.0 * N * H * D * E +
                2.0 * N * E * 2 * I + 2.0 * N * I * E;
  return (m->n_mem - 1) * full + last;
}
