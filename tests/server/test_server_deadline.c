/*
 * Deadlines and cancellation.
 *
 * The server runs with UV_THREADPOOL_SIZE=1, so that its one worker thread
 * can be kept busy on purpose: a few heavy Fetch calls (1024 memories, 43 MB
 * each) queued ahead make a later call wait in the pool, deterministically,
 * for far longer than 1 ms. Then:
 *  - a Fetch and a Retrieve with a 1 ms deadline get END DEADLINE_EXCEEDED
 *    and no memories, while the heavy calls ahead of them complete OK with
 *    every item;
 *  - CANCEL of a queued call gets END CANCELLED and no memories; CANCEL of a
 *    stream the server does not know is ignored (nothing comes back for it)
 *    and the connection goes on;
 *  - afterwards the server still serves, /metrics counts the
 *    DEADLINE_EXCEEDED and CANCELLED calls, and m3_calls_in_flight returns
 *    to 0: the calls that ended early released their slots once their work
 *    came back (under ASan, LeakSanitizer checks at exit that their buffers
 *    were freed too).
 */
#include <math.h>
#include <stdlib.h>

#include "srvtest.h"

#define COUNT 300
#define DIM 32
#define HEAVY 1024

static char *dir;
static char store[4200];
static st_server srv;

static int setup(void **state) {
  (void)state;
  dir = m3t_mkdtemp("deadline");
  snprintf(store, sizeof store, "%s/store", dir);
  st_gen_store(store, COUNT, DIM);
  static const char *const env[] = {"UV_THREADPOOL_SIZE=1", NULL};
  st_server_start(&srv, dir, store, NULL, env);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  st_server_stop(&srv, 30000);
  m3t_rmrf(dir);
  free(dir);
  return 0;
}

static uint64_t heavy_ids[HEAVY];

/* Send n heavy Fetch calls on streams first.. (no deadline). */
static void send_heavy(st_conn *c, uint32_t first, unsigned n) {
  for (unsigned i = 0; i < HEAVY; i++) heavy_ids[i] = i % COUNT;
  M3__FetchRequest req = M3__FETCH_REQUEST__INIT;
  req.ids = heavy_ids;
  req.n_ids = HEAVY;
  for (unsigned i = 0; i < n; i++) st_send(c, M3_FRAME_REQUEST, M3_METHOD_FETCH, first + i, 0, &req.base, NULL, 0);
}

static void check_heavy(const st_result *r) {
  ST_STATUS(*r, 0);
  ST_EQ_U64(r->n, HEAVY);
}

/* m3_calls_in_flight must come back to 0 (within a few seconds). */
static char *wait_idle_metrics(void) {
  long long end = m3t_now_ms() + 10000;
  for (;;) {
    char *body;
    int code = st_http_get(srv.http_port, "/metrics", &body);
    ST_EQ_U64(code, 200);
    int present;
    double v = st_metric(body, "m3_calls_in_flight", &present);
    if (!present) fail_msg("/metrics has no m3_calls_in_flight");
    if (v == 0) return body;
    if (m3t_now_ms() > end) fail_msg("m3_calls_in_flight is %g, want 0, 10 s after the calls ended", v);
    free(body);
    m3t_sleep_ms(20);
  }
}

static void test_deadline_exceeded(void **state) {
  (void)state;
  st_conn c;
  st_conn_open(&c, srv.rpc_port);
  st_hello_ok(&c, 1, NULL);
  /* Streams 10..13 heavy; 14 a small Fetch and 15 a Retrieve, both 1 ms. */
  send_heavy(&c, 10, 4);
  uint64_t ids[4] = {1, 2, 3, 4};
  M3__FetchRequest fr = M3__FETCH_REQUEST__INIT;
  fr.ids = ids;
  fr.n_ids = 4;
  st_send(&c, M3_FRAME_REQUEST, M3_METHOD_FETCH, 14, 1, &fr.base, NULL, 0);
  float q[4 * DIM];
  uint64_t seed = 5;
  for (int i = 0; i < 4; i++) m3t_rand_unit(&seed, q + i * DIM, DIM);
  M3__RetrieveRequest rr = M3__RETRIEVE_REQUEST__INIT;
  rr.queries = st_queries(q, 4, DIM);
  rr.n_queries = 4;
  rr.k = 5;
  st_send(&c, M3_FRAME_REQUEST, M3_METHOD_RETRIEVE, 15, 1, &rr.base, NULL, 0);
  uint16_t methods[6] = {M3_METHOD_FETCH, M3_METHOD_FETCH, M3_METHOD_FETCH, M3_METHOD_FETCH,
                         M3_METHOD_FETCH, M3_METHOD_RETRIEVE};
  st_result r[6];
  st_collect(&c, 10, 6, methods, r, 60000, NULL);
  for (int i = 0; i < 4; i++) check_heavy(&r[i]);
  ST_STATUS(r[4], M3__STATUS_CODE__DEADLINE_EXCEEDED);
  ST_EQ_U64(r[4].n, 0);
  ST_STATUS(r[5], M3__STATUS_CODE__DEADLINE_EXCEEDED);
  ST_EQ_U64(r[5].n, 0);
  for (int i = 0; i < 6; i++) st_result_free(&r[i]);

  /* The same connection and stream ids still work. */
  st_result ok;
  st_call(&c, M3_METHOD_RETRIEVE, 14, 5000, &rr.base, NULL, 0, &ok);
  ST_STATUS(ok, 0);
  ST_EQ_U64(ok.n, 20);
  st_result_free(&ok);
  st_queries_free(rr.queries, 4);

  char *m = wait_idle_metrics();
  double fetch_dl = st_metric(m, "m3_calls_total{method=\"Fetch\",status=\"DEADLINE_EXCEEDED\"}", NULL);
  double retr_dl = st_metric(m, "m3_calls_total{method=\"Retrieve\",status=\"DEADLINE_EXCEEDED\"}", NULL);
  if (fetch_dl != 1 || retr_dl != 1)
    fail_msg("/metrics DEADLINE_EXCEEDED: Fetch %g, Retrieve %g; want 1 and 1", fetch_dl, retr_dl);
  free(m);
  st_conn_close(&c);
}

