/*
 * The vocabulary model every tokenizer format fills and every algorithm
 * reads (m3__tok_model in tok_int.h): allocation, reference counting,
 * pieces, byte-fallback pieces, id lookup, and the scratch-growing helper.
 * The bottom of the tokenizer's files with tok_trie.c: it calls nothing
 * above it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "m3/error.h"
#include "tok_int.h"

int m3__tok_reserve(void **buf, size_t *cap, size_t need) {
  if (need <= *cap)
    return 0;
  size_t ncap = *cap ? *cap : 256;
  while (ncap < need)
    ncap *= 2;
  void *p = realloc(*buf, ncap);
  if (!p)
    return m3__seterr(M3_ENOMEM, "tokenizer: scratch of %zu bytes", ncap);
  *buf = p;
  *cap = ncap;
  return 0;
}

m3__tok_model *m3__tok_model_new(const char *path) {
  m3__tok_model *m = calloc(1, sizeof(*m));
  if (!m)
    return NULL;
  atomic_init(&m->refs, 1);
  m->path = strdup(path);
  if (!m->path) {
    free(m);
    return NULL;
  }
  m3__trie_init(&m->pieces);
  m3__trie_init(&m->reserved);
  m3__trie_init(&m->user);
  for (int i = 0; i < 256; i++)
    m->byte_id[i] = -1;
  m->unk = m->bos = m->eos = m->pad = -1;
  return m;
}

void m3__tok_model_unref(m3__tok_model *m) {
  if (!m || atomic_fetch_sub(&m->refs, 1) != 1)
    return;
  free(m->path);
  free(m->piece);
  free(m->piece_len);
  free(m->score);
  free(m->type);
  free(m->pool);
  m3__trie_free(&m->pieces);
  m3__trie_free(&m->reserved);
  m3__trie_free(&m->user);
  free(m->cm_units);
  free(m->cm_norm);
  free(m->merges);
  free(m);
}

int m3__tok_model_alloc(m3__tok_model *m, uint32_t n, size_t pool_bytes) {
  m->n_pieces = n;
  m->piece = calloc(n ? n : 1, sizeof(*m->piece));
  m->piece_len = calloc(n ? n : 1, sizeof(*m->piece_len));
  m->score = calloc(n ? n : 1, sizeof(*m->score));
  m->type = calloc(n ? n : 1, sizeof(*m->type));
  m->pool = malloc(pool_bytes + n + 1);
  if (!m->piece || !m->piece_len || !m->score || !m->type || !m->pool)
    return m3__seterr(M3_ENOMEM, "%s: vocabulary of %u pieces", m->path, n);
  return 0;
}

void m3__tok_model_set(m3__tok_model *m, uint32_t id, const char *p,
                       size_t len, float score, int type, size_t *pool_off) {
  char *dst = m->pool + *pool_off;
  memcpy(dst, p, len);
  dst[len] = '\0';
  *pool_off += len + 1;
  m->piece[id] = dst;
  m->piece_len[id] = (uint32_t)len;
  m->score[id] = score;
  m->type[id] = (uint8_t)type;
  if (len > m->max_piece_len)
    m->max_piece_len = (uint32_t)len;
}

void m3__tok_model_find_bytes(m3__tok_model *m, int any_type) {
  for (uint32_t i = 0; i < m->n_pieces; i++) {
    const char *p = m->piece[i];
    if (m->piece_len[i] != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>')
      continue;
    if (!any_type && m->type[i] != M3__PIECE_BYTE)
      continue;
    int hi = m3__tok_hexval(p[3]), lo = m3__tok_hexval(p[4]);
    if (hi < 0 || lo < 0)
      continue;
    if (m->byte_id[hi * 16 + lo] < 0)
      m->byte_id[hi * 16 + lo] = (int32_t)i;
  }
}

/* ---- loading ------------------------------------------------------------ */

int32_t m3__tok_model_piece_id(const m3__tok_model *m, const char *piece) {
  if (!m || !piece)
    return -1;
  size_t l = strlen(piece);
  int32_t id = m3__trie_get(&m->reserved, piece, l);
  if (id < 0)
    id = m3__trie_get(&m->pieces, piece, l);
  return id;
}
