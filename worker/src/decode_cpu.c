/*
 * The decoder's CPU backend: one step of a batch through every layer with
 * a KV cache, the memory layers attending to a round's memories as well
 * (m3/decode.h). Products in OpenBLAS cblas_sgemm (the step's B rows
 * against each weight matrix), the element kernels and weights of the
 * encoder's model library (model_int.h), the attention of decode_attn.c.
 *
 * Workload: B <= 32 rows a step, contexts of a few hundred to a few
 * thousand tokens. Everything is allocated in cpu_load; cpu_step allocates
 * nothing.
 *
 * Layouts (B = max_batch, C = max_ctx, NL layers, K KV heads, D head_dim):
 *   x, xn (B, E); qkv (B, (H + 2K) D); att (B, H D); hb (B, 2F)
 *   kc, vc (NL, B, K, C, D)   the cache; keys rotated at pos_offset + j
 *   rope tables (M3_ATTN_MEM_SPAN + C, D/2)
 */
#include <cblas.h> /* includes <complex.h>: no variable may be named I */
#include <stdlib.h>
#include <string.h>

#include "decode_int.h"
#include "m3/error.h"
#include "model_int.h"

typedef struct cpu_state {
  const m3_model *m;
  m3_decode_opts o;
  int E, H, K, G, D, F, V, NL, NM, QKV, R;
  float *x, *xn, *qkv, *att, *hb, *kc, *vc, *qc, *qm, *scratch, *cos_t, *sin_t;
} cpu_state;

static void cpu_free(void *p) {
  cpu_state *st = p;
  if (!st) return;
  float *bufs[] = {st->x,  st->xn, st->qkv, st->att,     st->hb,    st->kc,
                   st->vc, st->qc, st->qm,  st->scratch, st->cos_t, st->sin_t};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
  free(st);
}

static int cpu_load(const m3_model *m, const m3_decode_opts *o, void **out) {
  cpu_state *st = calloc(1, sizeof *st);
  if (!st) return m3__seterr(M3_ENOMEM, "decode cpu: out of memory");
  const m3_model_config *c = &m->cfg;
  st->m = m;
  st->o = *o;
  st->E = c->hidden_size, st->H = c->n_heads, st->K = c->n_kv_heads, st->D = c->head_dim;
  st->G = st->H / st->K, st->F = c->intermediate_size, st->V = c->vocab_size;
  st->NL = c->n_layers, st->NM = m->n_mem, st->QKV = (st->H + 2 * st->K) * st->D;
  st->R = M3_ATTN_MEM_SPAN + o->max_ctx;
  size_t B = (size_t)o->max_batch, C = (size_t)o->max_ctx, D = (size_t)st->D;
  size_t cache = (size_t)st->NL * B * st->K * C * D;
  st->x = malloc(B * st->E * sizeof(float));
  st->xn = malloc(B * st->E * sizeof(float));
  st->qkv = malloc(B * st->QKV * sizeof(float));
  st->att = malloc(B * st->H * D * sizeof(float));
  st->hb = malloc(B * 2 * (size_t)st->F * sizeof(float));
  st->kc = malloc(cache * sizeof(float));
  st->vc = malloc(cache * sizeof(float));
  st->qc = malloc(D * sizeof(float));
  st->qm = malloc(D * sizeof(float));
  st->scratch = malloc(((size_t)o->mem_slots + C) * sizeof(float));
  st->cos_t = malloc((size_t)st->R * D / 2 * sizeof(float));
  st->sin_t = malloc((size_t)st->R * D / 2 * sizeof(float));
  if (!st->x || !st->xn || !st->qkv || !st->att || !st->hb || !st->kc || !st->vc || !st->qc ||
      !st->qm || !st->scratch || !st->cos_t || !st->sin_t) {
    cpu_free(st);
    return m3__seterr(M3_ENOMEM, "decode cpu: cannot allocate a cache of %d x %d tokens",
                      o->max_batch, o->max_ctx);
  }
  m3__rope_table(st->R, st->D, c->rope_theta, st->cos_t, st->sin_t);
  *out = st;
  return 0;
}

