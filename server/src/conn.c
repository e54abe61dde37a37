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
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "m3/error.h"
#include "m3/log.h"
#include "server.h"
#include "tls.h"

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
  int kick;       /* the rest of a piece (conn_send_pieces): its bytes are
                     counted by its conn_zwrite; or TLS handshake bytes */
  uint8_t *sealed; /* TLS: the ciphertext of the write's bytes (bufs[0]) */
  uv_buf_t inline_bufs[2];
  uint8_t data[]; /* single frame: header + message */
} wreq;

static void resume_reading(conn *c);
static int queued(conn *c, wreq *w);
static void zq_run(conn *c);
static void on_idle(uv_timer_t *t);
static int zq_push(conn *c, uint8_t *owned, conn_piece *p, size_t n, conn_write_cb cb, void *ud);
static int tls_sealing(const conn *c);
static int tls_seal_bufs(conn *c, uv_buf_t *bufs, unsigned *nb, uint8_t **sealed, size_t *bytes);
static int tls_send_pieces(conn *c, uint8_t *owned, conn_piece *p, size_t n, conn_write_cb cb,
                           void *ud);
static void tls_on_read(conn *c, size_t n);
static void process(conn *c);

/* n bytes of plaintext landed at rbuf + rlen: the part of a refused frame
 * still to come (c->skip) is dropped, the rest is kept for process(). */
static void took_plain(conn *c, size_t n) {
  if (c->skip) {
    size_t k = n < c->skip ? n : (size_t)c->skip;
    memmove(c->rbuf + c->rlen, c->rbuf + c->rlen + k, n - k);
    n -= k;
    c->skip -= k;
  }
  c->rlen += n;
}

static void on_write(uv_write_t *req, int status) {
  wreq *w = (wreq *)req;
  conn *c = w->c;
  c->uv_pending--;
  if (!w->kick) {
    c->queued -= w->bytes;
    c->s->m.bytes_out += status == 0 ? w->bytes : 0;
  }
  c->last_activity_ns = now_ns();
  if (w->cb) w->cb(w->ud, status);
  if (w->bufs != w->inline_bufs) free(w->bufs);
  free(w->owned);
  free(w->sealed);
  free(w);
  if (status < 0 && !c->closing) {
    M3_DEBUG("server", "%s: write failed: %s", c->peer, uv_strerror(status));
    conn_close(c);
  } else if (c->hangup && !c->closing && c->queued == 0) {
    conn_close(c);
  } else if (!c->closing && !c->reading && c->queued < c->s->cfg.write_high_water / 2) {
    resume_reading(c);
  }
  if (!c->closing && c->zhead && c->uv_pending == 0) zq_run(c);
  c->s->hooks.written(c); /* closing too: buffers it carried are back */
  conn_unref(c);
}

int conn_send(conn *c, m3_frame *f, const ProtobufCMessage *msg, const void *att,
              size_t att_len, conn_write_cb cb, void *ud) {
  if (c->closing) return M3_EIO;
  if (c->zhead) { /* behind writes of pieces: in their queue, in order */
    size_t mlen = msg ? protobuf_c_message_get_packed_size(msg) : 0;
    uint8_t *owned = malloc(M3_FRAME_HEADER_SIZE + mlen);
    conn_piece *p = malloc(2 * sizeof *p);
    if (owned == NULL || p == NULL) {
      free(owned);
      free(p);
      return M3_ENOMEM;
    }
    f->msg_len = (uint32_t)mlen;
    f->att_len = (uint32_t)att_len;
    m3_frame_encode(owned, f);
    if (mlen) protobuf_c_message_pack(msg, owned + M3_FRAME_HEADER_SIZE);
    p[0] = (conn_piece){owned, -1, 0, M3_FRAME_HEADER_SIZE + mlen};
    p[1] = (conn_piece){att, -1, 0, att_len};
    return zq_push(c, owned, p, att_len ? 2 : 1, cb, ud);
  }
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
  w->sealed = NULL;
  w->kick = 0;
  w->bytes = M3_FRAME_HEADER_SIZE + mlen + att_len;
  w->bufs = w->inline_bufs;
  w->bufs[0] = uv_buf_init((char *)w->data, (unsigned)(M3_FRAME_HEADER_SIZE + mlen));
  /* The attachment goes out from the caller's own buffer: no copy; it
   * stays valid until cb. */
  w->bufs[1] = uv_buf_init((char *)att, (unsigned)att_len);
  unsigned nb = att_len ? 2 : 1;
  if (tls_sealing(c) && tls_seal_bufs(c, w->bufs, &nb, &w->sealed, &w->bytes) != 0) {
    free(w);
    return M3_EIO;
  }
  int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, w->bufs, nb, on_write);
  if (rc < 0) {
    free(w->sealed);
    free(w);
    return M3_EIO;
  }
  return queued(c, w);
}

