/*
 * Attention buffers: a retrieval round's memories laid out as a worker's
 * memory attention reads them, decoded on the CPU into host buffers or on
 * the GPU into device buffers, as each memory arrives; and a reference of
 * memory attention (CPU and CUDA) to check a worker's integration against.
 *
 * Workload: every 64 generated tokens a worker with a batch of Q sequences
 * runs one retrieval round (Q queries x top-k, Memory3: 32 x 5), and the
 * memory layers of its next 64 tokens attend to those k memories per
 * sequence. A memory arrives as a record (m3/record.h) of codes; it is
 * decoded (m3/codec.h) straight into the slot range of its (query, rank).
 *
 * ---- Layout of a round's attention buffers ------------------------------
 *
 * Memory shape (m3_spec): L memory layers, H KV heads, T tokens, D head_dim
 * (Memory3: 22, 8, 8, 80). k memories per query. Slots S = k * T:
 *
 *   slot s = rank * T + t     rank 0..k-1 (0 = best), t = the token's index
 *                             in the memory (the record's token order)
 *
 * K/V buffer, elements of dtype (M3_DTYPE_F32 / F16 / BF16), dense default
 * ("query-major"):
 *
 *   kv   (Q, L, 2 [K,V], H, S, D)       K of layer l = kv[q][l][0]: [H][S][D]
 *   pos  (Q, L, H, S) int32             position of slot s's token
 *
 * Inside one (query, layer, K|V) the block [H][S][D] is always dense; the
 * strides between queries, layers and K->V are the geometry's
 * (m3_attn_geom), so a worker whose per-layer tensors are batched
 * (L, 2, Q, H, S, D) (m3_attn_geom_layer_major) gets them filled in place:
 * K of layer l for the whole batch is then a (Q, H, S, D) tensor.
 *
 *   element (q, l, kv, h, s, d) at  q * kv_query_stride + l * kv_layer_stride
 *                                   + kv * kv_kv_stride + (h * S + s) * D + d
 *   position (q, l, h, s)       at  q * pos_query_stride + l * pos_layer_stride
 *                                   + h * S + s
 *
 * Positions are what the record holds (the token's position in its encoded
 * chunk, BOS and prefix counted: docs/ENCODER.md; keys are stored AFTER
 * rotary at that position), widened to int32. Masking: a slot is EMPTY when
 * its position is M3_ATTN_POS_EMPTY (-1); its K and V are zeros. Empty are:
 *   - tokens the record marks M3_ATTN_POS_NONE (0xFFFF: a chunk with fewer
 *     selectable tokens than T);
 *   - every slot of a rank that got no memory in this round (the knowledge
 *     base holds fewer than k, the item failed, the record did not decode).
 * Zeros in K alone do not mask (a zero key still gets exp(0) weight): the
 * attention must give empty slots a logit of -inf, i.e. mask = (pos < 0).
 * m3_attn_ref does exactly that.
 *
 * ---- Memory attention (the reference, m3_attn_ref) ---------------------
 *
 * One query token x of context index i (0-based position in the worker's
 * sequence), one memory layer, query head h of n_heads, GQA group size
 * G = n_heads / n_kv_heads, KV head g = h / G, head_dim D, RoPE rotate_half
 * (pairs (j, j + D/2) turned by angle pos * theta^(-2j/D), HF Llama; the
 * encoder's rotation) written R(pos):
 *
 *   qc = R(q_pos) q_h               q_pos = M3_ATTN_MEM_SPAN + i (default)
 *   qm = R(q_pos - mem_base) q_h    mem_base = 0 (default)
 *   logit(mem slot s) = qm . K_mem[g][s] / sqrt(D)     if pos[g][s] >= 0
 *                     = -inf                           if pos[g][s] <  0
 *   logit(ctx key j)  = qc . K_ctx[g][j] / sqrt(D)     for j <= i (causal)
 *   p = softmax over ALL those logits together (ONE softmax: memory slots of
 *       all k memories and the causal context)
 *   out_h = sum_s p_s V_mem[g][s] + sum_j p_j V_ctx[g][j]
 *
 * Parallel position encoding: every memory token sits at mem_base + p, p its
 * stored position: all k memories share one position interval
 * [mem_base, mem_base + 128) (they are in parallel: reordering the memories
 * changes nothing), and the context follows that interval: context token i
 * has position M3_ATTN_MEM_SPAN + i (= 128 + i), for its query and for its
 * key in the worker's cache. A query at context index i is thus
 * 128 + i - p positions after memory token p (always > 0). Since
 * R(a) q . R(b) k = q . R(b - a) k, placing the interval elsewhere (mem_base)
 * only changes the query's rotation for memory keys: stored keys are used
 * as they are.
 *
 * What the paper leaves open (our choices): (1) where the context starts
 * relative to the memory interval: right after it (128 + i), as text after a
 * 128-token reference would be; (2) whether the interval stays at the start
 * of the sequence (mem_base 0, our default: late tokens see memories far
 * behind) or moves with each 64-token window (mem_base = the window's first
 * position - 128, memories just before the window); m3_attn_ref takes any
 * mem_base and q_pos; (3) positions count BOS and the "Reference:" prefix,
 * so a full 128-token chunk's last selected token is at 127 + n_prefix:
 * outside [0, 128); nothing is clamped, the query is simply closer to it.
 *
 * ---- Ownership and threads ----------------------------------------------
 *
 * An m3_attn borrows its codec set (valid until m3_attn_destroy) and the
 * round's buffers (from m3_attn_begin until m3_attn_finish returns; device
 * buffers until the worker's stream passed the round's end). It is not
 * thread-safe, but a round's callbacks may run on any thread one at a time,
 * which is what m3_client_retrieve and m3_cluster_retrieve do.
 */
