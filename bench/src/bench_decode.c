/*
 * m3-bench decode: what retrieval costs a decoding worker. The reference
 * worker (m3/decode.h) decodes the same prompts twice in one run, with
 * memories retrieved every 64 tokens from a server or cluster and without
 * (a plain decode, no rounds), and prints tokens/s of each, the slowdown
 * 1 - with / without, the stall per round (how long the decode waited for
 * a round submitted when its window's last token was known), what each
 * round took to retrieve and to decode into the attention buffers, and the
 * paper-equivalent cost: stall p50 over 1.81 s, the time Memory3's worker
 * spends on 64 decode steps (1131 tokens/s at batch 32, A800), next to the
 * paper's measured 35% (733 vs 1131 tokens/s). A CPU decode step is far
 * slower than the paper's (28.3 ms at batch 32), which hides a round
 * behind one step; paper_equivalent_at_paper_step is the stall the round's
 * retrieve time would leave at the paper's step: max(0, retrieve p50 -
 * 28.3 ms) / 1.81 s.
 *
 * Prompts: one text per line of --prompts, tokenized with the model's
 * tokenizer (BOS first); the first --batch lines (repeated when fewer).
 */
#include <getopt.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "m3/internal/cli.h"
#include "m3/decode.h"
#include "m3/error.h"
#include "m3/sequence.h"

static const char *usage_decode =
    "usage: m3-bench decode --model DIR (--server HOST:PORT | --cluster MAP) --prompts FILE\n"
    "                       [--batch 8] [--new-tokens 64] [-k 5] [--no-memory]\n"
    "                       [--codec FILE] [--backend cpu|cuda|auto] [--mem-base 0]\n"
    "                       [--query auto|text|hidden[:LAYER]] [--query-prefix S]\n"
    "                       [--trace FILE] [--repeat 1] [--json]\n"
    "Greedy decode of the prompts with memories retrieved every 64 tokens and without,\n"
    "in one run: tokens/s of each, slowdown, stall per round, paper-equivalent stall.\n"
    "--no-memory: only the plain decode. --trace: the memory run's trace\n"
    "(m3-decode-trace/1, docs/WORKER.md; the plain run's with --no-memory).\n"
    "--codec: the codec set of a FAISS-coded store (raw codecs need none).\n"
    "A one-token plain decode warms the caches first; --repeat N runs N pairs, the\n"
    "order flipped each time (an even N puts each side first equally often), and\n"
    "reports each side's median run by tokens/s and the median of the pairs' slowdowns.\n"
    "--query: text (the window's text, embedded by the server), hidden[:LAYER] (the\n"
    "embedding m3-encode --embed hidden:LAYER stores, of the window's tokens after\n"
    "BOS + --query-prefix, default \"" M3_SEQ_PREFIX "\"), auto (default: hidden when the\n"
    "server's embedder is hidden:LAYER, else text).\n";

#define PAPER_WINDOW_S 1.81 /* 64 steps at 1131 tokens/s, batch 32 */
#define PAPER_SLOWDOWN 0.35 /* 1 - 733 / 1131 */

/* The first n lines of path (cycled), tokenized with BOS. */
static int read_prompts(const char *path, m3_tokenizer *tok, int n, int32_t ***out, int **lens) {
  FILE *f = fopen(path, "r");
  if (!f) return m3__seterr(M3_ENOTFOUND, "prompts %s: cannot open", path);
  char *lines[1024];
  int nl = 0, rc = 0;
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  while (nl < n && nl < 1024 && (len = getline(&line, &cap, f)) >= 0) {
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
    if (len == 0) continue;
    lines[nl++] = strdup(line);
  }
  free(line);
  fclose(f);
  if (nl == 0) return m3__seterr(M3_EINVAL, "prompts %s: no non-empty line", path);
  int32_t **p = calloc((size_t)n, sizeof *p);
  int *pl = calloc((size_t)n, sizeof *pl);
  for (int s = 0; s < n && p && pl; s++) {
    const char *t = lines[s % nl];
    size_t cnt = 0, tl = strlen(t);
    p[s] = malloc((tl + 2) * sizeof(int32_t));
    if (!p[s]) break;
    if ((rc = m3_tokenizer_encode(tok, t, tl, 1, p[s], tl + 2, &cnt))) {
      rc = m3__seterr(rc, "prompts %s line %d: %s", path, s % nl + 1, m3_errmsg());
      break;
    }
    pl[s] = (int)cnt;
  }
  for (int i = 0; i < nl; i++) free(lines[i]);
  *out = p, *lens = pl;
  return rc;
}

