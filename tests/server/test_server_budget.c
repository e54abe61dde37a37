/*
 * The server-wide read buffer budget (--fetch-memory-mb) and streaming.
 *
 * m3-server over a 600-memory store (Memory3 shape: one read buffer is
 * about 48 KB) with --fetch-memory-mb 1, about 21 buffers for every call
 * together. Three connections each pipeline a Fetch of all 600 ids and two
 * Retrieves (32 x 5): some 30 MB of memories per connection through 1 MB of
 * buffers, which completes only if memories are sent as they are read and
 * their buffers reused. The test asserts:
 *  - every call ends OK; every memory is delivered once per (query, rank)
 *    or index, byte-identical to the record in the segment;
 *  - m3_read_buffer_bytes_peak never passed the budget, and every buffer
 *    is back once the calls are done;
 *  - the connections are read one after the other: the two not being read
 *    pin no more than their share of the budget (a quarter each), so the
 *    one being read still gets buffers;
 *  - a with_text Fetch, served by threadpool jobs, gets every text.
 * Then admin Puts run while Fetches are being read: reads that meet a
 * commit in progress wait for it and go on (with io_uring the loop never
 * blocks on the store's lock: it tries again a moment later); every Fetch
 * stays byte-identical and every new chunk is fetched right after its Put.
 * Last, churn: calls of random sizes with 2 ms deadlines that expire while
 * their memories are being read, CANCELs at random points, and connections
 * closed in the middle of a call, round after round: every call ends once
 * (OK and complete, DEADLINE_EXCEEDED or CANCELLED), nothing arrives after
 * its END, whatever arrived is byte-exact, and once it is over every read
 * buffer is back, no call is left, and the server exits 0 (under ASan:
 * LeakSanitizer finds nothing).
 * Run with "pread" the server reads with pread on the threadpool (its log
 * says so) rather than with io_uring on its loop; the same holds.
 */
#include <stdlib.h>

#include "m3/crc32c.h"
#include "m3/record.h"
#include "srvtest.h"

#define COUNT 600
#define DIM 32
#define CONNS 3

static int g_pread;

static void check_payload(const st_ref *ref, const st_frame *fr, const M3__Memory *m) {
  long at = st_ref_find(ref, m->chunk_id);
  if (at < 0) fail_msg("chunk %llu is not in the store", (unsigned long long)m->chunk_id);
  const uint8_t *att = fr->data + fr->f.msg_len;
  ST_EQ_U64(fr->f.att_len, ref->mem_len[at]);
  ST_EQ_U64(m->payload_crc, m3_crc32c(0, att, fr->f.att_len));
  if (memcmp(att, ref->mem[at], ref->mem_len[at]) != 0)
    fail_msg("chunk %llu: payload differs from the segment's record", (unsigned long long)m->chunk_id);
}

/* A scratch directory with a store of count memories and its reference
 * data read back from it. */
typedef struct env {
  char *dir;
  char store[4200];
  st_ref ref;
  st_server srv;
} env;

static void env_make(env *e, const char *tag, unsigned count) {
  e->dir = m3t_mkdtemp(tag);
  snprintf(e->store, sizeof e->store, "%s/store", e->dir);
  st_gen_store(e->store, count, DIM);
  st_ref_load(&e->ref, e->store);
}

/* m3-server over it with --fetch-memory-mb 1 and `more` (two at most), with
 * pread when the test runs so. */
static void env_serve(env *e, const char *more0, const char *more1) {
  const char *args[] = {"--fetch-memory-mb", "1", more0, more1, NULL};
  const char *env_pread[] = {"M3_IO=pread", NULL};
  st_server_start(&e->srv, e->dir, e->store, args, g_pread ? env_pread : NULL);
}

static void env_done(env *e) {
  st_server_stop(&e->srv, 30000);
  st_ref_free(&e->ref);
  m3t_rmrf(e->dir);
  free(e->dir);
}

