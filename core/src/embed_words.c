/*
 * The built-in lexical embedder "words:DIM" and its IDF table (m3/embed.h
 * has the contract and the idf.bin layout; docs/INDEX.md every step).
 * Workload: one query of a few hundred bytes per retrieval round on the
 * server, or every chunk of a knowledge base twice at build time (once to
 * count document frequencies, once to embed).
 *
 * Why these features: hash:DIM (words and word pairs, no weights) ranks by
 * shared words of any kind, so "the", "of" and "is" decide most rankings
 * and a query word that is rare in the store counts no more than a common
 * one. Here stop words go, IDF weights make a rare shared word count, a
 * plural matches its singular, and character 3/4-grams let a word match
 * its other forms ("caramelize" / "caramelization") at a quarter weight.
 *
 * Like embed_hash.c, every step is integer arithmetic or a fixed sequence
 * of IEEE float/double operations (compiled with -ffp-contract=off, ln by
 * m3__ln_fixed), so stores and servers on any machine agree bit for bit.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embed_int.h"
#include "m3/crc32c.h"
#include "m3/embed.h"
#include "m3/error.h"
#include "m3/internal/fsutil.h"
#include "m3/internal/hash.h"

#include <math.h>

#define NSLOT (1u << M3_IDF_SLOT_BITS)
#define IDF_HDR 32
#define IDF_FILE_BYTES ((size_t)IDF_HDR + 4u * NSLOT + 4u)
#define GRAM_MAX_WORD 32 /* longer words get no character n-grams */

/* Kind bytes: hashed first, so the three kinds never share a feature. */
#define KIND_WORD 'W'
#define KIND_PAIR 'B'
#define KIND_GRAM 'G'
static const double kind_weight[3] = {1.0, 0.5, 0.25}; /* W, B, G */

struct m3_idf {
  uint64_t n;  /* documents counted */
  uint32_t *df; /* (NSLOT) */
};

/* Sorted (byte order): m3_embed_words_is_stop searches it. */
static const char *const stop_words[] = {
    "a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any",
    "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both",
    "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each",
    "either", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her",
    "here", "hers", "herself", "him", "himself", "his", "how", "however", "i", "if", "in",
    "into", "is", "it", "its", "itself", "just", "may", "me", "might", "more", "most", "must",
    "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other",
    "others", "our", "ours", "ourselves", "out", "over", "own", "same", "she", "should",
    "since", "so", "some", "such", "than", "that", "the", "their", "theirs", "them",
    "themselves", "then", "there", "these", "they", "this", "those", "though", "through",
    "thus", "to", "too", "under", "until", "up", "upon", "us", "very", "was", "we", "were",
    "what", "when", "where", "whether", "which", "while", "who", "whom", "whose", "why", "will",
    "with", "within", "without", "would", "yet", "you", "your", "yours", "yourself",
    "yourselves",
};

int m3_embed_words_is_stop(const char *w, size_t n) {
  size_t lo = 0, hi = sizeof stop_words / sizeof *stop_words;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    const char *s = stop_words[mid];
    size_t sl = strlen(s);
    int c = memcmp(w, s, n < sl ? n : sl);
    if (c == 0) c = n < sl ? -1 : n > sl;
    if (c == 0) return 1;
    if (c < 0) hi = mid;
    else lo = mid + 1;
  }
  return 0;
}

static int is_word(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
}

static int is_ascii_word(const unsigned char *w, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (w[i] >= 0x80) return 0;
  return 1;
}

/* The plural rule of step 1 on w (n bytes, lower case; may rewrite the
 * end): the new length. */
static size_t stem(unsigned char *w, size_t n) {
  if (n < 4 || w[n - 1] != 's' || !is_ascii_word(w, n)) return n;
  if (n >= 5 && w[n - 3] == 'i' && w[n - 2] == 'e') {
    w[n - 3] = 'y';
    return n - 2;
  }
  if (n >= 5 && w[n - 4] == 's' && w[n - 3] == 's' && w[n - 2] == 'e') return n - 2;
  if (w[n - 2] == 's' || w[n - 2] == 'u' || w[n - 2] == 'i') return n;
  return n - 1;
}

