/* Helpers for the m3-server tests; see srvtest.h. */
#include "srvtest.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "m3/crc32c.h"
#include "m3/error.h"
#include "m3/store.h"

/* ---- scratch space and processes ------------------------------------- */

long st_raise_nofile(long want) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
  if ((long)rl.rlim_cur < want) {
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || (long)rl.rlim_max > want ? (rlim_t)want : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  return (long)rl.rlim_cur;
}

/* The path of a built program, which must exist. */
static void bin_checked(char *buf, size_t cap, const char *name) {
  m3t_bin_path(buf, cap, name);
  if (access(buf, X_OK) != 0) fail_msg("%s: %s (is M3_BIN_DIR set?)", buf, strerror(errno));
}

/* fork + exec argv with extra env; stderr (and stdout) to log_path (NULL:
 * inherit). */
static pid_t spawn(const char *path, char *const argv[], const char *const *env, const char *log_path) {
  pid_t pid = fork();
  if (pid < 0) fail_msg("fork: %s", strerror(errno));
  if (pid == 0) {
    if (log_path) {
      int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
      }
    }
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) {
      dup2(devnull, 0);
      close(devnull);
    }
    for (size_t i = 0; env && env[i]; i++) putenv((char *)env[i]);
    execv(path, argv);
    fprintf(stderr, "exec %s: %s\n", path, strerror(errno));
    _exit(127);
  }
  return pid;
}

int st_wait_pid(pid_t pid, int timeout_ms, int *wstatus) {
  long long end = m3t_now_ms() + timeout_ms;
  for (;;) {
    int ws;
    pid_t r = waitpid(pid, &ws, WNOHANG);
    if (r == pid) {
      if (wstatus) *wstatus = ws;
      return 1;
    }
    if (r < 0 && errno != EINTR) fail_msg("waitpid %d: %s", (int)pid, strerror(errno));
    if (m3t_now_ms() >= end) return 0;
    m3t_sleep_ms(5);
  }
}

void st_gen_store(const char *store, unsigned count, unsigned emb_dim) {
  char bin[4096], n[32], d[32], log[4200];
  bin_checked(bin, sizeof bin, "m3-bench");
  snprintf(n, sizeof n, "%u", count);
  snprintf(d, sizeof d, "%u", emb_dim);
  snprintf(log, sizeof log, "%s.gen.log", store);
  char *argv[] = {bin, "gen", "--store", (char *)store, "--count", n, "--emb-dim", d, NULL};
  pid_t pid = spawn(bin, argv, NULL, log);
  int ws = 0;
  if (!st_wait_pid(pid, 120000, &ws)) {
    kill(pid, SIGKILL);
    waitpid(pid, &ws, 0);
    fail_msg("m3-bench gen --store %s timed out", store);
  }
  if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "cat %s >&2", log);
    if (system(cmd) != 0) {
    }
    fail_msg("m3-bench gen --store %s --count %u --emb-dim %u: wait status %#x", store, count,
             emb_dim, ws);
  }
}

static char *read_log(const char *path);

char *st_spawn_expect_exit2(const char *const *argv, const char *log_path, const char *what) {
  pid_t pid = st_spawn_server(argv, NULL, log_path);
  int ws;
  if (!st_wait_pid(pid, 30000, &ws)) {
    kill(pid, SIGKILL);
    waitpid(pid, &ws, 0);
    fail_msg("%s: m3-server is still running, want exit 2", what);
  }
  char *out = read_log(log_path);
  if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 2)
    fail_msg("%s: wait status %#x, want exit 2; stderr: %s", what, ws, out);
  return out;
}

char *st_server_log(const st_server *s) { return read_log(s->log_path); }

static char *read_log(const char *path) {
  FILE *f = fopen(path, "r");
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap);
  assert_non_null(buf);
  if (f) {
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
      len += n;
      if (cap - len < 2) {
        cap *= 2;
        buf = realloc(buf, cap);
        assert_non_null(buf);
      }
    }
    fclose(f);
  }
  buf[len] = '\0';
  return buf;
}

