/*
 * Model checkpoints for the encoder: Hugging Face style Llama-family model
 * folders, read from safetensors, and a writer of small random-weight models
 * in the same format for tests and examples.
 *
 * A model folder holds
 *   config.json                    Llama-family keys (m3_model_config)
 *   model.safetensors              the weights, or
 *   model.safetensors.index.json   {"weight_map": {tensor: shard file}} and
 *   model-0000N-of-0000M.safetensors the shards it names
 *   tokenizer.model | tokenizer.json  (read by the tokenizer, m3/tokenizer.h)
 *
 * safetensors file format (every field little-endian):
 *   u64 N                           header length
 *   N bytes of JSON                 {"<tensor>": {"dtype": "F32"|"F16"|"BF16",
 *                                    "shape": [d0, d1, ...],
 *                                    "data_offsets": [begin, end]}, ...,
 *                                    "__metadata__": {...} (optional)}
 *   data                            offsets are relative to byte 8 + N;
 *                                   tensors are row-major (C order)
 *
 * Tensor names and shapes (Llama; H = num_attention_heads, Hkv =
 * num_key_value_heads, D = head_dim, E = hidden_size, I = intermediate_size):
 *   model.embed_tokens.weight                      (vocab, E)
 *   model.layers.N.input_layernorm.weight          (E)
 *   model.layers.N.self_attn.q_proj.weight         (H * D, E)
 *   model.layers.N.self_attn.k_proj.weight         (Hkv * D, E)
 *   model.layers.N.self_attn.v_proj.weight         (Hkv * D, E)
 *   model.layers.N.self_attn.o_proj.weight         (E, H * D)
 *   model.layers.N.post_attention_layernorm.weight (E)
 *   model.layers.N.mlp.gate_proj.weight            (I, E)
 *   model.layers.N.mlp.up_proj.weight              (I, E)
 *   model.layers.N.mlp.down_proj.weight            (E, I)
 *   model.norm.weight                              (E)
 *   lm_head.weight                                 (vocab, E), absent when tied
 * The encoder reads only the embeddings and the memory layers; a decoder
 * (m3_model_opts.all_layers, worker/) reads every tensor.
 */
#ifndef M3_MODEL_H
#define M3_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "m3/codec.h" /* m3_dtype: M3_DTYPE_F32, _F16, _BF16; m3_dtype_size */

/* ---- safetensors ------------------------------------------------------ */

/* The dtype of a tensor m3 cannot read (I64, F8_E4M3 ...): m3_tensor.dtype
 * holds an m3_dtype or this. */
#define M3_TENSOR_DTYPE_OTHER 0

#define M3_TENSOR_MAX_DIMS 8

/* One tensor of an open checkpoint. Every pointer is owned by the
 * m3_safetensors handle and valid until m3_safetensors_close. */
typedef struct m3_tensor {
  const char *name;
  const char *file;     /* path of the file that holds it */
  const char *dtype_name; /* as written in the header ("BF16", "I64" ...) */
  int dtype;            /* m3_dtype, or M3_TENSOR_DTYPE_OTHER */
  int ndim;
  int64_t shape[M3_TENSOR_MAX_DIMS];
  size_t numel;
  const void *data;     /* into the read-only mapping of file */
  size_t nbytes;
} m3_tensor;

typedef struct m3_safetensors m3_safetensors;

/*
 * Open a checkpoint: path is a .safetensors file, an index json
 * (model.safetensors.index.json), or a folder holding either (the index is
 * preferred). Every file is memory-mapped read-only and its header checked:
 * header length and JSON, every tensor's dtype size, shape and offsets
 * against the file size. Errors are M3_EBADFORMAT (M3_EIO / M3_ENOTFOUND
 * for files that cannot be opened) with a message naming the file and,
 * where one is at fault, the tensor. *out is owned by the caller:
 * m3_safetensors_close.
 */
int m3_safetensors_open(const char *path, m3_safetensors **out);
void m3_safetensors_close(m3_safetensors *st); /* NULL: nothing */

/* Parse one safetensors file's bytes already in memory (data, size bytes,
 * borrowed: the caller keeps them until m3_safetensors_close; name is what
 * messages call the file), with the checks of m3_safetensors_open. */
int m3_safetensors_open_mem(const char *name, const void *data, size_t size,
                            m3_safetensors **out);

/* Number of tensors, and the i-th (file order; shards in index order). */
size_t m3_safetensors_count(const m3_safetensors *st);
const m3_tensor *m3_safetensors_at(const m3_safetensors *st, size_t i);

/* Look a tensor up. M3_ENOTFOUND with "tensor 'x' not found in <file>". */
int m3_safetensors_find(const m3_safetensors *st, const char *name, m3_tensor *out);