typedef struct feat {
  uint64_t f; /* fnv1a64 of kind byte + feature bytes */
  int kind;   /* 0 W, 1 B, 2 G */
} feat;

typedef struct fvec {
  feat *v;
  size_t n, cap;
} fvec;

static int fvec_push(fvec *fv, uint64_t f, int kind) {
  if (fv->n == fv->cap) {
    size_t cap = fv->cap ? 2 * fv->cap : 256;
    feat *v = realloc(fv->v, cap * sizeof *v);
    if (!v) return m3__seterr(M3_ENOMEM, "words embedder: out of memory for features");
    fv->v = v, fv->cap = cap;
  }
  fv->v[fv->n++] = (feat){f, kind};
  return 0;
}

static uint64_t fnv_kind(unsigned char kind) { return m3__fnv1a64_add(M3__FNV1A64_INIT, &kind, 1); }

/* Every feature of text (steps 1 and 2) into fv; *nwords receives the kept
 * words. */
static int features(const char *text, size_t len, fvec *fv, size_t *nwords) {
  const unsigned char *p = (const unsigned char *)text;
  unsigned char *low = malloc(len + 1);
  if (!low) return m3__seterr(M3_ENOMEM, "words embedder: %zu bytes of text", len);
  for (size_t i = 0; i < len; i++) low[i] = p[i] >= 'A' && p[i] <= 'Z' ? (unsigned char)(p[i] + 32) : p[i];
  int rc = 0;
  size_t kept = 0;
  const unsigned char *prev = NULL;
  size_t prev_len = 0;
  for (size_t i = 0; i < len && rc == 0;) {
    if (!is_word(low[i])) {
      i++;
      continue;
    }
    size_t start = i;
    while (i < len && is_word(low[i])) i++;
    unsigned char *w = low + start;
    size_t n = i - start;
    if (n == 1 && w[0] >= 'a' && w[0] <= 'z') continue;
    if (m3_embed_words_is_stop((const char *)w, n)) continue;
    n = stem(w, n);
    kept++;
    rc = fvec_push(fv, m3__fnv1a64_add(fnv_kind(KIND_WORD), w, n), 0);
    if (rc == 0 && prev) {
      uint64_t h = m3__fnv1a64_add(fnv_kind(KIND_PAIR), prev, prev_len);
      h = m3__fnv1a64_add(h, " ", 1);
      rc = fvec_push(fv, m3__fnv1a64_add(h, w, n), 1);
    }
    if (rc == 0 && n <= GRAM_MAX_WORD) {
      unsigned char b[GRAM_MAX_WORD + 2];
      b[0] = '<';
      memcpy(b + 1, w, n);
      b[n + 1] = '>';
      size_t bl = n + 2;
      for (size_t g = 3; g <= 4 && rc == 0; g++)
        for (size_t s = 0; s + g <= bl && rc == 0; s++)
          rc = fvec_push(fv, m3__fnv1a64_add(fnv_kind(KIND_GRAM), b + s, g), 2);
    }
    prev = w, prev_len = n;
  }
  free(low);
  *nwords = kept;
  return rc;
}

static int cmp_feat(const void *a, const void *b) {
  const feat *x = a, *y = b;
  return x->f < y->f ? -1 : x->f > y->f;
}

static uint32_t slot_of(uint64_t h) { return (uint32_t)(h >> 32) & (NSLOT - 1); }

