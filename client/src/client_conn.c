/*
 * libm3client's connection: TCP dial with a timeout, the frame writer and
 * reader over a non-blocking socket, and the synchronous call loop with its
 * deadline and cancellation.
 *
 * Workload: one call at a time per connection, answers of up to a few
 * hundred memories (tens of KB each) streamed as one frame per memory. The
 * reader takes a frame's header and message into one reusable buffer
 * (parsed in place, no allocation per frame), then receives its attachment
 * straight into where it belongs (the caller's buffer for it, or the
 * connection's own, 8-aligned), the payload CRC32C computed over each piece
 * as it lands: the kernel's copy out of the socket is the only copy of a
 * memory's bytes, and one recv per memory usually also brings the next
 * frame's header.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "client_int.h"
#include "m3/crc32c.h"
#include "m3/error.h"

#define RBUF_MIN (1u << 20)
/* Bytes read past what a read needs: the next frame's header and message,
 * and little of its attachment (which land() copies, CRC in the same pass). */
#define READ_AHEAD 1024u
#define ARENA_MIN (16u << 10)

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ms left until deadline (0: none -> -1, infinite); 0 when passed. */
static int left_ms(uint64_t deadline) {
  if (deadline == 0) return -1;
  uint64_t t = now_ns();
  if (t >= deadline) return 0;
  uint64_t ms = (deadline - t + 999999) / 1000000;
  return ms > 0x7fffffff ? 0x7fffffff : (int)ms;
}

/* ---- status --------------------------------------------------------- */

/* Record the status of the last call; returns its m3 code (named: the
 * Status.error the server sent, 0 for none). */
static int client_status_v(m3_client *c, m3_method method, int code, int named, const char *fmt,
                           va_list ap) __attribute__((format(printf, 5, 0)));
static int client_status_v(m3_client *c, m3_method method, int code, int named, const char *fmt,
                           va_list ap) {
  char detail[300];
  vsnprintf(detail, sizeof detail, fmt, ap);
  c->last_status = code;
  if (code == M3__STATUS_CODE__OK) {
    c->last_msg[0] = '\0';
    return 0;
  }
  const char *mname = method > 0 && method < M3_METHOD_COUNT ? m3_methods[method].name : "call";
  snprintf(c->last_msg, sizeof c->last_msg, "m3-server %s: %s: %s%s%s", c->addr, mname,
           m3_status_name(code), *detail ? ": " : "", detail);
  return m3__seterr(m3_err_from_wire(code, named), "%s", c->last_msg);
}

int m3__client_status(m3_client *c, m3_method method, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = client_status_v(c, method, code, 0, fmt, ap);
  va_end(ap);
  return rc;
}

static int named_status(m3_client *c, m3_method method, int code, int named, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int named_status(m3_client *c, m3_method method, int code, int named, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = client_status_v(c, method, code, named, fmt, ap);
  va_end(ap);
  return rc;
}

/* A transport failure: the connection is unusable from now on. */
static int broken(m3_client *c, m3_method method, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int broken(m3_client *c, m3_method method, const char *fmt, ...) {
  char detail[300];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof detail, fmt, ap);
  va_end(ap);
  c->broken = 1;
  m3__client_status(c, method, M3__STATUS_CODE__UNAVAILABLE, "%s", detail);
  return m3__seterr(M3_EIO, "%s", c->last_msg);
}

/* ---- arena ---------------------------------------------------------- */

static void *arena_alloc(void *ad, size_t size) {
  m3__arena *a = ad;
  size = (size + 15) & ~(size_t)15;
  if (a->used + size <= a->cap) {
    void *p = a->block + a->used;
    a->used += size;
    return p;
  }
  if (a->nbig == a->capbig) {
    size_t n = a->capbig ? a->capbig * 2 : 8;
    void **v = realloc(a->big, n * sizeof *v);
    if (v == NULL) return NULL;
    a->big = v;
    a->capbig = n;
  }
  void *p = malloc(size);
  if (p) a->big[a->nbig++] = p;
  a->want = a->used + size > a->want ? a->used + size : a->want;
  return p;
}

static void arena_free(void *ad, void *p) { (void)ad, (void)p; }

static void arena_reset(m3__arena *a) {
  for (size_t i = 0; i < a->nbig; i++) free(a->big[i]);
  if (a->nbig && a->want > a->cap) {
    /* Messages outgrew the block: the next one holds the largest seen. */
    size_t cap = a->want * 2;
    uint8_t *b = malloc(cap);
    if (b) {
      free(a->block);
      a->block = b;
      a->cap = cap;
    }
  }
  a->nbig = 0;
  a->used = 0;
}

/* ---- dial ----------------------------------------------------------- */

/* Split "host:port" / "[v6]:port" into host and port. */
static int split_addr(const char *addr, char *host, size_t hcap, char *port, size_t pcap) {
  const char *colon;
  if (addr[0] == '[') {
    const char *end = strchr(addr, ']');
    if (end == NULL || end[1] != ':') return M3_EINVAL;
    if ((size_t)(end - addr - 1) >= hcap) return M3_EINVAL;
    memcpy(host, addr + 1, (size_t)(end - addr - 1));
    host[end - addr - 1] = '\0';
    colon = end + 1;
  } else {
    colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr || (size_t)(colon - addr) >= hcap) return M3_EINVAL;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
  }
  const char *p = colon + 1;
  if (*p == '\0' || strlen(p) >= pcap || strspn(p, "0123456789") != strlen(p)) return M3_EINVAL;
  strcpy(port, p);
  return 0;
}

