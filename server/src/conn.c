/*
 * Connections, the server's transport (conn.h): accept, frame reassembly,
 * writes with backpressure, timeouts. Whole frames go up through
 * server.hooks.frame; a write's buffers come back through its
 * conn_write_cb. A connection whose queued writes pass the high-water mark
 * stops being read (a client that does not read cannot make the server
 * buffer without bound); a frame that breaks framing closes it. Calls and
 * methods are the layers above (call.c, dispatch.c): nothing here calls
 * them but through the hooks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "m3/error.h"
#include "m3/log.h"
#include "server.h"

uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}


/* ---- writes --------------------------------------------------------- */

typedef struct wreq {
  uv_write_t req;
  conn *c;
  conn_write_cb cb; /* may be NULL */
  void *ud;
  size_t bytes;
  uv_buf_t *bufs; /* inline[] or malloc'ed for a batch */
  uint8_t *owned; /* batch: the frames' headers and messages */
  uv_buf_t inline_bufs[2];
  uint8_t data[]; /* single frame: header + message */
} wreq;

static void resume_reading(conn *c);
static int queued(conn *c, wreq *w);

static void on_write(uv_write_t *req, int status) {
  wreq *w = (wreq *)req;
  conn *c = w->c;
  c->queued -= w->bytes;
  c->s->m.bytes_out += status == 0 ? w->bytes : 0;
  c->last_activity_ns = now_ns();
  if (w->cb) w->cb(w->ud, status);
  if (w->bufs != w->inline_bufs) free(w->bufs);
  free(w->owned);
  free(w);
  if (status < 0 && !c->closing) {
    M3_DEBUG("server", "%s: write failed: %s", c->peer, uv_strerror(status));
    conn_close(c);
  } else if (c->hangup && !c->closing && c->queued == 0) {
    conn_close(c);
  } else if (!c->closing && !c->reading && c->queued < c->s->cfg.write_high_water / 2) {
    resume_reading(c);
  }
  if (!c->closing) c->s->hooks.written(c);
  conn_unref(c);
}

int conn_send(conn *c, m3_frame *f, const ProtobufCMessage *msg, const void *att,
              size_t att_len, conn_write_cb cb, void *ud) {
  if (c->closing) return M3_EIO;
  size_t mlen = msg ? protobuf_c_message_get_packed_size(msg) : 0;
  wreq *w = malloc(sizeof *w + M3_FRAME_HEADER_SIZE + mlen);
  if (w == NULL) return M3_ENOMEM;
  f->msg_len = (uint32_t)mlen;
  f->att_len = (uint32_t)att_len;
  m3_frame_encode(w->data, f);
  if (mlen) protobuf_c_message_pack(msg, w->data + M3_FRAME_HEADER_SIZE);
  w->c = c;
  w->cb = cb;
  w->ud = ud;
  w->owned = NULL;
  w->bytes = M3_FRAME_HEADER_SIZE + mlen + att_len;
  w->bufs = w->inline_bufs;
  w->bufs[0] = uv_buf_init((char *)w->data, (unsigned)(M3_FRAME_HEADER_SIZE + mlen));
  /* The attachment goes out from the caller's own buffer: no copy; it
   * stays valid until cb. */
  w->bufs[1] = uv_buf_init((char *)att, (unsigned)att_len);
  int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, w->bufs, att_len ? 2 : 1, on_write);
  if (rc < 0) {
    free(w);
    return M3_EIO;
  }
  return queued(c, w);
}

int conn_send_batch(conn *c, m3_wbuf *frames, const size_t *frame_ends,
                    const void *const *atts, const size_t *att_lens, size_t n,
                    conn_write_cb cb, void *ud) {
  if (c->closing) return M3_EIO;
  wreq *w = calloc(1, sizeof *w);
  uv_buf_t *bufs = malloc(2 * n * sizeof *bufs);
  if (w == NULL || bufs == NULL) {
    free(w);
    free(bufs);
    return M3_ENOMEM;
  }
  unsigned nb = 0;
  size_t start = 0, bytes = 0;
  for (size_t i = 0; i < n; i++) {
    bufs[nb++] = uv_buf_init((char *)frames->data + start, (unsigned)(frame_ends[i] - start));
    bytes += frame_ends[i] - start;
    start = frame_ends[i];
    if (att_lens[i]) {
      bufs[nb++] = uv_buf_init((char *)atts[i], (unsigned)att_lens[i]);
      bytes += att_lens[i];
    }
  }
  w->c = c;
  w->cb = cb;
  w->ud = ud;
  w->bytes = bytes;
  w->bufs = bufs;
  w->owned = frames->data; /* the write owns the frame bytes from here on */
  int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, nb, on_write);
  if (rc < 0) {
    free(bufs);
    free(w);
    return M3_EIO;
  }
  frames->data = NULL;
  frames->len = frames->cap = 0;
  return queued(c, w);
}

