/*
 * Trickle readers (issue 14, defect 7): clients that read their answers a
 * few bytes at a time, so that their connections never look idle, must not
 * pin the read-buffer budget and stall everyone else.
 *
 * m3-server with a small budget (--fetch-memory-mb 8), a 1 MB write
 * high-water mark and an idle timeout (60 s) far beyond the test. 20
 * clients T each say Hello, send Retrieve calls (32 x top-5, 1.3 MB of
 * memories each) and then read 2 KB every 100 ms. A bystander G makes a
 * Retrieve call every 100 ms. The test asserts:
 *  - every one of G's calls succeeds within 10 s, all along (before the fix
 *    they stalled until their deadline);
 *  - the server closes the trickle readers (their drain rate is under
 *    --min-drain-kb-per-s): m3_slow_readers_closed_total reaches 20 and
 *    m3_connections falls back to 1 within 15 s;
 *  - m3_calls_in_flight returns to 0 and the server drains and exits 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "srvtest.h"

#define COUNT 300
#define DIM 32
#define NT 20

static st_server srv;
static st_conn G;
static uint32_t gsid = 2;
static float gq[32 * DIM];

static void bystander_call(void) {
  long long took = st_retrieve_ok(&G, gsid++, gq, 32, DIM, 5);
  if (took > 10000) fail_msg("a bystander's Retrieve took %lld ms beside %d trickle readers", took, NT);
}

static void test_trickle_readers(void **state) {
  (void)state;
  st_raise_nofile(256);
  char *dir = m3t_mkdtemp("trickle");
  char store[4200];
  snprintf(store, sizeof store, "%s/store", dir);
  st_gen_store(store, COUNT, DIM);
  const char *args[] = {"--idle-timeout-ms", "60000", "--fetch-memory-mb", "8",
                        "--write-high-water-mb", "1", NULL};
  st_server_start(&srv, dir, store, args, NULL);
  uint64_t seed = 7;
  for (int i = 0; i < 32; i++) m3t_rand_unit(&seed, gq + i * DIM, DIM);
  st_conn_open(&G, srv.rpc_port);
  st_hello_ok(&G, 1, NULL);
  bystander_call();

  static st_conn T[NT];
  for (int t = 0; t < NT; t++) {
    st_conn_open(&T[t], srv.rpc_port);
    int rcv = 4096;
    setsockopt(T[t].fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    st_hello_ok(&T[t], 1, NULL);
    float tq[32 * DIM];
    for (int i = 0; i < 32; i++) m3t_rand_unit(&seed, tq + i * DIM, DIM);
    M3__RetrieveRequest rr = M3__RETRIEVE_REQUEST__INIT;
    rr.queries = st_queries(tq, 32, DIM);
    rr.n_queries = 32;
    rr.k = 5;
    for (uint32_t k = 0; k < 4; k++)
      st_send(&T[t], M3_FRAME_REQUEST, M3_METHOD_RETRIEVE, 100 + k, 0, &rr.base, NULL, 0);
    st_queries_free(rr.queries, 32);
    fcntl(T[t].fd, F_SETFL, fcntl(T[t].fd, F_GETFL) | O_NONBLOCK);
  }
  long long start = m3t_now_ms();
  int closed = 0;
  char sink[2048];
  while (m3t_now_ms() - start < 15000) {
    for (int t = 0; t < NT; t++) {
      if (T[t].fd < 0) continue;
      ssize_t n = recv(T[t].fd, sink, sizeof sink, 0);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
        st_conn_close(&T[t]);
        T[t].fd = -1;
        closed++;
      }
    }
    bystander_call();
    if (st_server_metric(&srv, "m3_slow_readers_closed_total") >= NT &&
        st_server_metric(&srv, "m3_connections") <= 1)
      break;
    m3t_sleep_ms(100);
  }
  double slow = st_server_metric(&srv, "m3_slow_readers_closed_total");
  double conns = st_server_metric(&srv, "m3_connections");
  fprintf(stderr, "# trickle: %g closed as slow, %d seen closed, %g connections, %lld ms\n", slow,
          closed, conns, m3t_now_ms() - start);
  if (slow < NT) fail_msg("m3_slow_readers_closed_total %g after 15 s, want %d", slow, NT);
  if (conns != 1) fail_msg("m3_connections %g after the trickle readers were closed, want 1", conns);
  for (int t = 0; t < NT; t++)
    if (T[t].fd >= 0) st_conn_close(&T[t]);
  long long end = m3t_now_ms() + 10000;
  while (st_server_metric(&srv, "m3_calls_in_flight") != 0) {
    if (m3t_now_ms() > end) fail_msg("m3_calls_in_flight stays above 0 after the trickle readers went");
    m3t_sleep_ms(20);
  }
  bystander_call();
  st_conn_close(&G);
  st_server_stop(&srv, 30000);
  m3t_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_trickle_readers)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
