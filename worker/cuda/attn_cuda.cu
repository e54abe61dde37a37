/*
 * Attention buffers on the GPU (m3/attn.h: m3_attn_create_cuda) and the CUDA
 * memory attention reference (m3_attn_ref_cuda).
 *
 * Workload: a round's Q x k memories (Memory3: 160) arrive one at a time
 * from the network, each 39 KB of codes with the paper's codec (450 KB once
 * decoded to bf16). Each memory takes the next of a few "lanes" (stream,
 * pinned staging buffer, device codes, device decode scratch): memcpy into
 * the pinned buffer (the client's receive buffer is only valid during the
 * callback), cudaMemcpyAsync host->device, the codec's decode kernel
 * (m3_codec_cuda_decode, bit-identical to the CPU decoder) into the lane's
 * scratch, and a placement kernel that writes the memory's slot range of
 * the caller's buffers, its positions, and zeros for its empty tokens. The
 * callback returns as soon as the work is queued, so the copy and decode of
 * memory i overlap the receive of memory i+1 and, on another lane, the copy
 * of memory i+1. A lane's pinned buffer is reused only after its previous
 * copy finished (an event).
 *
 * Why a scratch and a second kernel rather than decoding in place: the
 * codec's CUDA API decodes whole memories into their record layout
 * (layer, K|V, head, token, dim); the buffers want (head, slot) rows of
 * another stride. The extra pass moves 2 x 450 KB per memory through HBM
 * (well under a microsecond); a codec entry point decoding into a strided
 * destination would remove it.
 *
 * Element math (addressing, masking, loads, rotary, logits) is attn_math.h,
 * the functions the CPU path runs.
 */
#include <cuda_runtime.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "attn_int.h"
#include "m3/error.h"
}
#include "attn_math.h"

extern "C" int m3__attn_ref_check(const m3_attn_ref_args *a);

static int cuda_err(cudaError_t e, const char *what) {
  int code = e == cudaErrorMemoryAllocation ? M3_ENOMEM
             : (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) ? M3_EUNSUPPORTED
             : M3_EINTERNAL;
  return m3__seterr(code, "attn cuda: %s: %s (%s)", what, cudaGetErrorString(e),
                    cudaGetErrorName(e));
}

#define CU(call, what)                      \
  do {                                      \
    cudaError_t e_ = (call);                \
    if (e_ != cudaSuccess) {                \
      rc = cuda_err(e_, what);              \
      goto out;                             \
    }                                       \
  } while (0)

/* ---- kernels ----------------------------------------------------------- */

/* One memory (record order, decoded in scratch) into range (q, rank). One
 * thread per element; E is the element's bit container. */
template <typename E>
__global__ void place_kernel(m3_attn_geom g, uint32_t q, uint32_t rank,
                             const uint8_t *__restrict__ rpos, const E *__restrict__ scratch,
                             E *kv, int32_t *pos) {
  const uint32_t H = g.spec.n_kv_heads, T = g.spec.n_tokens, D = g.spec.head_dim;
  const uint64_t n = (uint64_t)g.spec.n_layers * 2 * H * T * D;
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (uint64_t)gridDim.x * blockDim.x) {
    const uint64_t v = i / D;
    const uint32_t d = (uint32_t)(i % D), t = (uint32_t)(v % T), h = (uint32_t)((v / T) % H);
    const uint32_t k = (uint32_t)((v / ((uint64_t)T * H)) & 1), l = (uint32_t)(v / (2ull * T * H));
    const uint16_t p = m3__attn_rpos(rpos, ((size_t)l * H + h) * T + t);
    kv[m3__attn_kv_off(&g, q, l, k, h, rank * T + t) + d] =
        p == M3_ATTN_POS_NONE ? (E)0 : scratch[i];
    if (k == 0 && d == 0)
      pos[m3__attn_pos_off(&g, q, l, h, rank * T + t)] = m3__attn_pos_out(p);
  }
}

