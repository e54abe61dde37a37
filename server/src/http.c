/*
 * The HTTP port: Prometheus /metrics, /healthz (the process is up) and
 * /readyz (it serves calls: store and index open, not draining). A deliberately
 * small HTTP/1.1 responder: GET only, one request per connection.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "m3/log.h"
#include "server.h"
#include "tls.h"

#define HTTP_TIMEOUT_MS 10000 /* a scraper that says nothing is hung up on */

struct http_conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  int refs;    /* handles not yet closed */
  int closing; /* http_close ran: no longer counted in s->http_nconns */
  server *s;
  http_conn *next, *prev; /* s->http_conns, until closed */
  char buf[4096];
  size_t len;
  uv_write_t wreq;
  char *out;
};

static void http_closed(uv_handle_t *h) {
  http_conn *hc = h->data;
  if (--hc->refs > 0) return;
  if (hc->prev) hc->prev->next = hc->next;
  else hc->s->http_conns = hc->next;
  if (hc->next) hc->next->prev = hc->prev;
  free(hc->out);
  free(hc);
}

static void http_close(http_conn *hc) {
  /* Uncounted at once, not in the close callback: the descriptor is closed
   * now, and a client that saw it close may connect again within this same
   * loop pass, before the callbacks run; it must not meet the cap. */
  if (!hc->closing) {
    hc->closing = 1;
    hc->s->http_nconns--;
  }
  if (!uv_is_closing((uv_handle_t *)&hc->tcp)) uv_close((uv_handle_t *)&hc->tcp, http_closed);
  if (!uv_is_closing((uv_handle_t *)&hc->timer)) uv_close((uv_handle_t *)&hc->timer, http_closed);
}

void http_close_all(server *s) {
  for (http_conn *hc = s->http_conns; hc; hc = hc->next) http_close(hc);
}

static void http_timeout(uv_timer_t *t) { http_close(t->data); }

static void http_written(uv_write_t *w, int status) {
  (void)status;
  http_conn *hc = w->data;
  http_close(hc);
}

static void respond(http_conn *hc, int code, const char *reason, const char *ctype,
                    const char *body, size_t blen) {
  size_t cap = blen + 256;
  hc->out = malloc(cap);
  if (hc->out == NULL) {
    http_close(hc);
    return;
  }
  int n = snprintf(hc->out, cap,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n",
                   code, reason, ctype, blen);
  memcpy(hc->out + n, body, blen);
  uv_buf_t b = uv_buf_init(hc->out, (unsigned)(n + blen));
  uv_read_stop((uv_stream_t *)&hc->tcp);
  hc->wreq.data = hc;
  if (uv_write(&hc->wreq, (uv_stream_t *)&hc->tcp, &b, 1, http_written) != 0)
    http_close(hc);
}

