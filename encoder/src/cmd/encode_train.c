/*
 * m3-encode train-codec and m3-encode test-model.
 *
 * train-codec: a deterministic uniform sample (reservoir, seeded) of the
 * knowledge base's chunks goes through the memory layers exactly as the
 * encode command sends them (same prefix, same token budget); the keys and
 * values of the selected tokens (real slots only) are the training vectors
 * of the codec set (one K and one V codec, or one pair per memory layer).
 *
 * test-model: a random-weight Llama-family model (m3_testmodel_write) with a
 * BPE tokenizer.json learnt from a corpus by enc_bpe_train, so that the
 * model folder works without any tool outside m3.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "encode_int.h"
#include "m3/codec.h"
#include "m3/error.h"
#include "m3/internal/cli.h"
#include "m3/forward.h"
#include "m3/model.h"
#include "m3/sequence.h"
#include "m3/tokenizer.h"

#ifndef M3_SOURCE_DIR
#define M3_SOURCE_DIR "."
#endif

static int errout(const char *what, int rc) {
  const char *msg = m3_errmsg();
  fprintf(stderr, "m3-encode: %s%s%s\n", what, *msg ? ": " : "", msg);
  return rc == M3_EBADFORMAT ? 1 : 2;
}

static int num(const char *opt, const char *s, long lo, long hi, long *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (!*s || *end || v < lo || v > hi) {
    fprintf(stderr, "m3-encode: %s '%s' is not an integer in %ld..%ld\n", opt, s, lo, hi);
    return -1;
  }
  *out = v;
  return 0;
}

static uint64_t rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static const char *train_usage =
    "usage: m3-encode train-codec --model DIR --input PATH --out FILE [options]\n"
    "  --codec STR          FAISS index_factory for keys (" M3_CODEC_DEFAULT_FACTORY ")\n"
    "                       or raw-f32|raw-f16|raw-bf16 (nothing to train)\n"
    "  --codec-v STR        factory for values (default: the keys')\n"
    "  --per-layer          one K/V codec pair per memory layer\n"
    "  --sample N           chunks sampled from the input (2000)\n"
    "  --max-vectors N      training vectors per codec at most (1000000)\n"
    "  --seed N             sampling and check seed (1)\n"
    "  --allow-no-tables    keep a codec that decodes only through FAISS\n"
    "  --threads N          FAISS training threads: OpenMP and OpenBLAS teams (1)\n"
    "  --checkpoint DIR     keep each trained codebook in DIR; a rerun with the same\n"
    "                       options reads those back and trains only the rest\n"
    "  --save-vectors P     also write the sampled training vectors as fvecs:\n"
    "                       P-k.fvecs and P-v.fvecs (--per-layer: P-LAYER-k.fvecs ...),\n"
    "                       for m3-bench codec --vectors/--values; without --out,\n"
    "                       only write them (no training)\n"
    "  --max-tokens, --prefix, --tokens-per-head, --mem-layers, --batch, --on-error\n"
    "                       as for encoding (use the same values)\n";

/* The sample cannot train factory fs (kvi: 0 keys, 1 values): its largest
 * codebook has need centroids, the sample gives have vectors per codec. Says
 * what to do, before FAISS runs (it would warn per codebook and then fail
 * with "nx >= k"). */
static void train_too_small(const char *fs, int kvi, size_t need, size_t have, size_t nres,
                            uint64_t seen, long sample, long maxv, int layers, int heads, int tokens) {
  fprintf(stderr,
          "m3-encode train-codec: '%s' cannot be trained on this sample: its largest codebook is a "
          "k-means of %zu centroids, which needs at least %zu %s vectors (FAISS asks for %zu, 39 per "
          "centroid), but the sample gives %zu per codec (%zu chunks sampled of %llu in the input, up "
          "to %d layers x %d heads x %d selected tokens each%s).\n"
          "  What to do: a codec with smaller codebooks (fewer bits per code: PQ<M>x<b> trains 2^b "
          "centroids, e.g. 'OPQ4_16,PQ4x8np' 256, 'PQ4x6' 64), ",
          fs, need, need, kvi ? "V" : "K", 39 * need, have, nres, (unsigned long long)seen, layers,
          heads, tokens, have == (size_t)maxv ? "; capped by --max-vectors" : "");
  size_t per_chunk = (size_t)layers * heads * tokens;
  size_t chunks = per_chunk ? (need + per_chunk - 1) / per_chunk : 0;
  if (seen > (uint64_t)sample)
    fprintf(stderr, "or a larger --sample (at least %zu chunks; the input has %llu)", chunks,
            (unsigned long long)seen);
  else
    fprintf(stderr, "or more chunks in --input (at least %zu; it has %llu, all sampled)", chunks,
            (unsigned long long)seen);
  if (have == (size_t)maxv) fprintf(stderr, ", or a larger --max-vectors");
  fprintf(stderr, ".\n");
}

