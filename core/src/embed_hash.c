/*
 * The built-in lexical embedder "hash:DIM" (m3/embed.h has the algorithm,
 * step by step). Workload: one query text of a few hundred bytes per
 * retrieval round, or every chunk of a knowledge base at build time.
 *
 * Every step is integer arithmetic or a fixed sequence of IEEE float/double
 * operations (this file is compiled with -ffp-contract=off), so the output
 * bits are the same on every machine and compiler.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embed_int.h"
#include "m3/embed.h"
#include "m3/error.h"
#include "m3/internal/hash.h"

static int is_word(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
}

static unsigned char lower(unsigned char c) { return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c; }

/* fnv1a64 of text[0..n) lower-cased, continuing from h. */
static uint64_t fnv_lower(uint64_t h, const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    h ^= lower(p[i]);
    h *= M3__FNV1A64_PRIME;
  }
  return h;
}

/* ln(x) for x >= 1, the same bits everywhere: x = m * 2^e with m in [1, 2)
 * (frexp is exact), ln x = e ln 2 + 2 atanh(s), s = (m-1)/(m+1) < 1/3, by a
 * fixed 24 terms of the atanh series ((1/9)^24 is far below double's ulp). */
double m3__ln_fixed(double x) {
  int e;
  double m = frexp(x, &e) * 2.0;
  e -= 1;
  double s = (m - 1.0) / (m + 1.0), s2 = s * s, term = s, sum = 0.0;
  for (int i = 0; i < 24; i++) {
    sum = sum + term / (double)(2 * i + 1);
    term = term * s2;
  }
  return (double)e * 0.69314718055994530942 + 2.0 * sum;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

int m3_embed_hash(const char *text, size_t len, float *out, unsigned dim) {
  const unsigned char *p = (const unsigned char *)text;
  uint64_t *feat = NULL;
  size_t nf = 0, ntok = 0;
  int rc = 0;

  if (dim == 0 || dim > M3_EMBED_MAX_DIM)
    return m3__seterr(M3_EINVAL, "hash embedder: dim %u is not in 1..%d", dim, M3_EMBED_MAX_DIM);
  memset(out, 0, dim * sizeof *out);
  if (len && !text) return m3__seterr(M3_EINVAL, "hash embedder: text is NULL");

  /* At most one token per two bytes, a unigram and a bigram each. */
  size_t cap = len + 1;
  feat = malloc(cap * sizeof *feat);
  if (!feat) return m3__seterr(M3_ENOMEM, "hash embedder: %zu bytes of text", len);
  uint64_t prev = 0; /* hash of the previous token */
  for (size_t i = 0; i < len;) {
    if (!is_word(p[i])) {
      i++;
      continue;
    }
    size_t start = i;
    while (i < len && is_word(p[i])) i++;
    size_t tl = i - start;
    uint64_t h = fnv_lower(M3__FNV1A64_INIT, p + start, tl);
    feat[nf++] = h;
    if (ntok) {
      /* "t1 t2": fnv1a's state after t1 is t1's hash */
      uint64_t b = (prev ^ (uint64_t)' ') * M3__FNV1A64_PRIME;
      feat[nf++] = fnv_lower(b, p + start, tl);
    }
    ntok++;
    prev = h;
  }
  if (ntok == 0) {
    rc = m3__seterr(M3_EINVAL, "hash embedder: the text (%zu bytes) holds no word", len);
    goto out;
  }

  qsort(feat, nf, sizeof *feat, cmp_u64);
  for (size_t i = 0; i < nf;) {
    size_t j = i;
    while (j < nf && feat[j] == feat[i]) j++;
    uint64_t h = m3__fmix64(feat[i]);
    uint32_t bucket = (uint32_t)(h & 0xffffffffu) % dim;
    float w = (float)(1.0 + m3__ln_fixed((double)(j - i)));
    out[bucket] = (h >> 63) ? out[bucket] - w : out[bucket] + w;
    i = j;
  }
  double ss = 0.0;
  for (unsigned i = 0; i < dim; i++) ss = ss + (double)out[i] * (double)out[i];
  if (ss > 0.0) {
    double norm = sqrt(ss);
    for (unsigned i = 0; i < dim; i++) out[i] = (float)((double)out[i] / norm);
  }
out:
  free(feat);
  return rc;
}

int m3_embed_spec_parse(const char *s, m3_embed_spec *out) {
  memset(out, 0, sizeof *out);
  m3_embed_kind kind = M3_EMBED_NONE;
  const char *d = NULL;
  if (s && strncmp(s, "hash:", 5) == 0) kind = M3_EMBED_HASH, d = s + 5;
  else if (s && strncmp(s, "words:", 6) == 0) kind = M3_EMBED_WORDS, d = s + 6;
  if (kind == M3_EMBED_NONE)
    return m3__seterr(M3_EINVAL, "embedder '%s': expected 'words:DIM' or 'hash:DIM', e.g. words:1024",
                      s ? s : "(null)");
  char *end;
  unsigned long v = strtoul(d, &end, 10);
  if (end == d || *end || *d == '-' || *d == '+' || v == 0 || v > M3_EMBED_MAX_DIM)
    return m3__seterr(M3_EINVAL, "embedder '%s': DIM must be a number in 1..%d", s, M3_EMBED_MAX_DIM);
  out->kind = kind;
  out->dim = (unsigned)v;
  return 0;
}

char *m3_embed_spec_format(const m3_embed_spec *sp, char *buf, size_t cap) {
  if (sp->kind == M3_EMBED_HASH)
    snprintf(buf, cap, "hash:%u", sp->dim);
  else if (sp->kind == M3_EMBED_WORDS)
    snprintf(buf, cap, "words:%u", sp->dim);
  else
    snprintf(buf, cap, "none");
  return buf;
}

int m3_embed(const m3_embed_spec *sp, const char *text, size_t len, float *out) {
  if (sp->kind == M3_EMBED_HASH) return m3_embed_hash(text, len, out, sp->dim);
  if (sp->kind == M3_EMBED_WORDS) return m3_embed_words(text, len, sp->idf, out, sp->dim);
  return m3__seterr(M3_EINVAL, "embedder kind %d is not built in", (int)sp->kind);
}
