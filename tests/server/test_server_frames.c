/*
 * Robustness against bad frames and bad messages.
 *
 * One m3-server (--max-frame-mb 1, --handshake-timeout-ms 600) and a
 * well-behaved client G that makes a Search after every case: the server
 * must keep serving everyone else whatever one connection sends.
 *  - a truncated frame (header only, or header and half a message): no
 *    answer, the connection stays open until the idle timeout closes it
 *    (shown on a second server with --idle-timeout-ms 1000);
 *  - a frame whose length passes --max-frame-mb: END RESOURCE_EXHAUSTED for
 *    its stream, then the connection is closed;
 *  - garbage: bad magic, a bad header CRC, an unknown protocol version, an
 *    unknown method or frame type: the connection is closed (GOAWAY first);
 *  - frames only a server sends (RESPONSE, END, GOAWAY) sent by the client:
 *    END INVALID_ARGUMENT, the connection goes on;
 *  - a second REQUEST on a stream id with a call in flight: END
 *    INVALID_ARGUMENT for it, the call in flight completes, the connection
 *    goes on;
 *  - a malformed protobuf message: END INVALID_ARGUMENT, the next call on
 *    the same connection works; an attachment on a method that takes none:
 *    INVALID_ARGUMENT;
 *  - a valid request sent one byte per write: reassembled, answered;
 *  - a connection that never sends Hello is closed after
 *    --handshake-timeout-ms, also when it trickles bytes of a Hello or sends
 *    calls other than Hello (the deadline counts from the accept).
 */
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "m3/crc32c.h"
#include "srvtest.h"

#define COUNT 300
#define DIM 32

static char *dir;
static st_server srv;
static st_conn G;
static uint32_t gsid = 2;
static float q[DIM];

static int setup(void **state) {
  (void)state;
  dir = m3t_mkdtemp("frames");
  char store[4200];
  snprintf(store, sizeof store, "%s/store", dir);
  st_gen_store(store, COUNT, DIM);
  const char *args[] = {"--max-frame-mb", "1", "--handshake-timeout-ms", "600", NULL};
  st_server_start(&srv, dir, store, args, NULL);
  st_conn_open(&G, srv.rpc_port);
  st_hello_ok(&G, 1, NULL);
  uint64_t seed = 11;
  m3t_rand_unit(&seed, q, DIM);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  st_conn_close(&G);
  st_server_stop(&srv, 30000);
  m3t_rmrf(dir);
  free(dir);
  return 0;
}

/* The bystander still gets answers. */
static void bystander_ok(void) {
  if (!st_server_alive(&srv)) fail_msg("m3-server died");
  M3__SearchResponse *s = st_search_ok(&G, gsid++, q, 1, DIM, 5);
  ST_EQ_U64(s->results[0]->n_ids, 5);
  m3__search_response__free_unpacked(s, NULL);
}

static void hello_conn(st_conn *c) {
  st_conn_open(c, srv.rpc_port);
  st_hello_ok(c, 1, NULL);
}

/* A Search request frame for stream (malloc'ed). */
static uint8_t *search_frame(uint32_t stream, size_t *len) {
  M3__SearchRequest req = M3__SEARCH_REQUEST__INIT;
  req.queries = st_queries(q, 1, DIM);
  req.n_queries = 1;
  req.k = 5;
  uint8_t *p = st_frame_build(M3_FRAME_REQUEST, M3_METHOD_SEARCH, stream, 0, &req.base, NULL, 0, len);
  st_queries_free(req.queries, 1);
  return p;
}

/*
 * A truncated frame is never answered (there is no call yet), and the server
 * does not wait on it forever: the connection holds no call, so the idle
 * timeout (--idle-timeout-ms, conn.c on_idle) closes it. A second server
 * with a short idle timeout shows the close; the main one keeps serving G.
 */
#define IDLE_MS 1000

