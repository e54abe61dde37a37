/*
 * SIGTERM drain.
 *
 * m3-server (UV_THREADPOOL_SIZE=1, so that queued calls stay in flight) gets
 * four heavy Fetch calls (1024 memories each) on connection A, then SIGTERM
 * while they are in flight (A does not read its answers yet, so the drain
 * cannot finish before the checks below). Then:
 *  - connection B, opened before, gets GOAWAY (UNAVAILABLE), and a new call
 *    on it gets END UNAVAILABLE;
 *  - new connections to the RPC and HTTP ports are refused;
 *  - /readyz, on an HTTP connection accepted before the signal, answers 503
 *    and /metrics (another such connection) says m3_draining 1;
 *  - A then reads everything: each in-flight call ends OK with all its
 *    memories, GOAWAY arrives, and the server closes A;
 *  - the process exits 0 (under ASan: LeakSanitizer finds nothing), soon
 *    after the last answer was read, although an idle HTTP client is still
 *    connected.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "srvtest.h"

#define COUNT 300
#define DIM 32
#define HEAVY 1024
#define NHEAVY 4

static void http_partial(st_conn *h, int port, const char *path) {
  char req[256];
  st_conn_open(h, port);
  snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n", path); /* the blank line comes later */
  st_send_bytes(h, req, strlen(req));
}

/* Finish the request on h and read the answer: status code, body in *body. */
static int http_finish(st_conn *h, char **body) {
  st_send_bytes(h, "\r\n", 2);
  char buf[65536];
  size_t len = 0;
  long long end = m3t_now_ms() + 10000;
  for (;;) {
    ssize_t n = recv(h->fd, buf + len, sizeof buf - 1 - len, MSG_DONTWAIT);
    if (n > 0) len += (size_t)n;
    else if (n == 0) break;
    else if (errno != EAGAIN) break;
    else if (m3t_now_ms() > end) fail_msg("HTTP: no answer within 10 s");
    else m3t_sleep_ms(2);
  }
  buf[len] = '\0';
  int code = 0;
  if (sscanf(buf, "HTTP/1.1 %d", &code) != 1) fail_msg("HTTP: bad answer '%s'", buf);
  char *b = strstr(buf, "\r\n\r\n");
  *body = strdup(b ? b + 4 : "");
  st_conn_close(h);
  return code;
}

