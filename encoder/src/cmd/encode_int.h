/*
 * Internal interface of the m3-encode command (encoder/src/cmd/): the input
 * reader that turns a knowledge base into token sequences, the BPE trainer
 * of `m3-encode test-model`, and small helpers shared by the subcommands.
 * Nothing here is public API; docs/ENCODER.md ("m3-encode") describes the
 * behaviour users see.
 */
#ifndef M3_ENCODE_INT_H
#define M3_ENCODE_INT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "m3/tokenizer.h"

/* ---- input ------------------------------------------------------------- */

/*
 * One reference chunk, ready for the forward pass: tokens is the chunk's
 * sequence (m3/sequence.h: [BOS] + tokenize(prefix) + tokenize(text)),
 * n_prefix its leading BOS + prefix tokens (never selected). Every buffer
 * is owned by the chunk: enc_chunk_free.
 */
typedef struct enc_chunk {
  uint64_t id;
  char *text;          /* NUL-terminated, text_len bytes */
  size_t text_len;
  int32_t *tokens;     /* (n_tokens) */
  int n_tokens;
  int n_prefix;
  float *emb;          /* external embedding (emb_dim) or NULL */
  const char *src;     /* input file (owned by the reader) */
  long line;           /* JSONL line, or the paragraph's first line */
  int part;            /* index of this piece of a split line / paragraph */
} enc_chunk;

void enc_chunk_free(enc_chunk *c);

typedef enum enc_id_scheme {
  ENC_ID_HASH = 0,      /* hash of (file name, line, part) */
  ENC_ID_SEQUENTIAL = 1 /* id_base + ordinal of the chunk in the input */
} enc_id_scheme;

/* What happens to a text longer than the token budget (--long-chunks). */
typedef enum enc_long_policy {
  ENC_LONG_SPLIT = 0,    /* cut into pieces that fit, each its own chunk (default) */
  ENC_LONG_TRUNCATE = 1, /* keep the first piece that fits, drop the rest */
  ENC_LONG_FAIL = 2      /* the line is bad input */
} enc_long_policy;

/* The id of piece `part` (>= 1) of a split chunk whose line gave the
 * explicit id N: bit 63 set, N in bits 16..62, part in bits 0..15. A JSON
 * "id" is below 2^63, so a piece never takes another line's id; N < 2^47 and
 * part < 2^16 are required of a line that is split. */
#define ENC_PIECE_ID(n, part) ((1ull << 63) | ((uint64_t)(n) << 16) | (uint64_t)(part))
#define ENC_PIECE_MAX_N ((1ull << 47) - 1)
#define ENC_PIECE_MAX_PART 65535

typedef struct enc_input_opts {
  const char *path;          /* a .jsonl file or a folder of .txt/.md */
  m3_tokenizer *tok;         /* borrowed; used by the reader's thread only */
  const char *prefix;        /* the reference prefix (borrowed; m3/sequence.h) */
  int max_tokens;            /* BOS + prefix + chunk tokens <= max_tokens */
  int external_emb;          /* 1: every JSONL line must carry "embedding" */
  unsigned emb_dim;          /* with external_emb: expected dims (0: the
                                first line's count sets it) */
  enc_id_scheme ids;
  uint64_t id_base;
  enc_long_policy long_chunks; /* texts over the budget (ENC_LONG_SPLIT) */
  int skip_bad;              /* 1: report bad lines and go on; 0: stop */
  FILE *report;              /* where skipped lines are listed (borrowed) */
  int sample_only;           /* train-codec: no embeddings, no id checks */
} enc_input_opts;

typedef struct enc_input enc_input;

/* Open the input (lists and sorts a folder's documents). *out is owned by
 * the caller: enc_input_close. Errors name the path. */
int enc_input_open(const enc_input_opts *o, enc_input **out);

