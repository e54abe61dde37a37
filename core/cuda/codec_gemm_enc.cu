/*
 * The GEMM encoder on a CUDA device (library m3cudaenc): the CPU GEMM
 * encoder's steps (codec_gemm.c) with cuBLAS sgemm for the transforms and
 * the distance blocks and kernels for the rest, so a worker or an encode
 * pipeline with a GPU quantizes without copying the K/V back to the host.
 *
 * Per batch of up to BATCH vectors (device memory in, device codes out):
 *   Y = X A^T (+ b)               cublasSgemm per transform
 *   D = -2 X_m C_m^T              cublasSgemm per coarse / PQ sub-quantizer,
 *                                 all ksub centroids at once
 *   first minimum of (||x_m||^2 + ||c||^2) + D per row: one warp a row
 *                                 (lanes keep their first minimum; the warp
 *                                 takes the smallest value, then index);
 *                                 PQ sub-vectors under 16 dims settle
 *                                 near-ties by the direct sum, as on the CPU
 *   residual, then packing        one thread a vector
 * The codebooks come from the CPU encoder's reading of the set's FAISS
 * indexes (m3__enc_gemm.prepare). cuBLAS's sums run in another order than
 * OpenBLAS's, so codes can differ from the CPU encoder's where two centroids
 * are within float rounding; test_codec_cuda_enc measures it.
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "../src/codec_gemm.h"
#include "../src/codec_internal.h"
#include "m3/error.h"
}

#define BATCH 1024

typedef struct dpq {
  uint32_t M, nbits, ksub, dsub;
  float *cent, *norms; /* device */
} dpq;

typedef struct dcodec {
  const m3__gemm *g; /* host view (the set's) */
  uint32_t n_lt;
  float *A[M3__GEMM_MAX_LT], *b[M3__GEMM_MAX_LT]; /* device */
  dpq q1, pq;
} dcodec;

struct m3_codec_cuda_enc {
  const m3_codec_set *cs;
  uint32_t n_codecs;
  dcodec *c;
  cublasHandle_t h;
  float *xa, *xb, *res, *D, *xn; /* scratch, device */
  uint32_t *i1, *i2;
  size_t dmax, kmax, m1max, m2max;
};

static int cuda_err(cudaError_t e, const char *what) {
  int code = e == cudaErrorMemoryAllocation ? M3_ENOMEM
             : (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) ? M3_EUNSUPPORTED
             : M3_EINTERNAL;
  return m3__seterr(code, "cuda encode: %s: %s (%s)", what, cudaGetErrorString(e),
                    cudaGetErrorName(e));
}

static int blas_err(cublasStatus_t s, const char *what) {
  return m3__seterr(s == CUBLAS_STATUS_ALLOC_FAILED ? M3_ENOMEM : M3_EINTERNAL,
                    "cuda encode: %s: cuBLAS status %d", what, (int)s);
}

static int upload(float **d, const float *h, size_t n) {
  cudaError_t e = cudaMalloc((void **)d, n * sizeof(float));
  if (e == cudaSuccess)
    e = cudaMemcpy(*d, h, n * sizeof(float), cudaMemcpyHostToDevice);
  return e == cudaSuccess ? 0 : cuda_err(e, "upload codebooks");
}

static int upload_pq(dpq *d, const m3__gpq *q) {
  d->M = q->M;
  d->nbits = q->nbits;
  d->ksub = q->ksub;
  d->dsub = q->dsub;
  int rc = upload(&d->cent, q->cent, (size_t)q->M * q->ksub * q->dsub);
  return rc ? rc : upload(&d->norms, q->norms, (size_t)q->M * q->ksub);
}

/* xn[i] = |x_i[m*dsub .. +dsub)|^2, rows of stride ld */
__global__ void m3__enc_norms(const float *x, size_t ld, uint32_t nb, uint32_t off, uint32_t dsub,
                              float *xn) {
  uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= nb)
    return;
  const float *r = x + (size_t)i * ld + off;
  float s = 0;
  for (uint32_t j = 0; j < dsub; j++)
    s += r[j] * r[j];
  xn[i] = s;
}

__device__ __forceinline__ float l2_direct(const float *x, const float *c, uint32_t d) {
  float s = 0;
  for (uint32_t j = 0; j < d; j++) {
    float t = x[j] - c[j];
    s += t * t;
  }
  return s;
}

