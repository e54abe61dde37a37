/*
 * The HTTP port: /metrics in the Prometheus text format, /healthz, /readyz.
 *
 * A fresh m3-server; the test makes a known set of calls (by method and
 * outcome), then:
 *  - every line of GET /metrics is a HELP/TYPE comment or a sample
 *    `name{labels} value`; every sample's metric has a TYPE line;
 *  - m3_calls_total counts exactly those calls by method and status, and
 *    the latency histogram of each method is cumulative, ends in +Inf equal
 *    to its _count, and _count equals the calls of the method;
 *  - the gauges say what is true: connections open, calls in flight 0,
 *    records and index vectors 300, not draining; memories and payload
 *    bytes served match what the calls streamed;
 *  - the Stats RPC agrees with /metrics;
 *  - /healthz 200, /readyz 200, an unknown path 404, POST 405, a request
 *    that is not HTTP 400.
 * test_metrics_move: each of m3_build_info, process_*, the per-item
 * NOT_FOUND / DATA_LOSS counters and the store-read and index-search
 * histograms moves after the calls that should move it, and only then
 * (a server with --no-sendfile, which reads and checks every record, on a
 * store with one byte flipped in a record's codes):
 *  - m3_build_info names this build's version, commit and options;
 *  - process_*: resident memory, start time within the test's run, open
 *    descriptors rising with connections opened, CPU seconds rising under
 *    calls;
 *  - a Fetch of a missing id: NOT_FOUND +1, DATA_LOSS +0;
 *  - a Fetch of the flipped record: DATA_LOSS +1, store reads +1;
 *  - a Fetch of 3 intact ids: store reads +3, the item counters +0;
 *  - a Search: index searches +1 (= m3_search_batches_total), store reads
 *    +0; a Retrieve of k = 4: index searches +1, store reads +4.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "m3/store.h"
#include "m3/version.h"
#include "srvtest.h"

#define COUNT 300
#define DIM 32

#define EXPECT_METRIC(text, series, want)                                                \
  do {                                                                                   \
    double v_ = st_metric(text, series, NULL), w_ = (double)(want); /* absent: fails */   \
    if (v_ != w_) fail_msg("/metrics %s = %g, want %g", series, v_, w_);                 \
  } while (0)

