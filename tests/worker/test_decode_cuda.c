/*
 * worker_decode_cuda: the decoder's CUDA backend against the CPU reference
 * on a random test model: 80 steps of a batch of 3 with memories (random
 * K/V, every fourth slot empty) in the memory layers from step 20 on, a new
 * round at step 50; logits within 1e-3 relative of the CPU's at every step
 * and every position. Exit 77 without a GPU.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "m3/decode.h"
#include "m3/error.h"

#define OK(expr)                                                                     \
  do {                                                                               \
    int rc_ = (expr);                                                                \
    if (rc_) {                                                                       \
      fprintf(stderr, "%s: %s (%s) line %d\n", #expr, m3_err_name(rc_), m3_errmsg(), \
              __LINE__);                                                             \
      return 1;                                                                      \
    }                                                                                \
  } while (0)

int main(void) {
  if (!m3_decode_backend_cuda()) {
    puts("built without CUDA: skipped");
    return 77;
  }
  char dir[] = "/tmp/m3-decode-cuda.XXXXXX";
  if (!mkdtemp(dir)) return 1;
  m3_testmodel_params p;
  m3_testmodel_params_default(&p);
  OK(m3_testmodel_write(dir, &p));
  m3_model *m;
  m3_model_opts mo = {.all_layers = 1};
  OK(m3_model_open(dir, &mo, &m));
  const int B = 3, k = 2, T = 8, steps = 80;
  m3_decode_opts o = {.backend = "cuda", .max_batch = B, .max_ctx = 128, .mem_slots = k * T};
  m3_decoder *gpu, *cpu;
  int rc = m3_decoder_create(m, &o, &gpu);
  if (rc == M3_EUNSUPPORTED) {
    printf("no CUDA device (%s): skipped\n", m3_errmsg());
    return 77;
  }
  OK(rc);
  o.backend = "cpu";
  OK(m3_decoder_create(m, &o, &cpu));
  m3_attn_geom g;
  OK(m3_decoder_mem_geom(cpu, k, &g));
  size_t nkv = m3_attn_kv_elems(&g), npos = m3_attn_pos_elems(&g);
  float *kv = malloc(nkv * sizeof(float));
  int32_t *pos = malloc(npos * sizeof(int32_t));
  int V = m3_decoder_vocab(cpu);
  float *la = malloc((size_t)B * V * sizeof(float)), *lb = malloc((size_t)B * V * sizeof(float));
  uint64_t s = 7;
  double worst = 0;
  for (int i = 0; i < steps; i++) {
    if (i == 20 || i == 50)
      for (size_t x = 0; x < nkv; x++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        kv[x] = (float)((s >> 40) / 16777216.0 * 2 - 1);
        if (x < npos) pos[x] = x % 4 == 3 ? -1 : (int32_t)(x % 120);
      }
    int32_t tok[3] = {(i * 7 + 1) % V, (i * 13 + 5) % V, (i * 3 + 2) % V};
    m3_decode_step st = {.n_seq = B, .ctx = i, .pos_offset = 128, .tokens = tok,
                         .mem_kv = i >= 20 ? kv : NULL, .mem_pos = i >= 20 ? pos : NULL,
                         .mem_version = i >= 50 ? 2 : 1, .logits = la};
    OK(m3_decoder_step(cpu, &st));
    st.logits = lb;
    OK(m3_decoder_step(gpu, &st));
    for (int x = 0; x < B * V; x++) {
      double e = fabs((double)la[x] - lb[x]) / (1e-3 + fabs((double)la[x]));
      worst = e > worst ? e : worst;
    }
  }
  printf("decode cuda vs cpu: %d steps x %d sequences, worst relative logit difference %.3g\n",
         steps, B, worst);
  m3_decoder_destroy(gpu);
  m3_decoder_destroy(cpu);
  m3_model_close(m);
  free(kv), free(pos), free(la), free(lb);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd)) return 1;
  return worst <= 1e-3 ? 0 : 1;
}
