/*
 * The decoder's CUDA backend: the same step as the CPU reference
 * (worker/src/decode_cpu.c, m3/decode.h) with the weights uploaded once,
 * the KV cache on the device, cuBLAS SGEMM (default math: no TF32) for the
 * projections and lm_head, the encoder's shared kernels (kernels.cuh:
 * RMSNorm, SwiGLU, reductions) and two of its own: rotary + cache write,
 * and the attention of one (sequence, head) over the memory slots and the
 * causal context in one softmax (empty slots masked).
 *
 * Workload: B <= 32 rows a step. A round's host attention buffers are
 * uploaded once per round (m3_decode_step.mem_version changes), into device
 * buffers allocated at load. Tested against the CPU backend by
 * worker_decode_cuda (exit 77 without a GPU).
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "m3/error.h"
#include "decode_int.h"
#include "model_int.h"
}
#include "kernels.cuh"

namespace {

struct dcuda_state {
  const m3_model *m;
  m3_decode_opts o;
  int E, H, K, D, F, V, NL, NM, QKV, R;
  cublasHandle_t blas;
  float *w;           /* device copy of the weight arena */
  m3__layer *layers;  /* host array of device pointers into w */
  float *w_norm, *w_head;
  float *x_host, *x, *xn, *qkv, *att, *hb, *logits, *kc, *vc, *cos_t, *sin_t, *mem_kv;
  int32_t *mem_pos;
  size_t mem_kv_elems, mem_pos_elems;
  uint64_t mem_version; /* of the round on the device; 0: none yet */
};

/* One block per sequence: rotate its K at p into the cache at i, copy V. */
__global__ void k_cache_put(const float *qkv, float *kc, float *vc, const float *cos_t,
                            const float *sin_t, int l, int B, int K, int C, int D, int H, int QKV,
                            int i, int p) {
  int r = blockIdx.x, half = D / 2;
  const float *row = qkv + (size_t)r * QKV;
  for (int idx = threadIdx.x; idx < K * half; idx += blockDim.x) {
    int g = idx / half, j = idx % half;
    size_t at = ((((size_t)l * B + r) * K + g) * C + i) * D;
    float a = row[(H + g) * D + j], b = row[(H + g) * D + j + half];
    float c = cos_t[(size_t)p * half + j], s = sin_t[(size_t)p * half + j];
    kc[at + j] = a * c - b * s;
    kc[at + j + half] = b * c + a * s;
    vc[at + j] = row[(H + K + g) * D + j];
    vc[at + j + half] = row[(H + K + g) * D + j + half];
  }
}

/* One block per (sequence, head). Shared: qc, qm (D each), then the
 * S + n_ctx probabilities. */
__global__ void k_mem_attention(const float *qkv, const float *kc, const float *vc,
                                const float *mem_kv, const int32_t *mem_pos, float *att,
                                const float *cos_t, const float *sin_t, int l, int B, int H,
                                int K, int C, int D, int QKV, int S, int n_ctx, int pc, int pm,
                                int use_mem, size_t kv_q, size_t kv_l, size_t pos_q,
                                size_t pos_l) {
  extern __shared__ float sh[];
  int r = blockIdx.x / H, h = blockIdx.x % H, g = h / (H / K), half = D / 2;
  float *qc = sh, *qm = sh + D, *p = sh + 2 * D;
  const float *q = qkv + (size_t)r * QKV + (size_t)h * D;
  for (int j = threadIdx.x; j < half; j += blockDim.x) {
    float a = q[j], b = q[j + half];
    float c = cos_t[(size_t)pc * half + j], s = sin_t[(size_t)pc * half + j];
    qc[j] = a * c - b * s, qc[j + half] = b * c + a * s;
    c = cos_t[(size_t)pm * half + j], s = sin_t[(size_t)pm * half + j];
    qm[j] = a * c - b * s, qm[j + half] = b * c + a * s;
  }
  __syncthreads();
  if (!use_mem) S = 0;
  const float scale = rsqrtf((float)D);
  const float *km = mem_kv + r * kv_q + l * kv_l + (size_t)g * S * D;
  const float *vm = km + (size_t)K * S * D;
  const int32_t *mp = mem_pos + r * pos_q + l * pos_l + (size_t)g * S;
  const float *kk = kc + (((size_t)l * B + r) * K + g) * C * D;
  const float *vv = vc + (((size_t)l * B + r) * K + g) * C * D;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < S + n_ctx; j += blockDim.x) {
    float acc = 0;
    if (j < S) {
      if (mp[j] < 0) {
        p[j] = -INFINITY;
        continue;
      }
      for (int d = 0; d < D; d++) acc += qm[d] * km[(size_t)j * D + d];
    } else {
      for (int d = 0; d < D; d++) acc += qc[d] * kk[(size_t)(j - S) * D + d];
    }
    p[j] = acc * scale;
    mx = fmaxf(mx, p[j]);
  }
  mx = block_max(mx);
  float sum = 0;
  for (int j = threadIdx.x; j < S + n_ctx; j += blockDim.x)
    sum += (p[j] = p[j] == -INFINITY ? 0.0f : expf(p[j] - mx));
  sum = block_sum(sum);
  float inv = 1.0f / sum;
  float *o = att + (size_t)r * H * D + (size_t)h * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0;
    for (int j = 0; j < S; j++) acc += p[j] * vm[(size_t)j * D + d];
    for (int j = 0; j < n_ctx; j++) acc += p[S + j] * vv[(size_t)j * D + d];
    o[d] = acc * inv;
  }
}