static void test_truncated(void **state) {
  (void)state;
  char store[4200];
  snprintf(store, sizeof store, "%s/store-idle", dir);
  st_gen_store(store, 20, DIM);
  const char *args[] = {"--idle-timeout-ms", "1000", NULL};
  st_server idle;
  st_server_start(&idle, dir, store, args, NULL);
  size_t len;
  uint8_t *f = search_frame(5, &len);
  size_t cuts[] = {10, M3_FRAME_HEADER_SIZE, M3_FRAME_HEADER_SIZE + 20, len - 1};
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
    for (int which = 0; which < 2; which++) {
      st_conn c;
      st_conn_open(&c, which ? idle.rpc_port : srv.rpc_port);
      st_hello_ok(&c, 1, NULL);
      st_send_bytes(&c, f, cuts[i]);
      long long sent = m3t_now_ms();
      st_frame fr;
      /* No answer and no close well before the idle timeout. */
      int got = st_recv(&c, &fr, IDLE_MS / 2);
      if (got == 1)
        fail_msg("%zu of %zu bytes of a frame: answered with type %u stream %u, want no answer", cuts[i], len,
                 fr.f.type, fr.f.stream);
      if (got == 0)
        fail_msg("%zu of %zu bytes of a frame: closed after %lld ms, want open until the idle timeout",
                 cuts[i], len, m3t_now_ms() - sent);
      if (which) {
        /* Closed by the idle timer: after IDLE_MS, within a tick (IDLE_MS) plus
         * slack for a loaded machine. */
        if (!st_wait_closed(&c, 10000, NULL))
          fail_msg("%zu of %zu bytes of a frame: still open 10 s after the last byte (--idle-timeout-ms %d)",
                   cuts[i], len, IDLE_MS);
        long long took = m3t_now_ms() - sent;
        if (took < IDLE_MS - 50)
          fail_msg("%zu of %zu bytes of a frame: closed after %lld ms, before --idle-timeout-ms %d", cuts[i],
                   len, took, IDLE_MS);
        if (!st_server_alive(&idle)) fail_msg("the idle-timeout m3-server died");
      }
      st_conn_close(&c);
      bystander_ok();
    }
  }
  free(f);
  /* The server with the short idle timeout still serves a fresh connection. */
  st_conn c;
  st_conn_open(&c, idle.rpc_port);
  st_hello_ok(&c, 1, NULL);
  M3__SearchResponse *s = st_search_ok(&c, 3, q, 1, DIM, 5);
  ST_EQ_U64(s->results[0]->n_ids, 5);
  m3__search_response__free_unpacked(s, NULL);
  st_conn_close(&c);
  st_server_stop(&idle, 30000);
}