#ifndef M3_ATTN_H
#define M3_ATTN_H

#include <stddef.h>
#include <stdint.h>

#include "m3/client.h"
#include "m3/codec.h"
#include "m3/record.h"
#include "m3/spec.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A record's position of a slot without a token (encoder: M3_POS_NONE). */
#define M3_ATTN_POS_NONE 0xFFFFu
/* The attention buffer's position of an empty (masked) slot. */
#define M3_ATTN_POS_EMPTY (-1)
/* Length of the position interval all memories share; the context starts
 * after it (q_pos = M3_ATTN_MEM_SPAN + i). */
#define M3_ATTN_MEM_SPAN 128

/* ---- geometry ------------------------------------------------------- */

typedef struct m3_attn_geom {
  m3_spec spec;              /* L, H, T, D of one memory */
  uint32_t n_queries;        /* Q */
  uint32_t k;                /* memories per query; slots S = k * T */
  int dtype;                 /* M3_DTYPE_F32 / F16 / BF16 of K and V */
  size_t kv_query_stride;    /* elements between queries  (dense: L*2*H*S*D) */
  size_t kv_layer_stride;    /* between layers            (dense: 2*H*S*D) */
  size_t kv_kv_stride;       /* from K to V               (dense: H*S*D) */
  size_t pos_query_stride;   /* positions between queries (dense: L*H*S) */
  size_t pos_layer_stride;   /* between layers            (dense: H*S) */
} m3_attn_geom;

/* Dense query-major geometry: kv (Q, L, 2, H, S, D), pos (Q, L, H, S).
 * Returns 0, or M3_EINVAL (zero dimension, unknown dtype, k * T > 65535). */
int m3_attn_geom_init(m3_attn_geom *g, const m3_spec *spec, uint32_t n_queries, uint32_t k,
                      int dtype);

/* Switch g (from m3_attn_geom_init) to layer-major strides:
 * kv (L, 2, Q, H, S, D), pos (L, Q, H, S). */
void m3_attn_geom_layer_major(m3_attn_geom *g);

/* Slots per query, S = k * T. */
static inline uint32_t m3_attn_slots(const m3_attn_geom *g) {
  return g->k * g->spec.n_tokens;
}

/* Element offset of (q, l, kv, h, slot, 0) in the K/V buffer. */
static inline size_t m3_attn_kv_offset(const m3_attn_geom *g, uint32_t q, uint32_t l, int kv,
                                       uint32_t h, uint32_t slot) {
  return (size_t)q * g->kv_query_stride + (size_t)l * g->kv_layer_stride +
         (size_t)kv * g->kv_kv_stride +
         ((size_t)h * m3_attn_slots(g) + slot) * g->spec.head_dim;
}