int conn_send_batch(conn *c, m3_wbuf *frames, const size_t *frame_ends,
                    const void *const *atts, const size_t *att_lens, size_t n,
                    conn_write_cb cb, void *ud) {
  if (c->closing) return M3_EIO;
  if (c->zhead) { /* behind writes of pieces: in their queue, in order */
    conn_piece *p = malloc(2 * n * sizeof *p);
    if (p == NULL) return M3_ENOMEM;
    size_t np = 0, start = 0;
    for (size_t i = 0; i < n; i++) {
      p[np++] = (conn_piece){frames->data + start, -1, 0, frame_ends[i] - start};
      start = frame_ends[i];
      if (att_lens[i]) p[np++] = (conn_piece){atts[i], -1, 0, att_lens[i]};
    }
    int rc = zq_push(c, frames->data, p, np, cb, ud);
    if (rc == 0) {
      frames->data = NULL;
      frames->len = frames->cap = 0;
    }
    return rc;
  }
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
  if (tls_sealing(c) && tls_seal_bufs(c, bufs, &nb, &w->sealed, &w->bytes) != 0) {
    free(bufs);
    free(w);
    return M3_EIO;
  }
  w->owned = frames->data; /* the write owns the frame bytes from here on */
  int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, nb, on_write);
  if (rc < 0) {
    free(w->sealed);
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
  c->uv_pending++;
  c->enq_total += w->bytes;
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


/* ---- writes of pieces (sendfile) --------------------------------------- */

struct conn_zwrite {
  conn_zwrite *next;
  conn_piece *p;
  size_t n, i;     /* pieces; the one at hand */
  size_t done;     /* bytes of p[i] already out */
  size_t bytes;    /* all of its pieces */
  uint8_t *owned;
  conn_write_cb cb;
  void *ud;
};

/* Its callback runs from the idle timer (never from within a send). */
static void zq_finished(conn *c, conn_zwrite *z) {
  z->next = c->zdone;
  c->zdone = z;
  uv_timer_start(&c->idle, on_idle, 0, c->tick_ms);
}

static void zq_complete(conn *c, conn_zwrite *z, int status) {
  c->queued -= z->bytes;
  c->s->m.bytes_out += status == 0 ? z->bytes : 0;
  if (z->cb) z->cb(z->ud, status);
  free(z->p);
  free(z->owned);
  free(z);
  if (!c->closing && !c->reading && c->queued < c->s->cfg.write_high_water / 2)
    resume_reading(c);
}

/* The idle timer, and conn_close: run the callbacks of the writes done
 * (and, closing, fail those not done). */
static void zq_callbacks(conn *c) {
  int done = 0; /* each write held a reference on c: dropped after the loops */
  while (c->zdone) {
    conn_zwrite *z = c->zdone;
    c->zdone = z->next;
    zq_complete(c, z, 0);
    done++;
  }
  while (c->closing && c->zhead) {
    conn_zwrite *z = c->zhead;
    c->zhead = z->next;
    if (c->zhead == NULL) c->ztail = NULL;
    zq_complete(c, z, UV_ECANCELED);
    done++;
  }
  if (done == 0) return;
  c->refs -= done - 1;
  c->s->hooks.written(c); /* as on_write: their buffers are back */
  conn_unref(c);
}

static int zq_push(conn *c, uint8_t *owned, conn_piece *p, size_t n, conn_write_cb cb, void *ud) {
  conn_zwrite *z = calloc(1, sizeof *z);
  if (z == NULL) return M3_ENOMEM;
  z->p = p;
  z->n = n;
  z->owned = owned;
  z->cb = cb;
  z->ud = ud;
  for (size_t i = 0; i < n; i++) z->bytes += p[i].len;
  c->refs++;
  c->queued += z->bytes;
  c->enq_total += z->bytes;
  c->zunsent += z->bytes;
  if (c->ztail) c->ztail->next = z;
  else c->zhead = z;
  c->ztail = z;
  if (c->reading && c->queued > c->s->cfg.write_high_water) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
  if (c->uv_pending == 0) zq_run(c);
  return 0;
}

int conn_send_pieces(conn *c, uint8_t *owned, conn_piece *pieces, size_t n, conn_write_cb cb,
                     void *ud) {
  if (c->closing || c->zerr) return M3_EIO;
  if (tls_sealing(c)) return tls_send_pieces(c, owned, pieces, n, cb, ud);
  return zq_push(c, owned, pieces, n, cb, ud);
}

/*
 * Write iov[0, k) to the socket from the loop, without waiting: the one
 * place where writes of pieces' memory reach the socket (a TLS layer wraps
 * it). more: more follows at once (MSG_MORE). Returns sendmsg's result
 * (errno set). (MSG_ZEROCOPY here was measured and lost over loopback:
 * docs/BENCHMARKS.md "Send path".)
 */
static ssize_t conn_write_iov(conn *c, int fd, struct iovec *iov, size_t k, int more) {
  (void)c;
  struct msghdr mh = {.msg_iov = iov, .msg_iovlen = k};
  return sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT | (more ? MSG_MORE : 0));
}