int enc_cmd_train_codec(int argc, char **argv) {
  static const struct option opts[] = {
      {"model", required_argument, NULL, 'm'},   {"input", required_argument, NULL, 'i'},
      {"out", required_argument, NULL, 'o'},     {"codec", required_argument, NULL, 'c'},
      {"codec-v", required_argument, NULL, 'v'}, {"per-layer", no_argument, NULL, 'P'},
      {"sample", required_argument, NULL, 'n'},  {"max-vectors", required_argument, NULL, 'X'},
      {"seed", required_argument, NULL, 'S'},    {"allow-no-tables", no_argument, NULL, 'A'},
      {"max-tokens", required_argument, NULL, 'M'}, {"prefix", required_argument, NULL, 'p'},
      {"tokens-per-head", required_argument, NULL, 'T'},
      {"mem-layers", required_argument, NULL, 'L'}, {"batch", required_argument, NULL, 'b'},
      {"on-error", required_argument, NULL, 'E'}, {"help", no_argument, NULL, 'h'},
      {"threads", required_argument, NULL, 'j'}, {"checkpoint", required_argument, NULL, 'K'},
      {"save-vectors", required_argument, NULL, 'W'}, {NULL, 0, NULL, 0}};
  const char *model_dir = NULL, *input = NULL, *out = NULL, *fk = M3_CODEC_DEFAULT_FACTORY,
             *fv = NULL, *prefix = M3_SEQ_PREFIX, *ckpt = NULL, *save_vec = NULL;
  long sample = 2000, maxv = 1000000, seed = 1, max_tokens = M3_SEQ_MAX_TOKENS, tph = 8, mem = 0, B = 8, v;
  long threads = 1;
  int per_layer = 0, allow = 0, skip_bad = 0, c;
  if (m3_cli_exact_long(argc, argv, "h", opts, "m3-encode")) return 2;
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 'm': model_dir = optarg; break;
    case 'i': input = optarg; break;
    case 'o': out = optarg; break;
    case 'c': fk = optarg; break;
    case 'v': fv = optarg; break;
    case 'P': per_layer = 1; break;
    case 'A': allow = 1; break;
    case 'p': prefix = optarg; break;
    case 'n': if (num("--sample", optarg, 1, 100000000, &sample)) return 2; break;
    case 'X': if (num("--max-vectors", optarg, 1, 1L << 40, &maxv)) return 2; break;
    case 'S': if (num("--seed", optarg, 0, 1L << 62, &seed)) return 2; break;
    case 'M': if (num("--max-tokens", optarg, 16, M3_SELECT_MAX_LEN, &max_tokens)) return 2; break;
    case 'T': if (num("--tokens-per-head", optarg, 1, 1024, &tph)) return 2; break;
    case 'L': if (num("--mem-layers", optarg, 1, 65535, &mem)) return 2; break;
    case 'b': if (num("--batch", optarg, 1, 4096, &B)) return 2; break;
    case 'E': skip_bad = !strcmp(optarg, "skip"); break;
    case 'j': if (num("--threads", optarg, 1, 1024, &threads)) return 2; break;
    case 'K': ckpt = optarg; break;
    case 'W': save_vec = optarg; break;
    case 'h': fputs(train_usage, stdout); return 0;
    default: fputs(train_usage, stderr); return 2;
    }
  }
  /* FAISS trains with an OpenMP team and OpenBLAS's pool that busy-wait
   * between calls: with both on a 2-core machine each spins while the other
   * works (measured: 3x the CPU time of one thread, slower on the clock).
   * Their wait policies are read when the libraries load, so set them and
   * start again, once (docs/CODECS.md, "Training"). */
  if (threads > 1 && !getenv("M3_TRAIN_THREADS_SET")) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    setenv("OPENBLAS_THREAD_TIMEOUT", "4", 0);
    setenv("M3_TRAIN_THREADS_SET", "1", 1);
    char **av = calloc((size_t)argc + 2, sizeof *av);
    if (av) {
      av[0] = (char *)"m3-encode";
      for (int i = 0; i < argc; i++) av[i + 1] = argv[i];
      execv("/proc/self/exe", av);
      free(av);
    }
    fprintf(stderr, "m3-encode train-codec: cannot restart with passive thread waits (%s); going on\n",
            strerror(errno));
  }
  if (optind != argc || !model_dir || (!out && !save_vec) || (!input && strncmp(fk, "raw-", 4)) ||
      (save_vec && !input)) {
    fprintf(stderr, "m3-encode train-codec: --model, --input and --out (or --save-vectors) are required\n%s",
            train_usage);
    return 2;
  }
  (void)v;
  int rc, ex = 2;
  m3_model *m = NULL;
  m3_tokenizer *tok = NULL;
  enc_input *in = NULL;
  m3_forward *f = NULL;
  m3_codec_set *cs = NULL;
  enc_chunk *res = NULL;
  size_t nres = 0;
  uint64_t seen = 0;
  int32_t *tokens = NULL, *lens = NULL, *npre = NULL;
  uint16_t *pos = NULL;
  float *kv = NULL, **vecs = NULL;
  size_t *nvec = NULL;
  int ncodec = 0;
  m3_model_opts mo = {.n_mem_layers = (int)mem};
  if ((rc = m3_model_open(model_dir, &mo, &m)) != 0) { ex = errout("model", rc); goto done; }
  const m3_model_config *cfg = m3_model_get_config(m);
  int L = m3_model_mem_layers(m), K = cfg->n_kv_heads, D = cfg->head_dim, T = (int)tph;
  static const struct { const char *name; int kind; } raw[] = {
      {"raw-f32", M3_CODEC_RAW_F32}, {"raw-f16", M3_CODEC_RAW_F16}, {"raw-bf16", M3_CODEC_RAW_BF16}};
  for (int i = 0; i < 3 && !save_vec; i++)
    if (!strcmp(fk, raw[i].name)) {
      if ((rc = m3_codec_set_create_raw(raw[i].kind, (uint16_t)D, &cs)) != 0) { ex = errout("codec", rc); goto done; }
      goto save;
    }
  if ((rc = m3_tokenizer_load(model_dir, &tok)) != 0) { ex = errout("tokenizer", rc); goto done; }
  enc_input_opts io = {.path = input, .tok = tok, .prefix = prefix,
                       .max_tokens = (int)max_tokens, .skip_bad = skip_bad, .report = stderr,
                       .sample_only = 1};
  if ((rc = enc_input_open(&io, &in)) != 0) { ex = errout("input", rc); goto done; }
  /* Reservoir sample of the chunks (Algorithm R), kept in input order. */
  res = calloc((size_t)sample, sizeof *res);
  uint64_t *ord = calloc((size_t)sample, sizeof *ord);
  if (!res || !ord) { free(ord); ex = errout("out of memory", M3_ENOMEM); goto done; }
  uint64_t rs = (uint64_t)seed;
  for (;;) {
    enc_chunk ch;
    int got = enc_input_next(in, &ch);
    if (got < 0) { free(ord); ex = errout("input", got); goto done; }
    if (got == 0) break;
    if (nres < (size_t)sample) {
      ord[nres] = seen, res[nres++] = ch;
    } else {
      uint64_t j = rng_next(&rs) % (seen + 1);
      if (j < (uint64_t)sample) enc_chunk_free(&res[j]), res[j] = ch, ord[j] = seen;
      else enc_chunk_free(&ch);
    }
    seen++;
  }
  /* input order: insertion sort by ordinal (the sample is small) */
  for (size_t i = 1; i < nres; i++)
    for (size_t j = i; j > 0 && ord[j - 1] > ord[j]; j--) {
      uint64_t t = ord[j]; ord[j] = ord[j - 1]; ord[j - 1] = t;
      enc_chunk tc = res[j]; res[j] = res[j - 1]; res[j - 1] = tc;
    }
  free(ord);
  if (nres == 0) { fprintf(stderr, "m3-encode train-codec: no chunks in %s\n", input); goto done; }

  m3_forward_opts fo = {.max_batch = (int)B, .max_seq = (int)max_tokens, .n_tokens = T};
  if ((rc = m3_forward_create(m, &fo, &f)) != 0) { ex = errout("forward", rc); goto done; }
  ncodec = per_layer ? 2 * L : 2;
  vecs = calloc((size_t)ncodec, sizeof *vecs);
  nvec = calloc((size_t)ncodec, sizeof *nvec);
  size_t per_codec_max = (size_t)nres * (per_layer ? 1 : (size_t)L) * K * T;
  if (per_codec_max > (size_t)maxv) per_codec_max = (size_t)maxv;
  /* the sample against the codec, before any forward pass: at most
   * per_codec_max vectors per codec (fewer where chunks are short); FAISS
   * k-means needs at least k vectors per codebook and asks for 39 k */
  for (int kvi = 0; kvi < 2 && out; kvi++) { /* (only saving vectors: no codec) */
    const char *fs = kvi && fv ? fv : fk;
    size_t need, want;
    m3_codec_train_sample_size(fs, &need, &want);
    if (per_codec_max < need) {
      train_too_small(fs, kvi, need, per_codec_max, nres, seen, sample, maxv, per_layer ? 1 : L, K, T);
      ex = 1;
      goto done;
    }
    if (per_codec_max < want)
      fprintf(stderr, "m3-encode train-codec: warning: at most %zu %s vectors per codec; '%s' wants %zu "
                      "(39 per centroid of its %zu-centroid k-means): raise --sample to train it fully\n",
              per_codec_max, kvi ? "V" : "K", fs, want, need);
  }
  tokens = malloc((size_t)B * max_tokens * sizeof *tokens);
  lens = malloc((size_t)B * sizeof *lens);
  npre = malloc((size_t)B * sizeof *npre);
  pos = malloc((size_t)B * L * K * T * sizeof *pos);
  kv = malloc((size_t)B * L * 2 * K * T * D * sizeof *kv);
  if (!vecs || !nvec || !tokens || !lens || !npre || !pos || !kv) { ex = errout("out of memory", M3_ENOMEM); goto done; }
  for (int i = 0; i < ncodec; i++)
    if (!(vecs[i] = malloc(per_codec_max * D * sizeof(float)))) { ex = errout("out of memory", M3_ENOMEM); goto done; }
  for (size_t s0 = 0; s0 < nres; s0 += (size_t)B) {
    int n = (int)(nres - s0 < (size_t)B ? nres - s0 : (size_t)B), S = 1;
    for (int i = 0; i < n; i++) S = res[s0 + i].n_tokens > S ? res[s0 + i].n_tokens : S;
    memset(tokens, 0, (size_t)n * S * sizeof *tokens);
    for (int i = 0; i < n; i++) {
      memcpy(tokens + (size_t)i * S, res[s0 + i].tokens, (size_t)res[s0 + i].n_tokens * sizeof *tokens);
      lens[i] = res[s0 + i].n_tokens, npre[i] = res[s0 + i].n_prefix;
    }
    m3_batch mb = {n, S, tokens, lens, npre};
    m3_memories out_m = {pos, kv, NULL};
    if ((rc = m3_forward_run(f, &mb, &out_m)) != 0) { ex = errout("forward", rc); goto done; }
    for (int i = 0; i < n; i++)
      for (int l = 0; l < L; l++)
        for (int kvi = 0; kvi < 2; kvi++) {
          int ci = per_layer ? 2 * l + kvi : kvi;
          for (int g = 0; g < K; g++)
            for (int t = 0; t < T; t++) {
              if (pos[(((size_t)i * L + l) * K + g) * T + t] == M3_POS_NONE) continue;
              if (nvec[ci] >= per_codec_max) continue;
              const float *src = kv + ((((size_t)i * L + l) * 2 + kvi) * K + g) * T * D + (size_t)t * D;
              memcpy(vecs[ci] + nvec[ci]++ * D, src, (size_t)D * sizeof(float));
            }
        }
  }
  if (save_vec) {
    for (int ci = 0; ci < ncodec; ci++) {
      char path[4200];
      if (per_layer) snprintf(path, sizeof path, "%s-%d-%c.fvecs", save_vec, ci / 2, ci % 2 ? 'v' : 'k');
      else snprintf(path, sizeof path, "%s-%c.fvecs", save_vec, ci ? 'v' : 'k');
      if ((rc = m3_codec_vectors_write(path, vecs[ci], nvec[ci], (unsigned)D)) != 0) {
        ex = errout("--save-vectors", rc);
        goto done;
      }
      fprintf(stderr, "m3-encode train-codec: wrote %zu %s vectors of %d dims to %s\n", nvec[ci],
              ci % 2 ? "V" : "K", D, path);
    }
    if (!out) {
      ex = 0;
      goto done;
    }
    for (int i = 0; i < 3; i++) /* a raw codec: nothing to train */
      if (!strcmp(fk, raw[i].name)) {
        if ((rc = m3_codec_set_create_raw(raw[i].kind, (uint16_t)D, &cs)) != 0) { ex = errout("codec", rc); goto done; }
        goto save;
      }
  }
  /* short chunks select fewer tokens: the same check on what was gathered,
   * still before FAISS sees it */
  for (int i = 0; i < ncodec; i++) {
    const char *fs = i % 2 && fv ? fv : fk;
    size_t need, want;
    m3_codec_train_sample_size(fs, &need, &want);
    if (nvec[i] < need) {
      train_too_small(fs, i % 2, need, nvec[i], nres, seen, sample, maxv, per_layer ? 1 : L, K, T);
      ex = 1;
      goto done;
    }
  }
  m3_codec_sample *smp = calloc((size_t)ncodec, sizeof *smp);
  if (!smp) { ex = errout("out of memory", M3_ENOMEM); goto done; }
  for (int i = 0; i < ncodec; i++) smp[i] = (m3_codec_sample){vecs[i], nvec[i]};
  m3_codec_train_opts to = {.kind = M3_CODEC_FAISS, .head_dim = (uint16_t)D,
                            .n_layers = (uint16_t)(per_layer ? L : 0), .factory_k = fk,
                            .factory_v = fv, .seed = (uint64_t)seed, .allow_no_tables = allow,
                            .verbose = 1, .threads = (unsigned)threads, .checkpoint_dir = ckpt};
  fprintf(stderr, "m3-encode train-codec: %zu chunks sampled of %llu; %zu K and %zu V vectors of %d dims per codec\n",
          nres, (unsigned long long)seen, nvec[0], nvec[1], D);
  if (ckpt && mkdir(ckpt, 0777) != 0 && errno != EEXIST) {
    fprintf(stderr, "m3-encode train-codec: --checkpoint %s: %s\n", ckpt, strerror(errno));
    free(smp);
    goto done;
  }
  rc = m3_codec_set_train(&to, smp, &cs);
  free(smp);
  if (rc) { ex = errout("train", rc); goto done; }
