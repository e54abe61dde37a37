/*
 * Small random-weight Llama-family models in the exact format of real
 * checkpoints (config.json, safetensors, optionally sharded with an index),
 * for tests, benchmarks and the README example (`m3-encode test-model`).
 *
 * Every tensor's values come from a generator seeded by the model seed and
 * the tensor's name, so the same seed gives the same model in every dtype
 * and sharding (rounded to the dtype).
 */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "m3/error.h"
#include "m3/internal/hash.h"
#include "m3/model.h"

void m3_testmodel_params_default(m3_testmodel_params *p) {
  memset(p, 0, sizeof *p);
  p->n_layers = 4;
  p->hidden_size = 64;
  p->n_heads = 4;
  p->n_kv_heads = 2;
  p->head_dim = 16;
  p->vocab_size = 97;
  p->max_position_embeddings = 512;
  p->rms_norm_eps = 1e-5f;
  p->rope_theta = 10000.0f;
  p->seed = 1;
  p->dtype = M3_DTYPE_F32;
  p->n_shards = 1;
}

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static uint16_t f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)(u >> 16 | 0x40); /* NaN */
  u += 0x7fff + ((u >> 16) & 1); /* round to nearest even */
  return (uint16_t)(u >> 16);
}

static uint16_t f32_to_f16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
  int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
  uint32_t man = u & 0x7fffff;
  if (((u >> 23) & 0xff) == 0xff) return sign | 0x7c00 | (man ? 0x200 : 0);
  if (exp >= 31) return sign | 0x7c00;
  if (exp <= 0) { /* subnormal or zero */
    if (exp < -10) return sign;
    man |= 0x800000;
    int shift = 14 - exp;
    uint32_t h = man >> shift, rem = man & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1))) h++;
    return sign | (uint16_t)h;
  }
  uint32_t h = ((uint32_t)exp << 10) | (man >> 13), rem = man & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++; /* may carry into exp: fine */
  return sign | (uint16_t)h;
}

typedef struct tm_tensor {
  char name[96];
  int ndim;
  int64_t shape[2];
  int kind; /* 0: matrix +-1/sqrt(fan_in); 1: norm weight near 1; 2: embedding */
} tm_tensor;

static void fill(const tm_tensor *t, uint64_t seed, float *v, size_t n) {
  uint64_t s = seed ^ m3__fnv1a64(t->name, strlen(t->name));
  double a = t->kind == 0 ? 1.0 / sqrt((double)t->shape[1]) : t->kind == 1 ? 0.1 : 1.0;
  for (size_t i = 0; i < n; i++) {
    double u = (double)(splitmix(&s) >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0;
    v[i] = (float)((t->kind == 1 ? 1.0 : 0.0) + a * u);
  }
}

static size_t numel(const tm_tensor *t) {
  size_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
  return n;
}

static int write_shard(const char *path, const tm_tensor *ts, size_t n, const m3_testmodel_params *p) {
  int rc = 0;
  size_t esz = m3_dtype_size(p->dtype), off = 0;
  float *buf = NULL;
  void *conv = NULL;
  char *hdr = NULL;
  FILE *f = NULL;
  json_t *root = json_object();
  json_t *meta = json_object();
  json_object_set_new(meta, "format", json_string("pt"));
  json_object_set_new(root, "__metadata__", meta);
  for (size_t i = 0; i < n; i++) {
    json_t *e = json_object(), *shape = json_array();
    for (int d = 0; d < ts[i].ndim; d++) json_array_append_new(shape, json_integer(ts[i].shape[d]));
    json_object_set_new(e, "dtype", json_string(m3_safetensors_dtype_name(p->dtype)));
    json_object_set_new(e, "shape", shape);
    json_t *offs = json_array();
    json_array_append_new(offs, json_integer((json_int_t)off));
    off += numel(&ts[i]) * esz;
    json_array_append_new(offs, json_integer((json_int_t)off));
    json_object_set_new(e, "data_offsets", offs);
    json_object_set_new(root, ts[i].name, e);
  }
  hdr = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!hdr) {
    rc = m3__seterr(M3_ENOMEM, "test model: out of memory");
    goto out;
  }
  size_t hlen = strlen(hdr), padded = (hlen + 7) & ~(size_t)7; /* pad with spaces to 8 */
  if (!(f = fopen(path, "wb"))) {
    rc = m3__syserr(errno, "test model: create %s", path);
    goto out;
  }
  uint8_t le[8];
  for (int i = 0; i < 8; i++) le[i] = (uint8_t)((uint64_t)padded >> (8 * i));
  fwrite(le, 1, 8, f);
  fwrite(hdr, 1, hlen, f);
  for (size_t i = hlen; i < padded; i++) fputc(' ', f);
  for (size_t i = 0; i < n; i++) {
    size_t ne = numel(&ts[i]);
    float *nb = realloc(buf, ne * sizeof(float));
    void *nc = realloc(conv, ne * 2 + 1);
    if (!nb || !nc) {
      free(nb ? nb : buf);
      free(nc ? nc : conv);
      buf = NULL, conv = NULL;
      rc = m3__seterr(M3_ENOMEM, "test model: out of memory");
      goto out;
    }
    buf = nb, conv = nc;
    fill(&ts[i], p->seed, buf, ne);
    if (p->dtype == M3_DTYPE_F32) {
      fwrite(buf, sizeof(float), ne, f); /* little-endian hosts only (x86, arm64) */
    } else {
      uint16_t *h = conv;
      for (size_t k = 0; k < ne; k++)
        h[k] = p->dtype == M3_DTYPE_BF16 ? f32_to_bf16(buf[k]) : f32_to_f16(buf[k]);
      fwrite(h, 2, ne, f);
    }
  }
  if (ferror(f)) rc = m3__syserr(errno ? errno : EIO, "test model: write %s", path);
out:
  if (f && fclose(f) && !rc) rc = m3__syserr(errno, "test model: write %s", path);
  free(buf);
  free(conv);
  free(hdr);
  json_decref(root);
  return rc;
}