/* The socket is full: send the rest of the piece at hand through libuv,
 * whose completion says the socket takes bytes again. 0, or -1 (failed). */
static int zq_kick(conn *c, conn_zwrite *z) {
  conn_piece *p = &z->p[z->i];
  size_t rest = p->len - z->done;
  wreq *w = calloc(1, sizeof *w);
  if (w == NULL) return -1;
  const char *src = (const char *)p->buf + z->done;
  if (p->buf == NULL) { /* a file piece: its rest (less than one record) via a bounce buffer */
    w->owned = malloc(rest);
    ssize_t got = w->owned ? pread(p->fd, w->owned, rest, (off_t)(p->off + z->done)) : -1;
    if (got != (ssize_t)rest) {
      M3_WARN("server", "%s: reading %zu bytes to send: %s", c->peer, rest,
              got < 0 ? strerror(errno) : "short read");
      free(w->owned);
      free(w);
      return -1;
    }
    src = (const char *)w->owned;
    c->s->m.sendfile_bounced_bytes += rest;
  }
  w->c = c;
  w->kick = 1;
  w->bytes = rest;
  w->bufs = w->inline_bufs;
  w->bufs[0] = uv_buf_init((char *)src, (unsigned)rest);
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, w->bufs, 1, on_write) < 0) {
    free(w->owned);
    free(w);
    return -1;
  }
  c->uv_pending++;
  c->refs++;
  c->zunsent -= rest; /* libuv's write queue counts it now */
  z->i++;
  z->done = 0;
  return 0;
}

