/*
 * Internals shared by the tokenizer files (tok_*.c):
 *   tok_common.c   load dispatch, handles, decode, accessors
 *   tok_trie.c     byte trie (vocabulary lookups, prefix walks)
 *   tok_spm.c      SentencePiece model file (protobuf-c) -> m3__tok_model
 *   tok_norm.c     SentencePiece normalizer (charsmap, whitespace)
 *   tok_bpe.c      SentencePiece BPE encoding
 *   tok_unigram.c  SentencePiece unigram (Viterbi) encoding
 *   tok_hf.c       tokenizer.json loading and Hugging Face BPE encoding
 *
 * The vocabulary (m3__tok_model) is immutable after load and shared by
 * every handle cloned from the first; a handle adds the scratch (m3__tok_scratch)
 * that one encode call works in.
 */
#ifndef M3_TOK_INT_H
#define M3_TOK_INT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "m3/tokenizer.h"

/* ---- byte trie --------------------------------------------------------- */

/* Nodes are numbered from 0 (the root); edges live in one open-addressing
 * hash keyed by (node, byte), so a step is O(1) and the trie costs about
 * 24 bytes per vocabulary byte. */
typedef struct m3__trie {
  int32_t *value;   /* (n_nodes) id stored at the node, -1 when none */
  uint32_t n_nodes, cap_nodes;
  uint64_t *ekey;   /* (cap_edges) (node << 8 | byte) + 1; 0 = empty slot */
  uint32_t *echild; /* (cap_edges) */
  uint32_t n_edges, cap_edges; /* cap_edges is a power of two */
} m3__trie;

void m3__trie_init(m3__trie *t);
void m3__trie_free(m3__trie *t);
/* Insert key -> value. *prev receives the value it replaced (-1 if none).
 * M3_ENOMEM on allocation failure. */
int m3__trie_insert(m3__trie *t, const char *key, size_t len, int32_t value,
                    int32_t *prev);
/* The value stored for key, or -1. */
int32_t m3__trie_get(const m3__trie *t, const char *key, size_t len);
/* Child of node by byte, or -1. */
int32_t m3__trie_step(const m3__trie *t, uint32_t node, uint8_t byte);
static inline int32_t m3__trie_value(const m3__trie *t, uint32_t node) {
  return t->value[node];
}
/* Longest key that is a prefix of s[0..len): its length (0 if none) and
 * value in *value. */
size_t m3__trie_longest(const m3__trie *t, const char *s, size_t len,
                        int32_t *value);

/* ---- vocabulary -------------------------------------------------------- */

/* SentencePiece piece types (ModelProto.SentencePiece.Type values). */
enum {
  M3__PIECE_NORMAL = 1,
  M3__PIECE_UNKNOWN = 2,
  M3__PIECE_CONTROL = 3,
  M3__PIECE_USER = 4,
  M3__PIECE_UNUSED = 5,
  M3__PIECE_BYTE = 6,
};

/* HF BPE merge table entry: (left id, right id) -> (rank, merged id). */
typedef struct m3__merge {
  uint64_t key; /* ((uint64_t)left << 32 | right) + 1; 0 = empty slot */
  int32_t rank;
  int32_t id;
} m3__merge;

typedef struct m3__tok_model {
  atomic_int refs;
  m3_tokenizer_kind kind;
  char *path;

  /* pieces: id -> bytes */
  uint32_t n_pieces;
  char **piece;        /* (n_pieces) NUL-terminated, into pool */
  uint32_t *piece_len; /* (n_pieces) bytes */
  float *score;        /* (n_pieces) */
  uint8_t *type;       /* (n_pieces) M3__PIECE_* */
  char *pool;

  /* SentencePiece splits its vocabulary like its ModelInterface does:
   * `pieces` holds NORMAL, USER_DEFINED and UNUSED pieces (what encoding
   * may produce), `reserved` the CONTROL, UNKNOWN and BYTE ones, and `user`
   * only the USER_DEFINED ones (matched whole, before normalization).
   * tokenizer.json puts its whole vocabulary in `pieces`. */
  m3__trie pieces, reserved, user;
  int has_user;

  int32_t byte_id[256]; /* <0xNN> pieces; -1 where missing */
  int32_t unk, bos, eos, pad;
  int byte_fallback;
  float min_score, max_score; /* over NORMAL pieces (unigram) */
  int has_unused;
  uint32_t max_piece_len;

  /* SentencePiece normalizer */
  int add_dummy_prefix, remove_extra_ws, escape_ws;
  uint32_t *cm_units;  /* darts-clone double array (host order), or NULL */
  size_t cm_n_units;
  char *cm_norm;       /* replacement strings, NUL-separated */
  size_t cm_norm_len;

  /* tokenizer.json */
  m3__merge *merges;   /* (merge_cap) hash, merge_cap a power of two */
  size_t merge_cap, n_merges;
  int hf_prepend;      /* Prepend("▁") normalizer / Metaspace prepend */
  int hf_prepend_if_missing; /* Metaspace: only when text lacks a leading ▁ */
  int hf_replace_space;/* Replace(" ", "▁") / Metaspace */
  int hf_split;        /* Metaspace split=true: words start at each ▁ */
  int hf_fuse_unk;
  int hf_ignore_merges;
} m3__tok_model;