static void print_log(const st_server *s) {
  char *log = st_server_log(s);
  size_t len = strlen(log);
  const char *tail = len > 8000 ? log + len - 8000 : log;
  fprintf(stderr, "---- %s%s ----\n%s---- end of server log ----\n", s->log_path,
          tail != log ? " (tail)" : "", tail);
  free(log);
}

pid_t st_spawn_server(const char *const *argv, const char *const *env, const char *log_path) {
  char bin[4096];
  bin_checked(bin, sizeof bin, "m3-server");
  size_t n = 0;
  while (argv[n]) n++;
  char **av = calloc(n + 1, sizeof *av);
  assert_non_null(av);
  av[0] = bin;
  for (size_t i = 1; i < n; i++) av[i] = (char *)argv[i];
  pid_t pid = spawn(bin, av, env, log_path);
  free(av);
  return pid;
}

void st_server_start(st_server *s, const char *workdir, const char *store,
                     const char *const *args, const char *const *env) {
  static int seq;
  memset(s, 0, sizeof *s);
  seq++;
  snprintf(s->port_file, sizeof s->port_file, "%s/ports.%d", workdir, seq);
  snprintf(s->log_path, sizeof s->log_path, "%s/server.%d.log", workdir, seq);
  const char *argv[64] = {"m3-server", "--store",  store,       "--listen", "127.0.0.1:0",
                          "--http",    "127.0.0.1:0", "--port-file", s->port_file};
  size_t n = 9;
  for (size_t i = 0; args && args[i]; i++) {
    assert_true(n < 63);
    argv[n++] = args[i];
  }
  argv[n] = NULL;
  s->pid = st_spawn_server(argv, env, s->log_path);
  long long end = m3t_now_ms() + 60000;
  for (;;) {
    FILE *f = fopen(s->port_file, "r");
    if (f) {
      int ok = fscanf(f, "rpc=%d http=%d", &s->rpc_port, &s->http_port) == 2;
      fclose(f);
      if (ok && s->rpc_port > 0) return;
      fail_msg("%s: unexpected content", s->port_file);
    }
    int ws;
    if (waitpid(s->pid, &ws, WNOHANG) == s->pid) {
      s->reaped = 1;
      s->wstatus = ws;
      print_log(s);
      fail_msg("m3-server exited (wait status %#x) before writing %s", ws, s->port_file);
    }
    if (m3t_now_ms() > end) {
      print_log(s);
      st_server_kill(s);
      fail_msg("m3-server did not write %s within 60 s", s->port_file);
    }
    m3t_sleep_ms(10);
  }
}

int st_server_alive(st_server *s) {
  if (s->reaped) return 0;
  int ws;
  if (waitpid(s->pid, &ws, WNOHANG) == s->pid) {
    s->reaped = 1;
    s->wstatus = ws;
    return 0;
  }
  return 1;
}

void st_server_kill(st_server *s) {
  if (s->pid <= 0 || s->reaped) return;
  kill(s->pid, SIGKILL);
  waitpid(s->pid, &s->wstatus, 0);
  s->reaped = 1;
}

void st_server_stop(st_server *s, int timeout_ms) {
  if (!s->reaped) kill(s->pid, SIGTERM);
  st_server_expect_exit0(s, timeout_ms);
}

void st_server_expect_exit0(st_server *s, int timeout_ms) {
  if (!s->reaped) {
    if (!st_wait_pid(s->pid, timeout_ms, &s->wstatus)) {
      print_log(s);
      st_server_kill(s);
      fail_msg("m3-server did not exit within %d ms", timeout_ms);
    }
    s->reaped = 1;
  }
  if (!WIFEXITED(s->wstatus) || WEXITSTATUS(s->wstatus) != 0) {
    print_log(s);
    if (WIFSIGNALED(s->wstatus))
      fail_msg("m3-server died of signal %d, want exit 0", WTERMSIG(s->wstatus));
    fail_msg("m3-server exit status %d, want 0", WEXITSTATUS(s->wstatus));
  }
}

long st_server_rss_kb(const st_server *s) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)s->pid);
  FILE *f = fopen(path, "r");
  if (f == NULL) return -1;
  long kb = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) break;
  fclose(f);
  return kb;
}

