/*
 * A 2-shard x 2-replica local cluster (deploy/local/m3-cluster, real
 * m3-server processes on loopback) over mutual TLS gives the same retrieval
 * round and fetch as the same cluster in clear: the cluster map's "tls"
 * object (files relative to the map) reaches every replica. Beside it the
 * m3 CLI's --tls-* flags (fetch bytes equal, a missing client certificate
 * refused) and m3-bench rpc --tls --plain-server, whose TLS / plain ratio
 * is measured in one run.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/cluster_testlib.h"

static ct_store st;
static char certs[700];

#define NQ 8
#define K 5

static void cluster_rounds(m3_cluster *cl, cl_round *ret, cl_round *fet) {
  uint64_t rng = 11;
  float q[NQ][32];
  m3_client_query qs[NQ];
  for (int i = 0; i < NQ; i++) {
    m3t_rand_unit(&rng, q[i], 32);
    qs[i] = (m3_client_query){.vector = q[i], .dim = 32};
  }
  cl_round_init(ret, NQ, K);
  CHECK_OK(m3_cluster_retrieve(cl, qs, NQ, K, 1, cl_round_on_mem, ret));
  uint64_t ids[64];
  for (int i = 0; i < 64; i++) ids[i] = (uint64_t)(i * 9);
  cl_round_init(fet, 64, 1);
  CHECK_OK(m3_cluster_fetch(cl, ids, 64, 0, cl_round_on_mem, fet));
}

/* The map with a "tls" object whose files are relative to the map. */
static void add_tls(const char *map) {
  json_error_t e;
  json_t *root = json_load_file(map, 0, &e);
  if (root == NULL) fail_msg("%s: %s", map, e.text);
  json_object_set_new(root, "tls", json_pack("{s:s,s:s,s:s}", "ca", "../certs/ca.pem", "cert",
                                             "../certs/client.pem", "key", "../certs/client.key"));
  if (json_dump_file(root, map, JSON_INDENT(2)) != 0) fail_msg("writing %s", map);
  json_decref(root);
}