int m3__client_dial(m3_client *c, const m3_client_options *o, int timeout_ms) {
  char host[256], port[16];
  if (split_addr(c->addr, host, sizeof host, port, sizeof port) != 0)
    return m3__seterr(M3_EINVAL, "server address '%s' is not HOST:PORT", c->addr);
  /* getaddrinfo would wrap a port over 65535 (99999 -> 34463). */
  long pn = strtol(port, NULL, 10);
  if (strlen(port) > 5 || pn < 1 || pn > 65535)
    return m3__seterr(M3_EINVAL, "server address '%s': port %s is out of range (1 to 65535)",
                      c->addr, port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
  int g = getaddrinfo(host, port, &hints, &res);
  if (g != 0)
    return m3__seterr(M3_EINVAL, "server address '%s': %s", c->addr, gai_strerror(g));
  uint64_t deadline = timeout_ms > 0 ? now_ns() + (uint64_t)timeout_ms * 1000000ull : 0;
  int rc = 0, err = 0, timed_out = 0;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      err = errno;
      close(fd);
      continue;
    }
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int pr;
    do pr = poll(&pfd, 1, left_ms(deadline));
    while (pr < 0 && errno == EINTR);
    if (pr == 0) {
      timed_out = 1;
      close(fd);
      continue;
    }
    socklen_t len = sizeof err;
    if (pr < 0) err = errno;
    else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) {
      close(fd);
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    int left = timeout_ms > 0 ? left_ms(deadline) : 0;
    rc = m3__client_tls_connect(c, o, host, timeout_ms > 0 ? (left > 0 ? left : 1) : 0);
    goto out;
  }
  if (timed_out && err == 0)
    rc = m3__seterr(M3_EBUSY, "connect to m3-server %s: no answer within %d ms", c->addr,
                    timeout_ms);
  else
    rc = m3__seterr(M3_EIO, "connect to m3-server %s: %s", c->addr,
                    strerror(err ? err : ECONNREFUSED));
out:
  freeaddrinfo(res);
  return rc;
}

/* ---- the byte stream: the socket, or TLS over it (client_tls.c) ------ */

static ssize_t io_send(m3_client *c, const struct msghdr *mh) {
  if (c->ssl) return m3__client_tls_send(c, mh->msg_iov[0].iov_base, mh->msg_iov[0].iov_len);
  return sendmsg(c->fd, mh, MSG_NOSIGNAL);
}

static ssize_t io_recv(m3_client *c, void *p, size_t n) {
  if (c->ssl) return m3__client_tls_recv(c, p, n);
  return recv(c->fd, p, n, 0);
}

/* The poll events to wait for after EAGAIN (OpenSSL may want the other
 * direction than the call at hand). */
static short io_events(const m3_client *c, short want) {
  return c->ssl && c->tls_events ? c->tls_events : want;
}

/* Why the stream failed (errno from io_send/io_recv). */
static const char *io_error(const m3_client *c, int err) {
  return c->ssl && err == EPROTO && c->tls_err[0] ? c->tls_err : strerror(err);
}

/* ---- writing -------------------------------------------------------- */

/*
 * Write the pending output, then att (att_len bytes from the caller), by the
 * deadline. Returns 0, 1 when the deadline passed first (*sent says how much
 * of it went out), or a transport failure.
 */
