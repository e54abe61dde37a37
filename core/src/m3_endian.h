/* Little-endian loads and stores for on-disk and on-wire formats. Private to
 * core/. memcpy keeps them free of alignment and aliasing traps; compilers
 * turn them into single moves on little-endian machines. */
#ifndef M3_ENDIAN_H
#define M3_ENDIAN_H

#include <stdint.h>
#include <string.h>

static inline uint16_t m3__ld16(const void *p) {
  const uint8_t *b = p;
  return (uint16_t)(b[0] | b[1] << 8);
}
static inline uint32_t m3__ld32(const void *p) {
  const uint8_t *b = p;
  return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}
static inline uint64_t m3__ld64(const void *p) {
  const uint8_t *b = p;
  return (uint64_t)m3__ld32(b) | (uint64_t)m3__ld32(b + 4) << 32;
}
static inline void m3__st16(void *p, uint16_t v) {
  uint8_t *b = p;
  b[0] = (uint8_t)v;
  b[1] = (uint8_t)(v >> 8);
}
static inline void m3__st32(void *p, uint32_t v) {
  uint8_t *b = p;
  b[0] = (uint8_t)v;
  b[1] = (uint8_t)(v >> 8);
  b[2] = (uint8_t)(v >> 16);
  b[3] = (uint8_t)(v >> 24);
}
static inline void m3__st64(void *p, uint64_t v) {
  m3__st32(p, (uint32_t)v);
  m3__st32((uint8_t *)p + 4, (uint32_t)(v >> 32));
}

#endif /* M3_ENDIAN_H */
