/*
 * The CPU backend: the reference forward of the memory layers and the token
 * selection, with every matrix product in OpenBLAS cblas_sgemm.
 *
 * Workload: batches of up to max_batch chunks of up to max_seq (128) tokens.
 * Activations are f32; every buffer is allocated once in cpu_load (llama2.c
 * RunState style), nothing is allocated in cpu_forward.
 *
 * Layouts (B = sequences, S = padded length, N = B * S rows, H/K query/KV
 * heads, G = H / K, D = head_dim, E = hidden, F = intermediate):
 *   x, xn       (N, E)            residual stream and its normed copy
 *   qkv         (N, (H + 2K) D)   projections, token-major (v read from here)
 *   qh, qu      (B, H, S, D)      q rotated / unrotated, head-major so that
 *                                 the G heads of a KV group are one (G*S, D)
 *                                 matrix and attention is one GEMM per group
 *   kh, ku      (B, K, S, D)      k rotated / unrotated
 *   sc          (G * S, S)        scores of one group
 *   atth        (G * S, D)        attention output of one group
 *   att         (N, H * D)        attention output, token-major
 *   hb          (N, 2F)           gate | up, then SiLU(gate) * up in the gate half
 * Every product runs over one sequence's valid rows alone (M = its length):
 * OpenBLAS's result for a row depends on M and on the row's place in the
 * block (its kernels tile M, and the edge tiles round differently), so a
 * GEMM over the whole batch would make a chunk's bytes depend on its batch
 * companions. Per sequence, they are a function of the chunk and the model
 * alone (for one OpenBLAS kernel and thread count: m3-encode pins OpenBLAS
 * to one thread), which is what lets slices on many machines give the bytes
 * of one process (test encode_slice). Padding rows of x, xn, q and k stay
 * zero (the embedding, RMSNorm(0) = 0, split_rope) and the other buffers'
 * padding rows are never read.
 */
#include <cblas.h> /* includes <complex.h>: no variable may be named I */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "m3/error.h"
#include "m3/forward.h"
#include "forward_int.h"

typedef struct cpu_state {
  const m3_model *m;
  m3_forward_opts o;
  int E, H, K, G, D, F, QKV, L, T;
  float *x, *xn, *qkv, *qh, *qu, *kh, *ku, *sc, *atth, *att, *hb, *cos_t, *sin_t;
  double *logw;
} cpu_state;

static void cpu_free(void *p) {
  cpu_state *st = p;
  if (!st) return;
  float **bufs[] = {&st->x,  &st->xn,   &st->qkv, &st->qh, &st->qu,    &st->kh,   &st->ku,
                    &st->sc, &st->atth, &st->att, &st->hb, &st->cos_t, &st->sin_t};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(*bufs[i]);
  free(st->logw);
  free(st);
}

static int cpu_load(const m3_model *m, const m3_forward_opts *o, void **out) {
  cpu_state *st = calloc(1, sizeof *st);
  if (!st) return m3__seterr(M3_ENOMEM, "forward cpu: out of memory");
  const m3_model_config *c = &m->cfg;
  st->m = m;
  st->o = *o;
  st->E = c->hidden_size, st->H = c->n_heads, st->K = c->n_kv_heads, st->D = c->head_dim;
  st->G = st->H / st->K, st->F = c->intermediate_size, st->L = m->n_mem, st->T = o->n_tokens;
  st->QKV = (st->H + 2 * st->K) * st->D;
  size_t S = (size_t)o->max_seq, N = (size_t)o->max_batch * S, D = (size_t)st->D;
  st->x = malloc(N * st->E * sizeof(float));
  st->xn = malloc(N * st->E * sizeof(float));
  st->qkv = calloc(N * st->QKV, sizeof(float));
  st->qh = malloc(N * st->H * D * sizeof(float));
  st->qu = malloc(N * st->H * D * sizeof(float));
  st->kh = malloc(N * st->K * D * sizeof(float));
  st->ku = malloc(N * st->K * D * sizeof(float));
  st->sc = calloc((size_t)st->G * S * S, sizeof(float));
  st->atth = calloc((size_t)st->G * S * D, sizeof(float));
  st->att = calloc(N * st->H * D, sizeof(float));
  st->hb = calloc(N * 2 * (size_t)st->F, sizeof(float));
  st->cos_t = malloc(S * D / 2 * sizeof(float));
  st->sin_t = malloc(S * D / 2 * sizeof(float));
  st->logw = malloc(S * sizeof(double));
  if (!st->x || !st->xn || !st->qkv || !st->qh || !st->qu || !st->kh || !st->ku || !st->sc ||
      !st->atth || !st->att || !st->hb || !st->cos_t || !st->sin_t || !st->logw) {
    cpu_free(st);
    return m3__seterr(M3_ENOMEM, "forward cpu: cannot allocate buffers for %d x %d tokens",
                      o->max_batch, o->max_seq);
  }
  m3__rope_table(o->max_seq, st->D, c->rope_theta, st->cos_t, st->sin_t);
  *out = st;
  return 0;
}

