/*
 * The encoder's forward runner and its backend registry (ggml's shape: one
 * table per backend, listed here in order of preference; the runner picks
 * one by name or, for "auto", the first that loads). Backends: the CPU
 * reference (forward_cpu.c) and CUDA (encoder/cuda, library m3encoder_cuda,
 * when compiled). The runner checks every batch before a backend sees it.
 *
 * Calls flow one way: forward.c -> backends -> model.c / select.c; the
 * CUDA library depends on m3model only, m3encoder on both.
 */
#include <stdlib.h>
#include <string.h>

#include "m3/error.h"
#include "m3/forward.h"
#include "forward_int.h"

/* Preference order for "auto". */
static const m3_backend *const registry[] = {
#ifdef M3_ENCODER_CUDA
    &m3__backend_cuda_table,
#endif
    &m3__backend_cpu_table,
};
#define N_BACKENDS (sizeof registry / sizeof registry[0])

static const m3_backend *backend_find(const char *name) {
  for (size_t i = 0; i < N_BACKENDS; i++)
    if (!strcmp(registry[i]->name, name)) return registry[i];
  return NULL;
}

const m3_backend *m3_backend_cpu(void) { return &m3__backend_cpu_table; }
const m3_backend *m3_backend_cuda(void) { return backend_find("cuda"); }

/* ---- batches ---------------------------------------------------------- */

int m3__batch_check(const m3_model *m, const m3_forward_opts *o, const m3_batch *b) {
  if (!b || !b->tokens || !b->lens || b->n_seq < 1 || b->n_seq > o->max_batch || b->seq_len < 1 ||
      b->seq_len > o->max_seq)
    return m3__seterr(M3_EINVAL, "forward: batch of %d x %d does not fit 1..%d x 1..%d",
                      b ? b->n_seq : 0, b ? b->seq_len : 0, o->max_batch, o->max_seq);
  if (b->seq_len > 65535) return m3__seterr(M3_EINVAL, "forward: positions are u16");
  for (int s = 0; s < b->n_seq; s++) {
    int len = b->lens[s], np = b->n_prefix ? b->n_prefix[s] : 0;
    if (len < 1 || len > b->seq_len)
      return m3__seterr(M3_EINVAL, "forward: sequence %d has length %d (1..%d)", s, len,
                        b->seq_len);
    if (np < 0 || np > len)
      return m3__seterr(M3_EINVAL, "forward: sequence %d: n_prefix %d outside 0..%d", s, np, len);
    for (int t = 0; t < len; t++) {
      int32_t tok = b->tokens[(size_t)s * b->seq_len + t];
      if (tok < 0 || tok >= m->cfg.vocab_size)
        return m3__seterr(M3_EINVAL, "forward: sequence %d position %d: token %d outside the vocab (%d)",
                          s, t, tok, m->cfg.vocab_size);
    }
  }
  return 0;
}

/* ---- the runner ------------------------------------------------------- */

struct m3_forward {
  const m3_backend *be;
  void *state;
  m3_forward_opts opts;
  const m3_model *m;
};

static int load_one(const void *table, void *ud) {
  m3_forward *f = ud;
  return ((const m3_backend *)table)->load(f->m, &f->opts, &f->state);
}

int m3_forward_create(const m3_model *m, const m3_forward_opts *opts, m3_forward **out) {
  int rc = 0;
  *out = NULL;
  m3_forward *f = calloc(1, sizeof *f);
  if (!f) return m3__seterr(M3_ENOMEM, "forward: out of memory");
  f->m = m;
  if (opts) f->opts = *opts;
  if (f->opts.max_batch <= 0) f->opts.max_batch = 8;
  if (f->opts.max_seq <= 0) f->opts.max_seq = 128;
  if (f->opts.n_tokens <= 0) f->opts.n_tokens = 8;
  if (f->opts.max_seq > M3_SELECT_MAX_LEN || f->opts.n_tokens > f->opts.max_seq) {
    rc = m3__seterr(M3_EINVAL, "forward: max_seq %d (at most 4096) and n_tokens %d (at most max_seq)",
                    f->opts.max_seq, f->opts.n_tokens);
    goto out;
  }
  const void *chosen;
  rc = m3__backend_pick((const void *const *)registry, N_BACKENDS, f->opts.backend, "forward",
                        load_one, f, &chosen);
  f->be = chosen;
out:
  if (rc) {
    f->be = NULL;
    m3_forward_destroy(f);
  } else {
    *out = f;
  }
  return rc;
}

void m3_forward_destroy(m3_forward *f) {
  if (!f) return;
  if (f->be && f->state) f->be->free(f->state);
  free(f);
}

int m3_forward_run(m3_forward *f, const m3_batch *b, m3_memories *out) {
  int rc = m3__batch_check(f->m, &f->opts, b);
  if (rc) return rc;
  if (!out || !out->positions || !out->kv) return m3__seterr(M3_EINVAL, "forward: no output buffers");
  return f->be->forward(f->state, b, out);
}

const char *m3_forward_backend_name(const m3_forward *f) { return f->be->name; }

m3_spec m3_forward_spec(const m3_forward *f) {
  m3_spec s = {(uint16_t)f->m->n_mem, (uint16_t)f->m->cfg.n_kv_heads, (uint16_t)f->opts.n_tokens,
               (uint16_t)f->m->cfg.head_dim};
  return s;
}

m3_forward_opts m3_forward_get_opts(const m3_forward *f) { return f->opts; }

double m3_forward_flops(const m3_model *m, const m3_batch *b) {
  const m3_model_config *c = &m->cfg;
  double E = c->hidden_size, H = c->n_heads, K = c->n_kv_heads, D = c->head_dim,
         I = c->intermediate_size, S = b->seq_len, N = (double)b->n_seq * S, sum_len = 0;
  for (int s = 0; s < b->n_seq; s++) sum_len += b->lens[s];
  /* Scores are (query heads x padded rows) x valid keys per sequence. */
  double scores = 2.0 * H * S * sum_len * D;
  double last = 2.0 * N * E * (H + 2 * K) * D + scores;
  double full = last + 2 * scores /* QK^T and PV */ + 2.0 * N * H * D * E +
                2.0 * N * E * 2 * I + 2.0 * N * I * E;
  return (m->n_mem - 1) * full + last;
}
