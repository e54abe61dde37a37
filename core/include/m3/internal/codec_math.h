/*
 * Per-element math of the codec decoders, shared by the CPU decoder
 * (codec_decode.c) and the CUDA kernel (core/cuda/codec_decode.cu): field
 * unpacking in FAISS's bit order, the table sum in one fixed order, and the
 * f32 <-> f16 / bf16 conversions. Both paths call these very functions, so the
 * CPU unit tests cover the GPU's arithmetic and both produce identical bits.
 * Internal-but-shared (core/include/m3/internal/README.md): core/ and the
 * worker's attention buffers (worker/src/attn_math.h) include it; not
 * installed. Plain C99 that nvcc also compiles as CUDA C++.
 */
#ifndef M3_CODEC_MATH_H
#define M3_CODEC_MATH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define M3_HD static __host__ __device__ __forceinline__
#else
#define M3_HD static inline
#endif

/* One field of a code: nbits bits at bit bit_off; values 0..count-1 select
 * table rows row0..row0+count-1. Same layout as in the codec file. */
typedef struct m3__codec_field {
  uint32_t bit_off;
  uint32_t nbits; /* 1..24 */
  uint32_t count; /* 1..2^nbits */
  uint32_t row0;
} m3__codec_field;

/* What a decoder needs of one codec (host or device pointers). */
typedef struct m3__dcodec {
  uint32_t kind;       /* m3_codec_kind */
  uint32_t dim;
  uint32_t code_bytes;
  uint32_t n_fields;   /* 0 for raw kinds */
  uint32_t table_rows;
  const m3__codec_field *fields; /* (n_fields) */
  const float *bias;   /* (dim) */
  const float *tables; /* (table_rows, dim) */
} m3__dcodec;

M3_HD uint32_t m3__f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
#endif
}

M3_HD float m3__bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, 4);
  return f;
#endif
}

/*
 * nbits (1..24) bits of code starting at bit bit_off; bit k of the code is
 * bit (k & 7) of byte k >> 3, and the field's lowest bit comes first. This is
 * the order of FAISS's PQEncoderGeneric / BitstringWriter, and of the
 * little-endian list numbers of Level1Quantizer::encode_listno.
 */
M3_HD uint32_t m3__code_bits(const uint8_t *code, uint32_t bit_off, uint32_t nbits) {
  const uint8_t *p = code + (bit_off >> 3);
  uint32_t sh = bit_off & 7;
  uint32_t nbytes = (sh + nbits + 7) >> 3; /* <= 4 since sh <= 7, nbits <= 24 */
  uint32_t v = 0;
  for (uint32_t k = 0; k < nbytes; k++)
    v |= (uint32_t)p[k] << (8 * k);
  return (v >> sh) & ((1u << nbits) - 1u);
}

/* m3__code_bits for a code of code_bytes bytes: one 4-byte load when the
 * field's word lies inside the code (the common case), else byte by byte. */
M3_HD uint32_t m3__code_bits_in(const uint8_t *code, uint32_t code_bytes, uint32_t bit_off,
                                uint32_t nbits) {
  uint32_t byte = bit_off >> 3;
  if (byte + 4 <= code_bytes) {
    const uint8_t *p = code + byte;
    uint32_t v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
    return (v >> (bit_off & 7)) & ((1u << nbits) - 1u);
  }
  return m3__code_bits(code, bit_off, nbits);
}

/* Inverse of m3__code_bits: OR value's nbits bits into code (the bits must be
 * zero). Used to build check codes the way FAISS packs them. */
M3_HD void m3__code_put(uint8_t *code, uint32_t bit_off, uint32_t nbits, uint32_t value) {
  for (uint32_t i = 0; i < nbits; i++) {
    uint32_t k = bit_off + i;
    code[k >> 3] |= (uint8_t)(((value >> i) & 1u) << (k & 7));
  }
}

/*
 * Table rows selected by one code: rows[f] = row0_f + field_f(code). A value
 * outside its field's count is clamped (so nothing reads past the tables)
 * and makes the return value non-zero.
 */