/* The empty ranges listed in ranges (q * k + rank): zeros and -1. */
template <typename E>
__global__ void empty_kernel(m3_attn_geom g, const uint32_t *__restrict__ ranges,
                             uint32_t n_ranges, E *kv, int32_t *pos) {
  const uint32_t H = g.spec.n_kv_heads, T = g.spec.n_tokens, D = g.spec.head_dim;
  const uint64_t per = (uint64_t)g.spec.n_layers * 2 * H * T * D;
  const uint64_t n = per * n_ranges;
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (uint64_t)gridDim.x * blockDim.x) {
    const uint32_t r = ranges[i / per], q = r / g.k, rank = r % g.k;
    const uint64_t e = i % per, v = e / D;
    const uint32_t d = (uint32_t)(e % D), t = (uint32_t)(v % T), h = (uint32_t)((v / T) % H);
    const uint32_t k = (uint32_t)((v / ((uint64_t)T * H)) & 1), l = (uint32_t)(v / (2ull * T * H));
    kv[m3__attn_kv_off(&g, q, l, k, h, rank * T + t) + d] = (E)0;
    if (k == 0 && d == 0)
      pos[m3__attn_pos_off(&g, q, l, h, rank * T + t)] = M3_ATTN_POS_EMPTY;
  }
}

static unsigned grid_for(uint64_t n, unsigned block) {
  uint64_t b = (n + block - 1) / block;
  if (b > 65535u * 8u)
    b = 65535u * 8u; /* grid-stride loops cover the rest */
  return b ? (unsigned)b : 1u;
}

/* ---- the CUDA backend -------------------------------------------------- */

typedef struct lane {
  cudaStream_t s;
  cudaEvent_t done;  /* its last memory's work is complete */
  uint8_t *h_stage;  /* pinned: positions + codes of one memory */
  uint8_t *d_mem;    /* device copy of h_stage */
  void *d_scratch;   /* one decoded memory, record order */
  int used;
} lane;

typedef struct cuda_impl {
  int device;
  cudaStream_t user;        /* the worker's stream (may be NULL) */
  m3_codec_cuda *dec;
  int n_lanes, next;
  lane *lanes;
  size_t pos_bytes, code_bytes; /* one memory's sections */
  cudaEvent_t ev_begin, ev_end;
  uint32_t *h_ranges, *d_ranges; /* (Q * k) empty ranges of a round */
  int ended;                /* ev_end was recorded */
} cuda_impl;

static int cu_begin(m3_attn *a) {
  cuda_impl *c = (cuda_impl *)a->impl;
  int rc = 0;
  CU(cudaSetDevice(c->device), "cudaSetDevice");
  /* the round's writes start after what the worker queued before it */
  CU(cudaEventRecord(c->ev_begin, c->user), "record round start");
  for (int i = 0; i < c->n_lanes; i++)
    CU(cudaStreamWaitEvent(c->lanes[i].s, c->ev_begin, 0), "lane waits for round start");
out:
  return rc;
}

static int cu_place(m3_attn *a, uint32_t q, uint32_t rank, const m3_record *rec) {
  cuda_impl *c = (cuda_impl *)a->impl;
  const m3_attn_geom *g = &a->g;
  int rc = 0;
  /* callbacks may run on any thread (the cluster's shard threads) */
  CU(cudaSetDevice(c->device), "cudaSetDevice");
  {
    lane *ln = &c->lanes[c->next];
    c->next = (c->next + 1) % c->n_lanes;
    if (ln->used) /* its pinned buffer may still be read by the last copy */
      CU(cudaEventSynchronize(ln->done), "wait for a staging buffer");
    memcpy(ln->h_stage, rec->positions, c->pos_bytes);
    memcpy(ln->h_stage + c->pos_bytes, rec->codes, c->code_bytes);
    CU(cudaMemcpyAsync(ln->d_mem, ln->h_stage, c->pos_bytes + c->code_bytes,
                       cudaMemcpyHostToDevice, ln->s),
       "copy codes to the device");
    if ((rc = m3_codec_cuda_decode(c->dec, &g->spec, ln->d_mem + c->pos_bytes, 1, g->dtype,
                                   ln->d_scratch, ln->s)) != 0)
      goto out;
    const uint64_t n = (uint64_t)m3_spec_vectors(&g->spec) * g->spec.head_dim;
    const unsigned grid = grid_for(n, 256);
    const uint8_t *rpos = ln->d_mem;
    if (a->es == 4)
      place_kernel<uint32_t><<<grid, 256, 0, ln->s>>>(*g, q, rank, rpos,
                                                      (const uint32_t *)ln->d_scratch,
                                                      (uint32_t *)a->round.kv, a->round.pos);
    else
      place_kernel<uint16_t><<<grid, 256, 0, ln->s>>>(*g, q, rank, rpos,
                                                      (const uint16_t *)ln->d_scratch,
                                                      (uint16_t *)a->round.kv, a->round.pos);
    CU(cudaGetLastError(), "placement kernel launch");
    CU(cudaEventRecord(ln->done, ln->s), "record lane done");
    ln->used = 1;
  }
out:
  /* a CUDA failure is the backend's, not the record's: cancel the round */
  if (rc && rc != M3_EINTERNAL && rc != M3_ENOMEM && rc != M3_EUNSUPPORTED && rc != M3_ESHAPE)
    rc = M3_EINTERNAL;
  return rc;
}

