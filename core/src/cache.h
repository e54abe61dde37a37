/*
 * The hot-memory cache: verified memory records kept in RAM under a byte
 * budget, least recently used out first. Adjacent chunks of a generation
 * retrieve the same references, so a small cache absorbs much of the load.
 * Private to core/. Thread-safe: one mutex guards it (a hit is a lookup and
 * one memcpy, so the critical section is short).
 */
#ifndef M3_CACHE_H
#define M3_CACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct m3_cache m3_cache;

/* A cache holding at most budget bytes of records. *out is freed with
 * m3__cache_destroy(). */
int m3__cache_create(size_t budget, m3_cache **out);
void m3__cache_destroy(m3_cache *c);

/* Copy the cached record of id into dst (cap bytes) and mark it recently
 * used. Returns its length, or 0 when absent (or larger than cap). */
size_t m3__cache_get(m3_cache *c, uint64_t id, void *dst, size_t cap);

/* Insert a copy of len bytes for id (replacing any), evicting as needed.
 * Records larger than the budget are not cached. */
void m3__cache_put(m3_cache *c, uint64_t id, const void *data, size_t len);

/* Forget id (after a put or delete changed it). */
void m3__cache_drop(m3_cache *c, uint64_t id);

typedef struct m3_cache_stats {
  uint64_t hits, misses, entries, bytes;
} m3_cache_stats;

void m3__cache_stats(m3_cache *c, m3_cache_stats *st);

#endif /* M3_CACHE_H */
