/*
 * Attention buffers (m3/attn.h): the geometry, the m3_attn handle and its
 * rounds, the retrieval-round callback, and the host backend that decodes
 * each arriving record with the CPU codec decoder straight into the
 * caller's buffers.
 *
 * Workload: a round is Q x k memories (Memory3: 32 x 5 = 160) arriving one
 * by one from the client's receive loop; each is decoded as it arrives, in
 * runs of T vectors (one (layer, K|V, head) of one memory is T contiguous
 * slots of the buffer), so the decoder writes every output byte once and
 * nothing is staged. Empty ranges are written once, at the round's end.
 */
#include "m3/attn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_int.h"
#include "attn_math.h"
#include "m3/error.h"

/* ---- geometry ------------------------------------------------------- */

int m3_attn_geom_init(m3_attn_geom *g, const m3_spec *spec, uint32_t n_queries, uint32_t k,
                      int dtype) {
  memset(g, 0, sizeof *g);
  if (!spec || !spec->n_layers || !spec->n_kv_heads || !spec->n_tokens || !spec->head_dim)
    return m3__seterr(M3_EINVAL, "attn: memory shape has a zero dimension");
  if (!n_queries || !k)
    return m3__seterr(M3_EINVAL, "attn: %u queries x k %u: both must be > 0", n_queries, k);
  if (m3_dtype_size(dtype) == 0)
    return m3__seterr(M3_EINVAL, "attn: unknown dtype %d", dtype);
  if ((uint64_t)k * spec->n_tokens > 65535)
    return m3__seterr(M3_EINVAL, "attn: k %u x %u tokens = too many slots (65535 at most)", k,
                      spec->n_tokens);
  g->spec = *spec;
  g->n_queries = n_queries;
  g->k = k;
  g->dtype = dtype;
  const size_t S = (size_t)k * spec->n_tokens, H = spec->n_kv_heads, L = spec->n_layers;
  g->kv_kv_stride = H * S * spec->head_dim;
  g->kv_layer_stride = 2 * g->kv_kv_stride;
  g->kv_query_stride = L * g->kv_layer_stride;
  g->pos_layer_stride = H * S;
  g->pos_query_stride = L * g->pos_layer_stride;
  return 0;
}

void m3_attn_geom_layer_major(m3_attn_geom *g) {
  const size_t S = m3_attn_slots(g), H = g->spec.n_kv_heads, Q = g->n_queries;
  g->kv_query_stride = H * S * g->spec.head_dim;
  g->kv_kv_stride = Q * g->kv_query_stride;
  g->kv_layer_stride = 2 * g->kv_kv_stride;
  g->pos_query_stride = H * S;
  g->pos_layer_stride = Q * g->pos_query_stride;
}

size_t m3_attn_kv_elems(const m3_attn_geom *g) {
  const uint32_t S = m3_attn_slots(g);
  return m3_attn_kv_offset(g, g->n_queries - 1, g->spec.n_layers - 1, 1, g->spec.n_kv_heads - 1,
                           S - 1) + g->spec.head_dim;
}

size_t m3_attn_pos_elems(const m3_attn_geom *g) {
  return m3_attn_pos_offset(g, g->n_queries - 1, g->spec.n_layers - 1, g->spec.n_kv_heads - 1,
                            m3_attn_slots(g) - 1) + 1;
}

/* ---- the handle ------------------------------------------------------ */

int m3__attn_new(const m3_codec_set *cs, const m3_attn_geom *g, const m3__attn_backend *be,
                 m3_attn **out) {
  *out = NULL;
  if (!cs || !g)
    return m3__seterr(M3_EINVAL, "attn: codec set and geometry are required");
  m3_attn_geom chk;
  int rc = m3_attn_geom_init(&chk, &g->spec, g->n_queries, g->k, g->dtype);
  if (rc)
    return rc;
  if (!g->kv_kv_stride || !g->kv_layer_stride || !g->kv_query_stride || !g->pos_layer_stride ||
      !g->pos_query_stride)
    return m3__seterr(M3_EINVAL, "attn: geometry has a zero stride (use m3_attn_geom_init)");
  m3_layout l;
  if ((rc = m3_codec_set_layout(cs, &g->spec, &l)) != 0)
    return rc;
  m3_attn *a = calloc(1, sizeof *a);
  uint8_t *filled = calloc((size_t)g->n_queries * g->k, 1);
  if (!a || !filled) {
    free(a);
    free(filled);
    return m3__seterr(M3_ENOMEM, "attn: out of memory");
  }
  a->be = be;
  a->cs = cs;
  a->g = *g;
  a->es = m3_dtype_size(g->dtype);
  a->filled = filled;
  *out = a;
  return 0;
}