static int cu_finish(m3_attn *a) {
  cuda_impl *c = (cuda_impl *)a->impl;
  const m3_attn_geom *g = &a->g;
  int rc = 0;
  CU(cudaSetDevice(c->device), "cudaSetDevice");
  if (c->ended) /* the previous round's range list copy has finished */
    CU(cudaEventSynchronize(c->ev_end), "wait for the previous round");
  for (int i = 0; i < c->n_lanes; i++)
    if (c->lanes[i].used)
      CU(cudaStreamWaitEvent(c->user, c->lanes[i].done, 0), "worker stream waits for lanes");
  {
    uint32_t n = 0;
    for (uint32_t i = 0; i < g->n_queries * g->k; i++)
      if (!a->filled[i])
        c->h_ranges[n++] = i;
    if (n) {
      CU(cudaMemcpyAsync(c->d_ranges, c->h_ranges, n * sizeof(uint32_t), cudaMemcpyHostToDevice,
                         c->user),
         "copy the empty range list");
      const uint64_t elems = (uint64_t)n * m3_spec_vectors(&g->spec) * g->spec.head_dim;
      const unsigned grid = grid_for(elems, 256);
      if (a->es == 4)
        empty_kernel<uint32_t><<<grid, 256, 0, c->user>>>(*g, c->d_ranges, n,
                                                          (uint32_t *)a->round.kv, a->round.pos);
      else
        empty_kernel<uint16_t><<<grid, 256, 0, c->user>>>(*g, c->d_ranges, n,
                                                          (uint16_t *)a->round.kv, a->round.pos);
      CU(cudaGetLastError(), "empty-range kernel launch");
    }
  }
  CU(cudaEventRecord(c->ev_end, c->user), "record round end");
  c->ended = 1;
  if (c->user == NULL)
    CU(cudaEventSynchronize(c->ev_end), "wait for the round");
out:
  return rc;
}

static void cu_destroy(m3_attn *a) {
  cuda_impl *c = (cuda_impl *)a->impl;
  if (!c)
    return;
  cudaSetDevice(c->device);
  for (int i = 0; c->lanes && i < c->n_lanes; i++) {
    lane *ln = &c->lanes[i];
    if (ln->s)
      cudaStreamSynchronize(ln->s);
    if (ln->done)
      cudaEventDestroy(ln->done);
    if (ln->s)
      cudaStreamDestroy(ln->s);
    cudaFreeHost(ln->h_stage);
    cudaFree(ln->d_mem);
    cudaFree(ln->d_scratch);
  }
  if (c->ended)
    cudaEventSynchronize(c->ev_end);
  if (c->ev_begin)
    cudaEventDestroy(c->ev_begin);
  if (c->ev_end)
    cudaEventDestroy(c->ev_end);
  cudaFreeHost(c->h_ranges);
  cudaFree(c->d_ranges);
  m3_codec_cuda_destroy(c->dec);
  free(c->lanes);
  free(c);
  a->impl = NULL;
}

static const m3__attn_backend cuda_backend = {
    "cuda", 1, cu_begin, cu_place, cu_finish, cu_destroy,
};

