/* Helpers of the retrieval index tests; see index_testlib.h. */
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "index/index_testlib.h"

m3_layout it_layout(unsigned emb_dim) {
  m3_layout l;
  memset(&l, 0, sizeof l);
  l.spec = (m3_spec){2, 2, 2, 4};
  l.codec_kind = M3_CODEC_RAW_F32;
  l.code_bytes = 4 * 4;
  l.codec_fp = 0x1de7;
  l.emb_dim = (uint16_t)emb_dim;
  return l;
}

m3_store *it_store_open(const char *dir, unsigned emb_dim) {
  m3_store_options o;
  m3_store_options_init(&o);
  o.create = 1;
  o.layout = it_layout(emb_dim);
  m3_store *s = NULL;
  CHECK_OK(m3_store_open(dir, &o, &s));
  return s;
}

int it_put(m3_store *s, const uint64_t *ids, const float *embs, size_t n) {
  const m3_layout *l = m3_store_layout(s);
  size_t np = m3_spec_positions(&l->spec), cb = m3_layout_codes_bytes(l);
  m3_record_in *in = calloc(n, sizeof *in);
  uint16_t *pos = calloc(np, sizeof *pos);
  uint8_t *codes = calloc(n, cb);
  char (*text)[32] = calloc(n, sizeof *text);
  for (size_t i = 0; i < n; i++) {
    float *c = (float *)(codes + i * cb);
    for (size_t j = 0; j < cb / 4; j++) c[j] = (float)(ids[i] % 97) + (float)j;
    snprintf(text[i], sizeof text[i], "chunk %llu", (unsigned long long)ids[i]);
    in[i].chunk_id = ids[i];
    in[i].chunk_len = 8;
    in[i].positions = pos;
    in[i].codes = codes + i * cb;
    in[i].text = text[i];
    in[i].text_len = strlen(text[i]);
    in[i].embedding = embs ? embs + i * l->emb_dim : NULL;
  }
  int rc = m3_store_put(s, in, n);
  free(in);
  free(pos);
  free(codes);
  free(text);
  return rc;
}

void it_ref_init(it_ref *r, unsigned dim) {
  memset(r, 0, sizeof *r);
  r->dim = dim;
}

void it_ref_del(it_ref *r, uint64_t id) {
  for (size_t i = 0; i < r->n; i++)
    if (r->ids[i] == id) {
      r->n--;
      r->ids[i] = r->ids[r->n];
      memmove(r->vecs + i * r->dim, r->vecs + r->n * r->dim, r->dim * sizeof(float));
      return;
    }
}

void it_ref_set(it_ref *r, uint64_t id, const float *v) {
  it_ref_del(r, id);
  int zero = 1;
  for (unsigned j = 0; j < r->dim; j++) zero &= v[j] == 0;
  if (zero) return;
  if (r->n == r->cap) {
    r->cap = r->cap ? 2 * r->cap : 64;
    r->ids = realloc(r->ids, r->cap * sizeof *r->ids);
    r->vecs = realloc(r->vecs, r->cap * r->dim * sizeof *r->vecs);
  }
  r->ids[r->n] = id;
  memcpy(r->vecs + r->n * r->dim, v, r->dim * sizeof *v);
  r->n++;
}

void it_ref_free(it_ref *r) {
  free(r->ids);
  free(r->vecs);
  memset(r, 0, sizeof *r);
}

typedef struct scored {
  double s;
  uint64_t id;
} scored;

static int cmp_scored(const void *a, const void *b) {
  const scored *x = a, *y = b;
  if (x->s != y->s) return x->s > y->s ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

static double norm(const float *v, unsigned d) {
  double ss = 0;
  for (unsigned j = 0; j < d; j++) ss += (double)v[j] * v[j];
  return sqrt(ss);
}

void it_ref_topk(const it_ref *r, const float *q, size_t k, uint64_t *ids, float *scores) {
  scored *all = calloc(r->n + 1, sizeof *all);
  double qn = norm(q, r->dim);
  for (size_t i = 0; i < r->n; i++) {
    const float *v = r->vecs + i * r->dim;
    double dot = 0;
    for (unsigned j = 0; j < r->dim; j++) dot += (double)q[j] * v[j];
    all[i].s = qn == 0 ? 0 : dot / (qn * norm(v, r->dim));
    all[i].id = r->ids[i];
  }
  qsort(all, r->n, sizeof *all, cmp_scored);
  for (size_t j = 0; j < k; j++) {
    ids[j] = j < r->n ? all[j].id : UINT64_MAX;
    scores[j] = j < r->n ? (float)all[j].s : -INFINITY;
  }
  free(all);
}

void it_check_against_ref(m3_index *ix, const it_ref *r, const float *queries, size_t nq, size_t k,
                          double tol) {
  uint64_t *got = calloc(nq * k, sizeof *got), *want = calloc(k, sizeof *want);
  float *gs = calloc(nq * k, sizeof *gs), *ws = calloc(k, sizeof *ws);
  CHECK_OK(m3_index_search(ix, queries, nq, k, got, gs));
  for (size_t q = 0; q < nq; q++) {
    it_ref_topk(r, queries + q * r->dim, k, want, ws);
    for (size_t j = 0; j < k; j++) {
      if (got[q * k + j] != want[j])
        fail_msg("query %zu rank %zu: id %llu (score %.7f), brute force says %llu (score %.7f)", q, j,
                 (unsigned long long)got[q * k + j], gs[q * k + j], (unsigned long long)want[j],
                 ws[j]);
      if (want[j] == UINT64_MAX)
        assert_true(isinf(gs[q * k + j]) && gs[q * k + j] < 0);
      else
        CHECK_NEAR(gs[q * k + j], ws[j], tol);
    }
  }
  free(got);
  free(want);
  free(gs);
  free(ws);
}
