/*
 * Where the code fields of a FAISS standalone code lie, read off the
 * index_factory string (FAISS 1.7.3 grammar). Supported: the codes whose
 * decode is a sum of code-selected vectors,
 *   [transforms,] PQ<M>[x<b>][np] | SQ8 | SQ4 | RQ<M>x<b>[_<M>x<b>...] | LSQ<M>x<b>
 *   [transforms,] Residual<M>x<b>,PQ<M>[x<b>]       (Index2Layer, multi-index)
 *   [transforms,] Residual<n>,PQ<M>[x<b>]           (Index2Layer, flat coarse)
 *   [transforms,] IMI2x<b>,PQ..|SQ8|SQ4             (IVF codes: list number
 *   [transforms,] IVF<n>,PQ..|SQ8|SQ4                + residual code)
 * with transforms among OPQ<M>[_<d>], PCA[R]<d>, RR[<d>], whose inverse is
 * affine and folds into the tables. The layout is only a claim: the trainer
 * checks the tables built on it against FAISS's own decode.
 *
 * Code layouts (bits little-endian, fields in this order):
 *   PQ:           M fields of b bits (ProductQuantizer::compute_codes)
 *   Index2Layer:  list number in ceil(log256(nlist)) bytes little-endian
 *                 (Level1Quantizer::encode_listno); with a multi-index
 *                 quantizer the list number is sum_m idx_m << (m * b)
 *                 (MultiIndexQuantizer::reconstruct); then the PQ code
 *   IVF:          the same list number, then the PQ or SQ code
 *   SQ8 / SQ4:    one 8- or 4-bit field per dimension
 *   RQ / LSQ:     one field per codebook (AdditiveQuantizer::pack_codes)
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec_internal.h"
#include "m3/error.h"

typedef struct layout {
  m3__codec_field *f;
  uint32_t n;
  uint32_t bit;  /* next free bit */
  uint32_t rows;
  char *why;
  size_t cap;
} layout;