/* Send pieces while the socket takes them and libuv has nothing queued. */
static void zq_run(conn *c) {
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0) c->zerr = 1;
  while (c->zhead && c->uv_pending == 0 && !c->zerr && !c->closing) {
    conn_zwrite *z = c->zhead;
    if (z->i == z->n) {
      c->zhead = z->next;
      if (c->zhead == NULL) c->ztail = NULL;
      zq_finished(c, z);
      continue;
    }
    conn_piece *p = &z->p[z->i];
    ssize_t w;
    if (p->len == 0) {
      z->i++;
      continue;
    }
    if (p->buf) { /* memory pieces in a row: one sendmsg */
      struct iovec iov[64];
      size_t k = 0, j = z->i;
      for (; j < z->n && k < 64 && z->p[j].buf; j++) {
        size_t skip = j == z->i ? z->done : 0;
        iov[k].iov_base = (char *)z->p[j].buf + skip;
        iov[k++].iov_len = z->p[j].len - skip;
      }
      int more = j < z->n || z->next;
      w = conn_write_iov(c, fd, iov, k, more);
    } else {
      off_t off = (off_t)(p->off + z->done);
      w = sendfile(fd, p->fd, &off, p->len - z->done);
      if (w == 0) { /* the file is shorter than its catalog entry says */
        errno = EIO;
        w = -1;
      }
    }
    if (w < 0) {
      if (errno == EINTR) continue;
      if ((errno == EAGAIN || errno == EWOULDBLOCK) && zq_kick(c, z) == 0) break;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        M3_DEBUG("server", "%s: send: %s", c->peer, strerror(errno));
      c->zerr = 1; /* closed from the idle timer: never from within a send */
      uv_timer_start(&c->idle, on_idle, 0, c->tick_ms);
      break;
    }
    c->zunsent -= (size_t)w;
    c->last_activity_ns = now_ns();
    for (size_t left = (size_t)w; left > 0 && z->i < z->n;) {
      size_t rest = z->p[z->i].len - z->done;
      if (left >= rest) {
        left -= rest;
        z->i++;
        z->done = 0;
      } else {
        z->done += left;
        left = 0;
      }
    }
    while (z->i < z->n && z->p[z->i].len == 0) z->i++;
  }
}

/* ---- TLS: the hook layer (tls.h) ---------------------------------------- */

/* Whether c's writes must be sealed here (TLS, and the kernel does not
 * encrypt its sends). */
static int tls_sealing(const conn *c) { return c->tls && !tls_conn_ktls_send(c->tls); }

/* A piece of ciphertext could not be made whole: the stream is lost; closed
 * from the idle timer (never from within a send). */
static void tls_broken(conn *c) {
  M3_WARN("server", "%s: TLS: %s: closing", c->peer, tls_conn_error(c->tls));
  c->zerr = 1;
  uv_timer_start(&c->idle, on_idle, 0, c->tick_ms);
}

/* Seal the nb buffers of a write into one buffer of ciphertext: bufs[0]
 * becomes it, *nb 1, *sealed owns it, *bytes its length. 0, or M3_EIO
 * (nothing queued). */
static int tls_seal_bufs(conn *c, uv_buf_t *bufs, unsigned *nb, uint8_t **sealed, size_t *bytes) {
  if (!tls_conn_done(c->tls)) return M3_EIO;
  size_t total = 0;
  for (unsigned i = 0; i < *nb; i++) total += bufs[i].len;
  tls_conn_reserve(c->tls, total);
  for (unsigned i = 0; i < *nb; i++) {
    if (bufs[i].len && tls_conn_seal(c->tls, bufs[i].base, bufs[i].len) != 0) {
      tls_broken(c);
      return M3_EIO;
    }
  }
  size_t n = tls_conn_take(c->tls, sealed);
  bufs[0] = uv_buf_init((char *)*sealed, (unsigned)n);
  *nb = 1;
  *bytes = n;
  return 0;
}

/* conn_send_pieces under TLS without kTLS: sendfile would put clear bytes
 * on the wire, so file pieces are read (from the page cache, where fetch.c
 * found them) and everything is sealed into one write. */