static void test_oversized(void **state) {
  (void)state;
  st_conn c;
  hello_conn(&c);
  /* msg_len 2 MiB > --max-frame-mb 1; only the header is sent. */
  uint8_t h[M3_FRAME_HEADER_SIZE];
  m3_frame f = {M3_FRAME_REQUEST, 0, M3_METHOD_SEARCH, 77, 2u << 20, 0, 0};
  m3_frame_encode(h, &f);
  st_send_bytes(&c, h, sizeof h);
  st_frame fr;
  int got = st_recv(&c, &fr, 10000);
  if (got != 1) fail_msg("oversized frame: no answer (%d), want END RESOURCE_EXHAUSTED", got);
  if (fr.f.type != M3_FRAME_END || fr.f.stream != 77 || fr.f.arg != M3__STATUS_CODE__RESOURCE_EXHAUSTED)
    fail_msg("oversized frame: type %u stream %u arg %s, want END on 77 RESOURCE_EXHAUSTED", fr.f.type,
             fr.f.stream, m3_status_name((int)fr.f.arg));
  st_frame_free(&fr);
  if (!st_wait_closed(&c, 10000, NULL)) fail_msg("oversized frame: the connection stays open");
  st_conn_close(&c);
  bystander_ok();

  /* The limit counts the attachment too: a Put whose attachment passes it. */
  hello_conn(&c);
  f = (m3_frame){M3_FRAME_REQUEST, 0, M3_METHOD_PUT, 78, 4, (1u << 20), 0};
  m3_frame_encode(h, &f);
  st_send_bytes(&c, h, sizeof h);
  got = st_recv(&c, &fr, 10000);
  if (got != 1 || fr.f.type != M3_FRAME_END || fr.f.arg != M3__STATUS_CODE__RESOURCE_EXHAUSTED)
    fail_msg("oversized attachment: got %d type %u arg %u, want END RESOURCE_EXHAUSTED", got,
             got == 1 ? fr.f.type : 0, got == 1 ? fr.f.arg : 0);
  st_frame_free(&fr);
  if (!st_wait_closed(&c, 10000, NULL)) fail_msg("oversized attachment: the connection stays open");
  st_conn_close(&c);

  /* Just under the limit is fine (a malformed message, answered, not closed). */
  hello_conn(&c);
  size_t n = (1u << 20) - M3_FRAME_HEADER_SIZE;
  uint8_t *big = calloc(1, M3_FRAME_HEADER_SIZE + n);
  f = (m3_frame){M3_FRAME_REQUEST, 0, M3_METHOD_SEARCH, 79, (uint32_t)n, 0, 0};
  m3_frame_encode(big, &f);
  memset(big + M3_FRAME_HEADER_SIZE, 0xff, n);
  st_send_bytes(&c, big, M3_FRAME_HEADER_SIZE + n);
  free(big);
  uint16_t m = M3_METHOD_SEARCH;
  st_result r;
  st_collect(&c, 79, 1, &m, &r, 10000, NULL);
  ST_STATUS(r, M3__STATUS_CODE__INVALID_ARGUMENT);
  st_result_free(&r);
  bystander_ok();
  st_conn_close(&c);
}

/* Send bytes on a fresh (Hello'd) connection; the server must close it. */
static void expect_closed(const uint8_t *bytes, size_t n, const char *what) {
  st_conn c;
  hello_conn(&c);
  st_send_bytes(&c, bytes, n);
  int goaways = 0;
  if (!st_wait_closed(&c, 10000, &goaways)) fail_msg("%s: the connection stays open", what);
  if (goaways != 1) fail_msg("%s: %d GOAWAY frames before the close, want 1", what, goaways);
  st_conn_close(&c);
  bystander_ok();
}

static void test_garbage(void **state) {
  (void)state;
  uint8_t junk[64];
  for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)(i * 37 + 5);
  expect_closed(junk, sizeof junk, "garbage bytes");
  size_t len;
  uint8_t *f = search_frame(3, &len);
  f[0] = 'X';
  expect_closed(f, len, "bad magic");
  free(f);
  f = search_frame(3, &len);
  f[28] ^= 1;
  expect_closed(f, len, "bad header CRC");
  free(f);
  f = search_frame(3, &len);
  f[12] ^= 1; /* msg_len changed, CRC not updated */
  expect_closed(f, len, "header field changed after its CRC");
  free(f);
  /* Well-formed headers the protocol does not know. */
  struct {
    uint8_t version, type;
    uint16_t method, flags;
    const char *what;
  } bad[] = {{2, M3_FRAME_REQUEST, M3_METHOD_SEARCH, 0, "protocol version 2"},
             {1, 9, M3_METHOD_SEARCH, 0, "frame type 9"},
             {1, M3_FRAME_REQUEST, 200, 0, "method 200"},
             {1, M3_FRAME_REQUEST, 0, 0, "method 0"},
             {1, M3_FRAME_REQUEST, M3_METHOD_SEARCH, 0x80, "unknown flags"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint8_t h[M3_FRAME_HEADER_SIZE];
    m3_frame fh = {bad[i].type, bad[i].flags, bad[i].method, 4, 0, 0, 0};
    m3_frame_encode(h, &fh);
    h[2] = bad[i].version;
    uint32_t crc = m3_crc32c(0, h, 28);
    for (int k = 0; k < 4; k++) h[28 + k] = (uint8_t)(crc >> (8 * k));
    expect_closed(h, sizeof h, bad[i].what);
  }
}

