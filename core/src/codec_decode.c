/*
 * The CPU decoder: codes of whole memories, as a record holds them, into a
 * caller's (layer, K|V, head, token, dim) tensor of f32/f16/bf16. The
 * workload is a retrieval round: 5 memories x 2,816 vectors per query, 32
 * queries, every 64 generated tokens; decode must keep up with PCIe. For
 * table codecs each vector is bias + ~10 table rows: the rows of the next
 * vector are prefetched while the current one is summed, and the sum runs a
 * row at a time so that it vectorizes. The element math (field unpacking,
 * addition order, conversions) is codec_math.h, shared with the CUDA kernel.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec_internal.h"
#include "m3/error.h"

size_t m3_dtype_size(int dtype) {
  switch (dtype) {
  case M3_DTYPE_F32: return 4;
  case M3_DTYPE_F16:
  case M3_DTYPE_BF16: return 2;
  default: return 0;
  }
}

size_t m3_codec_decoded_size(const m3_spec *spec, int dtype) {
  return m3_spec_vectors(spec) * spec->head_dim * m3_dtype_size(dtype);
}

/* Convert one f32 row into out (dtype) at element offset i0. */
static void store_row(void *out, size_t i0, const float *restrict acc, uint32_t dim, int dtype) {
  if (dtype == M3_DTYPE_F32) {
    memcpy((float *)out + i0, acc, 4 * (size_t)dim);
  } else if (dtype == M3_DTYPE_BF16) {
    uint16_t *restrict o = (uint16_t *)out + i0;
    for (uint32_t j = 0; j < dim; j++)
      o[j] = m3__f32_to_bf16(acc[j]);
  } else {
    uint16_t *restrict o = (uint16_t *)out + i0;
    for (uint32_t j = 0; j < dim; j++)
      o[j] = m3__f32_to_f16(acc[j]);
  }
}

