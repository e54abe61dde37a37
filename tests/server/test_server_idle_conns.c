/*
 * 1,000 idle connections while another client works.
 *
 * m3-server with --max-connections 1001. The test raises RLIMIT_NOFILE (the
 * server inherits it), opens 1,000 connections and says Hello on each (all
 * Hellos sent first, then all answers read), and keeps them open and idle.
 * Then:
 *  - a bystander's 20 Retrieve calls (32 x 5) all succeed, each within 5 s;
 *  - /metrics says 1001 connections;
 *  - connection 1,002 is refused (closed at once) and counted in
 *    m3_connections_refused_total; the idle ones are untouched (a Health
 *    call on a few of them works);
 *  - once they are closed, m3_connections returns to 1, and the server's
 *    RSS stays under 500 MB throughout.
 */
#include <stdlib.h>

#include "srvtest.h"

#define COUNT 300
#define DIM 32
#define IDLE 1000

static void test_idle_connections(void **state) {
  (void)state;
  long lim = st_raise_nofile(IDLE + 200);
  if (lim < IDLE + 64) {
    fprintf(stderr, "# RLIMIT_NOFILE is %ld, too low for %d connections: skipped\n", lim, IDLE);
    skip();
  }
  char *dir = m3t_mkdtemp("idle");
  char store[4200];
  snprintf(store, sizeof store, "%s/store", dir);
  st_gen_store(store, COUNT, DIM);
  const char *args[] = {"--max-connections", "1001", NULL};
  st_server srv;
  st_server_start(&srv, dir, store, args, NULL);

  st_conn G;
  st_conn_open(&G, srv.rpc_port);
  st_hello_ok(&G, 1, NULL);

  st_conn *idle = calloc(IDLE, sizeof *idle);
  assert_non_null(idle);
  M3__HelloRequest h = M3__HELLO_REQUEST__INIT;
  h.protocol_version = M3_PROTOCOL_VERSION;
  h.token = "";
  long long t0 = m3t_now_ms();
  for (int i = 0; i < IDLE; i++) {
    st_conn_open(&idle[i], srv.rpc_port);
    st_send(&idle[i], M3_FRAME_REQUEST, M3_METHOD_HELLO, 1, 0, &h.base, NULL, 0);
  }
  for (int i = 0; i < IDLE; i++) {
    uint16_t m = M3_METHOD_HELLO;
    st_result r;
    st_collect(&idle[i], 1, 1, &m, &r, 30000, NULL);
    if (r.status != 0) fail_msg("idle connection %d: Hello %s \"%s\"", i, m3_status_name(r.status), r.message);
    st_result_free(&r);
  }
  fprintf(stderr, "# %d connections with Hello in %lld ms, server RSS %ld kB\n", IDLE,
          m3t_now_ms() - t0, st_server_rss_kb(&srv));
  double conns = st_server_metric(&srv, "m3_connections");
  if (conns != IDLE + 1) fail_msg("m3_connections %g, want %d", conns, IDLE + 1);

  float q[32 * DIM];
  uint64_t seed = 31;
  for (int i = 0; i < 32; i++) m3t_rand_unit(&seed, q + i * DIM, DIM);
  M3__RetrieveRequest rr = M3__RETRIEVE_REQUEST__INIT;
  rr.queries = st_queries(q, 32, DIM);
  rr.n_queries = 32;
  rr.k = 5;
  long long worst = 0;
  for (uint32_t i = 0; i < 20; i++) {
    long long c0 = m3t_now_ms();
    st_result r;
    st_call(&G, M3_METHOD_RETRIEVE, 10 + i, 0, &rr.base, NULL, 0, &r);
    ST_STATUS(r, 0);
    ST_EQ_U64(r.n, 160);
    st_result_free(&r);
    long long took = m3t_now_ms() - c0;
    if (took > worst) worst = took;
  }
  st_queries_free(rr.queries, 32);
  fprintf(stderr, "# bystander: 20 Retrieve calls, worst %lld ms\n", worst);
  if (worst > 5000) fail_msg("a bystander's Retrieve took %lld ms with %d idle connections", worst, IDLE);

  /* One more than --max-connections: closed at once. */
  st_conn extra;
  st_conn_open(&extra, srv.rpc_port);
  if (!st_wait_closed(&extra, 10000, NULL)) fail_msg("connection %d (past --max-connections 1001) stays open", IDLE + 2);
  st_conn_close(&extra);
  double refused = st_server_metric(&srv, "m3_connections_refused_total");
  if (refused != 1) fail_msg("m3_connections_refused_total %g, want 1", refused);
  for (int i = 0; i < IDLE; i += 333) {
    M3__HealthRequest hq = M3__HEALTH_REQUEST__INIT;
    st_result r;
    st_call(&idle[i], M3_METHOD_HEALTH, 2, 0, &hq.base, NULL, 0, &r);
    ST_STATUS(r, 0);
    st_result_free(&r);
  }
  long rss = st_server_rss_kb(&srv);
  if (rss > 500L * 1024) fail_msg("server VmRSS %ld kB with %d connections, want < 500 MB", rss, IDLE);

  for (int i = 0; i < IDLE; i++) st_conn_close(&idle[i]);
  free(idle);
  long long end = m3t_now_ms() + 10000;
  while ((conns = st_server_metric(&srv, "m3_connections")) != 1) {
    if (m3t_now_ms() > end) fail_msg("m3_connections %g 10 s after closing the idle ones, want 1", conns);
    m3t_sleep_ms(20);
  }
  st_conn_close(&G);
  st_server_stop(&srv, 30000);
  m3t_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_idle_connections)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
