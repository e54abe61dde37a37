/*
 * The CUDA backend of the memory-layer forward: the same math and layouts
 * as the CPU reference (encoder/src/forward_cpu.c), with the projections in
 * cuBLAS SGEMM (f32, no TF32, so it matches the reference to ~1e-5) and
 * kernels for RMSNorm, RoPE, causal attention, selection scores, top-k and
 * the gather of the selected keys and values.
 *
 * Workload: batches of up to max_batch chunks of <= 128 tokens. Everything
 * is allocated in cuda_load (weights uploaded once); cuda_forward only
 * copies the embedded tokens in and the memories out.
 *
 * Device layouts (B sequences, S padded length, N = B*S):
 *   x, xn (N, E); qkv (N, (H+2K) D); qh, qu (B, H, S, D); kh, ku (B, K, S, D)
 *   att (N, H D); hb (N, 2I); logw (B, K, S) double
 *   pos (B, L, K, T) u16; kv (B, L, 2, K, T, D)  = the m3_memories layout
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "m3/error.h"
#include "../src/forward_int.h"
}
#include "kernels.cuh"

namespace {

struct cuda_state {
  const m3_model *m;
  m3_forward_opts o;
  int E, H, K, G, D, I, QKV, L, T;
  cublasHandle_t blas;
  float *w;           /* device copy of the model's weight arena */
  m3__layer *layers;  /* host array of device pointers into w */
  float *x_host;      /* pinned (N, E): embeddings gathered on the host */
  float *x, *xn, *qkv, *qh, *qu, *kh, *ku, *att, *hb, *cos_t, *sin_t, *kv;
  double *logw;
  uint16_t *pos;
  int32_t *lens, *npre;
};

/* One block per row (token); threads over (head, pair). */
__global__ void k_split_rope(const float *qkv, float *qu, float *qh, float *ku, float *kh,
                             const float *cos_t, const float *sin_t, const int32_t *lens, int S,
                             int H, int K, int D, int QKV) {
  int row = blockIdx.x, s = row / S, t = row % S, half = D / 2;
  int valid = t < lens[s];
  const float *src = qkv + (size_t)row * QKV;
  for (int idx = threadIdx.x; idx < (H + K) * half; idx += blockDim.x) {
    int h = idx / half, i = idx % half, isq = h < H, hh = isq ? h : h - H;
    size_t off = (((size_t)s * (isq ? H : K) + hh) * S + t) * D;
    float *u = (isq ? qu : ku) + off, *r = (isq ? qh : kh) + off;
    if (!valid) {
      u[i] = u[i + half] = r[i] = r[i + half] = 0.0f;
      continue;
    }
    float a = src[h * D + i], b = src[h * D + i + half];
    float c = cos_t[t * half + i], sn = sin_t[t * half + i];
    u[i] = a, u[i + half] = b;
    r[i] = a * c - b * sn;
    r[i + half] = b * c + a * sn;
  }
}

/* Causal attention, one block per (sequence, head, query row). Shared: q
 * (D floats) then the row's probabilities (S floats). */
__global__ void k_attention(const float *qh, const float *kh, const float *qkv, float *att,
                            const int32_t *lens, int S, int H, int K, int D, int QKV,
                            float scale) {
  extern __shared__ float sh[];
  int i = blockIdx.x % S, h = (blockIdx.x / S) % H, s = blockIdx.x / (S * H);
  int G = H / K, g = h / G, len = lens[s];
  float *o = att + ((size_t)s * S + i) * H * D + (size_t)h * D;
  if (i >= len) {
    for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] = 0.0f;
    return;
  }
  float *qs = sh, *p = sh + D;
  const float *q = qh + (((size_t)s * H + h) * S + i) * D;
  const float *k = kh + ((size_t)s * K + g) * S * D;
  const float *v = qkv + (size_t)s * S * QKV + (size_t)(H + K) * D + (size_t)g * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) qs[d] = q[d];
  __syncthreads();
  float mx = -INFINITY;
  for (int j = threadIdx.x; j <= i; j += blockDim.x) {
    float acc = 0;
    for (int d = 0; d < D; d++) acc += qs[d] * k[(size_t)j * D + d];
    p[j] = acc * scale;
    mx = fmaxf(mx, p[j]);
  }
  mx = block_max(mx);
  float sum = 0;
  for (int j = threadIdx.x; j <= i; j += blockDim.x) sum += (p[j] = expf(p[j] - mx));
  sum = block_sum(sum);
  float inv = 1.0f / sum;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0;
    for (int j = 0; j <= i; j++) acc += p[j] * v[(size_t)j * QKV + d];
    o[d] = acc * inv;
  }
}

