/* See client_testlib.h. */
#include "client/client_testlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int collect_emb(void *ud, uint64_t id, const float *e) {
  ct_store *s = ud;
  if (id < s->n) memcpy(s->emb + id * s->layout.emb_dim, e, s->layout.emb_dim * sizeof *e);
  return 0;
}

void ct_store_make(ct_store *s, size_t n, unsigned emb_dim) {
  memset(s, 0, sizeof *s);
  s->dir = m3t_mkdtemp("client");
  snprintf(s->store, sizeof s->store, "%s/store", s->dir);
  char bench[4096], count[32], dim[16];
  m3t_bin_path(bench, sizeof bench, "m3-bench");
  snprintf(count, sizeof count, "%zu", n);
  snprintf(dim, sizeof dim, "%u", emb_dim);
  char *argv[] = {bench, "gen", "--store", s->store, "--count", count, "--emb-dim", dim, "--json", NULL};
  tu_child gen;
  tu_child_start(&gen, argv, NULL);
  int st = tu_child_finish(&gen, 0);
  tu_child_free(&gen);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("m3-bench gen failed (status %d)", st);

  m3_store_options o;
  m3_store_options_init(&o);
  o.read_only = 1;
  m3_store *st_ = NULL;
  CHECK_OK(m3_store_open(s->store, &o, &st_));
  s->layout = *m3_store_layout(st_);
  s->n = n;
  s->mem_len = m3_record_mem_size(&s->layout);
  s->mem = calloc(n, sizeof *s->mem);
  s->emb = calloc(n * emb_dim, sizeof *s->emb);
  size_t cap = m3_store_fetch_cap(st_);
  void *buf = m3_store_buf_alloc(st_, cap);
  for (size_t i = 0; i < n; i++) {
    m3_fetch_item it = {.chunk_id = i, .buf = buf, .cap = cap};
    CHECK_OK(m3_store_fetch(st_, &it, 1));
    CHECK_OK(it.status);
    CHECK_U64(it.len, s->mem_len);
    s->mem[i] = malloc(it.len);
    memcpy(s->mem[i], it.data, it.len);
  }
  free(buf);
  CHECK_OK(m3_store_iterate_embeddings(st_, collect_emb, s));
  m3_store_close(st_);
}

void ct_store_free(ct_store *s) {
  for (size_t i = 0; i < s->n; i++) free(s->mem[i]);
  free(s->mem);
  free(s->emb);
  m3t_rmrf(s->dir);
  free(s->dir);
}

void ct_exact_topk(const ct_store *s, const float *q, uint32_t k, uint64_t *ids, float *scores) {
  unsigned dim = s->layout.emb_dim;
  double qn = 0;
  for (unsigned d = 0; d < dim; d++) qn += (double)q[d] * q[d];
  for (uint32_t j = 0; j < k; j++) {
    ids[j] = UINT64_MAX;
    scores[j] = -INFINITY;
  }
  for (size_t i = 0; i < s->n; i++) {
    const float *e = s->emb + i * dim;
    double dot = 0, en = 0;
    for (unsigned d = 0; d < dim; d++) {
      dot += (double)q[d] * e[d];
      en += (double)e[d] * e[d];
    }
    float sc = (float)(dot / sqrt(qn * en));
    if (sc <= scores[k - 1]) continue;
    uint32_t j = k - 1;
    while (j > 0 && scores[j - 1] < sc) {
      scores[j] = scores[j - 1];
      ids[j] = ids[j - 1];
      j--;
    }
    scores[j] = sc;
    ids[j] = i;
  }
}

void ct_server_start(ct_server *srv, const ct_store *s, const char *const *extra) {
  char bin[4096], portfile[600];
  m3t_bin_path(bin, sizeof bin, "m3-server");
  if (access(bin, X_OK) != 0) {
    print_message("no m3-server at %s: skipped\n", bin);
    exit(77);
  }
  snprintf(portfile, sizeof portfile, "%s/port.%d", s->dir, (int)m3t_now_ms() & 0xffff);
  char *argv[32] = {bin, "--store", (char *)s->store, "--listen", "127.0.0.1:0", "--http", "off",
                    "--port-file", portfile, "--name", "client-test"};
  int n = 11;
  for (int i = 0; extra && extra[i] && n < 31; i++) argv[n++] = (char *)extra[i];
  argv[n] = NULL;
  tu_child_start(&srv->child, argv, NULL);
  long long deadline = m3t_now_ms() + 20000;
  while (m3t_now_ms() < deadline) {
    FILE *f = fopen(portfile, "r");
    if (f) {
      int port = 0, http = 0;
      int got = fscanf(f, "rpc=%d http=%d", &port, &http);
      fclose(f);
      if (got >= 1 && port > 0) {
        srv->http_port = got == 2 ? http : 0;
        snprintf(srv->addr, sizeof srv->addr, "127.0.0.1:%d", port);
        return;
      }
    }
    if (waitpid(srv->child.pid, NULL, WNOHANG) == srv->child.pid)
      fail_msg("m3-server exited before listening (set M3_TEST_VERBOSE=1 for its log)");
    usleep(20000);
  }
  fail_msg("m3-server did not write %s within 20 s", portfile);
}

double ct_metric(const ct_server *srv, const char *series) {
  if (srv->http_port <= 0) fail_msg("ct_metric: the server has no HTTP port");
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)srv->http_port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
    fail_msg("connect to the HTTP port %d", srv->http_port);
  const char *req = "GET /metrics HTTP/1.0\r\n\r\n";
  if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) fail_msg("write /metrics request");
  size_t cap = 1 << 20, len = 0;
  char *body = malloc(cap + 1);
  for (ssize_t r; len < cap && (r = read(fd, body + len, cap - len)) > 0;) len += (size_t)r;
  close(fd);
  body[len] = 0;
  size_t sl = strlen(series);
  for (char *line = body; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
    if (strncmp(line, series, sl) == 0 && line[sl] == ' ') {
      double v = strtod(line + sl + 1, NULL);
      free(body);
      return v;
    }
  }
  free(body);
  fail_msg("/metrics has no series %s", series);
  return 0;
}

int ct_server_stop(ct_server *srv) {
  kill(srv->child.pid, SIGTERM);
  int st = tu_child_finish(&srv->child, 0);
  tu_child_free(&srv->child);
  return st;
}

m3_client *ct_connect(const ct_server *srv, const char *token) {
  m3_client_options o;
  m3_client_options_init(&o);
  o.token = token;
  m3_client *c = NULL;
  CHECK_OK(m3_client_connect(srv->addr, &o, &c));
  return c;
}

uint8_t *ct_record_make(const ct_store *s, uint64_t id, uint64_t *rng, float *emb, size_t *size) {
  tu_mem m;
  tu_mem_make(&m, &s->layout, id, 0);
  m3t_rand_unit(rng, emb, s->layout.emb_dim);
  m.in.embedding = emb;
  *size = m3_record_size(&s->layout, m.in.text_len);
  uint8_t *rec = malloc(*size);
  if (rec == NULL) fail_msg("out of memory for a record of %zu bytes", *size);
  long n = m3_record_encode(rec, *size, &s->layout, &m.in);
  if (n != (long)*size) fail_msg("m3_record_encode: %ld, want %zu: %s", n, *size, m3_errmsg());
  tu_mem_free(&m);
  return rec;
}
