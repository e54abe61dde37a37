/*
 * Reading the GEMM encoder's codebooks out of a serialized FAISS index (the
 * faiss::write_index bytes a codec set stores; format of FAISS 1.7.3's
 * impl/index_write.cpp): fourcc-tagged objects, fields little-endian, a
 * std::vector as a u64 count then its elements. Only the structures listed in
 * codec_gemm.h are read; anything else is refused with the reason, and the
 * codec then encodes through FAISS.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec_gemm.h"
#include "m3/error.h"

typedef struct rd {
  const uint8_t *p, *end;
  char *why;
  size_t cap;
  int bad;
} rd;

static int fail(rd *r, const char *what) {
  if (!r->bad)
    snprintf(r->why, r->cap, "FAISS index bytes: %s", what);
  r->bad = 1;
  return M3_EUNSUPPORTED;
}

static int take(rd *r, void *dst, size_t n) {
  if (r->bad || (size_t)(r->end - r->p) < n)
    return fail(r, "truncated");
  memcpy(dst, r->p, n);
  r->p += n;
  return 0;
}

static uint32_t u32(rd *r) {
  uint32_t v = 0;
  take(r, &v, 4);
  return v;
}

static uint64_t u64(rd *r) {
  uint64_t v = 0;
  take(r, &v, 8);
  return v;
}

static uint8_t u8(rd *r) {
  uint8_t v = 0;
  take(r, &v, 1);
  return v;
}

static uint32_t fourcc(const char *s) {
  return (uint32_t)s[0] | (uint32_t)s[1] << 8 | (uint32_t)s[2] << 16 | (uint32_t)s[3] << 24;
}

/* A std::vector<float> of exactly want elements, into a new array. */
static float *vec_f32(rd *r, uint64_t want, const char *what) {
  uint64_t n = u64(r);
  if (r->bad)
    return NULL;
  if (n != want || (uint64_t)(r->end - r->p) / 4 < n) {
    char m[96];
    snprintf(m, sizeof m, "%s holds %llu floats, expected %llu", what, (unsigned long long)n,
             (unsigned long long)want);
    fail(r, m);
    return NULL;
  }
  float *v = malloc(n ? n * 4 : 4);
  if (!v) {
    fail(r, "out of memory");
    return NULL;
  }
  take(r, v, n * 4);
  return v;
}

static void skip_vec(rd *r, size_t elem) {
  uint64_t n = u64(r);
  if (r->bad)
    return;
  if ((uint64_t)(r->end - r->p) / elem < n) {
    fail(r, "a vector runs past the end");
    return;
  }
  r->p += n * elem;
}

/* The common Index header; returns d. */
static uint32_t header(rd *r) {
  uint32_t d = u32(r);
  (void)u64(r); /* ntotal */
  (void)u64(r);
  (void)u64(r);
  uint8_t trained = u8(r);
  uint32_t metric = u32(r);
  if (r->bad)
    return 0;
  if (!trained)
    fail(r, "the index is not trained");
  else if (metric != 1)
    fail(r, "metric is not L2");
  return d;
}

static int read_pq(rd *r, m3__gpq *q) {
  uint64_t d = u64(r), M = u64(r), nbits = u64(r);
  if (r->bad)
    return M3_EUNSUPPORTED;
  if (!d || d > 4096 || !M || d % M || !nbits || nbits > 24)
    return fail(r, "product quantizer with bad d / M / nbits");
  q->d = (uint32_t)d;
  q->M = (uint32_t)M;
  q->nbits = (uint32_t)nbits;
  q->ksub = 1u << nbits;
  q->dsub = (uint32_t)(d / M);
  q->cent = vec_f32(r, (uint64_t)q->M * q->ksub * q->dsub, "PQ centroids");
  return r->bad ? M3_EUNSUPPORTED : 0;
}

