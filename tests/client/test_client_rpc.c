/*
 * libm3client against a real m3-server on loopback over a real store:
 * Hello and its layout, fingerprint refusal, Retrieve equal to the exact
 * top-k with payloads byte-identical to the store, Search, Fetch with a
 * missing id, a deadline that expires (DEADLINE_EXCEEDED, and the connection
 * still serves the next call), a callback that cancels, Stats and Health,
 * and a connection to a port nobody listens on.
 */
#include <math.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

#include "client/client_testlib.h"
#include "m3/frame.h"

#define N 300
#define DIM 32

static ct_store S;
static ct_server SRV;

static int setup(void **state) {
  ct_store_make(&S, N, DIM);
  ct_server_start(&SRV, &S, NULL);
  return 0;
}

static int teardown(void **state) {
  int st = ct_server_stop(&SRV);
  ct_store_free(&S);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("m3-server did not drain and exit 0 (%d)", st);
  return 0;
}

static void test_hello_layout(void **state) {
  m3_client *c = ct_connect(&SRV, NULL);
  const m3_client_info *i = m3_client_info_get(c);
  CHECK_U64(i->protocol_version, M3_PROTOCOL_VERSION);
  assert_true(m3_layout_equal(&i->layout, &S.layout));
  CHECK_U64(i->memory_bytes, S.mem_len);
  CHECK_U64(i->records, N);
  assert_string_equal(i->server_name, "client-test");
  assert_true(m3_client_ok(c));
  int serving = 0;
  char detail[128];
  CHECK_OK(m3_client_health(c, &serving, detail, sizeof detail));
  assert_int_equal(serving, 1);
  m3_client_close(c);
}

static void test_fingerprint_mismatch_refused(void **state) {
  m3_client_options o;
  m3_client_options_init(&o);
  o.codec_fingerprint = S.layout.codec_fp ^ 1;
  o.check_fingerprint = 1;
  m3_client *c = (m3_client *)1;
  CHECK_RC(m3_client_connect(SRV.addr, &o, &c), M3_EFINGERPRINT);
  assert_null(c);
  CHECK_CONTAINS(m3_errmsg(), "FAILED_PRECONDITION");
  CHECK_CONTAINS(m3_errmsg(), SRV.addr);
  /* The right fingerprint is accepted. */
  o.codec_fingerprint = S.layout.codec_fp;
  CHECK_OK(m3_client_connect(SRV.addr, &o, &c));
  m3_client_close(c);
}

typedef struct got {
  uint64_t ids[64][16];
  float scores[64][16];
  int seen[64][16];
  int n, bad;
} got;

static int on_retrieved(void *ud, const m3_client_memory *m) {
  got *g = ud;
  if (m->status) fail_msg("item %llu failed: %s", (unsigned long long)m->chunk_id, m->error);
  if (m->query >= 64 || m->rank >= 16) fail_msg("query %u rank %u out of range", m->query, m->rank);
  if (g->seen[m->query][m->rank]++) fail_msg("query %u rank %u twice", m->query, m->rank);
  g->ids[m->query][m->rank] = m->chunk_id;
  g->scores[m->query][m->rank] = m->score;
  if (m->chunk_id >= N || m->len != S.mem_len || memcmp(m->data, S.mem[m->chunk_id], m->len) != 0)
    fail_msg("chunk %llu: payload differs from the store", (unsigned long long)m->chunk_id);
  assert_non_null(m->record);
  CHECK_U64(m->record->chunk_id, m->chunk_id);
  char want[64];
  snprintf(want, sizeof want, "synthetic memory %llu", (unsigned long long)m->chunk_id);
  assert_string_equal(m->text, want);
  g->n++;
  return 0;
}

static void test_retrieve_is_exact_topk(void **state) {
  enum { Q = 32, K = 5 };
  m3_client *c = ct_connect(&SRV, NULL);
  uint64_t rng = 7;
  float qv[Q][DIM];
  m3_client_query qs[Q];
  for (int q = 0; q < Q; q++) {
    m3t_rand_unit(&rng, qv[q], DIM);
    qs[q] = (m3_client_query){.vector = qv[q], .dim = DIM};
  }
  got *g = calloc(1, sizeof *g);
  CHECK_OK(m3_client_retrieve(c, qs, Q, K, 1, on_retrieved, g));
  assert_int_equal(g->n, Q * K);
  uint64_t sids[Q * K];
  float sscores[Q * K];
  uint32_t counts[Q];
  CHECK_OK(m3_client_search(c, qs, Q, K, sids, sscores, counts));
  for (int q = 0; q < Q; q++) {
    uint64_t ids[K];
    float sc[K];
    ct_exact_topk(&S, qv[q], K, ids, sc);
    CHECK_U64(counts[q], K);
    for (int r = 0; r < K; r++) {
      if (g->ids[q][r] != ids[r] || sids[q * K + r] != ids[r])
        fail_msg("query %d rank %d: Retrieve %llu, Search %llu, exact %llu", q, r,
                 (unsigned long long)g->ids[q][r], (unsigned long long)sids[q * K + r],
                 (unsigned long long)ids[r]);
      if (fabsf(g->scores[q][r] - sc[r]) > 1e-4f)
        fail_msg("query %d rank %d: score %f, exact %f", q, r, g->scores[q][r], sc[r]);
    }
  }
  free(g);
  m3_client_close(c);
}