extern "C" int m3_attn_create_cuda(const m3_codec_set *cs, const m3_attn_geom *g,
                                   const m3_attn_cuda_options *o, m3_attn **out) {
  m3_attn_cuda_options def;
  m3_attn *a = NULL;
  cuda_impl *c = NULL;
  int rc = 0, ndev = 0;
  m3_layout l;
  *out = NULL;
  if (!o) {
    m3_attn_cuda_options_init(&def);
    o = &def;
  }
  if (o->lanes < 1 || o->lanes > 64)
    return m3__seterr(M3_EINVAL, "attn cuda: lanes %d (1..64)", o->lanes);
  {
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess || ndev == 0)
      return m3__seterr(M3_EUNSUPPORTED, "attn cuda: no CUDA device (%s)",
                        e == cudaSuccess ? "device count 0" : cudaGetErrorString(e));
  }
  if ((rc = m3__attn_new(cs, g, &cuda_backend, &a)) != 0)
    return rc;
  c = (cuda_impl *)calloc(1, sizeof *c);
  if (!c || !(c->lanes = (lane *)calloc((size_t)o->lanes, sizeof(lane)))) {
    free(c);
    c = NULL;
    rc = m3__seterr(M3_ENOMEM, "attn cuda: out of memory");
    goto out;
  }
  a->impl = c;
  c->n_lanes = o->lanes;
  c->user = (cudaStream_t)o->stream;
  if (o->device >= 0)
    CU(cudaSetDevice(o->device), "cudaSetDevice");
  CU(cudaGetDevice(&c->device), "cudaGetDevice");
  if ((rc = m3_codec_cuda_create(cs, &c->dec)) != 0)
    goto out;
  m3_codec_set_layout(cs, &g->spec, &l); /* checked by m3__attn_new */
  c->pos_bytes = m3_layout_positions_bytes(&l);
  c->code_bytes = m3_layout_codes_bytes(&l);
  CU(cudaEventCreateWithFlags(&c->ev_begin, cudaEventDisableTiming), "cudaEventCreate");
  CU(cudaEventCreateWithFlags(&c->ev_end, cudaEventDisableTiming), "cudaEventCreate");
  CU(cudaHostAlloc((void **)&c->h_ranges, (size_t)g->n_queries * g->k * sizeof(uint32_t), 0),
     "cudaHostAlloc range list");
  CU(cudaMalloc((void **)&c->d_ranges, (size_t)g->n_queries * g->k * sizeof(uint32_t)),
     "cudaMalloc range list");
  for (int i = 0; i < c->n_lanes; i++) {
    lane *ln = &c->lanes[i];
    CU(cudaStreamCreateWithFlags(&ln->s, cudaStreamNonBlocking), "cudaStreamCreate");
    CU(cudaEventCreateWithFlags(&ln->done, cudaEventDisableTiming), "cudaEventCreate");
    CU(cudaHostAlloc((void **)&ln->h_stage, c->pos_bytes + c->code_bytes, 0),
       "cudaHostAlloc staging");
    CU(cudaMalloc((void **)&ln->d_mem, c->pos_bytes + c->code_bytes), "cudaMalloc codes");
    CU(cudaMalloc(&ln->d_scratch, m3_codec_decoded_size(&g->spec, g->dtype)),
       "cudaMalloc decode scratch");
  }
out:
  if (rc) {
    m3_attn_destroy(a);
    a = NULL;
  }
  *out = a;
  return rc;
}

/* ---- the memory attention reference ------------------------------------ */

#define REF_THREADS 128

/* One block per (query token t, head h): logits into scratch (S + C), the
 * block's max, exp and sums, then each thread sums its output components.
 * Same element functions and the same double arithmetic as m3_attn_ref;
 * only the order of the sums differs (block reductions). */