/*
 * The next chunk in input order into *c (owned by the caller afterwards).
 * Returns 1, 0 at the end, or a negative m3 code with m3_errmsg() saying
 * "FILE:LINE: what is wrong" (with skip_bad only for failures that are not
 * the input's fault: I/O, memory).
 */
int enc_input_next(enc_input *in, enc_chunk *c);

/* Input bytes consumed so far and in all (for progress and ETA). */
void enc_input_progress(const enc_input *in, uint64_t *done, uint64_t *total);
/* Bad lines skipped so far (skip_bad). */
uint64_t enc_input_skipped(const enc_input *in);
/* Texts over the budget so far: split (into *pieces chunks in all) and
 * truncated. */
void enc_input_long_counts(const enc_input *in, uint64_t *split, uint64_t *pieces,
                           uint64_t *truncated);
/* Embedding dims seen (external_emb; 0 before the first). */
unsigned enc_input_emb_dim(const enc_input *in);
void enc_input_close(enc_input *in); /* NULL: nothing */

/* ---- BPE trainer (test-model) ----------------------------------------- */

typedef struct enc_bpe_opts {
  unsigned vocab_size;    /* total ids: 3 specials + 256 bytes + chars + merges */
  unsigned min_frequency; /* a pair merges only when seen this often (2) */
} enc_bpe_opts;

/*
 * Learn BPE merges from the text at corpus (len bytes; lines are
 * sentences) and write a Llama-style Hugging Face tokenizer.json to path:
 * ids 0..2 = <unk>, <s>, </s>; 3..258 = <0x00>..<0xFF> byte-fallback
 * pieces; then the corpus's most frequent characters and the merged pieces
 * in merge order; normalizer Prepend("▁") + Replace(" ", "▁"), BPE with
 * byte_fallback and fuse_unk. Words ("▁" + a run of non-space characters)
 * never merge across a "▁" boundary, as SentencePiece BPE. *n_vocab
 * receives the ids written (<= vocab_size). 0 or an m3 code.
 */
int enc_bpe_train(const char *corpus, size_t len, const enc_bpe_opts *o, const char *path,
                  unsigned *n_vocab);

/* ---- slices (encode_slice.c) ------------------------------------------ */

/*
 * --slice I/N: this run encodes the chunks whose m3_slice_of(id, N) == I
 * (m3/shard.h), into a partial store that `m3 store merge` joins with the
 * other slices'. "auto/N" takes I from $JOB_COMPLETION_INDEX, as a
 * Kubernetes Indexed Job sets it. Without --slice: slice 0 of 1 (all).
 */
typedef struct enc_slice {
  uint32_t i, n;
} enc_slice;

/* Parse "I/N" or "auto/N" (N in 1..65536, I < N). 0, or M3_EINVAL with a
 * message naming the argument or the environment variable. */
int enc_slice_parse(const char *arg, enc_slice *out);

/* Whether chunk id belongs to the slice. */
int enc_slice_has(const enc_slice *s, uint64_t id);

/*
 * Bind the store at dir to the slice and codec: writes DIR/slice.json on
 * first use; refuses (M3_EBADFORMAT, naming the file) a store made for
 * another slice, and any sibling partial store (another DIR/../X/slice.json
 * of the same N) made with another codec fingerprint, since every slice of
 * one knowledge base must share one codec.
 */
int enc_slice_claim(const char *dir, const enc_slice *s, uint64_t codec_fp);

/* ---- helpers ------------------------------------------------------------ */

/* Whole file into a malloc'd NUL-terminated buffer. 0 or an m3 code. */
int enc_read_file(const char *path, char **buf, size_t *len);
/* mkdir -p. */
int enc_mkdirs(const char *path);
double enc_now(void);

/* Subcommands (m3_encode.c dispatches). */
int enc_cmd_encode(int argc, char **argv);
int enc_cmd_train_codec(int argc, char **argv);
int enc_cmd_test_model(int argc, char **argv);

#endif /* M3_ENCODE_INT_H */