__device__ __forceinline__ void warp_min(float *v, uint32_t *k) {
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_down_sync(0xffffffffu, *v, o);
    uint32_t ok = __shfl_down_sync(0xffffffffu, *k, o);
    if (ov < *v || (ov == *v && ok < *k)) {
      *v = ov;
      *k = ok;
    }
  }
  *v = __shfl_sync(0xffffffffu, *v, 0);
  *k = __shfl_sync(0xffffffffu, *k, 0);
}

/* One warp a row: idx[i*stride] = first argmin_j (xn_i + cn_j) + D[i, j]. */
__global__ void m3__enc_argmin(const float *D, const float *cn, const float *xn, uint32_t nb,
                               uint32_t ksub, int refine, const float *x, size_t ld, uint32_t off,
                               const float *cent, uint32_t dsub, uint32_t *idx, uint32_t stride) {
  const uint32_t lane = threadIdx.x & 31;
  const uint32_t i = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (i >= nb)
    return;
  const float *Di = D + (size_t)i * ksub;
  const float xi = xn[i];
  float v = FLT_MAX;
  uint32_t k = 0xffffffffu;
  for (uint32_t j = lane; j < ksub; j += 32) {
    float t = (xi + cn[j]) + Di[j];
    if (t < v) {
      v = t;
      k = j;
    }
  }
  warp_min(&v, &k);
  if (refine) {
    const float eps = 4e-6f * (xi + cn[k]) + FLT_MIN;
    const float *xr = x + (size_t)i * ld + off;
    float bd = FLT_MAX;
    uint32_t bk = 0xffffffffu;
    for (uint32_t j = lane; j < ksub; j += 32)
      if ((xi + cn[j]) + Di[j] <= v + eps) {
        float dd = l2_direct(xr, cent + (size_t)j * dsub, dsub);
        if (dd < bd) {
          bd = dd;
          bk = j;
        }
      }
    warp_min(&bd, &bk);
    k = bk;
  }
  if (lane == 0)
    idx[(size_t)i * stride] = k;
}

/* res = y - concat_m c_m[i1[m]] */
__global__ void m3__enc_residual(const float *y, uint32_t nb, uint32_t d, const float *cent,
                                 uint32_t M, uint32_t ksub, uint32_t dsub, const uint32_t *i1,
                                 float *res) {
  uint64_t t = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= (uint64_t)nb * d)
    return;
  uint32_t i = (uint32_t)(t / d), j = (uint32_t)(t % d), m = j / dsub;
  res[t] = y[t] - cent[((size_t)m * ksub + i1[(size_t)i * M + m]) * dsub + (j - m * dsub)];
}

__global__ void m3__enc_pack(uint32_t nb, int coarse, uint32_t M1, uint32_t nbits1,
                             const uint32_t *i1, uint32_t cs1, uint32_t M2, uint32_t nbits2,
                             const uint32_t *i2, uint32_t code_size, uint8_t *codes) {
  uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= nb)
    return;
  uint8_t *c = codes + (size_t)i * code_size;
  for (uint32_t b = 0; b < code_size; b++)
    c[b] = 0;
  if (coarse) {
    uint64_t list = 0;
    if (coarse == M3__GC_MULTI)
      for (uint32_t m = 0; m < M1; m++)
        list |= (uint64_t)i1[(size_t)i * M1 + m] << (m * nbits1);
    else
      list = i1[i];
    for (uint32_t b = 0; b < cs1; b++)
      c[b] = (uint8_t)(list >> (8 * b));
  }
  uint32_t pos = cs1 * 8;
  for (uint32_t m = 0; m < M2; m++) {
    uint32_t v = i2[(size_t)i * M2 + m];
    for (uint32_t b = 0; b < nbits2; b++, pos++)
      c[pos >> 3] |= (uint8_t)(((v >> b) & 1u) << (pos & 7));
  }
}

extern "C" void m3_codec_cuda_enc_destroy(m3_codec_cuda_enc *e) {
  if (!e)
    return;
  for (uint32_t i = 0; e->c && i < e->n_codecs; i++) {
    dcodec *c = &e->c[i];
    for (uint32_t t = 0; t < M3__GEMM_MAX_LT; t++) {
      cudaFree(c->A[t]);
      cudaFree(c->b[t]);
    }
    cudaFree(c->q1.cent);
    cudaFree(c->q1.norms);
    cudaFree(c->pq.cent);
    cudaFree(c->pq.norms);
  }
  free(e->c);
  cudaFree(e->xa);
  cudaFree(e->xb);
  cudaFree(e->res);
  cudaFree(e->D);
  cudaFree(e->xn);
  cudaFree(e->i1);
  cudaFree(e->i2);
  if (e->h)
    cublasDestroy(e->h);
  free(e);
}

