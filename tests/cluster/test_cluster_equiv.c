/*
 * Every retrieval round on a 2-shard x 2-replica local cluster equals the
 * round one unsharded m3-server gives on the original store: same ids in
 * the same ranks, scores within 1e-5, the same record bytes (and the bytes
 * on disk). Also Search alone, Fetch by ids (duplicates, a missing id), and
 * chunk texts.
 */
#include <math.h>
#include <stdlib.h>

#include "cluster/cluster_testlib.h"

typedef struct hit {
  uint64_t id;
  float score;
  int status, seen;
  uint8_t *data;
  size_t len;
  char text[64];
} hit;

typedef struct round_ctx {
  size_t nq;
  uint32_t k;
  hit *h; /* (nq, k) */
  int bad;
} round_ctx;

static int on_mem(void *ud, const m3_client_memory *m) {
  round_ctx *r = ud;
  if (m->query >= r->nq || m->rank >= r->k) {
    r->bad++;
    return 0;
  }
  hit *h = &r->h[(size_t)m->query * r->k + m->rank];
  h->seen++;
  h->id = m->chunk_id;
  h->score = m->score;
  h->status = m->status;
  free(h->data);
  h->data = NULL;
  if (m->data) {
    h->data = malloc(m->len);
    memcpy(h->data, m->data, m->len);
    h->len = m->len;
  }
  snprintf(h->text, sizeof h->text, "%s", m->text);
  return 0;
}

static void round_init(round_ctx *r, size_t nq, uint32_t k) {
  r->nq = nq;
  r->k = k;
  r->h = calloc(nq * k, sizeof *r->h);
  r->bad = 0;
}

static void round_free(round_ctx *r) {
  for (size_t i = 0; i < r->nq * r->k; i++) free(r->h[i].data);
  free(r->h);
}

static ct_store st;
static cl_cluster cc;
static ct_server single;
static m3_client *sc;
static m3_cluster *cl;

static int setup(void **state) {
  (void)state;
  cl_store_up(&cc, &st, 600, 32, 2, 2);
  ct_server_start(&single, &st, NULL);
  sc = ct_connect(&single, NULL);
  cl = cl_open(&cc, NULL);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  m3_cluster_close(cl);
  m3_client_close(sc);
  ct_server_stop(&single);
  cl_store_down(&cc, &st);
  return 0;
}

