/*
 * The small hashes m3 uses in more than one place: FNV-1a 64 over bytes and
 * MurmurHash3's 64-bit finalizer (fmix64). Their outputs are part of
 * formats (the hash embedder, m3/embed.h; m3-encode's chunk ids,
 * docs/ENCODER.md), so they never change. Internal-but-shared
 * (core/include/m3/internal/README.md); header-only.
 */
#ifndef M3_INTERNAL_HASH_H
#define M3_INTERNAL_HASH_H

#include <stddef.h>
#include <stdint.h>

#define M3__FNV1A64_INIT 0xcbf29ce484222325ull
#define M3__FNV1A64_PRIME 0x100000001b3ull

/* FNV-1a 64 of p[0..n), continuing from h (M3__FNV1A64_INIT to start). */
static inline uint64_t m3__fnv1a64_add(uint64_t h, const void *p, size_t n) {
  const uint8_t *b = (const uint8_t *)p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * M3__FNV1A64_PRIME;
  return h;
}

static inline uint64_t m3__fnv1a64(const void *p, size_t n) {
  return m3__fnv1a64_add(M3__FNV1A64_INIT, p, n);
}

/* MurmurHash3's fmix64: every input bit reaches every output bit. */
static inline uint64_t m3__fmix64(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

#endif /* M3_INTERNAL_HASH_H */