/* Split qkv into the head-major q/k buffers, rotated and not. */
static void split_rope(cpu_state *st, const m3_batch *b) {
  int S = b->seq_len, D = st->D, H = st->H, K = st->K, half = D / 2;
  for (int s = 0; s < b->n_seq; s++)
    for (int t = 0; t < S; t++) {
      const float *row = st->qkv + ((size_t)s * S + t) * st->QKV;
      const float *cs = st->cos_t + (size_t)t * half, *sn = st->sin_t + (size_t)t * half;
      int valid = t < b->lens[s];
      for (int h = 0; h < H + K; h++) {
        int isq = h < H, hh = isq ? h : h - H;
        size_t off = (((size_t)s * (isq ? H : K) + hh) * S + t) * D;
        float *u = (isq ? st->qu : st->ku) + off, *r = (isq ? st->qh : st->kh) + off;
        if (!valid) {
          memset(u, 0, D * sizeof(float));
          memset(r, 0, D * sizeof(float));
          continue;
        }
        memcpy(u, row + (size_t)h * D, D * sizeof(float));
        m3__rope(r, u, cs, sn, D);
      }
    }
}

/* Causal softmax of the group's score rows; padding rows become zero. */
static void softmax_causal(float *sc, int G, int S, int len) {
  for (int a = 0; a < G; a++)
    for (int i = 0; i < S; i++) {
      float *r = sc + ((size_t)a * S + i) * len;
      if (i >= len) {
        memset(r, 0, len * sizeof(float));
        continue;
      }
      float mx = r[0];
      for (int j = 1; j <= i; j++) mx = r[j] > mx ? r[j] : mx;
      float sum = 0;
      for (int j = 0; j <= i; j++) sum += (r[j] = expf(r[j] - mx));
      float inv = 1.0f / sum;
      for (int j = 0; j <= i; j++) r[j] *= inv;
      for (int j = i + 1; j < len; j++) r[j] = 0;
    }
}

/* Mean of the residual stream x over each sequence's chunk tokens (all
 * valid tokens when it has none), summed in double: (n_seq, E) into dst. */
static void pool_hidden(const cpu_state *st, const m3_batch *b, float *dst) {
  const int S = b->seq_len, E = st->E;
  for (int s = 0; s < b->n_seq; s++) {
    int len = b->lens[s], np = b->n_prefix ? b->n_prefix[s] : 0;
    int from = np < len ? np : 0;
    for (int e = 0; e < E; e++) {
      double acc = 0;
      for (int t = from; t < len; t++) acc += st->x[((size_t)s * S + t) * E + e];
      dst[(size_t)s * E + e] = (float)(acc / (len - from));
    }
  }
}