static int send_all(m3_client *c, m3_method method, const uint8_t *att, size_t att_len,
                    uint64_t deadline, size_t *sent) {
  size_t att_off = 0;
  *sent = 0;
  while (c->out_off < c->out.len || att_off < att_len) {
    struct iovec iov[2];
    int n = 0;
    if (c->out_off < c->out.len)
      iov[n++] = (struct iovec){c->out.data + c->out_off, c->out.len - c->out_off};
    if (att_off < att_len) iov[n++] = (struct iovec){(void *)(att + att_off), att_len - att_off};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    ssize_t w = io_send(c, &mh);
    if (w > 0) {
      size_t ww = (size_t)w;
      c->ctr.bytes_written += ww;
      *sent += ww;
      size_t pend = c->out.len - c->out_off;
      if (ww <= pend) {
        c->out_off += ww;
      } else {
        c->out_off = c->out.len;
        att_off += ww - pend;
      }
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      int ms = left_ms(deadline);
      if (ms == 0) return 1;
      struct pollfd pfd = {.fd = c->fd, .events = io_events(c, POLLOUT)};
      if (poll(&pfd, 1, ms) < 0 && errno != EINTR)
        return broken(c, method, "poll: %s", strerror(errno));
      continue;
    }
    return broken(c, method, "send: %s", w < 0 ? io_error(c, errno) : "wrote nothing");
  }
  c->out.len = c->out_off = 0;
  return 0;
}

/* Queue CANCEL for stream and push out what the socket takes now; whatever
 * it does not take goes out before the next call's request. */
static void send_cancel(m3_client *c, m3_method method, uint32_t stream) {
  m3_frame f = {.type = M3_FRAME_CANCEL, .method = (uint16_t)method, .stream = stream};
  if (m3_frame_append(&c->out, &f, NULL) != 0) return;
  size_t sent;
  (void)send_all(c, method, NULL, 0, now_ns(), &sent);
}

/* ---- reading -------------------------------------------------------- */

/* The socket has nothing to read: wait for it by the deadline. Returns 0
 * (try again), 1 on deadline, or a transport failure. */
static int wait_readable(m3_client *c, m3_method method, uint64_t deadline) {
  int ms = left_ms(deadline);
  if (ms == 0) return 1;
  struct pollfd pfd = {.fd = c->fd, .events = io_events(c, POLLIN)};
  if (poll(&pfd, 1, ms) < 0 && errno != EINTR)
    return broken(c, method, "poll: %s", strerror(errno));
  return 0;
}

/* A recv that returned r <= 0: 0 (try again), 1 on deadline, or a
 * transport failure. */
static int recv_failed(m3_client *c, m3_method method, ssize_t r, uint64_t deadline) {
  if (r == 0)
    return broken(c, method, "the server closed the connection%s",
                  c->rlen > c->rpos || c->skip ? " in the middle of a frame" : "");
  if (errno == EINTR) return 0;
  if (errno == EAGAIN || errno == EWOULDBLOCK) return wait_readable(c, method, deadline);
  if (c->ssl && errno == EPROTO) return broken(c, method, "%s", c->tls_err);
  return broken(c, method, "recv: %s", strerror(errno));
}

/* Make rbuf[rpos, rlen) hold at least need bytes, reading by the deadline:
 * what is missing and no more than READ_AHEAD bytes past it, so that
 * attachments that follow are mostly left in the socket for land() to
 * receive where they belong. Returns 0, 1 on deadline, or a transport
 * failure. */
static int fill(m3_client *c, m3_method method, size_t need, uint64_t deadline) {
  while (c->rlen - c->rpos < need) {
    if (c->rcap - c->rpos < need) {
      /* Move the partial frame to the front; grow when the frame is bigger. */
      size_t have = c->rlen - c->rpos;
      if (have) memmove(c->rbuf, c->rbuf + c->rpos, have);
      c->rpos = 0;
      c->rlen = have;
      if (c->rcap < need) {
        size_t cap = c->rcap ? c->rcap : RBUF_MIN;
        while (cap < need) cap *= 2;
        uint8_t *b = realloc(c->rbuf, cap);
        if (b == NULL) {
          c->broken = 1;
          m3__client_status(c, method, M3__STATUS_CODE__RESOURCE_EXHAUSTED,
                            "no memory for a %zu-byte frame", need);
          return m3__seterr(M3_ENOMEM, "%s", c->last_msg);
        }
        c->rbuf = b;
        c->rcap = cap;
      }
    }
    size_t want = need - (c->rlen - c->rpos) + READ_AHEAD;
    if (want > c->rcap - c->rlen) want = c->rcap - c->rlen;
    ssize_t r = io_recv(c, c->rbuf + c->rlen, want);
    if (r > 0) {
      c->rlen += (size_t)r;
      c->ctr.bytes_read += (uint64_t)r;
      continue;
    }
    int rc = recv_failed(c, method, r, deadline);
    if (rc) return rc;
  }
  return 0;
}

