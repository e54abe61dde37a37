/*
 * A hostile server (issue 14, defect 1): Memory.query and Memory.rank come
 * from the server, and the cluster client uses query as an index into its
 * per-shard arrays. A peer that answers a Fetch with query >= the number
 * of ids asked (or a Fetch item with a rank, which only Retrieve items
 * have) must be refused as a protocol error: the replica fails, the call
 * fails with the shard and replica named in its error fields, and nothing
 * outside the arrays is read or written (ASan build).
 *
 * The peer is a real process on loopback speaking the real protocol
 * (proto/include/m3/frame.h frames, the generated protobuf-c messages):
 * Hello, Health and Search are answered as a server would, Fetch with the
 * hostile item. Not a mock of libm3client: the client under test is the
 * real one, over a real socket.
 *
 * The single-server client (m3_client_retrieve / m3_client_fetch) hands
 * query and rank to its caller, who indexes with them: the same peer
 * answering Retrieve (or Fetch) with a query or rank it was not asked for
 * must fail that call as a protocol error, with no item delivered.
 */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "m3/client.h"
#include "m3/cluster.h"
#include "m3/error.h"
#include "m3/frame.h"

/* What the peer answers a Fetch of n ids with: one item per id, its query
 * set to query_add + the right index, rank to rank. */
typedef struct peer_mode {
  uint32_t query_add;
  uint32_t rank;
} peer_mode;

typedef struct peer {
  pid_t pid;
  char addr[64];
} peer;