static void test_budget(void **state) {
  (void)state;
  env e;
  env_make(&e, "budget", COUNT);
  env_serve(&e, NULL, NULL);
  st_ref *ref = &e.ref;
  st_server *srv = &e.srv;
  char *log = st_server_log(srv);
  ST_CONTAINS(log, g_pread ? "on the threadpool" : "on the loop");
  free(log);

  st_conn c[CONNS];
  uint64_t ids[COUNT];
  for (int i = 0; i < COUNT; i++) ids[i] = ref->ids[COUNT - 1 - i];
  float q[32 * DIM];
  uint64_t seed = 5;
  for (int i = 0; i < 32; i++) m3t_rand_unit(&seed, q + i * DIM, DIM);
  M3__FetchRequest fr = M3__FETCH_REQUEST__INIT;
  fr.ids = ids;
  fr.n_ids = COUNT;
  M3__RetrieveRequest rr = M3__RETRIEVE_REQUEST__INIT;
  rr.queries = st_queries(q, 32, DIM);
  rr.n_queries = 32;
  rr.k = 5;
  /* Every connection pipelines its three calls before anyone reads. */
  for (int i = 0; i < CONNS; i++) {
    st_conn_open(&c[i], srv->rpc_port);
    st_hello_ok(&c[i], 1, NULL);
    st_send(&c[i], M3_FRAME_REQUEST, M3_METHOD_FETCH, 10, 0, &fr.base, NULL, 0);
    st_send(&c[i], M3_FRAME_REQUEST, M3_METHOD_RETRIEVE, 11, 0, &rr.base, NULL, 0);
    st_send(&c[i], M3_FRAME_REQUEST, M3_METHOD_RETRIEVE, 12, 0, &rr.base, NULL, 0);
  }
  const uint16_t methods[3] = {M3_METHOD_FETCH, M3_METHOD_RETRIEVE, M3_METHOD_RETRIEVE};
  for (int i = 0; i < CONNS; i++) {
    st_result r[3];
    st_collect(&c[i], 10, 3, methods, r, 30000, NULL);
    for (int k = 0; k < 3; k++) ST_STATUS(r[k], 0);
    ST_EQ_U64(r[0].n, COUNT);
    ST_EQ_U64(r[1].n, 160);
    ST_EQ_U64(r[2].n, 160);
    uint8_t seen[COUNT] = {0};
    for (size_t j = 0; j < r[0].n; j++) {
      M3__Memory *m = st_memory(&r[0].items[j]);
      ST_EQ_U64(m->status, 0);
      if (m->query >= COUNT || seen[m->query]++) fail_msg("Fetch: index %u twice or out of range", m->query);
      ST_EQ_U64(m->chunk_id, ids[m->query]);
      check_payload(ref, &r[0].items[j], m);
      m3__memory__free_unpacked(m, NULL);
    }
    for (int k = 1; k < 3; k++) {
      uint8_t slot[160] = {0};
      for (size_t j = 0; j < r[k].n; j++) {
        M3__Memory *m = st_memory(&r[k].items[j]);
        ST_EQ_U64(m->status, 0);
        if (m->query >= 32 || m->rank >= 5 || slot[m->query * 5 + m->rank]++)
          fail_msg("Retrieve: (query %u, rank %u) twice or out of range", m->query, m->rank);
        check_payload(ref, &r[k].items[j], m);
        m3__memory__free_unpacked(m, NULL);
      }
    }
    for (int k = 0; k < 3; k++) st_result_free(&r[k]);
  }
  st_queries_free(rr.queries, 32);

  double budget = st_server_metric(srv, "m3_read_buffer_budget_bytes");
  double peak = st_server_metric(srv, "m3_read_buffer_bytes_peak");
  fprintf(stderr, "# %s: budget %.0f bytes, peak %.0f bytes lent\n", g_pread ? "pread" : "io_uring",
          budget, peak);
  if (budget <= 0 || budget > 1 << 20) fail_msg("budget %.0f bytes with --fetch-memory-mb 1", budget);
  if (peak <= 0) fail_msg("no read buffer was ever lent");
  if (peak > budget) fail_msg("%.0f bytes of buffers lent at once; the budget is %.0f", peak, budget);
  long long until = m3t_now_ms() + 5000;
  while (st_server_metric(srv, "m3_read_buffer_bytes") != 0 ||
         st_server_metric(srv, "m3_calls_waiting_for_buffers") != 0) {
    if (m3t_now_ms() > until) fail_msg("read buffers still lent 5 s after every call ended");
    m3t_sleep_ms(20);
  }

  /* with_text: the texts come from the catalog on a threadpool job. */
  uint64_t tids[40];
  for (int i = 0; i < 40; i++) tids[i] = ref->ids[i * 7];
  M3__FetchRequest tr = M3__FETCH_REQUEST__INIT;
  tr.ids = tids;
  tr.n_ids = 40;
  tr.with_text = 1;
  st_result r;
  st_call(&c[0], M3_METHOD_FETCH, 20, 0, &tr.base, NULL, 0, &r);
  ST_STATUS(r, 0);
  ST_EQ_U64(r.n, 40);
  for (size_t j = 0; j < r.n; j++) {
    M3__Memory *m = st_memory(&r.items[j]);
    ST_EQ_U64(m->chunk_id, tids[m->query]);
    ST_EQ_STR(m->text, ref->text[st_ref_find(ref, m->chunk_id)]);
    check_payload(ref, &r.items[j], m);
    m3__memory__free_unpacked(m, NULL);
  }
  st_result_free(&r);

  for (int i = 0; i < CONNS; i++) st_conn_close(&c[i]);
  env_done(&e);
}

