/*
 * Per-element math of the attention buffers and the memory attention
 * reference, shared by the CPU code (attn.c, attn_ref.c) and the CUDA
 * kernels (worker/cuda/attn_cuda.cu): where an element goes, how an empty
 * token is written, element loads in f32/f16/bf16 (the codec's own
 * conversions, m3/internal/codec_math.h), the rotary turn and the dot
 * product. Both paths call these very functions, so the CPU tests cover the
 * GPU's arithmetic. Private to worker/. Plain C that nvcc also compiles as
 * CUDA C++.
 */
#ifndef M3_ATTN_MATH_H
#define M3_ATTN_MATH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "m3/internal/codec_math.h" /* M3_HD, f16/bf16 <-> f32 */
#include "m3/attn.h"

/* Record position i (little-endian u16). Byte loads: a record inside a
 * receive buffer may sit at any address, so its positions may be unaligned. */
M3_HD uint16_t m3__attn_rpos(const void *positions, size_t i) {
  const uint8_t *p = (const uint8_t *)positions + 2 * i;
  return (uint16_t)(p[0] | (uint16_t)p[1] << 8);
}

/* Position written to the buffer for a record position. */
M3_HD int32_t m3__attn_pos_out(uint16_t p) {
  return p == M3_ATTN_POS_NONE ? M3_ATTN_POS_EMPTY : (int32_t)p;
}

/* Element offset of vector (q, l, kv, h, slot) (same as m3_attn_kv_offset,
 * callable on the device). */
M3_HD size_t m3__attn_kv_off(const m3_attn_geom *g, uint32_t q, uint32_t l, uint32_t kv,
                             uint32_t h, uint32_t slot) {
  return (size_t)q * g->kv_query_stride + (size_t)l * g->kv_layer_stride +
         (size_t)kv * g->kv_kv_stride +
         ((size_t)h * g->k * g->spec.n_tokens + slot) * g->spec.head_dim;
}

M3_HD size_t m3__attn_pos_off(const m3_attn_geom *g, uint32_t q, uint32_t l, uint32_t h,
                              uint32_t slot) {
  return (size_t)q * g->pos_query_stride + (size_t)l * g->pos_layer_stride +
         (size_t)h * g->k * g->spec.n_tokens + slot;
}

/* Element i of a buffer of dtype (M3_DTYPE_F32 1 / F16 2 / BF16 3) as f32. */
M3_HD float m3__attn_load(const void *p, size_t i, int dtype) {
  if (dtype == 1)
    return ((const float *)p)[i];
  uint16_t h = ((const uint16_t *)p)[i];
  return dtype == 2 ? m3__f16_to_f32(h) : m3__bf16_to_f32(h);
}

/* Rotary angle of pair j at position pos: pos * theta^(-2j/D), in double
 * (the encoder's table, encoder/src/model.c m3__rope_table, is this angle). */
M3_HD double m3__attn_rope_angle(double pos, uint32_t j, uint32_t dim, double theta) {
  return pos * pow(theta, -2.0 * (double)j / (double)dim);
}

/* Pair j of out = R(pos) x, rotate_half (pairs (j, j + D/2)), in double. */
M3_HD void m3__attn_rope_pair(const float *x, double pos, uint32_t j, uint32_t dim,
                              double theta, double *out) {
  const uint32_t half = dim / 2;
  const double a = m3__attn_rope_angle(pos, j, dim, theta);
  const double c = cos(a), s = sin(a), x0 = x[j], x1 = x[j + half];
  out[j] = x0 * c - x1 * s;
  out[j + half] = x1 * c + x0 * s;
}

/* out = R(pos) x. */
M3_HD void m3__attn_rope(const float *x, double pos, uint32_t dim, double theta, double *out) {
  for (uint32_t j = 0; j < dim / 2; j++)
    m3__attn_rope_pair(x, pos, j, dim, theta, out);
}

/* (qr . key) * scale, key element i0..i0+dim-1 of a buffer of dtype. */
M3_HD double m3__attn_logit(const double *qr, const void *keys, size_t i0, uint32_t dim,
                            int dtype, double scale) {
  double acc = 0;
  for (uint32_t d = 0; d < dim; d++)
    acc += qr[d] * (double)m3__attn_load(keys, i0 + d, dtype);
  return acc * scale;
}

#endif /* M3_ATTN_MATH_H */
