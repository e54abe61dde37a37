/*
 * A retrieval round into attention buffers over real processes: a raw-f32
 * store written with m3_store_put, a real m3-server on loopback, and
 * m3_attn_memory_fn as the callback of m3_client_retrieve and of
 * m3_cluster_retrieve (a one-shard map). The buffers must equal the
 * records decoded by hand (the stored vectors bit for bit), ranks must
 * follow Search's order, the cluster round must equal the single server's
 * byte for byte, and the codes sink must hold exactly Fetch's bytes.
 */
#include <stdlib.h>

#include "m3/cluster.h"
#include "worker/worker_testlib.h"

static const m3_spec kSpec = {4, 2, 8, 16};
enum { NMEM = 40, EMB = 8, NQ = 3, KK = 5 };

typedef struct fixture {
  m3_codec_set *cs;
  wt_mems m;
  ct_store st; /* only dir and store are used by ct_server_start */
  ct_server srv;
  float queries[NQ * EMB];
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  CHECK_OK(m3_codec_set_create_raw(M3_CODEC_RAW_F32, kSpec.head_dim, &f->cs));
  wt_mems_make(&f->m, f->cs, &kSpec, NMEM, EMB, 21);
  wt_mems_encode_raw(&f->m);
  f->st.dir = m3t_mkdtemp("worker-round");
  snprintf(f->st.store, sizeof f->st.store, "%s/store", f->st.dir);
  wt_store_write(&f->m, f->st.store);
  ct_server_start(&f->srv, &f->st, NULL);
  uint64_t s = 5;
  const int near[NQ] = {3, 17, 29}; /* memory 29 has empty tokens */
  for (int q = 0; q < NQ; q++)
    for (int d = 0; d < EMB; d++)
      f->queries[q * EMB + d] = f->m.emb[near[q] * EMB + d] +
                                0.05f * (float)((double)(m3t_rand(&s) >> 11) / 9007199254740992.0 - 0.5);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  ct_server_stop(&f->srv);
  m3t_rmrf(f->st.dir);
  free(f->st.dir);
  wt_mems_free(&f->m);
  m3_codec_set_close(f->cs);
  free(f);
  return 0;
}

static void queries_of(const fixture *f, m3_client_query *q) {
  for (int i = 0; i < NQ; i++) q[i] = (m3_client_query){.vector = f->queries + i * EMB, .dim = EMB};
}

typedef struct bufs {
  float *kv;
  int32_t *pos;
  uint64_t ids[NQ * KK];
  float scores[NQ * KK];
} bufs;

static void bufs_alloc(bufs *b, const m3_attn_geom *g) {
  b->kv = malloc(m3_attn_kv_elems(g) * 4);
  b->pos = malloc(m3_attn_pos_elems(g) * 4);
  memset(b->kv, 0xCD, m3_attn_kv_elems(g) * 4);
  memset(b->pos, 0xCD, m3_attn_pos_elems(g) * 4);
}

static void check_against_search(const fixture *f, const m3_attn_geom *g, const bufs *b) {
  m3_client *c = ct_connect(&f->srv, NULL);
  m3_client_query q[NQ];
  queries_of(f, q);
  uint64_t ids[NQ * KK];
  float sc[NQ * KK];
  uint32_t counts[NQ];
  CHECK_OK(m3_client_search(c, q, NQ, KK, ids, sc, counts));
  m3_client_close(c);
  int assign[NQ * KK];
  for (int i = 0; i < NQ * KK; i++) {
    CHECK_U64(b->ids[i], ids[i]);
    if (b->scores[i] != sc[i]) fail_msg("score %d: %g != %g", i, b->scores[i], sc[i]);
    assign[i] = (int)ids[i];
  }
  wt_check_round(&f->m, f->cs, g, b->kv, b->pos, assign, 1);
}

static void test_client_round_into_buffers(void **state) {
  fixture *f = *state;
  m3_attn_geom g;
  CHECK_OK(m3_attn_geom_init(&g, &kSpec, NQ, KK, M3_DTYPE_F32));
  m3_attn *a = NULL;
  CHECK_OK(m3_attn_create_host(f->cs, &g, &a));
  bufs b;
  bufs_alloc(&b, &g);
  m3_client *c = ct_connect(&f->srv, NULL);
  m3_client_query q[NQ];
  queries_of(f, q);
  for (int round = 0; round < 2; round++) { /* the handle is reused across rounds */
    CHECK_OK(m3_attn_begin(a, &(m3_attn_round){.kv = b.kv, .pos = b.pos, .ids = b.ids,
                                                .scores = b.scores}));
    CHECK_OK(m3_client_retrieve(c, q, NQ, KK, 0, m3_attn_memory_fn, a));
    m3_attn_stats st;
    CHECK_OK(m3_attn_finish(a, &st));
    CHECK_U64(st.placed, NQ * KK);
    CHECK_U64(st.failed, 0);
    check_against_search(f, &g, &b);
  }
  m3_client_close(c);
  free(b.kv);
  free(b.pos);
  m3_attn_destroy(a);
}