static void check_fetch(const st_ref *ref, const st_result *r, const uint64_t *ids, size_t n) {
  ST_STATUS(*r, 0);
  ST_EQ_U64(r->n, n);
  for (size_t j = 0; j < r->n; j++) {
    M3__Memory *m = st_memory(&r->items[j]);
    ST_EQ_U64(m->status, 0);
    ST_EQ_U64(m->chunk_id, ids[m->query]);
    check_payload(ref, &r->items[j], m);
    m3__memory__free_unpacked(m, NULL);
  }
}

static void test_puts_during_reads(void **state) {
  (void)state;
  env e;
  env_make(&e, "budgetput", 200);
  st_ref *ref = &e.ref;
  st_server *srv = &e.srv;
  char token[4200];
  snprintf(token, sizeof token, "%s/admin.token", e.dir);
  FILE *f = fopen(token, "w");
  assert_non_null(f);
  fputs("admin-secret-0123456789\n", f);
  fclose(f);
  env_serve(&e, "--admin-token-file", token);
  st_conn rd, adm;
  st_conn_open(&rd, srv->rpc_port);
  st_conn_open(&adm, srv->rpc_port);
  st_hello_ok(&rd, 1, NULL);
  M3__HelloResponse *h;
  if (st_hello(&adm, 1, "admin-secret-0123456789", &h) != 0) fail_msg("Hello with the admin token refused");
  m3_layout l = st_layout_from_hello(h->layout);
  m3__hello_response__free_unpacked(h, NULL);

  M3__FetchRequest fr = M3__FETCH_REQUEST__INIT;
  fr.ids = ref->ids;
  fr.n_ids = ref->n;
  const uint16_t fetch[1] = {M3_METHOD_FETCH}, put[1] = {M3_METHOD_PUT};
  uint64_t seed = 77;
  for (uint32_t round = 0; round < 20; round++) {
    /* A Put of a new chunk and a Fetch of the whole store, both in flight. */
    uint64_t id = 5000000 + round;
    float emb[DIM];
    m3t_rand_unit(&seed, emb, DIM);
    size_t len;
    uint8_t *rec = st_make_record(&l, id, emb, "put during reads", &len);
    uint32_t size = (uint32_t)len;
    M3__PutRequest pr = M3__PUT_REQUEST__INIT;
    pr.sizes = &size;
    pr.n_sizes = 1;
    st_send(&adm, M3_FRAME_REQUEST, M3_METHOD_PUT, 10 + round, 0, &pr.base, rec, len);
    st_send(&rd, M3_FRAME_REQUEST, M3_METHOD_FETCH, 10 + round, 0, &fr.base, NULL, 0);
    st_result r;
    st_collect(&rd, 10 + round, 1, fetch, &r, 30000, NULL);
    check_fetch(ref, &r, ref->ids, ref->n);
    st_result_free(&r);
    st_collect(&adm, 10 + round, 1, put, &r, 30000, NULL);
    ST_STATUS(r, 0);
    st_result_free(&r);
    /* The new chunk is there at once, with the bytes that were put. */
    M3__FetchRequest one = M3__FETCH_REQUEST__INIT;
    one.ids = &id;
    one.n_ids = 1;
    st_call(&rd, M3_METHOD_FETCH, 100 + round, 0, &one.base, NULL, 0, &r);
    ST_STATUS(r, 0);
    ST_EQ_U64(r.n, 1);
    M3__Memory *m = st_memory(&r.items[0]);
    ST_EQ_U64(m->status, 0);
    ST_EQ_U64(r.items[0].f.att_len, m3_record_mem_size(&l));
    if (memcmp(r.items[0].data + r.items[0].f.msg_len, rec, r.items[0].f.att_len) != 0)
      fail_msg("chunk %llu: fetched bytes differ from the record put", (unsigned long long)id);
    m3__memory__free_unpacked(m, NULL);
    st_result_free(&r);
    free(rec);
  }
  fprintf(stderr, "# %s: %.0f read submissions deferred by a commit\n", g_pread ? "pread" : "io_uring",
          st_server_metric(srv, "m3_reads_deferred_total"));
  st_conn_close(&rd);
  st_conn_close(&adm);
  env_done(&e);
}