void m3_attn_destroy(m3_attn *a) {
  if (!a)
    return;
  if (a->be->destroy)
    a->be->destroy(a);
  free(a->filled);
  free(a);
}

const m3_attn_geom *m3_attn_geom_get(const m3_attn *a) { return &a->g; }

int m3_attn_is_device(const m3_attn *a) { return a->be->is_device; }

/* Count a failure and keep the first one's code and message. */
static void note_failure(m3_attn *a, int code, const char *msg) {
  a->st.failed++;
  if (a->st.first_error == 0) {
    a->st.first_error = code ? code : M3_EINTERNAL;
    snprintf(a->st.error, sizeof a->st.error, "%s", msg ? msg : "");
  }
}

static int is_backend_failure(int rc) { return rc == M3_EINTERNAL || rc == M3_ENOMEM; }

int m3_attn_begin(m3_attn *a, const m3_attn_round *r) {
  if (a->open)
    return m3__seterr(M3_EINVAL, "attn: a round is already open (call m3_attn_finish)");
  if (!r || !r->kv || !r->pos)
    return m3__seterr(M3_EINVAL, "attn: round without kv or pos buffer");
  a->round = *r;
  const size_t n = (size_t)a->g.n_queries * a->g.k;
  memset(a->filled, 0, n);
  memset(&a->st, 0, sizeof a->st);
  for (size_t i = 0; i < n; i++) {
    if (r->ids)
      r->ids[i] = UINT64_MAX;
    if (r->scores)
      r->scores[i] = 0.0f;
  }
  int rc = a->be->begin ? a->be->begin(a) : 0;
  if (rc == 0)
    a->open = 1;
  return rc;
}

static int same_spec(const m3_spec *x, const m3_spec *y) {
  return x->n_layers == y->n_layers && x->n_kv_heads == y->n_kv_heads &&
         x->n_tokens == y->n_tokens && x->head_dim == y->head_dim;
}

int m3_attn_place(m3_attn *a, uint32_t q, uint32_t rank, const m3_record *rec) {
  int rc = 0;
  if (!a->open)
    return m3__seterr(M3_EINVAL, "attn: place outside a round (call m3_attn_begin)");
  if (q >= a->g.n_queries || rank >= a->g.k) {
    rc = m3__seterr(M3_EINVAL, "attn: (query %u, rank %u) outside %u queries x k %u", q, rank,
                    a->g.n_queries, a->g.k);
    goto out;
  }
  a->filled[(size_t)q * a->g.k + rank] = 0; /* a failed overwrite leaves it empty */
  if (!rec || !rec->codes || !rec->positions || rec->layout.codec_kind == M3_CODEC_NONE) {
    rc = m3__seterr(M3_EINVAL, "attn: record of chunk %llu has no memory (tombstone)",
                    rec ? (unsigned long long)rec->chunk_id : 0ull);
    goto out;
  }
  if (!same_spec(&rec->layout.spec, &a->g.spec)) {
    char have[32], want[32];
    rc = m3__seterr(M3_ESHAPE, "attn: chunk %llu has shape %s, the buffers %s",
                    (unsigned long long)rec->chunk_id,
                    m3_spec_format(&rec->layout.spec, have, sizeof have),
                    m3_spec_format(&a->g.spec, want, sizeof want));
    goto out;
  }
  if ((rc = m3_codec_set_check_layout(a->cs, &rec->layout)) != 0)
    goto out;
  if ((rc = a->be->place(a, q, rank, rec)) != 0)
    goto out;
  a->filled[(size_t)q * a->g.k + rank] = 1;
  const size_t np = m3_spec_positions(&a->g.spec);
  for (size_t i = 0; i < np; i++)
    a->st.masked_tokens += m3__attn_rpos(rec->positions, i) == M3_ATTN_POS_NONE;
out:
  if (rc)
    note_failure(a, rc, m3_errmsg());
  return rc;
}

int m3_attn_memory_fn(void *ud, const m3_client_memory *m) {
  m3_attn *a = ud;
  if (!a->open)
    return m3__seterr(M3_EINVAL, "attn: memory arrived outside a round (call m3_attn_begin)");
  if (m->status != 0) {
    char msg[256];
    snprintf(msg, sizeof msg, "chunk %llu (query %u, rank %u): %s",
             (unsigned long long)m->chunk_id, m->query, m->rank,
             m->error && *m->error ? m->error : m3_strerror(m->status));
    note_failure(a, m->status, msg);
    return 0;
  }
  int rc = m3_attn_place(a, m->query, m->rank, m->record);
  if (rc)
    return is_backend_failure(rc) ? rc : 0;
  const size_t i = (size_t)m->query * a->g.k + m->rank;
  if (a->round.ids)
    a->round.ids[i] = m->chunk_id;
  if (a->round.scores)
    a->round.scores[i] = m->score;
  return 0;
}