/* ---- raw protocol connections ---------------------------------------- */

int st_conn_try_open(st_conn *c, int port) {
  memset(c, 0, sizeof *c);
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->fd < 0) return -errno;
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    int e = errno;
    close(c->fd);
    c->fd = -1;
    return -e;
  }
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return 0;
}

void st_conn_open(st_conn *c, int port) {
  int rc = st_conn_try_open(c, port);
  if (rc) fail_msg("connect 127.0.0.1:%d: %s", port, strerror(-rc));
}

void st_conn_close(st_conn *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  free(c->buf);
  c->buf = NULL;
  c->len = c->cap = 0;
}

void st_send_bytes(st_conn *c, const void *p, size_t n) {
  const uint8_t *b = p;
  while (n) {
    ssize_t w = send(c->fd, b, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd pfd = {c->fd, POLLOUT, 0};
        poll(&pfd, 1, 1000);
        continue;
      }
      fail_msg("send %zu bytes: %s", n, strerror(errno));
    }
    b += w;
    n -= (size_t)w;
  }
}

uint8_t *st_frame_build(uint8_t type, uint16_t method, uint32_t stream, uint32_t arg,
                        const ProtobufCMessage *msg, const void *att, size_t att_len,
                        size_t *len) {
  m3_wbuf b = {0};
  m3_frame f = {type, 0, method, stream, 0, (uint32_t)att_len, arg};
  if (m3_frame_append(&b, &f, msg) != 0) fail_msg("m3_frame_append: %s", m3_errmsg());
  if (att_len) {
    if (m3_wbuf_reserve(&b, att_len) != 0) fail_msg("m3_wbuf_reserve: %s", m3_errmsg());
    memcpy(b.data + b.len, att, att_len);
    b.len += att_len;
  }
  *len = b.len;
  return b.data;
}

void st_send(st_conn *c, uint8_t type, uint16_t method, uint32_t stream, uint32_t arg,
             const ProtobufCMessage *msg, const void *att, size_t att_len) {
  size_t len;
  uint8_t *p = st_frame_build(type, method, stream, arg, msg, att, att_len, &len);
  st_send_bytes(c, p, len);
  free(p);
}

/* Receive more bytes into c->buf; 1 got some, 0 EOF/reset, -1 timeout. */
static int fill(st_conn *c, long long deadline) {
  if (c->cap - c->len < 65536) {
    size_t cap = c->cap ? c->cap * 2 : 1 << 17;
    while (cap - c->len < 65536) cap *= 2;
    c->buf = realloc(c->buf, cap);
    assert_non_null(c->buf);
    c->cap = cap;
  }
  for (;;) {
    long long left = deadline - m3t_now_ms();
    if (left < 0) return -1;
    struct pollfd pfd = {c->fd, POLLIN, 0};
    int pr = poll(&pfd, 1, (int)(left > 1000 ? 1000 : left));
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) continue;
    ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
    if (n > 0) {
      c->len += (size_t)n;
      return 1;
    }
    if (n == 0) return 0;
    if (errno == EINTR || errno == EAGAIN) continue;
    return 0; /* ECONNRESET and friends: the server hung up */
  }
}

int st_recv(st_conn *c, st_frame *fr, int timeout_ms) {
  long long deadline = m3t_now_ms() + timeout_ms;
  memset(fr, 0, sizeof *fr);
  for (;;) {
    if (c->len >= M3_FRAME_HEADER_SIZE) {
      m3_frame f;
      int rc = m3_frame_decode(c->buf, UINT32_MAX, &f);
      if (rc != 0) fail_msg("the server sent a bad frame header: %s", m3_errmsg());
      size_t total = M3_FRAME_HEADER_SIZE + (size_t)f.msg_len + f.att_len;
      if (c->len >= total) {
        fr->f = f;
        fr->data = malloc(total - M3_FRAME_HEADER_SIZE + 1);
        assert_non_null(fr->data);
        memcpy(fr->data, c->buf + M3_FRAME_HEADER_SIZE, total - M3_FRAME_HEADER_SIZE);
        memmove(c->buf, c->buf + total, c->len - total);
        c->len -= total;
        return 1;
      }
    }
    int r = fill(c, deadline);
    if (r <= 0) return r;
  }
}