static void test_server_frames_from_client(void **state) {
  (void)state;
  st_conn c;
  hello_conn(&c);
  M3__SearchResponse sresp = M3__SEARCH_RESPONSE__INIT;
  M3__Status st = M3__STATUS__INIT;
  struct {
    uint8_t type;
    uint16_t method;
    const ProtobufCMessage *msg;
  } cases[] = {{M3_FRAME_RESPONSE, M3_METHOD_SEARCH, &sresp.base},
               {M3_FRAME_END, M3_METHOD_SEARCH, &st.base},
               {M3_FRAME_END, 0, NULL},
               {M3_FRAME_GOAWAY, 0, &st.base}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint32_t stream = 40 + (uint32_t)i;
    st_send(&c, cases[i].type, cases[i].method, stream, 0, cases[i].msg, NULL, 0);
    st_frame fr;
    if (st_recv(&c, &fr, 10000) != 1)
      fail_msg("a frame of type %u from the client: no answer, want END INVALID_ARGUMENT", cases[i].type);
    if (fr.f.type != M3_FRAME_END || fr.f.stream != stream || fr.f.arg != M3__STATUS_CODE__INVALID_ARGUMENT)
      fail_msg("a frame of type %u from the client: got type %u stream %u arg %s, want END on %u INVALID_ARGUMENT",
               cases[i].type, fr.f.type, fr.f.stream, m3_status_name((int)fr.f.arg), stream);
    st_frame_free(&fr);
  }
  /* The connection goes on. */
  M3__SearchResponse *s = st_search_ok(&c, 50, q, 1, DIM, 5);
  m3__search_response__free_unpacked(s, NULL);
  st_conn_close(&c);
  bystander_ok();
}

static void test_duplicate_stream(void **state) {
  (void)state;
  st_conn c;
  hello_conn(&c);
  /* A Retrieve (32 x 5) and, in the same write, a Search on its stream id. */
  float qs[32 * DIM];
  uint64_t seed = 12;
  for (int i = 0; i < 32; i++) m3t_rand_unit(&seed, qs + i * DIM, DIM);
  M3__RetrieveRequest rr = M3__RETRIEVE_REQUEST__INIT;
  rr.queries = st_queries(qs, 32, DIM);
  rr.n_queries = 32;
  rr.k = 5;
  size_t l1, l2;
  uint8_t *f1 = st_frame_build(M3_FRAME_REQUEST, M3_METHOD_RETRIEVE, 60, 0, &rr.base, NULL, 0, &l1);
  uint8_t *f2 = search_frame(60, &l2);
  uint8_t *both = malloc(l1 + l2);
  memcpy(both, f1, l1);
  memcpy(both + l1, f2, l2);
  st_send_bytes(&c, both, l1 + l2);
  free(f1);
  free(f2);
  free(both);
  st_queries_free(rr.queries, 32);
  /* The reuse is a protocol error: GOAWAY INVALID_ARGUMENT naming the
   * stream, then the connection closes (the Retrieve is dropped). */
  int goaway = 0;
  for (;;) {
    st_frame fr;
    int r = st_recv(&c, &fr, 10000);
    if (r == 0) break;
    if (r < 0) fail_msg("duplicate stream: no GOAWAY and no close within 10 s");
    if (fr.f.type == M3_FRAME_GOAWAY) {
      if (fr.f.arg != M3__STATUS_CODE__INVALID_ARGUMENT)
        fail_msg("duplicate stream: GOAWAY with %s", m3_status_name((int)fr.f.arg));
      M3__Status *st = m3__status__unpack(NULL, fr.f.msg_len, fr.data);
      if (st == NULL || st->message == NULL || strstr(st->message, "stream 60 reused") == NULL)
        fail_msg("duplicate stream: GOAWAY message '%s'", st && st->message ? st->message : "");
      m3__status__free_unpacked(st, NULL);
      goaway++;
    } else if (fr.f.stream != 60 || fr.f.type == M3_FRAME_REQUEST || fr.f.type == M3_FRAME_CANCEL) {
      fail_msg("duplicate stream: frame type %u for stream %u", fr.f.type, fr.f.stream);
    }
    st_frame_free(&fr);
  }
  ST_EQ_U64(goaway, 1);
  st_conn_close(&c);
  /* A new connection works, and so does everyone else's. */
  hello_conn(&c);
  M3__SearchResponse *s = st_search_ok(&c, 60, q, 1, DIM, 5);
  m3__search_response__free_unpacked(s, NULL);
  st_conn_close(&c);
  bystander_ok();
}