static int read_full(int fd, void *buf, size_t n) {
  uint8_t *p = buf;
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

static int write_full(int fd, const void *buf, size_t n) {
  const uint8_t *p = buf;
  while (n > 0) {
    ssize_t r = write(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

static void send_msg(int fd, uint8_t type, uint16_t flags, uint16_t method, uint32_t stream,
                     const ProtobufCMessage *msg) {
  m3_wbuf b = {0};
  m3_frame f = {.type = type, .flags = flags, .method = method, .stream = stream};
  if (m3_frame_append(&b, &f, msg) != 0 || write_full(fd, b.data, b.len) != 0) _exit(3);
  m3_wbuf_free(&b);
}

/* One connection: answer until the client goes away. */
static void serve_conn(int fd, peer_mode mode) {
  for (;;) {
    uint8_t h[M3_FRAME_HEADER_SIZE];
    if (read_full(fd, h, sizeof h) != 0) _exit(0);
    m3_frame f;
    if (m3_frame_decode(h, M3_FRAME_DEFAULT_MAX, &f) != 0) _exit(2);
    size_t len = (size_t)f.msg_len + f.att_len;
    uint8_t *body = malloc(len ? len : 1);
    if (body == NULL || read_full(fd, body, len) != 0) _exit(2);
    if (f.type != M3_FRAME_REQUEST) { /* CANCEL of a stream already sent */
      free(body);
      continue;
    }
    if (f.method == M3_METHOD_HELLO) {
      M3__Layout l = M3__LAYOUT__INIT;
      l.n_layers = 2;
      l.n_kv_heads = 1;
      l.n_tokens = 4;
      l.head_dim = 8;
      l.embedding_dim = 4;
      M3__Limits lim = M3__LIMITS__INIT;
      lim.max_frame_bytes = M3_FRAME_DEFAULT_MAX;
      lim.max_inflight_calls = 64;
      lim.max_queries_per_call = 64;
      lim.max_k = 64;
      lim.max_ids_per_call = 1024;
      M3__HelloResponse r = M3__HELLO_RESPONSE__INIT;
      r.protocol_version = M3_PROTOCOL_VERSION;
      r.layout = &l;
      r.limits = &lim;
      r.server_name = "hostile peer";
      send_msg(fd, M3_FRAME_RESPONSE, M3_FRAME_FLAG_END, f.method, f.stream, &r.base);
    } else if (f.method == M3_METHOD_HEALTH) {
      M3__HealthResponse r = M3__HEALTH_RESPONSE__INIT;
      r.serving = 1;
      send_msg(fd, M3_FRAME_RESPONSE, M3_FRAME_FLAG_END, f.method, f.stream, &r.base);
    } else if (f.method == M3_METHOD_SEARCH) {
      /* An honest answer: ids 1 and 2 for every query. */
      M3__SearchRequest *rq = m3__search_request__unpack(NULL, f.msg_len, body);
      if (rq == NULL) _exit(2);
      static uint64_t ids[2] = {1, 2};
      static float scores[2] = {0.9f, 0.8f};
      M3__SearchResult res = M3__SEARCH_RESULT__INIT;
      res.n_ids = 2;
      res.ids = ids;
      res.n_scores = 2;
      res.scores = scores;
      M3__SearchResult **rp = calloc(rq->n_queries, sizeof *rp);
      for (size_t i = 0; i < rq->n_queries; i++) rp[i] = &res;
      M3__SearchResponse r = M3__SEARCH_RESPONSE__INIT;
      r.n_results = rq->n_queries;
      r.results = rp;
      send_msg(fd, M3_FRAME_RESPONSE, M3_FRAME_FLAG_END, f.method, f.stream, &r.base);
      free(rp);
      m3__search_request__free_unpacked(rq, NULL);
    } else if (f.method == M3_METHOD_RETRIEVE) {
      /* k NOT_FOUND items per query, query and rank shifted by the mode. */
      M3__RetrieveRequest *rq = m3__retrieve_request__unpack(NULL, f.msg_len, body);
      if (rq == NULL) _exit(2);
      for (size_t q = 0; q < rq->n_queries; q++)
        for (uint32_t r = 0; r < rq->k; r++) {
          M3__Memory m = M3__MEMORY__INIT;
          m.chunk_id = 100 + q * rq->k + r;
          m.query = (uint32_t)(mode.query_add + q);
          m.rank = mode.rank + r;
          m.status = M3__STATUS_CODE__NOT_FOUND;
          m.error = "no such chunk";
          send_msg(fd, M3_FRAME_RESPONSE, 0, f.method, f.stream, &m.base);
        }
      M3__Status st = M3__STATUS__INIT;
      send_msg(fd, M3_FRAME_END, 0, f.method, f.stream, &st.base);
      m3__retrieve_request__free_unpacked(rq, NULL);
    } else if (f.method == M3_METHOD_FETCH) {
      /* The hostile answer: every item NOT_FOUND (no payload to forge),
       * tagged with an index past the ids asked, or with a rank. */
      M3__FetchRequest *rq = m3__fetch_request__unpack(NULL, f.msg_len, body);
      if (rq == NULL) _exit(2);
      for (size_t i = 0; i < rq->n_ids; i++) {
        M3__Memory m = M3__MEMORY__INIT;
        m.chunk_id = rq->ids[i];
        m.query = (uint32_t)(mode.query_add + i);
        m.rank = mode.rank;
        m.status = M3__STATUS_CODE__NOT_FOUND;
        m.error = "no such chunk";
        send_msg(fd, M3_FRAME_RESPONSE, 0, f.method, f.stream, &m.base);
      }
      M3__Status st = M3__STATUS__INIT;
      send_msg(fd, M3_FRAME_END, 0, f.method, f.stream, &st.base);
      m3__fetch_request__free_unpacked(rq, NULL);
    } else {
      M3__Status st = M3__STATUS__INIT;
      st.code = M3__STATUS_CODE__UNIMPLEMENTED;
      st.message = "not in the hostile peer";
      m3_frame e = {.type = M3_FRAME_END, .method = f.method, .stream = f.stream,
                    .arg = M3__STATUS_CODE__UNIMPLEMENTED};
      m3_wbuf b = {0};
      if (m3_frame_append(&b, &e, &st.base) != 0 || write_full(fd, b.data, b.len) != 0) _exit(3);
      m3_wbuf_free(&b);
    }
    free(body);
  }
}

/* Listen on an ephemeral loopback port, then serve each connection in a
 * process of its own (the peer's process group, killed by peer_stop). */
static void peer_start(peer *p, peer_mode mode) {
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  if (lfd < 0) fail_msg("socket: %s", strerror(errno));
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof sa;
  if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 64) != 0 ||
      getsockname(lfd, (struct sockaddr *)&sa, &sl) != 0)
    fail_msg("bind/listen on 127.0.0.1:0: %s", strerror(errno));
  snprintf(p->addr, sizeof p->addr, "127.0.0.1:%u", ntohs(sa.sin_port));
  pid_t pid = fork();
  if (pid < 0) fail_msg("fork: %s", strerror(errno));
  if (pid == 0) {
    /* Gone with the test, even when it dies (an ASan report aborts it). */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    setpgid(0, 0);
    signal(SIGCHLD, SIG_IGN); /* connection processes reap themselves */
    for (;;) {
      int fd = accept(lfd, NULL, NULL);
      if (fd < 0) {
        if (errno == EINTR) continue;
        _exit(1);
      }
      pid_t c = fork();
      if (c == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(lfd);
        serve_conn(fd, mode);
        _exit(0);
      }
      close(fd);
    }
  }
  setpgid(pid, pid);
  close(lfd);
  p->pid = pid;
}

static void peer_stop(peer *p) {
  kill(-p->pid, SIGKILL);
  waitpid(p->pid, NULL, 0);
}

static int delivered;

static int on_mem(void *ud, const m3_client_memory *m) {
  (void)ud;
  (void)m;
  delivered++;
  return 0;
}

/* A cluster of one shard over the peers, no prober (the replicas stay
 * down once refused), hedging as asked. */
static m3_cluster *open_over(const peer *p, unsigned n, int hedge_ms) {
  char json[512];
  int len = snprintf(json, sizeof json, "{\"shards\": [{\"id\": 0, \"replicas\": [");
  for (unsigned i = 0; i < n; i++)
    len += snprintf(json + len, sizeof json - (size_t)len, "%s\"%s\"", i ? ", " : "", p[i].addr);
  snprintf(json + len, sizeof json - (size_t)len, "]}]}");
  m3_cluster_map *map;
  CHECK_OK(m3_cluster_map_parse(json, "hostile.json", &map));
  m3_cluster_options o;
  m3_cluster_options_init(&o);
  o.probe_interval_ms = 0;
  o.hedge_delay_ms = hedge_ms;
  o.call_timeout_ms = 5000;
  m3_cluster *cl;
  CHECK_OK(m3_cluster_open(map, &o, &cl));
  m3_cluster_map_free(map);
  return cl;
}

/* The call failed because every replica broke the protocol: UNAVAILABLE,
 * the shard and a replica in the error's fields, the reason in the text,
 * no memory delivered. */
static void expect_refused(int rc, const char *field, unsigned n_replicas) {
  CHECK_RC(rc, M3_EBUSY);
  const m3_cluster_error *e = m3_cluster_last_error();
  CHECK_U64(e->rc, M3_EBUSY);
  CHECK_U64(e->status, 14 /* UNAVAILABLE */);
  CHECK_U64(e->shard, 0);
  if (e->replica < 0 || e->replica >= (int)n_replicas)
    fail_msg("error replica %d, want one of the %u replicas: %s", e->replica, n_replicas, e->msg);
  CHECK_CONTAINS(e->msg, "shard 0 unavailable");
  CHECK_CONTAINS(e->msg, "protocol error");
  CHECK_CONTAINS(e->msg, field);
  CHECK_CONTAINS(e->msg, e->addr);
  int shard;
  const char *msg;
  CHECK_U64(m3_cluster_last_status(&shard, &msg), 14);
  CHECK_U64(shard, 0);
  CHECK_CONTAINS(msg, field);
  CHECK_U64(delivered, 0);
}

static void test_fetch_query_out_of_range(void **state) {
  (void)state;
  peer p;
  peer_start(&p, (peer_mode){.query_add = 3}); /* 3 ids asked: query 3.. */
  m3_cluster *cl = open_over(&p, 1, 0);
  uint64_t ids[] = {10, 11, 12};
  delivered = 0;
  expect_refused(m3_cluster_fetch(cl, ids, 3, 0, on_mem, NULL), "Memory.query", 1);
  m3_cluster_replica_info ri;
  CHECK_OK(m3_cluster_replica_get(cl, 0, 0, &ri));
  CHECK_U64(ri.up, 0);
  CHECK_CONTAINS(ri.last_error, "Memory.query");
  m3_cluster_close(cl);
  peer_stop(&p);
}

static void test_hedged_fetch_query_out_of_range(void **state) {
  (void)state;
  peer p[2];
  peer_start(&p[0], (peer_mode){.query_add = 2});
  peer_start(&p[1], (peer_mode){.query_add = 2});
  m3_cluster *cl = open_over(p, 2, 1);
  uint64_t ids[] = {7, 8};
  delivered = 0;
  expect_refused(m3_cluster_fetch(cl, ids, 2, 0, on_mem, NULL), "Memory.query", 2);
  m3_cluster_close(cl);
  peer_stop(&p[0]);
  peer_stop(&p[1]);
}

static void test_retrieve_query_out_of_range(void **state) {
  (void)state;
  peer p;
  peer_start(&p, (peer_mode){.query_add = 2}); /* Search gives 2 ids to fetch */
  m3_cluster *cl = open_over(&p, 1, 0);
  float v[4] = {1, 0, 0, 0};
  m3_client_query q = {.vector = v, .dim = 4};
  delivered = 0;
  expect_refused(m3_cluster_retrieve(cl, &q, 1, 2, 0, on_mem, NULL), "Memory.query", 1);
  m3_cluster_close(cl);
  peer_stop(&p);
}

static void test_fetch_item_with_rank(void **state) {
  (void)state;
  peer p[2];
  peer_start(&p[0], (peer_mode){.rank = 1});
  peer_start(&p[1], (peer_mode){.rank = 1});
  for (int hedge = 0; hedge <= 1; hedge++) {
    m3_cluster *cl = open_over(p, 2, hedge);
    uint64_t ids[] = {4};
    delivered = 0;
    expect_refused(m3_cluster_fetch(cl, ids, 1, 0, on_mem, NULL), "Memory.rank", 2);
    m3_cluster_close(cl);
  }
  peer_stop(&p[0]);
  peer_stop(&p[1]);
}

/* ---- the single-server client ---- */

static m3_client *connect_to(const peer *p) {
  m3_client_options o;
  m3_client_options_init(&o);
  o.call_timeout_ms = 5000;
  m3_client *c;
  CHECK_OK(m3_client_connect(p->addr, &o, &c));
  return c;
}

static void expect_client_refused(m3_client *c, int rc, const char *field) {
  CHECK_RC(rc, M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "protocol error");
  CHECK_CONTAINS(m3_errmsg(), field);
  const char *msg;
  CHECK_U64(m3_client_last_status(c, &msg), 14 /* UNAVAILABLE */);
  CHECK_CONTAINS(msg, field);
  CHECK_CONTAINS(msg, "127.0.0.1:");
  CHECK_U64(delivered, 0);
}

static void test_client_retrieve_query_out_of_range(void **state) {
  (void)state;
  peer p;
  peer_start(&p, (peer_mode){.query_add = 1}); /* 1 query asked: query 1 */
  m3_client *c = connect_to(&p);
  float v[4] = {1, 0, 0, 0};
  m3_client_query q = {.vector = v, .dim = 4};
  delivered = 0;
  expect_client_refused(c, m3_client_retrieve(c, &q, 1, 2, 0, on_mem, NULL), "Memory.query");
  m3_client_close(c);
  peer_stop(&p);
}

static void test_client_retrieve_rank_out_of_range(void **state) {
  (void)state;
  peer p;
  peer_start(&p, (peer_mode){.rank = 2}); /* k = 2: ranks 2 and 3 */
  m3_client *c = connect_to(&p);
  float v[8] = {1, 0, 0, 0, 0, 1, 0, 0};
  m3_client_query q[2] = {{.vector = v, .dim = 4}, {.vector = v + 4, .dim = 4}};
  delivered = 0;
  expect_client_refused(c, m3_client_retrieve(c, q, 2, 2, 0, on_mem, NULL), "Memory.rank");
  m3_client_close(c);
  peer_stop(&p);
}

static void test_client_fetch_out_of_range(void **state) {
  (void)state;
  peer p[2];
  peer_start(&p[0], (peer_mode){.query_add = 2});
  peer_start(&p[1], (peer_mode){.rank = 1});
  uint64_t ids[] = {5, 6};
  m3_client *c = connect_to(&p[0]);
  delivered = 0;
  expect_client_refused(c, m3_client_fetch(c, ids, 2, 0, on_mem, NULL), "Memory.query");
  m3_client_close(c);
  c = connect_to(&p[1]);
  expect_client_refused(c, m3_client_fetch(c, ids, 2, 0, on_mem, NULL), "Memory.rank");
  m3_client_close(c);
  peer_stop(&p[0]);
  peer_stop(&p[1]);
}

/* The honest answer still passes (the check refuses only what is out of
 * range): query 0, ranks 0..k-1, each item delivered. */
static void test_client_retrieve_in_range(void **state) {
  (void)state;
  peer p;
  peer_start(&p, (peer_mode){0});
  m3_client *c = connect_to(&p);
  float v[4] = {1, 0, 0, 0};
  m3_client_query q = {.vector = v, .dim = 4};
  delivered = 0;
  CHECK_OK(m3_client_retrieve(c, &q, 1, 3, 0, on_mem, NULL));
  CHECK_U64(delivered, 3);
  m3_client_close(c);
  peer_stop(&p);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fetch_query_out_of_range),
      cmocka_unit_test(test_hedged_fetch_query_out_of_range),
      cmocka_unit_test(test_retrieve_query_out_of_range),
      cmocka_unit_test(test_fetch_item_with_rank),
      cmocka_unit_test(test_client_retrieve_query_out_of_range),
      cmocka_unit_test(test_client_retrieve_rank_out_of_range),
      cmocka_unit_test(test_client_fetch_out_of_range),
      cmocka_unit_test(test_client_retrieve_in_range),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