/* Element offset of position (q, l, h, slot). */
static inline size_t m3_attn_pos_offset(const m3_attn_geom *g, uint32_t q, uint32_t l,
                                        uint32_t h, uint32_t slot) {
  return (size_t)q * g->pos_query_stride + (size_t)l * g->pos_layer_stride +
         (size_t)h * m3_attn_slots(g) + slot;
}

/* Elements the K/V buffer and the positions buffer must hold (largest
 * offset + 1); bytes are m3_attn_kv_elems * m3_dtype_size(dtype) and
 * m3_attn_pos_elems * 4. */
size_t m3_attn_kv_elems(const m3_attn_geom *g);
size_t m3_attn_pos_elems(const m3_attn_geom *g);

/* ---- filling a round's buffers -------------------------------------- */

typedef struct m3_attn m3_attn;

/* One round's outputs. kv and pos are host pointers for a host m3_attn and
 * device pointers for a CUDA one; ids and scores are host (may be NULL).
 * All caller-owned; borrowed from m3_attn_begin to m3_attn_finish. */
typedef struct m3_attn_round {
  void *kv;        /* m3_attn_kv_elems(g) elements of g->dtype */
  int32_t *pos;    /* m3_attn_pos_elems(g) */
  uint64_t *ids;   /* (Q, k) chunk id per rank; UINT64_MAX when empty */
  float *scores;   /* (Q, k) retrieval score; 0 when empty */
} m3_attn_round;

/* What a round got, from m3_attn_finish. */
typedef struct m3_attn_stats {
  uint32_t placed;   /* (query, rank) ranges filled with a memory */
  uint32_t empty;    /* ranges left empty: no memory arrived for them */
  uint32_t failed;   /* items that arrived failed or did not decode (their
                        ranges are empty and counted in `empty` too) */
  uint32_t masked_tokens; /* M3_ATTN_POS_NONE tokens in placed memories */
  int first_error;   /* m3 code of the first failure, 0 when none */
  char error[256];   /* its message ("" when none) */
} m3_attn_stats;

/*
 * A host m3_attn: records decoded by the CPU codec decoder
 * (m3_codec_decode_vectors) straight into host buffers of geometry g.
 * cs is borrowed until m3_attn_destroy; g is copied. On success *out is
 * freed with m3_attn_destroy. M3_EINVAL for a bad geometry, M3_ESHAPE when
 * g->spec does not fit cs (head_dim, per-layer codec count).
 */
int m3_attn_create_host(const m3_codec_set *cs, const m3_attn_geom *g, m3_attn **out);

/* Options of a CUDA m3_attn (m3_attn_cuda_options_init gives defaults). */
typedef struct m3_attn_cuda_options {
  int device;      /* CUDA device ordinal; -1: the current one (-1) */
  int lanes;       /* memories in flight: each lane has a stream, a pinned
                      staging buffer, device codes and a decode scratch (4) */
  void *stream;    /* the worker's cudaStream_t (NULL: the legacy default
                      stream). The round's writes start after the work queued
                      on it at m3_attn_begin and are complete for work queued
                      on it after m3_attn_finish. */
} m3_attn_cuda_options;

void m3_attn_cuda_options_init(m3_attn_cuda_options *o);

/*
 * A CUDA m3_attn (library m3client_cuda, built where nvcc is found): each
 * memory's positions and codes are copied into a pinned staging buffer,
 * sent host->device (cudaMemcpyAsync) and decoded by the codec's CUDA
 * kernel (m3_codec_cuda_decode) into a per-lane device scratch memory, from
 * which one placement kernel writes its slot range of the caller's device
 * buffers and masks its empty tokens. Memories rotate over the lanes'
 * streams, so the copy and decode of one memory overlap the next one's
 * receive and copy. Returns M3_EUNSUPPORTED without a CUDA device or
 * without decode tables, M3_ENOMEM / M3_EINTERNAL on CUDA errors (message
 * quotes CUDA).
 */
