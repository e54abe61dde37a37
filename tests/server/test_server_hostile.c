/*
 * Hostile clients against a real m3-server (issue 14's findings, one case
 * each), while a valid client is served within its deadline.
 *
 * One server (read and admin tokens, a short handshake timeout, a small
 * failed-Hello limit, search budget and batch cap, an HTTP connection cap)
 * and, for the start-up cases, servers spawned with bad options or stores:
 *  - before Hello, a frame header announcing more than a few KiB: END
 *    RESOURCE_EXHAUSTED at once, not a wait for the bytes;
 *  - after Hello, a request message larger than its method can need
 *    (Stats of 1000 bytes): RESOURCE_EXHAUSTED, the connection still serves;
 *    one announced at 48 MiB is refused from its header, before its bytes
 *    come (which are then skipped, not buffered);
 *  - a wrong token: UNAUTHENTICATED, and the connection is closed (a right
 *    Hello sent after it on that connection gets no answer);
 *  - a token file of 8 bytes: the server refuses to start, naming the file
 *    and the minimum;
 *  - failed Hellos from 127.0.0.2 past --auth-fail-limit: its next Hello,
 *    with the right token, is refused RESOURCE_EXHAUSTED; 127.0.0.1 is not;
 *  - queries with a NaN, an infinity or all zeros, batched with a good call
 *    (queued behind a running search): each bad call fails INVALID_ARGUMENT
 *    naming its query index, the good one succeeds;
 *  - Put of a NaN embedding, of one id twice, of id UINT64_MAX: refused, and
 *    nothing of them is in the store (Fetch NOT_FOUND); a restart works;
 *  - a store holding a NaN embedding (written with the store library): the
 *    server starts, leaves it out of the index and says so;
 *  - concurrent Put and Delete of the same ids on two connections (each Put
 *    paused between its store and index writes by the fault point
 *    admin.between): after them, each id is in the index (Search) exactly
 *    when it is in the store (Fetch);
 *  - the search budget: a call that would take the queued queries past
 *    --search-budget is refused RESOURCE_EXHAUSTED; --max-batch-queries
 *    splits queued calls into batches (m3_search_batches_total);
 *  - --max-frame-mb 4096 (and other out-of-range values): exit 2 naming the
 *    option;
 *  - more HTTP connections than --max-http-connections: the extra one is
 *    closed at once; /metrics answers once they go;
 *  - a Hello flood (wrong tokens from 127.0.0.3, a child process) and a
 *    slowloris on the RPC port and on the HTTP port, while the valid client
 *    (connected and authenticated before) gets every Search answered OK
 *    within its deadline.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "m3/store.h"
#include "srvtest.h"

#define COUNT 400
#define DIM 32
#define READ_TOKEN "reader-token-0123456789"
#define ADMIN_TOKEN "admin-token-0123456789"
#define DEADLINE_MS 2000

static char *dir;
static char store[4200], tokf[4300], admf[4300];
static char nostore[4300]; /* for servers that must refuse their options before opening a store */
static st_server srv;

static const char *const srv_args[] = {
    "--token-file", tokf, "--admin-token-file", admf, "--handshake-timeout-ms", "1500",
    "--auth-fail-limit", "5", "--max-http-connections", "8", "--search-budget", "100",
    "--max-queries", "64", "--max-batch-queries", "64", NULL};

static int setup(void **state) {
  (void)state;
  dir = m3t_mkdtemp("hostile");
  snprintf(store, sizeof store, "%s/store", dir);
  snprintf(tokf, sizeof tokf, "%s/token", dir);
  snprintf(nostore, sizeof nostore, "%s/no-store", dir);
  snprintf(admf, sizeof admf, "%s/admin-token", dir);
  st_gen_store(store, COUNT, DIM);
  free(m3t_write_file(dir, "token", READ_TOKEN));
  free(m3t_write_file(dir, "admin-token", ADMIN_TOKEN));
  st_raise_nofile(4096);
  st_server_start(&srv, dir, store, srv_args, NULL);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  st_server_stop(&srv, 30000);
  m3t_rmrf(dir);
  free(dir);
  return 0;
}