static void handle(http_conn *hc) {
  server *s = hc->s;
  char method[8], path[256];
  if (sscanf(hc->buf, "%7s %255s", method, path) != 2) {
    respond(hc, 400, "Bad Request", "text/plain", "bad request\n", 12);
    return;
  }
  char *q = strchr(path, '?');
  if (q) *q = '\0';
  if (strcmp(method, "GET") != 0) {
    respond(hc, 405, "Method Not Allowed", "text/plain", "GET only\n", 9);
  } else if (!strcmp(path, "/metrics")) {
    metrics_gauges g = {0};
    g.connections = s->nconns;
    g.inflight = s->inflight;
    g.records = s->records;
    g.segment_bytes = m3_store_segment_bytes(s->store);
    g.index_vectors = s->index ? s->index_vectors : 0; /* no index lock on the loop */
    m3_store_cache_counters(s->store, &g.cache_hits, &g.cache_misses, &g.cache_bytes);
    g.uptime_s = (now_ns() - s->started_ns) / 1000000000ull;
    g.draining = (uint64_t)s->draining;
    g.read_buffer_bytes = s->bufs_out * s->buf_cap;
    g.read_buffer_peak = s->bufs_peak * s->buf_cap;
    g.read_buffer_budget = s->bufs_max * s->buf_cap;
    g.calls_waiting_for_buffers = s->fetch_waiting;
    g.search_queries_held = s->search_held;
    g.search_budget = s->cfg.search_budget;
    g.hello_failures = s->auth.failures;
    g.hello_limited = s->auth.limited;
    if (s->tls) {
      const tls_counters *tc = tls_server_counters(s->tls);
      g.tls = 1;
      g.tls_handshakes = tc->handshakes;
      g.tls_handshake_failures = tc->handshake_failures;
      g.tls_ktls_send = tc->ktls_send;
      g.tls_reloads = tc->reloads;
      g.tls_reload_failures = tc->reload_failures;
    }
    g.io_backend = m3_store_io_backend(s->store);
    g.embedder = s->embedder;
    size_t len;
    char *text = metrics_render(&s->m, &g, &len);
    respond(hc, 200, "OK", "text/plain; version=0.0.4", text ? text : "", text ? len : 0);
    free(text);
  } else if (!strcmp(path, "/healthz")) {
    respond(hc, 200, "OK", "text/plain", "ok\n", 3);
  } else if (!strcmp(path, "/readyz")) {
    if (s->draining) respond(hc, 503, "Service Unavailable", "text/plain", "draining\n", 9);
    else respond(hc, 200, "OK", "text/plain", "ready\n", 6);
  } else {
    respond(hc, 404, "Not Found", "text/plain", "not found\n", 10);
  }
}

static void http_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  http_conn *hc = h->data;
  *buf = uv_buf_init(hc->buf + hc->len, (unsigned)(sizeof hc->buf - 1 - hc->len));
}

/* Whether the first bytes cannot start an HTTP request line (a method of
 * capital letters, then a space): an m3 client's Hello ("M3" + binary) sent
 * to this port then gets its 400 at once, which it reports as "this port
 * speaks HTTP", rather than a wait for a blank line that never comes. */
static int not_http(const char *b, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (b[i] == ' ') return i == 0;
    if (b[i] < 'A' || b[i] > 'Z') return 1;
  }
  return 0;
}

static void http_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  http_conn *hc = st->data;
  if (n < 0) {
    http_close(hc);
    return;
  }
  hc->len += (size_t)n;
  hc->buf[hc->len] = '\0';
  if (not_http(hc->buf, hc->len))
    respond(hc, 400, "Bad Request", "text/plain", "not an HTTP request\n", 20);
  else if (strstr(hc->buf, "\r\n\r\n") || strstr(hc->buf, "\n\n")) handle(hc);
  else if (hc->len >= sizeof hc->buf - 1)
    respond(hc, 431, "Request Header Fields Too Large", "text/plain", "too large\n", 10);
}

static void http_accept(uv_stream_t *l, int status) {
  if (status < 0) return;
  server *s = l->data;
  http_conn *hc = calloc(1, sizeof *hc);
  if (hc == NULL) return;
  hc->s = s;
  hc->refs = 2;
  uv_tcp_init(s->loop, &hc->tcp);
  hc->tcp.data = hc;
  uv_timer_init(s->loop, &hc->timer);
  hc->timer.data = hc;
  uv_timer_start(&hc->timer, http_timeout, HTTP_TIMEOUT_MS, 0);
  hc->next = s->http_conns;
  if (hc->next) hc->next->prev = hc;
  s->http_conns = hc;
  s->http_nconns++;
  if (uv_accept(l, (uv_stream_t *)&hc->tcp) != 0) {
    http_close(hc);
  } else if (s->http_nconns > s->cfg.max_http_connections) {
    /* Descriptors are shared with the RPC listener: a scraper flood must
     * not take them all. Closed at once, unread. */
    s->m.http_refused++;
    M3_WARN("server", "http: refused a connection: %u open (--max-http-connections)",
            s->cfg.max_http_connections);
    http_close(hc);
  } else if (uv_read_start((uv_stream_t *)&hc->tcp, http_alloc, http_read) != 0) {
    http_close(hc);
  }
}

int http_start(server *s) {
  s->http_listener.data = s;
  return uv_listen((uv_stream_t *)&s->http_listener, 64, http_accept);
}
