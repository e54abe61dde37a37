/*
 * The GEMM encoder (see codec_gemm.h): FAISS sa_encode codes of OPQ +
 * multi-index / flat coarse + PQ codecs, computed in batches with sgemm.
 *
 * Per batch of B vectors:
 *   1. the transforms: Y = X A^T (+ b), one sgemm each (FAISS's
 *      LinearTransform::apply does the same call);
 *   2. the coarse stage: for each multi-index half (or the flat quantizer),
 *      distances to a block of centroids D = (||x||^2 + ||c||^2) - 2 X C^T as
 *      FAISS's pairwise_L2sqr forms them (norms of the centroids precomputed
 *      once), the block kept in cache and reduced to a running argmin at
 *      once (FAISS writes the whole n x 2^14 table to memory first);
 *   3. the residual x - c, then its PQ the same way (one block of ksub);
 *      FAISS computes PQ distances of sub-vectors under 16 dims directly as
 *      sum (x - c)^2, so near-ties of the GEMM form (within its rounding) are
 *      settled with that direct sum;
 *   4. packing: list number little-endian in code_size_1 bytes
 *      (Level1Quantizer::encode_listno; multi-index: sum idx_m << (m * nbits)),
 *      then the PQ fields, nbits each, lowest bit first (PQEncoderGeneric).
 * Ties go to the lowest centroid index, as in FAISS's scans.
 */
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "codec_gemm.h"
#include "codec_internal.h"
#include "m3/error.h"

#define BATCH 256      /* vectors per batch */
#define CBLOCK 1024    /* centroids per distance block: BATCH x CBLOCK floats = 1 MiB */

typedef struct scratch {
  float *xa, *xb;  /* (BATCH, dmax) transform ping-pong */
  float *res;      /* (BATCH, d) residuals */
  float *D;        /* (BATCH, CBLOCK) */
  float *xn;       /* (BATCH) */
  float *best;     /* (BATCH) */
  uint32_t *i1;    /* (BATCH, q1.M) */
  uint32_t *i2;    /* (BATCH, pq.M) */
} scratch;

/* Squared norms of the dsub-dim sub-vectors at x + off, rows of stride ld. */
static void row_norms(const float *x, size_t ld, size_t nb, uint32_t dsub, float *xn) {
  for (size_t i = 0; i < nb; i++) {
    const float *r = x + i * ld;
    float s = 0;
    for (uint32_t j = 0; j < dsub; j++)
      s += r[j] * r[j];
    xn[i] = s;
  }
}

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

/*
 * The first minimum over j < n of (xn + cn[j]) + D[j], D = -2 x.c from
 * sgemm with beta 0: the same float operations (and so the same bits) as
 * FAISS's pairwise_L2sqr, which prefills (xn + cn) and lets sgemm add
 * -2 x.c (2 x.c is exact). 16 lanes keep their first minimum; the lane
 * with the smallest value, then the smallest index, wins.
 */
__attribute__((target_clones("default", "avx2", "avx512f")))
static uint32_t argmin_l2(const float *D, const float *cn, float xn, uint32_t n, float *vmin) {
  uint32_t j = 0, k = 0;
  float v = FLT_MAX;
  if (n >= 16) {
    v16f bv, xv;
    v16i bi, ji, step;
    for (int l = 0; l < 16; l++) {
      bv[l] = FLT_MAX;
      bi[l] = 0;
      ji[l] = l;
      step[l] = 16;
      xv[l] = xn;
    }
    for (; j + 16 <= n; j += 16) {
      v16f c, d;
      memcpy(&c, cn + j, sizeof c);
      memcpy(&d, D + j, sizeof d);
      v16f t = (xv + c) + d;
      v16i m = t < bv;
      bv = (v16f)(((v16i)t & m) | ((v16i)bv & ~m));
      bi = (ji & m) | (bi & ~m);
      ji += step;
    }
    for (int l = 0; l < 16; l++)
      if (bv[l] < v || (bv[l] == v && (uint32_t)bi[l] < k)) {
        v = bv[l];
        k = (uint32_t)bi[l];
      }
  }
  for (; j < n; j++) {
    float t = (xn + cn[j]) + D[j];
    if (t < v) {
      v = t;
      k = j;
    }
  }
  *vmin = v;
  return k;
}

static float direct_l2(const float *x, const float *c, uint32_t d) {
  float s = 0;
  for (uint32_t j = 0; j < d; j++) {
    float t = x[j] - c[j];
    s += t * t;
  }
  return s;
}

/*
 * Nearest centroid of sub-quantizer m of q for nb rows of x (stride ldx, the
 * sub-vector at m * dsub): idx[i * stride] receives it. refine: settle
 * near-ties by the direct sum of squares (FAISS's distance for dsub < 16).
 */
