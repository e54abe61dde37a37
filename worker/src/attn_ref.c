/*
 * The memory attention reference (m3/attn.h, m3_attn_ref): one softmax over
 * a memory layer's memory slots and its causal context, with parallel
 * position encoding, for workers to check their attention kernels against.
 * Written for clarity and exactness, not speed: two passes over the keys
 * per (query token, head), everything in double. The CUDA reference
 * (worker/cuda/attn_cuda.cu) runs the same element functions (attn_math.h).
 */
#include <math.h>
#include <string.h>

#include "attn_math.h"
#include "m3/attn.h"
#include "m3/error.h"

int m3__attn_ref_check(const m3_attn_ref_args *a); /* shared with the CUDA wrapper */

int m3__attn_ref_check(const m3_attn_ref_args *a) {
  if (!a)
    return m3__seterr(M3_EINVAL, "attn ref: no arguments");
  if (!a->n_heads || !a->n_kv_heads || a->n_heads % a->n_kv_heads)
    return m3__seterr(M3_EINVAL, "attn ref: %u query heads is not a multiple of %u KV heads",
                      a->n_heads, a->n_kv_heads);
  if (!a->head_dim || a->head_dim % 2 || a->head_dim > 1024)
    return m3__seterr(M3_EINVAL, "attn ref: head_dim %u must be even, 2..1024", a->head_dim);
  if (!(a->rope_theta > 0))
    return m3__seterr(M3_EINVAL, "attn ref: rope_theta must be > 0");
  if (!a->q || !a->q_pos || !a->out)
    return m3__seterr(M3_EINVAL, "attn ref: q, q_pos and out are required");
  if (a->n_slots && (!a->mem_k || !a->mem_v || !a->mem_pos || !m3_dtype_size(a->mem_dtype)))
    return m3__seterr(M3_EINVAL, "attn ref: %u memory slots need mem_k, mem_v, mem_pos and a dtype",
                      a->n_slots);
  if (a->n_ctx && (!a->ctx_k || !a->ctx_v))
    return m3__seterr(M3_EINVAL, "attn ref: %u context tokens need ctx_k and ctx_v", a->n_ctx);
  return 0;
}

int m3_attn_ref(const m3_attn_ref_args *a) {
  int rc = m3__attn_ref_check(a);
  if (rc)
    return rc;
  const uint32_t H = a->n_heads, G = a->n_heads / a->n_kv_heads, D = a->head_dim,
                 S = a->n_slots, C = a->n_ctx;
  const double scale = 1.0 / sqrt((double)D);
  double qc[1024], qm[1024], acc[1024];
  for (uint32_t t = 0; t < a->n_q; t++) {
    /* causal: query t is context token C - n_q + t and sees keys up to it */
    const int64_t vis64 = (int64_t)C - a->n_q + t + 1;
    const uint32_t vis = vis64 < 0 ? 0 : (uint32_t)vis64;
    for (uint32_t h = 0; h < H; h++) {
      const uint32_t g = h / G;
      const float *q = a->q + ((size_t)t * H + h) * D;
      m3__attn_rope(q, (double)a->q_pos[t], D, a->rope_theta, qc);
      m3__attn_rope(q, (double)a->q_pos[t] - a->mem_base, D, a->rope_theta, qm);
      /* pass 1: the largest logit */
      double mx = -INFINITY;
      for (uint32_t s = 0; s < S; s++)
        if (a->mem_pos[(size_t)g * S + s] >= 0) {
          double l = m3__attn_logit(qm, a->mem_k, ((size_t)g * S + s) * D, D, a->mem_dtype, scale);
          mx = l > mx ? l : mx;
        }
      for (uint32_t j = 0; j < vis; j++) {
        double l = m3__attn_logit(qc, a->ctx_k, ((size_t)g * C + j) * D, D, 1, scale);
        mx = l > mx ? l : mx;
      }
      float *out = a->out + ((size_t)t * H + h) * D;
      float *mw = a->mem_weight ? a->mem_weight + (size_t)t * H + h : NULL;
      if (mx == -INFINITY) { /* no key at all */
        memset(out, 0, (size_t)D * sizeof *out);
        if (mw)
          *mw = 0.0f;
        continue;
      }
      /* pass 2: exp, sum, weighted values */
      double sum = 0, msum = 0;
      memset(acc, 0, (size_t)D * sizeof *acc);
      for (uint32_t s = 0; s < S; s++) {
        const size_t i0 = ((size_t)g * S + s) * D;
        if (a->mem_pos[(size_t)g * S + s] < 0)
          continue; /* empty slot: no weight */
        double w = exp(m3__attn_logit(qm, a->mem_k, i0, D, a->mem_dtype, scale) - mx);
        sum += w;
        msum += w;
        for (uint32_t d = 0; d < D; d++)
          acc[d] += w * (double)m3__attn_load(a->mem_v, i0 + d, a->mem_dtype);
      }
      for (uint32_t j = 0; j < vis; j++) {
        const size_t i0 = ((size_t)g * C + j) * D;
        double w = exp(m3__attn_logit(qc, a->ctx_k, i0, D, 1, scale) - mx);
        sum += w;
        for (uint32_t d = 0; d < D; d++)
          acc[d] += w * (double)a->ctx_v[i0 + d];
      }
      for (uint32_t d = 0; d < D; d++)
        out[d] = (float)(acc[d] / sum);
      if (mw)
        *mw = (float)(msum / sum);
    }
  }
  return 0;
}