/* Selection scores: one block per (sequence, KV head, key j); log w_j by
 * the per-key max (see encoder/src/select.c). The dots are computed twice
 * (max, then sums) rather than kept: G * len of them would not fit. */
__global__ void k_select_logw(const float *qu, const float *ku, double *logw, const int32_t *lens,
                              int S, int H, int K, int D, float scale) {
  extern __shared__ float ks[];
  int j = blockIdx.x % S, g = (blockIdx.x / S) % K, s = blockIdx.x / (S * K);
  int G = H / K, len = lens[s];
  double *lw = logw + ((size_t)s * K + g) * S;
  if (j >= len) {
    if (threadIdx.x == 0) lw[j] = -INFINITY;
    return;
  }
  const float *k = ku + (((size_t)s * K + g) * S + j) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) ks[d] = k[d];
  __syncthreads();
  const float *q0 = qu + ((size_t)s * H + (size_t)g * G) * S * D;
  float mx = -INFINITY;
  for (int it = threadIdx.x; it < G * len; it += blockDim.x) {
    const float *q = q0 + ((size_t)(it / len) * S + it % len) * D;
    float acc = 0;
    for (int d = 0; d < D; d++) acc += q[d] * ks[d];
    mx = fmaxf(mx, acc * scale);
  }
  mx = block_max(mx);
  double sum = 0;
  for (int it = threadIdx.x; it < G * len; it += blockDim.x) {
    const float *q = q0 + ((size_t)(it / len) * S + it % len) * D;
    float acc = 0;
    for (int d = 0; d < D; d++) acc += q[d] * ks[d];
    sum += (double)expf(acc * scale - mx);
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) lw[j] = (double)mx + log(sum);
}

/* Top-T per (sequence, KV head), ties to the lower position, stored in
 * position order; then the selected rotated keys and values are gathered
 * into the memory layout for layer l. */
__global__ void k_topk_gather(const double *logw, const float *kh, const float *qkv,
                              uint16_t *pos, float *kv, const int32_t *lens,
                              const int32_t *npre, int l, int L, int S, int H, int K, int D,
                              int QKV, int T) {
  __shared__ unsigned char taken[M3_SELECT_MAX_LEN];
  int s = blockIdx.x / K, g = blockIdx.x % K, len = lens[s], np = npre[s];
  const double *lw = logw + ((size_t)s * K + g) * S;
  uint16_t *p = pos + (((size_t)s * L + l) * K + g) * T;
  for (int j = threadIdx.x; j < len; j += blockDim.x) taken[j] = 0;
  __syncthreads();
  if (threadIdx.x == 0) {
    int n = 0;
    for (; n < T; n++) {
      int best = -1;
      for (int j = np; j < len; j++)
        if (!taken[j] && (best < 0 || lw[j] > lw[best])) best = j;
      if (best < 0) break;
      taken[best] = 1;
    }
    int k = 0;
    for (int j = 0; j < len && k < n; j++)
      if (taken[j]) p[k++] = (uint16_t)j;
    for (; k < T; k++) p[k] = (uint16_t)M3_POS_NONE;
  }
  __syncthreads();
  size_t mem = (size_t)L * 2 * K * T * D;
  float *ko = kv + (size_t)s * mem + (((size_t)l * 2 + 0) * K + g) * T * D;
  float *vo = kv + (size_t)s * mem + (((size_t)l * 2 + 1) * K + g) * T * D;
  const float *kk = kh + ((size_t)s * K + g) * S * D;
  const float *vv = qkv + (size_t)s * S * QKV + (size_t)(H + K) * D + (size_t)g * D;
  for (int idx = threadIdx.x; idx < T * D; idx += blockDim.x) {
    int k = idx / D, d = idx % D;
    unsigned pj = p[k];
    ko[idx] = pj == M3_POS_NONE ? 0.0f : kk[(size_t)pj * D + d];
    vo[idx] = pj == M3_POS_NONE ? 0.0f : vv[(size_t)pj * QKV + d];
  }
}