void dcuda_free(void *ptr) {
  dcuda_state *st = (dcuda_state *)ptr;
  if (!st) return;
  float *bufs[] = {st->w,  st->x,  st->xn,    st->qkv,   st->att,   st->hb,
                   st->logits, st->kc, st->vc, st->cos_t, st->sin_t, st->mem_kv};
  for (float *b : bufs) cudaFree(b);
  cudaFree(st->mem_pos);
  cudaFreeHost(st->x_host);
  if (st->blas) cublasDestroy(st->blas);
  free(st->layers);
  free(st);
}

int dcuda_load_inner(dcuda_state *st, const m3_model *m, const m3_decode_opts *o) {
  const m3_model_config *c = &m->cfg;
  st->m = m;
  st->o = *o;
  st->E = c->hidden_size, st->H = c->n_heads, st->K = c->n_kv_heads, st->D = c->head_dim;
  st->F = c->intermediate_size, st->V = c->vocab_size, st->NL = c->n_layers, st->NM = m->n_mem;
  st->QKV = (st->H + 2 * st->K) * st->D;
  st->R = M3_ATTN_MEM_SPAN + o->max_ctx;
  size_t B = (size_t)o->max_batch, C = (size_t)o->max_ctx, D = (size_t)st->D;
  size_t cache = (size_t)st->NL * B * st->K * C * D;
  st->mem_kv_elems = B * st->NM * 2 * st->K * (size_t)o->mem_slots * D;
  st->mem_pos_elems = B * st->NM * st->K * (size_t)o->mem_slots;
  CKB(cublasCreate(&st->blas));
  CKB(cublasSetMathMode(st->blas, CUBLAS_DEFAULT_MATH));
  CK(cudaMalloc((void **)&st->w, m->arena_floats * sizeof(float)));
  CK(cudaMemcpy(st->w, m->arena, m->arena_floats * sizeof(float), cudaMemcpyHostToDevice));
  st->layers = (m3__layer *)calloc((size_t)st->NL, sizeof *st->layers);
  if (!st->layers) return m3__seterr(M3_ENOMEM, "decode cuda: out of memory");
  map_layers(m, st->NL, st->w, st->layers);
  st->w_norm = st->w + (m->w_norm - m->arena);
  st->w_head = st->w + (m->w_head - m->arena);
  CK(cudaMallocHost((void **)&st->x_host, B * st->E * sizeof(float)));
  CK(cudaMalloc((void **)&st->x, B * st->E * sizeof(float)));
  CK(cudaMalloc((void **)&st->xn, B * st->E * sizeof(float)));
  CK(cudaMalloc((void **)&st->qkv, B * st->QKV * sizeof(float)));
  CK(cudaMalloc((void **)&st->att, B * st->H * D * sizeof(float)));
  CK(cudaMalloc((void **)&st->hb, B * 2 * (size_t)st->F * sizeof(float)));
  CK(cudaMalloc((void **)&st->logits, B * st->V * sizeof(float)));
  CK(cudaMalloc((void **)&st->kc, cache * sizeof(float)));
  CK(cudaMalloc((void **)&st->vc, cache * sizeof(float)));
  CK(cudaMalloc((void **)&st->cos_t, (size_t)st->R * D / 2 * sizeof(float)));
  CK(cudaMalloc((void **)&st->sin_t, (size_t)st->R * D / 2 * sizeof(float)));
  if (o->mem_slots) {
    CK(cudaMalloc((void **)&st->mem_kv, st->mem_kv_elems * sizeof(float)));
    CK(cudaMalloc((void **)&st->mem_pos, st->mem_pos_elems * sizeof(int32_t)));
  }
  return upload_rope(st->R, st->D, c->rope_theta, st->cos_t, st->sin_t);
}

