/*
 * m3-bench encode: the encoder's memory-layer forward + token selection
 * against OpenBLAS sgemm on the same machine, in the same run.
 *
 * A random Llama-family model of the asked shape is written to a temporary
 * folder (bf16 safetensors, only the memory layers: the others are never
 * read) and opened like a real checkpoint. Batches of full-length
 * sequences are encoded; FLOPs are those m3_forward_flops counts (the
 * projections, attention and selection score GEMMs). The baseline is
 * cblas_sgemm on the forward's largest GEMM shape (tokens x 2I x hidden,
 * the fused gate|up projection), timed the same way.
 */
#include <cblas.h> /* includes <complex.h>: no variable may be named I */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "m3/internal/cli.h"
#include "m3/error.h"
#include "m3/forward.h"
#include "m3/model.h"

static const char *usage_encode =
    "usage: m3-bench encode [--hidden 1024] [--layers 8] [--mem-layers L/2] [--heads 16]\n"
    "                       [--kv-heads 4] [--head-dim 64] [--intermediate 8/3*hidden]\n"
    "                       [--batch 8] [--seq 128] [--iters 5] [--backend cpu|cuda|auto]\n"
    "                       [--seed S] [--json]\n"
    "Time the memory-layer forward + selection of a random model of that shape and\n"
    "compare its GFLOP/s with cblas_sgemm on the largest GEMM shape it runs.\n";

static void rm_model(const char *dir) {
  char p[4200];
  const char *files[] = {"config.json", "model.safetensors"};
  for (size_t i = 0; i < 2; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, files[i]);
    unlink(p);
  }
  rmdir(dir);
}

static double median(double *v, int n) {
  bench_sort(v, (size_t)n);
  return v[n / 2];
}

