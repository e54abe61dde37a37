/*
 * Memory3 token selection (arXiv 2407.01178, section 3): per KV head, rank
 * the tokens of a chunk by the attention mass they receive from every query
 * of the chunk,
 *   w_j = sum_{h in group} sum_i exp(q_{h,i} . k_j / sqrt(D)),
 * with q and k before rotary and without causal mask, and keep the top few.
 *
 * Numerics: exp of raw scores overflows f32 near 88, which trained models
 * reach. Subtracting a per-QUERY max would change the ranking (each query's
 * terms would be scaled differently); subtracting a per-KEY max m_j does
 * not: log w_j = m_j + log sum exp(s_hij - m_j) is w_j's own logarithm, so
 * ranking log w_j is ranking w_j, and every exp is <= 1 with the largest
 * term exactly 1, so nothing overflows or vanishes wholesale.
 *
 * Workload: per chunk, memory layers x KV heads columns sums over
 * (group heads x len) x len scores; len <= 128.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "m3/forward.h"
#include "forward_int.h"

void m3__select_colsum(const float *scores, int n_mats, size_t mat_stride, int n_rows, size_t ld,
                       int n_cols, double *logw) {
  /* Column max, then column sums; rows are walked in order so the inner
   * loops run along contiguous columns. */
  for (int j = 0; j < n_cols; j++) logw[j] = -INFINITY;
  for (int a = 0; a < n_mats; a++)
    for (int i = 0; i < n_rows; i++) {
      const float *r = scores + a * mat_stride + i * ld;
      for (int j = 0; j < n_cols; j++)
        if (r[j] > logw[j]) logw[j] = r[j];
    }
  double sums[n_cols > 0 ? n_cols : 1];
  float mx[n_cols > 0 ? n_cols : 1];
  for (int j = 0; j < n_cols; j++) sums[j] = 0, mx[j] = (float)logw[j];
  for (int a = 0; a < n_mats; a++)
    for (int i = 0; i < n_rows; i++) {
      const float *r = scores + a * mat_stride + i * ld;
      for (int j = 0; j < n_cols; j++) sums[j] += expf(r[j] - mx[j]);
    }
  for (int j = 0; j < n_cols; j++) logw[j] = (double)mx[j] + log(sums[j]);
}

void m3_select_logw(const float *q, size_t ldq, int n_q_heads, const float *k, size_t ldk, int len,
                    int head_dim, float *scratch, double *logw) {
  float scale = 1.0f / sqrtf((float)head_dim);
  for (int h = 0; h < n_q_heads; h++)
    for (int i = 0; i < len; i++) {
      const float *qi = q + (size_t)i * ldq + (size_t)h * head_dim;
      for (int j = 0; j < len; j++) {
        const float *kj = k + (size_t)j * ldk;
        float s = 0;
        for (int d = 0; d < head_dim; d++) s += qi[d] * kj[d];
        scratch[((size_t)h * len + i) * len + j] = s * scale;
      }
    }
  m3__select_colsum(scratch, n_q_heads, (size_t)len * len, len, (size_t)len, len, logw);
}

int m3_select_topk(const double *logw, int len, int n_skip, int n_tokens, uint16_t *pos) {
  /* n_tokens passes of an argmax over <= 128 candidates: cheaper than a
   * sort at these sizes. Ties go to the lower position (strict >). */
  uint8_t taken_buf[len > 0 ? len : 1];
  for (int j = 0; j < len; j++) taken_buf[j] = 0;
  int n = 0;
  for (; n < n_tokens; n++) {
    int best = -1;
    for (int j = n_skip < 0 ? 0 : n_skip; j < len; j++)
      if (!taken_buf[j] && (best < 0 || logw[j] > logw[best])) best = j;
    if (best < 0) break;
    taken_buf[best] = 1;
  }
  /* Position order: walk the marks. */
  int k = 0;
  for (int j = 0; j < len && k < n; j++)
    if (taken_buf[j]) pos[k++] = (uint16_t)j;
  for (; k < n_tokens; k++) pos[k] = M3_POS_NONE;
  return n;
}