void st_frame_free(st_frame *fr) {
  free(fr->data);
  fr->data = NULL;
}

int st_wait_closed(st_conn *c, int timeout_ms, int *goaways) {
  long long deadline = m3t_now_ms() + timeout_ms;
  for (;;) {
    long long left = deadline - m3t_now_ms();
    if (left <= 0) return 0;
    st_frame fr;
    int r = st_recv(c, &fr, (int)left);
    if (r == 0) return 1;
    if (r < 0) return 0;
    if (fr.f.type == M3_FRAME_GOAWAY && goaways) (*goaways)++;
    st_frame_free(&fr);
  }
}

void st_result_free(st_result *r) {
  if (r->resp) protobuf_c_message_free_unpacked(r->resp, NULL);
  for (size_t i = 0; i < r->n; i++) st_frame_free(&r->items[i]);
  free(r->items);
  memset(r, 0, sizeof *r);
}

M3__Memory *st_memory(const st_frame *fr) {
  M3__Memory *m = m3__memory__unpack(NULL, fr->f.msg_len, fr->data);
  if (m == NULL) fail_msg("stream %u: a Memory that does not unpack (%u bytes)", fr->f.stream, fr->f.msg_len);
  return m;
}

void st_collect(st_conn *c, uint32_t first, size_t n, const uint16_t *methods, st_result *r,
                int timeout_ms, int *goaways) {
  size_t open = n;
  for (size_t i = 0; i < n; i++) {
    memset(&r[i], 0, sizeof r[i]);
    r[i].method = methods[i];
  }
  while (open) {
    st_frame fr;
    int got = st_recv(c, &fr, timeout_ms);
    if (got == 0) fail_msg("the server closed the connection with %zu of %zu calls open", open, n);
    if (got < 0) fail_msg("no frame within %d ms with %zu of %zu calls open", timeout_ms, open, n);
    if (fr.f.type == M3_FRAME_GOAWAY) {
      if (goaways == NULL) fail_msg("unexpected GOAWAY (status %u)", fr.f.arg);
      (*goaways)++;
      st_frame_free(&fr);
      continue;
    }
    if (fr.f.stream < first || fr.f.stream >= first + n)
      fail_msg("a frame (type %u) for stream %u; the open calls are streams %u..%zu", fr.f.type,
               fr.f.stream, first, first + n - 1);
    st_result *res = &r[fr.f.stream - first];
    if (res->ended)
      fail_msg("stream %u: a frame (type %u) after the call ended", fr.f.stream, fr.f.type);
    if (fr.f.type == M3_FRAME_END) {
      M3__Status *st = m3__status__unpack(NULL, fr.f.msg_len, fr.data);
      if (st == NULL) fail_msg("stream %u: END whose Status does not unpack", fr.f.stream);
      res->status = (int)fr.f.arg;
      if ((int)st->code != res->status)
        fail_msg("stream %u: END arg %u but Status.code %d", fr.f.stream, fr.f.arg, st->code);
      snprintf(res->message, sizeof res->message, "%s", st->message ? st->message : "");
      m3__status__free_unpacked(st, NULL);
      res->ended = 1;
      open--;
      st_frame_free(&fr);
    } else if (fr.f.type == M3_FRAME_RESPONSE) {
      if (fr.f.method != res->method)
        fail_msg("stream %u: RESPONSE for method %u, the call is method %u", fr.f.stream,
                 fr.f.method, res->method);
      if (fr.f.flags & M3_FRAME_FLAG_END) {
        if (m3_methods[res->method].server_streaming)
          fail_msg("stream %u: streaming method %s ended with RESPONSE+END", fr.f.stream,
                   m3_methods[res->method].name);
        res->resp = protobuf_c_message_unpack(m3_methods[res->method].response, NULL,
                                              fr.f.msg_len, fr.data);
        if (res->resp == NULL) fail_msg("stream %u: the response does not unpack", fr.f.stream);
        res->status = 0;
        res->ended = 1;
        open--;
        st_frame_free(&fr);
      } else {
        if (!m3_methods[res->method].server_streaming)
          fail_msg("stream %u: unary method %s sent RESPONSE without FLAG_END", fr.f.stream,
                   m3_methods[res->method].name);
        res->items = realloc(res->items, (res->n + 1) * sizeof *res->items);
        assert_non_null(res->items);
        res->items[res->n++] = fr;
      }
    } else {
      fail_msg("stream %u: a frame of type %u from the server", fr.f.stream, fr.f.type);
    }
  }
}