static void test_tls_cluster_equals_plain(void **state) {
  (void)state;
  cl_cluster pc, tc;
  char run[800], flags[3000];
  snprintf(run, sizeof run, "%s/run-plain", st.dir);
  cl_up(&pc, st.store, run, 2, 2);
  snprintf(run, sizeof run, "%s/run-tls", st.dir);
  snprintf(flags, sizeof flags, "--tls-cert %s/server.pem --tls-key %s/server.key --tls-ca %s/ca.pem",
           certs, certs, certs);
  cl_up_args(&tc, st.store, run, 2, 2, flags);

  m3_cluster *cl = cl_open(&pc, NULL);
  cl_round pr, pf, tr, tf;
  cluster_rounds(cl, &pr, &pf);
  m3_cluster_close(cl);

  /* Without the tls object the TLS cluster's replicas refuse us. */
  m3_cluster_map *map = NULL;
  CHECK_OK(m3_cluster_map_load(tc.map, &map));
  m3_cluster_options o;
  m3_cluster_options_init(&o);
  o.call_timeout_ms = 3000;
  o.try_timeout_ms = 1000;
  CHECK_OK(m3_cluster_open(map, &o, &cl));
  m3_client_info info;
  if (m3_cluster_info(cl, &info) == 0) fail_msg("a plain cluster handle got a TLS replica's Hello");
  m3_cluster_close(cl);
  m3_cluster_map_free(map);

  add_tls(tc.map);
  cl = cl_open(&tc, NULL);
  cluster_rounds(cl, &tr, &tf);
  m3_cluster_close(cl);
  cl_round_expect_equal(&pr, &tr, "TLS cluster Retrieve vs plain");
  cl_round_expect_equal(&pf, &tf, "TLS cluster Fetch vs plain");

  /* The CLI: the map's tls object, and --tls-* flags on one server. */
  char m3[4096], bench[4096];
  m3t_bin_path(m3, sizeof m3, "m3");
  m3t_bin_path(bench, sizeof bench, "m3-bench");
  int ex = m3t_sh("%s fetch --cluster %s --id 3 --id 17 --out %s/plain.bin >/dev/null && "
                  "%s fetch --cluster %s --id 3 --id 17 --out %s/tls.bin >/dev/null && "
                  "cmp %s/plain.bin %s/tls.bin",
                  m3, pc.map, st.dir, m3, tc.map, st.dir, st.dir, st.dir);
  if (ex != 0) fail_msg("m3 fetch --cluster over TLS differs from plain (exit %d)", ex);
  ex = m3t_sh("%s stats --server %s --tls-ca %s/ca.pem --tls-cert %s/client.pem --tls-key "
              "%s/client.key >/dev/null", m3, tc.addr[0], certs, certs, certs);
  if (ex != 0) fail_msg("m3 stats --tls-ca ... exited %d", ex);
  ex = m3t_sh("%s stats --cluster %s >/dev/null", m3, tc.map);
  if (ex != 0) fail_msg("m3 stats --cluster (map tls) exited %d", ex);
  ex = m3t_sh("%s stats --server %s --tls-ca %s/ca.pem 2>%s/nocert.err >/dev/null", m3,
              tc.addr[0], certs, st.dir);
  char path[900];
  snprintf(path, sizeof path, "%s/nocert.err", st.dir);
  FILE *f = fopen(path, "r");
  char err[1000] = "";
  if (f) {
    size_t n = fread(err, 1, sizeof err - 1, f);
    err[n] = '\0';
    fclose(f);
  }
  if (ex != 2 || strstr(err, "requires a client certificate") == NULL)
    fail_msg("m3 stats without a client certificate: exit %d, '%s'", ex, err);

  /* m3-bench rpc: TLS against plain, same calls, one run (shard 0 replica 0
   * of each cluster holds the same shard store). */
  char out[900];
  snprintf(out, sizeof out, "%s/bench.json", st.dir);
  ex = m3t_sh("%s rpc --server %s --tls --tls-ca %s/ca.pem --tls-cert %s/client.pem "
              "--tls-key %s/client.key --plain-server %s --connections 2 --queries-per-call 4 "
              "--calls 40 --warmup 2 --loopback-seconds 0 --json >%s",
              bench, tc.addr[0], certs, certs, certs, pc.addr[0], out);
  if (ex != 0) fail_msg("m3-bench rpc --tls exited %d", ex);
  json_error_t e;
  json_t *j = json_load_file(out, 0, &e);
  if (j == NULL) fail_msg("bench output: %s", e.text);
  double ratio = json_number_value(json_object_get(j, "tls_over_plain"));
  json_t *plain = json_object_get(j, "plain");
  if (!(ratio > 0) || plain == NULL || json_integer_value(json_object_get(j, "errors")) != 0 ||
      json_integer_value(json_object_get(plain, "errors")) != 0)
    fail_msg("m3-bench rpc --tls: tls_over_plain %g, errors %lld / plain %lld", ratio,
             (long long)json_integer_value(json_object_get(j, "errors")),
             (long long)json_integer_value(json_object_get(plain, "errors")));
  print_message("m3-bench rpc --tls: %.1f MB/s TLS, %.1f MB/s plain: ratio %.3f (loaded machine)\n",
                json_number_value(json_object_get(j, "payload_mb_per_s")),
                json_number_value(json_object_get(plain, "payload_mb_per_s")), ratio);
  json_decref(j);

  cl_round_free(&pr);
  cl_round_free(&pf);
  cl_round_free(&tr);
  cl_round_free(&tf);
  cl_down(&tc);
  cl_down(&pc);
}

static int setup(void **state) {
  (void)state;
  ct_store_make(&st, 600, 32);
  snprintf(certs, sizeof certs, "%s/certs", st.dir);
  const char *src = getenv("M3_SOURCE_DIR");
  if (src == NULL) src = ".";
  if (m3t_sh("bash %s/tests/tls/make_certs.sh %s", src, certs) != 0) fail_msg("make_certs.sh failed");
  return 0;
}

static int teardown(void **state) {
  (void)state;
  ct_store_free(&st);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_tls_cluster_equals_plain)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
