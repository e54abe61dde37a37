/*
 * worker_decode_check MODEL STORE_ADDR EMPTY_ADDR PROMPTS: the reference
 * decoder's checks against real servers (driven by test_decode.sh):
 *  1. plain decode == the memory path with k = 0 == the memory path over an
 *     empty store (every slot masked, context at 128 + i): the same tokens;
 *  2. over the real store, rounds place memories and change the tokens;
 *  3. memory attention (m3__decode_attn) within 1e-5 of m3_attn_ref on a
 *     real round's attention buffers, every (query, layer, head), with a
 *     causal context, and the memories getting real softmax mass.
 * Exit 0 when all hold, 1 with the first failure on stderr.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decode_int.h"
#include "model_int.h" /* m3__rope_table, m3__rope: the rotary the decoder uses */
#include "m3/decode.h"
#include "m3/error.h"

#define FAIL(...)                                                   \
  do {                                                              \
    fprintf(stderr, "worker_decode_check: " __VA_ARGS__);           \
    fprintf(stderr, " (line %d; errmsg: %s)\n", __LINE__, m3_errmsg()); \
    exit(1);                                                        \
  } while (0)
#define OK(expr)                                                    \
  do {                                                              \
    int rc_ = (expr);                                               \
    if (rc_) FAIL("%s returned %s", #expr, m3_err_name(rc_));       \
  } while (0)

#define B 4
#define NEW 140

static uint64_t rnd_state = 12345;
static float frand(void) {
  rnd_state ^= rnd_state << 13, rnd_state ^= rnd_state >> 7, rnd_state ^= rnd_state << 17;
  return (float)((rnd_state >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}

static m3_cluster *connect_to(const char *addr, m3_client_info *info) {
  char js[512];
  m3_cluster_map *map;
  m3_cluster *cl;
  snprintf(js, sizeof js, "{\"shards\": [{\"id\": 0, \"replicas\": [\"%s\"]}]}", addr);
  OK(m3_cluster_map_parse(js, "test", &map));
  OK(m3_cluster_open(map, NULL, &cl));
  m3_cluster_map_free(map);
  OK(m3_cluster_info(cl, info));
  return cl;
}

static void gen(m3_decoder *d, int32_t **p, int *pl, m3_generate_opts *o, m3_generate_result *r) {
  OK(m3_generate(d, (const int32_t *const *)p, pl, B, o, r));
}

static void same_tokens(const m3_generate_result *a, const m3_generate_result *b, const char *what) {
  for (int i = 0; i < B * NEW; i++)
    if (a->tokens[i] != b->tokens[i])
      FAIL("%s: sequence %d token %d: %d != %d", what, i / NEW, i % NEW, a->tokens[i], b->tokens[i]);
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: worker_decode_check MODEL STORE_ADDR EMPTY_ADDR PROMPTS\n");
    return 2;
  }
  m3_model *m;
  m3_tokenizer *tok;
  m3_model_opts mo = {.all_layers = 1};
  OK(m3_model_open(argv[1], &mo, &m));
  OK(m3_tokenizer_load(argv[1], &tok));
  const m3_model_config *mc = m3_model_get_config(m);

  /* prompts: the first B lines */
  int32_t *prompts[B];
  int plen[B];
  FILE *f = fopen(argv[4], "r");
  if (!f) FAIL("cannot open %s", argv[4]);
  char line[4096];
  for (int s = 0; s < B; s++) {
    if (!fgets(line, sizeof line, f)) FAIL("%s has fewer than %d lines", argv[4], B);
    line[strcspn(line, "\n")] = 0;
    size_t n;
    prompts[s] = malloc(sizeof(int32_t) * 4096);
    OK(m3_tokenizer_encode(tok, line, strlen(line), 1, prompts[s], 4096, &n));
    plen[s] = (int)n;
  }
  fclose(f);

  m3_client_info info, einfo;
  m3_cluster *cl = connect_to(argv[2], &info), *ecl = connect_to(argv[3], &einfo);
  const m3_spec sp = info.layout.spec;
  const uint32_t k = 5;
  m3_codec_set *cs;
  OK(m3_codec_set_create_raw(info.layout.codec_kind, sp.head_dim, &cs));
  m3_decoder *d;
  m3_decode_opts dopt = {.backend = "cpu", .max_batch = B, .max_ctx = 1024,
                         .mem_slots = (int)(k * sp.n_tokens)};
  OK(m3_decoder_create(m, &dopt, &d));

  /* 1. plain == k 0 == empty store */
  m3_generate_result plain, zero, empty, real;
  m3_generate_opts o = {.n_new = NEW};
  gen(d, prompts, plen, &o, &plain);
  o.memory = 1;
  gen(d, prompts, plen, &o, &zero);
  same_tokens(&plain, &zero, "plain vs memory path with k 0");
  m3_generate_opts eo = {.n_new = NEW, .memory = 1, .k = k, .cl = ecl, .codecs = cs, .tok = tok};
  gen(d, prompts, plen, &eo, &empty);
  if (empty.n_rounds < 2) FAIL("empty store: %d rounds, want >= 2", empty.n_rounds);
  for (int r = 0; r < empty.n_rounds; r++)
    if (empty.rounds[r].rc || empty.rounds[r].stats.placed)
      FAIL("empty store: round %d rc %d placed %u", r, empty.rounds[r].rc,
           empty.rounds[r].stats.placed);
  same_tokens(&plain, &empty, "plain vs empty store");

  /* 2. the real store: memories placed, tokens changed */
  m3_generate_opts ro = eo;
  ro.cl = cl;
  gen(d, prompts, plen, &ro, &real);
  uint32_t placed = 0;
  for (int r = 0; r < real.n_rounds; r++) {
    if (real.rounds[r].rc) FAIL("round %d failed: %d", r, real.rounds[r].rc);
    placed += real.rounds[r].stats.placed;
  }
  if (placed != (uint32_t)real.n_rounds * B * k)
    FAIL("%u memories placed in %d rounds, want %u", placed, real.n_rounds,
         (uint32_t)real.n_rounds * B * k);
  int differ = 0;
  for (int i = 0; i < B * NEW; i++) differ += real.tokens[i] != plain.tokens[i];
  if (!differ) FAIL("memories changed no token of %d", B * NEW);
  printf("decode: plain == k0 == empty store (%d tokens); real store: %d rounds, %u memories, "
         "%d of %d tokens differ\n", B * NEW, real.n_rounds, placed, differ, B * NEW);

  /* 3. m3__decode_attn vs m3_attn_ref on a real round's buffers */
  m3_attn_geom g;
  OK(m3_decoder_mem_geom(d, k, &g));
  float *kv = malloc(m3_attn_kv_elems(&g) * sizeof(float));
  int32_t *pos = malloc(m3_attn_pos_elems(&g) * sizeof(int32_t));
  m3_attn *a;
  OK(m3_attn_create_host(cs, &g, &a));
  m3_attn_round round = {.kv = kv, .pos = pos};
  m3_client_query q[B];
  const char *texts[B] = {"Saturn bright rings", "the Sun is a star", "the Moon and the Earth",
                          "comets and their tails"};
  for (int s = 0; s < B; s++) q[s] = (m3_client_query){.text = texts[s]};
  OK(m3_attn_begin(a, &round));
  OK(m3_cluster_retrieve(cl, q, B, k, 0, m3_attn_memory_fn, a));
  m3_attn_stats st;
  OK(m3_attn_finish(a, &st));
  if (st.placed != B * k) FAIL("round placed %u of %u", st.placed, B * k);
  const int H = mc->n_heads, K = mc->n_kv_heads, D = mc->head_dim, S = (int)(k * sp.n_tokens);
  const int n_ctx = 70, i = n_ctx - 1, qpos = M3_ATTN_MEM_SPAN + i, half = D / 2;
  float *qv = malloc(sizeof(float) * H * D), *kc = malloc(sizeof(float) * K * n_ctx * D);
  float *vc = malloc(sizeof(float) * K * n_ctx * D), *kraw = malloc(sizeof(float) * D);
  float *out_ref = malloc(sizeof(float) * H * D), *out = malloc(sizeof(float) * D);
  float *qc = malloc(sizeof(float) * D), *scratch = malloc(sizeof(float) * (S + n_ctx));
  float *mw = malloc(sizeof(float) * H);
  float *cos_t = malloc(sizeof(float) * (qpos + 1) * half), *sin_t = malloc(sizeof(float) * (qpos + 1) * half);
  m3__rope_table(qpos + 1, D, mc->rope_theta, cos_t, sin_t);
  double worst = 0, mass = 0;
  for (uint32_t qq = 0; qq < B; qq++)
    for (uint32_t l = 0; l < sp.n_layers; l++) {
      for (int x = 0; x < H * D; x++) qv[x] = frand();
      for (int g2 = 0; g2 < K; g2++)
        for (int j = 0; j < n_ctx; j++) {
          for (int x = 0; x < D; x++) kraw[x] = frand();
          m3__rope(kc + ((size_t)g2 * n_ctx + j) * D, kraw, cos_t + (size_t)(M3_ATTN_MEM_SPAN + j) * half,
                   sin_t + (size_t)(M3_ATTN_MEM_SPAN + j) * half, D);
          for (int x = 0; x < D; x++) vc[((size_t)g2 * n_ctx + j) * D + x] = frand();
        }
      int32_t qp = qpos;
      m3_attn_ref_args ra = {.n_heads = (uint32_t)H, .n_kv_heads = (uint32_t)K, .head_dim = (uint32_t)D,
                             .rope_theta = mc->rope_theta, .n_q = 1, .q = qv, .q_pos = &qp,
                             .n_slots = (uint32_t)S, .mem_dtype = M3_DTYPE_F32,
                             .mem_k = kv + m3_attn_kv_offset(&g, qq, l, 0, 0, 0),
                             .mem_v = kv + m3_attn_kv_offset(&g, qq, l, 1, 0, 0),
                             .mem_pos = pos + m3_attn_pos_offset(&g, qq, l, 0, 0),
                             .n_ctx = (uint32_t)n_ctx, .ctx_k = kc, .ctx_v = vc, .out = out_ref,
                             .mem_weight = mw};
      OK(m3_attn_ref(&ra));
      for (int h = 0; h < H; h++) {
        int g2 = h / (H / K);
        m3__rope(qc, qv + (size_t)h * D, cos_t + (size_t)qpos * half, sin_t + (size_t)qpos * half, D);
        m3__decode_attn(qc, qc, kc + (size_t)g2 * n_ctx * D, vc + (size_t)g2 * n_ctx * D, n_ctx,
                        kv + m3_attn_kv_offset(&g, qq, l, 0, (uint32_t)g2, 0),
                        kv + m3_attn_kv_offset(&g, qq, l, 1, (uint32_t)g2, 0),
                        pos + m3_attn_pos_offset(&g, qq, l, (uint32_t)g2, 0), S, D, scratch, out);
        for (int x = 0; x < D; x++) {
          double e = fabs((double)out[x] - out_ref[(size_t)h * D + x]);
          worst = e > worst ? e : worst;
        }
        mass += mw[h];
      }
    }
  mass /= (double)B * sp.n_layers * H;
  printf("memory attention vs m3_attn_ref: max |diff| %.3g over %d x %u x %d heads; mean memory "
         "mass %.3f\n", worst, B, sp.n_layers, H, mass);
  if (!(worst <= 1e-5)) FAIL("memory attention differs from m3_attn_ref by %.3g (> 1e-5)", worst);
  if (!(mass > 0.01)) FAIL("memories got %.4f of the softmax mass: the check would not see them", mass);

  free(qv), free(kc), free(vc), free(kraw), free(out_ref), free(out), free(qc), free(scratch);
  free(mw), free(cos_t), free(sin_t), free(kv), free(pos);
  m3_attn_destroy(a);
  m3_generate_result_free(&plain), m3_generate_result_free(&zero);
  m3_generate_result_free(&empty), m3_generate_result_free(&real);
  for (int s = 0; s < B; s++) free(prompts[s]);
  m3_decoder_destroy(d);
  m3_codec_set_close(cs);
  m3_cluster_close(cl), m3_cluster_close(ecl);
  m3_tokenizer_free(tok);
  m3_model_close(m);
  return 0;
}