void st_call(st_conn *c, uint16_t method, uint32_t stream, uint32_t timeout_ms,
             const ProtobufCMessage *req, const void *att, size_t att_len, st_result *r) {
  st_send(c, M3_FRAME_REQUEST, method, stream, timeout_ms, req, att, att_len);
  st_collect(c, stream, 1, &method, r, 30000, NULL);
}

int st_hello(st_conn *c, uint32_t stream, const char *token, M3__HelloResponse **out) {
  M3__HelloRequest h = M3__HELLO_REQUEST__INIT;
  h.protocol_version = M3_PROTOCOL_VERSION;
  h.token = (char *)(token ? token : "");
  h.client_name = "srvtest";
  st_result r;
  st_call(c, M3_METHOD_HELLO, stream, 0, &h.base, NULL, 0, &r);
  int status = r.status;
  if (out) {
    *out = (M3__HelloResponse *)r.resp;
    r.resp = NULL;
  }
  st_result_free(&r);
  return status;
}

void st_hello_ok(st_conn *c, uint32_t stream, const char *token) {
  int st = st_hello(c, stream, token, NULL);
  if (st != 0) fail_msg("Hello: %s, want OK", m3_status_name(st));
}

M3__Query **st_queries(const float *q, unsigned nq, unsigned dim) {
  M3__Query **qs = calloc(nq, sizeof *qs);
  assert_non_null(qs);
  for (unsigned i = 0; i < nq; i++) {
    qs[i] = malloc(sizeof *qs[i]);
    assert_non_null(qs[i]);
    m3__query__init(qs[i]);
    qs[i]->n_vector = dim;
    qs[i]->vector = (float *)(q + (size_t)i * dim);
  }
  return qs;
}

void st_queries_free(M3__Query **qs, unsigned nq) {
  for (unsigned i = 0; qs && i < nq; i++) free(qs[i]);
  free(qs);
}

M3__SearchResponse *st_search_ok(st_conn *c, uint32_t stream, const float *q, unsigned nq,
                                 unsigned dim, unsigned k) {
  M3__SearchRequest req = M3__SEARCH_REQUEST__INIT;
  req.queries = st_queries(q, nq, dim);
  req.n_queries = nq;
  req.k = k;
  st_result r;
  st_call(c, M3_METHOD_SEARCH, stream, 0, &req.base, NULL, 0, &r);
  st_queries_free(req.queries, nq);
  ST_STATUS(r, 0);
  M3__SearchResponse *out = (M3__SearchResponse *)r.resp;
  r.resp = NULL;
  st_result_free(&r);
  if (out->n_results != nq) fail_msg("Search: %zu results for %u queries", out->n_results, nq);
  return out;
}

long long st_retrieve_ok(st_conn *c, uint32_t stream, const float *q, unsigned nq, unsigned dim,
                         unsigned k) {
  M3__RetrieveRequest rr = M3__RETRIEVE_REQUEST__INIT;
  rr.queries = st_queries(q, nq, dim);
  rr.n_queries = nq;
  rr.k = k;
  long long t0 = m3t_now_ms();
  st_result r;
  st_call(c, M3_METHOD_RETRIEVE, stream, 0, &rr.base, NULL, 0, &r);
  st_queries_free(rr.queries, nq);
  ST_STATUS(r, 0);
  ST_EQ_U64(r.n, (uint64_t)nq * k);
  st_result_free(&r);
  return m3t_now_ms() - t0;
}

/* ---- HTTP ------------------------------------------------------------- */

