/*
 * The reference worker: a greedy decoder for the Llama-family models
 * m3-encode loads (every layer, model.norm, lm_head, a KV cache, a batch of
 * sequences), whose memory layers attend to a retrieval round's memories,
 * and the loop that retrieves them every 64 tokens through libm3client.
 *
 * Workload: a batch of B sequences decoded in lockstep, one token per
 * sequence per step (prompt tokens are fed one per step too), so that every
 * sequence reaches context index i at the same step and the 64-token
 * windows of the whole batch end together: one retrieval round per window
 * for the batch (Memory3: B 32, k 5).
 *
 * ---- The step (m3_decoder_step) -----------------------------------------
 *
 * Per sequence, the token at context index i (0-based), through every layer
 * (Llama block, pre-norm, GQA, RoPE rotate_half):
 *   x = embed(token)
 *   per layer l: xn = RMSNorm(x) w_in; q, k, v = xn Wq^T, xn Wk^T, xn Wv^T
 *     k and v go to the cache at i, k rotated at pos_offset + i
 *     attention of q (rotated at pos_offset + i) over the cache 0..i, and,
 *     in a memory layer (l < m3_model_mem_layers) when the step has
 *     memories, over the round's memory slots of the same KV head in the
 *     SAME softmax, exactly as m3/attn.h specifies (m3_attn_ref): a slot's
 *     logit is (R(pos_offset + i - mem_base) q) . K_mem / sqrt(D), -inf for
 *     an empty slot (pos < 0); memory keys are used as stored (rotated at
 *     their position inside their chunk)
 *     x += att Wo^T; x += (SiLU(RMSNorm(x) w_post Wg^T) * (... Wu^T)) Wd^T
 *   logits = RMSNorm(x) w_norm lm_head^T
 * pos_offset is M3_ATTN_MEM_SPAN (128) for a decode with memories (the
 * context follows the memories' interval: parallel position encoding) and
 * 0 for a plain decode. RoPE is relative, so with every slot empty the two
 * give the same logits up to rounding (tested).
 *
 * Memories come as a round's attention buffers (m3/attn.h): host f32,
 * dense query-major geometry with Q = max_batch, the model's memory layers,
 * KV heads and head_dim, and opts.mem_slots = k * T slots.
 *
 * ---- The loop (m3_generate) ---------------------------------------------
 *
 * Steps i = 0 .. max(prompt len) + n_new - 2. Sequence s feeds its prompt
 * token i while i < len_s, else the token it generated at step i - 1
 * (greedy argmax, lowest id on ties; EOS does not stop it: every sequence
 * generates exactly n_new tokens, and once it has them it feeds its last
 * token until the batch is done, its outputs discarded).
 *
 * With memories, window w is context indices [64w, 64w + 64). When the
 * window's last token (index 64w + 63) is known, at the start of that step,
 * the round for the window is submitted (m3_cluster_retrieve_async, one op
 * for the batch): query s = the text of sequence s's 64 tokens
 * (m3_tokenizer_decode), embedded by the server, or the hidden-state
 * embedding of those tokens (m3_generate_opts.query_fwd); k memories each, decoded
 * by m3_attn_memory_fn straight into the "next" attention buffers as they
 * arrive. Step 64w + 63 runs meanwhile with the current memories; step
 * 64(w + 1) waits for the op (that wait is the round's stall), closes the
 * round (m3_attn_finish) and swaps the buffers: window w + 1 attends to the
 * memories retrieved for window w. Window 0 has none. A round that failed
 * leaves its slots empty (counted, the decode goes on). k 0: no rounds, but
 * the memory path (pos_offset 128, every slot empty).
 *
 * Ownership: m3_decoder borrows its model (it must outlive the decoder);
 * m3_generate borrows everything in its opts for the call and fills a
 * result the caller frees with m3_generate_result_free. Not thread-safe per
 * decoder.
 */
#ifndef M3_DECODE_H
#define M3_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "m3/attn.h"
#include "m3/cluster.h"
#include "m3/codec.h"
#include "m3/forward.h"
#include "m3/model.h"
#include "m3/tokenizer.h"

#define M3_DECODE_WINDOW 64

/* ---- the decoder and its backends ----------------------------------- */

typedef struct m3_decode_opts {
  const char *backend; /* "cpu", "cuda", or NULL/"auto": CUDA when compiled
                          in and a device is present, else CPU */
  int max_batch;       /* sequences per step (8) */
  int max_ctx;         /* context tokens per sequence: the cache (1024) */
  int mem_slots;       /* S = k * T memory slots per KV head; 0: none */
} m3_decode_opts;

/* One step of n_seq sequences; pointers borrowed for the call. */
typedef struct m3_decode_step {
  int n_seq;              /* 1..max_batch */
  int ctx;                /* context index i of this step's tokens (0: the
                             cache restarts) */
  int pos_offset;         /* rotary position of index i: pos_offset + i */
  const int32_t *tokens;  /* (n_seq) */
  /* A round's buffers (geometry above), or NULL: no memory attention. */
  const float *mem_kv;
  const int32_t *mem_pos;
  int32_t mem_base;       /* the memories' interval start (0) */
  uint64_t mem_version;   /* changes (from 0) whenever the buffers hold a
                             new round: a device backend uploads them then */
  float *logits;          /* (n_seq, vocab) out */
} m3_decode_step;

/* The backend table: load prepares a state (weights, the cache, buffers);
 * step runs one step without allocating; free releases it. The CPU backend
 * is the reference the others are tested against. load returns
 * M3_EUNSUPPORTED when the backend cannot run here (no GPU). */