/* A connection to the server from source address src (127.0.0.0/8). */
static void conn_from(st_conn *c, const char *src, int port) {
  memset(c, 0, sizeof *c);
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(c->fd >= 0);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  inet_pton(AF_INET, src, &sa.sin_addr);
  if (bind(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0) fail_msg("bind %s: %s", src, strerror(errno));
  sa.sin_port = htons((uint16_t)port);
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0)
    fail_msg("connect from %s: %s", src, strerror(errno));
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* A connection from 127.0.0.1 after a Hello with the read token. */
static void open_reader(st_conn *c) {
  st_conn_open(c, srv.rpc_port);
  st_hello_ok(c, 1, READ_TOKEN);
}

/* The server's counter series must be at least least. */
static void expect_counted(const char *series, double least) {
  double v = st_server_metric(&srv, series);
  if (v < least) fail_msg("%s is %g, want at least %g", series, v, least);
}

static M3__SearchRequest search_req(M3__Query **qs, unsigned nq, unsigned k) {
  M3__SearchRequest r = M3__SEARCH_REQUEST__INIT;
  r.queries = qs;
  r.n_queries = nq;
  r.k = k;
  return r;
}

/* The valid client: one Search answered OK within DEADLINE_MS. */
static void valid_search(st_conn *c, uint32_t stream) {
  uint64_t seed = stream;
  float q[DIM];
  m3t_randvec(&seed, q, DIM);
  M3__Query **qs = st_queries(q, 1, DIM);
  M3__SearchRequest r = search_req(qs, 1, 5);
  int64_t t0 = m3t_now_ms();
  st_result res;
  st_call(c, M3_METHOD_SEARCH, stream, DEADLINE_MS, &r.base, NULL, 0, &res);
  int64_t took = m3t_now_ms() - t0;
  ST_STATUS(res, 0);
  if (took > DEADLINE_MS) fail_msg("valid Search took %lld ms, deadline %d", (long long)took, DEADLINE_MS);
  st_result_free(&res);
  st_queries_free(qs, 1);
}

/* ---- defect 2: Hello ---------------------------------------------------- */

static void test_prehello_frame_cap(void **state) {
  (void)state;
  st_conn c;
  st_conn_open(&c, srv.rpc_port);
  /* A Hello header announcing 1 MiB, and not one byte of it. */
  m3_frame f = {.type = M3_FRAME_REQUEST, .method = M3_METHOD_HELLO, .stream = 1, .msg_len = 1u << 20};
  uint8_t hdr[M3_FRAME_HEADER_SIZE];
  m3_frame_encode(hdr, &f);
  st_send_bytes(&c, hdr, sizeof hdr);
  st_frame fr;
  int got = st_recv(&c, &fr, 1000); /* the handshake timeout is 1500 */
  if (got != 1) fail_msg("no answer to a 1 MiB frame before Hello (%d): the server waits for it", got);
  ST_EQ_U64(fr.f.type, M3_FRAME_END);
  ST_EQ_U64(fr.f.arg, M3__STATUS_CODE__RESOURCE_EXHAUSTED);
  st_frame_free(&fr);
  if (!st_wait_closed(&c, 1000, NULL)) fail_msg("connection still open");
  st_conn_close(&c);
}

static void test_method_message_cap(void **state) {
  (void)state;
  st_conn c;
  open_reader(&c);
  /* Stats takes an empty message: 1000 bytes of unknown fields are refused
   * before protobuf-c unpacks them. */
  uint8_t junk[1000];
  junk[0] = 0x7a; /* field 15, length-delimited */
  junk[1] = 0xe5; /* 997 as a varint */
  junk[2] = 0x07;
  memset(junk + 3, 'x', sizeof junk - 3);
  m3_frame f = {.type = M3_FRAME_REQUEST, .method = M3_METHOD_STATS, .stream = 3, .msg_len = sizeof junk};
  uint8_t buf[M3_FRAME_HEADER_SIZE + sizeof junk];
  m3_frame_encode(buf, &f);
  memcpy(buf + M3_FRAME_HEADER_SIZE, junk, sizeof junk);
  st_send_bytes(&c, buf, sizeof buf);
  uint16_t m = M3_METHOD_STATS;
  st_result r;
  st_collect(&c, 3, 1, &m, &r, 5000, NULL);
  ST_STATUS(r, M3__STATUS_CODE__RESOURCE_EXHAUSTED);
  ST_CONTAINS(r.message, "at most");
  st_result_free(&r);
  valid_search(&c, 5); /* the connection still serves */
  st_conn_close(&c);
}

/* A request announced larger than its method can need is refused from its
 * header alone, before its bytes arrive: an authenticated client cannot
 * make the server buffer --max-frame-mb (64 MiB) per connection for a
 * message it refuses anyway. Its bytes, sent afterwards, are dropped as
 * they come and the connection goes on serving (framing intact). */
static void test_big_message_refused_at_header(void **state) {
  (void)state;
  st_conn c;
  open_reader(&c);
  long rss0 = st_server_rss_kb(&srv);
  enum { BIG = 48 << 20 };
  m3_frame f = {.type = M3_FRAME_REQUEST, .method = M3_METHOD_STATS, .stream = 3, .msg_len = BIG};
  uint8_t hdr[M3_FRAME_HEADER_SIZE];
  m3_frame_encode(hdr, &f);
  st_send_bytes(&c, hdr, sizeof hdr);
  uint16_t m = M3_METHOD_STATS;
  st_result r;
  /* only the header is sent: the answer must not wait for the 48 MiB */
  st_collect(&c, 3, 1, &m, &r, 3000, NULL);
  ST_STATUS(r, M3__STATUS_CODE__RESOURCE_EXHAUSTED);
  ST_CONTAINS(r.message, "at most");
  st_result_free(&r);
  uint8_t *junk = calloc(1, 1 << 20);
  assert_non_null(junk);
  for (int i = 0; i < BIG >> 20; i++) st_send_bytes(&c, junk, 1 << 20);
  free(junk);
  valid_search(&c, 5); /* the bytes were skipped, the framing holds */
  long rss1 = st_server_rss_kb(&srv);
  if (rss0 > 0 && rss1 > 0 && rss1 - rss0 > 32 * 1024)
    fail_msg("server RSS grew by %ld KiB for a refused 48 MiB message", rss1 - rss0);
  st_conn_close(&c);
}

static void test_wrong_token_closes(void **state) {
  (void)state;
  st_conn c;
  st_conn_open(&c, srv.rpc_port);
  int st = st_hello(&c, 1, "not-the-token-at-all", NULL);
  if (st != M3__STATUS_CODE__UNAUTHENTICATED) fail_msg("wrong token: %s", m3_status_name(st));
  /* Another try on the same connection gets no answer: it is closed. */
  M3__HelloRequest h = M3__HELLO_REQUEST__INIT;
  h.protocol_version = M3_PROTOCOL_VERSION;
  h.token = READ_TOKEN;
  st_send(&c, M3_FRAME_REQUEST, M3_METHOD_HELLO, 3, 0, &h.base, NULL, 0);
  st_frame fr;
  int got = st_recv(&c, &fr, 1000);
  if (got == 1) {
    st_frame_free(&fr);
    fail_msg("a Hello after a wrong token was answered: the connection stayed open");
  }
  st_conn_close(&c);
}

/* m3-server with argv must exit 2 with stderr containing want and also. */
static void expect_exit2(const char *const *argv, const char *name, const char *want, const char *also) {
  char log[512];
  if ((size_t)snprintf(log, sizeof log, "%s/%s.log", dir, name) >= sizeof log) fail_msg("path too long");
  char *out = st_spawn_expect_exit2(argv, log, name);
  ST_CONTAINS(out, want);
  if (also) ST_CONTAINS(out, also);
  free(out);
}

static void test_short_token_refused(void **state) {
  (void)state;
  char *shortf = m3t_write_file(dir, "short-token", "secret12");
  const char *argv[] = {"m3-server", "--store", nostore, "--listen", "127.0.0.1:0", "--http", "off",
                        "--token-file", shortf, NULL};
  expect_exit2(argv, "short-token", shortf, "at least 16");
  const char *argv2[] = {"m3-server", "--store", nostore, "--listen", "127.0.0.1:0", "--http", "off",
                         "--admin-token-file", shortf, NULL};
  expect_exit2(argv2, "short-admin-token", shortf, "at least 16");
  free(shortf);
}

static void test_failed_hello_limit(void **state) {
  (void)state;
  for (int i = 0; i < 5; i++) {
    st_conn c;
    conn_from(&c, "127.0.0.2", srv.rpc_port);
    int st = st_hello(&c, 1, "guess-guess-guess-guess", NULL);
    if (st != M3__STATUS_CODE__UNAUTHENTICATED) fail_msg("guess %d: %s", i, m3_status_name(st));
    st_conn_close(&c);
  }
  st_conn c;
  conn_from(&c, "127.0.0.2", srv.rpc_port);
  M3__HelloRequest h = M3__HELLO_REQUEST__INIT;
  h.protocol_version = M3_PROTOCOL_VERSION;
  h.token = READ_TOKEN; /* right, but the address is over its limit */
  st_result r;
  st_call(&c, M3_METHOD_HELLO, 1, 0, &h.base, NULL, 0, &r);
  ST_STATUS(r, M3__STATUS_CODE__RESOURCE_EXHAUSTED);
  ST_CONTAINS(r.message, "127.0.0.2");
  st_result_free(&r);
  st_conn_close(&c);
  st_conn ok;
  open_reader(&ok); /* another address is not limited */
  st_conn_close(&ok);
  expect_counted("m3_hello_rate_limited_total", 1);
}

/* ---- defect 3: queries checked per call --------------------------------- */

static void test_bad_queries_alone(void **state) {
  (void)state;
  st_conn c;
  open_reader(&c);
  uint64_t seed = 11;
  enum { BIG = 60 };
  float big[BIG * DIM], good[2 * DIM], nan_q[2 * DIM], inf_q[3 * DIM], zero_q[DIM];
  for (int i = 0; i < BIG; i++) m3t_randvec(&seed, big + i * DIM, DIM);
  m3t_randvec(&seed, good, DIM);
  m3t_randvec(&seed, good + DIM, DIM);
  memcpy(nan_q, good, sizeof nan_q);
  nan_q[DIM + 7] = NAN; /* query 1 */
  memcpy(inf_q, good, 2 * DIM * sizeof *inf_q);
  memcpy(inf_q + 2 * DIM, good, DIM * sizeof *inf_q);
  inf_q[2 * DIM + 3] = INFINITY; /* query 2 */
  memset(zero_q, 0, sizeof zero_q);
  M3__Query **qb = st_queries(big, BIG, DIM), **qg = st_queries(good, 2, DIM),
            **qn = st_queries(nan_q, 2, DIM), **qi = st_queries(inf_q, 3, DIM),
            **qz = st_queries(zero_q, 1, DIM);
  M3__SearchRequest rb = search_req(qb, BIG, 5), rg = search_req(qg, 2, 5), rn = search_req(qn, 2, 5),
                    ri = search_req(qi, 3, 5), rz = search_req(qz, 1, 5);
  /* One write: the first call's search runs while the others queue up and
   * make the next batch together. */
  const ProtobufCMessage *msgs[] = {&rb.base, &rn.base, &rg.base, &ri.base, &rz.base};
  uint8_t *all = NULL;
  size_t alen = 0;
  for (int i = 0; i < 5; i++) {
    size_t n;
    uint8_t *fb = st_frame_build(M3_FRAME_REQUEST, M3_METHOD_SEARCH, 10 + (uint32_t)i, 5000, msgs[i],
                                 NULL, 0, &n);
    all = realloc(all, alen + n);
    memcpy(all + alen, fb, n);
    alen += n;
    free(fb);
  }
  st_send_bytes(&c, all, alen);
  free(all);
  uint16_t ms[5] = {M3_METHOD_SEARCH, M3_METHOD_SEARCH, M3_METHOD_SEARCH, M3_METHOD_SEARCH,
                    M3_METHOD_SEARCH};
  st_result r[5];
  st_collect(&c, 10, 5, ms, r, 10000, NULL);
  ST_STATUS(r[0], 0);
  ST_STATUS(r[2], 0); /* batched with the bad ones, unaffected */
  ST_STATUS(r[1], M3__STATUS_CODE__INVALID_ARGUMENT);
  ST_CONTAINS(r[1].message, "query 1");
  ST_CONTAINS(r[1].message, "NaN");
  ST_STATUS(r[3], M3__STATUS_CODE__INVALID_ARGUMENT);
  ST_CONTAINS(r[3].message, "query 2");
  ST_STATUS(r[4], M3__STATUS_CODE__INVALID_ARGUMENT);
  ST_CONTAINS(r[4].message, "query 0");
  ST_CONTAINS(r[4].message, "zeros");
  ST_EQ_U64(((M3__SearchResponse *)r[2].resp)->n_results, 2);
  for (int i = 0; i < 5; i++) st_result_free(&r[i]);
  st_queries_free(qb, BIG);
  st_queries_free(qg, 2);
  st_queries_free(qn, 2);
  st_queries_free(qi, 3);
  st_queries_free(qz, 1);
  st_conn_close(&c);
}

/* ---- defect 6: the search budget and the batch cap ---------------------- */

/* Send the searches (nq[i] queries each, streams first..) in one write and
 * collect them into r. */
static void searches_at_once(st_conn *c, uint32_t first, const unsigned *nq, size_t n, st_result *r) {
  uint8_t *all = NULL;
  size_t alen = 0;
  uint64_t seed = first;
  uint16_t ms[8];
  for (size_t i = 0; i < n; i++) {
    float *q = malloc((size_t)nq[i] * DIM * sizeof *q);
    for (unsigned j = 0; j < nq[i]; j++) m3t_randvec(&seed, q + (size_t)j * DIM, DIM);
    M3__Query **qs = st_queries(q, nq[i], DIM);
    M3__SearchRequest req = search_req(qs, nq[i], 5);
    size_t len;
    uint8_t *fb = st_frame_build(M3_FRAME_REQUEST, M3_METHOD_SEARCH, first + (uint32_t)i, 5000,
                                 &req.base, NULL, 0, &len);
    all = realloc(all, alen + len);
    memcpy(all + alen, fb, len);
    alen += len;
    free(fb);
    st_queries_free(qs, nq[i]);
    free(q);
    ms[i] = M3_METHOD_SEARCH;
  }
  st_send_bytes(c, all, alen);
  free(all);
  st_collect(c, first, n, ms, r, 10000, NULL);
}

static void test_search_budget(void **state) {
  (void)state;
  st_conn c;
  open_reader(&c);
  /* Budget 100: 64 queued, 64 more would pass it. */
  unsigned over[2] = {64, 64};
  st_result r[3];
  searches_at_once(&c, 10, over, 2, r);
  ST_STATUS(r[0], 0);
  ST_STATUS(r[1], M3__STATUS_CODE__RESOURCE_EXHAUSTED);
  ST_CONTAINS(r[1].message, "search budget");
  st_result_free(&r[0]);
  st_result_free(&r[1]);
  expect_counted("m3_search_refused_total", 1);
  /* Batches of at most 64 queries: 20 runs alone, 40 and 40 queue up and
   * are searched one after the other, not together. */
  double b0 = st_server_metric(&srv, "m3_search_batches_total");
  unsigned split[3] = {20, 40, 40};
  searches_at_once(&c, 20, split, 3, r);
  for (int i = 0; i < 3; i++) {
    ST_STATUS(r[i], 0);
    st_result_free(&r[i]);
  }
  double b1 = st_server_metric(&srv, "m3_search_batches_total");
  ST_EQ_U64(b1 - b0, 3);
  ST_EQ_U64(st_server_metric(&srv, "m3_search_queries_held"), 0);
  st_conn_close(&c);
}

/* ---- defects 4 and 5: Put and Delete ------------------------------------ */

static m3_layout layout_of(st_conn *c) {
  M3__HelloResponse *h;
  if (st_hello(c, 1, ADMIN_TOKEN, &h) != 0) fail_msg("admin Hello refused");
  m3_layout l = st_layout_from_hello(h->layout);
  m3__hello_response__free_unpacked(h, NULL);
  return l;
}

/* Put's attachment: records for ids with embeddings embs back to back
 * (malloc'ed; *alen its size, sizes[i] each record's). */
static uint8_t *records(const m3_layout *l, const uint64_t *ids, float *const *embs, size_t n,
                        uint32_t *sizes, size_t *alen) {
  uint8_t *att = NULL;
  *alen = 0;
  for (size_t i = 0; i < n; i++) {
    size_t len;
    uint8_t *rec = st_make_record(l, ids[i], embs[i], "hostile", &len);
    att = realloc(att, *alen + len);
    memcpy(att + *alen, rec, len);
    *alen += len;
    sizes[i] = (uint32_t)len;
    free(rec);
  }
  return att;
}

static int put_records(st_conn *c, uint32_t stream, const m3_layout *l, const uint64_t *ids,
                       float *const *embs, size_t n, char *msg, size_t cap) {
  uint32_t sizes[16];
  size_t alen;
  uint8_t *att = records(l, ids, embs, n, sizes, &alen);
  M3__PutRequest p = M3__PUT_REQUEST__INIT;
  p.sizes = sizes;
  p.n_sizes = n;
  st_result r;
  st_call(c, M3_METHOD_PUT, stream, 10000, &p.base, att, alen, &r);
  free(att);
  int status = r.status;
  if (msg) snprintf(msg, cap, "%s", r.message);
  st_result_free(&r);
  return status;
}

/* Whether Fetch finds id (OK) or not (NOT_FOUND). */
static int fetch_has(st_conn *c, uint32_t stream, uint64_t id) {
  M3__FetchRequest f = M3__FETCH_REQUEST__INIT;
  f.ids = &id;
  f.n_ids = 1;
  st_result r;
  st_call(c, M3_METHOD_FETCH, stream, 10000, &f.base, NULL, 0, &r);
  int has = -1;
  if (r.n == 1) {
    M3__Memory *m = st_memory(&r.items[0]);
    has = m->error == NULL || m->error[0] == '\0';
    m3__memory__free_unpacked(m, NULL);
  } else if (r.status == M3__STATUS_CODE__NOT_FOUND) {
    has = 0;
  }
  if (has < 0) fail_msg("Fetch %llu: status %s, %zu items", (unsigned long long)id, m3_status_name(r.status), r.n);
  st_result_free(&r);
  return has;
}

/* Whether the index returns id first for its own embedding. */
static int index_has(st_conn *c, uint32_t stream, uint64_t id, const float *emb) {
  M3__SearchResponse *sr = st_search_ok(c, stream, emb, 1, DIM, 1);
  int has = sr->results[0]->n_ids == 1 && sr->results[0]->ids[0] == id &&
            sr->results[0]->scores[0] > 0.9999f;
  m3__search_response__free_unpacked(sr, NULL);
  return has;
}

static void test_put_validated_before_commit(void **state) {
  (void)state;
  st_conn c;
  st_conn_open(&c, srv.rpc_port);
  m3_layout l = layout_of(&c);
  uint64_t seed = 77;
  float e1[DIM], e2[DIM];
  m3t_randvec(&seed, e1, DIM);
  m3t_randvec(&seed, e2, DIM);
  char msg[512];
  float bad[DIM];
  memcpy(bad, e1, sizeof bad);
  bad[5] = NAN;
  uint64_t id_nan[2] = {900001, 900002};
  float *emb_nan[2] = {e1, bad};
  ST_EQ_U64(put_records(&c, 2, &l, id_nan, emb_nan, 2, msg, sizeof msg), M3__STATUS_CODE__INVALID_ARGUMENT);
  ST_CONTAINS(msg, "item 1");
  uint64_t id_twice[2] = {900003, 900003};
  float *emb_twice[2] = {e1, e2};
  ST_EQ_U64(put_records(&c, 3, &l, id_twice, emb_twice, 2, msg, sizeof msg), M3__STATUS_CODE__INVALID_ARGUMENT);
  ST_CONTAINS(msg, "twice");
  uint64_t id_max[1] = {UINT64_MAX};
  float *emb_max[1] = {e2};
  int st = put_records(&c, 4, &l, id_max, emb_max, 1, msg, sizeof msg);
  if (st == 0) fail_msg("Put of id UINT64_MAX succeeded");
  /* Nothing of the refused batches became durable (Fetch refuses id
   * UINT64_MAX itself: the restart below is its check). */
  uint64_t gone[3] = {900001, 900002, 900003};
  for (int i = 0; i < 3; i++)
    if (fetch_has(&c, 10 + (uint32_t)i, gone[i]))
      fail_msg("chunk %llu of a refused Put is in the store", (unsigned long long)gone[i]);
  st_conn_close(&c);
  /* And the server starts again over that store (its index rebuilt). */
  st_server_stop(&srv, 30000);
  char idx[4300];
  snprintf(idx, sizeof idx, "%s/index", store);
  m3t_rmrf(idx);
  st_server_start(&srv, dir, store, srv_args, NULL);
}

static void test_rebuild_skips_bad_vectors(void **state) {
  (void)state;
  st_server_stop(&srv, 30000);
  m3_store *s;
  if (m3_store_open(store, NULL, &s) != 0) fail_msg("open %s: %s", store, m3_errmsg());
  const m3_layout *l = m3_store_layout(s);
  size_t npos = m3_spec_positions(&l->spec), ncode = m3_layout_codes_bytes(l);
  uint16_t *pos = calloc(npos, sizeof *pos);
  uint8_t *codes = calloc(1, ncode);
  float emb[DIM];
  for (int i = 0; i < DIM; i++) emb[i] = 1.0f;
  emb[9] = NAN;
  m3_record_in in = {.chunk_id = 910000, .chunk_len = 8, .positions = pos, .codes = codes,
                     .text = "nan", .text_len = 3, .embedding = emb};
  int rc = m3_store_put(s, &in, 1);
  free(pos);
  free(codes);
  m3_store_close(s);
  if (rc) fail_msg("m3_store_put of a NaN embedding: %s (the test needs such a store)", m3_errmsg());
  st_server_start(&srv, dir, store, srv_args, NULL); /* fails the test if it cannot start */
  char *log = st_server_log(&srv);
  ST_CONTAINS(log, "910000");
  ST_CONTAINS(log, "left out of the index");
  free(log);
  st_conn c;
  open_reader(&c);
  if (!fetch_has(&c, 2, 910000)) fail_msg("the skipped record is no longer fetchable");
  valid_search(&c, 3);
  st_conn_close(&c);
}

static void test_concurrent_put_delete(void **state) {
  (void)state;
  /* The fault point admin.between pauses each Put between its store write
   * and its index write: a Delete of the same ids fits in that window
   * every time unless the server serializes the two writers. */
  st_server_stop(&srv, 30000);
  const char *env[] = {"M3_FAULT=admin.between=EIO", NULL};
  st_server_start(&srv, dir, store, srv_args, env);
  st_conn a, b, r;
  st_conn_open(&a, srv.rpc_port);
  st_conn_open(&b, srv.rpc_port);
  st_conn_open(&r, srv.rpc_port);
  m3_layout l = layout_of(&a);
  layout_of(&b);
  st_hello_ok(&r, 1, READ_TOKEN);
  enum { N = 8, ROUNDS = 48, PIPE = 4 };
  uint64_t ids[N];
  float embs[N][DIM];
  float *ep[N];
  uint64_t seed = 4242;
  for (int i = 0; i < N; i++) {
    ids[i] = 920000 + (uint64_t)i;
    m3t_randvec(&seed, embs[i], DIM);
    ep[i] = embs[i];
  }
  /* Built once: the Put request and its attachment, the Delete request. */
  uint32_t sizes[N];
  size_t alen;
  uint8_t *att = records(&l, ids, ep, N, sizes, &alen);
  M3__PutRequest p = M3__PUT_REQUEST__INIT;
  p.sizes = sizes;
  p.n_sizes = N;
  M3__DeleteRequest d = M3__DELETE_REQUEST__INIT;
  d.ids = ids;
  d.n_ids = N;
  uint32_t stream = 10;
  uint16_t pm[PIPE], dm[PIPE];
  for (int i = 0; i < PIPE; i++) pm[i] = M3_METHOD_PUT, dm[i] = M3_METHOD_DELETE;
  for (int round = 0; round < ROUNDS / PIPE; round++) {
    for (int i = 0; i < PIPE; i++) {
      st_send(&a, M3_FRAME_REQUEST, M3_METHOD_PUT, stream + (uint32_t)i, 10000, &p.base, att, alen);
      st_send(&b, M3_FRAME_REQUEST, M3_METHOD_DELETE, stream + (uint32_t)i, 10000, &d.base, NULL, 0);
    }
    st_result ra[PIPE], rb[PIPE];
    st_collect(&a, stream, PIPE, pm, ra, 30000, NULL);
    st_collect(&b, stream, PIPE, dm, rb, 30000, NULL);
    for (int i = 0; i < PIPE; i++) {
      ST_STATUS(ra[i], 0);
      ST_STATUS(rb[i], 0);
      st_result_free(&ra[i]);
      st_result_free(&rb[i]);
    }
    stream += PIPE;
    /* Store and index agree on every id. */
    for (int i = 0; i < N; i++) {
      int in_store = fetch_has(&r, stream + 1000 + (uint32_t)i * 2, ids[i]);
      int in_index = index_has(&r, stream + 1001 + (uint32_t)i * 2, ids[i], embs[i]);
      if (in_store != in_index)
        fail_msg("round %d: chunk %llu is %s the store but %s the index", round,
                 (unsigned long long)ids[i], in_store ? "in" : "not in", in_index ? "in" : "not in");
    }
    stream += 2000;
  }
  free(att);
  st_conn_close(&a);
  st_conn_close(&b);
  st_conn_close(&r);
  st_server_stop(&srv, 30000);
  st_server_start(&srv, dir, store, srv_args, NULL);
}

/* ---- defect 11: options and the HTTP port -------------------------------- */

static void test_options_range_checked(void **state) {
  (void)state;
  const char *bad[][2] = {{"--max-frame-mb", "4096"}, {"--max-connections", "0"},
                          {"--max-k", "1000000"},     {"--idle-timeout-ms", "99999999999"},
                          {"--write-high-water-mb", "5000"}, {"--max-inflight", "-1"}};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    const char *argv[] = {"m3-server", "--store", nostore, "--listen", "127.0.0.1:0", "--http", "off",
                          bad[i][0], bad[i][1], NULL};
    char name[64];
    snprintf(name, sizeof name, "range%zu", i);
    expect_exit2(argv, name, bad[i][0], bad[i][1]);
  }
}

