/* See worker_testlib.h. */
#include "worker/worker_testlib.h"

#include <math.h>
#include <stdlib.h>

void wt_mems_make(wt_mems *m, const m3_codec_set *cs, const m3_spec *spec, size_t n,
                  uint16_t emb_dim, uint64_t seed) {
  memset(m, 0, sizeof *m);
  m->spec = *spec;
  m->n = n;
  CHECK_OK(m3_codec_set_layout(cs, spec, &m->layout));
  m->layout.emb_dim = emb_dim;
  const uint32_t L = spec->n_layers, H = spec->n_kv_heads, T = spec->n_tokens, D = spec->head_dim;
  const size_t nv = m3_spec_vectors(spec), np = m3_spec_positions(spec);
  m->kv = calloc(n * nv * D, sizeof(float));
  m->pos = calloc(n * np, sizeof(uint16_t));
  m->emb = calloc(n * (emb_dim ? emb_dim : 1), sizeof(float));
  m->codes_bytes = m3_layout_codes_bytes(&m->layout);
  m->codes = calloc(n, m->codes_bytes);
  uint64_t s = seed;
  for (size_t i = 0; i < n; i++) {
    for (uint32_t l = 0; l < L; l++)
      for (uint32_t h = 0; h < H; h++) {
        /* real tokens: all, or fewer for every third memory */
        uint32_t real = (i % 3 == 2) ? 1 + (l + h) % T : T;
        uint32_t p = 3 + (uint32_t)(m3t_rand(&s) % 5);
        for (uint32_t t = 0; t < T; t++) {
          uint16_t *pp = &m->pos[i * np + ((size_t)l * H + h) * T + t];
          if (t >= real) {
            *pp = M3_ATTN_POS_NONE;
            continue; /* zero vectors */
          }
          *pp = (uint16_t)p;
          p += 1 + (uint32_t)(m3t_rand(&s) % 9);
          for (uint32_t kv = 0; kv < 2; kv++) {
            float *x = m->kv + (i * nv + (((size_t)l * 2 + kv) * H + h) * T + t) * D;
            for (uint32_t d = 0; d < D; d++)
              x[d] = (float)((double)(m3t_rand(&s) >> 11) / 9007199254740992.0 * 4.0 - 2.0) *
                     (1.0f + (float)(d % 3));
          }
        }
      }
    double norm = 0;
    for (uint16_t d = 0; d < emb_dim; d++) {
      float v = (float)((double)(m3t_rand(&s) >> 11) / 9007199254740992.0 - 0.5);
      m->emb[i * emb_dim + d] = v;
      norm += (double)v * v;
    }
    for (uint16_t d = 0; d < emb_dim; d++) m->emb[i * emb_dim + d] /= (float)sqrt(norm);
  }
}

void wt_mems_encode_raw(wt_mems *m) {
  M3_ASSERT(m->layout.codec_kind == M3_CODEC_RAW_F32);
  memcpy(m->codes, m->kv, m->n * m->codes_bytes);
}

void wt_mems_free(wt_mems *m) {
  free(m->kv);
  free(m->pos);
  free(m->emb);
  free(m->codes);
}

uint8_t *wt_record(const wt_mems *m, size_t i, size_t *len, m3_record *rec) {
  char text[64];
  int tl = snprintf(text, sizeof text, "worker memory %zu", i);
  m3_record_in in = {
      .chunk_id = i,
      .chunk_len = 40,
      .positions = m->pos + i * m3_spec_positions(&m->spec),
      .codes = m->codes + i * m->codes_bytes,
      .text = text,
      .text_len = (size_t)tl,
      .embedding = m->layout.emb_dim ? m->emb + i * m->layout.emb_dim : NULL,
  };
  size_t cap = m3_record_size(&m->layout, (size_t)tl);
  uint8_t *buf = malloc(cap);
  long n = m3_record_encode(buf, cap, &m->layout, &in);
  if (n < 0) fail_msg("m3_record_encode: %s: %s", m3_err_name((int)n), m3_errmsg());
  *len = (size_t)n;
  if (rec) CHECK_OK(m3_record_parse(buf, (size_t)n, M3_PARSE_ALL, rec));
  return buf;
}