/* One segment of an encoding: bytes [off, off+len) of the normalized text
 * and the id chosen for them (unk ids are expanded to bytes afterwards). */
typedef struct m3__tok_seg {
  uint32_t off, len;
  int32_t id;
} m3__tok_seg;

/* Scratch that one encode call works in, grown to the longest text seen. */
typedef struct m3__tok_scratch {
  char *norm;          /* normalized text */
  size_t norm_cap;
  m3__tok_seg *seg;    /* model output */
  size_t seg_cap;
  void *work;          /* algorithm workspace (symbols, heap, lattice) */
  size_t work_cap;
} m3__tok_scratch;

struct m3_tokenizer {
  m3__tok_model *m;
  m3__tok_scratch s;
};

/* Grow a scratch buffer to hold at least need bytes (tok_model.c). */
int m3__tok_reserve(void **buf, size_t *cap, size_t need);

/* Length of the UTF-8 sequence starting with byte c, as SentencePiece's
 * OneCharLen (1 for stray continuation bytes). */
static inline size_t m3__utf8_len(uint8_t c) {
  static const uint8_t tbl[16] = {1, 1, 1, 1, 1, 1, 1, 1,
                                  1, 1, 1, 1, 2, 2, 3, 4};
  return tbl[c >> 4];
}

/* The value of hex digit c, or -1 (the NN of a <0xNN> byte piece). */
static inline int m3__tok_hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

/* Model helpers (tok_model.c). */
m3__tok_model *m3__tok_model_new(const char *path);
void m3__tok_model_unref(m3__tok_model *m);
/* Allocate the id arrays and pool for n pieces totalling pool_bytes bytes
 * (NULs excluded). */
int m3__tok_model_alloc(m3__tok_model *m, uint32_t n, size_t pool_bytes);
/* Set piece id (bytes copied into the pool, in id order). */
void m3__tok_model_set(m3__tok_model *m, uint32_t id, const char *p,
                       size_t len, float score, int type, size_t *pool_off);
/* Fill byte_id from <0xNN> pieces of type M3__PIECE_BYTE (spm) or any type
 * (hf: any_type != 0). */
void m3__tok_model_find_bytes(m3__tok_model *m, int any_type);
/* The id of piece (reserved pieces first), or -1. */
int32_t m3__tok_model_piece_id(const m3__tok_model *m, const char *piece);

/* Loaders: the file's bytes are in data[0..len). */
int m3__tok_load_spm(m3__tok_model *m, const uint8_t *data, size_t len);
int m3__tok_load_hf(m3__tok_model *m, const char *data, size_t len);

/* SentencePiece: normalize text into s->norm; *nlen receives its length. */
int m3__spm_normalize(const m3__tok_model *m, m3__tok_scratch *s,
                      const char *text, size_t len, size_t *nlen);
/* Segment the normalized text into s->seg; *nseg receives the count. */
int m3__spm_bpe_encode(const m3__tok_model *m, m3__tok_scratch *s,
                       size_t nlen, size_t *nseg);
int m3__spm_unigram_encode(const m3__tok_model *m, m3__tok_scratch *s,
                           size_t nlen, size_t *nseg);
/* tokenizer.json: normalize and encode text into s->seg (unk and byte
 * fallback already resolved: every seg id is final). */
int m3__hf_encode(const m3__tok_model *m, m3__tok_scratch *s,
                  const char *text, size_t len, size_t *nseg);

#endif /* M3_TOK_INT_H */
