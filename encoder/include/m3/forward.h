/*
 * The forward pass of a model's memory layers and Memory3 token selection:
 * from batches of token sequences (reference chunks with their prefix) to
 * explicit memories, the keys and values of the selected tokens.
 *
 * Workload: chunks of at most 128 tokens ("<s>Reference:" + text), batched
 * by the encoder, through the first half of the layers of the model.
 *
 * Per memory layer l, for every sequence (Llama block, pre-norm):
 *   xn = RMSNorm(x) * w_in
 *   q, k, v = xn Wq^T, xn Wk^T, xn Wv^T           (GQA: Hkv KV heads)
 *   selection (see below) from q, k before rotary, no causal mask
 *   qr, kr = RoPE(q), RoPE(k) at the token's position in the chunk
 *   stored memory: kr and v of the selected tokens
 *   if another memory layer follows (the last one needs no output):
 *     x += softmax_causal(qr kr^T / sqrt(D)) v Wo^T
 *     x += (SiLU(RMSNorm(x) * w_post Wg^T) * (... Wu^T)) Wd^T
 *
 * Token selection, per KV head g of each memory layer (paper, section 3):
 *   w_j = sum_{h in group(g)} sum_{i valid} exp(q_{h,i} . k_{g,j} / sqrt(D))
 * over the sequence's valid (non-padding) tokens i, with q and k before
 * rotary; tokens j < n_prefix (BOS + "Reference:") and padding are never
 * chosen; the n_tokens highest w_j are kept (ties: lower position first)
 * and stored in position order. It is computed as
 *   log w_j = m_j + log sum_{h,i} exp(s_hij - m_j),  m_j = max_{h,i} s_hij
 * so nothing overflows and the ranking is that of w_j.
 *
 * Output of one sequence (the record layout of m3/record.h, f32 before any
 * codec): positions u16 (n_mem_layers, n_kv_heads, n_tokens);
 * kv f32 (n_mem_layers, 2 [K, V], n_kv_heads, n_tokens, head_dim). When a
 * sequence has fewer than n_tokens selectable tokens the remaining slots
 * hold position M3_POS_NONE and zero vectors (n_selected says how many are
 * real).
 */
#ifndef M3_FORWARD_H
#define M3_FORWARD_H

#include <stddef.h>
#include <stdint.h>

#include "m3/model.h"
#include "m3/spec.h"

#define M3_POS_NONE 0xFFFFu
/* Longest sequence the selection handles (its per-column sums live on the
 * stack); chunks are <= 128 tokens. */
#define M3_SELECT_MAX_LEN 4096

typedef struct m3_forward_opts {
  const char *backend; /* "cpu", "cuda", or NULL/"auto": CUDA when compiled
                          in and a device is present, else CPU */
  int max_batch;       /* sequences per call (default 8) */
  int max_seq;         /* padded sequence length (default 128, at most
                          M3_SELECT_MAX_LEN) */
  int n_tokens;        /* selected tokens per KV head (default 8) */
  /* Pooled hidden states, for retrieval embeddings from the model's own
   * features (m3-encode --embed hidden:LAYER). NULL: none. Else a
   * caller-owned (max_batch, hidden_size) f32 buffer, which must outlive the
   * runner, that every m3_forward_run fills: row s = the mean over the chunk
   * tokens [n_prefix, len) of sequence s (all its valid tokens when it has
   * none) of the residual stream entering memory layer hidden_layer, i.e.
   * Hugging Face hidden_states[hidden_layer] (0: the token embeddings).
   * hidden_layer is 0..n_mem_layers-1 (else m3_forward_run: M3_EINVAL).
   * Only the CPU backend fills it: ask for backend "cpu". */
  float *hidden;
  int hidden_layer;
} m3_forward_opts;

/* One batch. Sequences are right-padded to seq_len; pointers are borrowed
 * for the duration of the call. */
typedef struct m3_batch {
  int n_seq;              /* 1..max_batch */
  int seq_len;            /* 1..max_seq: the row stride of tokens */
  const int32_t *tokens;  /* (n_seq, seq_len); ids of padding are ignored */
  const int32_t *lens;    /* (n_seq): valid tokens, 1..seq_len */
  const int32_t *n_prefix; /* (n_seq): leading BOS + prefix tokens, never
                              selected; NULL: 0 */
} m3_batch;

/* Where the memories go; caller-owned, sized for n_seq sequences. */
typedef struct m3_memories {
  uint16_t *positions;  /* (n_seq, L, Hkv, T) */
  float *kv;            /* (n_seq, L, 2, Hkv, T, D) */
  int32_t *n_selected;  /* (n_seq) selected tokens per head; may be NULL */
} m3_memories;

/*
 * The backend table. load prepares a state for model m (buffers for
 * opts->max_batch x opts->max_seq, weights uploaded, ...); forward runs one
 * batch without allocating; free releases the state. The CPU backend is
 * the reference every other one is tested against. load returns
 * M3_EUNSUPPORTED when the backend cannot run here (no GPU).
 */
typedef struct m3_backend {
  const char *name;
  int (*load)(const m3_model *m, const m3_forward_opts *opts, void **state);
  int (*forward)(void *state, const m3_batch *b, m3_memories *out);
  void (*free)(void *state);
} m3_backend;

const m3_backend *m3_backend_cpu(void);
/* NULL when m3 was built without CUDA. */
const m3_backend *m3_backend_cuda(void);

typedef struct m3_forward m3_forward;

/*
 * A forward runner for model m (borrowed: m must outlive it) with opts
 * (NULL: defaults). Allocates every buffer the forward needs. *out is owned
 * by the caller: m3_forward_destroy.
 */
int m3_forward_create(const m3_model *m, const m3_forward_opts *opts, m3_forward **out);
void m3_forward_destroy(m3_forward *f); /* NULL: nothing */

/*
 * Encode one batch into out. M3_EINVAL for a batch that does not fit the
 * opts (n_seq, seq_len, lens, n_prefix) or a token id outside the vocab
 * (the message names sequence and position). Not thread-safe per runner.
 */
int m3_forward_run(m3_forward *f, const m3_batch *b, m3_memories *out);

/* The backend in use ("cpu", "cuda"), the memory shape it produces, and the
 * options after defaults. */
const char *m3_forward_backend_name(const m3_forward *f);
m3_spec m3_forward_spec(const m3_forward *f);
m3_forward_opts m3_forward_get_opts(const m3_forward *f);

/* Floating-point operations one m3_forward_run of b does (GEMMs, attention
 * and selection scores; the work done on padding rows included). */
double m3_forward_flops(const m3_model *m, const m3_batch *b);

/* ---- selection primitives (also used by the backends) ---------------- */

/*
 * log w_j for one KV head of one sequence, j < len: q holds n_q_heads heads
 * at q + h * head_dim + i * ldq (token i), k at k + j * ldk, both before
 * rotary; len <= M3_SELECT_MAX_LEN. scratch (caller-owned) holds
 * n_q_heads * len * len floats.
 */
void m3_select_logw(const float *q, size_t ldq, int n_q_heads, const float *k, size_t ldk,
                    int len, int head_dim, float *scratch, double *logw);

/*
 * The top n_tokens of logw[n_skip..len) (ties: lower position first), in
 * position order, into pos[0..n_tokens); slots beyond the candidates get
 * M3_POS_NONE. len <= M3_SELECT_MAX_LEN. Returns how many were selected.
 */
int m3_select_topk(const double *logw, int len, int n_skip, int n_tokens, uint16_t *pos);

#endif /* M3_FORWARD_H */