void cuda_free(void *p) {
  cuda_state *st = (cuda_state *)p;
  if (!st) return;
  float *bufs[] = {st->w,  st->x,  st->xn,    st->qkv,   st->qh, st->qu, st->kh,
                   st->ku, st->att, st->hb, st->cos_t, st->sin_t, st->kv};
  for (float *b : bufs) cudaFree(b);
  cudaFree(st->logw);
  cudaFree(st->pos);
  cudaFree(st->lens);
  cudaFree(st->npre);
  cudaFreeHost(st->x_host);
  if (st->blas) cublasDestroy(st->blas);
  free(st->layers);
  free(st);
}

int cuda_load_inner(cuda_state *st, const m3_model *m, const m3_forward_opts *o) {
  const m3_model_config *c = &m->cfg;
  st->m = m;
  st->o = *o;
  st->E = c->hidden_size, st->H = c->n_heads, st->K = c->n_kv_heads, st->D = c->head_dim;
  st->G = st->H / st->K, st->I = c->intermediate_size, st->L = m->n_mem, st->T = o->n_tokens;
  st->QKV = (st->H + 2 * st->K) * st->D;
  size_t S = (size_t)o->max_seq, B = (size_t)o->max_batch, N = B * S, D = (size_t)st->D;
  size_t mem_kv = (size_t)st->L * 2 * st->K * st->T * D, mem_pos = (size_t)st->L * st->K * st->T;
  CKB(cublasCreate(&st->blas));
  CKB(cublasSetMathMode(st->blas, CUBLAS_DEFAULT_MATH)); /* no TF32: parity with the CPU */
  CK(cudaMalloc((void **)&st->w, m->arena_floats * sizeof(float)));
  CK(cudaMemcpy(st->w, m->arena, m->arena_floats * sizeof(float), cudaMemcpyHostToDevice));
  st->layers = (m3__layer *)calloc((size_t)st->L, sizeof *st->layers);
  if (!st->layers) return m3__seterr(M3_ENOMEM, "forward cuda: out of memory");
  map_layers(m, st->L, st->w, st->layers);
  CK(cudaMallocHost((void **)&st->x_host, N * st->E * sizeof(float)));
  CK(cudaMalloc((void **)&st->x, N * st->E * sizeof(float)));
  CK(cudaMalloc((void **)&st->xn, N * st->E * sizeof(float)));
  CK(cudaMalloc((void **)&st->qkv, N * st->QKV * sizeof(float)));
  CK(cudaMalloc((void **)&st->qh, N * st->H * D * sizeof(float)));
  CK(cudaMalloc((void **)&st->qu, N * st->H * D * sizeof(float)));
  CK(cudaMalloc((void **)&st->kh, N * st->K * D * sizeof(float)));
  CK(cudaMalloc((void **)&st->ku, N * st->K * D * sizeof(float)));
  CK(cudaMalloc((void **)&st->att, N * st->H * D * sizeof(float)));
  CK(cudaMalloc((void **)&st->hb, N * 2 * (size_t)st->I * sizeof(float)));
  CK(cudaMalloc((void **)&st->cos_t, S * D / 2 * sizeof(float)));
  CK(cudaMalloc((void **)&st->sin_t, S * D / 2 * sizeof(float)));
  CK(cudaMalloc((void **)&st->kv, B * mem_kv * sizeof(float)));
  CK(cudaMalloc((void **)&st->logw, B * st->K * S * sizeof(double)));
  CK(cudaMalloc((void **)&st->pos, B * mem_pos * sizeof(uint16_t)));
  CK(cudaMalloc((void **)&st->lens, B * sizeof(int32_t)));
  CK(cudaMalloc((void **)&st->npre, B * sizeof(int32_t)));
  /* The same table as the CPU's (host libm), uploaded. */
  return upload_rope(o->max_seq, st->D, c->rope_theta, st->cos_t, st->sin_t);
}

int cuda_load(const m3_model *m, const m3_forward_opts *o, void **out) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError(); /* clear the sticky "no device" */
    return m3__seterr(M3_EUNSUPPORTED, "forward cuda: no CUDA device");
  }
  cuda_state *st = (cuda_state *)calloc(1, sizeof *st);
  if (!st) return m3__seterr(M3_ENOMEM, "forward cuda: out of memory");
  int rc = cuda_load_inner(st, m, o);
  if (rc) {
    cuda_free(st);
    return rc;
  }
  *out = st;
  return 0;
}