static void test_churn(void **state) {
  (void)state;
  enum { NCONN = 3, PER = 6, ROUNDS = 25 };
  env e;
  env_make(&e, "budgetchurn", COUNT);
  env_serve(&e, NULL, NULL);
  st_ref *ref = &e.ref;
  st_server *srv = &e.srv;
  st_conn c[NCONN];
  for (int i = 0; i < NCONN; i++) {
    st_conn_open(&c[i], srv->rpc_port);
    st_hello_ok(&c[i], 1, NULL);
  }
  static uint64_t ids[PER][COUNT];
  size_t nids[PER];
  uint64_t seed = 4242;
  size_t ok = 0, deadline = 0, cancelled = 0;
  for (int round = 0; round < ROUNDS; round++) {
    uint32_t first = 10 + (uint32_t)round * PER;
    for (int j = 0; j < PER; j++) {
      nids[j] = 1 + m3t_rand(&seed) % COUNT;
      for (size_t i = 0; i < nids[j]; i++) ids[j][i] = ref->ids[m3t_rand(&seed) % COUNT];
    }
    /* Every connection gets the same six calls: some with a 2 ms deadline,
     * some cancelled right after they were sent. */
    for (int ci = 0; ci < NCONN; ci++)
      for (int j = 0; j < PER; j++) {
        M3__FetchRequest fr = M3__FETCH_REQUEST__INIT;
        fr.ids = ids[j];
        fr.n_ids = nids[j];
        uint32_t timeout = m3t_rand(&seed) % 3 == 0 ? 2 : 0;
        st_send(&c[ci], M3_FRAME_REQUEST, M3_METHOD_FETCH, first + (uint32_t)j, timeout, &fr.base,
                NULL, 0);
        if (m3t_rand(&seed) % 4 == 0)
          st_send(&c[ci], M3_FRAME_CANCEL, M3_METHOD_FETCH, first + (uint32_t)j, 0, NULL, NULL, 0);
      }
    /* Now and then a connection that asks for a large Fetch and hangs up
     * once the first memory is in. */
    if (round % 5 == 0) {
      st_conn q;
      st_conn_open(&q, srv->rpc_port);
      st_hello_ok(&q, 1, NULL);
      M3__FetchRequest fr = M3__FETCH_REQUEST__INIT;
      fr.ids = ref->ids;
      fr.n_ids = COUNT;
      st_send(&q, M3_FRAME_REQUEST, M3_METHOD_FETCH, 2, 0, &fr.base, NULL, 0);
      st_frame f1;
      if (st_recv(&q, &f1, 30000) != 1) fail_msg("round %d: nothing for the connection to drop", round);
      st_frame_free(&f1);
      st_conn_close(&q);
    }
    uint16_t methods[PER];
    for (int j = 0; j < PER; j++) methods[j] = M3_METHOD_FETCH;
    for (int ci = 0; ci < NCONN; ci++) {
      st_result r[PER];
      st_collect(&c[ci], first, PER, methods, r, 30000, NULL);
      for (int j = 0; j < PER; j++) {
        if (r[j].status == 0) {
          ok++;
          ST_EQ_U64(r[j].n, nids[j]);
        } else if (r[j].status == M3__STATUS_CODE__DEADLINE_EXCEEDED) {
          deadline++;
        } else if (r[j].status == M3__STATUS_CODE__CANCELLED) {
          cancelled++;
        } else {
          fail_msg("round %d call %d: %s \"%s\"", round, j, m3_status_name(r[j].status), r[j].message);
        }
        for (size_t k = 0; k < r[j].n; k++) {
          M3__Memory *m = st_memory(&r[j].items[k]);
          ST_EQ_U64(m->status, 0);
          if (m->query >= nids[j]) fail_msg("index %u of %zu ids", m->query, nids[j]);
          ST_EQ_U64(m->chunk_id, ids[j][m->query]);
          check_payload(ref, &r[j].items[k], m);
          m3__memory__free_unpacked(m, NULL);
        }
        st_result_free(&r[j]);
      }
    }
  }
  fprintf(stderr, "# %s churn: %zu calls OK, %zu past their deadline, %zu cancelled\n",
          g_pread ? "pread" : "io_uring", ok, deadline, cancelled);
  if (ok == 0) fail_msg("no call completed");
  long long until = m3t_now_ms() + 10000;
  while (st_server_metric(srv, "m3_read_buffer_bytes") != 0 ||
         st_server_metric(srv, "m3_calls_in_flight") != 0 ||
         st_server_metric(srv, "m3_calls_waiting_for_buffers") != 0) {
    if (m3t_now_ms() > until) fail_msg("buffers or calls still held 10 s after the churn ended");
    m3t_sleep_ms(20);
  }
  if (st_server_metric(srv, "m3_read_buffer_bytes_peak") > st_server_metric(srv, "m3_read_buffer_budget_bytes"))
    fail_msg("more read buffers lent than the budget");
  for (int i = 0; i < NCONN; i++) st_conn_close(&c[i]);
  env_done(&e);
}

int main(int argc, char **argv) {
  g_pread = argc > 1 && !strcmp(argv[1], "pread");
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_budget),
                                     cmocka_unit_test(test_puts_during_reads),
                                     cmocka_unit_test(test_churn)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
