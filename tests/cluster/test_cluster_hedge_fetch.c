/*
 * Hedged Fetch with a replica gone slow: on a 2-shard x 2-replica local
 * cluster, one replica of each shard is stopped (SIGSTOP: it accepts
 * connections and answers nothing). With hedge_delay_ms 40 and a
 * try_timeout_ms of 5 s, Fetch calls alone (no search phase) must send
 * hedged attempts (counters.hedges grows), return every id once with the
 * right bytes, and finish well inside the connect timeout (1 s) that a
 * call stuck on the stopped replica would wait; retrieval rounds
 * through the hedged handle equal the rounds an unhedged handle gave before
 * the stop (ids, scores, bytes, texts, each (query, rank) once). After
 * SIGCONT the replicas come back and rounds still agree.
 */
#include <stdlib.h>
#include <unistd.h>

#include "cluster/cluster_testlib.h"

#define DIM 32
#define ROUNDS 12
#define NQ 4
#define K 5
#define NIDS 12

static ct_store st;
static cl_cluster cc;

static long long max_ms;

static void timed_fetch(m3_cluster *cl, const uint64_t *ids, cl_round *r) {
  long long t0 = m3t_now_ms();
  int rc = m3_cluster_fetch(cl, ids, NIDS, 1, cl_round_on_mem, r);
  long long ms = m3t_now_ms() - t0;
  if (rc) fail_msg("hedged fetch: %s: %s", m3_err_name(rc), m3_errmsg());
  if (ms > max_ms) max_ms = ms;
}

static void timed_retrieve(m3_cluster *cl, const m3_client_query *q, cl_round *r) {
  long long t0 = m3t_now_ms();
  int rc = m3_cluster_retrieve(cl, q, NQ, K, 1, cl_round_on_mem, r);
  long long ms = m3t_now_ms() - t0;
  if (rc) fail_msg("hedged retrieve: %s: %s", m3_err_name(rc), m3_errmsg());
  if (ms > max_ms) max_ms = ms;
}

static void test_hedged_fetch_around_a_stopped_replica(void **state) {
  (void)state;
  cl_store_up(&cc, &st, 600, DIM, 2, 2);
  m3_cluster *ref = cl_open(&cc, NULL);
  m3_cluster_options o;
  m3_cluster_options_init(&o);
  o.hedge_delay_ms = 40;
  o.try_timeout_ms = 5000;
  o.connect_timeout_ms = 1000;
  m3_cluster *hed = cl_open(&cc, &o);
  CHECK_OK(m3_cluster_check(hed)); /* a pooled connection to every replica */

  uint64_t rng = 31;
  static float v[ROUNDS][NQ * DIM];
  static m3_client_query q[ROUNDS][NQ];
  static cl_round want[ROUNDS], wantf[ROUNDS];
  static uint64_t ids[ROUNDS][NIDS];
  for (int i = 0; i < ROUNDS; i++) {
    for (int j = 0; j < NQ; j++) {
      m3t_rand_unit(&rng, v[i] + j * DIM, DIM);
      q[i][j] = (m3_client_query){.vector = v[i] + j * DIM, .dim = DIM};
    }
    cl_round_init(&want[i], NQ, K);
    CHECK_OK(m3_cluster_retrieve(ref, q[i], NQ, K, 1, cl_round_on_mem, &want[i]));
    for (int j = 0; j < NIDS; j++) ids[i][j] = m3t_rand(&rng) % 600;
    cl_round_init(&wantf[i], NIDS, 1);
    CHECK_OK(m3_cluster_fetch(ref, ids[i], NIDS, 1, cl_round_on_mem, &wantf[i]));
  }

  cl_pause(&cc, 0, 0);
  cl_pause(&cc, 1, 1);
  print_message("SIGSTOP shard 0 replica 0 and shard 1 replica 1\n");
  m3_cluster_counters c0, c1, c2;
  m3_cluster_counters_get(hed, &c0);
  for (int i = 0; i < ROUNDS; i++) {
    cl_round got;
    cl_round_init(&got, NIDS, 1);
    timed_fetch(hed, ids[i], &got);
    char what[64];
    snprintf(what, sizeof what, "hedged fetch %d", i);
    cl_round_expect_equal(&wantf[i], &got, what);
    for (int j = 0; j < NIDS; j++)
      if (memcmp(got.h[j].data, st.mem[ids[i][j]], st.mem_len) != 0)
        fail_msg("%s: id %llu: bytes differ from the store", what, (unsigned long long)ids[i][j]);
    cl_round_free(&got);
  }
  m3_cluster_counters_get(hed, &c1);
  print_message("fetches: %llu hedges, %llu failovers, slowest %lld ms\n",
                (unsigned long long)(c1.hedges - c0.hedges),
                (unsigned long long)(c1.failovers - c0.failovers), max_ms);
  if (c1.hedges == c0.hedges) fail_msg("no Fetch was hedged with a replica of each shard stopped");
  for (int i = 0; i < ROUNDS; i++) {
    cl_round got;
    cl_round_init(&got, NQ, K);
    timed_retrieve(hed, q[i], &got);
    char what[64];
    snprintf(what, sizeof what, "hedged round %d", i);
    cl_round_expect_equal(&want[i], &got, what);
    cl_round_free(&got);
  }
  m3_cluster_counters_get(hed, &c2);
  print_message("rounds: %llu hedges; slowest call %lld ms (try timeout %d ms)\n",
                (unsigned long long)(c2.hedges - c1.hedges), max_ms, o.try_timeout_ms);
  /* A call that waited for a stopped replica would take the try timeout
   * (5 s), or the connect timeout (1 s) for a new connection to it. */
  if (max_ms >= 900) fail_msg("a hedged call took %lld ms", max_ms);
  CHECK_U64(c2.failed, 0);

  cl_resume(&cc, 0, 0);
  cl_resume(&cc, 1, 1);
  long long until = m3t_now_ms() + 15000;
  for (unsigned s = 0; s < 2; s++) {
    m3_cluster_replica_info ri;
    do {
      usleep(20000);
      CHECK_OK(m3_cluster_replica_get(hed, s, s, &ri));
    } while (!ri.up && m3t_now_ms() < until);
    if (!ri.up) fail_msg("shard %u replica %u not back 15 s after SIGCONT: %s", s, s,
                         ri.last_error);
  }
  for (int i = 0; i < ROUNDS; i++) {
    cl_round got;
    cl_round_init(&got, NQ, K);
    timed_retrieve(hed, q[i], &got);
    cl_round_expect_equal(&want[i], &got, "round after SIGCONT");
    cl_round_free(&got);
    cl_round_free(&want[i]);
    cl_round_free(&wantf[i]);
  }
  m3_cluster_close(hed);
  m3_cluster_close(ref);
  cl_store_down(&cc, &st);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hedged_fetch_around_a_stopped_replica),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