/* The peer's first bytes do not start an m3 frame (no "M3" magic): say
 * what it speaks when its bytes tell (an HTTP status line, an SSH or other
 * text banner, read for up to 200 ms more to name it), so a client pointed
 * at the wrong port learns that instead of "bad magic" or a deadline. The
 * connection is broken either way. */
static int not_m3_peer(m3_client *c, m3_method method) {
  char b[64];
  size_t n = c->rlen - c->rpos, t = 0;
  if (n > sizeof b) n = sizeof b;
  memcpy(b, c->rbuf + c->rpos, n);
  uint64_t until = now_ns() + 200000000ull;
  while (n < sizeof b && !memchr(b, '\n', n)) {
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    if (poll(&pfd, 1, left_ms(until)) <= 0) break;
    ssize_t r = io_recv(c, b + n, sizeof b - n);
    if (r <= 0) break;
    n += (size_t)r;
  }
  if (n >= 5 && memcmp(b, "HTTP/", 5) == 0)
    return broken(c, method, "this port speaks HTTP, not the m3 protocol (the m3 port is "
                             "m3-server's --listen; --http is for /metrics and health)");
  if (n >= 4 && memcmp(b, "SSH-", 4) == 0)
    return broken(c, method, "this port speaks SSH, not the m3 protocol");
  if (n >= 3 && (b[0] == 0x15 || b[0] == 0x16) && b[1] == 0x03)
    return broken(c, method, "this port speaks TLS (it answered with a TLS %s), not the plain "
                             "m3 protocol", b[0] == 0x15 ? "alert" : "handshake");
  while (t < n && (b[t] == '\t' || (b[t] >= 0x20 && b[t] < 0x7f))) t++;
  if (t >= 3)
    return broken(c, method, "this port answered \"%.*s\", not the m3 protocol", (int)t, b);
  return broken(c, method, "this port answered bytes %02x %02x, not an m3 frame (\"M3\"): not "
                           "the m3 protocol", (unsigned char)b[0], n > 1 ? (unsigned char)b[1] : 0);
}

/* Discard the rest of an attachment given up on (c->skip bytes) before
 * reading the next frame. Returns 0, 1 on deadline, or a transport failure. */
static int skip_rest(m3_client *c, m3_method method, uint64_t deadline) {
  while (c->skip) {
    size_t have = c->rlen - c->rpos;
    if (have) {
      size_t n = have < c->skip ? have : c->skip;
      c->rpos += n;
      c->skip -= n;
      if (c->rpos == c->rlen) c->rpos = c->rlen = 0;
      continue;
    }
    int rc = fill(c, method, c->skip < RBUF_MIN ? c->skip : RBUF_MIN, deadline);
    if (rc) return rc;
  }
  return 0;
}

/* Read the next frame's header and message: *msg points into rbuf until
 * the next read, and the frame's attachment (f->att_len bytes) is what
 * comes next (read it with land(), or skip it). */
static int read_head(m3_client *c, m3_method method, uint64_t deadline, m3_frame *f,
                     const uint8_t **msg) {
  int rc = skip_rest(c, method, deadline);
  if (rc) return rc;
  if ((rc = fill(c, method, 2, deadline)) != 0) return rc;
  if (c->rbuf[c->rpos] != 'M' || c->rbuf[c->rpos + 1] != '3') return not_m3_peer(c, method);
  if ((rc = fill(c, method, M3_FRAME_HEADER_SIZE, deadline)) != 0) return rc;
  rc = m3_frame_decode(c->rbuf + c->rpos, c->max_frame, f);
  if (rc) return broken(c, method, "bad frame from the server: %s", m3_errmsg());
  size_t head = M3_FRAME_HEADER_SIZE + (size_t)f->msg_len;
  if ((rc = fill(c, method, head, deadline)) != 0) return rc;
  *msg = c->rbuf + c->rpos + M3_FRAME_HEADER_SIZE;
  c->rpos += head; /* rbuf keeps the bytes until the next read */
  c->skip = f->att_len; /* until land() takes it */
  c->att_crc_ok = 0;
  c->ctr.frames_read++;
  return 0;
}