static int copy_file(const char *src, const char *dir) {
  char dst[PATH_MAX];
  const char *base = strrchr(src, '/');
  snprintf(dst, sizeof dst, "%s/%s", dir, base ? base + 1 : src);
  FILE *in = fopen(src, "rb"), *out = NULL;
  int rc = 0;
  if (!in) return m3__syserr(errno, "test model: open tokenizer %s", src);
  if (!(out = fopen(dst, "wb"))) {
    rc = m3__syserr(errno, "test model: create %s", dst);
    goto done;
  }
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, in)) > 0)
    if (fwrite(buf, 1, n, out) != n) break;
  if (ferror(in) || ferror(out)) rc = m3__syserr(errno ? errno : EIO, "test model: copy %s", src);
done:
  if (out && fclose(out) && !rc) rc = m3__syserr(errno, "test model: write %s", dst);
  fclose(in);
  return rc;
}

int m3_testmodel_write(const char *dir, const m3_testmodel_params *p) {
  int rc = 0;
  char path[PATH_MAX];
  tm_tensor *ts = NULL;
  json_t *cfg = NULL, *index = NULL;
  if (p->n_layers < 1 || p->hidden_size < 1 || p->n_heads < 1 || p->n_kv_heads < 1 ||
      p->n_heads % p->n_kv_heads || p->head_dim < 2 || p->head_dim % 2 || p->vocab_size < 1 ||
      (p->dtype != M3_DTYPE_F32 && p->dtype != M3_DTYPE_F16 && p->dtype != M3_DTYPE_BF16) ||
      p->n_shards < 1 || p->n_shards > 2)
    return m3__seterr(M3_EINVAL, "test model: bad parameters (heads %% kv_heads, even head_dim, "
                                 "f32/f16/bf16, 1 or 2 shards)");
  if (mkdir(dir, 0777) < 0 && errno != EEXIST) return m3__syserr(errno, "test model: mkdir %s", dir);
  int64_t E = p->hidden_size, HD = (int64_t)p->n_heads * p->head_dim,
          KD = (int64_t)p->n_kv_heads * p->head_dim;
  int64_t I = p->intermediate_size > 0 ? p->intermediate_size : ((8 * E / 3 + 31) / 32) * 32;
  size_t n = 0, cap = 3 + (size_t)p->n_layers * 9;
  if (!(ts = calloc(cap, sizeof *ts))) return m3__seterr(M3_ENOMEM, "test model: out of memory");
#define ADD(kind_, nd, d0, d1, ...)                                    \
  do {                                                                 \
    snprintf(ts[n].name, sizeof ts[n].name, __VA_ARGS__);              \
    ts[n].kind = kind_, ts[n].ndim = nd, ts[n].shape[0] = d0, ts[n].shape[1] = d1; \
    n++;                                                               \
  } while (0)
  ADD(2, 2, p->vocab_size, E, "model.embed_tokens.weight");
  for (int l = 0; l < p->n_layers; l++) {
    ADD(1, 1, E, 0, "model.layers.%d.input_layernorm.weight", l);
    ADD(0, 2, HD, E, "model.layers.%d.self_attn.q_proj.weight", l);
    ADD(0, 2, KD, E, "model.layers.%d.self_attn.k_proj.weight", l);
    ADD(0, 2, KD, E, "model.layers.%d.self_attn.v_proj.weight", l);
    ADD(0, 2, E, HD, "model.layers.%d.self_attn.o_proj.weight", l);
    ADD(1, 1, E, 0, "model.layers.%d.post_attention_layernorm.weight", l);
    ADD(0, 2, I, E, "model.layers.%d.mlp.gate_proj.weight", l);
    ADD(0, 2, I, E, "model.layers.%d.mlp.up_proj.weight", l);
    ADD(0, 2, E, I, "model.layers.%d.mlp.down_proj.weight", l);
  }
  ADD(1, 1, E, 0, "model.norm.weight");
  if (!p->tie_word_embeddings) ADD(0, 2, p->vocab_size, E, "lm_head.weight");
#undef ADD

  if (p->n_shards == 1) {
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if ((rc = write_shard(path, ts, n, p))) goto out;
  } else {
    size_t half = n / 2;
    index = json_object();
    json_t *wm = json_object(), *meta = json_object();
    json_object_set_new(index, "metadata", meta);
    json_object_set_new(index, "weight_map", wm);
    for (int sh = 0; sh < 2; sh++) {
      char fname[64];
      snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", sh + 1, 2);
      snprintf(path, sizeof path, "%s/%s", dir, fname);
      const tm_tensor *part = sh ? ts + half : ts;
      size_t cnt = sh ? n - half : half;
      if ((rc = write_shard(path, part, cnt, p))) goto out;
      for (size_t i = 0; i < cnt; i++) json_object_set_new(wm, part[i].name, json_string(fname));
    }
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (json_dump_file(index, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER)) {
      rc = m3__seterr(M3_EIO, "test model: cannot write %s", path);
      goto out;
    }
  }

  cfg = json_object();
  json_t *arch = json_array();
  json_array_append_new(arch, json_string("LlamaForCausalLM"));
  json_object_set_new(cfg, "architectures", arch);
  json_object_set_new(cfg, "model_type", json_string("llama"));
  json_object_set_new(cfg, "hidden_size", json_integer(E));
  json_object_set_new(cfg, "intermediate_size", json_integer(I));
  json_object_set_new(cfg, "num_hidden_layers", json_integer(p->n_layers));
  json_object_set_new(cfg, "num_attention_heads", json_integer(p->n_heads));
  json_object_set_new(cfg, "num_key_value_heads", json_integer(p->n_kv_heads));
  json_object_set_new(cfg, "head_dim", json_integer(p->head_dim));
  json_object_set_new(cfg, "vocab_size", json_integer(p->vocab_size));
  json_object_set_new(cfg, "max_position_embeddings",
                      json_integer(p->max_position_embeddings > 0 ? p->max_position_embeddings : 512));
  json_object_set_new(cfg, "rms_norm_eps", json_real(p->rms_norm_eps > 0 ? p->rms_norm_eps : 1e-5));
  json_object_set_new(cfg, "rope_theta", json_real(p->rope_theta > 0 ? p->rope_theta : 10000.0));
  json_object_set_new(cfg, "rope_scaling", json_null());
  json_object_set_new(cfg, "hidden_act", json_string("silu"));
  json_object_set_new(cfg, "bos_token_id", json_integer(1));
  json_object_set_new(cfg, "eos_token_id", json_integer(2));
  json_object_set_new(cfg, "tie_word_embeddings", json_boolean(p->tie_word_embeddings));
  json_object_set_new(cfg, "torch_dtype",
                      json_string(p->dtype == M3_DTYPE_F32   ? "float32"
                                  : p->dtype == M3_DTYPE_F16 ? "float16"
                                                             : "bfloat16"));
  snprintf(path, sizeof path, "%s/config.json", dir);
  if (json_dump_file(cfg, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER)) {
    rc = m3__seterr(M3_EIO, "test model: cannot write %s", path);
    goto out;
  }
  if (p->tokenizer_path) rc = copy_file(p->tokenizer_path, dir);
out:
  json_decref(cfg);
  json_decref(index);
  free(ts);
  return rc;
}