save:
  if ((rc = m3_codec_set_save(cs, out)) != 0) { ex = errout("save", rc); goto done; }
  m3_codec_info ik;
  m3_codec_set_info(cs, 0, M3_KV_K, &ik);
  fprintf(stderr, "m3-encode train-codec: wrote %s: %s, %u bytes per vector (%.1fx smaller than bf16), "
                  "fingerprint %016llx, decode tables %s\n",
          out, *ik.factory ? ik.factory : m3_codec_kind_name(ik.kind), ik.code_bytes,
          2.0 * D / ik.code_bytes, (unsigned long long)m3_codec_set_fingerprint(cs),
          ik.has_tables ? "yes" : ik.no_tables);
  ex = 0;
done:
  for (size_t i = 0; i < nres; i++) enc_chunk_free(&res[i]);
  free(res);
  for (int i = 0; vecs && i < ncodec; i++) free(vecs[i]);
  free(vecs), free(nvec), free(tokens), free(lens), free(npre), free(pos), free(kv);
  m3_codec_set_close(cs);
  m3_forward_destroy(f);
  enc_input_close(in);
  m3_tokenizer_free(tok);
  m3_model_close(m);
  return ex;
}

static const char *tm_usage =
    "usage: m3-encode test-model --out DIR [options]\n"
    "  --layers N (4) --hidden N (64) --heads N (4) --kv-heads N (2) --head-dim N (16)\n"
    "  --intermediate N (0: from hidden) --vocab N (1024) --seed N (1)\n"
    "  --dtype f32|f16|bf16 (f32) --shards 1|2 (1)\n"
    "  --corpus FILE   text the BPE tokenizer learns from (examples/kb/corpus.txt)\n";