static void test_malformed_protobuf(void **state) {
  (void)state;
  st_conn c;
  hello_conn(&c);
  /* Field 1 (queries) as a length-delimited run that overruns the message;
   * a varint that never ends; a wire type that does not exist. */
  static const uint8_t bad1[] = {0x0a, 0x7f, 0x01, 0x02};
  static const uint8_t bad2[] = {0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  static const uint8_t bad3[] = {0x0f, 0x00};
  const uint8_t *bad[] = {bad1, bad2, bad3};
  size_t badlen[] = {sizeof bad1, sizeof bad2, sizeof bad3};
  for (int i = 0; i < 3; i++) {
    uint8_t h[M3_FRAME_HEADER_SIZE];
    m3_frame f = {M3_FRAME_REQUEST, 0, M3_METHOD_SEARCH, 70 + (uint32_t)i, (uint32_t)badlen[i], 0, 0};
    m3_frame_encode(h, &f);
    st_send_bytes(&c, h, sizeof h);
    st_send_bytes(&c, bad[i], badlen[i]);
    uint16_t m = M3_METHOD_SEARCH;
    st_result r;
    st_collect(&c, 70 + (uint32_t)i, 1, &m, &r, 10000, NULL);
    ST_STATUS(r, M3__STATUS_CODE__INVALID_ARGUMENT);
    st_result_free(&r);
    /* The next call on the same connection works. */
    M3__SearchResponse *s = st_search_ok(&c, 80 + (uint32_t)i, q, 1, DIM, 5);
    m3__search_response__free_unpacked(s, NULL);
  }
  /* An attachment on a method that takes none. */
  M3__HealthRequest hq = M3__HEALTH_REQUEST__INIT;
  st_result r;
  st_call(&c, M3_METHOD_HEALTH, 90, 0, &hq.base, "abc", 3, &r);
  ST_STATUS(r, M3__STATUS_CODE__INVALID_ARGUMENT);
  st_result_free(&r);
  st_call(&c, M3_METHOD_HEALTH, 91, 0, &hq.base, NULL, 0, &r);
  ST_STATUS(r, 0);
  st_result_free(&r);
  st_conn_close(&c);
  bystander_ok();
}

static void test_byte_by_byte(void **state) {
  (void)state;
  st_conn c;
  hello_conn(&c);
  size_t len;
  uint8_t *f = search_frame(33, &len);
  for (size_t i = 0; i < len; i++) {
    st_send_bytes(&c, f + i, 1);
    if (i % 16 == 0) m3t_sleep_ms(1);
  }
  free(f);
  uint16_t m = M3_METHOD_SEARCH;
  st_result r;
  st_collect(&c, 33, 1, &m, &r, 10000, NULL);
  ST_STATUS(r, 0);
  st_result_free(&r);
  st_conn_close(&c);
}

static void test_handshake_timeout(void **state) {
  (void)state;
  st_conn c;
  st_conn_open(&c, srv.rpc_port);
  long long t0 = m3t_now_ms();
  if (!st_wait_closed(&c, 10000, NULL)) fail_msg("a connection without Hello is still open after 10 s (--handshake-timeout-ms 600)");
  long long took = m3t_now_ms() - t0;
  if (took < 500 || took > 3000) fail_msg("closed after %lld ms, want about 600 (500..3000)", took);
  st_conn_close(&c);
  /* Bytes that are not a whole Hello do not reset the clock forever. */
  st_conn_open(&c, srv.rpc_port);
  t0 = m3t_now_ms();
  uint8_t partial[8] = {'M', '3', 1, 1, 0, 0, 1, 0};
  st_send_bytes(&c, partial, sizeof partial);
  if (!st_wait_closed(&c, 10000, NULL)) fail_msg("a connection with a partial Hello is still open after 10 s");
  st_conn_close(&c);
  /* Nor does a Hello trickled one byte every 100 ms (slowloris): the
   * handshake deadline counts from the accept, not from the last byte. */
  st_conn_open(&c, srv.rpc_port);
  t0 = m3t_now_ms();
  M3__HelloRequest h = M3__HELLO_REQUEST__INIT;
  h.protocol_version = M3_PROTOCOL_VERSION;
  size_t hlen;
  uint8_t *hf = st_frame_build(M3_FRAME_REQUEST, M3_METHOD_HELLO, 1, 0, &h.base, NULL, 0, &hlen);
  int closed = 0;
  for (size_t i = 0; i + 1 < hlen && !closed; i++) {
    if (send(c.fd, hf + i, 1, MSG_NOSIGNAL) != 1) closed = 1;
    struct pollfd pfd = {c.fd, POLLIN, 0};
    if (poll(&pfd, 1, 100) == 1) closed = st_wait_closed(&c, 100, NULL);
  }
  free(hf);
  if (!closed) closed = st_wait_closed(&c, 3000, NULL);
  took = m3t_now_ms() - t0;
  if (!closed || took > 3000)
    fail_msg("a Hello trickled a byte per 100 ms: %s after %lld ms, want closed within about 600 ms",
             closed ? "closed" : "still open", took);
  st_conn_close(&c);
  /* Calls that are not Hello do not count as a handshake either. */
  st_conn_open(&c, srv.rpc_port);
  t0 = m3t_now_ms();
  closed = 0;
  for (uint32_t i = 0; i < 30 && !closed; i++) {
    M3__HealthRequest hq = M3__HEALTH_REQUEST__INIT;
    st_send(&c, M3_FRAME_REQUEST, M3_METHOD_HEALTH, 100 + i, 0, &hq.base, NULL, 0);
    st_frame fr;
    int got = st_recv(&c, &fr, 1000);
    if (got == 1) {
      if (fr.f.type == M3_FRAME_END && fr.f.arg != M3__STATUS_CODE__UNAUTHENTICATED)
        fail_msg("Health before Hello: %s, want UNAUTHENTICATED", m3_status_name((int)fr.f.arg));
      st_frame_free(&fr);
    } else {
      closed = 1;
    }
    m3t_sleep_ms(100);
  }
  took = m3t_now_ms() - t0;
  if (!closed) closed = st_wait_closed(&c, 3000, NULL);
  if (!closed) fail_msg("a client that sends only refused calls is never closed (--handshake-timeout-ms 600)");
  st_conn_close(&c);
  bystander_ok();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_truncated),
      cmocka_unit_test(test_oversized),
      cmocka_unit_test(test_garbage),
      cmocka_unit_test(test_server_frames_from_client),
      cmocka_unit_test(test_duplicate_stream),
      cmocka_unit_test(test_malformed_protobuf),
      cmocka_unit_test(test_byte_by_byte),
      cmocka_unit_test(test_handshake_timeout),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