typedef struct m3_decode_backend {
  const char *name;
  int (*load)(const m3_model *m, const m3_decode_opts *opts, void **state);
  int (*step)(void *state, const m3_decode_step *s);
  void (*free)(void *state);
} m3_decode_backend;

/* NULL when m3 was built without CUDA. */
const m3_decode_backend *m3_decode_backend_cuda(void);

typedef struct m3_decoder m3_decoder;

/* A decoder for m (opened with m3_model_opts.all_layers: M3_EINVAL
 * otherwise). *out is freed with m3_decoder_destroy. */
int m3_decoder_create(const m3_model *m, const m3_decode_opts *opts, m3_decoder **out);
void m3_decoder_destroy(m3_decoder *d); /* NULL: nothing */

/* One step. M3_EINVAL for a step that does not fit (n_seq, ctx beyond
 * max_ctx, a token outside the vocab: the message names sequence and
 * token; memories given to a decoder made without mem_slots). */
int m3_decoder_step(m3_decoder *d, const m3_decode_step *s);

const char *m3_decoder_backend_name(const m3_decoder *d);
int m3_decoder_vocab(const m3_decoder *d); /* logits per sequence */
m3_decode_opts m3_decoder_get_opts(const m3_decoder *d);
/* The attention-buffer geometry memories must have (f32, query-major,
 * Q = max_batch, k memories of T tokens: k * T == mem_slots). */
int m3_decoder_mem_geom(const m3_decoder *d, uint32_t k, m3_attn_geom *g);

/* ---- the loop --------------------------------------------------------- */

typedef struct m3_generate_opts {
  int n_new;               /* tokens each sequence generates (>= 1) */
  int memory;              /* 1: memory attention and rounds; 0: plain */
  uint32_t k;              /* memories per sequence and round (5); 0: the
                              memory path without rounds */
  int32_t mem_base;        /* (0) */
  m3_cluster *cl;          /* rounds go here (memory with k > 0) */
  const m3_codec_set *codecs; /* decodes the records (memory with k > 0) */
  m3_tokenizer *tok;       /* the window texts (memory with k > 0) */
  /* Hidden-state queries (a store encoded with m3-encode --embed
   * hidden:LAYER). query_fwd NULL: text queries. Else query s is the
   * embedding m3-encode stores for a chunk whose tokens are the window's:
   * query_fwd (made with m3_forward_opts.hidden = query_hidden and
   * hidden_layer = LAYER, backend "cpu", max_batch >= n_seq, max_seq >=
   * n_query_prefix + 64) runs over query_prefix (BOS + the prefix ids, as
   * m3_seq_tokens writes them) + the window's 64 tokens with BOS ids left
   * out (as the window text leaves them out), n_prefix = n_query_prefix,
   * and row s of query_hidden (query_dim = hidden_size floats) is sent as
   * the vector. The forward runs on the loop's thread at submission (its
   * time: m3_generate_round.query_ms). */
  m3_forward *query_fwd;
  const float *query_hidden;
  int query_dim;
  const int32_t *query_prefix;
  int n_query_prefix;
} m3_generate_opts;

/* What one round took (ms) and got. */
typedef struct m3_generate_round {
  int window;              /* the window it was retrieved for */
  double query_ms;         /* computing the queries (hidden: the forward) */
  double retrieve_ms;      /* submission to the op's done callback */
  double decode_ms;        /* time inside m3_attn_memory_fn (decoding
                              records into the buffers) */
  double stall_ms;         /* how long the loop waited for it */
  int rc;                  /* the op's result (0: ok) */
  m3_attn_stats stats;
  uint64_t *ids;           /* (n_seq, k); UINT64_MAX: empty */
} m3_generate_round;

typedef struct m3_generate_result {
  int n_seq, n_new;
  uint32_t k;
  int32_t *tokens;         /* (n_seq, n_new) generated ids */
  int n_steps;             /* decode steps run */
  double wall_s;           /* the whole loop */
  double step_s;           /* of which in m3_decoder_step */
  int n_rounds;
  m3_generate_round *rounds;
} m3_generate_result;

/*
 * Decode n_seq prompts (prompt s: plen[s] >= 1 ids, BOS included when the
 * caller wants one) with d as described at the top. max(plen) + n_new - 1
 * must fit the decoder's max_ctx, n_seq its max_batch; with memory,
 * k * T must equal its mem_slots. A failed step stops with its code; a
 * failed round does not (see rounds[].rc). *res is the caller's to free
 * (m3_generate_result_free), also after an error.
 */
int m3_generate(m3_decoder *d, const int32_t *const *prompts, const int *plen, int n_seq,
                const m3_generate_opts *o, m3_generate_result *res);
void m3_generate_result_free(m3_generate_result *res);

/*
 * The trace of a result as JSON text (malloc'ed, caller frees; NULL when
 * out of memory), format "m3-decode-trace/1" (docs/WORKER.md):
 *   {"format": "m3-decode-trace/1", "memory": true, "k": 5, "window": 64,
 *    "sequences": [{"prompt": [ids], "tokens": [generated ids],
 *                   "windows": [{"window": 0, "ids": [chunk ids]}, ...]}]}
 * windows[].ids are the chunk ids retrieved at the end of that window (used
 * by the next one), best first, empty ranks left out.
 */
char *m3_generate_trace_json(const m3_generate_result *res, const int32_t *const *prompts,
                             const int *plen, int memory);

#endif /* M3_DECODE_H */
