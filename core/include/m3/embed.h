/*
 * Built-in text embedders: text -> a dense retrieval vector, for queries that
 * arrive as text and for stores built without a neural embedder.
 *
 * "hash:DIM" is a lexical embedder (signed feature hashing of words and word
 * bigrams, sublinear term frequency, L2-normalized). It needs no model and
 * gives the same bits on every machine, so a store embedded with it at build
 * time and a server embedding queries with it agree exactly. It finds
 * passages that share words with the query; it knows nothing of meaning.
 *
 * The algorithm of m3_embed_hash, exactly (docs/INDEX.md repeats it):
 *  1. Tokens: maximal runs of word bytes, where a word byte is an ASCII
 *     letter or digit or any byte >= 0x80 (so UTF-8 words stay whole);
 *     every other byte separates. ASCII A-Z are lower-cased; nothing else
 *     is changed (no Unicode case folding or normalization).
 *  2. Features: each token t as the string "t", and each pair of adjacent
 *     tokens (t1, t2) as the string "t1 t2" (one space between).
 *  3. Hash: h = fmix64(fnv1a64(feature bytes)), where fnv1a64 starts at
 *     0xcbf29ce484222325 and for each byte does h ^= b; h *= 0x100000001b3,
 *     and fmix64 is MurmurHash3's finalizer (h ^= h >> 33; h *= 0xff51afd7ed558ccd;
 *     h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53; h ^= h >> 33).
 *     bucket = (h & 0xffffffff) % DIM; sign = +1 when bit 63 of h is 0, else -1.
 *  4. Weight: a feature occurring tf times in the text (features are told
 *     apart by their fnv1a64 value) adds sign * (1 + ln tf) to its bucket,
 *     once, as a float. Features are added in increasing order of fnv1a64
 *     value, so the float sums are the same everywhere; ln is computed by a
 *     fixed series of IEEE double operations, not by the C library.
 *  5. Each component is divided by the L2 norm (sqrt of the sum of squares
 *     in index order, in double) and rounded to float.
 */
#ifndef M3_EMBED_H
#define M3_EMBED_H

#include <stddef.h>

/* Largest dims of an embedding (the store's emb_dim is 16 bits). */
#define M3_EMBED_MAX_DIM 65535

/*
 * The hash embedding of text (len bytes, any content, NUL not special; text
 * may be NULL when len is 0) into out (dim floats, caller's buffer).
 * Returns 0; M3_EINVAL when dim is 0 or above M3_EMBED_MAX_DIM; M3_EINVAL
 * when the text holds no word at all (empty, or punctuation only): out is
 * then all zeros, which the index treats as "no embedding" (a bulk writer may
 * store it as such; a server should reject the query); M3_ENOMEM.
 */
int m3_embed_hash(const char *text, size_t len, float *out, unsigned dim);

/* A built-in embedder, as named in configuration: "hash:256". */
typedef enum m3_embed_kind {
  M3_EMBED_NONE = 0,
  M3_EMBED_HASH = 1,
} m3_embed_kind;

typedef struct m3_embed_spec {
  m3_embed_kind kind;
  unsigned dim;
} m3_embed_spec;

/* Parse "hash:DIM" (DIM 1..M3_EMBED_MAX_DIM). 0 or M3_EINVAL naming what is
 * wrong. */
int m3_embed_spec_parse(const char *s, m3_embed_spec *out);

/* "hash:256" into buf (cap bytes); returns buf. */
char *m3_embed_spec_format(const m3_embed_spec *sp, char *buf, size_t cap);

/* Embed text with the embedder sp names (out: sp->dim floats); as
 * m3_embed_hash. */
int m3_embed(const m3_embed_spec *sp, const char *text, size_t len, float *out);

#endif /* M3_EMBED_H */
