/*
 * CUDA pieces the model's GPU backends share (the encoder's forward,
 * encoder/cuda/forward_cuda.cu, and worker/'s decoder): error checks,
 * warp/block reductions, RMSNorm, SwiGLU and the row-major cuBLAS GEMM.
 * Header-only (kernels and device functions in an anonymous namespace, one
 * copy per .cu); include after m3/error.h and model_int.h.
 */
#ifndef M3_KERNELS_CUH
#define M3_KERNELS_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>

namespace {

#define CK(call)                                                                             \
  do {                                                                                       \
    cudaError_t e_ = (call);                                                                 \
    if (e_ != cudaSuccess)                                                                   \
      return m3__seterr(M3_EINTERNAL, "cuda: %s: %s", #call, cudaGetErrorString(e_));        \
  } while (0)

#define CKB(call)                                                                            \
  do {                                                                                       \
    cublasStatus_t s_ = (call);                                                              \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                         \
      return m3__seterr(M3_EINTERNAL, "cublas: %s: status %d", #call, (int)s_);              \
  } while (0)

/* ---- reductions ---- */

template <typename V>
__device__ V warp_sum(V v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}
__device__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
  return v;
}

/* Block-wide sum/max; every thread gets the result. blockDim is a multiple
 * of 32 and at most 1024. */
template <typename V>
__device__ V block_sum(V v) {
  __shared__ V buf[32];
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) buf[wid] = v;
  __syncthreads();
  v = threadIdx.x < nw ? buf[threadIdx.x] : V(0);
  if (wid == 0) v = warp_sum(v);
  if (threadIdx.x == 0) buf[0] = v;
  __syncthreads();
  return buf[0];
}

__device__ float block_max(float v) {
  __shared__ float buf[32];
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) buf[wid] = v;
  __syncthreads();
  v = threadIdx.x < nw ? buf[threadIdx.x] : -INFINITY;
  if (wid == 0) v = warp_max(v);
  if (threadIdx.x == 0) buf[0] = v;
  __syncthreads();
  return buf[0];
}

/* ---- kernels ---- */

__global__ void k_rmsnorm(float *y, const float *x, const float *w, int E, float eps) {
  const float *xr = x + (size_t)blockIdx.x * E;
  float *yr = y + (size_t)blockIdx.x * E;
  double ss = 0;
  for (int i = threadIdx.x; i < E; i += blockDim.x) ss += (double)xr[i] * xr[i];
  ss = block_sum(ss);
  float inv = (float)(1.0 / sqrt(ss / E + eps));
  for (int i = threadIdx.x; i < E; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

__global__ void k_silu_mul(float *hb, size_t N, int I) {
  size_t n = N * (size_t)I;
  for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n;
       idx += (size_t)gridDim.x * blockDim.x) {
    size_t r = idx / I, i = idx % I;
    float *gr = hb + r * 2 * I;
    float gv = gr[i];
    gr[i] = gv / (1.0f + expf(-gv)) * gr[I + i];
  }
}

/* Row-major C (M x N) = alpha A (M x Kd, lda) W^T + beta C, W (N x Kd, ldw):
 * cuBLAS is column-major, so compute C^T = W A^T. */
int gemm_nt(cublasHandle_t h, int M, int N, int Kd, float alpha, const float *A, int lda,
            const float *W, int ldw, float beta, float *C, int ldc) {
  CKB(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, N, M, Kd, &alpha, W, ldw, A, lda, &beta, C, ldc));
  return 0;
}

/* The model's weight arena on the device (w: a device copy of m->arena)
 * and its first n layers' pointers moved into it (NULL stays NULL). */
inline void map_layers(const m3_model *m, int n, float *w, m3__layer *out) {
  for (int l = 0; l < n; l++) {
    const m3__layer *hl = &m->layers[l];
    m3__layer *dl = &out[l];
    float *const *src[] = {&hl->w_in, &hl->w_qkv, &hl->w_o, &hl->w_post, &hl->w_gu, &hl->w_down};
    float **dst[] = {&dl->w_in, &dl->w_qkv, &dl->w_o, &dl->w_post, &dl->w_gu, &dl->w_down};
    for (int i = 0; i < 6; i++) *dst[i] = *src[i] ? w + (*src[i] - m->arena) : NULL;
  }
}

/* m3__rope_table (the CPU's table, host libm) for n positions, into the
 * device buffers cos_d and sin_d (n * D/2 floats each). */
inline int upload_rope(int n, int D, float theta, float *cos_d, float *sin_d) {
  size_t bytes = (size_t)n * D / 2 * sizeof(float);
  float *ct = (float *)malloc(bytes), *stb = (float *)malloc(bytes);
  if (!ct || !stb) {
    free(ct);
    free(stb);
    return m3__seterr(M3_ENOMEM, "cuda: out of memory for the rope table");
  }
  m3__rope_table(n, D, theta, ct, stb);
  cudaError_t e1 = cudaMemcpy(cos_d, ct, bytes, cudaMemcpyHostToDevice);
  cudaError_t e2 = cudaMemcpy(sin_d, stb, bytes, cudaMemcpyHostToDevice);
  free(ct);
  free(stb);
  CK(e1);
  CK(e2);
  return 0;
}

} // namespace

#endif /* M3_KERNELS_CUH */
