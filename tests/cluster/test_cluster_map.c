/*
 * The cluster map parser and the sharding rule: a valid map in any shard
 * order, syntax errors with file, line and column, field errors naming the
 * field, and a cluster with no server answering failing as UNAVAILABLE.
 */
#include "m3/cluster.h"

#include <stdlib.h>

#include "unit/testutil.h"

static void parse_fails(const char *json, int want, const char *needle) {
  m3_cluster_map *m = (m3_cluster_map *)1;
  CHECK_RC(m3_cluster_map_parse(json, "test.json", &m), want);
  if (m != NULL) fail_msg("map not NULL after a failed parse");
  CHECK_CONTAINS(m3_errmsg(), "test.json");
  CHECK_CONTAINS(m3_errmsg(), needle);
}

static void test_valid_map(void **state) {
  (void)state;
  m3_cluster_map *m = NULL;
  CHECK_OK(m3_cluster_map_parse(
      "{\"shards\": [{\"id\": 1, \"replicas\": [\"127.0.0.1:7620\"]},\n"
      "              {\"id\": 0, \"replicas\": [\"127.0.0.1:7600\", \"[::1]:7610\"]}],\n"
      " \"token\": \"sekrit\", \"codec_fingerprint\": \"73796e7468657469\"}",
      NULL, &m));
  CHECK_U64(m3_cluster_map_shards(m), 2);
  CHECK_U64(m3_cluster_map_replicas(m, 0), 2);
  CHECK_U64(m3_cluster_map_replicas(m, 1), 1);
  assert_string_equal(m3_cluster_map_replica(m, 0, 1), "[::1]:7610");
  assert_string_equal(m3_cluster_map_replica(m, 1, 0), "127.0.0.1:7620");
  assert_null(m3_cluster_map_replica(m, 1, 1));
  assert_string_equal(m3_cluster_map_token(m), "sekrit");
  uint64_t fp;
  CHECK_U64(m3_cluster_map_fingerprint(m, &fp), 1);
  CHECK_U64(fp, 0x73796e7468657469ull);
  m3_cluster_map_free(m);
  m3_cluster_map_free(NULL);
}

static void test_syntax_errors_give_line_and_column(void **state) {
  (void)state;
  parse_fails("{\"shards\": [\n  {\"id\": 0,, }]}", M3_EBADFORMAT, "line 2");
  parse_fails("{\"shards\": [\n  {\"id\": 0,, }]}", M3_EBADFORMAT, "column");
  char *dir = m3t_mkdtemp("clmap");
  char path[600];
  snprintf(path, sizeof path, "%s/cluster.json", dir);
  FILE *f = fopen(path, "w");
  fputs("{\n  \"shards\": [\n    {\"id\": 0 \"replicas\": []}\n  ]\n}\n", f);
  fclose(f);
  m3_cluster_map *m = NULL;
  CHECK_RC(m3_cluster_map_load(path, &m), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), path);
  CHECK_CONTAINS(m3_errmsg(), "line 3");
  snprintf(path, sizeof path, "%s/absent.json", dir);
  CHECK_RC(m3_cluster_map_load(path, &m), M3_ENOTFOUND);
  CHECK_CONTAINS(m3_errmsg(), "absent.json");
  m3t_rmrf(dir);
  free(dir);
}

static void test_field_errors_name_the_field(void **state) {
  (void)state;
  parse_fails("[]", M3_EINVAL, "top level");
  parse_fails("{}", M3_EINVAL, "shards: missing");
  parse_fails("{\"shards\": []}", M3_EINVAL, "shards");
  parse_fails("{\"shards\": [{\"id\": 0, \"replicas\": [\"a:1\"]},"
              " {\"id\": 1, \"replicas\": [\"b:2\", \"nocolon\"]}]}",
              M3_EINVAL, "shards[1].replicas[1]");
  parse_fails("{\"shards\": [{\"id\": 0, \"replicas\": [\"a:99999\"]}]}", M3_EINVAL,
              "shards[0].replicas[0]");
  parse_fails("{\"shards\": [{\"id\": 0, \"replicas\": [\"a:1\"]},"
              " {\"id\": 0, \"replicas\": [\"b:1\"]}]}",
              M3_EINVAL, "appears twice");
  parse_fails("{\"shards\": [{\"id\": 2, \"replicas\": [\"a:1\"]}]}", M3_EINVAL,
              "shards[0].id");
  parse_fails("{\"shards\": [{\"id\": 0}]}", M3_EINVAL, "shards[0].replicas: missing");
  parse_fails("{\"shards\": [{\"id\": 0, \"replicas\": []}]}", M3_EINVAL, "shards[0].replicas");
  parse_fails("{\"shards\": [{\"id\": 0, \"replica\": [\"a:1\"]}]}", M3_EINVAL,
              "unknown key 'replica'");
  parse_fails("{\"shard\": []}", M3_EINVAL, "unknown key 'shard'");
  parse_fails("{\"shards\": [{\"id\": 0, \"replicas\": [\"a:1\"]}], \"token\": 5}", M3_EINVAL,
              "token");
  parse_fails("{\"shards\": [{\"id\": 0, \"replicas\": [\"a:1\"]}],"
              " \"codec_fingerprint\": \"xyz\"}",
              M3_EINVAL, "codec_fingerprint");
}

static void test_sharding_rule_is_id_mod_shards(void **state) {
  (void)state;
  CHECK_U64(m3_cluster_shard_of(0, 2), 0);
  CHECK_U64(m3_cluster_shard_of(601, 2), 1);
  CHECK_U64(m3_cluster_shard_of(17, 5), 2);
  CHECK_U64(m3_cluster_shard_of(UINT64_MAX, 3), UINT64_MAX % 3);
  CHECK_U64(m3_cluster_shard_of(12345, 1), 0);
}

static void test_no_server_answers_is_unavailable(void **state) {
  (void)state;
  /* Port 1 on loopback: refused at once. */
  m3_cluster_map *m = NULL;
  CHECK_OK(m3_cluster_map_parse(
      "{\"shards\": [{\"id\": 0, \"replicas\": [\"127.0.0.1:1\", \"127.0.0.1:2\"]}]}", NULL,
      &m));
  m3_cluster_options o;
  m3_cluster_options_init(&o);
  o.call_timeout_ms = 3000;
  m3_cluster *cl = NULL;
  CHECK_OK(m3_cluster_open(m, &o, &cl));
  m3_cluster_map_free(m);
  float v[4] = {1, 0, 0, 0};
  m3_client_query q = {.vector = v, .dim = 4};
  uint64_t ids[2];
  float sc[2];
  uint32_t cnt[1];
  CHECK_RC(m3_cluster_search(cl, &q, 1, 2, ids, sc, cnt), M3_EBUSY);
  const char *msg;
  CHECK_U64(m3_cluster_last_status(NULL, &msg), 14 /* UNAVAILABLE */);
  CHECK_CONTAINS(msg, "127.0.0.1:1");
  CHECK_CONTAINS(msg, "127.0.0.1:2");
  m3_cluster_close(cl);
  m3_cluster_close(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid_map),
      cmocka_unit_test(test_syntax_errors_give_line_and_column),
      cmocka_unit_test(test_field_errors_name_the_field),
      cmocka_unit_test(test_sharding_rule_is_id_mod_shards),
      cmocka_unit_test(test_no_server_answers_is_unavailable),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
