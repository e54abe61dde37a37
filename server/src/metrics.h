/* Server metrics, rendered in the Prometheus text format on /metrics.
 * Updated on the loop thread only, so plain counters suffice. */
#ifndef M3_SERVER_METRICS_H
#define M3_SERVER_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "m3/frame.h"

#define M3_NSTATUS M3_STATUS_COUNT /* the gRPC codes (m3/status.h) */
#define M3_NBUCKETS 16

/* A latency histogram of one operation (store reads, index searches):
 * buckets from 1 us to 10 s (metrics_hist_bounds), rendered cumulative. */
#define M3_HIST_NB 23
typedef struct metrics_hist {
  uint64_t b[M3_HIST_NB]; /* per bucket, not cumulative */
  double sum_s;
  uint64_t count;
} metrics_hist;

extern const double metrics_hist_bounds[M3_HIST_NB]; /* the last is +Inf */

void metrics_hist_observe(metrics_hist *h, double seconds);

typedef struct metrics {
  uint64_t calls[M3_METHOD_COUNT][M3_NSTATUS];
  uint64_t lat_buckets[M3_METHOD_COUNT][M3_NBUCKETS]; /* cumulative at render */
  double lat_sum_s[M3_METHOD_COUNT];
  uint64_t lat_count[M3_METHOD_COUNT];
  uint64_t memories_served;
  uint64_t payload_bytes_served;
  uint64_t bytes_out;
  uint64_t bytes_in;
  uint64_t connections_accepted;
  uint64_t connections_refused;
  uint64_t bad_frames;
  uint64_t reads_deferred;   /* read submissions put off by a store commit */
  uint64_t sendfile_bytes;   /* memory bytes sent from the page cache (sendfile) */
  uint64_t sendfile_bounced_bytes; /* of those, read into a buffer: the socket was full */
  uint64_t sendfile_cold_batches;  /* batches read into buffers: not in the page cache */
  uint64_t slow_readers_closed; /* connections closed for draining too slowly */
  uint64_t tls_file_bytes_read; /* TLS without kTLS: memory bytes read to be sealed
                                   instead of sent with sendfile */
  uint64_t tls_plain_refused;  /* connections to the TLS port that spoke no TLS */
  uint64_t search_batches;
  uint64_t search_queries;
  uint64_t search_refused;   /* calls refused: the search budget was spent */
  uint64_t http_refused;     /* HTTP connections closed at once (the cap) */
  uint64_t http_tls_refused; /* --http-tls: plain requests and failed handshakes */
  uint64_t items_not_found;  /* Fetch/Retrieve items answered NOT_FOUND */
  uint64_t items_data_loss;  /* items answered DATA_LOSS (a corrupt record) */
  uint64_t fillers_dropped;  /* text-query results cut for scoring <= 0 */
  metrics_hist store_read;   /* per item: read started -> read done */
  metrics_hist index_search; /* per index search (one micro-batch) */
} metrics;

/* Latency bucket upper bounds in seconds (the last is +Inf). */
extern const double metrics_bounds[M3_NBUCKETS];

void metrics_observe(metrics *m, unsigned method, int status, double seconds);

/* Append the Prometheus text of m (plus the gauges given) to a malloc'ed
 * string; *len receives its length. */
typedef struct metrics_gauges {
  uint64_t connections, inflight, records, segment_bytes, index_vectors, cache_hits,
      cache_misses, cache_bytes, uptime_s, draining, read_buffer_bytes, read_buffer_peak, read_buffer_budget,
      calls_waiting_for_buffers, search_queries_held, search_budget, hello_failures, hello_limited;
  int tls;                   /* the RPC port speaks TLS */
  uint64_t tls_handshakes, tls_handshake_failures, tls_ktls_send, tls_reloads,
      tls_reload_failures;
  int http_tls;              /* the HTTP port speaks TLS (--http-tls) */
  uint64_t http_tls_handshakes;
  const char *io_backend;
  const char *embedder; /* how the store was embedded (m3_store_embedder) */
} metrics_gauges;

char *metrics_render(const metrics *m, const metrics_gauges *g, size_t *len);

#endif /* M3_SERVER_METRICS_H */