int m3_attn_finish(m3_attn *a, m3_attn_stats *st) {
  if (!a->open)
    return m3__seterr(M3_EINVAL, "attn: finish without an open round");
  const size_t n = (size_t)a->g.n_queries * a->g.k;
  a->st.placed = a->st.empty = 0;
  for (size_t i = 0; i < n; i++) {
    if (a->filled[i]) {
      a->st.placed++;
    } else {
      a->st.empty++;
      if (a->round.ids)
        a->round.ids[i] = UINT64_MAX;
      if (a->round.scores)
        a->round.scores[i] = 0.0f;
    }
  }
  int rc = a->be->finish(a);
  a->open = 0;
  if (st)
    *st = a->st;
  return rc;
}

/* ---- host backend ---------------------------------------------------- */

static int host_place(m3_attn *a, uint32_t q, uint32_t rank, const m3_record *rec) {
  const m3_attn_geom *g = &a->g;
  const uint32_t L = g->spec.n_layers, H = g->spec.n_kv_heads, T = g->spec.n_tokens,
                 D = g->spec.head_dim;
  const size_t cb = rec->layout.code_bytes, es = a->es;
  uint8_t *kv = a->round.kv;
  int32_t *pos = a->round.pos;
  for (uint32_t l = 0; l < L; l++)
    for (uint32_t k = 0; k < 2; k++)
      for (uint32_t h = 0; h < H; h++) {
        /* T codes of (l, K|V, h) are adjacent in the record, and their T
         * slots adjacent in the buffer: one decoder call, no staging */
        const uint8_t *codes = rec->codes + ((((size_t)l * 2 + k) * H + h) * T) * cb;
        uint8_t *dst = kv + m3__attn_kv_off(g, q, l, k, h, rank * T) * es;
        int rc = m3_codec_decode_vectors(a->cs, l, (int)k, codes, T, g->dtype, dst);
        if (rc)
          return rc;
      }
  for (uint32_t l = 0; l < L; l++)
    for (uint32_t h = 0; h < H; h++)
      for (uint32_t t = 0; t < T; t++) {
        const uint16_t p = m3__attn_rpos(rec->positions, ((size_t)l * H + h) * T + t);
        pos[m3__attn_pos_off(g, q, l, h, rank * T + t)] = m3__attn_pos_out(p);
        if (p == M3_ATTN_POS_NONE) /* decoded codes of a zero vector need not be zero */
          for (uint32_t k = 0; k < 2; k++)
            memset(kv + m3__attn_kv_off(g, q, l, k, h, rank * T + t) * es, 0, (size_t)D * es);
      }
  return 0;
}

static int host_finish(m3_attn *a) {
  const m3_attn_geom *g = &a->g;
  const uint32_t L = g->spec.n_layers, H = g->spec.n_kv_heads, T = g->spec.n_tokens;
  const size_t run = (size_t)T * g->spec.head_dim * a->es;
  uint8_t *kv = a->round.kv;
  for (uint32_t q = 0; q < g->n_queries; q++)
    for (uint32_t r = 0; r < g->k; r++) {
      if (a->filled[(size_t)q * g->k + r])
        continue;
      for (uint32_t l = 0; l < L; l++)
        for (uint32_t h = 0; h < H; h++) {
          for (uint32_t k = 0; k < 2; k++)
            memset(kv + m3__attn_kv_off(g, q, l, k, h, r * T) * a->es, 0, run);
          int32_t *p = a->round.pos + m3__attn_pos_off(g, q, l, h, r * T);
          for (uint32_t t = 0; t < T; t++)
            p[t] = M3_ATTN_POS_EMPTY;
        }
    }
  return 0;
}

static const m3__attn_backend host_backend = {
    .name = "host",
    .is_device = 0,
    .begin = NULL,
    .place = host_place,
    .finish = host_finish,
    .destroy = NULL,
};

int m3_attn_create_host(const m3_codec_set *cs, const m3_attn_geom *g, m3_attn **out) {
  return m3__attn_new(cs, g, &host_backend, out);
}

void m3_attn_cuda_options_init(m3_attn_cuda_options *o) {
  memset(o, 0, sizeof *o);
  o->device = -1;
  o->lanes = 4;
  o->stream = NULL;
}