static void quantiles(const m3_generate_result *r, size_t off, double *p50, double *p99) {
  double v[1024];
  size_t n = 0;
  for (int i = 0; i < r->n_rounds && n < 1024; i++)
    v[n++] = *(const double *)((const char *)&r->rounds[i] + off);
  bench_sort(v, n);
  *p50 = bench_quantile(v, n, 0.5);
  *p99 = bench_quantile(v, n, 0.99);
}

static int write_trace(const char *path, const m3_generate_result *r, int32_t **prompts,
                       const int *plen, int memory) {
  char *j = m3_generate_trace_json(r, (const int32_t *const *)prompts, plen, memory);
  FILE *f = j ? fopen(path, "w") : NULL;
  int ok = f && fputs(j, f) >= 0 && fputc('\n', f) != EOF;
  if (f && fclose(f)) ok = 0;
  free(j);
  return ok ? 0 : m3__seterr(M3_EIO, "trace %s: cannot write", path);
}

static double run_tps(const m3_generate_result *r) {
  return r->wall_s > 0 ? r->n_steps * (double)r->n_seq / r->wall_s : 0;
}

/* Move the median run of runs[0..n) by tokens/s out (the others stay for
 * the caller to free; the moved one is zeroed there). */
static m3_generate_result take_median(m3_generate_result *runs, int n) {
  int order[99];
  for (int i = 0; i < n; i++) order[i] = i;
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && run_tps(&runs[order[j - 1]]) > run_tps(&runs[order[j]]); j--) {
      int t = order[j];
      order[j] = order[j - 1];
      order[j - 1] = t;
    }
  m3_generate_result m = runs[order[n / 2]];
  memset(&runs[order[n / 2]], 0, sizeof m);
  return m;
}

