/*
 * What the backends share about an open model (the encoder's forward on
 * CPU and CUDA, worker/'s decoder): the converted f32 weights and the
 * helpers more than one backend uses. model.c defines them and calls no
 * backend. C and C++ (the CUDA backends include it).
 */
#ifndef M3_MODEL_INT_H
#define M3_MODEL_INT_H

#include <stddef.h>
#include <stdint.h>

#include "m3/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* E = hidden, H = heads, K = kv heads, D = head_dim, I = intermediate. */
typedef struct m3__layer {
  float *w_in;   /* (E) input_layernorm */
  float *w_qkv;  /* ((H + 2K) * D, E): q_proj | k_proj | v_proj rows */
  float *w_o;    /* (E, H * D); NULL in the last memory layer of an
                    encoder model (m3_model_opts.all_layers 0) */
  float *w_post; /* (E); NULL there too */
  float *w_gu;   /* (2 * I, E): gate_proj | up_proj rows; NULL there too */
  float *w_down; /* (E, I); NULL there too */
} m3__layer;

struct m3_model {
  m3_model_config cfg;
  int n_mem;                /* memory layers */
  int n_load;               /* layers held in `layers`: n_mem, or n_layers
                               with all_layers */
  m3_safetensors *st;       /* owns the mappings */
  m3_tensor embed;          /* (vocab, E), in the mapping, any dtype */
  m3__layer *layers;        /* (n_load) */
  float *w_norm;            /* (E) model.norm; NULL without all_layers */
  float *w_head;            /* (vocab, E) lm_head (the embeddings when tied);
                               NULL without all_layers */
  float *arena;             /* every weight above, one allocation */
  size_t arena_floats;
};

/* Row `tok` of the embedding table as f32 into dst (E floats). */
void m3__model_embed_row(const struct m3_model *m, int32_t tok, float *dst);

/* cos/sin table for RoPE: (max_seq, D/2) each, theta^(-2i/D) frequencies. */
void m3__rope_table(int max_seq, int head_dim, float theta, float *cos_t, float *sin_t);

/* ---- backend registries (registry.c) ---- */

/* Load one backend table (whose first member is its name) with the
 * caller's ud; 0, M3_EUNSUPPORTED (cannot run here) or another code. */
typedef int (*m3__backend_load_fn)(const void *table, void *ud);

/*
 * Pick from tables[0..n) (in order of preference) the backend named want,
 * or for NULL/""/"auto" the first whose load succeeds, skipping those that
 * return M3_EUNSUPPORTED. *chosen is the loaded table (NULL on error).
 * Errors name `what`: M3_EUNSUPPORTED "built without CUDA" for a missing
 * "cuda", M3_EINVAL for an unknown name, else load's code.
 */
int m3__backend_pick(const void *const *tables, size_t n, const char *want, const char *what,
                     m3__backend_load_fn load, void *ud, const void **chosen);

/* ---- CPU element kernels (kernels_cpu.c) ---- */

/* y = RMSNorm(x) * w over rows of E floats (sum of squares in double). */
void m3__rmsnorm(float *y, const float *x, const float *w, size_t rows, int E, float eps);
/* Llama rotate_half of one head: pairs (i, i + D/2) turned by the angles
 * whose cos/sin are cs/sn (D/2 each: one row of m3__rope_table). */
void m3__rope(float *dst, const float *src, const float *cs, const float *sn, int D);
/* hb rows of 2F floats, gate | up: gate = SiLU(gate) * up, in place. */
void m3__swiglu(float *hb, size_t rows, int F);

#ifdef __cplusplus
}
#endif

#endif /* M3_MODEL_INT_H */