int m3_embed_words(const char *text, size_t len, const m3_idf *idf, float *out, unsigned dim) {
  if (dim == 0 || dim > M3_EMBED_MAX_DIM)
    return m3__seterr(M3_EINVAL, "words embedder: dim %u is not in 1..%d", dim, M3_EMBED_MAX_DIM);
  memset(out, 0, dim * sizeof *out);
  if (len && !text) return m3__seterr(M3_EINVAL, "words embedder: text is NULL");
  fvec fv = {0};
  size_t nwords = 0;
  int rc = features(text, len, &fv, &nwords);
  if (rc) goto out;
  if (nwords == 0) {
    rc = m3__seterr(M3_EINVAL, "words embedder: the text (%zu bytes) holds no word but stop words",
                    len);
    goto out;
  }
  qsort(fv.v, fv.n, sizeof *fv.v, cmp_feat);
  double n1 = idf ? (double)idf->n + 1.0 : 0.0;
  for (size_t i = 0; i < fv.n;) {
    size_t j = i;
    while (j < fv.n && fv.v[j].f == fv.v[i].f) j++;
    uint64_t h = m3__fmix64(fv.v[i].f);
    uint32_t bucket = (uint32_t)(h & 0xffffffffu) % dim;
    double w = kind_weight[fv.v[i].kind] * (1.0 + m3__ln_fixed((double)(j - i)));
    if (idf && idf->n) w = w * (1.0 + m3__ln_fixed(n1 / ((double)idf->df[slot_of(h)] + 1.0)));
    float fw = (float)w;
    out[bucket] = (h >> 63) ? out[bucket] - fw : out[bucket] + fw;
    i = j;
  }
  double ss = 0.0;
  for (unsigned i = 0; i < dim; i++) ss = ss + (double)out[i] * (double)out[i];
  if (ss > 0.0) {
    double norm = sqrt(ss);
    for (unsigned i = 0; i < dim; i++) out[i] = (float)((double)out[i] / norm);
  }
out:
  free(fv.v);
  return rc;
}

/* ---- the IDF table ------------------------------------------------------ */

int m3_idf_create(m3_idf **out) {
  *out = NULL;
  m3_idf *t = calloc(1, sizeof *t);
  if (t) t->df = calloc(NSLOT, sizeof *t->df);
  if (!t || !t->df) {
    free(t);
    return m3__seterr(M3_ENOMEM, "idf table: out of memory");
  }
  *out = t;
  return 0;
}

