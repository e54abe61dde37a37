/*
 * A whole shard down (both replicas of shard 1 killed): retrieval rounds,
 * searches and fetches that need shard 1 fail with UNAVAILABLE (M3_EBUSY)
 * naming shard 1, within the deadline, and a round hands the callback
 * nothing (no partial answer); what needs only shard 0 still works.
 */
#include <stdlib.h>

#include "cluster/cluster_testlib.h"

static int count(void *ud, const m3_client_memory *m) {
  (void)m;
  (*(int *)ud)++;
  return 0;
}

static void check_unavailable(int rc, const char *what) {
  int shard = -2;
  const char *msg;
  int code = m3_cluster_last_status(&shard, &msg);
  if (rc != M3_EBUSY || code != 14 || shard != 1)
    fail_msg("%s: rc %s, status %d, shard %d (%s); want M3_EBUSY, UNAVAILABLE, shard 1", what,
             m3_err_name(rc), code, shard, msg);
  CHECK_CONTAINS(msg, "shard 1 unavailable");
  CHECK_CONTAINS(m3_errmsg(), "shard 1");
  print_message("%s: %s\n", what, msg);
}

static void test_whole_shard_down_is_unavailable(void **state) {
  (void)state;
  ct_store st;
  cl_cluster cc;
  cl_store_up(&cc, &st, 600, 32, 2, 2);
  m3_cluster_options o;
  m3_cluster_options_init(&o);
  o.call_timeout_ms = 8000;
  m3_cluster *cl = cl_open(&cc, &o);

  uint64_t rng = 3;
  float v[8 * 32];
  m3_client_query q[8];
  for (int i = 0; i < 8; i++) {
    m3t_rand_unit(&rng, v + i * 32, 32);
    q[i] = (m3_client_query){.vector = v + i * 32, .dim = 32};
  }
  int n = 0;
  CHECK_OK(m3_cluster_retrieve(cl, q, 8, 5, 0, count, &n));
  CHECK_U64(n, 40);

  cl_kill(&cc, 1, 0);
  cl_kill(&cc, 1, 1);
  for (int i = 0; i < 3; i++) {
    n = 0;
    long long t0 = m3t_now_ms();
    int rc = m3_cluster_retrieve(cl, q, 8, 5, 0, count, &n);
    long long ms = m3t_now_ms() - t0;
    check_unavailable(rc, "retrieve");
    CHECK_U64(n, 0); /* failed in the search phase: nothing delivered */
    if (ms > o.call_timeout_ms + 2000) fail_msg("took %lld ms", ms);
  }
  uint64_t ids[40];
  float sc[40];
  uint32_t cnt[8];
  check_unavailable(m3_cluster_search(cl, q, 8, 5, ids, sc, cnt), "search");

  uint64_t odd[] = {1, 3, 599};
  n = 0;
  check_unavailable(m3_cluster_fetch(cl, odd, 3, 0, count, &n), "fetch of shard 1 ids");
  CHECK_U64(n, 0);
  uint64_t mixed[] = {0, 1};
  n = 0;
  check_unavailable(m3_cluster_fetch(cl, mixed, 2, 0, count, &n), "fetch of ids on both shards");
  uint64_t even[] = {0, 2, 598};
  n = 0;
  CHECK_OK(m3_cluster_fetch(cl, even, 3, 0, count, &n));
  CHECK_U64(n, 3);

  m3_cluster_counters ctr;
  m3_cluster_counters_get(cl, &ctr);
  if (ctr.failed < 6) fail_msg("counters say %llu failed calls", (unsigned long long)ctr.failed);
  m3_cluster_close(cl);
  cl_store_down(&cc, &st);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_whole_shard_down_is_unavailable),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
