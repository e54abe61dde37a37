/* The naive reference forward of ref_forward.h: textbook Llama, in double. */
#include "ref_forward.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "m3/error.h"

static double *readw(const m3_safetensors *st, const char *name, int ndim, int64_t d0, int64_t d1,
                     int *rc) {
  int64_t shape[2] = {d0, d1};
  size_t n = (size_t)d0 * (ndim == 2 ? (size_t)d1 : 1);
  float *f = malloc(n * sizeof *f);
  double *d = malloc(n * sizeof *d);
  if (*rc == 0) *rc = m3_safetensors_read_f32(st, name, ndim, shape, f);
  for (size_t i = 0; *rc == 0 && i < n; i++) d[i] = f[i];
  free(f);
  return d;
}

/* y (rows, out) = x (rows, in) W^T, W (out, in) */
static void matmul(double *y, const double *x, const double *w, int rows, int in, int out) {
  for (int r = 0; r < rows; r++)
    for (int o = 0; o < out; o++) {
      double s = 0;
      for (int i = 0; i < in; i++) s += x[(size_t)r * in + i] * w[(size_t)o * in + i];
      y[(size_t)r * out + o] = s;
    }
}

static void rmsnorm(double *y, const double *x, const double *w, int rows, int E, double eps) {
  for (int r = 0; r < rows; r++) {
    double ss = 0;
    for (int i = 0; i < E; i++) ss += x[r * E + i] * x[r * E + i];
    double inv = 1.0 / sqrt(ss / E + eps);
    for (int i = 0; i < E; i++) y[r * E + i] = x[r * E + i] * inv * w[i];
  }
}

/* HF Llama: q_embed = q * cos + rotate_half(q) * sin, rotate_half(x) =
 * cat(-x2, x1), frequencies theta^(-2i/D) repeated over both halves. */
static void rope(double *x, int pos, int D, double theta) {
  int half = D / 2;
  double tmp[1024];
  for (int d = 0; d < D; d++) {
    int i = d % half;
    double f = pow(theta, -2.0 * i / D), c = cos(pos * f), s = sin(pos * f);
    double rot = d < half ? -x[d + half] : x[d - half];
    tmp[d] = x[d] * c + rot * s;
  }
  memcpy(x, tmp, D * sizeof(double));
}

