/*
 * encode_store_digest DIR: one line per live record of a store, in chunk id
 * order: "id mem_len fnv64(memory bytes) fnv64(text) fnv64(embedding)".
 * The resume test compares these lines between an interrupted-and-resumed
 * run and an uninterrupted one: same ids, same payload bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "m3/error.h"
#include "m3/store.h"

static uint64_t fnv(const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

typedef struct ctx {
  m3_store *s;
  void *buf;
  size_t cap;
  float *emb;
  int rc;
} ctx;

static int one(void *ud, uint64_t id, const m3_location *loc) {
  ctx *c = ud;
  (void)loc;
  m3_fetch_item it = {.chunk_id = id, .buf = c->buf, .cap = c->cap};
  int rc = m3_store_fetch(c->s, &it, 1);
  if (rc == 0) rc = it.status;
  char *text = NULL;
  size_t tlen = 0;
  if (rc == 0) rc = m3_store_get_text(c->s, id, &text, &tlen);
  unsigned dim = m3_store_layout(c->s)->emb_dim;
  uint64_t he = 0;
  if (rc == 0 && dim) {
    rc = m3_store_get_embedding(c->s, id, c->emb);
    he = fnv(c->emb, dim * sizeof(float));
  }
  if (rc) {
    fprintf(stderr, "chunk %llu: %s: %s\n", (unsigned long long)id, m3_strerror(rc), m3_errmsg());
    free(text);
    return c->rc = rc;
  }
  printf("%llu %zu %016llx %016llx %016llx\n", (unsigned long long)id, it.len,
         (unsigned long long)fnv(it.data, it.len), (unsigned long long)fnv(text, tlen),
         (unsigned long long)he);
  free(text);
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: encode_store_digest DIR\n");
    return 2;
  }
  m3_store_options o;
  m3_store_options_init(&o);
  o.read_only = 1;
  ctx c = {0};
  int rc = m3_store_open(argv[1], &o, &c.s);
  if (rc) {
    fprintf(stderr, "%s: %s: %s\n", argv[1], m3_strerror(rc), m3_errmsg());
    return 2;
  }
  c.cap = m3_store_fetch_cap(c.s);
  c.buf = m3_store_buf_alloc(c.s, c.cap);
  c.emb = calloc(m3_store_layout(c.s)->emb_dim + 1, sizeof(float));
  rc = m3_store_iterate(c.s, one, &c);
  free(c.buf);
  free(c.emb);
  m3_store_close(c.s);
  return rc || c.rc ? 1 : 0;
}