static void test_rounds_equal_unsharded(void **state) {
  (void)state;
  uint64_t rng = 7;
  static const struct { size_t nq; uint32_t k; } shapes[] = {
      {1, 5}, {8, 5}, {32, 5}, {3, 10}, {16, 32}, {5, 1}, {2, 64}};
  int rounds = 0;
  for (int rep = 0; rep < 3; rep++) {
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++) {
      size_t nq = shapes[sh].nq;
      uint32_t k = shapes[sh].k;
      float *v = malloc(nq * 32 * sizeof *v);
      m3_client_query *q = calloc(nq, sizeof *q);
      for (size_t i = 0; i < nq; i++) {
        m3t_rand_unit(&rng, v + i * 32, 32);
        q[i] = (m3_client_query){.vector = v + i * 32, .dim = 32};
      }
      int with_text = rep == 1;
      round_ctx a, b;
      round_init(&a, nq, k);
      round_init(&b, nq, k);
      CHECK_OK(m3_client_retrieve(sc, q, nq, k, with_text, on_mem, &a));
      CHECK_OK(m3_cluster_retrieve(cl, q, nq, k, with_text, on_mem, &b));
      CHECK_U64(b.bad, 0);
      for (size_t i = 0; i < nq * k; i++) {
        hit *x = &a.h[i], *y = &b.h[i];
        CHECK_U64(x->seen, 1);
        if (y->seen != 1)
          fail_msg("round %d query %zu rank %zu: delivered %d times by the cluster", rounds,
                   i / k, i % k, y->seen);
        if (x->id != y->id)
          fail_msg("round %d query %zu rank %zu: unsharded id %llu (%.7f), cluster id %llu "
                   "(%.7f)", rounds, i / k, i % k, (unsigned long long)x->id, (double)x->score,
                   (unsigned long long)y->id, (double)y->score);
        if (fabsf(x->score - y->score) > 1e-5f)
          fail_msg("round %d id %llu: score %.7f vs %.7f", rounds, (unsigned long long)x->id,
                   (double)x->score, (double)y->score);
        CHECK_U64(y->status, 0);
        CHECK_U64(y->len, st.mem_len);
        if (memcmp(x->data, y->data, y->len) != 0 || memcmp(y->data, st.mem[y->id], y->len) != 0)
          fail_msg("round %d id %llu: record bytes differ", rounds, (unsigned long long)y->id);
        assert_string_equal(x->text, y->text);
        if (i % k > 0 && (y->score > b.h[i - 1].score ||
                          (y->score == b.h[i - 1].score && y->id < b.h[i - 1].id)))
          fail_msg("round %d: rank order broken at %zu", rounds, i);
      }
      /* Search alone agrees too. */
      uint64_t *ids = malloc(nq * k * sizeof *ids);
      float *scores = malloc(nq * k * sizeof *scores);
      uint32_t *counts = malloc(nq * sizeof *counts);
      CHECK_OK(m3_cluster_search(cl, q, nq, k, ids, scores, counts));
      for (size_t i = 0; i < nq; i++) CHECK_U64(counts[i], k);
      for (size_t i = 0; i < nq * k; i++) {
        CHECK_U64(ids[i], a.h[i].id);
        if (fabsf(scores[i] - a.h[i].score) > 1e-5f) fail_msg("search score differs at %zu", i);
      }
      free(ids);
      free(scores);
      free(counts);
      round_free(&a);
      round_free(&b);
      free(v);
      free(q);
      rounds++;
    }
  }
  print_message("%d rounds equal\n", rounds);
}

static void test_fetch_by_ids(void **state) {
  (void)state;
  uint64_t ids[] = {3, 4, 3, 599, 600, 0, 12345, 1};
  size_t n = sizeof ids / sizeof ids[0];
  round_ctx r;
  round_init(&r, n, 1);
  CHECK_OK(m3_cluster_fetch(cl, ids, n, 1, on_mem, &r));
  for (size_t i = 0; i < n; i++) {
    hit *h = &r.h[i];
    CHECK_U64(h->seen, 1);
    CHECK_U64(h->id, ids[i]);
    if (ids[i] < 600) {
      CHECK_U64(h->status, 0);
      if (memcmp(h->data, st.mem[ids[i]], st.mem_len) != 0) fail_msg("bytes of %zu", i);
      char want[64];
      snprintf(want, sizeof want, "synthetic memory %llu", (unsigned long long)ids[i]);
      assert_string_equal(h->text, want);
    } else {
      CHECK_RC(h->status, M3_ENOTFOUND);
    }
  }
  round_free(&r);
}

static void test_info_and_check(void **state) {
  (void)state;
  m3_client_info in;
  CHECK_OK(m3_cluster_info(cl, &in));
  CHECK_U64(in.layout.emb_dim, 32);
  CHECK_U64(in.layout.codec_fp, st.layout.codec_fp);
  CHECK_OK(m3_cluster_check(cl));
  for (unsigned s = 0; s < 2; s++)
    for (unsigned r = 0; r < 2; r++) {
      m3_cluster_replica_info ri;
      CHECK_OK(m3_cluster_replica_get(cl, s, r, &ri));
      CHECK_U64(ri.up, 1);
      assert_string_equal(ri.addr, cc.addr[s * 2 + r]);
    }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rounds_equal_unsharded),
      cmocka_unit_test(test_fetch_by_ids),
      cmocka_unit_test(test_info_and_check),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