int m3_attn_create_cuda(const m3_codec_set *cs, const m3_attn_geom *g,
                        const m3_attn_cuda_options *o, m3_attn **out);

/* Free. m3_attn_destroy(NULL) does nothing. A CUDA m3_attn waits for its
 * work first. */
void m3_attn_destroy(m3_attn *a);

/* The geometry a was created with (owned by a). */
const m3_attn_geom *m3_attn_geom_get(const m3_attn *a);

/* 1 for a CUDA m3_attn, 0 for a host one. */
int m3_attn_is_device(const m3_attn *a);

/*
 * Start a round into r's buffers: every (query, rank) is empty until a
 * memory is placed. ids and scores are reset (UINT64_MAX, 0); kv and pos
 * are not written yet (empty ranges are written by m3_attn_finish, so no
 * byte is written twice). M3_EINVAL when kv or pos is NULL or a round is
 * already open.
 */
int m3_attn_begin(m3_attn *a, const m3_attn_round *r);

/*
 * Decode rec (parsed with its positions and codes, e.g. m3_client_memory.
 * record) into the slot range of (q, rank) and copy its positions; tokens at
 * M3_ATTN_POS_NONE get position -1 and zero K/V. The record is used during
 * the call only. Placing a (q, rank) twice overwrites it. Errors:
 * M3_EINVAL (no open round, q or rank out of range, a tombstone),
 * M3_EFINGERPRINT / M3_ESHAPE / M3_EBADFORMAT (the record was made with
 * another codec set or has another shape), M3_ECORRUPT (a code outside its
 * decode table): the range stays empty. CUDA errors: M3_EINTERNAL.
 */
int m3_attn_place(m3_attn *a, uint32_t q, uint32_t rank, const m3_record *rec);

/*
 * The retrieval round adapter: an m3_client_memory_fn with ud = an m3_attn
 * in an open round. Places m (m->query, m->rank) and fills ids/scores. An
 * item that failed (m->status), or whose record does not place (wrong codec,
 * shape, corrupt code, rank out of range), leaves its range empty and is
 * counted in the stats: the round goes on. Only a backend failure (CUDA
 * error, out of memory) returns non-zero, which cancels the call:
 *
 *   m3_attn_begin(a, &round);
 *   rc = m3_cluster_retrieve(cl, queries, Q, k, 0, m3_attn_memory_fn, a);
 *   m3_attn_finish(a, &stats);          (always: it closes the round)
 */
int m3_attn_memory_fn(void *ud, const m3_client_memory *m);

/*
 * End the round: write every empty range (positions -1, zero K/V), then
 * (CUDA) queue the round's completion before later work on the worker's
 * stream; with stream NULL, wait for it. *st (may be NULL) gets the round's
 * counts. Returns 0, or a CUDA error (M3_EINTERNAL).
 */
int m3_attn_finish(m3_attn *a, m3_attn_stats *st);

/* ---- codes output (no decoding) ------------------------------------ */

/* A sink for a round's record bytes as they arrive (m3_attn_codes_fn).
 * Every pointer is caller-owned. */
typedef struct m3_attn_codes {
  uint32_t n_queries, k;
  size_t rec_bytes;      /* bytes of one record slot: m3_record_mem_size() */
  uint8_t *buf;          /* (Q, k, rec_bytes): record of (q, rank), zeros
                            when empty */
  uint64_t *ids;         /* (Q, k) or NULL; UINT64_MAX when empty */
  float *scores;         /* (Q, k) or NULL */
  int32_t *status;       /* (Q, k) or NULL: 0, the item's m3 code, or
                            M3_ENOTFOUND when nothing arrived */
  uint32_t placed, failed;
} m3_attn_codes;

/* Fill c and reset its buffers (zeros, UINT64_MAX ids, M3_ENOTFOUND status). */
void m3_attn_codes_init(m3_attn_codes *c, uint32_t n_queries, uint32_t k, size_t rec_bytes,
                        uint8_t *buf, uint64_t *ids, float *scores, int32_t *status);

/* m3_client_memory_fn with ud = an m3_attn_codes: copies m's record bytes
 * (m->len <= rec_bytes, else the item counts as failed with M3_ESHAPE) to
 * (m->query, m->rank). Always returns 0. */