/*
 * Land the attachment of the frame just read (len bytes, announced by
 * read_head) at dst (NULL: in place in rbuf when it is all there and
 * 8-aligned, else in the connection's abuf). What rbuf already holds of it
 * is copied with its CRC32C in the same pass; the rest is received straight
 * into dst, the CRC extended over each piece right after it lands (in
 * cache), with up to READ_AHEAD bytes of what follows into rbuf (usually the
 * next frame's header and message: one recv per memory). *att is where it
 * landed; att_crc its CRC32C (att_crc_ok). Returns 0, 1 on deadline (the
 * rest is skipped before the next frame), or a transport failure.
 */
static int land(m3_client *c, m3_method method, uint64_t deadline, size_t len, uint8_t *dst,
                const uint8_t **att) {
  size_t have = c->rlen - c->rpos;
  if ((uintptr_t)dst & 7) dst = NULL; /* records are read in place: 8-aligned */
  if (len == 0) {
    *att = c->rbuf + c->rpos;
    return 0;
  }
  if (dst == NULL && have >= len && !((uintptr_t)(c->rbuf + c->rpos) & 7)) {
    *att = c->rbuf + c->rpos; /* on_memory computes the CRC */
    c->rpos += len;
    c->skip = 0;
    if (c->rpos == c->rlen) c->rpos = c->rlen = 0;
    return 0;
  }
  if (dst == NULL) {
    if (c->acap < len) {
      uint8_t *b = malloc(len);
      if (b == NULL) {
        c->broken = 1;
        m3__client_status(c, method, M3__STATUS_CODE__RESOURCE_EXHAUSTED,
                          "no memory for a %zu-byte attachment", len);
        return m3__seterr(M3_ENOMEM, "%s", c->last_msg);
      }
      free(c->abuf);
      c->abuf = b;
      c->acap = len;
    }
    dst = c->abuf;
  }
  size_t got = have < len ? have : len;
  uint32_t crc = m3_crc32c_copy(0, dst, c->rbuf + c->rpos, got);
  c->rpos += got;
  if (c->rpos == c->rlen) c->rpos = c->rlen = 0;
  while (got < len) {
    /* rbuf is empty here (read_head made it at least RBUF_MIN): what
     * follows the attachment goes to its front. */
    struct iovec iov[2] = {{dst + got, len - got}, {c->rbuf, READ_AHEAD}};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
    /* TLS: OpenSSL decrypts into dst, what follows stays in its buffer. */
    ssize_t r = c->ssl ? io_recv(c, dst + got, len - got) : recvmsg(c->fd, &mh, 0);
    if (r > 0) {
      size_t n = (size_t)r < len - got ? (size_t)r : len - got;
      crc = m3_crc32c(crc, dst + got, n);
      got += n;
      c->rlen = (size_t)r - n;
      c->ctr.bytes_read += (uint64_t)r;
      continue;
    }
    c->skip = len - got; /* a deadline: discarded before the next frame */
    int rc = recv_failed(c, method, r, deadline);
    if (rc) return rc;
  }
  c->skip = 0;
  c->att_crc = crc;
  c->att_crc_ok = 1;
  *att = dst;
  return 0;
}

/* ---- calls ---------------------------------------------------------- */

/* The Status carried by an END frame: its code is the header's arg. */
static int end_status(m3_client *c, m3_method method, const m3_frame *f, const uint8_t *msg) {
  int code = (int)f->arg;
  if (code == M3__STATUS_CODE__OK) return m3__client_status(c, method, 0, "ok");
  M3__Status *st = f->msg_len ? m3__status__unpack(&c->pb_alloc, f->msg_len, msg) : NULL;
  int rc = named_status(c, method, code, st ? st->error : 0, "%s",
                        st && st->message && *st->message ? st->message : "(no message)");
  if (st) m3__status__free_unpacked(st, &c->pb_alloc);
  return rc;
}

int m3__client_call(m3_client *c, m3_method method, const ProtobufCMessage *req,
                    const void *att, size_t att_len, int timeout_ms, m3__msg_fn fn, void *ud) {
  return m3__client_call_into(c, method, req, att, att_len, timeout_ms, NULL, fn, ud);
}