int st_http_raw(int port, const char *request, char **body) {
  st_conn c;
  st_conn_open(&c, port);
  st_send_bytes(&c, request, strlen(request));
  long long deadline = m3t_now_ms() + 30000;
  int r;
  while ((r = fill(&c, deadline)) > 0) {
  }
  if (r < 0) fail_msg("HTTP %s: no complete answer within 30 s", request);
  if (c.len == 0) fail_msg("HTTP %.40s: the server closed without an answer", request);
  c.buf[c.len] = '\0';
  int code = 0;
  if (sscanf((char *)c.buf, "HTTP/1.%*d %d", &code) != 1)
    fail_msg("HTTP: not a status line: %.80s", (char *)c.buf);
  char *sep = strstr((char *)c.buf, "\r\n\r\n");
  if (sep == NULL) fail_msg("HTTP: no end of headers in %.200s", (char *)c.buf);
  char *cl = strstr((char *)c.buf, "Content-Length: ");
  if (cl == NULL || cl > sep) fail_msg("HTTP: no Content-Length");
  size_t want = strtoul(cl + 16, NULL, 10), got = c.len - (size_t)(sep + 4 - (char *)c.buf);
  if (want != got) fail_msg("HTTP: Content-Length %zu, body %zu bytes", want, got);
  if (body) *body = strdup(sep + 4);
  st_conn_close(&c);
  return code;
}

int st_http_get(int port, const char *path, char **body) {
  char req[512];
  snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path);
  return st_http_raw(port, req, body);
}

double st_metric(const char *text, const char *series, int *present) {
  size_t sl = strlen(series);
  for (const char *p = text; p && *p;) {
    const char *nl = strchr(p, '\n');
    if (!strncmp(p, series, sl) && p[sl] == ' ') {
      if (present) *present = 1;
      return strtod(p + sl + 1, NULL);
    }
    p = nl ? nl + 1 : NULL;
  }
  if (present == NULL) fail_msg("/metrics has no series %s", series);
  *present = 0;
  return 0;
}

static int name_char(int ch, int first) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' || ch == ':' ||
         (!first && ch >= '0' && ch <= '9');
}

size_t st_metrics_check(const char *text) {
  size_t samples = 0, lineno = 0;
  for (const char *p = text; *p;) {
    const char *nl = strchr(p, '\n');
    if (nl == NULL) fail_msg("/metrics: the last line has no newline: '%s'", p);
    lineno++;
    char line[1024];
    size_t n = (size_t)(nl - p);
    if (n >= sizeof line) fail_msg("/metrics line %zu: too long", lineno);
    memcpy(line, p, n);
    line[n] = '\0';
    p = nl + 1;
    if (line[0] == '#') {
      if (strncmp(line, "# HELP ", 7) && strncmp(line, "# TYPE ", 7))
        fail_msg("/metrics line %zu: a comment that is neither HELP nor TYPE: '%s'", lineno, line);
      if (!strncmp(line, "# TYPE ", 7)) {
        const char *t = strrchr(line, ' ') + 1;
        if (strcmp(t, "counter") && strcmp(t, "gauge") && strcmp(t, "histogram") &&
            strcmp(t, "summary") && strcmp(t, "untyped"))
          fail_msg("/metrics line %zu: unknown type '%s'", lineno, t);
      }
      continue;
    }
    if (line[0] == '\0') fail_msg("/metrics line %zu: empty", lineno);
    const char *q = line;
    if (!name_char(*q, 1)) fail_msg("/metrics line %zu: bad metric name: '%s'", lineno, line);
    while (name_char(*q, 0)) q++;
    if (*q == '{') {
      q++;
      while (*q != '}') {
        if (!name_char(*q, 1)) fail_msg("/metrics line %zu: bad label name: '%s'", lineno, line);
        while (name_char(*q, 0)) q++;
        if (q[0] != '=' || q[1] != '"') fail_msg("/metrics line %zu: bad label: '%s'", lineno, line);
        q += 2;
        while (*q && *q != '"') {
          if (*q == '\\' && q[1]) q++;
          q++;
        }
        if (*q != '"') fail_msg("/metrics line %zu: unterminated label value: '%s'", lineno, line);
        q++;
        if (*q == ',') q++;
        else if (*q != '}') fail_msg("/metrics line %zu: bad label list: '%s'", lineno, line);
      }
      q++;
    }
    if (*q != ' ') fail_msg("/metrics line %zu: no space before the value: '%s'", lineno, line);
    q++;
    char *end;
    strtod(q, &end);
    if (end == q || (*end != '\0' && *end != ' '))
      fail_msg("/metrics line %zu: value is not a number: '%s'", lineno, line);
    if (*end == ' ') { /* optional timestamp */
      const char *ts = end + 1;
      strtoll(ts, &end, 10);
      if (end == ts || *end) fail_msg("/metrics line %zu: bad timestamp: '%s'", lineno, line);
    }
    samples++;
  }
  return samples;
}