static void prefetch_rows(const float *tables, const uint32_t *rows, uint32_t nf, uint32_t dim) {
  for (uint32_t f = 0; f < nf; f++) {
    const char *r = (const char *)(tables + (size_t)rows[f] * dim);
    for (uint32_t b = 0; b < 4 * dim; b += 64)
      __builtin_prefetch(r + b);
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define M3__CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define M3__CLONES
#endif

/* Sum one vector's rows into acc (dim), 16 components at a time so that the
 * partial sums stay in registers across all fields. The adds per component
 * run in m3__tdec_elem's order: bias, then the fields in order, so results
 * are bit-identical to the per-element function (and the CUDA kernel). */
static inline void sum_rows(float *restrict acc, const float *restrict bias,
                            const float *restrict tables, const uint32_t *restrict rows,
                            uint32_t nf, uint32_t dim) {
  uint32_t j0 = 0;
  for (; j0 + 16 <= dim; j0 += 16) {
    float a[16];
    for (int k = 0; k < 16; k++)
      a[k] = bias[j0 + k];
    for (uint32_t f = 0; f < nf; f++) {
      const float *restrict r = tables + (size_t)rows[f] * dim + j0;
      for (int k = 0; k < 16; k++)
        a[k] += r[k];
    }
    for (int k = 0; k < 16; k++)
      acc[j0 + k] = a[k];
  }
  for (uint32_t j = j0; j < dim; j++) {
    float a = bias[j];
    for (uint32_t f = 0; f < nf; f++)
      a += tables[(size_t)rows[f] * dim + j];
    acc[j] = a;
  }
}

/* Table decode of n codes. Codes are unpacked a chunk at a time so that the
 * rows of the vector PD ahead can be prefetched while the current one is
 * summed (big tables: the paper's coarse tables are 5 MB each, and a row
 * fetch from L3 or DRAM would otherwise stall every vector). Returns the
 * index of the first corrupt code, or n. */
#define M3__ROWS_CAP 4096
#define M3__PD 4
M3__CLONES
static size_t decode_tables(const m3__dcodec *c, const uint8_t *restrict codes, size_t n,
                            int dtype, void *out) {
  uint32_t rows[M3__ROWS_CAP];
  float acc_buf[M3_CODEC_MAX_DIM] __attribute__((aligned(64)));
  const uint32_t nf = c->n_fields, dim = c->dim, cb = c->code_bytes;
  /* software prefetch pays off only for tables beyond the L2 cache */
  const int big = (size_t)c->table_rows * dim * sizeof(float) > ((size_t)1 << 20);
  const size_t chunk = M3__ROWS_CAP / nf; /* >= 4: nf <= M3_CODEC_MAX_FIELDS */
  for (size_t i0 = 0; i0 < n; i0 += chunk) {
    const size_t m = n - i0 < chunk ? n - i0 : chunk;
    for (size_t k = 0; k < m; k++)
      if (m3__code_rows(codes + (i0 + k) * cb, cb, c->fields, nf, rows + k * nf))
        return i0 + k;
    if (big)
      for (size_t k = 0; k < m && k < M3__PD; k++)
        prefetch_rows(c->tables, rows + k * nf, nf, dim);
    for (size_t k = 0; k < m; k++) {
      const size_t i = i0 + k;
      if (big && k + M3__PD < m)
        prefetch_rows(c->tables, rows + (k + M3__PD) * nf, nf, dim);
      /* f32 output is summed in place; others go through acc_buf */
      float *acc = dtype == M3_DTYPE_F32 ? (float *)out + i * dim : acc_buf;
      sum_rows(acc, c->bias, c->tables, rows + k * nf, nf, dim);
      if (dtype != M3_DTYPE_F32)
        store_row(out, i * dim, acc, dim, dtype);
    }
  }
  return n;
}

static void decode_raw(const m3__dcodec *c, const uint8_t *codes, size_t n, int dtype,
                       void *out) {
  const uint32_t dim = c->dim;
  /* same element type: the codes are the little-endian elements */
  if ((c->kind == M3_CODEC_RAW_F32 && dtype == M3_DTYPE_F32) ||
      (c->kind == M3_CODEC_RAW_F16 && dtype == M3_DTYPE_F16) ||
      (c->kind == M3_CODEC_RAW_BF16 && dtype == M3_DTYPE_BF16)) {
    memcpy(out, codes, n * c->code_bytes);
    return;
  }
  float acc[M3_CODEC_MAX_DIM];
  for (size_t i = 0; i < n; i++) {
    for (uint32_t j = 0; j < dim; j++)
      acc[j] = m3__raw_load(codes + i * c->code_bytes, c->kind, j);
    store_row(out, i * dim, acc, dim, dtype);
  }
}

/* Decode n codes of codec index ci; base is the vector index of codes[0] in
 * the caller's batch, for messages. */
static int decode_block(const m3_codec_set *cs, int ci, const uint8_t *codes, size_t n,
                        int dtype, void *out, size_t base) {
  const m3__codec *c = &cs->codecs[ci];
  m3__dcodec d = m3__codec_dview(c);
  if (c->kind != M3_CODEC_FAISS) {
    decode_raw(&d, codes, n, dtype, out);
    return 0;
  }
  if (!(c->flags & M3_CODEC_HAS_TABLES))
    return m3__seterr(M3_EUNSUPPORTED, "codec set %s: codec %d (%s, '%s') has no decode tables: %s",
                      cs->name, ci, (ci & 1) ? "V" : "K", c->factory,
                      cs->no_tables + (size_t)ci * M3__NO_TABLES_CAP);
  size_t done = decode_tables(&d, codes, n, dtype, out);
  if (done != n)
    return m3__seterr(M3_ECORRUPT, "codec set %s: code of vector %zu holds a field value outside its decode table",
                      cs->name, base + done);
  return 0;
}

static int check_dtype(int dtype) {
  if (!m3_dtype_size(dtype))
    return m3__seterr(M3_EINVAL, "decode: unknown output dtype %d", dtype);
  return 0;
}

int m3_codec_decode_vectors(const m3_codec_set *cs, unsigned layer, int kv,
                            const uint8_t *codes, size_t n, int dtype, void *out) {
  int ci = m3__codec_index(cs, layer, kv);
  if (ci < 0)
    return m3__seterr(M3_EINVAL, "codec set %s: no codec for layer %u kv %d", cs->name, layer, kv);
  int rc = check_dtype(dtype);
  if (rc)
    return rc;
  return decode_block(cs, ci, codes, n, dtype, out, 0);
}

int m3_codec_decode(const m3_codec_set *cs, const m3_spec *spec, const uint8_t *codes,
                    size_t n_mem, int dtype, void *out) {
  int rc = check_dtype(dtype);
  m3_layout l;
  if (rc || (rc = m3_codec_set_layout(cs, spec, &l)) != 0)
    return rc;
  const size_t per_block = (size_t)spec->n_kv_heads * spec->n_tokens; /* vectors per (layer, kv) */
  const size_t esz = m3_dtype_size(dtype);
  const size_t cb = cs->code_bytes, dim = cs->head_dim;
  size_t v = 0;
  for (size_t m = 0; m < n_mem; m++)
    for (unsigned layer = 0; layer < spec->n_layers; layer++)
      for (int kv = 0; kv < 2; kv++, v += per_block) {
        int ci = m3__codec_index(cs, layer, kv);
        rc = decode_block(cs, ci, codes + v * cb, per_block, dtype,
                          (uint8_t *)out + v * dim * esz, v);
        if (rc)
          return rc;
      }
  return 0;
}

int m3_codec_decode_record(const m3_codec_set *cs, const m3_record *rec, int dtype, void *out,
                           size_t cap) {
  if (!rec->codes || rec->layout.codec_kind == M3_CODEC_NONE)
    return m3__seterr(M3_EINVAL, "decode: record of chunk %llu has no memory (tombstone)",
                      (unsigned long long)rec->chunk_id);
  int rc = m3_codec_set_check_layout(cs, &rec->layout);
  if (rc) {
    char why[384];
    snprintf(why, sizeof why, "%s", m3_errmsg());
    return m3__seterr(rc, "decode: record of chunk %llu: %s", (unsigned long long)rec->chunk_id,
                      why);
  }
  if ((rc = check_dtype(dtype)) != 0)
    return rc;
  size_t need = m3_codec_decoded_size(&rec->layout.spec, dtype);
  if (cap < need)
    return m3__seterr(M3_EINVAL, "decode: record of chunk %llu needs %zu output bytes, buffer has %zu",
                      (unsigned long long)rec->chunk_id, need, cap);
  return m3_codec_decode(cs, &rec->layout.spec, rec->codes, 1, dtype, out);
}