static void test_sigterm_drain(void **state) {
  (void)state;
  char *dir = m3t_mkdtemp("drain");
  char store[4200];
  snprintf(store, sizeof store, "%s/store", dir);
  st_gen_store(store, COUNT, DIM);
  static const char *const env[] = {"UV_THREADPOOL_SIZE=1", NULL};
  st_server srv;
  st_server_start(&srv, dir, store, NULL, env);

  st_conn a, b, hr, hm, hidle;
  st_conn_open(&a, srv.rpc_port);
  st_conn_open(&b, srv.rpc_port);
  st_hello_ok(&a, 1, NULL);
  st_hello_ok(&b, 1, NULL);
  http_partial(&hr, srv.http_port, "/readyz");
  http_partial(&hm, srv.http_port, "/metrics");
  st_conn_open(&hidle, srv.http_port);
  m3t_sleep_ms(100); /* let the server accept the HTTP connections */

  static uint64_t ids[HEAVY];
  for (unsigned i = 0; i < HEAVY; i++) ids[i] = (i * 7) % COUNT;
  M3__FetchRequest fr = M3__FETCH_REQUEST__INIT;
  fr.ids = ids;
  fr.n_ids = HEAVY;
  /* All four in one send, so that the server reads them together: it stops
   * reading A once A's unread answers pass the write high-water mark, and a
   * request still unread then would be refused by the drain. */
  size_t flen, all_len = 0;
  uint8_t *all = NULL;
  for (uint32_t i = 0; i < NHEAVY; i++) {
    uint8_t *one = st_frame_build(M3_FRAME_REQUEST, M3_METHOD_FETCH, 10 + i, 0, &fr.base, NULL, 0, &flen);
    all = realloc(all, all_len + flen);
    assert_non_null(all);
    memcpy(all + all_len, one, flen);
    all_len += flen;
    free(one);
  }
  st_send_bytes(&a, all, all_len);
  free(all);
  /* The calls are in flight once the first memory comes back. */
  st_frame first;
  if (st_recv(&a, &first, 30000) != 1) fail_msg("no answer to the heavy calls");
  if (first.f.type != M3_FRAME_RESPONSE || first.f.stream != 10)
    fail_msg("first frame: type %u stream %u, want a RESPONSE on stream 10", first.f.type, first.f.stream);

  kill(srv.pid, SIGTERM);

  /* B learns of the drain; new calls are refused. */
  st_frame g;
  if (st_recv(&b, &g, 10000) != 1) fail_msg("connection B: no GOAWAY within 10 s of SIGTERM");
  if (g.f.type != M3_FRAME_GOAWAY) fail_msg("connection B: frame type %u, want GOAWAY", g.f.type);
  ST_EQ_U64(g.f.arg, M3__STATUS_CODE__UNAVAILABLE);
  st_frame_free(&g);
  M3__HealthRequest hq = M3__HEALTH_REQUEST__INIT;
  st_result r;
  st_call(&b, M3_METHOD_HEALTH, 2, 0, &hq.base, NULL, 0, &r);
  ST_STATUS(r, M3__STATUS_CODE__UNAVAILABLE);
  st_result_free(&r);

  st_conn n;
  int rc = st_conn_try_open(&n, srv.rpc_port);
  if (rc != -ECONNREFUSED) fail_msg("a new RPC connection while draining: %s, want ECONNREFUSED", rc ? strerror(-rc) : "accepted");
  rc = st_conn_try_open(&n, srv.http_port);
  if (rc != -ECONNREFUSED) fail_msg("a new HTTP connection while draining: %s, want ECONNREFUSED", rc ? strerror(-rc) : "accepted");

  char *body;
  int code = http_finish(&hr, &body);
  if (code != 503) fail_msg("/readyz while draining: %d '%s', want 503", code, body);
  free(body);
  code = http_finish(&hm, &body);
  ST_EQ_U64(code, 200);
  double draining = st_metric(body, "m3_draining", NULL);
  if (draining != 1) fail_msg("m3_draining %g while draining, want 1", draining);
  free(body);
  if (!st_server_alive(&srv)) fail_msg("the server exited before its calls were read");

  /* A reads everything: every in-flight call completes OK. */
  uint16_t methods[NHEAVY];
  for (int i = 0; i < NHEAVY; i++) methods[i] = M3_METHOD_FETCH;
  st_result res[NHEAVY];
  int goaways = 0;
  st_collect(&a, 10, NHEAVY, methods, res, 30000, &goaways);
  long long t_read = m3t_now_ms();
  ST_EQ_U64(res[0].n + 1, HEAVY); /* the first item was read above */
  ST_STATUS(res[0], 0);
  for (int i = 1; i < NHEAVY; i++) {
    ST_STATUS(res[i], 0);
    ST_EQ_U64(res[i].n, HEAVY);
  }
  for (int i = 0; i < NHEAVY; i++) st_result_free(&res[i]);
  st_frame_free(&first);
  int more = 0;
  if (!st_wait_closed(&a, 15000, &more)) fail_msg("the server did not close connection A after the drain");
  if (goaways + more != 1) fail_msg("connection A got %d GOAWAY frames, want 1", goaways + more);

  st_server_expect_exit0(&srv, 15000); /* already exiting: no second SIGTERM */
  long long took = m3t_now_ms() - t_read;
  if (took > 5000) fail_msg("the server took %lld ms to exit after the drain, want < 5000", took);
  st_conn_close(&a);
  st_conn_close(&b);
  st_conn_close(&hidle);
  m3t_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_sigterm_drain)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