static int cpu_forward(void *p, const m3_batch *b, m3_memories *out) {
  cpu_state *st = p;
  const m3_model *m = st->m;
  const int S = b->seq_len, E = st->E, H = st->H, K = st->K, G = st->G, D = st->D, F = st->F;
  const int QKV = st->QKV, L = st->L, T = st->T, HD = H * D;
  const size_t N = (size_t)b->n_seq * S;
  const float scale = 1.0f / sqrtf((float)D), eps = m->cfg.rms_norm_eps;
  const size_t mem_kv = (size_t)L * 2 * K * T * D, mem_pos = (size_t)L * K * T;

  for (int s = 0; s < b->n_seq; s++)
    for (int t = 0; t < S; t++) {
      float *xr = st->x + ((size_t)s * S + t) * E;
      if (t < b->lens[s]) m3__model_embed_row(m, b->tokens[(size_t)s * S + t], xr);
      else memset(xr, 0, E * sizeof(float));
    }
  if (out->n_selected)
    for (int s = 0; s < b->n_seq; s++) {
      int cand = b->lens[s] - (b->n_prefix ? b->n_prefix[s] : 0);
      out->n_selected[s] = cand < T ? cand : T;
    }

  if (st->o.hidden && (st->o.hidden_layer < 0 || st->o.hidden_layer >= L))
    return m3__seterr(M3_EINVAL, "forward cpu: hidden_layer %d is not a memory layer (0..%d)",
                      st->o.hidden_layer, L - 1);

  for (int l = 0; l < L; l++) {
    const m3__layer *w = &m->layers[l];
    int last = l == L - 1;
    if (st->o.hidden && l == st->o.hidden_layer) pool_hidden(st, b, st->o.hidden);
    m3__rmsnorm(st->xn, st->x, w->w_in, N, E, eps);
    for (int s = 0; s < b->n_seq; s++)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b->lens[s], QKV, E, 1.0f,
                  st->xn + (size_t)s * S * E, E, w->w_qkv, E, 0.0f, st->qkv + (size_t)s * S * QKV,
                  QKV);
    split_rope(st, b);

    for (int s = 0; s < b->n_seq; s++) {
      int len = b->lens[s], np = b->n_prefix ? b->n_prefix[s] : 0;
      for (int g = 0; g < K; g++) {
        const float *qu = st->qu + ((size_t)s * H + (size_t)g * G) * S * D;
        const float *ku = st->ku + ((size_t)s * K + g) * S * D;
        const float *qh = st->qh + ((size_t)s * H + (size_t)g * G) * S * D;
        const float *kh = st->kh + ((size_t)s * K + g) * S * D;
        const float *v = st->qkv + (size_t)s * S * QKV + (size_t)(H + K) * D + (size_t)g * D;

        /* Selection: head a's scores are rows a*S .. a*S+len of sc; the
         * rows past len are left out of the column sums. */
        for (int a = 0; a < G; a++)
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, len, len, D, scale,
                      qu + (size_t)a * S * D, D, ku, D, 0.0f, st->sc + (size_t)a * S * len, len);
        m3__select_colsum(st->sc, G, (size_t)S * len, len, (size_t)len, len, st->logw);
        uint16_t *pos = out->positions + s * mem_pos + ((size_t)l * K + g) * T;
        m3_select_topk(st->logw, len, np, T, pos);
        float *ko = out->kv + s * mem_kv + (((size_t)l * 2 + 0) * K + g) * T * D;
        float *vo = out->kv + s * mem_kv + (((size_t)l * 2 + 1) * K + g) * T * D;
        for (int k = 0; k < T; k++) {
          if (pos[k] == M3_POS_NONE) {
            memset(ko + (size_t)k * D, 0, D * sizeof(float));
            memset(vo + (size_t)k * D, 0, D * sizeof(float));
            continue;
          }
          memcpy(ko + (size_t)k * D, kh + (size_t)pos[k] * D, D * sizeof(float));
          memcpy(vo + (size_t)k * D, v + (size_t)pos[k] * QKV, D * sizeof(float));
        }
        if (last) continue;

        /* Causal attention of the group's heads over the valid keys. */
        for (int a = 0; a < G; a++)
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, len, len, D, scale,
                      qh + (size_t)a * S * D, D, kh, D, 0.0f, st->sc + (size_t)a * S * len, len);
        softmax_causal(st->sc, G, S, len);
        for (int a = 0; a < G; a++)
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, len, D, len, 1.0f,
                      st->sc + (size_t)a * S * len, len, v, QKV, 0.0f, st->atth + (size_t)a * S * D,
                      D);
        for (int a = 0; a < G; a++)
          for (int i = 0; i < len; i++)
            memcpy(st->att + ((size_t)s * S + i) * HD + ((size_t)g * G + a) * D,
                   st->atth + ((size_t)a * S + i) * D, D * sizeof(float));
      }
    }
    if (last) break;

    /* x += att Wo^T; x += (SiLU(xn Wg^T) * (xn Wu^T)) Wd^T */
    for (int s = 0; s < b->n_seq; s++)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b->lens[s], E, HD, 1.0f,
                  st->att + (size_t)s * S * HD, HD, w->w_o, HD, 1.0f, st->x + (size_t)s * S * E, E);
    m3__rmsnorm(st->xn, st->x, w->w_post, N, E, eps);
    for (int s = 0; s < b->n_seq; s++)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b->lens[s], 2 * F, E, 1.0f,
                  st->xn + (size_t)s * S * E, E, w->w_gu, E, 0.0f,
                  st->hb + (size_t)s * S * 2 * F, 2 * F);
    m3__swiglu(st->hb, N, F);
    for (int s = 0; s < b->n_seq; s++)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b->lens[s], E, F, 1.0f,
                  st->hb + (size_t)s * S * 2 * F, 2 * F, w->w_down, F, 1.0f,
                  st->x + (size_t)s * S * E, E);
  }
  return 0;
}

const m3_backend m3__backend_cpu_table = {"cpu", cpu_load, cpu_forward, cpu_free};
