/*
 * m3-bench codec: the FAISS encoder against the GEMM encoder (see
 * bench_codec_enc.h). Both encode the same keys and values; agreement is the
 * fraction of codes equal byte for byte, rel_mse the reconstruction error of
 * each encoder's codes through FAISS's sa_decode. The sgemm figure times
 * OpenBLAS alone at the GEMM encoder's largest shape (batch x centroid block
 * x sub-vector dims), the ceiling the encoder's effective GFLOP/s is read
 * against.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_codec_enc.h"
#include "m3/error.h"

#define ROUNDS 3

static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double wall_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Encode keys and values with encoder `which`; best CPU and wall seconds. */
static int timed(m3_codec_set *cs, int which, const float *k, const float *v, size_t n,
                 uint8_t *ck, uint8_t *cv, double *cpu, double *wall) {
  int rc = m3_codec_set_encoder(cs, which);
  if (rc)
    return rc;
  double c0 = cpu_s(), w0 = wall_s();
  if ((rc = m3_codec_encode_vectors(cs, 0, M3_KV_K, k, n, ck)) != 0 ||
      (rc = m3_codec_encode_vectors(cs, 0, M3_KV_V, v, n, cv)) != 0)
    return rc;
  double c = cpu_s() - c0, w = wall_s() - w0;
  if (*cpu == 0 || c < *cpu)
    *cpu = c;
  if (*wall == 0 || w < *wall)
    *wall = w;
  return 0;
}

static int rel_mse(m3_codec_set *cs, const float *k, const float *v, const uint8_t *ck,
                   const uint8_t *cv, size_t n, unsigned dim, double *out) {
  float *y = malloc(n * dim * sizeof(float));
  if (!y)
    return M3_ENOMEM;
  double e = 0, s = 0;
  int rc = 0;
  for (int kv = 0; kv < 2 && !rc; kv++) {
    const float *x = kv ? v : k;
    if ((rc = m3_codec_decode_vectors_faiss(cs, 0, kv, kv ? cv : ck, n, y)) != 0)
      break;
    for (size_t i = 0; i < n * dim; i++) {
      e += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
      s += (double)x[i] * x[i];
    }
  }
  free(y);
  *out = s > 0 ? e / s : 0;
  return rc;
}

/* OpenBLAS sgemm GFLOP/s (CPU time) at M x N x K, C = -2 A B^T as the encoder calls it. */
static double sgemm_gflops(uint32_t M, uint32_t N, uint32_t K) {
  float *a = malloc((size_t)M * K * sizeof(float)), *b = malloc((size_t)N * K * sizeof(float));
  float *c = malloc((size_t)M * N * sizeof(float));
  double g = 0;
  if (a && b && c) {
    for (size_t i = 0; i < (size_t)M * K; i++)
      a[i] = (float)((i * 7919) % 1000) * 1e-3f;
    for (size_t i = 0; i < (size_t)N * K; i++)
      b[i] = (float)((i * 104729) % 1000) * 1e-3f;
    size_t reps = 0;
    double t0 = cpu_s(), el;
    do {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, -2.0f, a,
                  (int)K, b, (int)K, 0.0f, c, (int)N);
      reps++;
    } while ((el = cpu_s() - t0) < 1.0);
    g = 2.0 * M * N * K * (double)reps / el / 1e9;
  }
  free(a);
  free(b);
  free(c);
  return g;
}

int m3_bench_codec_encoders(m3_codec_set *cs, const float *k, const float *v, size_t n,
                            unsigned dim, json_t *j) {
  int rc = 0;
  const size_t cb = m3_codec_set_code_bytes(cs);
  uint8_t *fk = malloc(n * cb), *fv = malloc(n * cb), *gk = malloc(n * cb), *gv = malloc(n * cb);
  double load[3] = {0};
  if (getloadavg(load, 3) < 1)
    load[0] = -1;
  json_object_set_new(j, "load_avg", json_real(load[0]));
  if (!fk || !fv || !gk || !gv) {
    rc = M3_ENOMEM;
    goto out;
  }
  m3_codec_enc_info ek, ev;
  if ((rc = m3_codec_encoder_info(cs, 0, M3_KV_K, &ek)) != 0 ||
      (rc = m3_codec_encoder_info(cs, 0, M3_KV_V, &ev)) != 0)
    goto out;
  int gemm_ok = m3_codec_set_kind(cs) == M3_CODEC_FAISS && !ek.no_gemm[0] && !ev.no_gemm[0];
  double fc = 0, fw = 0, gc = 0, gw = 0;
  for (int r = 0; r < ROUNDS; r++) { /* interleaved: both see the same load */
    if ((rc = timed(cs, M3_CODEC_ENC_FAISS, k, v, n, fk, fv, &fc, &fw)) != 0)
      goto out;
    if (gemm_ok && (rc = timed(cs, M3_CODEC_ENC_GEMM, k, v, n, gk, gv, &gc, &gw)) != 0)
      goto out;
  }
  json_object_set_new(j, "encode_faiss_vectors_per_s", json_real(2.0 * (double)n / fc));
  json_object_set_new(j, "encode_faiss_vectors_per_s_wall", json_real(2.0 * (double)n / fw));
  if (!gemm_ok) {
    json_object_set_new(j, "encode_gemm", json_string(ek.no_gemm[0] ? ek.no_gemm : ev.no_gemm));
    goto out;
  }
  size_t eq = 0;
  for (size_t i = 0; i < n; i++)
    eq += (memcmp(fk + i * cb, gk + i * cb, cb) == 0) + (memcmp(fv + i * cb, gv + i * cb, cb) == 0);
  double ef = 0, eg = 0;
  if ((rc = rel_mse(cs, k, v, fk, fv, n, dim, &ef)) != 0 ||
      (rc = rel_mse(cs, k, v, gk, gv, n, dim, &eg)) != 0)
    goto out;
  double sg = sgemm_gflops(ek.gemm_m, ek.gemm_n, ek.gemm_k);
  double flops = 0.5 * (ek.flops_per_vector + ev.flops_per_vector);
  json_object_set_new(j, "encode_gemm_vectors_per_s", json_real(2.0 * (double)n / gc));
  json_object_set_new(j, "encode_gemm_vectors_per_s_wall", json_real(2.0 * (double)n / gw));
  json_object_set_new(j, "encode_speedup", json_real(fc / gc));
  json_object_set_new(j, "encode_speedup_wall", json_real(fw / gw));
  json_object_set_new(j, "gemm_shape", json_sprintf("%ux%ux%u", ek.gemm_m, ek.gemm_n, ek.gemm_k));
  json_object_set_new(j, "sgemm_gflops", json_real(sg));
  json_object_set_new(j, "encode_gemm_flops_per_vector", json_real(flops));
  json_object_set_new(j, "encode_gemm_gflops", json_real(flops * 2.0 * (double)n / gc / 1e9));
  json_object_set_new(j, "code_agreement", json_real((double)eq / (2.0 * (double)n)));
  json_object_set_new(j, "rel_mse_faiss", json_real(ef));
  json_object_set_new(j, "rel_mse_gemm", json_real(eg));
out:
  if (m3_codec_set_kind(cs) == M3_CODEC_FAISS)
    m3_codec_set_encoder(cs, M3_CODEC_ENC_AUTO);
  free(fk);
  free(fv);
  free(gk);
  free(gv);
  return rc;
}
