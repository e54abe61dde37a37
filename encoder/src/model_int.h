/*
 * What the encoder's backends share about an open model: the converted f32
 * weights of the memory layers and helpers used by more than one backend.
 * C and C++ (the CUDA backend includes it).
 */
#ifndef M3_MODEL_INT_H
#define M3_MODEL_INT_H

#include <stddef.h>
#include <stdint.h>

#include "m3/forward.h"
#include "m3/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* E = hidden, H = heads, K = kv heads, D = head_dim, I = intermediate. */
typedef struct m3__layer {
  float *w_in;   /* (E) input_layernorm */
  float *w_qkv;  /* ((H + 2K) * D, E): q_proj | k_proj | v_proj rows */
  float *w_o;    /* (E, H * D); NULL in the last memory layer */
  float *w_post; /* (E); NULL in the last memory layer */
  float *w_gu;   /* (2 * I, E): gate_proj | up_proj rows; NULL in the last */
  float *w_down; /* (E, I); NULL in the last memory layer */
} m3__layer;

struct m3_model {
  m3_model_config cfg;
  int n_mem;                /* memory layers computed */
  m3_safetensors *st;       /* owns the mappings */
  m3_tensor embed;          /* (vocab, E), in the mapping, any dtype */
  m3__layer *layers;        /* (n_mem) */
  float *arena;             /* every layer's weights, one allocation */
  size_t arena_floats;
};

/* Row `tok` of the embedding table as f32 into dst (E floats). */
void m3__model_embed_row(const struct m3_model *m, int32_t tok, float *dst);

/* cos/sin table for RoPE: (max_seq, D/2) each, theta^(-2i/D) frequencies. */
void m3__rope_table(int max_seq, int head_dim, float theta, float *cos_t, float *sin_t);

/*
 * Column log-sum-exp of selection scores: scores holds n_mats matrices
 * (the query heads of one group), matrix a at scores + a * mat_stride, row
 * i (query) at + i * ld, column j (key). logw[j] for j < n_cols over rows
 * i < n_rows of every matrix.
 */
void m3__select_colsum(const float *scores, int n_mats, size_t mat_stride, int n_rows,
                       size_t ld, int n_cols, double *logw);

/* Check a batch against opts and the model; M3_EINVAL with a message. */
int m3__batch_check(const struct m3_model *m, const m3_forward_opts *o, const m3_batch *b);

/* The CUDA backend's table (encoder/cuda), when compiled. */
extern const m3_backend m3__backend_cuda_table;

#ifdef __cplusplus
}
#endif

#endif /* M3_MODEL_INT_H */
