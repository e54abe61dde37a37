/* LRU cache of memory records under a byte budget; see cache.h.
 * A chained hash table finds entries; a doubly linked list orders them by
 * use, most recent at the head. */
#include "cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "m3/error.h"

typedef struct entry {
  uint64_t id;
  size_t len;
  struct entry *hnext;            /* hash chain */
  struct entry *prev, *next;      /* LRU list */
  unsigned char data[];
} entry;

struct m3_cache {
  pthread_mutex_t lock; /* fetches on several threads share the cache */
  size_t budget, bytes;
  size_t nbuckets, count;
  entry **buckets;
  entry *head, *tail;
  uint64_t hits, misses;
};

static size_t bucket_of(const m3_cache *c, uint64_t id) {
  /* Fibonacci hashing spreads sequential chunk ids. */
  return (size_t)((id * 0x9E3779B97F4A7C15ull) >> 32) & (c->nbuckets - 1);
}

int m3__cache_create(size_t budget, m3_cache **out) {
  m3_cache *c = calloc(1, sizeof *c);
  if (c == NULL) return m3__seterr(M3_ENOMEM, "cache: out of memory");
  pthread_mutex_init(&c->lock, NULL);
  c->budget = budget;
  c->nbuckets = 1024;
  c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
  if (c->buckets == NULL) {
    free(c);
    return m3__seterr(M3_ENOMEM, "cache: out of memory");
  }
  *out = c;
  return 0;
}

void m3__cache_destroy(m3_cache *c) {
  if (c == NULL) return;
  for (entry *e = c->head, *n; e; e = n) {
    n = e->next;
    free(e);
  }
  free(c->buckets);
  pthread_mutex_destroy(&c->lock);
  free(c);
}

static void lru_unlink(m3_cache *c, entry *e) {
  if (e->prev) e->prev->next = e->next; else c->head = e->next;
  if (e->next) e->next->prev = e->prev; else c->tail = e->prev;
  e->prev = e->next = NULL;
}

static void lru_push_front(m3_cache *c, entry *e) {
  e->prev = NULL;
  e->next = c->head;
  if (c->head) c->head->prev = e;
  c->head = e;
  if (c->tail == NULL) c->tail = e;
}

static entry **find_slot(m3_cache *c, uint64_t id) {
  entry **p = &c->buckets[bucket_of(c, id)];
  while (*p && (*p)->id != id) p = &(*p)->hnext;
  return p;
}

static void remove_entry(m3_cache *c, entry **slot) {
  entry *e = *slot;
  *slot = e->hnext;
  lru_unlink(c, e);
  c->bytes -= e->len;
  c->count--;
  free(e);
}

static void grow(m3_cache *c) {
  size_t n = c->nbuckets * 2;
  entry **b = calloc(n, sizeof *b);
  if (b == NULL) return; /* keep the longer chains; still correct */
  entry **old = c->buckets;
  size_t oldn = c->nbuckets;
  c->buckets = b;
  c->nbuckets = n;
  for (size_t i = 0; i < oldn; i++) {
    for (entry *e = old[i], *nx; e; e = nx) {
      nx = e->hnext;
      size_t k = bucket_of(c, e->id);
      e->hnext = b[k];
      b[k] = e;
    }
  }
  free(old);
}

size_t m3__cache_get(m3_cache *c, uint64_t id, void *dst, size_t cap) {
  pthread_mutex_lock(&c->lock);
  entry *e = *find_slot(c, id);
  size_t len = 0;
  if (e == NULL || e->len > cap) {
    c->misses++;
  } else {
    c->hits++;
    lru_unlink(c, e);
    lru_push_front(c, e);
    memcpy(dst, e->data, e->len);
    len = e->len;
  }
  pthread_mutex_unlock(&c->lock);
  return len;
}

static void put_locked(m3_cache *c, uint64_t id, const void *data, size_t len);

void m3__cache_put(m3_cache *c, uint64_t id, const void *data, size_t len) {
  pthread_mutex_lock(&c->lock);
  put_locked(c, id, data, len);
  pthread_mutex_unlock(&c->lock);
}

static void put_locked(m3_cache *c, uint64_t id, const void *data, size_t len) {
  if (len > c->budget) return;
  entry **slot = find_slot(c, id);
  if (*slot) remove_entry(c, slot);
  while (c->bytes + len > c->budget && c->tail)
    remove_entry(c, find_slot(c, c->tail->id));
  entry *e = malloc(sizeof *e + len);
  if (e == NULL) return; /* a cache that cannot grow just misses */
  e->id = id;
  e->len = len;
  memcpy(e->data, data, len);
  slot = find_slot(c, id);
  e->hnext = NULL;
  *slot = e;
  lru_push_front(c, e);
  c->bytes += len;
  if (++c->count > c->nbuckets) grow(c);
}

void m3__cache_drop(m3_cache *c, uint64_t id) {
  pthread_mutex_lock(&c->lock);
  entry **slot = find_slot(c, id);
  if (*slot) remove_entry(c, slot);
  pthread_mutex_unlock(&c->lock);
}

void m3__cache_stats(m3_cache *c, m3_cache_stats *st) {
  pthread_mutex_lock(&c->lock);
  st->hits = c->hits;
  st->misses = c->misses;
  st->entries = c->count;
  st->bytes = c->bytes;
  pthread_mutex_unlock(&c->lock);
}