extern "C" int m3_codec_cuda_enc_create(m3_codec_set *cs, m3_codec_cuda_enc **out) {
  int rc = 0, ndev = 0;
  cudaError_t ce;
  *out = NULL;
  if ((ce = cudaGetDeviceCount(&ndev)) != cudaSuccess || ndev == 0)
    return m3__seterr(M3_EUNSUPPORTED, "cuda encode: no CUDA device (%s)",
                      ce == cudaSuccess ? "device count 0" : cudaGetErrorString(ce));
  if (cs->kind != M3_CODEC_FAISS)
    return m3__seterr(M3_EUNSUPPORTED, "cuda encode: codec set %s is not a faiss set", cs->name);
  m3_codec_cuda_enc *e = (m3_codec_cuda_enc *)calloc(1, sizeof *e);
  if (!e)
    return m3__seterr(M3_ENOMEM, "cuda encode: out of memory");
  e->cs = cs;
  e->n_codecs = cs->n_codecs;
  e->c = (dcodec *)calloc(cs->n_codecs, sizeof *e->c);
  cublasStatus_t bs = cublasCreate(&e->h);
  if (!e->c || bs != CUBLAS_STATUS_SUCCESS) {
    rc = e->c ? blas_err(bs, "cublasCreate") : m3__seterr(M3_ENOMEM, "cuda encode: out of memory");
    e->h = NULL;
    goto out;
  }
  cublasSetMathMode(e->h, CUBLAS_DEFAULT_MATH); /* plain fp32, no TF32 */
  for (uint32_t i = 0; i < cs->n_codecs; i++) {
    char why[M3__NO_TABLES_CAP];
    if ((rc = m3__enc_gemm.prepare(cs, (int)i, why, sizeof why)) != 0) {
      rc = m3__seterr(rc, "cuda encode: codec set %s: codec %u: %s", cs->name, i, why);
      goto out;
    }
    const m3__gemm *g = (const m3__gemm *)cs->codecs[i].gemm;
    dcodec *c = &e->c[i];
    c->g = g;
    c->n_lt = g->n_lt;
    for (uint32_t t = 0; t < g->n_lt; t++) {
      if ((rc = upload(&c->A[t], g->lt[t].A, (size_t)g->lt[t].d_in * g->lt[t].d_out)) != 0 ||
          (g->lt[t].b && (rc = upload(&c->b[t], g->lt[t].b, g->lt[t].d_out)) != 0))
        goto out;
      if (g->lt[t].d_out > e->dmax)
        e->dmax = g->lt[t].d_out;
    }
    if (g->d_in > e->dmax)
      e->dmax = g->d_in;
    if ((g->coarse && (rc = upload_pq(&c->q1, &g->q1)) != 0) || (rc = upload_pq(&c->pq, &g->pq)) != 0)
      goto out;
    if (g->coarse && g->q1.ksub > e->kmax)
      e->kmax = g->q1.ksub;
    if (g->pq.ksub > e->kmax)
      e->kmax = g->pq.ksub;
    if (g->coarse && g->q1.M > e->m1max)
      e->m1max = g->q1.M;
    if (g->pq.M > e->m2max)
      e->m2max = g->pq.M;
  }
  if ((ce = cudaMalloc((void **)&e->xa, BATCH * e->dmax * 4)) != cudaSuccess ||
      (ce = cudaMalloc((void **)&e->xb, BATCH * e->dmax * 4)) != cudaSuccess ||
      (ce = cudaMalloc((void **)&e->res, BATCH * e->dmax * 4)) != cudaSuccess ||
      (ce = cudaMalloc((void **)&e->D, BATCH * e->kmax * 4)) != cudaSuccess ||
      (ce = cudaMalloc((void **)&e->xn, BATCH * 4)) != cudaSuccess ||
      (ce = cudaMalloc((void **)&e->i1, BATCH * (e->m1max + 1) * 4)) != cudaSuccess ||
      (ce = cudaMalloc((void **)&e->i2, BATCH * e->m2max * 4)) != cudaSuccess) {
    rc = cuda_err(ce, "cudaMalloc scratch");
    goto out;
  }
  *out = e;
  return 0;
out:
  m3_codec_cuda_enc_destroy(e);
  return rc;
}