int m3__client_call_into(m3_client *c, m3_method method, const ProtobufCMessage *req,
                         const void *att, size_t att_len, int timeout_ms, m3__att_fn dest,
                         m3__msg_fn fn, void *ud) {
  if (c->pb_alloc.alloc == NULL) {
    c->pb_alloc = (ProtobufCAllocator){arena_alloc, arena_free, &c->arena};
    c->arena.block = malloc(ARENA_MIN);
    c->arena.cap = c->arena.block ? ARENA_MIN : 0;
  }
  if (c->broken)
    return broken(c, method, "the connection is closed after an earlier failure; reconnect");
  if (c->goaway)
    return m3__client_status(c, method, M3__STATUS_CODE__UNAVAILABLE,
                             "the server is draining (GOAWAY); connect again");
  if (att_len > UINT32_MAX)
    return m3__client_status(c, method, M3__STATUS_CODE__INVALID_ARGUMENT,
                             "attachment of %zu bytes is too large", att_len);
  uint32_t stream = c->next_stream++;
  if (c->next_stream == 0) c->next_stream = 1;
  c->ctr.calls++;
  uint64_t deadline = timeout_ms > 0 ? now_ns() + (uint64_t)timeout_ms * 1000000ull : 0;
  m3_frame f = {.type = M3_FRAME_REQUEST, .method = (uint16_t)method, .stream = stream,
                .att_len = (uint32_t)att_len, .arg = timeout_ms > 0 ? (uint32_t)timeout_ms : 0};
  size_t before = c->out.len - c->out_off, sent;
  int rc = m3_frame_append(&c->out, &f, req);
  if (rc) return m3__client_status(c, method, M3__STATUS_CODE__RESOURCE_EXHAUSTED, "%s", m3_errmsg());
  rc = send_all(c, method, att, att_len, deadline, &sent);
  if (rc < 0) return rc;
  if (rc == 1) {
    if (sent > before) {
      /* Part of our request is on the wire: the byte stream cannot be
       * resumed without finishing it, and the deadline is gone. */
      c->broken = 1;
    } else {
      c->out.len = c->out_off + (before - sent); /* drop the unsent request */
    }
    return m3__client_status(c, method, M3__STATUS_CODE__DEADLINE_EXCEEDED,
                             "could not send the request within %d ms", timeout_ms);
  }

  for (;;) {
    const uint8_t *msg = NULL, *fatt = NULL;
    rc = read_head(c, method, deadline, &f, &msg);
    if (rc == 1) {
      send_cancel(c, method, stream);
      return m3__client_status(c, method, M3__STATUS_CODE__DEADLINE_EXCEEDED,
                               "no answer within %d ms (call cancelled)", timeout_ms);
    }
    if (rc < 0) return rc;
    if (f.type == M3_FRAME_GOAWAY) {
      c->goaway = 1; /* calls in flight still finish */
      continue;
    }
    if (f.stream != stream) continue; /* a late frame of a call we gave up on */
    if (f.type == M3_FRAME_END) return end_status(c, method, &f, msg);
    if (f.type != M3_FRAME_RESPONSE || f.method != method)
      return broken(c, method, "unexpected frame (type %u, method %u) on stream %u", f.type,
                    f.method, stream);
    arena_reset(&c->arena);
    ProtobufCMessage *m =
        protobuf_c_message_unpack(m3_methods[method].response, &c->pb_alloc, f.msg_len, msg);
    if (m == NULL) {
      send_cancel(c, method, stream);
      return m3__client_status(c, method, M3__STATUS_CODE__INTERNAL,
                               "undecodable %s message (%u bytes) from the server",
                               m3_methods[method].response->name, f.msg_len);
    }
    /* The message is unpacked (rbuf may be reused now): its attachment
     * lands where the call wants it. */
    rc = land(c, method, deadline, f.att_len, dest && f.att_len ? dest(ud, m, f.att_len) : NULL,
              &fatt);
    if (rc == 1) {
      send_cancel(c, method, stream);
      return m3__client_status(c, method, M3__STATUS_CODE__DEADLINE_EXCEEDED,
                               "no answer within %d ms (call cancelled)", timeout_ms);
    }
    if (rc < 0) return rc;
    rc = fn(ud, m, fatt, f.att_len);
    if (rc != 0) {
      if (!(f.flags & M3_FRAME_FLAG_END)) send_cancel(c, method, stream);
      m3__client_status(c, method, M3__STATUS_CODE__CANCELLED, "stopped by the caller (%d)", rc);
      return rc;
    }
    if (f.flags & M3_FRAME_FLAG_END) return m3__client_status(c, method, 0, "ok");
  }
}
