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

/*
 * "words:DIM" (m3-encode's default, words:1024): a better lexical embedder
 * for knowledge bases, deterministic in the same way as "hash:DIM" (same
 * word bytes, same FNV-1a + fmix64 hashing, fixed float order, fixed ln).
 * docs/INDEX.md ("The built-in embedder: words:DIM") gives every step; in
 * short, version 1 (M3_WORDS_VERSION):
 *  1. Tokens as hash:DIM (ASCII lower-cased). Dropped: single ASCII letters
 *     and the English stop words of m3_embed_words_is_stop (the, of, is ...).
 *     A plural s is stripped from ASCII words of 4+ bytes ("ies" -> "y",
 *     "sses" -> "ss", "s" unless after s, u or i).
 *  2. Features, told apart by a kind byte hashed first: the word (W, weight
 *     1), the pair of adjacent kept words (B, weight 0.5), and the character
 *     3- and 4-grams of "<word>" (G, weight 0.25 each; words up to 32 bytes).
 *  3. A feature's value: kind weight * (1 + ln tf) * idf, where
 *     idf = 1 + ln((N + 1) / (df + 1)) from the store's IDF table (N
 *     documents, df of the feature's slot), or 1 without a table.
 *  4. Bucket and sign of the value as hash:DIM; L2-normalized.
 */
#define M3_WORDS_VERSION 1

/*
 * An IDF table: document frequencies of words:DIM features, counted by slot
 * (2^M3_IDF_SLOT_BITS slots, bits 32.. of the feature's fmix64 hash; within
 * one document a slot counts once). Built by m3-encode from the whole input
 * before it stores anything (so every --slice computes the same table) and
 * saved beside the store as DIR/idf.bin; m3-server loads it so that query
 * embeddings match the stored ones. Read-only once built: any number of
 * threads may embed with one table.
 *
 * DIR/idf.bin, little-endian:
 *   0   8  magic "m3idf\0\0\0"
 *   8   4  format version (M3_IDF_FORMAT_VERSION)
 *  12   4  words features version (M3_WORDS_VERSION) the counts are of
 *  16   4  slot bits (M3_IDF_SLOT_BITS)
 *  20   4  0
 *  24   8  N, documents counted
 *  32  4S  df per slot (uint32, saturating)
 *  ..   4  CRC32C of every byte before it
 */
#define M3_IDF_FORMAT_VERSION 1
#define M3_IDF_SLOT_BITS 20
#define M3_IDF_FILE "idf.bin"

typedef struct m3_idf m3_idf;

/* An empty table (N = 0: every idf is 1). *out owned by the caller
 * (m3_idf_free). 0 or M3_ENOMEM. */
int m3_idf_create(m3_idf **out);
void m3_idf_free(m3_idf *t); /* NULL: nothing */

/* Count one document (text, len bytes): each of its words:DIM features'
 * slots once. A text with no kept word counts as a document too. 0 or
 * M3_ENOMEM. */
int m3_idf_add(m3_idf *t, const char *text, size_t len);

uint64_t m3_idf_docs(const m3_idf *t);
/* CRC32C of the table's file bytes (what m3_idf_save writes before its
 * trailer): equal tables, equal CRCs. */
uint32_t m3_idf_crc(const m3_idf *t);

/* Write the table to path durably (temp file, fsync, rename). 0 or an m3
 * code. */
int m3_idf_save(const m3_idf *t, const char *path);

/* Read a table saved by m3_idf_save. *out owned by the caller. M3_ENOTFOUND
 * (no such file), M3_ECORRUPT (size or CRC wrong), M3_EBADFORMAT (magic),
 * M3_EVERSION (another format or features version, other slot bits), M3_EIO;
 * each names the path. */
int m3_idf_load(const char *path, m3_idf **out);

/*
 * The words:DIM embedding of text into out (dim floats, caller's buffer),
 * weighted by idf (borrowed; NULL: every idf 1). Returns 0; M3_EINVAL (out
 * all zeros) when dim is out of range or no word is left after the stop
 * words; M3_ENOMEM.
 */
int m3_embed_words(const char *text, size_t len, const m3_idf *idf, float *out, unsigned dim);

/* Whether the lower-case ASCII word w (n bytes) is one of words:DIM's stop
 * words. */
int m3_embed_words_is_stop(const char *w, size_t n);

/* A built-in embedder, as named in configuration: "hash:256", "words:1024". */
typedef enum m3_embed_kind {
  M3_EMBED_NONE = 0,
  M3_EMBED_HASH = 1,
  M3_EMBED_WORDS = 2,
} m3_embed_kind;

typedef struct m3_embed_spec {
  m3_embed_kind kind;
  unsigned dim;
  const m3_idf *idf; /* words: the store's table (borrowed; NULL: idf 1) */
} m3_embed_spec;

/* Parse "hash:DIM" or "words:DIM" (DIM 1..M3_EMBED_MAX_DIM); idf is set to
 * NULL. 0 or M3_EINVAL naming what is wrong. */
int m3_embed_spec_parse(const char *s, m3_embed_spec *out);

/* "hash:256" / "words:1024" into buf (cap bytes); returns buf. */
char *m3_embed_spec_format(const m3_embed_spec *sp, char *buf, size_t cap);

/* Embed text with the embedder sp names (out: sp->dim floats); as
 * m3_embed_hash or m3_embed_words (with sp->idf). */
int m3_embed(const m3_embed_spec *sp, const char *text, size_t len, float *out);

#endif /* M3_EMBED_H */
