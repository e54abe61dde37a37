/*
 * The CUDA decoder: codes of whole memories in device memory, laid out as in
 * a record (n_mem, layer, K|V, head, token, code_bytes), into a device tensor
 * (n_mem, layer, K|V, head, token, head_dim) of f32/f16/bf16. This is how a
 * worker keeps memories compressed (14 bytes a vector instead of 160 in bf16)
 * over the network and PCIe and expands them straight into its KV buffer.
 *
 * One warp decodes one vector at a time: its lanes unpack the code fields
 * into shared memory, then each lane sums its output components. All the
 * element math (field unpacking, addition order, conversions) is
 * codec_math.h, the functions the CPU decoder runs, so both give identical
 * bits; decode tables of all codecs of a set live in device memory (about
 * 13 MB per codec for the paper's quantizer, which fits in L2 on H100).
 */
#include <cuda_runtime.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* m3's C headers carry no extern "C" of their own */
extern "C" {
#include "../src/codec_internal.h"
#include "m3/error.h"
}

#define WARPS_PER_BLOCK 4

struct m3_codec_cuda {
  int device;
  uint32_t n_codecs;
  uint16_t n_layers;   /* 0: one K/V pair for all layers */
  uint16_t head_dim;
  uint16_t code_bytes;
  uint32_t max_fields;
  m3__dcodec *d_codecs; /* (n_codecs), device; pointers inside are device */
  void *d_blob;         /* fields, bias and tables of every codec */
};

static int cuda_err(cudaError_t e, const char *what) {
  int code = e == cudaErrorMemoryAllocation ? M3_ENOMEM
             : (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) ? M3_EUNSUPPORTED
             : M3_EINTERNAL;
  return m3__seterr(code, "cuda decode: %s: %s (%s)", what, cudaGetErrorString(e),
                    cudaGetErrorName(e));
}

/* Vector v of the batch -> index of its codec. */
__device__ __forceinline__ uint32_t codec_of(uint64_t v, uint32_t per_block, uint32_t n_layers,
                                             uint32_t per_layer) {
  uint64_t block = v / per_block;              /* (mem, layer, kv) */
  uint32_t kv = (uint32_t)(block & 1);
  uint32_t layer = (uint32_t)((block >> 1) % n_layers);
  return per_layer ? 2 * layer + kv : kv;
}

__global__ void m3__decode_kernel(const m3__dcodec *__restrict__ codecs, const uint8_t *codes,
                                  uint64_t n_vec, uint32_t per_block, uint32_t n_layers,
                                  uint32_t per_layer, uint32_t dim, uint32_t code_bytes,
                                  uint32_t max_fields, uint32_t dtype, void *out) {
  extern __shared__ uint32_t s_rows[]; /* (WARPS_PER_BLOCK, max_fields) */
  const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint32_t *rows = s_rows + (size_t)warp * max_fields;
  const uint64_t stride = (uint64_t)gridDim.x * WARPS_PER_BLOCK;
  for (uint64_t v = (uint64_t)blockIdx.x * WARPS_PER_BLOCK + warp; v < n_vec; v += stride) {
    const m3__dcodec c = codecs[codec_of(v, per_block, n_layers, per_layer)];
    const uint8_t *code = codes + v * code_bytes;
    if (c.n_fields == 0) { /* raw kinds */
      for (uint32_t j = lane; j < dim; j += 32)
        m3__store_elem(out, v * dim + j, m3__raw_load(code, c.kind, j), dtype);
      continue;
    }
    for (uint32_t f = lane; f < c.n_fields; f += 32)
      m3__code_rows(code, code_bytes, c.fields + f, 1, rows + f); /* clamps corrupt values */
    __syncwarp();
    for (uint32_t j = lane; j < dim; j += 32)
      m3__store_elem(out, v * dim + j, m3__tdec_elem(c.bias, c.tables, rows, c.n_fields, dim, j),
                     dtype);
    __syncwarp();
  }
}