int bench_encode(int argc, char **argv) {
  int hidden = 1024, layers = 8, mem_layers = 0, heads = 16, kv_heads = 4, head_dim = 64;
  int inter = 0, batch = 8, seq = 128, iters = 5, json = 0;
  uint64_t seed = 1;
  const char *backend = "auto";
  static const struct option opts[] = {
      {"hidden", required_argument, 0, 'E'},   {"layers", required_argument, 0, 'L'},
      {"mem-layers", required_argument, 0, 'M'}, {"heads", required_argument, 0, 'H'},
      {"kv-heads", required_argument, 0, 'K'}, {"head-dim", required_argument, 0, 'D'},
      {"intermediate", required_argument, 0, 'F'}, {"batch", required_argument, 0, 'b'},
      {"seq", required_argument, 0, 's'},      {"iters", required_argument, 0, 'n'},
      {"backend", required_argument, 0, 'k'},  {"seed", required_argument, 0, 'S'},
      {"json", no_argument, 0, 'j'},           {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  int c;
  if (m3_cli_exact_long(argc, argv, "", opts, "m3-bench")) return 2;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'E': hidden = atoi(optarg); break;
    case 'L': layers = atoi(optarg); break;
    case 'M': mem_layers = atoi(optarg); break;
    case 'H': heads = atoi(optarg); break;
    case 'K': kv_heads = atoi(optarg); break;
    case 'D': head_dim = atoi(optarg); break;
    case 'F': inter = atoi(optarg); break;
    case 'b': batch = atoi(optarg); break;
    case 's': seq = atoi(optarg); break;
    case 'n': iters = atoi(optarg); break;
    case 'k': backend = optarg; break;
    case 'S': seed = strtoull(optarg, NULL, 0); break;
    case 'j': json = 1; break;
    case 'h': fputs(usage_encode, stdout); return 0;
    default: fputs(usage_encode, stderr); return 2;
    }
  }
  if (mem_layers <= 0) mem_layers = layers / 2 > 0 ? layers / 2 : 1;
  if (iters < 1 || batch < 1 || seq < 2 || mem_layers > layers) {
    fputs(usage_encode, stderr);
    return 2;
  }

  char dir[] = "/tmp/m3-bench-encode-XXXXXX";
  if (!mkdtemp(dir)) {
    perror("m3-bench: mkdtemp");
    return 2;
  }
  m3_testmodel_params p;
  m3_testmodel_params_default(&p);
  p.n_layers = mem_layers, p.hidden_size = hidden, p.n_heads = heads, p.n_kv_heads = kv_heads;
  p.head_dim = head_dim, p.intermediate_size = inter, p.vocab_size = 1024, p.seed = seed;
  p.max_position_embeddings = seq, p.dtype = M3_DTYPE_BF16;
  int rc, ret = 2;
  m3_model *m = NULL;
  m3_forward *f = NULL;
  int32_t *tokens = NULL, *lens = NULL, *npre = NULL;
  uint16_t *pos = NULL;
  float *kv = NULL, *A = NULL, *B = NULL, *C = NULL;
  double *times = calloc((size_t)iters, sizeof(double));
  if ((rc = m3_testmodel_write(dir, &p))) {
    ret = bench_fail("write test model", rc);
    goto out;
  }
  m3_model_opts mo = {.n_mem_layers = mem_layers};
  if ((rc = m3_model_open(dir, &mo, &m))) {
    ret = bench_fail("open model", rc);
    goto out;
  }
  m3_forward_opts fo = {.backend = backend, .max_batch = batch, .max_seq = seq, .n_tokens = 8};
  if ((rc = m3_forward_create(m, &fo, &f))) {
    ret = bench_fail("create forward", rc);
    goto out;
  }
  m3_spec sp = m3_forward_spec(f);
  size_t mem_kv = (size_t)sp.n_layers * 2 * sp.n_kv_heads * sp.n_tokens * sp.head_dim;
  size_t mem_pos = (size_t)sp.n_layers * sp.n_kv_heads * sp.n_tokens;
  tokens = malloc((size_t)batch * seq * sizeof *tokens);
  lens = malloc((size_t)batch * sizeof *lens);
  npre = malloc((size_t)batch * sizeof *npre);
  pos = malloc((size_t)batch * mem_pos * sizeof *pos);
  kv = malloc((size_t)batch * mem_kv * sizeof *kv);
  if (!tokens || !lens || !npre || !pos || !kv || !times) {
    fprintf(stderr, "m3-bench: out of memory\n");
    goto out;
  }
  uint64_t rs = seed | 1;
  for (size_t i = 0; i < (size_t)batch * seq; i++) tokens[i] = (int32_t)(bench_rand(&rs) % 1024);
  for (int s = 0; s < batch; s++) lens[s] = seq, npre[s] = 3;
  m3_batch b = {batch, seq, tokens, lens, npre};
  m3_memories out = {pos, kv, NULL};
  if ((rc = m3_forward_run(f, &b, &out))) { /* warm-up */
    ret = bench_fail("forward", rc);
    goto out;
  }
  for (int it = 0; it < iters; it++) {
    uint64_t t0 = bench_now_ns();
    if ((rc = m3_forward_run(f, &b, &out))) {
      ret = bench_fail("forward", rc);
      goto out;
    }
    times[it] = (double)(bench_now_ns() - t0) / 1e9;
  }
  double t_enc = median(times, iters);
  double flops = m3_forward_flops(m, &b);
  double enc_gflops = flops / t_enc / 1e9, tok_s = (double)batch * seq / t_enc;

  /* Baseline: the largest GEMM of the forward, same call form. */
  const m3_model_config *cfg = m3_model_get_config(m);
  int M = batch * seq, N = 2 * cfg->intermediate_size, Kd = cfg->hidden_size;
  A = malloc((size_t)M * Kd * sizeof *A);
  B = malloc((size_t)N * Kd * sizeof *B);
  C = malloc((size_t)M * N * sizeof *C);
  if (!A || !B || !C) {
    fprintf(stderr, "m3-bench: out of memory\n");
    goto out;
  }
  for (size_t i = 0; i < (size_t)M * Kd; i++) A[i] = (float)(bench_rand(&rs) % 1000) / 1000.0f - 0.5f;
  for (size_t i = 0; i < (size_t)N * Kd; i++) B[i] = (float)(bench_rand(&rs) % 1000) / 1000.0f - 0.5f;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, Kd, 1.0f, A, Kd, B, Kd, 0.0f, C, N);
  for (int it = 0; it < iters; it++) {
    uint64_t t0 = bench_now_ns();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, Kd, 1.0f, A, Kd, B, Kd, 0.0f, C, N);
    times[it] = (double)(bench_now_ns() - t0) / 1e9;
  }
  double t_gemm = median(times, iters);
  double sgemm_gflops = 2.0 * M * N * Kd / t_gemm / 1e9, ratio = enc_gflops / sgemm_gflops;

  if (json) {
    json_t *j = json_object();
    json_object_set_new(j, "bench", json_string("encode"));
    json_object_set_new(j, "backend", json_string(m3_forward_backend_name(f)));
    json_object_set_new(j, "hidden", json_integer(hidden));
    json_object_set_new(j, "layers", json_integer(layers));
    json_object_set_new(j, "mem_layers", json_integer(mem_layers));
    json_object_set_new(j, "heads", json_integer(heads));
    json_object_set_new(j, "kv_heads", json_integer(kv_heads));
    json_object_set_new(j, "head_dim", json_integer(head_dim));
    json_object_set_new(j, "intermediate", json_integer(cfg->intermediate_size));
    json_object_set_new(j, "batch", json_integer(batch));
    json_object_set_new(j, "seq", json_integer(seq));
    json_object_set_new(j, "iters", json_integer(iters));
    json_object_set_new(j, "blas_threads", json_integer(openblas_get_num_threads()));
    json_object_set_new(j, "batch_ms", json_real(t_enc * 1e3));
    json_object_set_new(j, "tokens_per_s", json_real(tok_s));
    json_object_set_new(j, "chunks_per_s", json_real(batch / t_enc));
    json_object_set_new(j, "gflop_per_batch", json_real(flops / 1e9));
    json_object_set_new(j, "encoder_gflops", json_real(enc_gflops));
    char shape[64];
    snprintf(shape, sizeof shape, "%dx%dx%d", M, N, Kd);
    json_object_set_new(j, "sgemm_shape", json_string(shape));
    json_object_set_new(j, "sgemm_gflops", json_real(sgemm_gflops));
    json_object_set_new(j, "ratio", json_real(ratio));
    bench_print_json(j);
  } else {
    printf("encode %s: hidden %d, %d memory layers, %d heads / %d kv, head_dim %d, batch %d x %d\n",
           m3_forward_backend_name(f), hidden, mem_layers, heads, kv_heads, head_dim, batch, seq);
    printf("  %.1f ms per batch, %.0f tokens/s, %.2f GFLOP/s\n", t_enc * 1e3, tok_s, enc_gflops);
    printf("  sgemm %dx%dx%d: %.2f GFLOP/s; ratio %.3f\n", M, N, Kd, sgemm_gflops, ratio);
  }
  ret = 0;
out:
  free(A), free(B), free(C), free(tokens), free(lens), free(npre), free(pos), free(kv), free(times);
  m3_forward_destroy(f);
  m3_model_close(m);
  rm_model(dir);
  return ret;
}
