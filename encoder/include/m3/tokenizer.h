/*
 * Tokenizers for the encoder: text -> token ids, exactly as the model's own
 * tokenizer produces them, so that the keys and values m3 stores are those
 * the model computes at inference.
 *
 * Formats (picked from the file's content, not its name):
 *   tokenizer.model   SentencePiece ModelProto (protobuf), model_type BPE
 *                     (Llama-2 and its descendants, byte_fallback) or UNIGRAM.
 *                     Normalization follows the file's normalizer_spec: the
 *                     precompiled character map (nmt_nfkc and friends, or
 *                     none for "identity"), add_dummy_prefix,
 *                     remove_extra_whitespaces, escape_whitespaces (U+2581).
 *   tokenizer.json    Hugging Face tokenizers, model.type "BPE" in the
 *                     Llama/Mistral layout: vocab + merges, byte_fallback,
 *                     normalizer Sequence[Prepend("▁"), Replace(" ", "▁")]
 *                     or a Metaspace pre-tokenizer.
 * Everything else (WORD/CHAR SentencePiece models, WordPiece/Unigram
 * tokenizer.json, ByteLevel (GPT-2) pre-tokenizers, Unicode normalizers in
 * tokenizer.json, ...) is refused at load with M3_EUNSUPPORTED and a message
 * naming the file and the field. docs/TOKENIZER.md has the details.
 *
 * Threads: a handle holds the scratch buffers that encode reuses, so one
 * handle is used by one thread at a time. m3_tokenizer_clone gives another
 * handle that shares the (immutable, reference-counted) vocabulary and has
 * its own scratch: one clone per worker thread. Every other call takes a
 * const handle and may run concurrently with anything but m3_tokenizer_free.
 */
#ifndef M3_TOKENIZER_H
#define M3_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct m3_tokenizer m3_tokenizer;

typedef enum m3_tokenizer_kind {
  M3_TOKENIZER_SPM_BPE = 1,     /* SentencePiece model_type=BPE */
  M3_TOKENIZER_SPM_UNIGRAM = 2, /* SentencePiece model_type=UNIGRAM */
  M3_TOKENIZER_HF_BPE = 3,      /* Hugging Face tokenizer.json, BPE */
} m3_tokenizer_kind;

/*
 * Load a tokenizer from path: a SentencePiece model file, a tokenizer.json,
 * or a model folder holding tokenizer.model (preferred: it is the reference
 * the Llama lineage was trained with) or tokenizer.json. The kind is told
 * from the content ('{' starts JSON, anything else is parsed as protobuf).
 * Errors: M3_ENOTFOUND / M3_EIO (cannot open or read), M3_EBADFORMAT
 * (truncated or malformed protobuf, bad JSON with line and column, missing
 * or inconsistent fields), M3_EUNSUPPORTED (a model type or option m3 does
 * not implement); m3_errmsg() names the file and what is wrong.
 * On success *out is owned by the caller: m3_tokenizer_free.
 */
int m3_tokenizer_load(const char *path, m3_tokenizer **out);

/* The same from a file's bytes in memory (data, len bytes, copied; name is
 * what messages call the file). */
int m3_tokenizer_load_mem(const char *name, const void *data, size_t len,
                          m3_tokenizer **out);

/*
 * Another handle on the same vocabulary with its own scratch (cheap: no copy
 * of the vocabulary). *out is owned by the caller: m3_tokenizer_free. Both
 * handles stay valid independently.
 */
int m3_tokenizer_clone(const m3_tokenizer *tok, m3_tokenizer **out);

/* Release a handle (the vocabulary when its last handle goes). NULL: no-op. */
void m3_tokenizer_free(m3_tokenizer *tok);

/*
 * Encode text (len bytes, UTF-8; invalid bytes are treated as SentencePiece
 * does: each becomes U+FFFD) into ids[0..cap). With add_bos, the BOS id
 * comes first (when the tokenizer has one). *n receives the number of ids
 * of the whole encoding; when it exceeds cap, the first cap ids are written
 * and M3_ERANGE is returned, so a caller can size ids and retry.
 * No allocation except growing the handle's scratch to the longest text
 * seen so far (M3_ENOMEM when that fails). Not thread-safe on one handle.
 */
int m3_tokenizer_encode(m3_tokenizer *tok, const char *text, size_t len,
                        int add_bos, int32_t *ids, size_t cap, size_t *n);

/*
 * Decode ids back into text (for debugging and tests): pieces are
 * concatenated, U+2581 becomes a space, the dummy prefix space is dropped,
 * <0xNN> byte pieces are reassembled (invalid sequences become U+FFFD),
 * control ids (BOS, EOS, PAD) give nothing and the unknown id gives the
 * SentencePiece unk surface " ⁇ ". Writes at most cap bytes including a
 * terminating NUL; *len receives the decoded length without the NUL. When
 * cap is too small: M3_ERANGE (buf holds a truncated, terminated prefix when
 * cap > 0). An id outside the vocabulary: M3_ERANGE with a message.
 */
int m3_tokenizer_decode(const m3_tokenizer *tok, const int32_t *ids, size_t n,
                        char *buf, size_t cap, size_t *len);

/* The piece of an id as stored in the vocabulary ("▁the", "<0x0A>", "<s>"),
 * NUL-terminated, owned by the tokenizer; NULL when id is out of range. */
const char *m3_tokenizer_id_to_piece(const m3_tokenizer *tok, int32_t id);

/* The id of a piece (exact bytes), or -1 when the vocabulary lacks it. */
int32_t m3_tokenizer_piece_to_id(const m3_tokenizer *tok, const char *piece);

/* Score of a piece (SentencePiece score; -merge rank for tokenizer.json
 * pieces that a merge produces, 0 otherwise); 0 when id is out of range. */
float m3_tokenizer_score(const m3_tokenizer *tok, int32_t id);

/* Special ids; -1 when the tokenizer has none. */
int32_t m3_tokenizer_bos_id(const m3_tokenizer *tok);
int32_t m3_tokenizer_eos_id(const m3_tokenizer *tok);
int32_t m3_tokenizer_unk_id(const m3_tokenizer *tok);
int32_t m3_tokenizer_pad_id(const m3_tokenizer *tok);

/* Number of ids: every id in [0, vocab_size) has a piece. */
size_t m3_tokenizer_vocab_size(const m3_tokenizer *tok);

m3_tokenizer_kind m3_tokenizer_get_kind(const m3_tokenizer *tok);

/* "spm-bpe", "spm-unigram", "hf-bpe"; never NULL. */
const char *m3_tokenizer_kind_name(m3_tokenizer_kind kind);

#endif /* M3_TOKENIZER_H */