int cuda_forward(void *p, const m3_batch *b, m3_memories *out) {
  cuda_state *st = (cuda_state *)p;
  const m3_model *m = st->m;
  const int S = b->seq_len, E = st->E, H = st->H, K = st->K, D = st->D, I = st->I;
  const int QKV = st->QKV, L = st->L, T = st->T, HD = H * D, B = b->n_seq;
  const int N = B * S;
  const float scale = 1.0f / sqrtf((float)D), eps = m->cfg.rms_norm_eps;
  int rc;
  const int32_t *np_host = b->n_prefix;

  for (int s = 0; s < B; s++)
    for (int t = 0; t < S; t++) {
      float *xr = st->x_host + ((size_t)s * S + t) * E;
      if (t < b->lens[s]) m3__model_embed_row(m, b->tokens[(size_t)s * S + t], xr);
      else memset(xr, 0, E * sizeof(float));
    }
  CK(cudaMemcpy(st->x, st->x_host, (size_t)N * E * sizeof(float), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(st->lens, b->lens, B * sizeof(int32_t), cudaMemcpyHostToDevice));
  if (np_host) {
    CK(cudaMemcpy(st->npre, np_host, B * sizeof(int32_t), cudaMemcpyHostToDevice));
  } else {
    CK(cudaMemset(st->npre, 0, B * sizeof(int32_t)));
  }
  if (out->n_selected)
    for (int s = 0; s < B; s++) {
      int cand = b->lens[s] - (np_host ? np_host[s] : 0);
      out->n_selected[s] = cand < T ? cand : T;
    }

  int nt = 128;
  for (int l = 0; l < L; l++) {
    const m3__layer *w = &st->layers[l];
    int last = l == L - 1;
    k_rmsnorm<<<N, 256>>>(st->xn, st->x, w->w_in, E, eps);
    if ((rc = gemm_nt(st->blas, N, QKV, E, 1.0f, st->xn, E, w->w_qkv, E, 0.0f, st->qkv, QKV)))
      return rc;
    k_split_rope<<<N, nt>>>(st->qkv, st->qu, st->qh, st->ku, st->kh, st->cos_t, st->sin_t,
                            st->lens, S, H, K, D, QKV);
    k_select_logw<<<B * K * S, nt, D * sizeof(float)>>>(st->qu, st->ku, st->logw, st->lens, S, H,
                                                        K, D, scale);
    k_topk_gather<<<B * K, nt>>>(st->logw, st->kh, st->qkv, st->pos, st->kv, st->lens, st->npre,
                                 l, L, S, H, K, D, QKV, T);
    if (last) break;
    k_attention<<<B * H * S, nt, (D + S) * sizeof(float)>>>(st->qh, st->kh, st->qkv, st->att,
                                                            st->lens, S, H, K, D, QKV, scale);
    if ((rc = gemm_nt(st->blas, N, E, HD, 1.0f, st->att, HD, w->w_o, HD, 1.0f, st->x, E)))
      return rc;
    k_rmsnorm<<<N, 256>>>(st->xn, st->x, w->w_post, E, eps);
    if ((rc = gemm_nt(st->blas, N, 2 * I, E, 1.0f, st->xn, E, w->w_gu, E, 0.0f, st->hb, 2 * I)))
      return rc;
    k_silu_mul<<<1024, 256>>>(st->hb, (size_t)N, I);
    if ((rc = gemm_nt(st->blas, N, E, I, 1.0f, st->hb, 2 * I, w->w_down, I, 1.0f, st->x, E)))
      return rc;
  }
  CK(cudaGetLastError());
  size_t mem_kv = (size_t)L * 2 * K * T * D, mem_pos = (size_t)L * K * T;
  CK(cudaMemcpy(out->positions, st->pos, B * mem_pos * sizeof(uint16_t), cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(out->kv, st->kv, B * mem_kv * sizeof(float), cudaMemcpyDeviceToHost));
  return 0;
}

} // namespace

extern "C" const m3_backend m3__backend_cuda_table = {"cuda", cuda_load, cuda_forward, cuda_free};