/* ---- reference data --------------------------------------------------- */

typedef struct ref_walk {
  st_ref *r;
  size_t cap;
  unsigned dim;
} ref_walk;

static int ref_emb(void *ud, uint64_t id, const float *emb) {
  ref_walk *w = ud;
  st_ref *r = w->r;
  if (r->n == w->cap) {
    w->cap = w->cap ? w->cap * 2 : 256;
    r->ids = realloc(r->ids, w->cap * sizeof *r->ids);
    r->emb = realloc(r->emb, w->cap * w->dim * sizeof *r->emb);
    assert_non_null(r->ids);
    assert_non_null(r->emb);
  }
  r->ids[r->n] = id;
  memcpy(r->emb + r->n * w->dim, emb, w->dim * sizeof *emb);
  r->n++;
  return 0;
}

void st_ref_load(st_ref *r, const char *store) {
  memset(r, 0, sizeof *r);
  m3_store_options o;
  m3_store_options_init(&o);
  o.read_only = 1;
  m3_store *s;
  int rc = m3_store_open(store, &o, &s);
  if (rc) fail_msg("m3_store_open %s: %s: %s", store, m3_strerror(rc), m3_errmsg());
  r->layout = *m3_store_layout(s);
  ref_walk w = {r, 0, r->layout.emb_dim};
  if (w.dim == 0) fail_msg("%s keeps no embeddings", store);
  rc = m3_store_iterate_embeddings(s, ref_emb, &w);
  if (rc) fail_msg("m3_store_iterate_embeddings: %s", m3_errmsg());
  r->mem = calloc(r->n, sizeof *r->mem);
  r->mem_len = calloc(r->n, sizeof *r->mem_len);
  r->mem_crc = calloc(r->n, sizeof *r->mem_crc);
  r->text = calloc(r->n, sizeof *r->text);
  assert_true(r->mem && r->mem_len && r->mem_crc && r->text);
  for (size_t i = 0; i < r->n; i++) {
    m3_location loc;
    if ((rc = m3_store_locate(s, r->ids[i], &loc)) != 0)
      fail_msg("m3_store_locate %llu: %s", (unsigned long long)r->ids[i], m3_errmsg());
    char path[4096];
    m3_store_segment_path(s, loc.segment, path, sizeof path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail_msg("open %s: %s", path, strerror(errno));
    r->mem[i] = malloc(loc.mem_len);
    assert_non_null(r->mem[i]);
    ssize_t got = pread(fd, r->mem[i], loc.mem_len, (off_t)loc.offset);
    close(fd);
    if (got != (ssize_t)loc.mem_len)
      fail_msg("pread %s @%llu: %zd of %u bytes", path, (unsigned long long)loc.offset, got,
               loc.mem_len);
    r->mem_len[i] = loc.mem_len;
    r->mem_crc[i] = loc.mem_crc;
    size_t tl;
    if ((rc = m3_store_get_text(s, r->ids[i], &r->text[i], &tl)) != 0)
      fail_msg("m3_store_get_text %llu: %s", (unsigned long long)r->ids[i], m3_errmsg());
  }
  m3_store_close(s);
}

void st_ref_free(st_ref *r) {
  for (size_t i = 0; i < r->n; i++) {
    free(r->mem[i]);
    free(r->text[i]);
  }
  free(r->mem);
  free(r->mem_len);
  free(r->mem_crc);
  free(r->text);
  free(r->ids);
  free(r->emb);
  memset(r, 0, sizeof *r);
}

long st_ref_find(const st_ref *r, uint64_t id) {
  size_t lo = 0, hi = r->n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (r->ids[mid] < id) lo = mid + 1;
    else hi = mid;
  }
  return lo < r->n && r->ids[lo] == id ? (long)lo : -1;
}