static int cpu_step(void *p, const m3_decode_step *s) {
  cpu_state *st = p;
  const m3_model *m = st->m;
  const int n = s->n_seq, i = s->ctx, E = st->E, H = st->H, K = st->K, G = st->G, D = st->D;
  const int F = st->F, QKV = st->QKV, HD = H * D, half = D / 2, S = st->o.mem_slots;
  const size_t C = (size_t)st->o.max_ctx, B = (size_t)st->o.max_batch;
  const float eps = m->cfg.rms_norm_eps;
  const int pc = s->pos_offset + i, pm = pc - s->mem_base;
  if (pc < 0 || pc >= st->R || (s->mem_kv && (pm < 0 || pm >= st->R)))
    return m3__seterr(M3_EINVAL, "decode cpu: rotary position %d (memories %d) outside 0..%d", pc,
                      pm, st->R - 1);
  /* The round's geometry: dense query-major, Q = B, L = NM, H = K. */
  const size_t kv_l = (size_t)2 * K * S * D, kv_q = (size_t)st->NM * kv_l, kv_kv = (size_t)K * S * D;
  const size_t pos_l = (size_t)K * S, pos_q = (size_t)st->NM * pos_l;

  for (int r = 0; r < n; r++) m3__model_embed_row(m, s->tokens[r], st->x + (size_t)r * E);
  for (int l = 0; l < st->NL; l++) {
    const m3__layer *w = &m->layers[l];
    const int mem = s->mem_kv && l < st->NM;
    m3__rmsnorm(st->xn, st->x, w->w_in, (size_t)n, E, eps);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, QKV, E, 1.0f, st->xn, E, w->w_qkv, E,
                0.0f, st->qkv, QKV);
    for (int r = 0; r < n; r++) {
      const float *row = st->qkv + (size_t)r * QKV;
      for (int g = 0; g < K; g++) {
        size_t at = ((((size_t)l * B + r) * K + g) * C + i) * D;
        m3__rope(st->kc + at, row + (size_t)(H + g) * D, st->cos_t + (size_t)pc * half,
                 st->sin_t + (size_t)pc * half, D);
        memcpy(st->vc + at, row + (size_t)(H + K + g) * D, D * sizeof(float));
      }
      for (int h = 0; h < H; h++) {
        int g = h / G;
        const float *q = row + (size_t)h * D;
        m3__rope(st->qc, q, st->cos_t + (size_t)pc * half, st->sin_t + (size_t)pc * half, D);
        const float *km = NULL, *vm = NULL;
        const int32_t *mp = NULL;
        if (mem) {
          m3__rope(st->qm, q, st->cos_t + (size_t)pm * half, st->sin_t + (size_t)pm * half, D);
          km = s->mem_kv + r * kv_q + l * kv_l + (size_t)g * S * D;
          vm = km + kv_kv;
          mp = s->mem_pos + r * pos_q + l * pos_l + (size_t)g * S;
        }
        size_t c0 = (((size_t)l * B + r) * K + g) * C * D;
        m3__decode_attn(st->qc, mem ? st->qm : NULL, st->kc + c0, st->vc + c0, i + 1, km, vm, mp,
                        S, D, st->scratch, st->att + (size_t)r * HD + (size_t)h * D);
      }
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, E, HD, 1.0f, st->att, HD, w->w_o, HD,
                1.0f, st->x, E);
    m3__rmsnorm(st->xn, st->x, w->w_post, (size_t)n, E, eps);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, 2 * F, E, 1.0f, st->xn, E, w->w_gu, E,
                0.0f, st->hb, 2 * F);
    m3__swiglu(st->hb, (size_t)n, F);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, E, F, 1.0f, st->hb, 2 * F, w->w_down,
                F, 1.0f, st->x, E);
  }
  m3__rmsnorm(st->xn, st->x, m->w_norm, (size_t)n, E, eps);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, st->V, E, 1.0f, st->xn, E, m->w_head, E,
              0.0f, s->logits, st->V);
  return 0;
}

const m3_decode_backend m3__decode_backend_cpu = {"cpu", cpu_load, cpu_step, cpu_free};
