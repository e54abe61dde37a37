/*
 * m3-bench codec: size, error and speed of a codec, measured side by side in
 * one run.
 *
 *   m3-bench codec [--codec STR] [--codec-v STR] [--train N] [--test N]
 *                  [--vectors FILE] [--values FILE] [--dim D] [--queries Q]
 *                  [--memories M] [--seed S] [--save PATH] [--load PATH]
 *                  [--logit-std X] [--threads N] [--checkpoint DIR] [--json]
 *
 * Trains a key codec and a value codec (separate quantizers, as the paper) on
 * N vectors each, real ones from fvecs files (--vectors keys, --values values;
 * the keys file serves both when --values is missing) or a synthetic
 * distribution with the shape of attention keys and values; then codes the
 * next --test vectors and reports:
 *   code_bytes, compression_vs_bf16 (2*dim / code_bytes),
 *   rel_mse            sum |x - dec(x)|^2 / sum |x|^2 over test keys and values
 *   attn_rel_err       mean over --queries random queries of
 *                      |o - o'| / |o|, o = softmax(q K^T / sqrt(d)) V over a
 *                      memory of 40 test keys and values, o' the same with
 *                      decoded K and V (and attn_rel_err_p99); queries
 *                      are scaled so that the logits q.k/sqrt(d) against
 *                      test keys have standard deviation X (default 3)
 *   decode_cpu_gbps    decoded f32 output bytes per second, one CPU thread,
 *                      whole Memory3-shaped memories (also _f16, _bf16)
 *   encode_vectors_per_s  FAISS sa_encode (or raw conversion) throughput
 *   encode_faiss_vectors_per_s, encode_gemm_vectors_per_s, encode_speedup
 *                      FAISS's sa_encode and the GEMM encoder on the same
 *                      test vectors, best of 3 interleaved rounds in process
 *                      CPU time (one core with OMP_NUM_THREADS=1
 *                      OPENBLAS_NUM_THREADS=1; _wall: wall clock), with
 *                      sgemm_gflops (OpenBLAS alone at the encoder's GEMM
 *                      shape, gemm_shape), encode_gemm_gflops (the encoder's
 *                      flops per vector x its rate), code_agreement (fraction
 *                      of codes equal to FAISS's), rel_mse_faiss /
 *                      rel_mse_gemm (each encoder's codes) and load_avg
 *   train_s            training time of both codecs, table build and check
 *   table_check        max |table decode - FAISS decode| found by the check
 *                      at creation (random and encoded codes)
 * --threads and --checkpoint are m3_codec_train_opts' threads and
 * checkpoint_dir (FAISS's training teams; trained codebooks kept and read
 * back). --save keeps the trained set; --load measures a saved set instead of
 * training (train_s is then null; the data must be the same to compare).
 * STR is a FAISS index_factory string (default: the paper's
 * "OPQ20_80,Residual2x14,PQ8x10") or raw-f32 / raw-f16 / raw-bf16.
 *
 * Synthetic data: keys are Student-t(4) per dimension with per-dimension
 * scales exp(-j/12 + 0.3 N(0,1)) (a decaying spectrum: low effective rank),
 * 4 outlier dimensions 6x larger and a per-dimension mean, then RoPE-rotated
 * (rotate-half pairs) by a random position 0..127 inside the chunk; values
 * are Student-t(6) with scales exp(-j/20 + 0.3 N(0,1)) and no mean.
 * Queries are drawn like keys (or, with --vectors, are other test keys).
 */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_codec_enc.h"
#include "m3/internal/cli.h"
#include "m3/codec.h"
#include "m3/error.h"