/*
 * Read tensor `name` into dst as f32, converting from f16/bf16. The tensor
 * must have exactly the ndim/shape given (M3_EBADFORMAT naming tensor,
 * file, expected and found shapes); dtypes other than F32/F16/BF16 give
 * M3_EBADFORMAT naming tensor, file and dtype; a missing tensor gives
 * M3_EBADFORMAT naming the tensor and the file (or index) searched. dst (caller-owned) holds the product of shape floats.
 */
int m3_safetensors_read_f32(const m3_safetensors *st, const char *name, int ndim,
                            const int64_t *shape, float *dst);

/* Convert n values of dtype (an m3_dtype) at src, which may be unaligned,
 * into f32. */
void m3_safetensors_convert_f32(int dtype, const void *src, float *dst, size_t n);
/* The safetensors name of an m3_dtype ("F32", "F16", "BF16"; "?" else). */
const char *m3_safetensors_dtype_name(int dtype);

/* ---- config.json ------------------------------------------------------ */

typedef struct m3_model_config {
  int hidden_size;         /* E */
  int n_layers;            /* num_hidden_layers */
  int n_heads;             /* num_attention_heads, H */
  int n_kv_heads;          /* num_key_value_heads (default H), Hkv */
  int head_dim;            /* head_dim (default E / H), D */
  int intermediate_size;   /* I */
  int vocab_size;
  int max_position_embeddings; /* default 4096 */
  float rms_norm_eps;      /* default 1e-6 */
  float rope_theta;        /* default 10000 */
  int bos_token_id;        /* -1 when absent */
  int eos_token_id;        /* -1 when absent */
  int tie_word_embeddings; /* 0 or 1 */
} m3_model_config;

/*
 * Read config.json (path: the file, or the model folder). Missing required
 * keys, non-integers, H not a multiple of Hkv, an odd head_dim or a
 * rope_scaling other than null give M3_EBADFORMAT naming the key and file.
 */
int m3_model_config_load(const char *path, m3_model_config *out);
/* The same checks on config.json's text in memory (json, len bytes; name is
 * what messages call it). */
int m3_model_config_parse(const char *name, const char *json, size_t len, m3_model_config *out);

/* ---- the model -------------------------------------------------------- */

typedef struct m3_model_opts {
  int n_mem_layers; /* memory layers: the first n layers; 0: n_layers / 2
                       (Memory3: 22 of 44) */
  int all_layers;   /* 1: also every other layer, model.norm and lm_head
                       (the embeddings when tied or absent), for a full
                       decode (m3/decode.h); 0: the memory layers only */
} m3_model_opts;

typedef struct m3_model m3_model;

/*
 * Open a model folder: config, then the weights of the memory layers (of
 * every layer and the head with opts->all_layers), converted to f32 into buffers owned by the model (the projections of a
 * layer fused: q|k|v and gate|up); the embedding table stays in the mapping
 * and rows are converted when looked up. Shapes are checked against the
 * config (errors name the tensor and the file). opts may be NULL. *out is
 * owned by the caller: m3_model_close.
 */
int m3_model_open(const char *dir, const m3_model_opts *opts, m3_model **out);
void m3_model_close(m3_model *m); /* NULL: nothing */

/* The model's config (owned by m). */
const m3_model_config *m3_model_get_config(const m3_model *m);
/* Number of memory layers the model was opened with. */
int m3_model_mem_layers(const m3_model *m);
/* Bytes of f32 weights held for the memory layers. */
size_t m3_model_weight_bytes(const m3_model *m);

/* ---- test models ------------------------------------------------------ */

typedef struct m3_testmodel_params {
  int n_layers, hidden_size, n_heads, n_kv_heads, head_dim;
  int intermediate_size;     /* 0: ceil(8/3 * hidden) to a multiple of 32 */
  int vocab_size;
  int max_position_embeddings;
  float rms_norm_eps, rope_theta;
  uint64_t seed;
  int dtype;                 /* M3_DTYPE_F32, _F16 or _BF16 */
  int n_shards;              /* 1: model.safetensors; 2: two shards + index */
  int tie_word_embeddings;   /* 1: no lm_head tensor */
  const char *tokenizer_path; /* NULL, or a tokenizer file copied into the
                                 folder under its own file name */
} m3_testmodel_params;

/* Defaults: 4 layers, hidden 64, 4 heads, 2 KV heads, head_dim 16, vocab 97,
 * f32, 1 shard, seed 1, rope_theta 10000, eps 1e-5, max positions 512. */
void m3_testmodel_params_default(m3_testmodel_params *p);

/*
 * Write a random-weight Llama-family model into dir (created if missing):
 * config.json and model.safetensors, or two shards and
 * model.safetensors.index.json. Weights are uniform in +-1/sqrt(fan_in)
 * from a generator seeded with p->seed (the same seed gives the same
 * values in every dtype, rounded to it); norm weights are near 1.
 */
int m3_testmodel_write(const char *dir, const m3_testmodel_params *p);

#endif /* M3_MODEL_H */