M3_HD int m3__code_rows(const uint8_t *code, uint32_t code_bytes, const m3__codec_field *fields,
                        uint32_t n_fields, uint32_t *rows) {
  int bad = 0;
  for (uint32_t f = 0; f < n_fields; f++) {
    uint32_t v = m3__code_bits_in(code, code_bytes, fields[f].bit_off, fields[f].nbits);
    if (v >= fields[f].count) {
      bad = 1;
      v = fields[f].count - 1;
    }
    rows[f] = fields[f].row0 + v;
  }
  return bad;
}

/* Component j of a table decode: bias first, then the fields in order. The CPU
 * decoder's row-at-a-time loop adds in exactly this order. */
M3_HD float m3__tdec_elem(const float *bias, const float *tables, const uint32_t *rows,
                          uint32_t n_fields, uint32_t dim, uint32_t j) {
  float acc = bias[j];
  for (uint32_t f = 0; f < n_fields; f++)
    acc += tables[(size_t)rows[f] * dim + j];
  return acc;
}

/* f32 -> bf16, round to nearest even; NaN stays a (quiet) NaN. */
M3_HD uint16_t m3__f32_to_bf16(float f) {
  uint32_t u = m3__f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return (uint16_t)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

M3_HD float m3__bf16_to_f32(uint16_t h) {
  return m3__bits_f32((uint32_t)h << 16);
}

/* f32 -> IEEE binary16, round to nearest even, with subnormals, overflow to
 * infinity and quiet NaN (F. Giesen's float_to_half_fast3_rtne). */
M3_HD uint16_t m3__f32_to_f16(float f) {
  uint32_t u = m3__f32_bits(f);
  uint32_t sign = u & 0x80000000u;
  uint32_t o;
  u ^= sign;
  if (u >= 0x47800000u) {              /* >= 65536.0f: inf, or NaN */
    o = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (u < 0x38800000u) {        /* < 2^-14: subnormal half or zero */
    /* adding 0.5f aligns the half's subnormal bits at the float's bottom;
     * the float add rounds to nearest even */
    float t = m3__bits_f32(u) + 0.5f;
    o = m3__f32_bits(t) - 0x3f000000u;
  } else {
    uint32_t mant_odd = (u >> 13) & 1u;
    u += 0xc8000fffu;                  /* rebias exponent (-112 << 23), + 0xfff */
    u += mant_odd;
    o = u >> 13;
  }
  return (uint16_t)(o | (sign >> 16));
}

M3_HD float m3__f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) /* zero or subnormal: m * 2^-24, exact in f32 */
    return m3__bits_f32(m3__f32_bits((float)m * 5.9604644775390625e-8f) | sign);
  if (e == 31)
    return m3__bits_f32(sign | 0x7f800000u | (m << 13));
  return m3__bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

/* Element i of a raw code (f32/f16/bf16 little-endian) as f32. */
M3_HD float m3__raw_load(const uint8_t *code, uint32_t kind, uint32_t i) {
  if (kind == 1u) { /* M3_CODEC_RAW_F32 */
    const uint8_t *p = code + 4 * (size_t)i;
    return m3__bits_f32((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                        (uint32_t)p[3] << 24);
  }
  const uint8_t *p = code + 2 * (size_t)i;
  uint16_t h = (uint16_t)(p[0] | p[1] << 8);
  return kind == 2u ? m3__f16_to_f32(h) : m3__bf16_to_f32(h);
}

/* Store v as element i of out, dtype M3_DTYPE_F32 (1) / F16 (2) / BF16 (3). */
M3_HD void m3__store_elem(void *out, size_t i, float v, uint32_t dtype) {
  if (dtype == 1u)
    ((float *)out)[i] = v;
  else if (dtype == 2u)
    ((uint16_t *)out)[i] = m3__f32_to_f16(v);
  else
    ((uint16_t *)out)[i] = m3__f32_to_bf16(v);
}

#endif /* M3_CODEC_MATH_H */
