/*
 * Shared helpers of the retrieval index tests: a small real store with
 * retrieval embeddings (spec 2x2x2x4, raw f32 codes, emb_dim dims), random
 * vectors, and the brute-force cosine top-k the index is checked against.
 */
#ifndef M3_INDEX_TESTLIB_H
#define M3_INDEX_TESTLIB_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "check.h"
#include "lib/m3test.h"

#include "m3/error.h"
#include "m3/index.h"
#include "m3/store.h"

/* The test layout: spec 2x2x2x4, raw f32, emb_dim dims. */
m3_layout it_layout(unsigned emb_dim);

/* Open (create) the store in dir with it_layout(emb_dim). */
m3_store *it_store_open(const char *dir, unsigned emb_dim);

/* Put ids[i] with embedding embs + i*dim (NULL: none) in one batch. */
int it_put(m3_store *s, const uint64_t *ids, const float *embs, size_t n);

/* The vectors the brute-force reference knows: a map id -> vector. */
typedef struct it_ref {
  unsigned dim;
  uint64_t *ids;
  float *vecs;
  size_t n, cap;
} it_ref;

void it_ref_init(it_ref *r, unsigned dim);
/* Insert or replace; an all-zero vector removes (as the index does). */
void it_ref_set(it_ref *r, uint64_t id, const float *v);
void it_ref_del(it_ref *r, uint64_t id);
void it_ref_free(it_ref *r);

/* Brute-force cosine top-k of one query: ids (k, UINT64_MAX pads) and
 * scores, ordered by score descending then id ascending. */
void it_ref_topk(const it_ref *r, const float *q, size_t k, uint64_t *ids, float *scores);

/* Search the index for each query and compare with it_ref_topk: ids exact,
 * scores within tol. */
void it_check_against_ref(m3_index *ix, const it_ref *r, const float *queries, size_t nq, size_t k,
                          double tol);

#endif /* M3_INDEX_TESTLIB_H */