static int norms(m3__gpq *q) {
  size_t k = (size_t)q->M * q->ksub;
  q->norms = malloc(k * sizeof(float));
  if (!q->norms)
    return M3_ENOMEM;
  for (size_t i = 0; i < k; i++) {
    const float *c = q->cent + i * q->dsub;
    float s = 0;
    for (uint32_t j = 0; j < q->dsub; j++)
      s += c[j] * c[j];
    q->norms[i] = s;
  }
  return 0;
}

static int read_lt(rd *r, m3__glt *lt) {
  uint32_t h = u32(r);
  if (r->bad)
    return M3_EUNSUPPORTED;
  if (h != fourcc("LTra") && h != fourcc("rrot"))
    return fail(r, "a transform other than OPQ / a random rotation (PCA, ITQ, remap, norm)");
  uint8_t have_bias = u8(r);
  /* A's and b's sizes say d_in / d_out, which follow them: read them later */
  uint64_t na = u64(r);
  if (r->bad || na == 0 || na > (1u << 22) || (uint64_t)(r->end - r->p) / 4 < na)
    return fail(r, "transform matrix size");
  const uint8_t *a = r->p;
  r->p += na * 4;
  uint64_t nb = u64(r);
  if (r->bad || (uint64_t)(r->end - r->p) / 4 < nb)
    return fail(r, "transform bias size");
  const uint8_t *b = r->p;
  r->p += nb * 4;
  lt->d_in = u32(r);
  lt->d_out = u32(r);
  uint8_t trained = u8(r);
  if (r->bad)
    return M3_EUNSUPPORTED;
  if (!trained || !lt->d_in || !lt->d_out || (uint64_t)lt->d_in * lt->d_out != na ||
      (have_bias && nb != lt->d_out))
    return fail(r, "transform with inconsistent sizes or untrained");
  lt->A = malloc(na * 4);
  lt->b = have_bias ? malloc(nb * 4) : NULL;
  if (!lt->A || (have_bias && !lt->b))
    return fail(r, "out of memory");
  memcpy(lt->A, a, na * 4);
  if (have_bias)
    memcpy(lt->b, b, nb * 4);
  return 0;
}

/* The quantizer of an Index2Layer. */
static int read_q1(rd *r, m3__gemm *g) {
  uint32_t h = u32(r);
  if (r->bad)
    return M3_EUNSUPPORTED;
  if (h == fourcc("Imiq")) {
    g->d = header(r);
    g->coarse = M3__GC_MULTI;
    return read_pq(r, &g->q1);
  }
  if (h == fourcc("IxF2")) {
    g->d = header(r);
    if (r->bad)
      return M3_EUNSUPPORTED;
    /* the flat quantizer's vectors: (ntotal, d) floats; ntotal from the count */
    uint64_t n = u64(r);
    if (r->bad || !g->d || n % g->d || n / g->d == 0 || n / g->d > (1u << 24))
      return fail(r, "flat quantizer size");
    r->p -= 8;
    g->coarse = M3__GC_FLAT;
    g->q1.d = g->q1.dsub = g->d;
    g->q1.M = 1;
    g->q1.ksub = (uint32_t)(n / g->d);
    g->q1.nbits = 0;
    g->q1.cent = vec_f32(r, n, "flat quantizer");
    return r->bad ? M3_EUNSUPPORTED : 0;
  }
  return fail(r, "an Index2Layer quantizer other than a multi-index or flat L2");
}

