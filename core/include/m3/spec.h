/*
 * The shape of one explicit memory and the codec that packs its vectors.
 *
 * A memory holds, for each memory layer and KV head, the keys and values of
 * n_tokens selected tokens, each a head_dim vector:
 *   K, V: (n_layers, 2 [K,V], n_kv_heads, n_tokens, head_dim)
 *   positions: (n_layers, n_kv_heads, n_tokens), the selected tokens' positions
 *   inside their chunk.
 * Memory3 (arXiv 2407.01178): 22 memory layers, 8 KV heads, 8 tokens, 80 dims,
 * i.e. 2,816 vectors per memory.
 */
#ifndef M3_SPEC_H
#define M3_SPEC_H

#include <stddef.h>
#include <stdint.h>

typedef struct m3_spec {
  uint16_t n_layers;   /* memory layers (Memory3: 22) */
  uint16_t n_kv_heads; /* KV heads per layer (8) */
  uint16_t n_tokens;   /* selected tokens per head (8) */
  uint16_t head_dim;   /* dims per vector (80) */
} m3_spec;

#define M3_SPEC_MEMORY3 ((m3_spec){22, 8, 8, 80})

/* How the vectors of a memory are coded. Raw kinds store the vectors
 * themselves; M3_CODEC_FAISS stores FAISS sa_encode codes. */
typedef enum m3_codec_kind {
  M3_CODEC_NONE = 0,     /* tombstones and other records without a payload */
  M3_CODEC_RAW_F32 = 1,
  M3_CODEC_RAW_F16 = 2,
  M3_CODEC_RAW_BF16 = 3,
  M3_CODEC_FAISS = 16,
  M3_CODEC_SYNTHETIC = 255, /* random codes written by m3-bench gen */
} m3_codec_kind;

/* What a store holds: every record in it has this shape and codec. The
 * fingerprint identifies the codebooks (m3/codec.h); records and the protocol
 * handshake carry it so that nobody decodes with the wrong codebook. */
typedef struct m3_layout {
  m3_spec spec;
  uint16_t codec_kind; /* m3_codec_kind */
  uint16_t code_bytes; /* bytes per coded vector (paper: 14; bf16: 2*head_dim) */
  uint64_t codec_fp;   /* codec fingerprint */
  uint16_t emb_dim;    /* dims of the retrieval embedding stored with each
                          memory (f32; 0: none) */
} m3_layout;

/* 2 * layers * heads * tokens: key and value vectors of one memory. */
size_t m3_spec_vectors(const m3_spec *s);
/* layers * heads * tokens: token positions of one memory. */
size_t m3_spec_positions(const m3_spec *s);
/* Bytes of one memory's positions section (u16 each, padded to 8). */
size_t m3_layout_positions_bytes(const m3_layout *l);
/* Bytes of one memory's codes section: vectors * code_bytes. */
size_t m3_layout_codes_bytes(const m3_layout *l);

/* 1 when a and b describe the same memories (every field equal). */
int m3_layout_equal(const m3_layout *a, const m3_layout *b);

/* 0 when every dimension is non-zero and the layout is self-consistent;
 * M3_EINVAL with a message naming the field otherwise. */
int m3_layout_check(const m3_layout *l);

/* Parse "memory3" or "LxHxTxD" (e.g. "22x8x8x80"). Returns 0 or M3_EINVAL. */
int m3_spec_parse(const char *s, m3_spec *out);

/* "22x8x8x80" into buf. Returns buf. */
char *m3_spec_format(const m3_spec *s, char *buf, size_t cap);

/* Name of a codec kind ("raw-bf16", "faiss", ...), never NULL. */
const char *m3_codec_kind_name(int kind);

#endif /* M3_SPEC_H */