static void test_metrics(void **state) {
  (void)state;
  char *dir = m3t_mkdtemp("metrics");
  char store[4200];
  snprintf(store, sizeof store, "%s/store", dir);
  st_gen_store(store, COUNT, DIM);
  st_server srv;
  st_server_start(&srv, dir, store, NULL, NULL);

  st_conn c;
  st_conn_open(&c, srv.rpc_port);
  uint32_t sid = 1;
  st_result r;
  /* 1 Stats before Hello: UNAUTHENTICATED. */
  M3__StatsRequest sr = M3__STATS_REQUEST__INIT;
  st_call(&c, M3_METHOD_STATS, sid++, 0, &sr.base, NULL, 0, &r);
  ST_STATUS(r, M3__STATUS_CODE__UNAUTHENTICATED);
  st_result_free(&r);
  /* 1 Hello OK. */
  st_hello_ok(&c, sid++, NULL);
  /* 3 Search OK, 1 Search INVALID_ARGUMENT (k 0). */
  float q[2 * DIM];
  uint64_t seed = 3;
  m3t_rand_unit(&seed, q, DIM);
  m3t_rand_unit(&seed, q + DIM, DIM);
  for (int i = 0; i < 3; i++) m3__search_response__free_unpacked(st_search_ok(&c, sid++, q, 2, DIM, 5), NULL);
  M3__SearchRequest s0 = M3__SEARCH_REQUEST__INIT;
  s0.queries = st_queries(q, 1, DIM);
  s0.n_queries = 1;
  s0.k = 0;
  st_call(&c, M3_METHOD_SEARCH, sid++, 0, &s0.base, NULL, 0, &r);
  ST_STATUS(r, M3__STATUS_CODE__INVALID_ARGUMENT);
  st_result_free(&r);
  st_queries_free(s0.queries, 1);
  /* 2 Retrieve OK (2 x 3 and 1 x 3 memories). */
  M3__RetrieveRequest rr = M3__RETRIEVE_REQUEST__INIT;
  rr.queries = st_queries(q, 2, DIM);
  rr.n_queries = 2;
  rr.k = 3;
  size_t memories = 0, payload = 0;
  for (int i = 0; i < 2; i++) {
    rr.n_queries = 2 - (size_t)i;
    st_call(&c, M3_METHOD_RETRIEVE, sid++, 0, &rr.base, NULL, 0, &r);
    ST_STATUS(r, 0);
    memories += r.n;
    for (size_t j = 0; j < r.n; j++) payload += r.items[j].f.att_len;
    st_result_free(&r);
  }
  st_queries_free(rr.queries, 2);
  /* 1 Fetch OK (2 found, 1 missing), 1 Fetch INVALID_ARGUMENT (reserved id). */
  uint64_t ids[3] = {1, 2, 99999};
  M3__FetchRequest fr = M3__FETCH_REQUEST__INIT;
  fr.ids = ids;
  fr.n_ids = 3;
  st_call(&c, M3_METHOD_FETCH, sid++, 0, &fr.base, NULL, 0, &r);
  ST_STATUS(r, 0);
  for (size_t j = 0; j < r.n; j++)
    if (r.items[j].f.att_len) memories++, payload += r.items[j].f.att_len;
  st_result_free(&r);
  ids[0] = UINT64_MAX;
  st_call(&c, M3_METHOD_FETCH, sid++, 0, &fr.base, NULL, 0, &r);
  ST_STATUS(r, M3__STATUS_CODE__INVALID_ARGUMENT);
  st_result_free(&r);
  /* 1 Health OK; 1 Put PERMISSION_DENIED (no admin token configured). */
  M3__HealthRequest hq = M3__HEALTH_REQUEST__INIT;
  st_call(&c, M3_METHOD_HEALTH, sid++, 0, &hq.base, NULL, 0, &r);
  ST_STATUS(r, 0);
  if (!((M3__HealthResponse *)r.resp)->serving) fail_msg("Health: not serving");
  st_result_free(&r);
  M3__PutRequest pr = M3__PUT_REQUEST__INIT;
  st_call(&c, M3_METHOD_PUT, sid++, 0, &pr.base, NULL, 0, &r);
  ST_STATUS(r, M3__STATUS_CODE__PERMISSION_DENIED);
  st_result_free(&r);
  /* 1 Stats OK (counts the calls before it). */
  st_call(&c, M3_METHOD_STATS, sid++, 0, &sr.base, NULL, 0, &r);
  ST_STATUS(r, 0);
  M3__StatsResponse *stats = (M3__StatsResponse *)r.resp;
  ST_EQ_U64(stats->records, COUNT);
  ST_EQ_U64(stats->index_vectors, COUNT);
  if (strcmp(stats->index_factory, "IDMap,Flat") != 0 || strcmp(stats->index_params, "") != 0)
    fail_msg("Stats: index_factory '%s' params '%s', want 'IDMap,Flat' and ''",
             stats->index_factory, stats->index_params);
  ST_EQ_U64(stats->memories_served, memories);
  ST_EQ_U64(stats->payload_bytes_served, payload);
  ST_EQ_U64(stats->calls, 12);
  for (size_t i = 0; i < stats->n_methods; i++)
    if (!strcmp(stats->methods[i]->method, "Search")) {
      ST_EQ_U64(stats->methods[i]->calls, 4);
      ST_EQ_U64(stats->methods[i]->errors, 1);
    }
  st_result_free(&r);

  char *m;
  int code = st_http_get(srv.http_port, "/metrics", &m);
  ST_EQ_U64(code, 200);
  size_t samples = st_metrics_check(m);
  if (samples < 20) fail_msg("/metrics: only %zu samples", samples);
  /* Every sample's metric family has a TYPE line. */
  for (const char *p = m; *p;) {
    const char *nl = strchr(p, '\n');
    if (*p != '#') {
      char name[128];
      size_t n = strcspn(p, "{ ");
      snprintf(name, sizeof name, "%.*s", (int)n, p);
      /* histogram samples belong to the family without their suffix */
      static const char *const sfx[] = {"_bucket", "_sum", "_count"};
      for (int k = 0; k < 3; k++) {
        size_t nl_ = strlen(name), ns = strlen(sfx[k]);
        if (nl_ > ns && !strcmp(name + nl_ - ns, sfx[k]) && strstr(m, "histogram")) {
          char fam[128];
          snprintf(fam, sizeof fam, "# TYPE %.*s histogram", (int)(nl_ - ns), name);
          if (strstr(m, fam)) name[nl_ - ns] = '\0';
        }
      }
      char type[200];
      snprintf(type, sizeof type, "# TYPE %s ", name);
      ST_CONTAINS(m, type);
    }
    p = nl + 1;
  }
  EXPECT_METRIC(m, "m3_calls_total{method=\"Hello\",status=\"OK\"}", 1);
  EXPECT_METRIC(m, "m3_calls_total{method=\"Stats\",status=\"UNAUTHENTICATED\"}", 1);
  EXPECT_METRIC(m, "m3_calls_total{method=\"Stats\",status=\"OK\"}", 1);
  EXPECT_METRIC(m, "m3_calls_total{method=\"Search\",status=\"OK\"}", 3);
  EXPECT_METRIC(m, "m3_calls_total{method=\"Search\",status=\"INVALID_ARGUMENT\"}", 1);
  EXPECT_METRIC(m, "m3_calls_total{method=\"Retrieve\",status=\"OK\"}", 2);
  EXPECT_METRIC(m, "m3_calls_total{method=\"Fetch\",status=\"OK\"}", 1);
  EXPECT_METRIC(m, "m3_calls_total{method=\"Fetch\",status=\"INVALID_ARGUMENT\"}", 1);
  EXPECT_METRIC(m, "m3_calls_total{method=\"Health\",status=\"OK\"}", 1);
  EXPECT_METRIC(m, "m3_calls_total{method=\"Put\",status=\"PERMISSION_DENIED\"}", 1);
  /* Nothing else was counted. */
  double total = 0;
  for (const char *p = strstr(m, "\nm3_calls_total{"); p; p = strstr(p + 1, "\nm3_calls_total{"))
    total += strtod(strchr(p, '}') + 2, NULL);
  if (total != 13) fail_msg("m3_calls_total sums to %g, want 13", total);

  const char *names[] = {"Hello", "Search", "Retrieve", "Fetch", "Stats", "Health", "Put", "Delete"};
  const int calls[] = {1, 4, 2, 2, 2, 1, 1, 0};
  for (int i = 0; i < 8; i++) {
    char series[256];
    snprintf(series, sizeof series, "m3_call_duration_seconds_count{method=\"%s\"}", names[i]);
    EXPECT_METRIC(m, series, calls[i]);
    snprintf(series, sizeof series, "m3_call_duration_seconds_bucket{method=\"%s\",le=\"+Inf\"}", names[i]);
    EXPECT_METRIC(m, series, calls[i]);
    /* cumulative buckets */
    double prev = 0;
    char prefix[128];
    snprintf(prefix, sizeof prefix, "m3_call_duration_seconds_bucket{method=\"%s\",le=", names[i]);
    int nb = 0;
    for (const char *p = strstr(m, prefix); p; p = strstr(p + 1, prefix)) {
      double v = strtod(strchr(p, '}') + 2, NULL);
      if (v < prev) fail_msg("%s histogram is not cumulative at '%.80s'", names[i], p);
      prev = v;
      nb++;
    }
    if (nb < 2) fail_msg("%s histogram has %d buckets", names[i], nb);
  }
  EXPECT_METRIC(m, "m3_connections", 1);
  EXPECT_METRIC(m, "m3_calls_in_flight", 0);
  EXPECT_METRIC(m, "m3_store_records", COUNT);
  EXPECT_METRIC(m, "m3_index_vectors", COUNT);
  EXPECT_METRIC(m, "m3_draining", 0);
  EXPECT_METRIC(m, "m3_memories_served_total", memories);
  EXPECT_METRIC(m, "m3_payload_bytes_served_total", payload);
  EXPECT_METRIC(m, "m3_connections_accepted_total", 1);
  /* the one missing id of the Fetch; no damage; 3 Searches + 2 Retrieves,
   * one at a time: 5 index searches */
  EXPECT_METRIC(m, "m3_items_not_found_total", 1);
  EXPECT_METRIC(m, "m3_items_data_loss_total", 0);
  EXPECT_METRIC(m, "m3_search_batches_total", 5);
  EXPECT_METRIC(m, "m3_index_search_duration_seconds_count", 5);
  if (st_metric(m, "m3_bytes_sent_total", NULL) < payload)
    fail_msg("m3_bytes_sent_total below the payload bytes");
  free(m);

  code = st_http_get(srv.http_port, "/healthz", NULL);
  ST_EQ_U64(code, 200);
  code = st_http_get(srv.http_port, "/readyz", NULL);
  ST_EQ_U64(code, 200);
  code = st_http_get(srv.http_port, "/metrics?x=1", NULL);
  ST_EQ_U64(code, 200);
  code = st_http_get(srv.http_port, "/no/such/path", NULL);
  ST_EQ_U64(code, 404);
  code = st_http_raw(srv.http_port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", NULL);
  ST_EQ_U64(code, 405);
  code = st_http_raw(srv.http_port, "\r\n\r\n", NULL);
  ST_EQ_U64(code, 400);
  /* An m3 frame (what a client pointed at this port sends) ends no header:
   * answered 400 at once, not held until a blank line that never comes. */
  code = st_http_raw(srv.http_port, "M3\x01\x01 frame bytes", NULL);
  ST_EQ_U64(code, 400);

  st_conn_close(&c);
  st_server_stop(&srv, 30000);
  m3t_rmrf(dir);
  free(dir);
}

/* The counters test_metrics_move follows, read from one scrape. */
typedef struct moving {
  double not_found, data_loss, reads, reads_sum, searches, searches_sum, batches, fds, cpu;
} moving;

static moving scrape(const st_server *srv) {
  char *m;
  int code = st_http_get(srv->http_port, "/metrics", &m);
  ST_EQ_U64(code, 200);
  st_metrics_check(m);
  moving v = {
      st_metric(m, "m3_items_not_found_total", NULL),
      st_metric(m, "m3_items_data_loss_total", NULL),
      st_metric(m, "m3_store_read_duration_seconds_count", NULL),
      st_metric(m, "m3_store_read_duration_seconds_sum", NULL),
      st_metric(m, "m3_index_search_duration_seconds_count", NULL),
      st_metric(m, "m3_index_search_duration_seconds_sum", NULL),
      st_metric(m, "m3_search_batches_total", NULL),
      st_metric(m, "process_open_fds", NULL),
      st_metric(m, "process_cpu_seconds_total", NULL),
  };
  /* both histograms: cumulative buckets ending in +Inf = _count */
  static const char *const hist[] = {"m3_store_read_duration_seconds",
                                     "m3_index_search_duration_seconds"};
  for (int h = 0; h < 2; h++) {
    char prefix[128], inf[160], cnt[160];
    snprintf(prefix, sizeof prefix, "\n%s_bucket{le=", hist[h]);
    snprintf(inf, sizeof inf, "%s_bucket{le=\"+Inf\"}", hist[h]);
    snprintf(cnt, sizeof cnt, "%s_count", hist[h]);
    double prev = 0;
    int nb = 0;
    for (const char *p = strstr(m, prefix); p; p = strstr(p + 1, prefix), nb++) {
      double b = strtod(strchr(p, '}') + 2, NULL);
      if (b < prev) fail_msg("%s: buckets not cumulative at '%.60s'", hist[h], p + 1);
      prev = b;
    }
    if (nb < 10) fail_msg("%s: %d buckets", hist[h], nb);
    if (st_metric(m, inf, NULL) != st_metric(m, cnt, NULL))
      fail_msg("%s: +Inf bucket %g != _count %g", hist[h], st_metric(m, inf, NULL),
               st_metric(m, cnt, NULL));
  }
  free(m);
  return v;
}

#define EXPECT_MOVED(what, before, after, field, want)                                      \
  do {                                                                                      \
    double d_ = (after).field - (before).field;                                             \
    if (d_ != (double)(want))                                                               \
      fail_msg("%s: %s moved by %g, want %g", what, #field, d_, (double)(want));             \
  } while (0)

/* A Fetch of ids that must end OK; *loss and *missing count its items by
 * status. */
static void fetch_items(st_conn *c, uint32_t *sid, uint64_t *ids, size_t n, size_t *ok,
                        size_t *missing, size_t *loss) {
  M3__FetchRequest fr = M3__FETCH_REQUEST__INIT;
  fr.ids = ids;
  fr.n_ids = n;
  st_result r;
  st_call(c, M3_METHOD_FETCH, (*sid)++, 0, &fr.base, NULL, 0, &r);
  ST_STATUS(r, 0);
  *ok = *missing = *loss = 0;
  for (size_t j = 0; j < r.n; j++) {
    M3__Memory *mem = st_memory(&r.items[j]);
    if (mem->status == M3__STATUS_CODE__OK) (*ok)++;
    else if (mem->status == M3__STATUS_CODE__NOT_FOUND) (*missing)++;
    else if (mem->status == M3__STATUS_CODE__DATA_LOSS) (*loss)++;
    m3__memory__free_unpacked(mem, NULL);
  }
  st_result_free(&r);
}

#define FLIPPED 7

static void test_metrics_move(void **state) {
  (void)state;
  time_t t0 = time(NULL);
  char *dir = m3t_mkdtemp("metrics-move");
  char store[4200];
  snprintf(store, sizeof store, "%s/store", dir);
  st_gen_store(store, 64, DIM);
  { /* flip one byte in record FLIPPED's codes, in its segment file */
    m3_store_options o = {0};
    o.read_only = 1;
    m3_store *st;
    if (m3_store_open(store, &o, &st) != 0) fail_msg("open %s: %s", store, m3_errmsg());
    m3_location loc;
    if (m3_store_locate(st, FLIPPED, &loc) != 0) fail_msg("locate: %s", m3_errmsg());
    char path[4300];
    m3_store_segment_path(st, loc.segment, path, sizeof path);
    m3_store_close(st);
    int fd = open(path, O_RDWR);
    if (fd < 0) fail_msg("open %s", path);
    off_t at = (off_t)loc.offset + loc.mem_len - 3;
    uint8_t b;
    assert_int_equal(pread(fd, &b, 1, at), 1);
    b ^= 0x10;
    assert_int_equal(pwrite(fd, &b, 1, at), 1);
    close(fd);
  }
  const char *args[] = {"--no-sendfile", NULL};
  st_server srv;
  st_server_start(&srv, dir, store, args, NULL);

  /* m3_build_info: this build, value 1; process_*: plausible values */
  char *m;
  ST_EQ_U64(st_http_get(srv.http_port, "/metrics", &m), 200);
  char series[1024];
  snprintf(series, sizeof series, "m3_build_info{version=\"%s\",commit=\"%s\",options=\"%s\"}",
           M3_VERSION, M3_GIT_COMMIT, M3_BUILD_OPTIONS);
  EXPECT_METRIC(m, series, 1);
  double rss = st_metric(m, "process_resident_memory_bytes", NULL);
  if (rss < 1e6 || rss > 64e9) fail_msg("process_resident_memory_bytes %g", rss);
  double start = st_metric(m, "process_start_time_seconds", NULL);
  if (start < (double)t0 - 2 || start > (double)time(NULL) + 2)
    fail_msg("process_start_time_seconds %.2f, the test began at %lld", start, (long long)t0);
  double maxfds = st_metric(m, "process_max_fds", NULL);
  if (maxfds < st_metric(m, "process_open_fds", NULL) || maxfds < 64)
    fail_msg("process_max_fds %g", maxfds);
  if (st_metric(m, "process_cpu_seconds_total", NULL) < 0) fail_msg("process_cpu_seconds_total < 0");
  free(m);

  moving a = scrape(&srv), b;
  if (a.not_found || a.data_loss || a.reads || a.searches || a.batches)
    fail_msg("a fresh server: not_found %g data_loss %g reads %g searches %g batches %g", a.not_found,
             a.data_loss, a.reads, a.searches, a.batches);
  /* open descriptors: 6 more connections, each one more socket */
  st_conn more[6];
  for (int i = 0; i < 6; i++) st_conn_open(&more[i], srv.rpc_port);
  for (int i = 0; i < 6; i++) st_hello_ok(&more[i], 1, NULL); /* accepted by now */
  b = scrape(&srv);
  if (b.fds < a.fds + 6) fail_msg("process_open_fds %g after 6 connections, %g before", b.fds, a.fds);
  for (int i = 0; i < 6; i++) st_conn_close(&more[i]);

  st_conn c;
  st_conn_open(&c, srv.rpc_port);
  uint32_t sid = 1;
  st_hello_ok(&c, sid++, NULL);
  size_t ok, missing, loss;
  /* a missing id */
  a = scrape(&srv);
  uint64_t absent = 99990;
  fetch_items(&c, &sid, &absent, 1, &ok, &missing, &loss);
  assert_true(missing == 1 && ok == 0 && loss == 0);
  b = scrape(&srv);
  EXPECT_MOVED("fetch of a missing id", a, b, not_found, 1);
  EXPECT_MOVED("fetch of a missing id", a, b, data_loss, 0);
  /* (the read histogram takes a sample for the missing item too: its
   * catalog lookup runs as the item's read) */
  /* the flipped record */
  uint64_t flipped = FLIPPED;
  fetch_items(&c, &sid, &flipped, 1, &ok, &missing, &loss);
  if (loss != 1) fail_msg("fetch of the flipped record: %zu ok %zu missing %zu DATA_LOSS", ok, missing, loss);
  a = scrape(&srv);
  EXPECT_MOVED("fetch of the flipped record", b, a, data_loss, 1);
  EXPECT_MOVED("fetch of the flipped record", b, a, not_found, 0);
  EXPECT_MOVED("fetch of the flipped record", b, a, reads, 1);
  /* three intact ids */
  uint64_t three[3] = {1, 2, 3};
  fetch_items(&c, &sid, three, 3, &ok, &missing, &loss);
  assert_true(ok == 3);
  b = scrape(&srv);
  EXPECT_MOVED("fetch of 3 ids", a, b, reads, 3);
  EXPECT_MOVED("fetch of 3 ids", a, b, not_found, 0);
  EXPECT_MOVED("fetch of 3 ids", a, b, data_loss, 0);
  if (!(b.reads_sum > a.reads_sum)) fail_msg("store read _sum did not grow (%g)", b.reads_sum);
  EXPECT_MOVED("fetches", a, b, searches, 0);
  /* a Search: one index search, no reads */
  float q[DIM];
  uint64_t seed = 11;
  m3t_rand_unit(&seed, q, DIM);
  m3__search_response__free_unpacked(st_search_ok(&c, sid++, q, 1, DIM, 5), NULL);
  a = scrape(&srv);
  EXPECT_MOVED("a Search", b, a, searches, 1);
  EXPECT_MOVED("a Search", b, a, batches, 1);
  EXPECT_MOVED("a Search", b, a, reads, 0);
  if (!(a.searches_sum > b.searches_sum)) fail_msg("index search _sum did not grow (%g)", a.searches_sum);
  /* a Retrieve of k = 4 (the flipped record is far from q or not: counted
   * either way as a read) */
  m3t_rand_unit(&seed, q, DIM);
  M3__RetrieveRequest rr = M3__RETRIEVE_REQUEST__INIT;
  rr.queries = st_queries(q, 1, DIM);
  rr.n_queries = 1;
  rr.k = 4;
  st_result r;
  st_call(&c, M3_METHOD_RETRIEVE, sid++, 0, &rr.base, NULL, 0, &r);
  ST_STATUS(r, 0);
  ST_EQ_U64(r.n, 4);
  st_result_free(&r);
  st_queries_free(rr.queries, 1);
  b = scrape(&srv);
  EXPECT_MOVED("a Retrieve of 4", a, b, searches, 1);
  EXPECT_MOVED("a Retrieve of 4", a, b, reads, 4);
  if (b.searches != b.batches) fail_msg("index searches %g != m3_search_batches_total %g", b.searches, b.batches);

  /* CPU seconds move while the server works (ticks of 10 ms: keep calling,
   * at most 20 s) */
  a = scrape(&srv);
  long long end = m3t_now_ms() + 20000;
  for (;;) {
    for (int i = 0; i < 50; i++) {
      fetch_items(&c, &sid, three, 3, &ok, &missing, &loss);
      m3__search_response__free_unpacked(st_search_ok(&c, sid++, q, 1, DIM, 5), NULL);
    }
    b = scrape(&srv);
    if (b.cpu > a.cpu) break;
    if (m3t_now_ms() > end) fail_msg("process_cpu_seconds_total stayed at %g through 20 s of calls", a.cpu);
  }

  st_conn_close(&c);
  st_server_stop(&srv, 30000);
  m3t_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_metrics), cmocka_unit_test(test_metrics_move)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
