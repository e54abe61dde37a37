/* Prometheus text rendering of the server's counters; see metrics.h. */
#include "metrics.h"

#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "m3/version.h"

const double metrics_bounds[M3_NBUCKETS] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                            0.005,   0.01,   0.025,   0.05,   0.1,   0.25,
                                            0.5,     1.0,    2.5,     INFINITY};

const double metrics_hist_bounds[M3_HIST_NB] = {
    1e-6,  2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
    1e-2,  2.5e-2, 5e-2, 0.1,  0.25,   0.5,  1.0,  2.5,    5.0,  10.0, INFINITY};

void metrics_hist_observe(metrics_hist *h, double seconds) {
  if (!(seconds >= 0)) seconds = 0;
  int b = 0;
  while (b < M3_HIST_NB - 1 && seconds > metrics_hist_bounds[b]) b++;
  h->b[b]++;
  h->sum_s += seconds;
  h->count++;
}

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

static void put_hist(sbuf *b, const char *name, const char *help, const metrics_hist *h) {
  put(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
  uint64_t cum = 0;
  for (int k = 0; k < M3_HIST_NB; k++) {
    cum += h->b[k];
    if (k == M3_HIST_NB - 1) put(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    else put(b, "%s_bucket{le=\"%g\"} %llu\n", name, metrics_hist_bounds[k], (unsigned long long)cum);
  }
  put(b, "%s_sum %.9f\n%s_count %llu\n", name, h->sum_s, name, (unsigned long long)h->count);
}

/* The Prometheus client libraries' standard process metrics, from /proc:
 * resident memory, CPU seconds, open and maximum descriptors, start time. A
 * value /proc does not give (another OS, a masked /proc) is left out. */
static void put_process(sbuf *b) {
  long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
  char buf[1024];
  FILE *f = fopen("/proc/self/stat", "r");
  size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
  if (f) fclose(f);
  buf[n] = '\0';
  /* Fields after "(comm)", which may hold spaces: from the last ')'. */
  char *p = strrchr(buf, ')');
  unsigned long long utime = 0, stime = 0, start = 0, rss = 0;
  int ok = p && tick > 0 &&
           sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d "
                  "%*d %*d %llu %*u %llu", &utime, &stime, &start, &rss) == 4;
  if (ok) {
    put(b, "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
           "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.2f\n",
        (double)(utime + stime) / (double)tick);
    put(b, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
           "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %llu\n",
        rss * (unsigned long long)page);
    /* start: clock ticks after boot; boot time: /proc/stat's btime. */
    unsigned long long btime = 0;
    FILE *st = fopen("/proc/stat", "r");
    char line[256];
    while (st && fgets(line, sizeof line, st))
      if (sscanf(line, "btime %llu", &btime) == 1) break;
    if (st) fclose(st);
    if (btime)
      put(b, "# HELP process_start_time_seconds Start time of the process since unix epoch in "
             "seconds.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %.2f\n",
          (double)btime + (double)start / (double)tick);
  }
  DIR *d = opendir("/proc/self/fd");
  if (d) {
    unsigned long long fds = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
      if (e->d_name[0] != '.') fds++;
    closedir(d);
    put(b, "# HELP process_open_fds Number of open file descriptors.\n"
           "# TYPE process_open_fds gauge\nprocess_open_fds %llu\n", fds - 1); /* less opendir's */
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
    put(b, "# HELP process_max_fds Maximum number of open file descriptors.\n"
           "# TYPE process_max_fds gauge\nprocess_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
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
  GAUGE("m3_tls", "1 when the RPC port speaks TLS (--tls-cert).", g->tls);
  COUNTER("m3_tls_handshakes_total", "TLS handshakes completed.", g->tls_handshakes);
  COUNTER("m3_tls_handshake_failures_total",
          "TLS handshakes refused (a bad or missing client certificate, no common version).",
          g->tls_handshake_failures);
  COUNTER("m3_tls_ktls_send_connections_total",
          "TLS connections whose sends the kernel encrypts (kTLS: sendfile keeps working).",
          g->tls_ktls_send);
  COUNTER("m3_tls_file_bytes_read_total",
          "Memory bytes read into user space to be encrypted there (TLS without kTLS).",
          m->tls_file_bytes_read);
  COUNTER("m3_tls_plain_refused_total", "Connections to the TLS port that did not speak TLS.",
          m->tls_plain_refused);
  COUNTER("m3_tls_reloads_total", "Certificate and key reloads (SIGHUP) that took.", g->tls_reloads);
  COUNTER("m3_tls_reload_failures_total", "Reloads refused (the old certificate stays).",
          g->tls_reload_failures);
  GAUGE("m3_http_tls", "1 when the HTTP port speaks TLS (--http-tls).", g->http_tls);
  COUNTER("m3_http_tls_handshakes_total", "TLS handshakes completed on the HTTP port.",
          g->http_tls_handshakes);
  COUNTER("m3_http_tls_refused_total",
          "HTTP connections refused by --http-tls: plain HTTP, or a failed handshake.",
          m->http_tls_refused);
  COUNTER("m3_items_not_found_total",
          "Fetch and Retrieve items answered NOT_FOUND (the id is not in the store).",
          m->items_not_found);
  COUNTER("m3_items_data_loss_total",
          "Fetch and Retrieve items answered DATA_LOSS (a record failed its checksum).",
          m->items_data_loss);
  COUNTER("m3_search_fillers_dropped_total",
          "Text-query results left out for scoring <= 0 (Query.allow_fillers keeps them).",
          m->fillers_dropped);
  put_hist(&b, "m3_store_read_duration_seconds",
           "Store reads of Fetch and Retrieve, per memory, from the read's start to its data.",
           &m->store_read);
  put_hist(&b, "m3_index_search_duration_seconds",
           "Retrieval index searches (one per micro-batch of queries).", &m->index_search);
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
  put(&b, "# HELP m3_build_info The server's build: version, git commit, build options.\n"
          "# TYPE m3_build_info gauge\n"
          "m3_build_info{version=\"%s\",commit=\"%s\",options=\"%s\"} 1\n",
      M3_VERSION, M3_GIT_COMMIT, M3_BUILD_OPTIONS);
  put(&b, "# HELP m3_store_embedder How the served store's embeddings were made (its encode.json).\n"
          "# TYPE m3_store_embedder gauge\nm3_store_embedder{embedder=\"%s\"} 1\n",
      g->embedder ? g->embedder : "unknown");
  put_process(&b);
#undef COUNTER
#undef GAUGE
  *len = b.len;
  return b.p;
}
