/*
 * A client that never reads.
 *
 * m3-server with --idle-timeout-ms 3000. Client S says Hello, then sends
 * Retrieve calls (32 queries x top-5, 6.8 MB of memories each) as fast as
 * the socket takes them and never reads an answer. Meanwhile client G makes
 * a Retrieve call every 50 ms. The test asserts:
 *  - G's calls keep succeeding, each within 5 s;
 *  - the server stops reading S: S's sends stall (the socket buffers fill)
 *    after a bounded number of calls;
 *  - the server's RSS (VmRSS) stays under 500 MB all along;
 *  - the server closes S within --idle-timeout-ms (plus slack) of S's last
 *    progress: m3_connections falls back to 1, and S sees the close;
 *  - m3_calls_in_flight returns to 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "srvtest.h"

#define COUNT 300
#define DIM 32
#define RSS_LIMIT_KB (500L * 1024)

static st_server srv;
static st_conn G;
static uint32_t gsid = 2;
static float gq[32 * DIM];
static long rss_peak;

static void sample_rss(void) {
  long kb = st_server_rss_kb(&srv);
  if (kb > rss_peak) rss_peak = kb;
  if (kb > RSS_LIMIT_KB) fail_msg("server VmRSS %ld kB, over the limit of %ld kB", kb, RSS_LIMIT_KB);
}

static void bystander_call(void) {
  long long took = st_retrieve_ok(&G, gsid++, gq, 32, DIM, 5);
  if (took > 5000) fail_msg("a bystander's Retrieve took %lld ms while another client does not read", took);
}

static void test_never_reads(void **state) {
  (void)state;
  char *dir = m3t_mkdtemp("slowreader");
  char store[4200];
  snprintf(store, sizeof store, "%s/store", dir);
  st_gen_store(store, COUNT, DIM);
  const char *args[] = {"--idle-timeout-ms", "3000", NULL};
  st_server_start(&srv, dir, store, args, NULL);
  uint64_t seed = 21;
  for (int i = 0; i < 32; i++) m3t_rand_unit(&seed, gq + i * DIM, DIM);
  st_conn_open(&G, srv.rpc_port);
  st_hello_ok(&G, 1, NULL);

  st_conn S;
  st_conn_open(&S, srv.rpc_port);
  st_hello_ok(&S, 1, NULL);
  int rcv = 4096; /* keep S's receive buffer small: it is not read anyway */
  setsockopt(S.fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
  fcntl(S.fd, F_SETFL, fcntl(S.fd, F_GETFL) | O_NONBLOCK);
  float sq[32 * DIM];
  for (int i = 0; i < 32; i++) m3t_rand_unit(&seed, sq + i * DIM, DIM);
  M3__RetrieveRequest rr = M3__RETRIEVE_REQUEST__INIT;
  rr.queries = st_queries(sq, 32, DIM);
  rr.n_queries = 32;
  rr.k = 5;

  size_t calls = 0, off = 0, flen = 0;
  uint8_t *frame = NULL;
  long long last_progress = m3t_now_ms(), start = last_progress;
  int stalled = 0;
  while (m3t_now_ms() - start < 20000) {
    /* Push as much as S's socket takes. */
    for (int burst = 0; burst < 64; burst++) {
      if (frame == NULL) {
        frame = st_frame_build(M3_FRAME_REQUEST, M3_METHOD_RETRIEVE, 100 + (uint32_t)calls, 0, &rr.base, NULL, 0, &flen);
        off = 0;
      }
      ssize_t n = send(S.fd, frame + off, flen - off, MSG_NOSIGNAL);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (n < 0) { /* the server hung up on S */
        stalled = 2;
        break;
      }
      off += (size_t)n;
      last_progress = m3t_now_ms();
      if (off == flen) {
        free(frame);
        frame = NULL;
        calls++;
      }
    }
    if (stalled == 2) break;
    sample_rss();
    bystander_call();
    if (m3t_now_ms() - last_progress > 1000) stalled = 1;
    if (stalled && st_server_metric(&srv, "m3_connections") <= 1) break;
    m3t_sleep_ms(50);
  }
  free(frame);
  st_queries_free(rr.queries, 32);
  long long waited = m3t_now_ms() - last_progress;
  fprintf(stderr, "# slow reader: %zu calls sent, server RSS peak %ld kB, stalled %lld ms\n", calls,
          rss_peak, waited);
  if (!stalled) fail_msg("S sent %zu calls in 20 s without the server ever stopping to read it", calls);
  double conns = st_server_metric(&srv, "m3_connections");
  if (conns != 1)
    fail_msg("m3_connections %g %lld ms after S's last progress (--idle-timeout-ms 3000), want 1", conns, waited);
  if (waited > 3000 + 5000) fail_msg("S was closed %lld ms after its last progress, want < 8000", waited);
  /* S sees the close once it drains what the kernel held. */
  if (!st_wait_closed(&S, 10000, NULL)) fail_msg("S: no close seen");
  st_conn_close(&S);
  long long end = m3t_now_ms() + 10000;
  while (st_server_metric(&srv, "m3_calls_in_flight") != 0) {
    if (m3t_now_ms() > end) fail_msg("m3_calls_in_flight stays above 0 after S was closed");
    m3t_sleep_ms(20);
  }
  sample_rss();
  bystander_call();
  st_conn_close(&G);
  st_server_stop(&srv, 30000);
  m3t_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_never_reads)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