int bench_decode(int argc, char **argv) {
  const char *model_dir = NULL, *server = NULL, *cluster = NULL, *prompts_path = NULL;
  const char *codec = NULL, *backend = "auto", *trace = NULL, *query = "auto";
  const char *qprefix = M3_SEQ_PREFIX;
  int batch = 8, n_new = 64, k = 5, no_memory = 0, json = 0, mem_base = 0, rc = 0, ex = 2;
  int repeat = 1;
  static const struct option opts[] = {
      {"model", required_argument, 0, 'm'},   {"server", required_argument, 0, 's'},
      {"cluster", required_argument, 0, 'c'}, {"prompts", required_argument, 0, 'p'},
      {"batch", required_argument, 0, 'b'},   {"new-tokens", required_argument, 0, 'n'},
      {"no-memory", no_argument, 0, 'N'},     {"codec", required_argument, 0, 'C'},
      {"backend", required_argument, 0, 'B'}, {"mem-base", required_argument, 0, 'M'},
      {"trace", required_argument, 0, 't'},   {"json", no_argument, 0, 'j'},
      {"repeat", required_argument, 0, 'R'},  {"query", required_argument, 0, 'Q'},
      {"query-prefix", required_argument, 0, 'P'}, {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  int c;
  if (m3_cli_exact_long(argc, argv, "k:h", opts, "m3-bench")) return 2;
  optind = 1;
  while ((c = getopt_long(argc, argv, "k:h", opts, NULL)) != -1) {
    switch (c) {
    case 'm': model_dir = optarg; break;
    case 's': server = optarg; break;
    case 'c': cluster = optarg; break;
    case 'p': prompts_path = optarg; break;
    case 'b': batch = atoi(optarg); break;
    case 'n': n_new = atoi(optarg); break;
    case 'k': k = atoi(optarg); break;
    case 'N': no_memory = 1; break;
    case 'C': codec = optarg; break;
    case 'B': backend = optarg; break;
    case 'M': mem_base = atoi(optarg); break;
    case 't': trace = optarg; break;
    case 'j': json = 1; break;
    case 'R': repeat = atoi(optarg); break;
    case 'Q': query = optarg; break;
    case 'P': qprefix = optarg; break;
    case 'h': fputs(usage_decode, stdout); return 0;
    default: fputs(usage_decode, stderr); return 2;
    }
  }
  if (!model_dir || !prompts_path || (!no_memory && !server == !cluster) || batch < 1 ||
      batch > 256 || n_new < 1 || k < 0 || repeat < 1 || repeat > 99) {
    fputs(usage_decode, stderr);
    return 2;
  }
  m3_model *m = NULL;
  m3_tokenizer *tok = NULL;
  m3_cluster_map *map = NULL;
  m3_cluster *cl = NULL;
  m3_codec_set *cs = NULL;
  m3_decoder *d = NULL;
  m3_forward *qf = NULL;
  float *qhidden = NULL;
  int32_t qpre[M3_SEQ_MAX_TOKENS];
  size_t n_qpre = 0;
  int q_layer = -1; /* hidden queries from this layer; -1: text */
  int32_t **prompts = NULL;
  int *plen = NULL;
  m3_generate_result with, without;
  memset(&with, 0, sizeof with);
  memset(&without, 0, sizeof without);
  m3_generate_result *runs_with = calloc((size_t)repeat, sizeof *runs_with);
  m3_generate_result *runs_without = calloc((size_t)repeat, sizeof *runs_without);
  if (runs_with == NULL || runs_without == NULL) {
    free(runs_with);
    free(runs_without);
    return bench_fail("decode", M3_ENOMEM);
  }
  m3_model_opts mo = {.all_layers = 1};
  if ((rc = m3_model_open(model_dir, &mo, &m))) { ex = bench_fail("model", rc); goto out; }
  if ((rc = m3_tokenizer_load(model_dir, &tok))) { ex = bench_fail("tokenizer", rc); goto out; }
  if ((rc = read_prompts(prompts_path, tok, batch, &prompts, &plen))) {
    ex = bench_fail("prompts", rc);
    goto out;
  }
  int max_plen = 0;
  for (int s = 0; s < batch; s++) max_plen = plen[s] > max_plen ? plen[s] : max_plen;
  m3_decode_opts dopt = {.backend = backend, .max_batch = batch, .max_ctx = max_plen + n_new};
  m3_client_info info;
  memset(&info, 0, sizeof info);
  if (!no_memory) {
    if (server) {
      char js[600];
      snprintf(js, sizeof js, "{\"shards\": [{\"id\": 0, \"replicas\": [\"%s\"]}]}", server);
      rc = m3_cluster_map_parse(js, "--server", &map);
    } else {
      rc = m3_cluster_map_load(cluster, &map);
    }
    if (rc) { ex = bench_fail("cluster map", rc); goto out; }
    /* m3_cluster_check opens a connection to every replica, as a
     * long-running worker holds them. */
    if ((rc = m3_cluster_open(map, NULL, &cl)) || (rc = m3_cluster_info(cl, &info)) ||
        (rc = m3_cluster_check(cl))) {
      ex = bench_fail("connect", rc);
      goto out;
    }
    const m3_spec *sp = &info.layout.spec;
    const m3_model_config *mc = m3_model_get_config(m);
    if (sp->n_layers != m3_model_mem_layers(m) || sp->n_kv_heads != mc->n_kv_heads ||
        sp->head_dim != mc->head_dim) {
      fprintf(stderr,
              "m3-bench decode: the store's memories are %ux%ux%ux%u (layers, KV heads, tokens, "
              "head_dim); the model has %d memory layers, %d KV heads, head_dim %d\n",
              sp->n_layers, sp->n_kv_heads, sp->n_tokens, sp->head_dim, m3_model_mem_layers(m),
              mc->n_kv_heads, mc->head_dim);
      ex = 1;
      goto out;
    }
    rc = codec ? m3_codec_set_open(codec, &cs)
               : m3_codec_set_create_raw(info.layout.codec_kind, sp->head_dim, &cs);
    if (rc) { ex = bench_fail(codec ? "codec" : "codec (raw; pass --codec for FAISS stores)", rc); goto out; }
    dopt.mem_slots = k * sp->n_tokens;
    /* The query kind: --query, or auto from the server's embedder. */
    const char *qk = query;
    if (!strcmp(qk, "auto")) qk = !strncmp(info.embedder, "hidden:", 7) ? info.embedder : "text";
    if (!strncmp(qk, "hidden", 6) && (qk[6] == '\0' || qk[6] == ':')) {
      char *end = NULL;
      long l = qk[6] ? strtol(qk + 7, &end, 10) : m3_model_mem_layers(m) - 1;
      if ((qk[6] && (end == qk + 7 || *end)) || l < 0 || l >= m3_model_mem_layers(m)) {
        fprintf(stderr, "m3-bench decode: --query '%s': LAYER must be 0..%d\n", qk,
                m3_model_mem_layers(m) - 1);
        goto out;
      }
      q_layer = (int)l;
    } else if (strcmp(qk, "text")) {
      fprintf(stderr, "m3-bench decode: --query '%s': expected auto, text or hidden[:LAYER]\n",
              query);
      goto out;
    }
    if (q_layer >= 0) {
      if ((rc = m3_seq_tokens(tok, qprefix, "", 0, qpre, M3_SEQ_MAX_TOKENS, &n_qpre, NULL))) {
        ex = bench_fail("--query-prefix", rc);
        goto out;
      }
      qhidden = malloc((size_t)batch * mc->hidden_size * sizeof(float));
      m3_forward_opts fo = {.backend = "cpu", .max_batch = batch,
                            .max_seq = (int)n_qpre + M3_DECODE_WINDOW, .n_tokens = (int)sp->n_tokens,
                            .hidden = qhidden, .hidden_layer = q_layer};
      if (!qhidden) { ex = bench_fail("query buffer", M3_ENOMEM); goto out; }
      if ((rc = m3_forward_create(m, &fo, &qf))) { ex = bench_fail("query forward", rc); goto out; }
    }
  }
  if ((rc = m3_decoder_create(m, &dopt, &d))) { ex = bench_fail("decoder", rc); goto out; }
  /* A short plain decode first: the first run would otherwise pay for
   * paging the weights in and warming the caches, which made whichever
   * half ran first look slower. Then --repeat pairs, the order flipped each
   * time (without/with, with/without, ...); each side keeps its median run
   * by tokens/s. */
  m3_generate_opts plain = {.n_new = n_new};
  m3_generate_opts warm = {.n_new = 1};
  m3_generate_opts go = {.n_new = n_new, .memory = 1, .k = (uint32_t)k, .mem_base = mem_base,
                         .cl = cl, .codecs = cs, .tok = tok, .query_fwd = qf,
                         .query_hidden = qhidden,
                         .query_dim = m3_model_get_config(m)->hidden_size,
                         .query_prefix = qpre, .n_query_prefix = (int)n_qpre};
  {
    m3_generate_result w;
    memset(&w, 0, sizeof w);
    rc = m3_generate(d, (const int32_t *const *)prompts, plen, batch, &warm, &w);
    m3_generate_result_free(&w);
    if (rc) { ex = bench_fail("decode (warm-up)", rc); goto out; }
  }
  for (int r = 0; r < repeat; r++) {
    for (int leg = 0; leg < 2; leg++) {
      int mem = (leg == 1) == (r % 2 == 0);
      if (mem && no_memory) continue;
      if ((rc = m3_generate(d, (const int32_t *const *)prompts, plen, batch, mem ? &go : &plain,
                            mem ? &runs_with[r] : &runs_without[r]))) {
        ex = bench_fail(mem ? "decode with memory" : "decode without memory", rc);
        goto out;
      }
    }
  }
  /* Each pair's slowdown, before take_median moves the median runs out:
   * the two runs of a pair ran back to back, so a drift of the machine's
   * speed over the whole run moves both alike. */
  json_t *pairs = json_array(), *tps_w = json_array(), *tps_wo = json_array();
  double pair_sd[99];
  for (int r = 0; r < repeat; r++) {
    json_array_append_new(tps_wo, json_real(run_tps(&runs_without[r])));
    if (no_memory) continue;
    json_array_append_new(tps_w, json_real(run_tps(&runs_with[r])));
    pair_sd[r] = 1.0 - run_tps(&runs_with[r]) / run_tps(&runs_without[r]);
    json_array_append_new(pairs, json_real(pair_sd[r]));
  }
  for (int i = 1; i < repeat && !no_memory; i++)
    for (int j = i; j > 0 && pair_sd[j - 1] > pair_sd[j]; j--) {
      double t = pair_sd[j];
      pair_sd[j] = pair_sd[j - 1];
      pair_sd[j - 1] = t;
    }
  without = take_median(runs_without, repeat);
  if (!no_memory) with = take_median(runs_with, repeat);
  if (trace && (rc = write_trace(trace, no_memory ? &without : &with, prompts, plen, !no_memory))) {
    ex = bench_fail("trace", rc);
    json_decref(pairs);
    json_decref(tps_w);
    json_decref(tps_wo);
    goto out;
  }
  double tps_without = without.n_steps * (double)batch / without.wall_s;
  json_t *j = json_pack("{s:s,s:s,s:i,s:i,s:i,s:f}", "bench", "decode", "backend",
                        m3_decoder_backend_name(d), "batch", batch, "new_tokens", n_new, "steps",
                        without.n_steps, "tokens_per_s_without", tps_without);
  json_object_set_new(j, "tokens_per_s_without_runs", tps_wo);
  if (!no_memory) {
    double tps_with = with.n_steps * (double)batch / with.wall_s;
    double st50, st99, re50, re99, de50, de99;
    quantiles(&with, offsetof(m3_generate_round, stall_ms), &st50, &st99);
    quantiles(&with, offsetof(m3_generate_round, retrieve_ms), &re50, &re99);
    quantiles(&with, offsetof(m3_generate_round, decode_ms), &de50, &de99);
    uint32_t failed = 0, placed = 0, empty = 0;
    for (int r = 0; r < with.n_rounds; r++) {
      failed += with.rounds[r].stats.failed + (with.rounds[r].rc != 0);
      placed += with.rounds[r].stats.placed;
      empty += with.rounds[r].stats.empty;
    }
    json_object_set_new(j, "k", json_integer(k));
    json_object_set_new(j, "repeat", json_integer(repeat));
    json_object_set_new(j, "tokens_per_s_with", json_real(tps_with));
    json_object_set_new(j, "slowdown", json_real(1.0 - tps_with / tps_without));
    json_object_set_new(j, "slowdown_pair_median",
                        json_real(repeat % 2 ? pair_sd[repeat / 2]
                                             : (pair_sd[repeat / 2 - 1] + pair_sd[repeat / 2]) / 2));
    json_object_set_new(j, "slowdown_pairs", json_incref(pairs));
    json_object_set_new(j, "tokens_per_s_with_runs", json_incref(tps_w));
    json_object_set_new(j, "rounds", json_integer(with.n_rounds));
    json_object_set_new(j, "memories_placed", json_integer(placed));
    json_object_set_new(j, "ranges_empty", json_integer(empty));
    json_object_set_new(j, "rounds_or_items_failed", json_integer(failed));
    /* The share of each run's wall time outside decode steps (waiting for
     * rounds, submitting and closing them, argmax): load on the machine
     * moves both runs' step times, not this. */
    json_object_set_new(j, "outside_steps_with", json_real(1.0 - with.step_s / with.wall_s));
    json_object_set_new(j, "outside_steps_without",
                        json_real(1.0 - without.step_s / without.wall_s));
    json_object_set_new(j, "step_ms_with", json_real(with.step_s * 1e3 / with.n_steps));
    json_object_set_new(j, "step_ms_without", json_real(without.step_s * 1e3 / without.n_steps));
    json_object_set_new(j, "stall_p50_ms", json_real(st50));
    json_object_set_new(j, "stall_p99_ms", json_real(st99));
    json_object_set_new(j, "retrieve_p50_ms", json_real(re50));
    double qu50, qu99;
    quantiles(&with, offsetof(m3_generate_round, query_ms), &qu50, &qu99);
    char qname[32];
    snprintf(qname, sizeof qname, q_layer >= 0 ? "hidden:%d" : "text", q_layer);
    json_object_set_new(j, "query", json_string(qname));
    json_object_set_new(j, "query_p50_ms", json_real(qu50));
    json_object_set_new(j, "retrieve_p99_ms", json_real(re99));
    json_object_set_new(j, "decode_into_buffers_p50_ms", json_real(de50));
    json_object_set_new(j, "decode_into_buffers_p99_ms", json_real(de99));
    json_object_set_new(j, "paper_equivalent", json_real(st50 / 1e3 / PAPER_WINDOW_S));
    /* The stall this round time would cost at the paper's step (28.3 ms):
     * what is not hidden behind one step, over the window. */
    double paper_step_ms = PAPER_WINDOW_S * 1e3 / M3_DECODE_WINDOW;
    json_object_set_new(j, "paper_equivalent_at_paper_step",
                        json_real((re50 > paper_step_ms ? re50 - paper_step_ms : 0) / 1e3 /
                                  PAPER_WINDOW_S));
    json_object_set_new(j, "paper_slowdown", json_real(PAPER_SLOWDOWN));
  }
  json_decref(pairs);
  json_decref(tps_w);
  if (json) {
    bench_print_json(j);
  } else {
    printf("decode: backend %s, batch %d, %d new tokens, %d steps\n", m3_decoder_backend_name(d),
           batch, n_new, without.n_steps);
    printf("  without memory  %10.1f tokens/s\n", tps_without);
    if (!no_memory) {
      printf("  with memory     %10.1f tokens/s   slowdown %.2f%% (paper: %.0f%%)\n",
             json_real_value(json_object_get(j, "tokens_per_s_with")),
             100 * json_real_value(json_object_get(j, "slowdown")), 100 * PAPER_SLOWDOWN);
      if (repeat > 1)
        printf("  median of the %d pairs' slowdowns %.2f%%\n", repeat,
               100 * json_real_value(json_object_get(j, "slowdown_pair_median")));
      printf("  rounds %d: stall p50 %.3f ms p99 %.3f ms; retrieve p50 %.3f ms; decode into "
             "buffers p50 %.3f ms\n",
             with.n_rounds, json_real_value(json_object_get(j, "stall_p50_ms")),
             json_real_value(json_object_get(j, "stall_p99_ms")),
             json_real_value(json_object_get(j, "retrieve_p50_ms")),
             json_real_value(json_object_get(j, "decode_into_buffers_p50_ms")));
      printf("  paper-equivalent stall: %.4f%% of Memory3's 1.81 s window (paper's cost: 35%%); "
             "at the paper's 28.3 ms step: %.4f%%\n",
             100 * json_real_value(json_object_get(j, "paper_equivalent")),
             100 * json_real_value(json_object_get(j, "paper_equivalent_at_paper_step")));
    }
    json_decref(j);
  }
  ex = 0;
  if (!no_memory && with.n_rounds > 0) {
    int rounds_failed = 0;
    for (int r = 0; r < with.n_rounds; r++) rounds_failed += with.rounds[r].rc != 0;
    if (rounds_failed == with.n_rounds) {
      /* Nothing was retrieved: the figures above measured no retrieval. */
      fprintf(stderr, "m3-bench decode: all %d retrieval rounds failed (first: %s); the "
                      "memory run measured no retrieval\n",
              with.n_rounds, m3_strerror(with.rounds[0].rc));
      ex = 1;
    }
  }
out:
  m3_generate_result_free(&with);
  m3_generate_result_free(&without);
  for (int r = 0; r < repeat; r++) {
    m3_generate_result_free(&runs_with[r]);
    m3_generate_result_free(&runs_without[r]);
  }
  free(runs_with);
  free(runs_without);
  for (int s = 0; prompts && s < batch; s++) free(prompts[s]);
  free(prompts);
  free(plen);
  m3_decoder_destroy(d);
  m3_forward_destroy(qf);
  free(qhidden);
  m3_codec_set_close(cs);
  m3_cluster_close(cl);
  m3_cluster_map_free(map);
  m3_tokenizer_free(tok);
  m3_model_close(m);
  return ex;
}