int dcuda_load(const m3_model *m, const m3_decode_opts *o, void **out) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    return m3__seterr(M3_EUNSUPPORTED, "decode cuda: no CUDA device");
  }
  dcuda_state *st = (dcuda_state *)calloc(1, sizeof *st);
  if (!st) return m3__seterr(M3_ENOMEM, "decode cuda: out of memory");
  int rc = dcuda_load_inner(st, m, o);
  if (rc) {
    dcuda_free(st);
    return rc;
  }
  *out = st;
  return 0;
}

int dcuda_step(void *ptr, const m3_decode_step *s) {
  dcuda_state *st = (dcuda_state *)ptr;
  const m3_model *m = st->m;
  const int n = s->n_seq, i = s->ctx, E = st->E, H = st->H, K = st->K, D = st->D, F = st->F;
  const int QKV = st->QKV, HD = H * D, S = st->o.mem_slots, B = st->o.max_batch;
  const int C = st->o.max_ctx;
  const float eps = m->cfg.rms_norm_eps;
  const int pc = s->pos_offset + i, pm = pc - s->mem_base;
  int rc;
  if (pc < 0 || pc >= st->R || (s->mem_kv && (pm < 0 || pm >= st->R)))
    return m3__seterr(M3_EINVAL, "decode cuda: rotary position %d (memories %d) outside 0..%d",
                      pc, pm, st->R - 1);
  if (s->mem_kv && s->mem_version != st->mem_version) {
    CK(cudaMemcpy(st->mem_kv, s->mem_kv, st->mem_kv_elems * sizeof(float), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(st->mem_pos, s->mem_pos, st->mem_pos_elems * sizeof(int32_t),
                  cudaMemcpyHostToDevice));
    st->mem_version = s->mem_version;
  }
  const size_t kv_l = (size_t)2 * K * S * D, kv_q = (size_t)st->NM * kv_l;
  const size_t pos_l = (size_t)K * S, pos_q = (size_t)st->NM * pos_l;
  for (int r = 0; r < n; r++) m3__model_embed_row(m, s->tokens[r], st->x_host + (size_t)r * E);
  CK(cudaMemcpy(st->x, st->x_host, (size_t)n * E * sizeof(float), cudaMemcpyHostToDevice));
  size_t shmem = (2 * (size_t)D + S + C) * sizeof(float);
  for (int l = 0; l < st->NL; l++) {
    const m3__layer *w = &st->layers[l];
    int mem = s->mem_kv && l < st->NM;
    k_rmsnorm<<<n, 256>>>(st->xn, st->x, w->w_in, E, eps);
    if ((rc = gemm_nt(st->blas, n, QKV, E, 1.0f, st->xn, E, w->w_qkv, E, 0.0f, st->qkv, QKV)))
      return rc;
    k_cache_put<<<n, 128>>>(st->qkv, st->kc, st->vc, st->cos_t, st->sin_t, l, B, K, C, D, H, QKV,
                            i, pc);
    k_mem_attention<<<n * H, 128, shmem>>>(st->qkv, st->kc, st->vc, st->mem_kv, st->mem_pos,
                                           st->att, st->cos_t, st->sin_t, l, B, H, K, C, D, QKV,
                                           S, i + 1, pc, mem ? pm : pc, mem, kv_q, kv_l, pos_q,
                                           pos_l);
    if ((rc = gemm_nt(st->blas, n, E, HD, 1.0f, st->att, HD, w->w_o, HD, 1.0f, st->x, E)))
      return rc;
    k_rmsnorm<<<n, 256>>>(st->xn, st->x, w->w_post, E, eps);
    if ((rc = gemm_nt(st->blas, n, 2 * F, E, 1.0f, st->xn, E, w->w_gu, E, 0.0f, st->hb, 2 * F)))
      return rc;
    k_silu_mul<<<256, 256>>>(st->hb, (size_t)n, F);
    if ((rc = gemm_nt(st->blas, n, E, F, 1.0f, st->hb, 2 * F, w->w_down, F, 1.0f, st->x, E)))
      return rc;
  }
  k_rmsnorm<<<n, 256>>>(st->xn, st->x, st->w_norm, E, eps);
  if ((rc = gemm_nt(st->blas, n, st->V, E, 1.0f, st->xn, E, st->w_head, E, 0.0f, st->logits,
                    st->V)))
    return rc;
  CK(cudaGetLastError());
  CK(cudaMemcpy(s->logits, st->logits, (size_t)n * st->V * sizeof(float), cudaMemcpyDeviceToHost));
  return 0;
}

} // namespace

extern "C" const m3_decode_backend m3__decode_backend_cuda = {"cuda", dcuda_load, dcuda_step,
                                                              dcuda_free};
