/*
 * Byte trie over vocabulary pieces. Built once at load (tens of thousands of
 * keys, a few hundred thousand nodes at most), then read-only and walked
 * byte by byte by the encoders: Viterbi walks every prefix from each
 * position, BPE looks up the concatenation of two neighbours.
 */
#include <stdlib.h>
#include <string.h>

#include "m3/error.h"
#include "m3/internal/hash.h"
#include "tok_int.h"

static inline uint64_t edge_key(uint32_t node, uint8_t byte) {
  return (((uint64_t)node << 8) | byte) + 1;
}

void m3__trie_init(m3__trie *t) { memset(t, 0, sizeof(*t)); }

void m3__trie_free(m3__trie *t) {
  if (!t)
    return;
  free(t->value);
  free(t->ekey);
  free(t->echild);
  memset(t, 0, sizeof(*t));
}

static int grow_edges(m3__trie *t) {
  uint32_t ncap = t->cap_edges ? t->cap_edges * 2 : 1024;
  uint64_t *k = calloc(ncap, sizeof(*k));
  uint32_t *c = malloc((size_t)ncap * sizeof(*c));
  if (!k || !c) {
    free(k);
    free(c);
    return M3_ENOMEM;
  }
  for (uint32_t i = 0; i < t->cap_edges; i++) {
    if (!t->ekey[i])
      continue;
    uint32_t h = (uint32_t)m3__fmix64(t->ekey[i]) & (ncap - 1);
    while (k[h])
      h = (h + 1) & (ncap - 1);
    k[h] = t->ekey[i];
    c[h] = t->echild[i];
  }
  free(t->ekey);
  free(t->echild);
  t->ekey = k;
  t->echild = c;
  t->cap_edges = ncap;
  return 0;
}

static int new_node(m3__trie *t, uint32_t *id) {
  if (t->n_nodes == t->cap_nodes) {
    uint32_t ncap = t->cap_nodes ? t->cap_nodes * 2 : 256;
    int32_t *v = realloc(t->value, (size_t)ncap * sizeof(*v));
    if (!v)
      return M3_ENOMEM;
    t->value = v;
    t->cap_nodes = ncap;
  }
  t->value[t->n_nodes] = -1;
  *id = t->n_nodes++;
  return 0;
}

int32_t m3__trie_step(const m3__trie *t, uint32_t node, uint8_t byte) {
  if (!t->cap_edges)
    return -1;
  uint64_t key = edge_key(node, byte);
  uint32_t mask = t->cap_edges - 1;
  uint32_t h = (uint32_t)m3__fmix64(key) & mask;
  for (;;) {
    uint64_t k = t->ekey[h];
    if (k == key)
      return (int32_t)t->echild[h];
    if (!k)
      return -1;
    h = (h + 1) & mask;
  }
}

int m3__trie_insert(m3__trie *t, const char *key, size_t len, int32_t value,
                    int32_t *prev) {
  int rc;
  uint32_t node;
  if (t->n_nodes == 0 && (rc = new_node(t, &node)) != 0)
    return rc;
  node = 0;
  for (size_t i = 0; i < len; i++) {
    uint8_t b = (uint8_t)key[i];
    int32_t c = m3__trie_step(t, node, b);
    if (c >= 0) {
      node = (uint32_t)c;
      continue;
    }
    /* keep the load factor at most 1/2 */
    if ((t->n_edges + 1) * 2 > t->cap_edges && (rc = grow_edges(t)) != 0)
      return rc;
    uint32_t child;
    if ((rc = new_node(t, &child)) != 0)
      return rc;
    uint64_t k = edge_key(node, b);
    uint32_t mask = t->cap_edges - 1;
    uint32_t h = (uint32_t)m3__fmix64(k) & mask;
    while (t->ekey[h])
      h = (h + 1) & mask;
    t->ekey[h] = k;
    t->echild[h] = child;
    t->n_edges++;
    node = child;
  }
  if (prev)
    *prev = t->value[node];
  t->value[node] = value;
  return 0;
}

int32_t m3__trie_get(const m3__trie *t, const char *key, size_t len) {
  if (!t->n_nodes)
    return -1;
  uint32_t node = 0;
  for (size_t i = 0; i < len; i++) {
    int32_t c = m3__trie_step(t, node, (uint8_t)key[i]);
    if (c < 0)
      return -1;
    node = (uint32_t)c;
  }
  return t->value[node];
}

size_t m3__trie_longest(const m3__trie *t, const char *s, size_t len,
                        int32_t *value) {
  size_t best = 0;
  *value = -1;
  if (!t->n_nodes)
    return 0;
  uint32_t node = 0;
  for (size_t i = 0; i < len; i++) {
    int32_t c = m3__trie_step(t, node, (uint8_t)s[i]);
    if (c < 0)
      break;
    node = (uint32_t)c;
    if (t->value[node] >= 0) {
      best = i + 1;
      *value = t->value[node];
    }
  }
  return best;
}