/* D = -2 X_m C_m^T (row-major nb x ksub), then the first minima. */
static int nearest(m3_codec_cuda_enc *e, const dpq *q, uint32_t m, const float *x, size_t ld,
                   uint32_t nb, int refine, uint32_t *idx, uint32_t stride, cudaStream_t st) {
  const float alpha = -2.0f, beta = 0.0f;
  const float *xs = x + (size_t)m * q->dsub, *cent = q->cent + (size_t)m * q->ksub * q->dsub;
  cublasStatus_t s = cublasSgemm(e->h, CUBLAS_OP_T, CUBLAS_OP_N, (int)q->ksub, (int)nb,
                                 (int)q->dsub, &alpha, cent, (int)q->dsub, xs, (int)ld, &beta,
                                 e->D, (int)q->ksub);
  if (s != CUBLAS_STATUS_SUCCESS)
    return blas_err(s, "sgemm distances");
  m3__enc_norms<<<(nb + 255) / 256, 256, 0, st>>>(x, ld, nb, m * q->dsub, q->dsub, e->xn);
  m3__enc_argmin<<<(nb + 7) / 8, 256, 0, st>>>(e->D, q->norms + (size_t)m * q->ksub, e->xn, nb,
                                                q->ksub, refine, x, ld, m * q->dsub, cent,
                                                q->dsub, idx, stride);
  return 0;
}

extern "C" int m3_codec_cuda_encode_vectors(m3_codec_cuda_enc *e, unsigned layer, int kv,
                                            const float *d_x, size_t n, uint8_t *d_codes,
                                            void *stream) {
  int ci = m3__codec_index(e->cs, layer, kv);
  if (ci < 0)
    return m3__seterr(M3_EINVAL, "cuda encode: no codec for layer %u kv %d", layer, kv);
  const dcodec *c = &e->c[ci];
  const m3__gemm *g = c->g;
  cudaStream_t st = (cudaStream_t)stream;
  cublasSetStream(e->h, st);
  int rc = 0;
  for (size_t i0 = 0; i0 < n && !rc; i0 += BATCH) {
    const uint32_t nb = (uint32_t)(n - i0 < BATCH ? n - i0 : BATCH);
    const float *cur = d_x + i0 * g->d_in;
    float *bufs[2] = {e->xa, e->xb};
    for (uint32_t t = 0; t < c->n_lt && !rc; t++) {
      const m3__glt *lt = &g->lt[t];
      float *y = bufs[t & 1];
      const float one = 1.0f;
      float beta = 0.0f;
      if (c->b[t]) {
        for (uint32_t r = 0; r < nb; r++)
          cudaMemcpyAsync(y + (size_t)r * lt->d_out, c->b[t], lt->d_out * 4,
                          cudaMemcpyDeviceToDevice, st);
        beta = 1.0f;
      }
      cublasStatus_t s = cublasSgemm(e->h, CUBLAS_OP_T, CUBLAS_OP_N, (int)lt->d_out, (int)nb,
                                     (int)lt->d_in, &one, c->A[t], (int)lt->d_in, cur,
                                     (int)lt->d_in, &beta, y, (int)lt->d_out);
      if (s != CUBLAS_STATUS_SUCCESS)
        rc = blas_err(s, "sgemm transform");
      cur = y;
    }
    const float *pin = cur;
    for (uint32_t m = 0; g->coarse && m < c->q1.M && !rc; m++)
      rc = nearest(e, &c->q1, m, cur, g->d, nb, 0, e->i1 + m, c->q1.M, st);
    if (g->coarse && !rc) {
      uint64_t tot = (uint64_t)nb * g->d;
      m3__enc_residual<<<(unsigned)((tot + 255) / 256), 256, 0, st>>>(
          cur, nb, g->d, c->q1.cent, c->q1.M, c->q1.ksub, c->q1.dsub, e->i1, e->res);
      pin = e->res;
    }
    for (uint32_t m = 0; m < c->pq.M && !rc; m++)
      rc = nearest(e, &c->pq, m, pin, g->d, nb, c->pq.dsub < 16, e->i2 + m, c->pq.M, st);
    if (!rc)
      m3__enc_pack<<<(nb + 127) / 128, 128, 0, st>>>(
          nb, g->coarse, c->q1.M, c->q1.nbits, e->i1, g->code_size_1, c->pq.M, c->pq.nbits, e->i2,
          g->code_size, d_codes + i0 * g->code_size);
  }
  cudaError_t ce = cudaGetLastError();
  return rc ? rc : ce == cudaSuccess ? 0 : cuda_err(ce, "encode kernels");
}
