/*
 * Helpers for the codec tests: assertions that print both sides and the m3
 * error detail, a deterministic generator of heavy-tailed anisotropic vectors
 * (the shape of attention keys), small trained codec sets, and resealing a
 * mutated codec set file (CRCs and fingerprint) so that a test reaches the
 * check it aims at.
 */
#ifndef M3_CODEC_TESTLIB_H
#define M3_CODEC_TESTLIB_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include <cmocka.h>

#include "check.h"
#include "lib/m3test.h"

#include "m3/codec.h"
#include "m3/crc32c.h"
#include "m3/error.h"

static inline double ct_normal(uint64_t *s) {
  double u = m3t_unif(s), v = m3t_unif(s);
  return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

/* n vectors of dim: Student-t(4) noise, decaying per-dimension scales, a few
 * outlier dimensions and a mean offset; `shift` varies the distribution. */
static inline float *ct_vectors(size_t n, unsigned dim, uint64_t seed, double shift) {
  float *x = malloc(n * dim * sizeof(float));
  uint64_t s = seed;
  for (size_t i = 0; i < n; i++)
    for (unsigned j = 0; j < dim; j++) {
      double chi = 0;
      for (int k = 0; k < 4; k++) {
        double g = ct_normal(&s);
        chi += g * g;
      }
      double t = ct_normal(&s) / sqrt(chi / 4 + 1e-12);
      double scale = 0.3 + 2.0 * exp(-(double)j / 4.0) + (j % 7 == 3 ? 3.0 : 0.0);
      x[i * dim + j] = (float)(scale * t + shift * ((j % 3) - 1.0));
    }
  return x;
}

/* Train a K/V codec set of factory on n synthetic vectors per codec. */
static inline m3_codec_set *ct_train(const char *factory, unsigned dim, uint16_t n_layers,
                                     size_t n, uint64_t seed) {
  uint32_t nc = n_layers ? 2u * n_layers : 2u;
  m3_codec_sample *sm = calloc(nc, sizeof *sm);
  float **xs = calloc(nc, sizeof *xs);
  for (uint32_t i = 0; i < nc; i++) {
    xs[i] = ct_vectors(n, dim, seed + 17 * i, 0.5 * i);
    sm[i].x = xs[i];
    sm[i].n = n;
  }
  m3_codec_train_opts o = {0};
  o.kind = M3_CODEC_FAISS;
  o.head_dim = (uint16_t)dim;
  o.n_layers = n_layers;
  o.factory_k = factory;
  o.seed = seed;
  m3_codec_set *cs = NULL;
  int rc = m3_codec_set_train(&o, sm, &cs);
  if (rc)
    fail_msg("training '%s' failed: %s: %s", factory, m3_err_name(rc), m3_errmsg());
  for (uint32_t i = 0; i < nc; i++)
    free(xs[i]);
  free(xs);
  free(sm);
  return cs;
}

static inline uint32_t ct_ld32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t ct_ld64(const uint8_t *p) {
  return (uint64_t)ct_ld32(p) | (uint64_t)ct_ld32(p + 4) << 32;
}
static inline void ct_st32(uint8_t *p, uint32_t v) {
  for (int k = 0; k < 4; k++)
    p[k] = (uint8_t)(v >> (8 * k));
}
static inline void ct_st64(uint8_t *p, uint64_t v) {
  ct_st32(p, (uint32_t)v);
  ct_st32(p + 4, (uint32_t)(v >> 32));
}

/* Recompute body_crc, fingerprint and header_crc of a codec set file image
 * (the format at the top of m3/codec.h). */
static inline void ct_reseal(uint8_t *buf, size_t len) {
  uint64_t body = ct_ld64(buf + 32), fp = 0;
  ct_st32(buf + 40, m3_crc32c(0, buf + M3_CODEC_HEADER_SIZE, (size_t)body));
  assert_int_equal(m3_codec_fingerprint(buf, len, &fp), 0);
  ct_st64(buf + 24, fp);
  ct_st32(buf + 60, m3_crc32c(0, buf, 60));
}

/* A private copy of a set's file bytes. */
static inline uint8_t *ct_bytes(const m3_codec_set *cs, size_t *len) {
  const void *b;
  m3_codec_set_bytes(cs, &b, len);
  uint8_t *c = malloc(*len);
  memcpy(c, b, *len);
  return c;
}

/* Byte ranges of entry i of a codec set image, read off the documented format. */
typedef struct ct_entry {
  size_t off;        /* of the entry, from the file start */
  size_t fields_off; /* absolute */
  uint32_t n_fields;
  size_t tables_off; /* absolute; bias then tables */
  size_t tables_len;
  size_t faiss_off;  /* absolute */
  size_t faiss_len;
  size_t size;
} ct_entry;

static inline ct_entry ct_entry_at(const uint8_t *buf, unsigned idx) {
  size_t off = M3_CODEC_HEADER_SIZE;
  ct_entry e;
  for (unsigned i = 0;; i++) {
    const uint8_t *p = buf + off;
    uint32_t dim = (uint32_t)(p[6] | p[7] << 8), flags = (uint32_t)(p[10] | p[11] << 8);
    uint32_t nf = ct_ld32(p + 12), flen = ct_ld32(p + 16), rows = ct_ld32(p + 20);
    uint64_t fb = ct_ld64(p + 24), size = ct_ld64(p + 40);
    e.off = off;
    e.fields_off = off + 48 + ((flen + 7) & ~7u);
    e.n_fields = nf;
    e.tables_off = e.fields_off + 16 * (size_t)nf;
    e.tables_len = (flags & 1) ? 4 * (size_t)dim * (rows + 1) : 0;
    e.faiss_off = e.tables_off + ((e.tables_len + 7) & ~(size_t)7);
    e.faiss_len = (size_t)fb;
    e.size = (size_t)size;
    if (i == idx)
      return e;
    off += (size_t)size;
  }
}

#endif /* M3_CODEC_TESTLIB_H */
