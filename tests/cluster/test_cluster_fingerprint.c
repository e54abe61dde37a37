/*
 * Servers that hold other memories are refused: a replica started on a
 * store of another layout (m3-bench gen --codec-bytes 16: same fingerprint
 * string, other code size) is refused at Hello with an error naming it, and
 * its shard fails over to the good replica; a shard with only such a
 * replica fails with M3_EFINGERPRINT; a worker (or map) expecting another
 * codec fingerprint is refused by every server.
 */
#include <stdlib.h>
#include <sys/wait.h>

#include "cluster/cluster_testlib.h"

static ct_store st;
static cl_cluster cc;
static ct_server bad;
static float v[4 * 32];
static m3_client_query q[4];

static int count(void *ud, const m3_client_memory *m) {
  if (m->status == 0) (*(int *)ud)++;
  return 0;
}

static m3_cluster *open_json(const char *json, const m3_cluster_options *o) {
  m3_cluster_map *m = NULL;
  CHECK_OK(m3_cluster_map_parse(json, NULL, &m));
  m3_cluster *cl = NULL;
  CHECK_OK(m3_cluster_open(m, o, &cl));
  m3_cluster_map_free(m);
  return cl;
}

static int setup(void **state) {
  (void)state;
  cl_store_up(&cc, &st, 600, 32, 2, 1);
  char bad_store[400];
  snprintf(bad_store, sizeof bad_store, "%.300s/bad", st.dir);
  char bench[4096];
  m3t_bin_path(bench, sizeof bench, "m3-bench");
  if (m3t_sh("%s gen --store %s --count 600 --emb-dim 32 --codec-bytes 16 >/dev/null", bench,
            bad_store) != 0)
    fail_msg("m3-bench gen of the other store failed");
  ct_store other = st;
  snprintf(other.store, sizeof other.store, "%s", bad_store);
  ct_server_start(&bad, &other, NULL);
  uint64_t rng = 5;
  for (int i = 0; i < 4; i++) {
    m3t_rand_unit(&rng, v + i * 32, 32);
    q[i] = (m3_client_query){.vector = v + i * 32, .dim = 32};
  }
  return 0;
}

static int teardown(void **state) {
  (void)state;
  ct_server_stop(&bad);
  cl_store_down(&cc, &st);
  return 0;
}

static void test_other_layout_replica_is_refused(void **state) {
  (void)state;
  char json[1024];
  snprintf(json, sizeof json,
           "{\"shards\": [{\"id\": 0, \"replicas\": [\"%s\"]},"
           " {\"id\": 1, \"replicas\": [\"%s\", \"%s\"]}]}",
           cc.addr[0], bad.addr, cc.addr[1]);
  m3_cluster *cl = open_json(json, NULL);
  CHECK_RC(m3_cluster_check(cl), M3_EFINGERPRINT);
  CHECK_CONTAINS(m3_errmsg(), bad.addr);
  CHECK_CONTAINS(m3_errmsg(), "shard 1");
  CHECK_CONTAINS(m3_errmsg(), "refused");
  print_message("check: %s\n", m3_errmsg());
  for (int i = 0; i < 10; i++) {
    int n = 0;
    CHECK_OK(m3_cluster_retrieve(cl, q, 4, 5, 0, count, &n));
    CHECK_U64(n, 20);
  }
  m3_cluster_replica_info ri;
  CHECK_OK(m3_cluster_replica_get(cl, 1, 0, &ri));
  CHECK_U64(ri.up, 0);
  CHECK_U64(ri.calls, 0);
  CHECK_CONTAINS(ri.last_error, "refused");
  m3_cluster_close(cl);
}

static void test_shard_with_only_other_layout_fails(void **state) {
  (void)state;
  char json[1024];
  snprintf(json, sizeof json,
           "{\"shards\": [{\"id\": 0, \"replicas\": [\"%s\"]},"
           " {\"id\": 1, \"replicas\": [\"%s\"]}]}",
           cc.addr[0], bad.addr);
  m3_cluster *cl = open_json(json, NULL);
  int n = 0;
  CHECK_RC(m3_cluster_retrieve(cl, q, 4, 5, 0, count, &n), M3_EFINGERPRINT);
  CHECK_U64(n, 0);
  int shard;
  const char *msg;
  CHECK_U64(m3_cluster_last_status(&shard, &msg), 9 /* FAILED_PRECONDITION */);
  CHECK_U64(shard, 1);
  CHECK_CONTAINS(msg, bad.addr);
  print_message("retrieve: %s\n", msg);
  m3_cluster_close(cl);
}

static void test_expected_fingerprint_mismatch_is_refused(void **state) {
  (void)state;
  char json[1024];
  /* The worker's own codec (server-side check too). */
  snprintf(json, sizeof json, "{\"shards\": [{\"id\": 0, \"replicas\": [\"%s\"]}, "
                              "{\"id\": 1, \"replicas\": [\"%s\"]}]}", cc.addr[0], cc.addr[1]);
  m3_cluster_options o;
  m3_cluster_options_init(&o);
  o.codec_fingerprint = 0x1234;
  o.check_fingerprint = 1;
  m3_cluster *cl = open_json(json, &o);
  int n = 0;
  CHECK_RC(m3_cluster_retrieve(cl, q, 4, 5, 0, count, &n), M3_EFINGERPRINT);
  CHECK_CONTAINS(m3_errmsg(), cc.addr[0]);
  print_message("worker fingerprint: %s\n", m3_errmsg());
  m3_cluster_close(cl);
  /* The map's codec_fingerprint (client-side check). */
  snprintf(json, sizeof json, "{\"shards\": [{\"id\": 0, \"replicas\": [\"%s\"]}, "
                              "{\"id\": 1, \"replicas\": [\"%s\"]}], "
                              "\"codec_fingerprint\": \"00000000deadbeef\"}",
           cc.addr[0], cc.addr[1]);
  cl = open_json(json, NULL);
  CHECK_RC(m3_cluster_retrieve(cl, q, 4, 5, 0, count, &n), M3_EFINGERPRINT);
  CHECK_CONTAINS(m3_errmsg(), "00000000deadbeef");
  CHECK_CONTAINS(m3_errmsg(), cc.addr[0]);
  m3_cluster_close(cl);
  /* And the launcher's map, which carries the right one, works. */
  cl = cl_open(&cc, NULL);
  n = 0;
  CHECK_OK(m3_cluster_retrieve(cl, q, 4, 5, 0, count, &n));
  CHECK_U64(n, 20);
  m3_cluster_close(cl);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_other_layout_replica_is_refused),
      cmocka_unit_test(test_shard_with_only_other_layout_fails),
      cmocka_unit_test(test_expected_fingerprint_mismatch_is_refused),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