static int http_open(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) fail_msg("http connect: %s", strerror(errno));
  return fd;
}

/* 1 when the server closed fd within ms. */
static int closed_within(int fd, int ms) {
  struct pollfd p = {fd, POLLIN, 0};
  if (poll(&p, 1, ms) <= 0) return 0;
  char b[256];
  return recv(fd, b, sizeof b, 0) <= 0;
}

static void test_http_connection_cap(void **state) {
  (void)state;
  int fds[8];
  for (int i = 0; i < 8; i++) fds[i] = http_open(srv.http_port);
  usleep(200 * 1000);
  int extra = http_open(srv.http_port);
  if (!closed_within(extra, 2000)) fail_msg("a 9th HTTP connection (cap 8) stayed open");
  close(extra);
  for (int i = 0; i < 8; i++) close(fds[i]);
  usleep(200 * 1000);
  expect_counted("m3_http_connections_refused_total", 1);
}

/* ---- flood and slowloris, a valid client served throughout --------------- */

static void test_flood_and_slowloris(void **state) {
  (void)state;
  st_conn v;
  open_reader(&v);
  /* Hello flood: a child opens connection after connection from 127.0.0.3
   * with wrong tokens for 3 s. */
  pid_t flood = fork();
  assert_true(flood >= 0);
  if (flood == 0) {
    int64_t end = m3t_now_ms() + 3000;
    M3__HelloRequest h = M3__HELLO_REQUEST__INIT;
    h.protocol_version = M3_PROTOCOL_VERSION;
    h.token = "flood-flood-flood-flood";
    size_t len;
    uint8_t *fb = st_frame_build(M3_FRAME_REQUEST, M3_METHOD_HELLO, 1, 0, &h.base, NULL, 0, &len);
    while (m3t_now_ms() < end) {
      int fd = socket(AF_INET, SOCK_STREAM, 0);
      struct sockaddr_in sa = {0};
      sa.sin_family = AF_INET;
      inet_pton(AF_INET, "127.0.0.3", &sa.sin_addr);
      bind(fd, (struct sockaddr *)&sa, sizeof sa);
      sa.sin_port = htons((uint16_t)srv.rpc_port);
      inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
      if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        (void)!send(fd, fb, len, MSG_NOSIGNAL);
        char b[512];
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 200) > 0) (void)!recv(fd, b, sizeof b, 0);
      }
      close(fd);
    }
    _exit(0);
  }
  /* Slowloris on both ports: connections that send their first bytes one at
   * a time, slowly. */
  enum { SLOW_RPC = 64, SLOW_HTTP = 8 };
  int rpc[SLOW_RPC], http[SLOW_HTTP];
  for (int i = 0; i < SLOW_RPC; i++) rpc[i] = http_open(srv.rpc_port);
  for (int i = 0; i < SLOW_HTTP; i++) http[i] = http_open(srv.http_port);
  M3__HelloRequest h = M3__HELLO_REQUEST__INIT;
  h.protocol_version = M3_PROTOCOL_VERSION;
  h.token = READ_TOKEN;
  size_t hlen;
  uint8_t *hello = st_frame_build(M3_FRAME_REQUEST, M3_METHOD_HELLO, 1, 0, &h.base, NULL, 0, &hlen);
  const char *get = "GET /metrics HTTP/1.1\r\nHost: x\r\n";
  uint32_t stream = 3;
  int64_t t0 = m3t_now_ms();
  for (size_t byte = 0; m3t_now_ms() - t0 < 4000; byte++) {
    for (int i = 0; i < SLOW_RPC; i++)
      if (byte < hlen) (void)!send(rpc[i], hello + byte, 1, MSG_NOSIGNAL);
    for (int i = 0; i < SLOW_HTTP; i++) (void)!send(http[i], get + byte % strlen(get), 1, MSG_NOSIGNAL);
    valid_search(&v, stream);
    stream += 2;
    usleep(100 * 1000);
  }
  free(hello);
  /* The RPC trickles are gone after the handshake timeout (1500 ms). */
  for (int i = 0; i < SLOW_RPC; i++) {
    if (!closed_within(rpc[i], 1000)) fail_msg("slowloris connection %d still open after 4 s", i);
    close(rpc[i]);
  }
  int ws;
  if (!st_wait_pid(flood, 10000, &ws)) fail_msg("flood child did not end");
  valid_search(&v, stream);
  /* The HTTP trickles hold the HTTP cap until their 10 s timeout: then
   * /metrics answers again. */
  for (int i = 0; i < SLOW_HTTP; i++) {
    if (!closed_within(http[i], 9000)) fail_msg("HTTP slowloris connection %d still open", i);
    close(http[i]);
  }
  expect_counted("m3_hello_failures_total", 5);
  valid_search(&v, stream + 2);
  st_conn_close(&v);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_prehello_frame_cap),
      cmocka_unit_test(test_method_message_cap),
      cmocka_unit_test(test_big_message_refused_at_header),
      cmocka_unit_test(test_wrong_token_closes),
      cmocka_unit_test(test_short_token_refused),
      cmocka_unit_test(test_failed_hello_limit),
      cmocka_unit_test(test_bad_queries_alone),
      cmocka_unit_test(test_search_budget),
      cmocka_unit_test(test_concurrent_put_delete),
      cmocka_unit_test(test_options_range_checked),
      cmocka_unit_test(test_http_connection_cap),
      cmocka_unit_test(test_flood_and_slowloris),
      /* These two restart the server. */
      cmocka_unit_test(test_put_validated_before_commit),
      cmocka_unit_test(test_rebuild_skips_bad_vectors),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