static int read_index(rd *r, m3__gemm *g) {
  uint32_t h = u32(r);
  if (r->bad)
    return M3_EUNSUPPORTED;
  if (h == fourcc("IxPq")) {
    g->d = header(r);
    if (r->bad || read_pq(r, &g->pq))
      return M3_EUNSUPPORTED;
    if (g->pq.d != g->d)
      return fail(r, "IndexPQ with inconsistent sizes");
    skip_vec(r, 1); /* codes */
    (void)u32(r);   /* search_type */
    (void)u8(r);    /* encode_signs */
    (void)u32(r);   /* polysemous_ht */
    g->coarse = M3__GC_NONE;
    g->code_size_1 = 0;
    g->code_size = (g->pq.M * g->pq.nbits + 7) / 8;
    return r->bad ? M3_EUNSUPPORTED : 0;
  }
  if (h == fourcc("Ix2L")) {
    uint32_t d = header(r);
    if (r->bad || read_q1(r, g))
      return M3_EUNSUPPORTED;
    uint64_t nlist = u64(r);
    (void)u8(r); /* quantizer_trains_alone */
    if (read_pq(r, &g->pq))
      return M3_EUNSUPPORTED;
    uint64_t cs1 = u64(r), cs2 = u64(r), cs = u64(r);
    skip_vec(r, 1);
    if (r->bad)
      return M3_EUNSUPPORTED;
    uint64_t want_nlist = g->coarse == M3__GC_MULTI ? (uint64_t)1 << (g->q1.M * g->q1.nbits)
                                                    : g->q1.ksub;
    if (d != g->d || g->q1.d != d || g->pq.d != d || nlist != want_nlist || cs1 > 8 ||
        cs2 != (g->pq.M * g->pq.nbits + 7) / 8 || cs != cs1 + cs2 ||
        (g->coarse == M3__GC_MULTI && g->q1.M * g->q1.nbits > 63))
      return fail(r, "Index2Layer with inconsistent sizes");
    g->code_size_1 = (uint32_t)cs1;
    g->code_size = (uint32_t)cs;
    return 0;
  }
  return fail(r, "not an IndexPQ or Index2Layer (IVF, RQ, SQ, HNSW ... encode through FAISS)");
}

void m3__gemm_free(m3__gemm *g) {
  if (!g)
    return;
  for (uint32_t i = 0; i < M3__GEMM_MAX_LT; i++) {
    free(g->lt[i].A);
    free(g->lt[i].b);
  }
  free(g->q1.cent);
  free(g->q1.norms);
  free(g->pq.cent);
  free(g->pq.norms);
  free(g);
}

int m3__gemm_read(const uint8_t *buf, size_t len, uint32_t d_in, m3__gemm **out, char *why,
                  size_t cap) {
  rd r = {buf, buf + len, why, cap, 0};
  *out = NULL;
  m3__gemm *g = calloc(1, sizeof *g);
  if (!g)
    return M3_ENOMEM;
  int rc = 0;
  uint32_t h = u32(&r);
  if (h == fourcc("IxPT")) {
    uint32_t dh = header(&r);
    uint32_t nt = u32(&r);
    if (r.bad)
      goto bad;
    if (dh != d_in || nt < 1 || nt > M3__GEMM_MAX_LT) {
      fail(&r, "pre-transform chain of bad length or dimension");
      goto bad;
    }
    uint32_t dcur = d_in;
    for (uint32_t i = 0; i < nt; i++) {
      if (read_lt(&r, &g->lt[i]))
        goto bad;
      if (g->lt[i].d_in != dcur) {
        fail(&r, "transform chain dimensions do not connect");
        goto bad;
      }
      dcur = g->lt[i].d_out;
      g->n_lt = i + 1;
    }
    if (read_index(&r, g))
      goto bad;
    if (g->d != dcur) {
      fail(&r, "the transformed dimension is not the index's");
      goto bad;
    }
  } else {
    r.p -= 4;
    if (read_index(&r, g))
      goto bad;
    if (g->d != d_in) {
      fail(&r, "the index's dimension is not the codec's");
      goto bad;
    }
  }
  if (r.p != r.end) {
    fail(&r, "bytes left after the index");
    goto bad;
  }
  g->d_in = d_in;
  if ((g->coarse && (rc = norms(&g->q1)) != 0) || (rc = norms(&g->pq)) != 0)
    goto out;
  *out = g;
  return 0;
bad:
  rc = M3_EUNSUPPORTED;
out:
  m3__gemm_free(g);
  return rc;
}