int conn_send_status(conn *c, m3_frame_type type, uint16_t method, uint32_t stream, int code,
                     int error, const char *message) {
  M3__Status st = M3__STATUS__INIT;
  st.code = (M3__StatusCode)code;
  st.message = (char *)message;
  st.error = error;
  m3_frame f = {(uint8_t)type, 0, method, stream, 0, 0, (uint32_t)code};
  return conn_send(c, &f, &st.base, NULL, 0, NULL, NULL);
}

static int queued(conn *c, wreq *w) {
  c->refs++;
  c->queued += w->bytes;
  if (c->reading && c->queued > c->s->cfg.write_high_water) {
    /* Backpressure: stop reading requests from a client that is not
     * reading its answers. */
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
  return 0;
}

/* ---- connection ----------------------------------------------------- */

static void conn_freed(uv_handle_t *h) {
  conn *c = h->data;
  conn_unref(c);
}

static void idle_closed(uv_handle_t *h) {
  conn *c = h->data;
  conn_unref(c);
}

void conn_ref(conn *c) { c->refs++; }

void conn_unref(conn *c) {
  if (--c->refs > 0) return;
  free(c->rbuf);
  free(c);
}

void conn_close(conn *c) {
  if (c->closing) return;
  c->closing = 1;
  server *s = c->s;
  if (c->prev) c->prev->next = c->next;
  else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->nconns--;
  s->hooks.closing(c);
  uv_timer_stop(&c->idle);
  uv_close((uv_handle_t *)&c->idle, idle_closed);
  uv_close((uv_handle_t *)&c->tcp, conn_freed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  conn *c = h->data;
  size_t want = suggested < 65536 ? 65536 : suggested;
  if (c->rcap - c->rlen < want) {
    size_t cap = c->rcap ? c->rcap : 65536;
    while (cap - c->rlen < want) cap *= 2;
    uint8_t *p = realloc(c->rbuf, cap);
    if (p == NULL) {
      *buf = uv_buf_init(NULL, 0);
      return;
    }
    c->rbuf = p;
    c->rcap = cap;
  }
  *buf = uv_buf_init((char *)c->rbuf + c->rlen, (unsigned)(c->rcap - c->rlen));
}

/* Framing is lost or the peer broke the protocol: say why and hang up. */
void conn_protocol_error(conn *c, const char *why) {
  c->s->m.bad_frames++;
  M3_WARN("server", "%s: closing connection: %s", c->peer, why);
  conn_send_status(c, M3_FRAME_GOAWAY, 0, 0, M3_STATUS_INVALID_ARGUMENT, 0, why);
  conn_close(c);
}

static void process(conn *c) {
  size_t off = 0;
  while (!c->closing && !c->hangup && c->rlen - off >= M3_FRAME_HEADER_SIZE) {
    m3_frame f;
    int rc = m3_frame_decode(c->rbuf + off,
                             c->hello ? c->s->cfg.max_frame_bytes : CONN_PREHELLO_FRAME_MAX, &f);
    if (rc == M3_ERANGE) {
      /* The header is sound, so the client learns which call was too big. */
      conn_send_status(c, M3_FRAME_END, f.method, f.stream, M3_STATUS_RESOURCE_EXHAUSTED, 0,
                       m3_errmsg());
      conn_protocol_error(c, m3_errmsg());
      return;
    }
    if (rc != 0) {
      conn_protocol_error(c, m3_errmsg());
      return;
    }
    size_t total = M3_FRAME_HEADER_SIZE + (size_t)f.msg_len + f.att_len;
    if (c->rlen - off < total) break;
    const uint8_t *msg = c->rbuf + off + M3_FRAME_HEADER_SIZE;
    c->s->hooks.frame(c, &f, msg, msg + f.msg_len);
    off += total;
  }
  if (off && !c->closing && !c->hangup) {
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
  }
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  conn *c = st->data;
  (void)buf;
  if (n < 0) {
    if (n != UV_EOF) M3_DEBUG("server", "%s: read: %s", c->peer, uv_strerror((int)n));
    conn_close(c);
    return;
  }
  c->rlen += (size_t)n;
  c->s->m.bytes_in += (uint64_t)n;
  c->last_activity_ns = now_ns();
  process(c);
}

void conn_hangup(conn *c) {
  conn_pause_reading(c);
  /* The answer about to be queued closes it once written (on_write);
   * should none come, the idle timer does. */
  c->hangup = 1;
}

void conn_pause_reading(conn *c) {
  if (!c->reading || c->closing) return;
  uv_read_stop((uv_stream_t *)&c->tcp);
  c->reading = 0;
}

static void resume_reading(conn *c) {
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) c->reading = 1;
}

static void on_idle(uv_timer_t *t) {
  conn *c = t->data;
  server *s = c->s;
  uint64_t now = now_ns();
  /* A write of a whole call completes only when the client has read all of
   * it; a shrinking write queue is progress too, so a slow but steady reader
   * of a large call is not taken for one that stopped reading. */
  size_t wq = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
  if (wq < c->last_write_queue) c->last_activity_ns = now;
  c->last_write_queue = wq;
  uint64_t idle_ms = (now - c->last_activity_ns) / 1000000;
  /* From the accept, not the last byte: trickled bytes or refused calls do
   * not keep a connection without Hello open. */
  if (c->hangup && c->queued == 0) {
    conn_close(c);
  } else if (!c->hello && (now - c->accepted_ns) / 1000000 >= s->cfg.handshake_timeout_ms) {
    M3_INFO("server", "%s: no Hello within %u ms: closing", c->peer, s->cfg.handshake_timeout_ms);
    conn_close(c);
  } else if (c->queued > 0 && idle_ms >= s->cfg.idle_timeout_ms) {
    M3_WARN("server", "%s: client has not read %zu queued bytes for %llu ms: closing", c->peer,
            c->queued, (unsigned long long)idle_ms);
    conn_close(c);
  } else if (c->ncalls == 0 && idle_ms >= s->cfg.idle_timeout_ms) {
    M3_DEBUG("server", "%s: idle for %llu ms: closing", c->peer, (unsigned long long)idle_ms);
    conn_close(c);
  }
}

void conn_accept(server *s, uv_stream_t *listener) {
  conn *c = calloc(1, sizeof *c);
  if (c == NULL) return;
  c->s = s;
  uv_tcp_init(s->loop, &c->tcp);
  c->tcp.data = c;
  c->refs = 2; /* tcp handle + idle timer */
  uv_timer_init(s->loop, &c->idle);
  c->idle.data = c;
  if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
    c->closing = 1;
    uv_close((uv_handle_t *)&c->idle, idle_closed);
    uv_close((uv_handle_t *)&c->tcp, conn_freed);
    return;
  }
  struct sockaddr_storage ss;
  int len = sizeof ss;
  char host[48] = "?";
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
    if (ss.ss_family == AF_INET) {
      uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof host);
      snprintf(c->peer, sizeof c->peer, "%s:%u", host, ntohs(((struct sockaddr_in *)&ss)->sin_port));
    } else {
      uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof host);
      snprintf(c->peer, sizeof c->peer, "[%s]:%u", host, ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
    }
  }
  if (s->draining || s->nconns >= s->cfg.max_connections) {
    s->m.connections_refused++;
    M3_WARN("server", "%s: refused: %s", c->peer,
            s->draining ? "draining" : "too many connections");
    c->closing = 1;
    uv_close((uv_handle_t *)&c->idle, idle_closed);
    uv_close((uv_handle_t *)&c->tcp, conn_freed);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  s->m.connections_accepted++;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->nconns++;
  c->last_activity_ns = c->accepted_ns = now_ns();
  unsigned tick = s->cfg.handshake_timeout_ms < s->cfg.idle_timeout_ms ? s->cfg.handshake_timeout_ms
                                                                       : s->cfg.idle_timeout_ms;
  tick = tick / 4 ? tick / 4 : 1;
  uv_timer_start(&c->idle, on_idle, tick, tick);
  resume_reading(c);
}

void conn_goaway_all(server *s) {
  for (conn *c = s->conns; c; c = c->next)
    conn_send_status(c, M3_FRAME_GOAWAY, 0, 0, M3_STATUS_UNAVAILABLE, 0, "server is draining");
}