static int refuse(layout *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int refuse(layout *L, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(L->why, L->cap, fmt, ap);
  va_end(ap);
  return M3_EUNSUPPORTED;
}

static int add_field(layout *L, uint32_t nbits, uint32_t count) {
  if (nbits < 1 || nbits > M3_CODEC_MAX_FIELD_BITS)
    return refuse(L, "a %u-bit code field (tables take fields of 1..%d bits)", nbits,
                  M3_CODEC_MAX_FIELD_BITS);
  if (L->n >= M3_CODEC_MAX_FIELDS)
    return refuse(L, "more than %d code fields", M3_CODEC_MAX_FIELDS);
  L->f[L->n] = (m3__codec_field){L->bit, nbits, count, L->rows};
  L->n++;
  L->bit += nbits;
  L->rows += count;
  return 0;
}

/* Parse an unsigned decimal at *s; advances *s. Returns 0 when none. */
static unsigned long num(const char **s) {
  if (!isdigit((unsigned char)**s))
    return 0;
  char *end;
  unsigned long v = strtoul(*s, &end, 10);
  *s = end;
  return v;
}

/* Does tok match "<prefix><number>" exactly? */
static int match_num(const char *tok, const char *prefix, unsigned long *v) {
  size_t pl = strlen(prefix);
  if (strncmp(tok, prefix, pl) != 0)
    return 0;
  const char *s = tok + pl;
  *v = num(&s);
  return *v > 0 && *s == '\0';
}

/* "PQ<M>[x<b>][np]" -> M, b (default 8). allow_np: the "np" suffix. */
static int match_pq(const char *tok, unsigned long *M, unsigned long *b, int allow_np) {
  if (strncmp(tok, "PQ", 2) != 0)
    return 0;
  const char *s = tok + 2;
  *M = num(&s);
  *b = 8;
  if (!*M)
    return 0;
  if (*s == 'x') {
    s++;
    *b = num(&s);
    if (!*b)
      return 0;
  }
  if (allow_np && strcmp(s, "np") == 0)
    s += 2;
  return *s == '\0';
}

/* Affine-invertible transforms; updates *d to the transform's output dim.
 * 1: matched, 0: not a transform, <0: a transform tables cannot fold. */
static int match_transform(layout *L, const char *tok, unsigned *d) {
  unsigned long v, v2;
  const char *s;
  if (strncmp(tok, "OPQ", 3) == 0) {
    s = tok + 3;
    v = num(&s);
    v2 = *d;
    if (v && *s == '_') {
      s++;
      v2 = num(&s);
    }
    if (!v || !v2 || *s)
      return 0;
    *d = (unsigned)v2;
    return 1;
  }
  if (match_num(tok, "PCAR", &v) || match_num(tok, "PCA", &v)) {
    *d = (unsigned)v;
    return 1;
  }
  if (strncmp(tok, "PCAW", 4) == 0)
    return refuse(L, "'%s': whitening PCA has no exact inverse in FAISS 1.7.3", tok);
  if (strcmp(tok, "RR") == 0)
    return 1;
  if (match_num(tok, "RR", &v)) {
    *d = (unsigned)v;
    return 1;
  }
  if (strcmp(tok, "L2norm") == 0 || strcmp(tok, "L2Norm") == 0)
    return refuse(L, "'%s' is not linear: decode cannot undo the normalization", tok);
  if (strncmp(tok, "ITQ", 3) == 0 || strncmp(tok, "Pad", 3) == 0)
    return refuse(L, "transform '%s' is not supported by decode tables", tok);
  return 0;
}

/* Bytes Level1Quantizer::encode_listno writes for nlist lists. */
static uint32_t listno_bytes(unsigned long long nlist) {
  uint32_t nb = 0;
  for (unsigned long long nl = nlist - 1; nl > 0; nl >>= 8)
    nb++;
  return nb;
}

/* A residual/IVF code after a list number: PQ or SQ8/SQ4 on d dims. */
static int add_residual_code(layout *L, const char *tok, unsigned d, int allow_sq,
                             int allow_np) {
  unsigned long M, b;
  int rc;
  if (match_pq(tok, &M, &b, allow_np)) {
    if (M == 0 || d % M)
      return refuse(L, "'%s': %u dims do not split into %lu sub-vectors", tok, d, M);
    for (unsigned long m = 0; m < M; m++)
      if ((rc = add_field(L, (uint32_t)b, b <= 24 ? 1u << b : 0)) != 0)
        return rc;
    L->bit = (L->bit + 7) & ~7u;
    return 0;
  }
  if (allow_sq && (strcmp(tok, "SQ8") == 0 || strcmp(tok, "SQ4") == 0)) {
    uint32_t b8 = tok[2] == '8' ? 8 : 4;
    for (unsigned j = 0; j < d; j++)
      if ((rc = add_field(L, b8, 1u << b8)) != 0)
        return rc;
    L->bit = (L->bit + 7) & ~7u;
    return 0;
  }
  return refuse(L, "code '%s' after a coarse quantizer is not supported by decode tables", tok);
}

/* Additive quantizer "RQ4x8_2x6" / "LSQ4x8": one field per codebook. */
static int add_additive(layout *L, const char *tok, int *matched) {
  const char *s;
  int lsq = 0;
  *matched = 0;
  if (strncmp(tok, "RQ", 2) == 0)
    s = tok + 2;
  else if (strncmp(tok, "LSQ", 3) == 0)
    s = tok + 3, lsq = 1;
  else
    return 0;
  for (;;) {
    unsigned long M = num(&s), b;
    if (!M || *s != 'x')
      return 0;
    s++;
    b = num(&s);
    if (!b)
      return 0;
    for (unsigned long m = 0; m < M; m++) {
      int rc = add_field(L, (uint32_t)b, b <= 24 ? 1u << b : 0);
      if (rc)
        return rc;
    }
    if (*s == '\0')
      break;
    if (*s != '_' || lsq)
      return 0; /* norm suffixes (_Nqint8 ...) are not table codes */
    s++;
  }
  L->bit = (L->bit + 7) & ~7u;
  *matched = 1;
  return 0;
}

int m3__codec_layout(const char *factory, unsigned d, m3__codec_field *fields,
                     uint32_t *n_fields, uint32_t *code_bytes, char *why, size_t cap) {
  int rc = 0;
  layout L = {fields, 0, 0, 0, why, cap};
  char *copy = strdup(factory);
  char *tok[16];
  int ntok = 0;
  if (!copy)
    return m3__seterr(M3_ENOMEM, "out of memory");
  why[0] = '\0';
  for (char *save = NULL, *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    if (ntok == 16) {
      rc = refuse(&L, "more than 16 components");
      goto out;
    }
    tok[ntok++] = t;
  }
  int i = 0;
  for (; i < ntok; i++) {
    int m = match_transform(&L, tok[i], &d);
    if (m < 0) {
      rc = m;
      goto out;
    }
    if (m == 0)
      break;
  }
  int rest = ntok - i;
  unsigned long M, b, n;
  if (rest == 1) {
    const char *t = tok[i];
    int matched = 0;
    if (match_pq(t, &M, &b, 1)) {
      if (d % M) {
        rc = refuse(&L, "'%s': %u dims do not split into %lu sub-vectors", t, d, M);
        goto out;
      }
      for (unsigned long m = 0; m < M && !rc; m++)
        rc = add_field(&L, (uint32_t)b, b <= 24 ? 1u << b : 0);
      L.bit = (L.bit + 7) & ~7u;
    } else if (strcmp(t, "SQ8") == 0 || strcmp(t, "SQ4") == 0) {
      uint32_t b8 = t[2] == '8' ? 8 : 4;
      for (unsigned j = 0; j < d && !rc; j++)
        rc = add_field(&L, b8, 1u << b8);
      L.bit = (L.bit + 7) & ~7u;
    } else if ((rc = add_additive(&L, t, &matched)) != 0 || matched) {
      /* done (or refused) */
    } else {
      rc = refuse(&L, "'%s' is not a code m3 decode tables know how to unpack "
                      "(PQ, SQ8/SQ4, RQ, LSQ, Residual, IMI, IVF)", t);
    }
  } else if (rest == 2) {
    const char *c = tok[i], *t = tok[i + 1];
    const char *s;
    if (strncmp(c, "Residual", 8) == 0) {
      s = c + 8;
      M = num(&s);
      if (M && *s == 'x') { /* Residual<M>x<b>: multi-index */
        s++;
        b = num(&s);
        if (!b || *s || M * b > 32) {
          rc = refuse(&L, "coarse quantizer '%s' is not supported by decode tables", c);
          goto out;
        }
        for (unsigned long m = 0; m < M && !rc; m++)
          rc = add_field(&L, (uint32_t)b, b <= 24 ? 1u << b : 0);
        if (rc)
          goto out;
        L.bit = 8 * listno_bytes(1ull << (M * b));
      } else if (M && *s == '\0') { /* Residual<n>: flat coarse */
        uint32_t nb = listno_bytes(M);
        if ((rc = add_field(&L, 8 * nb, (uint32_t)M)) != 0)
          goto out;
      } else {
        rc = refuse(&L, "coarse quantizer '%s' is not supported by decode tables", c);
        goto out;
      }
      rc = add_residual_code(&L, t, d, 0, 0);
    } else if (match_num(c, "IMI2x", &b)) {
      if (b > 16) {
        rc = refuse(&L, "coarse quantizer '%s' is too large", c);
        goto out;
      }
      if ((rc = add_field(&L, (uint32_t)b, 1u << b)) != 0 ||
          (rc = add_field(&L, (uint32_t)b, 1u << b)) != 0)
        goto out;
      L.bit = 8 * listno_bytes(1ull << (2 * b));
      rc = add_residual_code(&L, t, d, 1, 1);
    } else if (match_num(c, "IVF", &n)) {
      uint32_t nb = listno_bytes(n);
      if ((rc = add_field(&L, 8 * nb, (uint32_t)n)) != 0)
        goto out;
      rc = add_residual_code(&L, t, d, 1, 1);
    } else {
      rc = refuse(&L, "coarse quantizer '%s' is not supported by decode tables", c);
    }
  } else if (rest == 0) {
    rc = refuse(&L, "no quantizer after the transforms");
  } else {
    rc = refuse(&L, "'%s' has components m3 decode tables do not know", factory);
  }
  if (rc)
    goto out;
  for (uint32_t k = 0; k < L.n; k++)
    if (L.f[k].count == 0) {
      rc = refuse(&L, "a code field wider than %d bits", M3_CODEC_MAX_FIELD_BITS);
      goto out;
    }
  *n_fields = L.n;
  *code_bytes = (L.bit + 7) / 8;
out:
  free(copy);
  return rc;
}