void m3_idf_free(m3_idf *t) {
  if (!t) return;
  free(t->df);
  free(t);
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

int m3_idf_add(m3_idf *t, const char *text, size_t len) {
  fvec fv = {0};
  size_t nwords = 0;
  uint32_t *slots = NULL;
  int rc = features(text, len, &fv, &nwords);
  if (rc) goto out;
  slots = malloc((fv.n ? fv.n : 1) * sizeof *slots);
  if (!slots) {
    rc = m3__seterr(M3_ENOMEM, "idf table: out of memory");
    goto out;
  }
  for (size_t i = 0; i < fv.n; i++) slots[i] = slot_of(m3__fmix64(fv.v[i].f));
  qsort(slots, fv.n, sizeof *slots, cmp_u32);
  for (size_t i = 0; i < fv.n; i++)
    if ((i == 0 || slots[i] != slots[i - 1]) && t->df[slots[i]] != UINT32_MAX) t->df[slots[i]]++;
  t->n++;
out:
  free(slots);
  free(fv.v);
  return rc;
}

uint64_t m3_idf_docs(const m3_idf *t) { return t->n; }

static void put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The file's bytes (IDF_FILE_BYTES, trailer included) into a new buffer. */
static uint8_t *serialize(const m3_idf *t) {
  uint8_t *b = malloc(IDF_FILE_BYTES);
  if (!b) return NULL;
  memset(b, 0, IDF_HDR);
  memcpy(b, "m3idf\0\0\0", 8);
  put32(b + 8, M3_IDF_FORMAT_VERSION);
  put32(b + 12, M3_WORDS_VERSION);
  put32(b + 16, M3_IDF_SLOT_BITS);
  put32(b + 24, (uint32_t)t->n);
  put32(b + 28, (uint32_t)(t->n >> 32));
  for (uint32_t i = 0; i < NSLOT; i++) put32(b + IDF_HDR + 4 * (size_t)i, t->df[i]);
  put32(b + IDF_FILE_BYTES - 4, m3_crc32c(0, b, IDF_FILE_BYTES - 4));
  return b;
}

uint32_t m3_idf_crc(const m3_idf *t) {
  uint8_t *b = serialize(t);
  if (!b) return 0;
  uint32_t c = get32(b + IDF_FILE_BYTES - 4);
  free(b);
  return c;
}

int m3_idf_save(const m3_idf *t, const char *path) {
  uint8_t *b = serialize(t);
  if (!b) return m3__seterr(M3_ENOMEM, "%s: out of memory", path);
  int rc = m3__fs_replace(path, b, IDF_FILE_BYTES);
  free(b);
  return rc;
}

int m3_idf_load(const char *path, m3_idf **out) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) {
    if (errno == ENOENT) return m3__seterr(M3_ENOTFOUND, "%s: no IDF table (m3-encode writes it)", path);
    return m3__seterr(M3_EIO, "%s: %s", path, strerror(errno));
  }
  uint8_t *b = malloc(IDF_FILE_BYTES + 1);
  m3_idf *t = NULL;
  int rc = 0;
  if (!b) {
    rc = m3__seterr(M3_ENOMEM, "%s: out of memory", path);
    goto out;
  }
  size_t n = fread(b, 1, IDF_FILE_BYTES + 1, f);
  if (ferror(f)) {
    rc = m3__seterr(M3_EIO, "%s: read failed", path);
    goto out;
  }
  if (n < IDF_HDR) {
    rc = m3__seterr(M3_ECORRUPT, "%s: %zu bytes, shorter than the IDF header", path, n);
    goto out;
  }
  if (memcmp(b, "m3idf\0\0\0", 8) != 0) {
    rc = m3__seterr(M3_EBADFORMAT, "%s: not an m3 IDF table (bad magic)", path);
    goto out;
  }
  uint32_t fmt = get32(b + 8), feats = get32(b + 12), bits = get32(b + 16);
  if (fmt != M3_IDF_FORMAT_VERSION || feats != M3_WORDS_VERSION || bits != M3_IDF_SLOT_BITS) {
    rc = m3__seterr(M3_EVERSION,
                    "%s: IDF format %u, words features version %u, %u slot bits; this build "
                    "reads format %d, version %d, %d bits (re-encode the store)",
                    path, fmt, feats, bits, M3_IDF_FORMAT_VERSION, M3_WORDS_VERSION, M3_IDF_SLOT_BITS);
    goto out;
  }
  if (n != IDF_FILE_BYTES) {
    rc = m3__seterr(M3_ECORRUPT, "%s: %s than an IDF table of %d slots (%zu bytes)", path,
                    n < IDF_FILE_BYTES ? "shorter" : "longer", (int)NSLOT, IDF_FILE_BYTES);
    goto out;
  }
  uint32_t want = get32(b + IDF_FILE_BYTES - 4), got = m3_crc32c(0, b, IDF_FILE_BYTES - 4);
  if (want != got) {
    rc = m3__seterr(M3_ECORRUPT, "%s: checksum mismatch (crc32c %08x stored, %08x computed)", path,
                    want, got);
    goto out;
  }
  if ((rc = m3_idf_create(&t)) != 0) goto out;
  t->n = (uint64_t)get32(b + 24) | (uint64_t)get32(b + 28) << 32;
  for (uint32_t i = 0; i < NSLOT; i++) {
    t->df[i] = get32(b + IDF_HDR + 4 * (size_t)i);
    if (t->df[i] > t->n) {
      rc = m3__seterr(M3_ECORRUPT, "%s: slot %u counts %u documents of %llu", path, i, t->df[i],
                      (unsigned long long)t->n);
      goto out;
    }
  }
  *out = t;
  t = NULL;
out:
  m3_idf_free(t);
  free(b);
  fclose(f);
  return rc;
}