static void nearest(const m3__gpq *q, uint32_t m, const float *x, size_t ldx, size_t nb,
                    scratch *s, uint32_t *idx, size_t stride, int refine) {
  const uint32_t dsub = q->dsub, ksub = q->ksub;
  const float *xs = x + (size_t)m * dsub;
  const float *cent = q->cent + (size_t)m * ksub * dsub, *cn = q->norms + (size_t)m * ksub;
  row_norms(xs, ldx, nb, dsub, s->xn);
  for (size_t i = 0; i < nb; i++)
    s->best[i] = FLT_MAX;
  for (uint32_t j0 = 0; j0 < ksub; j0 += CBLOCK) {
    const uint32_t cb = ksub - j0 < CBLOCK ? ksub - j0 : CBLOCK;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)cb, (int)dsub, -2.0f, xs,
                (int)ldx, cent + (size_t)j0 * dsub, (int)dsub, 0.0f, s->D, (int)cb);
    for (size_t i = 0; i < nb; i++) {
      float *Di = s->D + i * cb;
      float v;
      uint32_t k = argmin_l2(Di, cn + j0, s->xn[i], cb, &v);
      if (refine) {
        /* candidates within the GEMM form's rounding of the minimum */
        const float eps = 4e-6f * (s->xn[i] + cn[j0 + k]) + FLT_MIN;
        const float *xi = xs + i * ldx;
        float bd = direct_l2(xi, cent + (size_t)(j0 + k) * dsub, dsub);
        for (uint32_t j = 0; j < cb; j++)
          if (j != k && (s->xn[i] + cn[j0 + j]) + Di[j] <= v + eps) {
            float dd = direct_l2(xi, cent + (size_t)(j0 + j) * dsub, dsub);
            if (dd < bd || (dd == bd && j < k)) {
              bd = dd;
              k = j;
            }
          }
        v = bd;
      }
      if (v < s->best[i]) {
        s->best[i] = v;
        idx[i * stride] = j0 + k;
      }
    }
  }
}

/* Write nbits of v at bit *pos of code, lowest bit first. */
static void put_bits(uint8_t *code, uint32_t *pos, uint32_t nbits, uint64_t v) {
  for (uint32_t b = 0; b < nbits;) {
    uint32_t at = *pos & 7, take = 8 - at < nbits - b ? 8 - at : nbits - b;
    code[*pos >> 3] |= (uint8_t)(((v >> b) & ((1u << take) - 1)) << at);
    *pos += take;
    b += take;
  }
}

static void encode_batch(const m3__gemm *g, const float *x, size_t nb, uint8_t *codes,
                         scratch *s) {
  const uint32_t d = g->d;
  const float *cur = x;
  float *bufs[2] = {s->xa, s->xb};
  for (uint32_t t = 0; t < g->n_lt; t++) {
    const m3__glt *lt = &g->lt[t];
    float *y = bufs[t & 1];
    if (lt->b)
      for (size_t i = 0; i < nb; i++)
        memcpy(y + i * lt->d_out, lt->b, lt->d_out * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)lt->d_out, (int)lt->d_in,
                1.0f, cur, (int)lt->d_in, lt->A, (int)lt->d_in, lt->b ? 1.0f : 0.0f, y,
                (int)lt->d_out);
    cur = y;
  }
  const float *pin = cur;
  if (g->coarse) {
    const m3__gpq *q = &g->q1;
    for (uint32_t m = 0; m < q->M; m++)
      nearest(q, m, cur, d, nb, s, s->i1 + m, q->M, 0);
    for (size_t i = 0; i < nb; i++) {
      const float *xi = cur + i * d;
      float *ri = s->res + i * d;
      for (uint32_t m = 0; m < q->M; m++) {
        const float *c = q->cent + ((size_t)m * q->ksub + s->i1[i * q->M + m]) * q->dsub;
        for (uint32_t j = 0; j < q->dsub; j++)
          ri[m * q->dsub + j] = xi[m * q->dsub + j] - c[j];
      }
    }
    pin = s->res;
  }
  const m3__gpq *p = &g->pq;
  for (uint32_t m = 0; m < p->M; m++)
    nearest(p, m, pin, d, nb, s, s->i2 + m, p->M, p->dsub < 16);
  memset(codes, 0, nb * g->code_size);
  for (size_t i = 0; i < nb; i++) {
    uint8_t *c = codes + i * g->code_size;
    if (g->coarse) {
      uint64_t list = 0;
      if (g->coarse == M3__GC_MULTI)
        for (uint32_t m = 0; m < g->q1.M; m++)
          list |= (uint64_t)s->i1[i * g->q1.M + m] << (m * g->q1.nbits);
      else
        list = s->i1[i];
      for (uint32_t b = 0; b < g->code_size_1; b++)
        c[b] = (uint8_t)(list >> (8 * b));
    }
    uint32_t pos = g->code_size_1 * 8;
    for (uint32_t m = 0; m < p->M; m++)
      put_bits(c, &pos, p->nbits, s->i2[i * p->M + m]);
  }
}