__global__ void ref_kernel(m3_attn_ref_args a, double *scratch) {
  extern __shared__ double sh[]; /* qc[D], qm[D], red[REF_THREADS] x 2 */
  const uint32_t H = a.n_heads, G = a.n_heads / a.n_kv_heads, D = a.head_dim, S = a.n_slots,
                 C = a.n_ctx;
  const uint32_t t = blockIdx.x / H, h = blockIdx.x % H, g = h / G, tid = threadIdx.x;
  double *qc = sh, *qm = sh + D, *red = sh + 2 * D, *red2 = red + REF_THREADS;
  const int64_t vis64 = (int64_t)C - a.n_q + t + 1;
  const uint32_t vis = vis64 < 0 ? 0 : (uint32_t)vis64;
  const double scale = 1.0 / sqrt((double)D);
  const float *q = a.q + ((size_t)t * H + h) * D;
  for (uint32_t j = tid; j < D / 2; j += blockDim.x) {
    m3__attn_rope_pair(q, (double)a.q_pos[t], j, D, a.rope_theta, qc);
    m3__attn_rope_pair(q, (double)a.q_pos[t] - a.mem_base, j, D, a.rope_theta, qm);
  }
  __syncthreads();
  double *lg = scratch + (size_t)blockIdx.x * (S + C);
  double mx = -INFINITY;
  for (uint32_t i = tid; i < S + vis; i += blockDim.x) {
    double l;
    if (i < S)
      l = a.mem_pos[(size_t)g * S + i] < 0
              ? -INFINITY
              : m3__attn_logit(qm, a.mem_k, ((size_t)g * S + i) * D, D, a.mem_dtype, scale);
    else
      l = m3__attn_logit(qc, a.ctx_k, ((size_t)g * C + (i - S)) * D, D, 1, scale);
    lg[i] = l;
    mx = l > mx ? l : mx;
  }
  red[tid] = mx;
  __syncthreads();
  for (uint32_t w = blockDim.x / 2; w > 0; w >>= 1) {
    if (tid < w && red[tid + w] > red[tid])
      red[tid] = red[tid + w];
    __syncthreads();
  }
  mx = red[0];
  __syncthreads();
  float *out = a.out + ((size_t)t * H + h) * D;
  if (mx == -INFINITY) {
    for (uint32_t d = tid; d < D; d += blockDim.x)
      out[d] = 0.0f;
    if (a.mem_weight && tid == 0)
      a.mem_weight[(size_t)t * H + h] = 0.0f;
    return;
  }
  double sum = 0, msum = 0;
  for (uint32_t i = tid; i < S + vis; i += blockDim.x) {
    double w = lg[i] == -INFINITY ? 0.0 : exp(lg[i] - mx);
    lg[i] = w;
    sum += w;
    if (i < S)
      msum += w;
  }
  red[tid] = sum;
  red2[tid] = msum;
  __syncthreads();
  for (uint32_t w = blockDim.x / 2; w > 0; w >>= 1) {
    if (tid < w) {
      red[tid] += red[tid + w];
      red2[tid] += red2[tid + w];
    }
    __syncthreads();
  }
  sum = red[0];
  msum = red2[0];
  for (uint32_t d = tid; d < D; d += blockDim.x) {
    double acc = 0;
    for (uint32_t i = 0; i < S; i++)
      if (lg[i] != 0.0)
        acc += lg[i] * (double)m3__attn_load(a.mem_v, ((size_t)g * S + i) * D + d, a.mem_dtype);
    for (uint32_t j = 0; j < vis; j++)
      acc += lg[S + j] * (double)a.ctx_v[((size_t)g * C + j) * D + d];
    out[d] = (float)(acc / sum);
  }
  if (a.mem_weight && tid == 0)
    a.mem_weight[(size_t)t * H + h] = (float)(msum / sum);
}

extern "C" int m3_attn_ref_cuda(const m3_attn_ref_args *a, void *stream) {
  int rc = m3__attn_ref_check(a), ndev = 0;
  double *scratch = NULL;
  if (rc)
    return rc;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0)
    return m3__seterr(M3_EUNSUPPORTED, "attn ref cuda: no CUDA device");
  if (a->n_q == 0)
    return 0;
  {
    const size_t blocks = (size_t)a->n_q * a->n_heads;
    const size_t smem = (2 * (size_t)a->head_dim + 2 * REF_THREADS) * sizeof(double);
    CU(cudaMallocAsync((void **)&scratch,
                       blocks * ((size_t)a->n_slots + a->n_ctx + 1) * sizeof(double),
                       (cudaStream_t)stream),
       "cudaMallocAsync scratch");
    ref_kernel<<<(unsigned)blocks, REF_THREADS, smem, (cudaStream_t)stream>>>(*a, scratch);
    CU(cudaGetLastError(), "reference kernel launch");
  }
out:
  if (scratch)
    cudaFreeAsync(scratch, (cudaStream_t)stream);
  return rc;
}