double st_cosine(const st_ref *r, const float *q, size_t i) {
  unsigned dim = r->layout.emb_dim;
  const float *e = r->emb + i * dim;
  double dot = 0, nq = 0, ne = 0;
  for (unsigned d = 0; d < dim; d++) {
    dot += (double)q[d] * e[d];
    nq += (double)q[d] * q[d];
    ne += (double)e[d] * e[d];
  }
  return nq > 0 && ne > 0 ? dot / (sqrt(nq) * sqrt(ne)) : 0;
}

void st_exact_topk(const st_ref *r, const float *q, unsigned k, uint64_t *ids, double *scores) {
  unsigned have = 0;
  for (size_t i = 0; i < r->n; i++) {
    double sc = st_cosine(r, q, i);
    uint64_t id = r->ids[i];
    /* insertion into the sorted top-k: score desc, id asc */
    unsigned pos = have;
    while (pos > 0 && (scores[pos - 1] < sc || (scores[pos - 1] == sc && ids[pos - 1] > id))) pos--;
    if (pos >= k) continue;
    unsigned last = have < k ? have : k - 1;
    for (unsigned j = last; j > pos; j--) {
      ids[j] = ids[j - 1];
      scores[j] = scores[j - 1];
    }
    ids[pos] = id;
    scores[pos] = sc;
    if (have < k) have++;
  }
  for (unsigned j = have; j < k; j++) {
    ids[j] = UINT64_MAX;
    scores[j] = -INFINITY;
  }
}

m3_layout st_layout_from_hello(const M3__Layout *l) {
  m3_layout out;
  memset(&out, 0, sizeof out);
  out.spec.n_layers = (uint16_t)l->n_layers;
  out.spec.n_kv_heads = (uint16_t)l->n_kv_heads;
  out.spec.n_tokens = (uint16_t)l->n_tokens;
  out.spec.head_dim = (uint16_t)l->head_dim;
  out.codec_kind = (uint16_t)l->codec_kind;
  out.code_bytes = (uint16_t)l->code_bytes;
  out.codec_fp = l->codec_fingerprint;
  out.emb_dim = (uint16_t)l->embedding_dim;
  return out;
}

/* One deterministic record for chunk id in layout l with embedding emb. */
uint8_t *st_make_record(const m3_layout *l, uint64_t id, const float *emb, const char *text,
                        size_t *len) {
  size_t npos = m3_spec_positions(&l->spec), ncode = m3_layout_codes_bytes(l);
  uint16_t *pos = malloc(npos * sizeof *pos);
  uint8_t *codes = malloc(ncode);
  assert_true(pos && codes);
  uint64_t seed = id * 7919;
  for (size_t i = 0; i < npos; i++) pos[i] = (uint16_t)(1 + i % l->spec.n_tokens * 15);
  for (size_t i = 0; i < ncode; i++) codes[i] = (uint8_t)m3t_rand(&seed);
  m3_record_in in = {.chunk_id = id, .chunk_len = 128, .positions = pos, .codes = codes,
                     .text = text, .text_len = strlen(text), .embedding = emb};
  size_t cap = m3_record_size(l, strlen(text));
  uint8_t *buf = malloc(cap);
  assert_non_null(buf);
  long n = m3_record_encode(buf, cap, l, &in);
  if (n < 0) fail_msg("m3_record_encode: %ld", n);
  *len = (size_t)n;
  free(pos);
  free(codes);
  return buf;
}

double st_server_metric(const st_server *s, const char *series) {
  char *body;
  ST_EQ_U64(st_http_get(s->http_port, "/metrics", &body), 200);
  int present;
  double v = st_metric(body, series, &present);
  if (!present) fail_msg("/metrics of the server on port %d has no series %s", s->http_port, series);
  free(body);
  return v;
}
