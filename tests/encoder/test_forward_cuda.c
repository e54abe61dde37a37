/*
 * The CUDA backend against the CPU reference backend on the same batches:
 * the same selected positions, except where a position ties at the
 * selection boundary on the double reference's scores (ref_forward.c,
 * within 1e-4 of their magnitude), and the K/V of each position both chose
 * within 1e-4 relative. Exits 77 (skip) when m3 was built without CUDA or
 * no device is present.
 */
#include <math.h>
#include <stdlib.h>

#include "encoder/ref_forward.h"
#include "encoder/select_tie.h"
#include "m3/forward.h"
#include "m3/model.h"
#include "unit/testutil.h"

int main(void) {
  if (!m3_backend_cuda()) {
    fprintf(stderr, "skip: built without CUDA\n");
    return 77;
  }
  char *dir = m3t_mkdtemp("enc-cuda");
  m3_testmodel_params p;
  m3_testmodel_params_default(&p);
  p.n_layers = 6, p.hidden_size = 128, p.n_heads = 8, p.n_kv_heads = 2, p.head_dim = 16;
  int rc = m3_testmodel_write(dir, &p), status = 1;
  m3_model *m = NULL;
  m3_forward *fc = NULL, *fg = NULL;
  if (rc || (rc = m3_model_open(dir, NULL, &m))) goto out;
  m3_forward_opts fo = {.backend = "cpu", .max_batch = 4, .max_seq = 64};
  if ((rc = m3_forward_create(m, &fo, &fc))) goto out;
  fo.backend = "cuda";
  rc = m3_forward_create(m, &fo, &fg);
  if (rc == M3_EUNSUPPORTED) {
    fprintf(stderr, "skip: %s\n", m3_errmsg());
    status = 77, rc = 0; /* a skip, not a failure to report */
    goto out;
  }
  if (rc) goto out;
  m3_spec sp = m3_forward_spec(fc);
  size_t mem_kv = (size_t)sp.n_layers * 2 * sp.n_kv_heads * sp.n_tokens * sp.head_dim;
  size_t mem_pos = (size_t)sp.n_layers * sp.n_kv_heads * sp.n_tokens;
  int32_t tokens[4 * 64], lens[4] = {64, 50, 9, 33}, npre[4] = {3, 3, 3, 1};
  uint64_t rs = 17;
  for (int i = 0; i < 4 * 64; i++) tokens[i] = (int32_t)(m3t_rand(&rs) % 97);
  uint16_t *pc = calloc(4 * mem_pos, 2), *pg = calloc(4 * mem_pos, 2);
  float *kc = calloc(4 * mem_kv, 4), *kg = calloc(4 * mem_kv, 4);
  m3_batch b = {4, 64, tokens, lens, npre};
  m3_memories oc = {pc, kc, NULL}, og = {pg, kg, NULL};
  if ((rc = m3_forward_run(fc, &b, &oc)) || (rc = m3_forward_run(fg, &b, &og))) goto out;
  /* Selections: CUDA against CPU and against the brute force over the
   * double reference's scores; a position may differ only where it ties at
   * the selection boundary (f32 sums in another order), judged on the
   * reference scores (select_tie.c, unit-tested in encoder_select_tie). */
  size_t diff_pos = 0, bad = 0, not_tie = 0;
  size_t D = sp.head_dim, T = sp.n_tokens, K = sp.n_kv_heads;
  for (int s = 0; s < 4 && rc == 0; s++) {
    ref_out r;
    if ((rc = ref_forward(dir, (int)sp.n_layers, tokens + s * 64, lens[s], &r))) break;
    for (size_t l = 0; l < sp.n_layers; l++)
      for (size_t g = 0; g < K; g++) {
        const uint16_t *a = pc + s * mem_pos + (l * K + g) * T, *c = pg + s * mem_pos + (l * K + g) * T;
        const double *lw = r.logw + (l * K + g) * (size_t)lens[s];
        uint16_t want[64];
        ref_select(lw, lens[s], npre[s], (int)T, want);
        /* f32 against double: relative error ~1e-6 on these sizes; 1e-4 of
         * the scores' magnitude leaves room and still rejects real misses
         * (test_forward.c holds the CPU to 1e-5 the same way). */
        double mag = 1;
        for (int j = 0; j < lens[s]; j++) mag = fmax(mag, fabs(lw[j]));
        double tol = 1e-4 * mag;
        char why[300];
        int d = sel_tie_check(lw, lens[s], npre[s], (int)T, c, a, tol, why, sizeof why);
        int dr = d < 0 ? 0 : sel_tie_check(lw, lens[s], npre[s], (int)T, c, want, tol, why, sizeof why);
        if (d < 0 || dr < 0) {
          fprintf(stderr, "sequence %d layer %zu head %zu: cuda (a) against %s (b): %s\n", s, l, g,
                  d < 0 ? "cpu" : "brute force", why);
          not_tie++;
          continue;
        }
        diff_pos += (size_t)d;
      }
    ref_out_free(&r);
  }
  if (rc) goto out;
  /* K/V of every position both chose, matched by position (a tie taken
   * the other way shifts the slots after it). */
  size_t compared = 0;
  for (int s = 0; s < 4; s++)
    for (size_t l = 0; l < sp.n_layers; l++)
      for (size_t g = 0; g < K; g++)
        for (size_t k = 0; k < T; k++) {
          const uint16_t *hc = pc + s * mem_pos + (l * K + g) * T, *hg = pg + s * mem_pos + (l * K + g) * T;
          size_t kk = 0;
          while (kk < T && hg[kk] != hc[k]) kk++;
          if (hc[k] == M3_POS_NONE || kk == T) continue; /* empty, or a tie the GPU did not take */
          compared++;
          for (int kv = 0; kv < 2; kv++) {
            const float *a = kc + s * mem_kv + (((l * 2 + kv) * K + g) * T + k) * D;
            const float *c = kg + s * mem_kv + (((l * 2 + kv) * K + g) * T + kk) * D;
            double num = 0, den = 0;
            for (size_t d = 0; d < D; d++) num += (a[d] - c[d]) * (a[d] - c[d]), den += a[d] * a[d];
            if (sqrt(num) > 1e-4 * sqrt(den) + 1e-7) bad++;
          }
        }
  printf("cuda vs cpu: %zu of %zu positions differ, all ties at the boundary; %zu heads not ties; "
         "%zu of %zu positions' K/V beyond 1e-4\n",
         diff_pos, 4 * mem_pos, not_tie, bad, compared);
  /* Ties are rare: many of them would mean the scores themselves drift. */
  status = (bad == 0 && not_tie == 0 && compared > 0 && diff_pos * 50 <= 4 * mem_pos) ? 0 : 1;
  free(pc), free(pg), free(kc), free(kg);
out:
  if (rc) fprintf(stderr, "fail: %s: %s\n", m3_err_name(rc), m3_errmsg());
  m3_forward_destroy(fc);
  m3_forward_destroy(fg);
  m3_model_close(m);
  m3t_rmrf(dir);
  free(dir);
  return status;
}