typedef struct fetched {
  int n, found, missing;
  uint32_t missing_idx;
} fetched;

static int on_fetched(void *ud, const m3_client_memory *m) {
  fetched *f = ud;
  f->n++;
  if (m->status == M3_ENOTFOUND) {
    assert_int_equal(m->grpc_status, M3__STATUS_CODE__NOT_FOUND);
    assert_null(m->data);
    f->missing++;
    f->missing_idx = m->query;
    return 0;
  }
  CHECK_OK(m->status);
  if (m->len != S.mem_len || memcmp(m->data, S.mem[m->chunk_id], m->len) != 0)
    fail_msg("Fetch of %llu: bytes differ from the store", (unsigned long long)m->chunk_id);
  f->found++;
  return 0;
}

static void test_fetch_with_missing_id(void **state) {
  m3_client *c = ct_connect(&SRV, NULL);
  uint64_t ids[] = {0, 17, 123456789, N - 1};
  fetched f = {0};
  CHECK_OK(m3_client_fetch(c, ids, 4, 0, on_fetched, &f));
  assert_int_equal(f.n, 4);
  assert_int_equal(f.found, 3);
  assert_int_equal(f.missing, 1);
  assert_int_equal(f.missing_idx, 2);
  m3_client_close(c);
}

static int count_only(void *ud, const m3_client_memory *m) {
  (*(int *)ud)++;
  return 0;
}

static void test_deadline_exceeded(void **state) {
  m3_client *c = ct_connect(&SRV, NULL);
  /* 64 queries x top-64 = 4096 memories, 170 MB: far more than 3 ms. */
  enum { Q = 64, K = 64 };
  static float qv[Q][DIM];
  m3_client_query qs[Q];
  uint64_t rng = 99;
  for (int q = 0; q < Q; q++) {
    m3t_rand_unit(&rng, qv[q], DIM);
    qs[q] = (m3_client_query){.vector = qv[q], .dim = DIM};
  }
  m3_client_set_timeout(c, 3);
  int n = 0;
  CHECK_RC(m3_client_retrieve(c, qs, Q, K, 0, count_only, &n), M3_EBUSY);
  const char *msg;
  assert_int_equal(m3_client_last_status(c, &msg), M3__STATUS_CODE__DEADLINE_EXCEEDED);
  CHECK_CONTAINS(msg, "DEADLINE_EXCEEDED");
  CHECK_CONTAINS(msg, SRV.addr);
  assert_true(n < Q * K);
  assert_true(m3_client_ok(c));
  /* The late frames of the abandoned call are skipped; the next call works. */
  m3_client_set_timeout(c, 10000);
  uint64_t ids[] = {5};
  fetched f = {0};
  CHECK_OK(m3_client_fetch(c, ids, 1, 0, on_fetched, &f));
  assert_int_equal(f.found, 1);
  assert_int_equal(m3_client_last_status(c, NULL), 0);
  m3_client_close(c);
}

static int stop_at_first(void *ud, const m3_client_memory *m) {
  (*(int *)ud)++;
  return 42;
}

static void test_callback_cancels(void **state) {
  m3_client *c = ct_connect(&SRV, NULL);
  uint64_t ids[64];
  for (int i = 0; i < 64; i++) ids[i] = (uint64_t)i;
  int n = 0;
  assert_int_equal(m3_client_fetch(c, ids, 64, 0, stop_at_first, &n), 42);
  assert_int_equal(n, 1);
  assert_int_equal(m3_client_last_status(c, NULL), M3__STATUS_CODE__CANCELLED);
  fetched f = {0};
  CHECK_OK(m3_client_fetch(c, ids + 10, 3, 0, on_fetched, &f));
  assert_int_equal(f.found, 3);
  m3_client_close(c);
}

static void test_stats_count_calls(void **state) {
  m3_client *c = ct_connect(&SRV, NULL);
  m3_client_stats st;
  CHECK_OK(m3_client_stats_get(c, &st));
  CHECK_U64(st.records, N);
  assert_true(st.calls >= 1);
  assert_true(st.n_methods >= 1);
  m3_client_counters ctr;
  m3_client_counters_get(c, &ctr);
  assert_true(ctr.bytes_read > 0 && ctr.calls == 2);
  m3_client_close(c);
}

static void test_connect_refused_names_address(void **state) {
  /* A port that was free a moment ago. */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  getsockname(fd, (struct sockaddr *)&a, &len);
  close(fd);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", ntohs(a.sin_port));
  m3_client *c = NULL;
  CHECK_RC(m3_client_connect(addr, NULL, &c), M3_EIO);
  CHECK_CONTAINS(m3_errmsg(), addr);
  CHECK_RC(m3_client_connect("no-port-here", NULL, &c), M3_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hello_layout),
      cmocka_unit_test(test_fingerprint_mismatch_refused),
      cmocka_unit_test(test_retrieve_is_exact_topk),
      cmocka_unit_test(test_fetch_with_missing_id),
      cmocka_unit_test(test_deadline_exceeded),
      cmocka_unit_test(test_callback_cancels),
      cmocka_unit_test(test_stats_count_calls),
      cmocka_unit_test(test_connect_refused_names_address),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