extern "C" int m3_codec_cuda_create(const m3_codec_set *cs, m3_codec_cuda **out) {
  int rc = 0;
  cudaError_t e;
  m3_codec_cuda *g = NULL;
  uint8_t *host = NULL;
  m3__dcodec *hc = NULL;
  size_t total = 0;
  *out = NULL;
  int ndev = 0;
  if ((e = cudaGetDeviceCount(&ndev)) != cudaSuccess || ndev == 0) {
    rc = m3__seterr(M3_EUNSUPPORTED, "cuda decode: no CUDA device (%s)",
                    e == cudaSuccess ? "device count 0" : cudaGetErrorString(e));
    goto out;
  }
  g = (m3_codec_cuda *)calloc(1, sizeof *g);
  hc = (m3__dcodec *)calloc(cs->n_codecs, sizeof *hc);
  if (!g || !hc) {
    rc = m3__seterr(M3_ENOMEM, "cuda decode: out of memory");
    goto out;
  }
  cudaGetDevice(&g->device);
  g->n_codecs = cs->n_codecs;
  g->n_layers = cs->n_layers;
  g->head_dim = cs->head_dim;
  g->code_bytes = cs->code_bytes;
  /* one device blob: per codec fields, then bias + tables (16-byte aligned) */
  for (uint32_t i = 0; i < cs->n_codecs; i++) {
    const m3__codec *c = &cs->codecs[i];
    if (c->kind == M3_CODEC_FAISS && !(c->flags & M3_CODEC_HAS_TABLES)) {
      rc = m3__seterr(M3_EUNSUPPORTED, "cuda decode: codec set %s: codec %u ('%s') has no decode tables: %s",
                      cs->name, i, c->factory, cs->no_tables + (size_t)i * M3__NO_TABLES_CAP);
      goto out;
    }
    if (c->n_fields > g->max_fields)
      g->max_fields = c->n_fields;
    total += (16 * (size_t)c->n_fields + 15) & ~(size_t)15;
    if (c->n_fields)
      total += (4 * (size_t)c->dim * (c->table_rows + 1) + 15) & ~(size_t)15;
  }
  host = (uint8_t *)malloc(total ? total : 1);
  if (!host) {
    rc = m3__seterr(M3_ENOMEM, "cuda decode: out of memory for %zu bytes", total);
    goto out;
  }
  if ((e = cudaMalloc(&g->d_blob, total ? total : 16)) != cudaSuccess) {
    rc = cuda_err(e, "cudaMalloc tables");
    goto out;
  }
  {
    size_t off = 0;
    for (uint32_t i = 0; i < cs->n_codecs; i++) {
      const m3__codec *c = &cs->codecs[i];
      hc[i] = m3__codec_dview(c);
      if (!c->n_fields) {
        hc[i].fields = NULL;
        hc[i].bias = hc[i].tables = NULL;
        continue;
      }
      memcpy(host + off, c->fields, 16 * (size_t)c->n_fields);
      hc[i].fields = (const m3__codec_field *)((uint8_t *)g->d_blob + off);
      off += (16 * (size_t)c->n_fields + 15) & ~(size_t)15;
      size_t tb = 4 * (size_t)c->dim * (c->table_rows + 1);
      memcpy(host + off, c->bias, tb); /* bias and tables are adjacent in the file */
      hc[i].bias = (const float *)((uint8_t *)g->d_blob + off);
      hc[i].tables = hc[i].bias + c->dim;
      off += (tb + 15) & ~(size_t)15;
    }
  }
  if ((e = cudaMemcpy(g->d_blob, host, total, cudaMemcpyHostToDevice)) != cudaSuccess) {
    rc = cuda_err(e, "copy tables to device");
    goto out;
  }
  if ((e = cudaMalloc((void **)&g->d_codecs, cs->n_codecs * sizeof *hc)) != cudaSuccess) {
    rc = cuda_err(e, "cudaMalloc codecs");
    goto out;
  }
  if ((e = cudaMemcpy(g->d_codecs, hc, cs->n_codecs * sizeof *hc, cudaMemcpyHostToDevice)) !=
      cudaSuccess) {
    rc = cuda_err(e, "copy codecs to device");
    goto out;
  }
out:
  free(hc);
  free(host);
  if (rc) {
    m3_codec_cuda_destroy(g);
    g = NULL;
  }
  *out = g;
  return rc;
}

extern "C" void m3_codec_cuda_destroy(m3_codec_cuda *g) {
  if (!g)
    return;
  if (g->d_codecs)
    cudaFree(g->d_codecs);
  if (g->d_blob)
    cudaFree(g->d_blob);
  free(g);
}

extern "C" int m3_codec_cuda_decode(const m3_codec_cuda *g, const m3_spec *spec,
                                    const void *d_codes, size_t n_mem, int dtype, void *d_out,
                                    void *stream) {
  if (spec->head_dim != g->head_dim || (g->n_layers && spec->n_layers != g->n_layers))
    return m3__seterr(M3_ESHAPE, "cuda decode: memory shape %ux%ux%ux%u does not fit the codec set (head_dim %u, layers %u)",
                      spec->n_layers, spec->n_kv_heads, spec->n_tokens, spec->head_dim,
                      g->head_dim, g->n_layers);
  if (dtype != M3_DTYPE_F32 && dtype != M3_DTYPE_F16 && dtype != M3_DTYPE_BF16)
    return m3__seterr(M3_EINVAL, "cuda decode: unknown output dtype %d", dtype);
  const uint64_t n_vec = (uint64_t)n_mem * m3_spec_vectors(spec);
  if (n_vec == 0)
    return 0;
  const uint32_t per_block = (uint32_t)spec->n_kv_heads * spec->n_tokens;
  uint64_t blocks = (n_vec + WARPS_PER_BLOCK - 1) / WARPS_PER_BLOCK;
  if (blocks > 65535u * 16u)
    blocks = 65535u * 16u; /* grid-stride loop covers the rest */
  size_t smem = (size_t)WARPS_PER_BLOCK * (g->max_fields ? g->max_fields : 1) * sizeof(uint32_t);
  m3__decode_kernel<<<(unsigned)blocks, 32 * WARPS_PER_BLOCK, smem, (cudaStream_t)stream>>>(
      g->d_codecs, (const uint8_t *)d_codes, n_vec, per_block, spec->n_layers,
      g->n_layers ? 1u : 0u, g->head_dim, g->code_bytes, g->max_fields, (uint32_t)dtype, d_out);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    return cuda_err(e, "kernel launch");
  return 0;
}