static int tls_send_pieces(conn *c, uint8_t *owned, conn_piece *p, size_t n, conn_write_cb cb,
                           void *ud) {
  if (!tls_conn_done(c->tls)) return M3_EIO;
  wreq *w = calloc(1, sizeof *w);
  size_t scap = 0, total = 0;
  for (size_t i = 0; i < n; i++) {
    total += p[i].len;
    if (p[i].buf == NULL && p[i].len > scap) scap = p[i].len;
  }
  tls_conn_reserve(c->tls, total);
  if (scap > (1u << 20)) scap = 1u << 20;
  uint8_t *scratch = scap ? malloc(scap) : NULL;
  if (w == NULL || (scap && scratch == NULL)) {
    free(w);
    free(scratch);
    return M3_ENOMEM;
  }
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    if (p[i].buf) {
      if (p[i].len && tls_conn_seal(c->tls, p[i].buf, p[i].len) != 0) rc = -1;
      continue;
    }
    for (size_t done = 0; done < p[i].len && rc == 0;) {
      size_t want = p[i].len - done < scap ? p[i].len - done : scap;
      ssize_t got = pread(p[i].fd, scratch, want, (off_t)(p[i].off + done));
      if (got <= 0) {
        M3_WARN("server", "%s: reading %zu bytes to send: %s", c->peer, want,
                got < 0 ? strerror(errno) : "short read");
        rc = -1;
        break;
      }
      if (tls_conn_seal(c->tls, scratch, (size_t)got) != 0) rc = -1;
      done += (size_t)got;
      c->s->m.tls_file_bytes_read += (uint64_t)got;
    }
  }
  free(scratch);
  if (rc != 0) {
    free(w);
    tls_broken(c);
    return M3_EIO;
  }
  size_t len = tls_conn_take(c->tls, &w->sealed);
  w->c = c;
  w->cb = cb;
  w->ud = ud;
  w->owned = owned; /* what the pieces pointed into goes when the write is done */
  w->bytes = len;
  w->bufs = w->inline_bufs;
  w->bufs[0] = uv_buf_init((char *)w->sealed, (unsigned)len);
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, w->bufs, 1, on_write) < 0) {
    free(w->sealed);
    free(w);
    return M3_EIO;
  }
  free(p);
  return queued(c, w);
}

/* Write what OpenSSL has to say on its own (handshake, alerts). */
static void tls_flush(conn *c) {
  uint8_t *b;
  size_t n = tls_conn_take(c->tls, &b);
  if (n == 0) return;
  if (tls_conn_ktls_send(c->tls)) {
    /* After the switch to kernel TLS nothing but data may go out (a
     * KeyUpdate that wants ours cannot be answered). */
    free(b);
    M3_WARN("server", "%s: TLS: the client asked for an answer that kTLS sends cannot give "
                      "(a key update?): closing", c->peer);
    c->zerr = 1;
    uv_timer_start(&c->idle, on_idle, 0, c->tick_ms);
    return;
  }
  wreq *w = calloc(1, sizeof *w);
  if (w == NULL) {
    free(b);
    conn_close(c);
    return;
  }
  w->c = c;
  w->kick = 1; /* not a frame: not in c->queued */
  w->sealed = b;
  w->bytes = n;
  w->bufs = w->inline_bufs;
  w->bufs[0] = uv_buf_init((char *)b, (unsigned)n);
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, w->bufs, 1, on_write) < 0) {
    free(b);
    free(w);
    conn_close(c);
    return;
  }
  c->uv_pending++;
  c->refs++;
  c->enq_total += n;
}

/* A plain m3 client on the TLS port: answer its first call in clear (it
 * could read nothing else), then hang up. */
static void tls_refuse_plain(conn *c, size_t n) {
  server *s = c->s;
  const uint8_t *b = s->tls_rbuf;
  s->m.bad_frames++;
  s->m.tls_plain_refused++;
  tls_conn_free(c->tls);
  c->tls = NULL;
  int m3 = n >= 2 && b[0] == 'M' && b[1] == '3';
  M3_WARN("server", "%s: closing connection: it %s, and this port speaks TLS (--tls-cert)",
          c->peer, m3 ? "speaks the m3 protocol without TLS" : "did not open with a TLS ClientHello");
  m3_frame f;
  if (m3 && n >= M3_FRAME_HEADER_SIZE) {
    int rc = m3_frame_decode(b, CONN_PREHELLO_FRAME_MAX, &f);
    if (rc == 0 || rc == M3_ERANGE)
      conn_send_status(c, M3_FRAME_END, f.method, f.stream, M3_STATUS_UNAUTHENTICATED, 0,
                       "this port speaks TLS: connect with TLS (--tls-ca F, and --tls-cert/"
                       "--tls-key where the server requires client certificates)");
  }
  conn_hangup(c);
}