int m3__gemm_encode(const m3__gemm *g, const float *x, size_t n, uint8_t *codes) {
  scratch s = {0};
  uint32_t dmax = g->d_in;
  for (uint32_t t = 0; t < g->n_lt; t++)
    if (g->lt[t].d_out > dmax)
      dmax = g->lt[t].d_out;
  s.xa = malloc((size_t)BATCH * dmax * sizeof(float));
  s.xb = malloc((size_t)BATCH * dmax * sizeof(float));
  s.res = malloc((size_t)BATCH * g->d * sizeof(float));
  s.D = malloc((size_t)BATCH * CBLOCK * sizeof(float));
  s.xn = malloc(BATCH * sizeof(float));
  s.best = malloc(BATCH * sizeof(float));
  s.i1 = malloc((size_t)BATCH * (g->q1.M ? g->q1.M : 1) * sizeof(uint32_t));
  s.i2 = malloc((size_t)BATCH * g->pq.M * sizeof(uint32_t));
  int rc = 0;
  if (!s.xa || !s.xb || !s.res || !s.D || !s.xn || !s.best || !s.i1 || !s.i2) {
    rc = m3__seterr(M3_ENOMEM, "GEMM encoder: out of memory for its scratch");
    goto out;
  }
  for (size_t i0 = 0; i0 < n; i0 += BATCH) {
    size_t nb = n - i0 < BATCH ? n - i0 : BATCH;
    encode_batch(g, x + i0 * g->d_in, nb, codes + i0 * g->code_size, &s);
  }
out:
  free(s.xa);
  free(s.xb);
  free(s.res);
  free(s.D);
  free(s.xn);
  free(s.best);
  free(s.i1);
  free(s.i2);
  return rc;
}

double m3__gemm_flops_per_vector(const m3__gemm *g) {
  double f = 0;
  for (uint32_t t = 0; t < g->n_lt; t++)
    f += 2.0 * g->lt[t].d_in * g->lt[t].d_out;
  if (g->coarse)
    f += 2.0 * g->q1.M * g->q1.ksub * g->q1.dsub;
  f += 2.0 * g->pq.M * g->pq.ksub * g->pq.dsub;
  return f;
}

void m3__gemm_shape(const m3__gemm *g, uint32_t *m, uint32_t *n, uint32_t *k) {
  const m3__gpq *q = g->coarse ? &g->q1 : &g->pq;
  if (g->coarse && (double)g->pq.M * g->pq.ksub * g->pq.dsub >
                       (double)g->q1.M * g->q1.ksub * g->q1.dsub)
    q = &g->pq;
  *m = BATCH;
  *n = q->ksub < CBLOCK ? q->ksub : CBLOCK;
  *k = q->dsub;
}

/* ---- the GEMM encoder in the codec layer's function table ---- */

static void gemm_free(void *p) { m3__gemm_free(p); }

static int gemm_prepare(m3_codec_set *cs, int ci, char *why, size_t cap) {
  m3__codec *c = &cs->codecs[ci];
  int rc = 0;
  pthread_mutex_lock(&cs->lock);
  if (c->gemm_state == 0) {
    m3__gemm *g = NULL;
    if (c->kind != M3_CODEC_FAISS) {
      snprintf(c->gemm_why, sizeof c->gemm_why, "not a faiss codec");
      rc = M3_EUNSUPPORTED;
    } else {
      rc = m3__gemm_read(c->faiss, c->faiss_bytes, c->dim, &g, c->gemm_why, sizeof c->gemm_why);
      if (!rc && g->code_size != c->code_bytes) {
        snprintf(c->gemm_why, sizeof c->gemm_why, "its codes would be %u bytes, the codec's are %u",
                 g->code_size, c->code_bytes);
        m3__gemm_free(g);
        rc = M3_EUNSUPPORTED;
      }
    }
    if (!rc) {
      c->gemm = g;
      cs->gemm_free = gemm_free;
      c->gemm_state = 1;
    } else if (rc == M3_EUNSUPPORTED) {
      c->gemm_state = -1;
    }
  }
  if (c->gemm_state < 0) {
    snprintf(why, cap, "%s", c->gemm_why);
    rc = M3_EUNSUPPORTED;
  }
  pthread_mutex_unlock(&cs->lock);
  return rc;
}

static int gemm_encode(m3_codec_set *cs, int ci, const float *x, size_t n, uint8_t *codes) {
  char why[M3__NO_TABLES_CAP];
  int rc = gemm_prepare(cs, ci, why, sizeof why);
  if (rc)
    return m3__seterr(rc, "codec set %s: codec %d: no GEMM encoder: %s", cs->name, ci, why);
  return m3__gemm_encode(cs->codecs[ci].gemm, x, n, codes);
}

const m3__encoder m3__enc_gemm = {"gemm", gemm_prepare, gemm_encode};