void wt_store_write(const wt_mems *m, const char *dir) {
  m3_store_options o;
  m3_store_options_init(&o);
  o.create = 1;
  o.layout = m->layout;
  m3_store *st = NULL;
  CHECK_OK(m3_store_open(dir, &o, &st));
  m3_record_in *in = calloc(m->n, sizeof *in);
  char (*texts)[64] = calloc(m->n, 64);
  for (size_t i = 0; i < m->n; i++) {
    int tl = snprintf(texts[i], 64, "worker memory %zu", i);
    in[i] = (m3_record_in){
        .chunk_id = i,
        .chunk_len = 40,
        .positions = m->pos + i * m3_spec_positions(&m->spec),
        .codes = m->codes + i * m->codes_bytes,
        .text = texts[i],
        .text_len = (size_t)tl,
        .embedding = m->emb + i * m->layout.emb_dim,
    };
  }
  CHECK_OK(m3_store_put(st, in, m->n));
  m3_store_close(st);
  free(texts);
  free(in);
}

static float load_elem(const void *p, size_t i, int dtype) {
  if (dtype == M3_DTYPE_F32) return ((const float *)p)[i];
  uint16_t h = ((const uint16_t *)p)[i];
  uint32_t u;
  float f;
  if (dtype == M3_DTYPE_BF16) {
    u = (uint32_t)h << 16;
    memcpy(&f, &u, 4);
    return f;
  }
  /* f16 -> f32 (exact) */
  uint32_t sign = (uint32_t)(h >> 15), e = (h >> 10) & 31, mant = h & 1023;
  double v = e == 0 ? ldexp(mant, -24) : e == 31 ? (mant ? NAN : INFINITY)
                                                 : ldexp(1024 + mant, (int)e - 25);
  return (float)(sign ? -v : v);
}

void wt_check_round(const wt_mems *m, const m3_codec_set *cs, const m3_attn_geom *g,
                    const void *kv, const int32_t *pos, const int *assign, int exact_f32) {
  const uint32_t L = g->spec.n_layers, H = g->spec.n_kv_heads, T = g->spec.n_tokens,
                 D = g->spec.head_dim;
  const size_t es = m3_dtype_size(g->dtype), nv = m3_spec_vectors(&g->spec),
               np = m3_spec_positions(&g->spec), cb = m->layout.code_bytes;
  uint8_t want[4096];
  for (uint32_t q = 0; q < g->n_queries; q++)
    for (uint32_t r = 0; r < g->k; r++) {
      int mi = assign[q * g->k + r];
      for (uint32_t l = 0; l < L; l++)
        for (uint32_t h = 0; h < H; h++)
          for (uint32_t t = 0; t < T; t++) {
            const uint32_t slot = r * T + t;
            int32_t got_p = pos[m3_attn_pos_offset(g, q, l, h, slot)];
            uint16_t rp = mi < 0 ? M3_ATTN_POS_NONE : m->pos[mi * np + ((size_t)l * H + h) * T + t];
            int32_t want_p = rp == M3_ATTN_POS_NONE ? -1 : rp;
            if (got_p != want_p)
              fail_msg("pos (q %u, l %u, h %u, slot %u): %d != %d (memory %d)", q, l, h, slot,
                       got_p, want_p, mi);
            for (uint32_t k = 0; k < 2; k++) {
              const uint8_t *got = (const uint8_t *)kv + m3_attn_kv_offset(g, q, l, k, h, slot) * es;
              const size_t vi = (((size_t)l * 2 + k) * H + h) * T + t;
              if (want_p < 0) {
                memset(want, 0, D * es);
              } else {
                CHECK_OK(m3_codec_decode_vectors(cs, l, (int)k, m->codes + mi * m->codes_bytes + vi * cb,
                                                 1, g->dtype, want));
              }
              if (memcmp(got, want, D * es) != 0) {
                for (uint32_t d = 0; d < D; d++)
                  if (memcmp(got + d * es, want + d * es, es) != 0)
                    fail_msg("%s (q %u, l %u, h %u, slot %u, d %u): %g != %g (memory %d, pos %d)",
                             k ? "V" : "K", q, l, h, slot, d, load_elem(got, d, g->dtype),
                             load_elem(want, d, g->dtype), mi, want_p);
              }
              if (exact_f32 && g->dtype == M3_DTYPE_F32 && want_p >= 0) {
                const float *orig = m->kv + (mi * nv + vi) * D;
                if (memcmp(got, orig, D * 4) != 0)
                  fail_msg("%s (q %u, l %u, h %u, slot %u) differs from the stored vector",
                           k ? "V" : "K", q, l, h, slot);
              }
            }
          }
    }
}
