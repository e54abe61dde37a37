/*
 * The CPU element kernels the model's backends share: the encoder's CPU
 * forward (forward_cpu.c) and worker/'s decoder. One definition of RMSNorm,
 * the Llama rotary and SwiGLU, so that encoder and decoder compute the same
 * function of the same weights. Declared in model_int.h.
 */
#include <math.h>
#include <stddef.h>

#include "model_int.h"

void m3__rmsnorm(float *y, const float *x, const float *w, size_t rows, int E, float eps) {
  for (size_t r = 0; r < rows; r++) {
    const float *xr = x + r * E;
    float *yr = y + r * E;
    double ss = 0;
    for (int i = 0; i < E; i++) ss += (double)xr[i] * xr[i];
    float inv = (float)(1.0 / sqrt(ss / E + eps));
    for (int i = 0; i < E; i++) yr[i] = xr[i] * inv * w[i];
  }
}

void m3__rope(float *dst, const float *src, const float *cs, const float *sn, int D) {
  int half = D / 2;
  for (int i = 0; i < half; i++) {
    float a = src[i], b = src[i + half];
    dst[i] = a * cs[i] - b * sn[i];
    dst[i + half] = b * cs[i] + a * sn[i];
  }
}

void m3__swiglu(float *hb, size_t rows, int F) {
  for (size_t r = 0; r < rows; r++) {
    float *gr = hb + r * 2 * F, *ur = gr + F;
    for (int i = 0; i < F; i++) gr[i] = gr[i] / (1.0f + expf(-gr[i])) * ur[i];
  }
}