static void test_cancel(void **state) {
  (void)state;
  st_conn c;
  st_conn_open(&c, srv.rpc_port);
  st_hello_ok(&c, 1, NULL);
  /* 20..22 heavy, 23 a small Fetch cancelled while it waits for the pool,
   * then a CANCEL of stream 999 that never existed. */
  send_heavy(&c, 20, 3);
  uint64_t ids[4] = {1, 2, 3, 4};
  M3__FetchRequest fr = M3__FETCH_REQUEST__INIT;
  fr.ids = ids;
  fr.n_ids = 4;
  st_send(&c, M3_FRAME_REQUEST, M3_METHOD_FETCH, 23, 0, &fr.base, NULL, 0);
  st_send(&c, M3_FRAME_CANCEL, 0, 23, 0, NULL, NULL, 0);
  st_send(&c, M3_FRAME_CANCEL, 0, 999, 0, NULL, NULL, 0);
  st_send(&c, M3_FRAME_CANCEL, M3_METHOD_FETCH, 12345, 0, NULL, NULL, 0);
  /* A call after them: st_collect fails on any frame for 999 or 12345. */
  st_send(&c, M3_FRAME_REQUEST, M3_METHOD_FETCH, 24, 0, &fr.base, NULL, 0);
  uint16_t methods[5] = {M3_METHOD_FETCH, M3_METHOD_FETCH, M3_METHOD_FETCH, M3_METHOD_FETCH,
                         M3_METHOD_FETCH};
  st_result r[5];
  st_collect(&c, 20, 5, methods, r, 60000, NULL);
  for (int i = 0; i < 3; i++) check_heavy(&r[i]);
  ST_STATUS(r[3], M3__STATUS_CODE__CANCELLED);
  ST_EQ_U64(r[3].n, 0);
  ST_STATUS(r[4], 0);
  ST_EQ_U64(r[4].n, 4);
  for (int i = 0; i < 5; i++) st_result_free(&r[i]);

  /* CANCEL of a call that already ended: ignored, the connection goes on. */
  st_send(&c, M3_FRAME_CANCEL, 0, 24, 0, NULL, NULL, 0);
  st_result again;
  st_call(&c, M3_METHOD_FETCH, 25, 0, &fr.base, NULL, 0, &again);
  ST_STATUS(again, 0);
  st_result_free(&again);

  char *m = wait_idle_metrics();
  double cancelled = st_metric(m, "m3_calls_total{method=\"Fetch\",status=\"CANCELLED\"}", NULL);
  if (cancelled != 1) fail_msg("/metrics Fetch CANCELLED %g, want 1", cancelled);
  free(m);
  st_conn_close(&c);
}

/* A connection closed with calls in flight: the server drops them and frees
 * their slots; others are unaffected. */
static void test_close_with_calls_in_flight(void **state) {
  (void)state;
  st_conn c;
  st_conn_open(&c, srv.rpc_port);
  st_hello_ok(&c, 1, NULL);
  send_heavy(&c, 30, 3);
  st_frame fr;
  if (st_recv(&c, &fr, 30000) != 1) fail_msg("no first frame of the heavy calls");
  st_frame_free(&fr);
  st_conn_close(&c);
  char *m = wait_idle_metrics();
  free(m);
  st_conn d;
  st_conn_open(&d, srv.rpc_port);
  st_hello_ok(&d, 1, NULL);
  st_conn_close(&d);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_deadline_exceeded),
      cmocka_unit_test(test_cancel),
      cmocka_unit_test(test_close_with_calls_in_flight),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