static void tls_handshake_done(conn *c) {
  server *s = c->s;
  char how[96];
  tls_conn_describe(c->tls, how, sizeof how);
  const char *id = tls_conn_identity(c->tls);
  if (*id)
    M3_INFO("server", "%s: %s, client certificate %s, kTLS sends %s", c->peer, how, id,
            tls_conn_ktls_send(c->tls) ? "on" : "off");
  else
    M3_DEBUG("server", "%s: %s, kTLS sends %s", c->peer, how,
             tls_conn_ktls_send(c->tls) ? "on" : "off");
  if (!tls_conn_ktls_send(c->tls) && *tls_server_ktls_why(s->tls) && !s->tls_ktls_logged) {
    s->tls_ktls_logged = 1;
    M3_INFO("server", "kTLS sends off: %s; memories are encrypted in user space (no sendfile)",
            tls_server_ktls_why(s->tls));
  }
}

/* n bytes of ciphertext came into s->tls_rbuf: hand them to OpenSSL, take
 * the plaintext into c->rbuf, answer what the handshake needs, then cut
 * frames as on a plain port. */
static void tls_on_read(conn *c, size_t n) {
  server *s = c->s;
  if (!c->tls_seen) {
    c->tls_seen = 1;
    if (s->tls_rbuf[0] != 0x16) { /* not a TLS handshake record */
      tls_refuse_plain(c, n);
      return;
    }
  }
  if (c->hangup) return; /* reading nothing more */
  int was_done = tls_conn_done(c->tls);
  if (tls_conn_input(c->tls, s->tls_rbuf, n) != 0) {
    conn_close(c);
    return;
  }
  long r;
  for (;;) {
    if (c->rcap - c->rlen < 16384) {
      size_t cap = c->rcap ? c->rcap * 2 : 65536;
      uint8_t *p = realloc(c->rbuf, cap);
      if (p == NULL) {
        conn_close(c);
        return;
      }
      c->rbuf = p;
      c->rcap = cap;
    }
    r = tls_conn_read(c->tls, c->rbuf + c->rlen, c->rcap - c->rlen,
                      c->uv_pending == 0 && c->zhead == NULL);
    if (r <= 0) break;
    took_plain(c, (size_t)r);
  }
  if (!was_done && tls_conn_done(c->tls)) tls_handshake_done(c);
  tls_flush(c);
  if (r == -2) {
    s->m.bad_frames += !tls_conn_done(c->tls) ? 0 : 1;
    M3_WARN("server", "%s: closing connection: %s", c->peer, tls_conn_error(c->tls));
    conn_hangup(c); /* once the alert is written */
    if (c->uv_pending == 0) conn_close(c);
    return;
  }
  if (c->closing) return;
  process(c);
  if (r == -1 && !c->closing) conn_close(c); /* close_notify */
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
  tls_conn_free(c->tls);
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
  zq_callbacks(c);
  uv_timer_stop(&c->idle);
  uv_close((uv_handle_t *)&c->idle, idle_closed);
  uv_close((uv_handle_t *)&c->tcp, conn_freed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  conn *c = h->data;
  if (c->tls) { /* ciphertext: into the loop's one buffer, handed to OpenSSL at once */
    *buf = uv_buf_init((char *)c->s->tls_rbuf, sizeof c->s->tls_rbuf);
    return;
  }
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
    if (!c->hello && off == 0 && c->rbuf[0] == 0x16 && c->rbuf[1] == 0x03) {
      /* A TLS ClientHello: this port speaks plain m3 (no TLS configured).
       * An m3 GOAWAY would reach a TLS client as garbage: just close. */
      c->s->m.bad_frames++;
      M3_WARN("server", "%s: closing connection: it opened with a TLS ClientHello, and this "
                        "port speaks the m3 protocol without TLS", c->peer);
      conn_close(c);
      return;
    }
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
    if (c->rlen - off < total) {
      /* Not all here: a frame its method cannot take is answered now and
       * its bytes dropped as they come, so that an authenticated client
       * cannot make the server buffer --max-frame-mb per connection for a
       * message it will refuse anyway. */
      if (c->s->hooks.refuse_early && c->s->hooks.refuse_early(c, &f)) {
        c->skip = total - (c->rlen - off);
        off = c->rlen;
      }
      break;
    }
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
  c->s->m.bytes_in += (uint64_t)n;
  c->last_activity_ns = now_ns();
  if (c->tls) {
    tls_on_read(c, (size_t)n);
    return;
  }
  took_plain(c, (size_t)n);
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

/*
 * Whether c reads its answers too slowly to keep (issue 14, defect 7): a
 * client that takes a few bytes at a time never looks idle, yet pins the
 * read buffers of every memory queued for it. While answers wait in user
 * space for its socket, the bytes the kernel took from them over each
 * window of at least a second must come to min_drain_bytes_per_s; after
 * two windows in a row below that, c is closed and its buffers go back.
 */
static int slow_reader(conn *c, uint64_t now, size_t wq) {
  size_t floor = c->s->cfg.min_drain_bytes_per_s;
  uint64_t taken = c->enq_total - wq - c->zunsent; /* bytes the kernel has taken */
  if (floor == 0 || wq + c->zunsent == 0) { /* nothing waits on the client */
    c->drain_t0_ns = 0;
    c->slow_ticks = 0;
    return 0;
  }
  if (c->drain_t0_ns == 0) {
    c->drain_t0_ns = now;
    c->drain_bytes = taken;
    return 0;
  }
  uint64_t dt = now - c->drain_t0_ns;
  if (dt < 1000000000ull) return 0;
  double rate = (double)(taken - c->drain_bytes) * 1e9 / (double)dt;
  c->slow_ticks = rate < (double)floor ? c->slow_ticks + 1 : 0;
  c->drain_t0_ns = now;
  c->drain_bytes = taken;
  if (c->slow_ticks < 2) return 0;
  M3_WARN("server", "%s: reads its answers at %.0f bytes/s (minimum %zu) with %zu bytes queued: "
          "closing", c->peer, rate, floor, wq + c->zunsent);
  return 1;
}

static void on_idle(uv_timer_t *t) {
  conn *c = t->data;
  server *s = c->s;
  if (c->zdone) zq_callbacks(c);
  if (c->zerr) {
    conn_close(c);
    return;
  }
  uint64_t now = now_ns();
  /* A write of a whole call completes only when the client has read all of
   * it; a shrinking write queue is progress too, so a slow but steady reader
   * of a large call is not taken for one that stopped reading. */
  size_t wq = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
  if (wq < c->last_write_queue) c->last_activity_ns = now;
  c->last_write_queue = wq;
  if (slow_reader(c, now, wq)) {
    s->m.slow_readers_closed++;
    conn_close(c);
    return;
  }
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
  if (s->tls) {
    uv_os_fd_t fd = -1;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0 ||
        (c->tls = tls_conn_new(s->tls, fd, c->peer)) == NULL) {
      M3_WARN("server", "%s: refused: no memory for its TLS state", c->peer);
      c->closing = 1;
      uv_close((uv_handle_t *)&c->idle, idle_closed);
      uv_close((uv_handle_t *)&c->tcp, conn_freed);
      return;
    }
  }
  s->m.connections_accepted++;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->nconns++;
  c->last_activity_ns = c->accepted_ns = now_ns();
  unsigned tick = s->cfg.handshake_timeout_ms < s->cfg.idle_timeout_ms ? s->cfg.handshake_timeout_ms
                                                                       : s->cfg.idle_timeout_ms;
  tick = tick / 4 ? tick / 4 : 1;
  c->tick_ms = tick;
  uv_timer_start(&c->idle, on_idle, tick, tick);
  resume_reading(c);
}

void conn_goaway_all(server *s) {
  for (conn *c = s->conns; c; c = c->next)
    conn_send_status(c, M3_FRAME_GOAWAY, 0, 0, M3_STATUS_UNAVAILABLE, 0, "server is draining");
}
