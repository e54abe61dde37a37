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
 */
#include <stdlib.h>

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

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_metrics)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