int m3_bench_codec(int argc, char **argv);

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rnd(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static double unif(uint64_t *s) { return ((double)(rnd(s) >> 11) + 0.5) * 0x1.0p-53; }
static double gauss(uint64_t *s) {
  return sqrt(-2.0 * log(unif(s))) * cos(6.283185307179586 * unif(s));
}
static double student_t(uint64_t *s, int nu) {
  double chi = 0;
  for (int k = 0; k < nu; k++) {
    double g = gauss(s);
    chi += g * g;
  }
  return gauss(s) / sqrt(chi / nu);
}

/* n synthetic key (values = 0) or value (values = 1) vectors of dim. The
 * per-dimension shape comes from shape_seed so that train and test data (and
 * queries) share one distribution. */
static float *synth(size_t n, unsigned dim, int values, uint64_t shape_seed, uint64_t seed) {
  float *x = malloc(n * dim * sizeof(float));
  double *scale = malloc(dim * sizeof(double)), *mean = malloc(dim * sizeof(double));
  uint64_t ss = shape_seed * 2 + (uint64_t)values, s = seed;
  for (unsigned j = 0; j < dim; j++) {
    /* decaying spectrum (low effective rank), log-normal jitter */
    scale[j] = exp(-(double)j / (values ? 20.0 : 12.0) * (80.0 / dim) + 0.3 * gauss(&ss));
    mean[j] = values ? 0 : 0.5 * gauss(&ss) * scale[j];
  }
  if (!values)
    for (int k = 0; k < 4; k++)
      scale[rnd(&ss) % dim] *= 6.0;
  for (size_t i = 0; i < n; i++) {
    float *v = x + i * dim;
    for (unsigned j = 0; j < dim; j++)
      v[j] = (float)(mean[j] + scale[j] * student_t(&s, values ? 6 : 4));
    if (!values) { /* RoPE at a position inside a 128-token chunk, rotate-half pairs */
      double pos = (double)(rnd(&s) % 128);
      unsigned h = dim / 2;
      for (unsigned k = 0; k < h; k++) {
        double th = pos * pow(10000.0, -2.0 * k / dim), c = cos(th), sn = sin(th);
        double a = v[k], b = v[k + h];
        v[k] = (float)(a * c - b * sn);
        v[k + h] = (float)(a * sn + b * c);
      }
    }
  }
  free(scale);
  free(mean);
  return x;
}

/* o = softmax(q K^T / sqrt(d)) V over m keys/values (indices idx). */
static void attend(const float *q, const float *K, const float *V, const size_t *idx, int m,
                   unsigned d, double *o) {
  double w[64], mx = -1e300, sum = 0;
  for (int i = 0; i < m; i++) {
    double dot = 0;
    for (unsigned j = 0; j < d; j++)
      dot += (double)q[j] * K[idx[i] * d + j];
    w[i] = dot / sqrt((double)d);
    if (w[i] > mx)
      mx = w[i];
  }
  for (int i = 0; i < m; i++)
    sum += w[i] = exp(w[i] - mx);
  for (unsigned j = 0; j < d; j++)
    o[j] = 0;
  for (int i = 0; i < m; i++)
    for (unsigned j = 0; j < d; j++)
      o[j] += w[i] / sum * V[idx[i] * d + j];
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int fail(const char *what, int rc) {
  fprintf(stderr, "m3-bench codec: %s: %s (%s)\n", what, m3_errmsg(), m3_err_name(rc));
  return 2;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: m3-bench codec [--codec STR] [--codec-v STR] [--train N] [--test N]\n"
          "                      [--vectors FILE] [--values FILE] [--dim D] [--queries Q]\n"
          "                      [--memories M] [--seed S] [--save PATH] [--load PATH]\n"
          "                      [--logit-std X] [--threads N] [--checkpoint DIR]\n"
          "                      [--json]\n"
          "  STR: FAISS index_factory string (default %s) or raw-f32|raw-f16|raw-bf16\n"
          "  FILE: fvecs (int32 d, then d float32, per vector)\n",
          M3_CODEC_DEFAULT_FACTORY);
}

/* Load n_train + n_test vectors of a file, or synthesize them. */
static int get_data(const char *path, int values, unsigned *dim, size_t n_train, size_t n_test,
                    uint64_t seed, float **train, float **test) {
  if (!path) {
    *train = synth(n_train, *dim, values, seed, seed * 7 + 1);
    *test = synth(n_test, *dim, values, seed, seed * 7 + 2);
    return 0;
  }
  float *x;
  size_t n;
  int rc = m3_codec_vectors_read(path, 0, &x, &n, dim);
  if (rc)
    return rc;
  if (n < n_train + n_test) {
    free(x);
    return m3__seterr(M3_EINVAL, "%s holds %zu vectors, --train + --test need %zu", path, n,
                      n_train + n_test);
  }
  *train = x;
  *test = malloc(n_test * *dim * sizeof(float));
  memcpy(*test, x + n_train * *dim, n_test * *dim * sizeof(float));
  return 0;
}

int m3_bench_codec(int argc, char **argv) {
  const char *codec = M3_CODEC_DEFAULT_FACTORY, *codec_v = NULL, *vectors = NULL,
             *values_path = NULL, *save = NULL, *load = NULL,
             *checkpoint = NULL;
  unsigned threads = 0;
  size_t n_train = 65536, n_test = 8192, n_queries = 2000, n_mem = 16;
  unsigned dim = 80;
  uint64_t seed = 1;
  double logit_std = 3.0;
  int json = 0, ret = 0, rc;
  static const struct option opts[] = {
      {"codec", required_argument, 0, 'c'},   {"codec-v", required_argument, 0, 'C'},
      {"train", required_argument, 0, 't'},   {"test", required_argument, 0, 'T'},
      {"vectors", required_argument, 0, 'v'}, {"values", required_argument, 0, 'V'},
      {"dim", required_argument, 0, 'd'},     {"queries", required_argument, 0, 'q'},
      {"memories", required_argument, 0, 'm'}, {"seed", required_argument, 0, 's'},
      {"save", required_argument, 0, 'S'},    {"json", no_argument, 0, 'j'},
      {"logit-std", required_argument, 0, 'L'}, {"load", required_argument, 0, 'l'},
      {"threads", required_argument, 0, 'P'}, {"checkpoint", required_argument, 0, 'K'},
      {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
  if (m3_cli_exact_long(argc, argv, "", opts, "m3-bench codec")) return 2;
  optind = 0; /* glibc: full reset, m3-bench may have parsed before */
  int ch;
  while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (ch) {
    case 'c': codec = optarg; break;
    case 'C': codec_v = optarg; break;
    case 't': n_train = strtoull(optarg, NULL, 10); break;
    case 'T': n_test = strtoull(optarg, NULL, 10); break;
    case 'v': vectors = optarg; break;
    case 'V': values_path = optarg; break;
    case 'd': dim = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'q': n_queries = strtoull(optarg, NULL, 10); break;
    case 'm': n_mem = strtoull(optarg, NULL, 10); break;
    case 's': seed = strtoull(optarg, NULL, 10); break;
    case 'S': save = optarg; break;
    case 'j': json = 1; break;
    case 'L': logit_std = strtod(optarg, NULL); break;
    case 'l': load = optarg; break;
    case 'P': threads = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'K': checkpoint = optarg; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 1;
    }
  }
  if (n_train == 0 || n_test < 40 || dim == 0 || dim > M3_CODEC_MAX_DIM || n_mem == 0) {
    usage(stderr);
    return 1;
  }
  int kind = M3_CODEC_FAISS;
  if (!strcmp(codec, "raw-f32")) kind = M3_CODEC_RAW_F32;
  else if (!strcmp(codec, "raw-f16")) kind = M3_CODEC_RAW_F16;
  else if (!strcmp(codec, "raw-bf16")) kind = M3_CODEC_RAW_BF16;

  float *ktr = NULL, *kte = NULL, *vtr = NULL, *vte = NULL, *kdec = NULL, *vdec = NULL;
  float *ref = NULL, *mout = NULL;
  uint8_t *kcode = NULL, *vcode = NULL, *mcodes = NULL;
  double *errs = NULL;
  m3_codec_set *cs = NULL;
  unsigned vdim = dim;
  if ((rc = get_data(vectors, 0, &dim, n_train, n_test, seed, &ktr, &kte)) != 0) {
    ret = fail("key vectors", rc);
    goto out;
  }
  vdim = dim;
  if ((rc = get_data(values_path ? values_path : vectors, values_path || !vectors ? 1 : 0, &vdim,
                     n_train, n_test, seed, &vtr, &vte)) != 0) {
    ret = fail("value vectors", rc);
    goto out;
  }
  if (vdim != dim) {
    fprintf(stderr, "m3-bench codec: keys have %u dims, values %u\n", dim, vdim);
    ret = 1;
    goto out;
  }

  /* train */
  m3_codec_train_opts o = {0};
  o.kind = kind;
  o.head_dim = (uint16_t)dim;
  o.factory_k = codec;
  o.factory_v = codec_v;
  o.seed = seed;
  o.verbose = 1;
  o.threads = threads;
  o.checkpoint_dir = checkpoint;
  m3_codec_sample sm[2] = {{ktr, n_train}, {vtr, n_train}};
  double t0 = now_s();
  if (load) { /* measure a saved set: no training */
    if ((rc = m3_codec_set_open(load, &cs)) != 0) {
      ret = fail("load", rc);
      goto out;
    }
    if (m3_codec_set_head_dim(cs) != dim) {
      fprintf(stderr, "m3-bench codec: %s codes %u-dim vectors, the data have %u\n", load,
              m3_codec_set_head_dim(cs), dim);
      ret = 1;
      goto out;
    }
  } else if ((rc = m3_codec_set_train(&o, sm, &cs)) != 0) {
    ret = fail("train", rc);
    goto out;
  }
  double train_s = load ? 0 : now_s() - t0;
  if (save && (rc = m3_codec_set_save(cs, save)) != 0) {
    ret = fail("save", rc);
    goto out;
  }
  const size_t cb = m3_codec_set_code_bytes(cs);
  m3_codec_info ik, iv;
  m3_codec_set_info(cs, 0, M3_KV_K, &ik);
  m3_codec_set_info(cs, 0, M3_KV_V, &iv);

  /* encode the test vectors (FAISS's encoder: the figures below are its codes') */
  if (m3_codec_set_kind(cs) == M3_CODEC_FAISS &&
      (rc = m3_codec_set_encoder(cs, M3_CODEC_ENC_FAISS)) != 0) {
    ret = fail("encoder", rc);
    goto out;
  }
  kcode = malloc(n_test * cb);
  vcode = malloc(n_test * cb);
  kdec = malloc(n_test * dim * sizeof(float));
  vdec = malloc(n_test * dim * sizeof(float));
  ref = malloc(n_test * dim * sizeof(float));
  t0 = now_s();
  if ((rc = m3_codec_encode_vectors(cs, 0, M3_KV_K, kte, n_test, kcode)) != 0 ||
      (rc = m3_codec_encode_vectors(cs, 0, M3_KV_V, vte, n_test, vcode)) != 0) {
    ret = fail("encode", rc);
    goto out;
  }
  double enc_s = now_s() - t0;
  if ((rc = m3_codec_decode_vectors(cs, 0, M3_KV_K, kcode, n_test, M3_DTYPE_F32, kdec)) != 0 ||
      (rc = m3_codec_decode_vectors(cs, 0, M3_KV_V, vcode, n_test, M3_DTYPE_F32, vdec)) != 0) {
    ret = fail("decode", rc);
    goto out;
  }
  /* table decode vs FAISS decode on the test codes */
  double test_check = 0;
  for (int kv = 0; kv < 2; kv++) {
    if ((rc = m3_codec_decode_vectors_faiss(cs, 0, kv, kv ? vcode : kcode, n_test, ref)) != 0) {
      ret = fail("faiss decode", rc);
      goto out;
    }
    const float *mine = kv ? vdec : kdec;
    for (size_t i = 0; i < n_test * dim; i++)
      test_check = fmax(test_check, fabs((double)mine[i] - ref[i]));
  }
  /* reconstruction error */
  double ek = 0, nk = 0, ev = 0, nv = 0;
  for (size_t i = 0; i < n_test * dim; i++) {
    ek += ((double)kte[i] - kdec[i]) * ((double)kte[i] - kdec[i]);
    nk += (double)kte[i] * kte[i];
    ev += ((double)vte[i] - vdec[i]) * ((double)vte[i] - vdec[i]);
    nv += (double)vte[i] * vte[i];
  }
  /* attention over a memory of 40 keys and values (5 memories x 8 tokens);
   * queries are drawn like keys (synthetic) or are other test keys (real
   * data), scaled so that the logits q.k/sqrt(d) have std logit_std */
  float *queries = malloc(n_queries * dim * sizeof(float));
  uint64_t rs = seed * 31 + 5;
  if (!vectors) {
    float *qs = synth(n_queries, dim, 0, seed, seed * 7 + 3);
    memcpy(queries, qs, n_queries * dim * sizeof(float));
    free(qs);
  } else {
    for (size_t qi = 0; qi < n_queries; qi++)
      memcpy(queries + qi * dim, kte + (rnd(&rs) % n_test) * dim, dim * sizeof(float));
  }
  {
    double s1 = 0, s2 = 0;
    size_t cnt = 0;
    for (size_t qi = 0; qi < n_queries; qi++)
      for (int i = 0; i < 8; i++, cnt++) {
        const float *k = kte + (rnd(&rs) % n_test) * dim;
        double z = 0;
        for (unsigned jj = 0; jj < dim; jj++)
          z += (double)queries[qi * dim + jj] * k[jj];
        z /= sqrt((double)dim);
        s1 += z;
        s2 += z * z;
      }
    double sd = cnt > 1 ? sqrt(fmax(s2 / cnt - (s1 / cnt) * (s1 / cnt), 1e-30)) : 1;
    for (size_t i = 0; i < n_queries * dim; i++)
      queries[i] = (float)(queries[i] * logit_std / sd);
  }
  errs = malloc(n_queries * sizeof(double));
  double *oe = malloc(dim * sizeof(double)), *od = malloc(dim * sizeof(double));
  for (size_t qi = 0; qi < n_queries; qi++) {
    size_t idx[40];
    for (int i = 0; i < 40; i++)
      idx[i] = rnd(&rs) % n_test;
    const float *q = queries + qi * dim;
    attend(q, kte, vte, idx, 40, dim, oe);
    attend(q, kdec, vdec, idx, 40, dim, od);
    double d2 = 0, n2 = 0;
    for (unsigned j = 0; j < dim; j++) {
      d2 += (oe[j] - od[j]) * (oe[j] - od[j]);
      n2 += oe[j] * oe[j];
    }
    errs[qi] = sqrt(d2 / (n2 > 0 ? n2 : 1e-300));
  }
  free(oe);
  free(od);
  free(queries);
  double attn_mean = 0;
  for (size_t qi = 0; qi < n_queries; qi++)
    attn_mean += errs[qi];
  attn_mean /= (double)(n_queries ? n_queries : 1);
  qsort(errs, n_queries, sizeof(double), cmp_double);
  double attn_p99 = n_queries ? errs[(size_t)(0.99 * (double)(n_queries - 1))] : 0;

  /* CPU decode speed: whole memories of shape 22 x 8 x 8 x dim */
  m3_spec spec = {22, 8, 8, (uint16_t)dim};
  const size_t per_mem = m3_spec_vectors(&spec);
  mcodes = malloc(n_mem * per_mem * cb);
  mout = malloc(n_mem * per_mem * dim * sizeof(float));
  for (size_t i = 0; i < n_mem * per_mem; i++) /* tile the real test codes */
    memcpy(mcodes + i * cb, (i & 1 ? vcode : kcode) + (i / 2 % n_test) * cb, cb);
  double gbps[4] = {0};
  for (int dtype = M3_DTYPE_F32; dtype <= M3_DTYPE_BF16; dtype++) {
    size_t reps = 0;
    double t1 = now_s(), el;
    do {
      if ((rc = m3_codec_decode(cs, &spec, mcodes, n_mem, dtype, mout)) != 0) {
        ret = fail("decode memories", rc);
        goto out;
      }
      reps++;
    } while ((el = now_s() - t1) < (dtype == M3_DTYPE_F32 ? 2.0 : 1.0));
    gbps[dtype] = (double)reps * (double)n_mem * (double)m3_codec_decoded_size(&spec, dtype) /
                  el / 1e9;
  }

  json_t *j = json_object();
  json_object_set_new(j, "codec", json_string(load ? ik.factory : codec));
  if (load)
    json_object_set_new(j, "loaded", json_string(load));
  json_object_set_new(j, "codec_v", json_string(load ? iv.factory : codec_v ? codec_v : codec));
  json_object_set_new(j, "data", json_string(vectors ? vectors : "synthetic"));
  json_object_set_new(j, "dim", json_integer(dim));
  json_object_set_new(j, "n_train", json_integer((json_int_t)n_train));
  json_object_set_new(j, "n_test", json_integer((json_int_t)n_test));
  json_object_set_new(j, "code_bytes", json_integer((json_int_t)cb));
  json_object_set_new(j, "compression_vs_bf16", json_real(2.0 * dim / (double)cb));
  json_object_set_new(j, "rel_mse", json_real((ek + ev) / (nk + nv)));
  json_object_set_new(j, "rel_mse_k", json_real(ek / nk));
  json_object_set_new(j, "rel_mse_v", json_real(ev / nv));
  json_object_set_new(j, "attn_rel_err", json_real(attn_mean));
  json_object_set_new(j, "attn_rel_err_p99", json_real(attn_p99));
  json_object_set_new(j, "attn_queries", json_integer((json_int_t)n_queries));
  json_object_set_new(j, "attn_logit_std", json_real(logit_std));
  json_object_set_new(j, "decode_cpu_gbps", json_real(gbps[M3_DTYPE_F32]));
  json_object_set_new(j, "decode_cpu_gbps_f16", json_real(gbps[M3_DTYPE_F16]));
  json_object_set_new(j, "decode_cpu_gbps_bf16", json_real(gbps[M3_DTYPE_BF16]));
  json_object_set_new(j, "decode_memories_per_s",
                      json_real(gbps[M3_DTYPE_F32] * 1e9 /
                                (double)m3_codec_decoded_size(&spec, M3_DTYPE_F32)));
  json_object_set_new(j, "encode_vectors_per_s", json_real(2.0 * (double)n_test / enc_s));
  if ((rc = m3_bench_codec_encoders(cs, kte, vte, n_test, dim, j)) != 0) {
    ret = fail("encoders", rc);
    json_decref(j);
    goto out;
  }
  json_object_set_new(j, "train_s", load ? json_null() : json_real(train_s));
  json_object_set_new(j, "table_check", json_real(fmax(ik.check_abs, iv.check_abs)));
  json_object_set_new(j, "table_check_test", json_real(test_check));
  json_object_set_new(j, "fingerprint", json_sprintf("%016llx",
                      (unsigned long long)m3_codec_set_fingerprint(cs)));
  if (json) {
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
    printf("%s\n", s);
    free(s);
  } else {
    printf("codec %s: %zu bytes (%.2fx vs bf16), rel_mse %.4g, attn_rel_err %.4g, "
           "decode %.2f GB/s, encode %.0f vec/s, train %.1f s, table_check %.3g\n",
           codec, cb, 2.0 * dim / (double)cb, (ek + ev) / (nk + nv), attn_mean,
           gbps[M3_DTYPE_F32], 2.0 * (double)n_test / enc_s, train_s,
           fmax(ik.check_abs, iv.check_abs));
    json_t *g = json_object_get(j, "encode_gemm_vectors_per_s");
    if (g)
      printf("encoders: FAISS sa_encode %.0f vec/s, GEMM %.0f vec/s (%.2fx), sgemm %.1f GFLOP/s "
             "at %s, GEMM encoder %.1f GFLOP/s, codes equal %.4f, rel_mse FAISS %.6g GEMM %.6g "
             "(one-core CPU time, load average %.1f)\n",
             json_real_value(json_object_get(j, "encode_faiss_vectors_per_s")),
             json_real_value(g), json_real_value(json_object_get(j, "encode_speedup")),
             json_real_value(json_object_get(j, "sgemm_gflops")),
             json_string_value(json_object_get(j, "gemm_shape")),
             json_real_value(json_object_get(j, "encode_gemm_gflops")),
             json_real_value(json_object_get(j, "code_agreement")),
             json_real_value(json_object_get(j, "rel_mse_faiss")),
             json_real_value(json_object_get(j, "rel_mse_gemm")),
             json_real_value(json_object_get(j, "load_avg")));
  }
  json_decref(j);
out:
  m3_codec_set_close(cs);
  free(errs);
  free(mout);
  free(mcodes);
  free(ref);
  free(vdec);
  free(kdec);
  free(vcode);
  free(kcode);
  free(vte);
  free(vtr);
  free(kte);
  free(ktr);
  return ret;
}