int ref_forward(const char *dir, int n_mem, const int32_t *tokens, int len, ref_out *out) {
  m3_model_config c;
  m3_safetensors *st = NULL;
  int rc = m3_model_config_load(dir, &c);
  if (rc) return rc;
  if ((rc = m3_safetensors_open(dir, &st))) return rc;
  int E = c.hidden_size, H = c.n_heads, K = c.n_kv_heads, D = c.head_dim, F = c.intermediate_size;
  int G = H / K;
  double eps = c.rms_norm_eps, theta = c.rope_theta, scale = 1.0 / sqrt((double)D);
  memset(out, 0, sizeof *out);
  out->L = n_mem, out->K = K, out->D = D, out->len = len;
  out->k = calloc((size_t)n_mem * K * len * D, sizeof(double));
  out->v = calloc((size_t)n_mem * K * len * D, sizeof(double));
  out->logw = calloc((size_t)n_mem * K * len, sizeof(double));
  double *emb = readw(st, "model.embed_tokens.weight", 2, c.vocab_size, E, &rc);
  double *x = calloc((size_t)len * E, sizeof(double)), *xn = calloc((size_t)len * E, sizeof(double));
  double *q = calloc((size_t)len * H * D, sizeof(double)), *k = calloc((size_t)len * K * D, sizeof(double));
  double *v = calloc((size_t)len * K * D, sizeof(double)), *att = calloc((size_t)len * H * D, sizeof(double));
  double *o = calloc((size_t)len * E, sizeof(double));
  double *gt = calloc((size_t)len * F, sizeof(double)), *up = calloc((size_t)len * F, sizeof(double));
  double *p = calloc((size_t)len, sizeof(double));
  for (int t = 0; rc == 0 && t < len; t++)
    memcpy(x + (size_t)t * E, emb + (size_t)tokens[t] * E, E * sizeof(double));
  for (int l = 0; rc == 0 && l < n_mem; l++) {
    char nm[128];
#define W(var, what, nd, a, b)                                          \
  snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", l, what);        \
  double *var = readw(st, nm, nd, a, b, &rc)
    W(w_in, "input_layernorm", 1, E, 0);
    W(wq, "self_attn.q_proj", 2, H * D, E);
    W(wk, "self_attn.k_proj", 2, K * D, E);
    W(wv, "self_attn.v_proj", 2, K * D, E);
    W(wo, "self_attn.o_proj", 2, E, H * D);
    W(w_post, "post_attention_layernorm", 1, E, 0);
    W(wg, "mlp.gate_proj", 2, F, E);
    W(wu, "mlp.up_proj", 2, F, E);
    W(wd, "mlp.down_proj", 2, E, F);
#undef W
    if (rc == 0) {
      rmsnorm(xn, x, w_in, len, E, eps);
      matmul(q, xn, wq, len, E, H * D);
      matmul(k, xn, wk, len, E, K * D);
      matmul(v, xn, wv, len, E, K * D);
      /* Selection from q, k before rotary, no causal mask: the plain sum. */
      for (int g = 0; g < K; g++)
        for (int j = 0; j < len; j++) {
          double w = 0;
          for (int a = 0; a < G; a++)
            for (int i = 0; i < len; i++) {
              double s = 0;
              for (int d = 0; d < D; d++)
                s += q[(size_t)i * H * D + (g * G + a) * D + d] * k[(size_t)j * K * D + g * D + d];
              w += exp(s * scale);
            }
          out->logw[((size_t)l * K + g) * len + j] = log(w);
        }
      for (int t = 0; t < len; t++) {
        for (int h = 0; h < H; h++) rope(q + (size_t)t * H * D + h * D, t, D, theta);
        for (int g = 0; g < K; g++) rope(k + (size_t)t * K * D + g * D, t, D, theta);
      }
      for (int g = 0; g < K; g++)
        for (int t = 0; t < len; t++)
          for (int d = 0; d < D; d++) {
            out->k[(((size_t)l * K + g) * len + t) * D + d] = k[(size_t)t * K * D + g * D + d];
            out->v[(((size_t)l * K + g) * len + t) * D + d] = v[(size_t)t * K * D + g * D + d];
          }
      /* Causal attention, then the MLP. */
      for (int h = 0; h < H; h++) {
        int g = h / G;
        for (int i = 0; i < len; i++) {
          double mx = -1e300, sum = 0;
          for (int j = 0; j <= i; j++) {
            double s = 0;
            for (int d = 0; d < D; d++)
              s += q[(size_t)i * H * D + h * D + d] * k[(size_t)j * K * D + g * D + d];
            p[j] = s * scale;
            if (p[j] > mx) mx = p[j];
          }
          for (int j = 0; j <= i; j++) sum += (p[j] = exp(p[j] - mx));
          for (int d = 0; d < D; d++) {
            double a = 0;
            for (int j = 0; j <= i; j++) a += p[j] / sum * v[(size_t)j * K * D + g * D + d];
            att[(size_t)i * H * D + h * D + d] = a;
          }
        }
      }
      matmul(o, att, wo, len, H * D, E);
      for (size_t i = 0; i < (size_t)len * E; i++) x[i] += o[i];
      rmsnorm(xn, x, w_post, len, E, eps);
      matmul(gt, xn, wg, len, E, F);
      matmul(up, xn, wu, len, E, F);
      for (size_t i = 0; i < (size_t)len * F; i++) gt[i] = gt[i] / (1 + exp(-gt[i])) * up[i];
      matmul(o, gt, wd, len, F, E);
      for (size_t i = 0; i < (size_t)len * E; i++) x[i] += o[i];
    }
    free(w_in), free(wq), free(wk), free(wv), free(wo), free(w_post), free(wg), free(wu), free(wd);
  }
  free(emb), free(x), free(xn), free(q), free(k), free(v), free(att), free(o), free(gt), free(up),
      free(p);
  m3_safetensors_close(st);
  if (rc) ref_out_free(out);
  return rc;
}

void ref_out_free(ref_out *o) {
  free(o->k);
  free(o->v);
  free(o->logw);
  memset(o, 0, sizeof *o);
}

int ref_select(const double *logw, int len, int n_prefix, int n_tokens, uint16_t *pos) {
  /* Sort candidate indices by (logw desc, position asc): insertion sort. */
  int idx[4096], n = 0;
  for (int j = n_prefix; j < len; j++) {
    int at = n++;
    while (at > 0 && logw[idx[at - 1]] < logw[j]) {
      idx[at] = idx[at - 1];
      at--;
    }
    idx[at] = j;
  }
  int take = n < n_tokens ? n : n_tokens;
  /* position order */
  for (int a = 0; a < take; a++)
    for (int b = a + 1; b < take; b++)
      if (idx[b] < idx[a]) {
        int t = idx[a];
        idx[a] = idx[b], idx[b] = t;
      }
  for (int a = 0; a < n_tokens; a++) pos[a] = a < take ? (uint16_t)idx[a] : 0xFFFF;
  return take;
}
