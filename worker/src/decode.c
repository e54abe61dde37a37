/*
 * The decoder's runner and backend registry (the encoder's shape,
 * encoder/src/forward.c): backends are tables listed in order of
 * preference, "auto" takes the first that loads; every step is checked
 * here before a backend sees it. Calls flow one way: decode.c -> a backend.
 */
#include <stdlib.h>
#include <string.h>

#include "decode_int.h"
#include "m3/error.h"
#include "model_int.h"

static const m3_decode_backend *const registry[] = {
#ifdef M3_WORKER_CUDA
    &m3__decode_backend_cuda,
#endif
    &m3__decode_backend_cpu,
};
#define N_BACKENDS (sizeof registry / sizeof registry[0])

static const m3_decode_backend *backend_find(const char *name) {
  for (size_t i = 0; i < N_BACKENDS; i++)
    if (!strcmp(registry[i]->name, name)) return registry[i];
  return NULL;
}

const m3_decode_backend *m3_decode_backend_cuda(void) { return backend_find("cuda"); }

struct m3_decoder {
  const m3_model *m;
  const m3_decode_backend *be;
  void *state;
  m3_decode_opts opts;
};

static int load_one(const void *table, void *ud) {
  m3_decoder *d = ud;
  return ((const m3_decode_backend *)table)->load(d->m, &d->opts, &d->state);
}

int m3_decoder_create(const m3_model *m, const m3_decode_opts *opts, m3_decoder **out) {
  int rc = 0;
  *out = NULL;
  if (!m->w_head || m->n_load != m->cfg.n_layers)
    return m3__seterr(M3_EINVAL, "decode: the model was opened without all_layers (m3_model_opts)");
  m3_decoder *d = calloc(1, sizeof *d);
  if (!d) return m3__seterr(M3_ENOMEM, "decode: out of memory");
  d->m = m;
  if (opts) d->opts = *opts;
  if (d->opts.max_batch <= 0) d->opts.max_batch = 8;
  if (d->opts.max_ctx <= 0) d->opts.max_ctx = 1024;
  if (d->opts.mem_slots < 0 || d->opts.mem_slots > 65535) {
    rc = m3__seterr(M3_EINVAL, "decode: mem_slots %d outside 0..65535", d->opts.mem_slots);
    goto out;
  }
  const void *chosen;
  rc = m3__backend_pick((const void *const *)registry, N_BACKENDS, d->opts.backend, "decode",
                        load_one, d, &chosen);
  d->be = chosen;
out:
  if (rc) {
    d->be = NULL;
    m3_decoder_destroy(d);
  } else {
    *out = d;
  }
  return rc;
}

void m3_decoder_destroy(m3_decoder *d) {
  if (!d) return;
  if (d->be && d->state) d->be->free(d->state);
  free(d);
}

int m3_decoder_step(m3_decoder *d, const m3_decode_step *s) {
  if (!s || !s->tokens || !s->logits || s->n_seq < 1 || s->n_seq > d->opts.max_batch)
    return m3__seterr(M3_EINVAL, "decode: a step of %d sequences (1..%d)", s ? s->n_seq : 0,
                      d->opts.max_batch);
  if (s->ctx < 0 || s->ctx >= d->opts.max_ctx)
    return m3__seterr(M3_EINVAL, "decode: context index %d beyond max_ctx %d", s->ctx,
                      d->opts.max_ctx);
  if (s->mem_kv && (!s->mem_pos || d->opts.mem_slots == 0))
    return m3__seterr(M3_EINVAL, "decode: memories given %s",
                      s->mem_pos ? "to a decoder made without mem_slots" : "without positions");
  for (int r = 0; r < s->n_seq; r++)
    if (s->tokens[r] < 0 || s->tokens[r] >= d->m->cfg.vocab_size)
      return m3__seterr(M3_EINVAL, "decode: sequence %d: token %d outside the vocab (%d)", r,
                        s->tokens[r], d->m->cfg.vocab_size);
  return d->be->step(d->state, s);
}

const char *m3_decoder_backend_name(const m3_decoder *d) { return d->be->name; }
m3_decode_opts m3_decoder_get_opts(const m3_decoder *d) { return d->opts; }
int m3_decoder_vocab(const m3_decoder *d) { return d->m->cfg.vocab_size; }

int m3_decoder_mem_geom(const m3_decoder *d, uint32_t k, m3_attn_geom *g) {
  const m3_model_config *c = &d->m->cfg;
  m3_spec spec = {(uint16_t)d->m->n_mem, (uint16_t)c->n_kv_heads, 0, (uint16_t)c->head_dim};
  if (k == 0 || d->opts.mem_slots % (int)k)
    return m3__seterr(M3_EINVAL, "decode: mem_slots %d is not k %u x tokens", d->opts.mem_slots, k);
  spec.n_tokens = (uint16_t)(d->opts.mem_slots / (int)k);
  return m3_attn_geom_init(g, &spec, (uint32_t)d->opts.max_batch, k, M3_DTYPE_F32);
}
