/* Prometheus text rendering of the server's counters; see metrics.h. */
#include "metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double metrics_bounds[M3_NBUCKETS] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                            0.005,   0.01,   0.025,   0.05,   0.1,   0.25,
                                            0.5,     1.0,    2.5,     INFINITY};

void metrics_observe(metrics *m, unsigned method, int status, double seconds) {
  if (method >= M3_METHOD_COUNT) method = 0;
  if (status < 0 || status >= M3_NSTATUS) status = 2; /* UNKNOWN */
  m->calls[method][status]++;
  int b = 0;
  while (b < M3_NBUCKETS - 1 && seconds > metrics_bounds[b]) b++;
  m->lat_buckets[method][b]++;
  m->lat_sum_s[method] += seconds;
  m->lat_count[method]++;
}

typedef struct sbuf {
  char *p;
  size_t len, cap;
} sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (b->p && b->len + (size_t)n < b->cap) {
      b->len += (size_t)n;
      return;
    }
    size_t cap = b->cap ? b->cap * 2 : 8192;
    while (cap < b->len + (size_t)n + 1) cap *= 2;
    char *np = realloc(b->p, cap);
    if (np == NULL) return;
    b->p = np;
    b->cap = cap;
  }
}

static const char *method_name(unsigned m) { return m ? m3_methods[m].name : "unknown"; }

char *metrics_render(const metrics *m, const metrics_gauges *g, size_t *len) {
  sbuf b = {0};
  put(&b, "# HELP m3_calls_total Calls finished, by method and gRPC status.\n"
          "# TYPE m3_calls_total counter\n");
  for (unsigned i = 0; i < M3_METHOD_COUNT; i++)
    for (int st = 0; st < M3_NSTATUS; st++)
      if (m->calls[i][st])
        put(&b, "m3_calls_total{method=\"%s\",status=\"%s\"} %llu\n", method_name(i),
            m3_status_name(st), (unsigned long long)m->calls[i][st]);
  put(&b, "# HELP m3_call_duration_seconds Call latency from request to last frame queued.\n"
          "# TYPE m3_call_duration_seconds histogram\n");
  for (unsigned i = 1; i < M3_METHOD_COUNT; i++) {
    uint64_t cum = 0;
    for (int k = 0; k < M3_NBUCKETS; k++) {
      cum += m->lat_buckets[i][k];
      if (k == M3_NBUCKETS - 1)
        put(&b, "m3_call_duration_seconds_bucket{method=\"%s\",le=\"+Inf\"} %llu\n",
            method_name(i), (unsigned long long)cum);
      else
        put(&b, "m3_call_duration_seconds_bucket{method=\"%s\",le=\"%g\"} %llu\n", method_name(i),
            metrics_bounds[k], (unsigned long long)cum);
    }
    put(&b, "m3_call_duration_seconds_sum{method=\"%s\"} %.9f\n", method_name(i), m->lat_sum_s[i]);
    put(&b, "m3_call_duration_seconds_count{method=\"%s\"} %llu\n", method_name(i),
        (unsigned long long)m->lat_count[i]);
  }
#define COUNTER(name, help, v)                                                     \
  put(&b, "# HELP " name " " help "\n# TYPE " name " counter\n" name " %llu\n",    \
      (unsigned long long)(v))
#define GAUGE(name, help, v)                                                       \
  put(&b, "# HELP " name " " help "\n# TYPE " name " gauge\n" name " %llu\n",      \
      (unsigned long long)(v))
  COUNTER("m3_memories_served_total", "Memories streamed by Retrieve and Fetch.", m->memories_served);
  COUNTER("m3_payload_bytes_served_total", "Memory record bytes streamed.", m->payload_bytes_served);
  COUNTER("m3_bytes_sent_total", "Bytes written to clients.", m->bytes_out);
  COUNTER("m3_bytes_received_total", "Bytes read from clients.", m->bytes_in);
  COUNTER("m3_connections_accepted_total", "Connections accepted.", m->connections_accepted);
  COUNTER("m3_connections_refused_total", "Connections closed at once (limit or draining).",
          m->connections_refused);
  COUNTER("m3_bad_frames_total", "Frames that broke the protocol.", m->bad_frames);
  COUNTER("m3_search_batches_total", "Index searches run (each serves one or more calls).",
          m->search_batches);
  COUNTER("m3_search_queries_total", "Queries searched.", m->search_queries);
  COUNTER("m3_search_refused_total", "Search and Retrieve calls refused: the search budget was spent.",
          m->search_refused);
  COUNTER("m3_hello_failures_total", "Hellos refused for a wrong token.", g->hello_failures);
  COUNTER("m3_hello_rate_limited_total",
          "Hellos refused unchecked: their address failed too often (--auth-fail-limit).",
          g->hello_limited);
  COUNTER("m3_http_connections_refused_total", "HTTP connections closed at once (the cap).",
          m->http_refused);
  COUNTER("m3_reads_deferred_total", "Loop read submissions put off while a store commit ran.",
          m->reads_deferred);
  COUNTER("m3_sendfile_bytes_total", "Memory bytes sent from the page cache without a copy.",
          m->sendfile_bytes);
  COUNTER("m3_sendfile_bounced_bytes_total",
          "Memory bytes meant for sendfile read into a buffer because the socket was full.",
          m->sendfile_bounced_bytes);
  COUNTER("m3_sendfile_cold_batches_total",
          "Batches of memories read into buffers instead of sent with sendfile: a record was not "
          "in the page cache.",
          m->sendfile_cold_batches);
  COUNTER("m3_slow_readers_closed_total",
          "Connections closed for draining their answers below the minimum rate.",
          m->slow_readers_closed);
  COUNTER("m3_cache_hits_total", "Hot-memory cache hits.", g->cache_hits);
  COUNTER("m3_cache_misses_total", "Hot-memory cache misses.", g->cache_misses);
  GAUGE("m3_connections", "Open client connections.", g->connections);
  GAUGE("m3_calls_in_flight", "Calls not yet finished.", g->inflight);
  GAUGE("m3_store_records", "Memories in the store.", g->records);
  GAUGE("m3_store_segment_bytes", "Bytes of the store's segment files.", g->segment_bytes);
  GAUGE("m3_index_vectors", "Vectors in the retrieval index.", g->index_vectors);
  GAUGE("m3_cache_bytes", "Bytes held by the hot-memory cache.", g->cache_bytes);
  GAUGE("m3_uptime_seconds", "Seconds since the server started.", g->uptime_s);
  GAUGE("m3_draining", "1 while the server drains after SIGTERM.", g->draining);
  GAUGE("m3_read_buffer_bytes", "Bytes of read buffers lent to calls.", g->read_buffer_bytes);
  GAUGE("m3_read_buffer_bytes_peak", "Most bytes of read buffers lent at once.",
        g->read_buffer_peak);
  GAUGE("m3_read_buffer_budget_bytes", "Most bytes of read buffers (--fetch-memory-mb).",
        g->read_buffer_budget);
  GAUGE("m3_calls_waiting_for_buffers", "Fetches waiting for read buffers.",
        g->calls_waiting_for_buffers);
  GAUGE("m3_search_queries_held", "Queries queued or being searched.", g->search_queries_held);
  GAUGE("m3_search_budget_queries", "Most queries queued or searched at once (--search-budget).",
        g->search_budget);
  put(&b, "# HELP m3_io_backend The store's read backend.\n# TYPE m3_io_backend gauge\n"
          "m3_io_backend{backend=\"%s\"} 1\n", g->io_backend);
#undef COUNTER
#undef GAUGE
  *len = b.len;
  return b.p;
}