int m3_attn_codes_fn(void *ud, const m3_client_memory *m);

/* m3_client_land_fn with ud = an m3_attn_codes: the slot of (query, rank)
 * in buf, so that a record is received straight into it and
 * m3_attn_codes_fn has nothing to copy (m3_client_set_landing(c,
 * m3_attn_codes_land, codes)). NULL (the client's buffer) when there is no
 * buf or the record does not fit its slot. A slot whose item then fails
 * is zeroed again by m3_attn_codes_fn. */
void *m3_attn_codes_land(void *ud, uint64_t chunk_id, uint32_t query, uint32_t rank, size_t len);

/* ---- memory attention reference ------------------------------------- */

typedef struct m3_attn_ref_args {
  uint32_t n_heads;       /* query heads (Memory3: 40) */
  uint32_t n_kv_heads;    /* KV heads (8); n_heads % n_kv_heads == 0 */
  uint32_t head_dim;      /* D (80), even */
  double rope_theta;      /* 10000 */
  uint32_t n_q;           /* query tokens: the last n_q tokens of the context */
  const float *q;         /* (n_q, n_heads, D) f32, BEFORE rotary */
  const int32_t *q_pos;   /* (n_q) their rotary positions (128 + i) */
  /* memories of one (query, layer) of an attention buffer */
  uint32_t n_slots;       /* S = k * T; 0: no memories */
  int mem_dtype;          /* M3_DTYPE_* of mem_k and mem_v */
  const void *mem_k;      /* (n_kv_heads, S, D), rotated at their positions */
  const void *mem_v;      /* (n_kv_heads, S, D) */
  const int32_t *mem_pos; /* (n_kv_heads, S); < 0: empty, no weight */
  int32_t mem_base;       /* where the memory interval starts (0) */
  /* causal context (the worker's KV cache of this layer) */
  uint32_t n_ctx;         /* context tokens; query t sees keys
                             0 .. n_ctx - n_q + t */
  const float *ctx_k;     /* (n_kv_heads, n_ctx, D) f32, rotated at their
                             positions */
  const float *ctx_v;     /* (n_kv_heads, n_ctx, D) */
  /* outputs (caller-owned) */
  float *out;             /* (n_q, n_heads, D) */
  float *mem_weight;      /* (n_q, n_heads) softmax mass on memory slots, or
                             NULL */
} m3_attn_ref_args;

/*
 * Memory attention of n_q query tokens of one memory layer, as specified at
 * the top of this header: rotary, dot products, one softmax and the weighted
 * sum in double; inputs f32 (memories f32/f16/bf16), outputs f32. A query
 * that sees no key at all gets out = 0 and mem_weight 0. Host pointers.
 * Returns 0 or M3_EINVAL naming the bad argument. Allocates nothing.
 */
int m3_attn_ref(const m3_attn_ref_args *a);

/*
 * The same on the GPU (m3client_cuda): every pointer of a is a device
 * pointer; stream is a cudaStream_t (NULL: default). Asynchronous; the same
 * arithmetic (double, the shared element functions), so results equal the
 * CPU's to rounding. M3_EUNSUPPORTED without a device, M3_EINTERNAL on
 * CUDA errors. Allocates a device scratch of n_q * n_heads * (S + n_ctx)
 * doubles per call: a reference, not a hot path.
 */
int m3_attn_ref_cuda(const m3_attn_ref_args *a, void *stream);

/* ---- for bindings ------------------------------------------------------ */

/* sizeof the named public struct ("m3_client_info", "m3_client_stats",
 * "m3_client_memory", "m3_client_query", "m3_client_options",
 * "m3_cluster_options", "m3_cluster_counters", "m3_attn_geom",
 * "m3_attn_round", "m3_attn_stats", "m3_attn_codes", "m3_attn_ref_args",
 * "m3_layout", "m3_record", "m3_cluster_replica_info", "m3_search_params"), or 0 for an unknown
 * name: lets a binding check its mirrors of these structs against the
 * library it loaded. */
size_t m3_attn_abi_sizeof(const char *type);

#ifdef __cplusplus
}
#endif

#endif /* M3_ATTN_H */