int enc_cmd_test_model(int argc, char **argv) {
  static const struct option opts[] = {
      {"out", required_argument, NULL, 'o'},      {"layers", required_argument, NULL, 'l'},
      {"hidden", required_argument, NULL, 'e'},   {"heads", required_argument, NULL, 'H'},
      {"kv-heads", required_argument, NULL, 'K'}, {"head-dim", required_argument, NULL, 'D'},
      {"intermediate", required_argument, NULL, 'I'}, {"vocab", required_argument, NULL, 'V'},
      {"seed", required_argument, NULL, 'S'},     {"dtype", required_argument, NULL, 't'},
      {"shards", required_argument, NULL, 's'},   {"corpus", required_argument, NULL, 'c'},
      {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0}};
  m3_testmodel_params p;
  m3_testmodel_params_default(&p);
  p.vocab_size = 1024;
  const char *out = NULL, *corpus = NULL;
  long v;
  int c;
  if (m3_cli_exact_long(argc, argv, "h", opts, "m3-encode")) return 2;
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 'o': out = optarg; break;
    case 'c': corpus = optarg; break;
    case 'l': if (num("--layers", optarg, 1, 1024, &v)) return 2; p.n_layers = (int)v; break;
    case 'e': if (num("--hidden", optarg, 2, 65536, &v)) return 2; p.hidden_size = (int)v; break;
    case 'H': if (num("--heads", optarg, 1, 1024, &v)) return 2; p.n_heads = (int)v; break;
    case 'K': if (num("--kv-heads", optarg, 1, 1024, &v)) return 2; p.n_kv_heads = (int)v; break;
    case 'D': if (num("--head-dim", optarg, 2, 1024, &v)) return 2; p.head_dim = (int)v; break;
    case 'I': if (num("--intermediate", optarg, 0, 1 << 20, &v)) return 2; p.intermediate_size = (int)v; break;
    case 'V': if (num("--vocab", optarg, 300, 1 << 20, &v)) return 2; p.vocab_size = (int)v; break;
    case 'S': if (num("--seed", optarg, 0, 1L << 62, &v)) return 2; p.seed = (uint64_t)v; break;
    case 's': if (num("--shards", optarg, 1, 2, &v)) return 2; p.n_shards = (int)v; break;
    case 't':
      if (!strcmp(optarg, "f32")) p.dtype = M3_DTYPE_F32;
      else if (!strcmp(optarg, "f16")) p.dtype = M3_DTYPE_F16;
      else if (!strcmp(optarg, "bf16")) p.dtype = M3_DTYPE_BF16;
      else { fprintf(stderr, "m3-encode: --dtype f32, f16 or bf16\n"); return 2; }
      break;
    case 'h': fputs(tm_usage, stdout); return 0;
    default: fputs(tm_usage, stderr); return 2;
    }
  }
  if (optind != argc || !out) {
    fprintf(stderr, "m3-encode test-model: --out DIR is required\n%s", tm_usage);
    return 2;
  }
  char cpath[4200];
  if (!corpus) {
    struct stat st;
    corpus = "examples/kb/corpus.txt";
    if (stat(corpus, &st) != 0) {
      snprintf(cpath, sizeof cpath, "%s/examples/kb/corpus.txt", M3_SOURCE_DIR);
      corpus = cpath;
    }
  }
  char *text;
  size_t len;
  int rc = enc_read_file(corpus, &text, &len);
  if (rc) return errout("--corpus", rc);
  if ((rc = enc_mkdirs(out)) != 0) {
    free(text);
    return errout("--out", rc);
  }
  char tpath[4200];
  snprintf(tpath, sizeof tpath, "%s/tokenizer.json", out);
  enc_bpe_opts bo = {.vocab_size = (unsigned)p.vocab_size, .min_frequency = 2};
  unsigned nv = 0;
  rc = enc_bpe_train(text, len, &bo, tpath, &nv);
  free(text);
  if (rc) return errout("tokenizer", rc);
  if ((int)nv < p.vocab_size)
    fprintf(stderr, "m3-encode test-model: the corpus gives %u pieces; vocab_size is %u\n", nv, nv);
  p.vocab_size = (int)nv;
  if ((rc = m3_testmodel_write(out, &p)) != 0) return errout("model", rc);
  m3_tokenizer *tok;
  if ((rc = m3_tokenizer_load(out, &tok)) != 0) return errout("tokenizer check", rc);
  m3_tokenizer_free(tok);
  fprintf(stderr,
          "m3-encode test-model: wrote %s: %d layers, hidden %d, %d heads / %d KV heads, head_dim %d, "
          "vocab %d (BPE tokenizer.json from %s)\n",
          out, p.n_layers, p.hidden_size, p.n_heads, p.n_kv_heads, p.head_dim, p.vocab_size, corpus);
  return 0;
}
