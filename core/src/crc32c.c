/* CRC32C over ISA-L. ISA-L's crc32_iscsi takes and returns the raw register
 * (no final inversion) and an int length; m3_crc32c speaks the standard,
 * chainable form for any size. */
#include "m3/crc32c.h"

#include <pthread.h>
#include <string.h>

#include <isa-l/crc.h>

#ifndef SHORT_CRC
#define SHORT_CRC 1024
#endif

/* Short buffers (record headers, small records) with the SSE4.2 crc32
 * instruction: ISA-L's folding kernels use 512-bit registers, whose set-up
 * costs more than the work below a few KiB. */
#if defined(__x86_64__)
#include <nmmintrin.h>
__attribute__((target("sse4.2"))) static uint32_t crc_short(uint32_t reg, const unsigned char *p,
                                                            size_t len) {
  uint64_t r = reg;
  for (; len >= 8; p += 8, len -= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    r = _mm_crc32_u64(r, v);
  }
  uint32_t r32 = (uint32_t)r;
  for (; len > 0; p++, len--) r32 = _mm_crc32_u8(r32, *p);
  return r32;
}
#endif

uint32_t m3_crc32c(uint32_t crc, const void *buf, size_t len) {
  const unsigned char *p = buf;
  uint32_t reg = ~crc;
#if defined(__x86_64__)
  if (len < SHORT_CRC && __builtin_cpu_supports("sse4.2")) return ~crc_short(reg, p, len);
#endif
  while (len > 0) {
    int n = len > (1u << 30) ? (1 << 30) : (int)len;
    reg = crc32_iscsi((unsigned char *)p, n, reg);
    p += n;
    len -= (size_t)n;
  }
  return ~reg;
}

uint32_t m3_crc32c_copy(uint32_t crc, void *dst, const void *src, size_t len) {
  enum { BLOCK = 8192 }; /* well inside L1 and L2 */
  unsigned char *d = dst;
  const unsigned char *s = src;
  while (len > 0) {
    size_t n = len < BLOCK ? len : BLOCK;
    crc = m3_crc32c(crc, s, n);
    memcpy(d, s, n);
    d += n;
    s += n;
    len -= n;
  }
  return crc;
}

/* ---- combine (after zlib's crc32.c: multiplication in GF(2)[x] modulo the
 * reflected Castagnoli polynomial) -------------------------------------- */

#define POLY 0x82F63B78u /* CRC32C, reflected */

/* a * b mod p, both reflected polynomials. */
static uint32_t multmodp(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = b & 1 ? (b >> 1) ^ POLY : b >> 1;
  }
  return p;
}

static uint32_t x2n_table[32]; /* x^(2^k) mod p */
static pthread_once_t x2n_once = PTHREAD_ONCE_INIT;

static void x2n_init(void) {
  uint32_t p = 1u << 30; /* x^1 */
  x2n_table[0] = p;
  for (int k = 1; k < 32; k++) x2n_table[k] = p = multmodp(p, p);
}

uint32_t m3_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
  pthread_once(&x2n_once, x2n_init);
  /* x^(8 * len_b) mod p, from the squares table. */
  uint32_t p = 1u << 31; /* x^0 */
  unsigned k = 3;        /* 2^3 = 8 bits a byte */
  for (uint64_t n = len_b; n; n >>= 1, k++)
    if (n & 1) p = multmodp(x2n_table[k & 31], p);
  return multmodp(p, crc_a) ^ crc_b;
}
