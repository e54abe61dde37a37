/*
 * The HTTP port: Prometheus /metrics, /healthz (the process is up) and
 * /readyz (it serves calls: store and index open, not draining). A deliberately
 * small HTTP/1.1 responder: GET only, one request per connection.
 *
 * With --http-tls the port speaks TLS 1.3 (tls.h, the RPC port's certificate;
 * client certificates only with --http-tls-ca): ciphertext read from the
 * socket goes through the connection's tls_conn, the request is parsed from
 * the plaintext, the answer is sealed and ends with a close_notify. A plain
 * HTTP request to it gets a plain 400 saying to use https://.
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
  int answered; /* respond ran: whatever is read now is dropped */
  server *s;
  http_conn *next, *prev; /* s->http_conns, until closed */
  char buf[4096];         /* the request (plaintext) */
  size_t len;
  tls_conn *tls;          /* --http-tls: this connection's TLS; NULL: plain */
  int seen;               /* bytes came: the first were looked at */
  char peer[64];
  uint8_t cbuf[16384];    /* --http-tls: ciphertext just read */
};

/* One write in flight: its bytes are freed when it is done. */
typedef struct http_write {
  uv_write_t req;
  http_conn *hc;
  void *data;
  int last; /* close the connection once written */
} http_write;

static void http_closed(uv_handle_t *h) {
  http_conn *hc = h->data;
  if (--hc->refs > 0) return;
  if (hc->prev) hc->prev->next = hc->next;
  else hc->s->http_conns = hc->next;
  if (hc->next) hc->next->prev = hc->prev;
  tls_conn_free(hc->tls);
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

/* Runs before the handle's close callback, also when uv_close cancelled
 * the write (libuv flushes a closing stream's write queue first). */
static void http_written(uv_write_t *w, int status) {
  http_write *hw = (http_write *)w;
  http_conn *hc = hw->hc;
  int last = hw->last;
  free(hw->data);
  free(hw);
  if (last || status < 0) http_close(hc);
}

/* Write n bytes of data (malloc'ed; freed once written); last: then close. */
static void http_send(http_conn *hc, void *data, size_t n, int last) {
  http_write *hw = malloc(sizeof *hw);
  if (hw == NULL || hc->closing) {
    free(hw);
    free(data);
    http_close(hc);
    return;
  }
  hw->hc = hc;
  hw->data = data;
  hw->last = last;
  uv_buf_t b = uv_buf_init(data, (unsigned)n);
  if (uv_write(&hw->req, (uv_stream_t *)&hc->tcp, &b, 1, http_written) != 0) {
    free(data);
    free(hw);
    http_close(hc);
  }
}

/* Write what TLS has to send (handshake, alerts, sealed answer). */
static void tls_flush(http_conn *hc, int last) {
  uint8_t *out;
  size_t n = tls_conn_take(hc->tls, &out);
  if (n) http_send(hc, out, n, last);
  else if (last) http_close(hc);
}

static void respond(http_conn *hc, int code, const char *reason, const char *ctype,
                    const char *body, size_t blen) {
  hc->answered = 1;
  size_t cap = blen + 256;
  char *out = malloc(cap);
  if (out == NULL) {
    http_close(hc);
    return;
  }
  int n = snprintf(out, cap,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n",
                   code, reason, ctype, blen);
  memcpy(out + n, body, blen);
  uv_read_stop((uv_stream_t *)&hc->tcp);
  if (hc->tls == NULL || !tls_conn_done(hc->tls)) {
    http_send(hc, out, (size_t)n + blen, 1);
    return;
  }
  int rc = tls_conn_seal(hc->tls, out, (size_t)n + blen);
  free(out);
  if (rc != 0) {
    M3_WARN("server", "http %s: TLS: %s: closing", hc->peer, tls_conn_error(hc->tls));
    http_close(hc);
    return;
  }
  tls_conn_close_notify(hc->tls);
  tls_flush(hc, 1);
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
    if (s->http_tls) {
      const tls_counters *ht = tls_server_counters(s->http_tls);
      g.http_tls = 1;
      g.http_tls_handshakes = ht->handshakes;
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
  if (hc->tls) *buf = uv_buf_init((char *)hc->cbuf, sizeof hc->cbuf);
  else *buf = uv_buf_init(hc->buf + hc->len, (unsigned)(sizeof hc->buf - 1 - hc->len));
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

/* --http-tls: n bytes of ciphertext came; decrypt what they complete into
 * hc->buf. 0: go on with the request; -1: answered or closed. */
static int tls_input(http_conn *hc, size_t n) {
  server *s = hc->s;
  if (!hc->seen) {
    hc->seen = 1;
    /* A TLS connection opens with a handshake record (0x16); capital
     * letters are a plain HTTP request line. */
    if (hc->cbuf[0] != 0x16 && hc->cbuf[0] >= 'A' && hc->cbuf[0] <= 'Z') {
      s->m.http_tls_refused++;
      M3_INFO("server", "http %s: a plain HTTP request on the TLS port (--http-tls): refused",
              hc->peer);
      static const char msg[] = "this port speaks HTTPS (--http-tls): use https://\n";
      respond(hc, 400, "Bad Request", "text/plain", msg, sizeof msg - 1);
      return -1;
    }
  }
  if (tls_conn_input(hc->tls, hc->cbuf, n) != 0) {
    http_close(hc);
    return -1;
  }
  while (hc->len < sizeof hc->buf - 1) {
    long r = tls_conn_read(hc->tls, hc->buf + hc->len, sizeof hc->buf - 1 - hc->len, 1);
    if (r > 0) {
      hc->len += (size_t)r;
      continue;
    }
    if (r == 0) break;
    if (r == -2) {
      s->m.http_tls_refused++;
      M3_INFO("server", "http %s: %s: closing", hc->peer, tls_conn_error(hc->tls));
    }
    tls_flush(hc, 1); /* the alert, if any; then close */
    return -1;
  }
  tls_flush(hc, 0); /* the handshake's flight */
  return 0;
}

static void http_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  http_conn *hc = st->data;
  if (n < 0) {
    http_close(hc);
    return;
  }
  if (hc->answered || n == 0) return;
  if (hc->tls) {
    if (tls_input(hc, (size_t)n) != 0) return;
  } else {
    hc->len += (size_t)n;
  }
  hc->buf[hc->len] = '\0';
  if (not_http(hc->buf, hc->len))
    respond(hc, 400, "Bad Request", "text/plain", "not an HTTP request\n", 20);
  else if (strstr(hc->buf, "\r\n\r\n") || strstr(hc->buf, "\n\n")) handle(hc);
  else if (hc->len >= sizeof hc->buf - 1)
    respond(hc, 431, "Request Header Fields Too Large", "text/plain", "too large\n", 10);
}

static void peer_name(http_conn *hc) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  char host[48] = "?";
  snprintf(hc->peer, sizeof hc->peer, "?");
  if (uv_tcp_getpeername(&hc->tcp, (struct sockaddr *)&ss, &len) != 0) return;
  if (ss.ss_family == AF_INET) {
    uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof host);
    snprintf(hc->peer, sizeof hc->peer, "%s:%u", host, ntohs(((struct sockaddr_in *)&ss)->sin_port));
  } else {
    uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof host);
    snprintf(hc->peer, sizeof hc->peer, "[%s]:%u", host,
             ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
  }
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
  uv_os_fd_t fd = -1;
  if (uv_accept(l, (uv_stream_t *)&hc->tcp) != 0) {
    http_close(hc);
    return;
  }
  peer_name(hc);
  if (s->http_nconns > s->cfg.max_http_connections) {
    /* Descriptors are shared with the RPC listener: a scraper flood must
     * not take them all. Closed at once, unread. */
    s->m.http_refused++;
    M3_WARN("server", "http: refused a connection: %u open (--max-http-connections)",
            s->cfg.max_http_connections);
    http_close(hc);
  } else if (s->http_tls && (uv_fileno((uv_handle_t *)&hc->tcp, &fd) != 0 ||
                             (hc->tls = tls_conn_new(s->http_tls, fd, hc->peer)) == NULL)) {
    http_close(hc);
  } else if (uv_read_start((uv_stream_t *)&hc->tcp, http_alloc, http_read) != 0) {
    http_close(hc);
  }
}

int http_start(server *s) {
  s->http_listener.data = s;
  return uv_listen((uv_stream_t *)&s->http_listener, 64, http_accept);
}
