/*
 * The decoder's attention of one query head: the causal context from the
 * KV cache and, in memory layers, a round's memory slots, in ONE softmax
 * (m3/attn.h, "Memory attention"); empty slots (position < 0) get no
 * weight. f32 with the row maximum subtracted; checked against
 * m3_attn_ref (double) by worker_decode_attn.
 */
#include <math.h>

#include "decode_int.h"

static float dot(const float *a, const float *b, int D) {
  float acc = 0;
  for (int d = 0; d < D; d++) acc += a[d] * b[d];
  return acc;
}

void m3__decode_attn(const float *qc, const float *qm, const float *kc, const float *vc,
                     int n_ctx, const float *km, const float *vm, const int32_t *mp, int S,
                     int D, float *scratch, float *out) {
  const float scale = 1.0f / sqrtf((float)D);
  if (!qm) S = 0;
  float *pm = scratch, *pc = scratch + S, mx = -INFINITY;
  for (int s = 0; s < S; s++) {
    pm[s] = mp[s] < 0 ? -INFINITY : dot(qm, km + (size_t)s * D, D) * scale;
    mx = pm[s] > mx ? pm[s] : mx;
  }
  for (int j = 0; j < n_ctx; j++) {
    pc[j] = dot(qc, kc + (size_t)j * D, D) * scale;
    mx = pc[j] > mx ? pc[j] : mx;
  }
  float sum = 0;
  for (int s = 0; s < S; s++) sum += (pm[s] = mp[s] < 0 ? 0.0f : expf(pm[s] - mx));
  for (int j = 0; j < n_ctx; j++) sum += (pc[j] = expf(pc[j] - mx));
  float inv = 1.0f / sum;
  for (int d = 0; d < D; d++) out[d] = 0;
  for (int s = 0; s < S; s++) {
    if (pm[s] == 0.0f) continue;
    float w = pm[s] * inv;
    const float *v = vm + (size_t)s * D;
    for (int d = 0; d < D; d++) out[d] += w * v[d];
  }
  for (int j = 0; j < n_ctx; j++) {
    float w = pc[j] * inv;
    const float *v = vc + (size_t)j * D;
    for (int d = 0; d < D; d++) out[d] += w * v[d];
  }
}