/* the cluster callback adapter: same buffers as the single server */
static void test_cluster_round_equals_client_round(void **state) {
  fixture *f = *state;
  m3_attn_geom g;
  CHECK_OK(m3_attn_geom_init(&g, &kSpec, NQ, KK, M3_DTYPE_BF16));
  m3_attn_geom_layer_major(&g);
  m3_attn *a = NULL;
  CHECK_OK(m3_attn_create_host(f->cs, &g, &a));
  m3_client_query q[NQ];
  queries_of(f, q);
  bufs b1, b2;
  bufs_alloc(&b1, &g);
  bufs_alloc(&b2, &g);
  m3_client *c = ct_connect(&f->srv, NULL);
  CHECK_OK(m3_attn_begin(a, &(m3_attn_round){.kv = b1.kv, .pos = b1.pos, .ids = b1.ids,
                                              .scores = b1.scores}));
  CHECK_OK(m3_client_retrieve(c, q, NQ, KK, 0, m3_attn_memory_fn, a));
  CHECK_OK(m3_attn_finish(a, NULL));
  m3_client_close(c);

  char json[256];
  snprintf(json, sizeof json, "{\"shards\": [{\"id\": 0, \"replicas\": [\"%s\"]}]}", f->srv.addr);
  m3_cluster_map *map = NULL;
  CHECK_OK(m3_cluster_map_parse(json, "test map", &map));
  m3_cluster *cl = NULL;
  CHECK_OK(m3_cluster_open(map, NULL, &cl));
  m3_cluster_map_free(map);
  CHECK_OK(m3_attn_begin(a, &(m3_attn_round){.kv = b2.kv, .pos = b2.pos, .ids = b2.ids,
                                              .scores = b2.scores}));
  CHECK_OK(m3_cluster_retrieve(cl, q, NQ, KK, 0, m3_attn_memory_fn, a));
  m3_attn_stats st;
  CHECK_OK(m3_attn_finish(a, &st));
  CHECK_U64(st.placed, NQ * KK);
  m3_cluster_close(cl);
  if (memcmp(b1.kv, b2.kv, m3_attn_kv_elems(&g) * 2) != 0) fail_msg("cluster K/V differ");
  if (memcmp(b1.pos, b2.pos, m3_attn_pos_elems(&g) * 4) != 0) fail_msg("cluster positions differ");
  if (memcmp(b1.ids, b2.ids, sizeof b1.ids) != 0) fail_msg("cluster ids differ");
  check_against_search(f, &g, &b2);
  free(b1.kv);
  free(b1.pos);
  free(b2.kv);
  free(b2.pos);
  m3_attn_destroy(a);
}

static int collect(void *ud, const m3_client_memory *m) {
  uint8_t **recs = ud;
  if (m->status == 0) {
    recs[m->query] = malloc(m->len);
    memcpy(recs[m->query], m->data, m->len);
  }
  return 0;
}

/* codes output: exactly the bytes Fetch returns; with landing
 * (m3_attn_codes_land) received straight into the sink's slots, the same;
 * and so through a cluster (landing 2: m3_cluster_retrieve_into). */
static void codes_sink_equals_fetch(fixture *f, int landing) {
  const size_t rb = m3_record_mem_size(&f->m.layout);
  uint8_t *buf = malloc(NQ * KK * rb);
  uint64_t ids[NQ * KK];
  int32_t status[NQ * KK];
  m3_attn_codes sink;
  m3_attn_codes_init(&sink, NQ, KK, rb, buf, ids, NULL, status);
  m3_client *c = ct_connect(&f->srv, NULL);
  m3_client_query q[NQ];
  queries_of(f, q);
  if (landing == 1) m3_client_set_landing(c, m3_attn_codes_land, &sink);
  if (landing == 2) {
    char json[256];
    snprintf(json, sizeof json, "{\"shards\": [{\"id\": 0, \"replicas\": [\"%s\"]}]}",
             f->srv.addr);
    m3_cluster_map *map = NULL;
    CHECK_OK(m3_cluster_map_parse(json, "test map", &map));
    m3_cluster *cl = NULL;
    CHECK_OK(m3_cluster_open(map, NULL, &cl));
    m3_cluster_map_free(map);
    CHECK_OK(m3_cluster_retrieve_into(cl, q, NQ, KK, 0, m3_attn_codes_land, m3_attn_codes_fn,
                                      &sink));
    m3_cluster_close(cl);
  } else {
    CHECK_OK(m3_client_retrieve(c, q, NQ, KK, 0, m3_attn_codes_fn, &sink));
  }
  m3_client_set_landing(c, NULL, NULL);
  CHECK_U64(sink.placed, NQ * KK);
  uint8_t *recs[NQ * KK] = {0};
  CHECK_OK(m3_client_fetch(c, ids, NQ * KK, 0, collect, recs));
  for (int i = 0; i < NQ * KK; i++) {
    CHECK_RC(status[i], 0);
    if (!recs[i] || memcmp(recs[i], buf + i * rb, rb) != 0) fail_msg("record %d differs from Fetch", i);
    free(recs[i]);
  }
  m3_client_close(c);
  free(buf);
}

static void test_codes_sink_equals_fetch(void **state) { codes_sink_equals_fetch(*state, 0); }
static void test_codes_sink_landed_equals_fetch(void **state) { codes_sink_equals_fetch(*state, 1); }
static void test_codes_sink_cluster_landed_equals_fetch(void **state) {
  codes_sink_equals_fetch(*state, 2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_client_round_into_buffers),
      cmocka_unit_test(test_cluster_round_equals_client_round),
      cmocka_unit_test(test_codes_sink_equals_fetch),
      cmocka_unit_test(test_codes_sink_landed_equals_fetch),
      cmocka_unit_test(test_codes_sink_cluster_landed_equals_fetch),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
