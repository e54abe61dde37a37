/*
 * TLS on the RPC port (issue 14), with real m3-server processes on loopback
 * and certificates made at test time by the openssl CLI (make_certs.sh):
 *   - a Retrieve and a Fetch over TLS (mutual) equal the plain ones byte
 *     for byte, on the sendfile path and on --no-sendfile, and equal the
 *     store's own bytes;
 *   - a server certificate of an unknown CA, an expired one, one for
 *     another name, a missing client certificate, one from an unknown CA
 *     and an expired one: each refused, each with its own message;
 *   - a plain client on the TLS port and a TLS client on the plain port
 *     fail fast, saying so; plain listening off loopback is refused;
 *   - `openssl s_client` negotiates TLSv1.3 (and no TLS 1.2); the server
 *     logs the client certificate's subject and SANs;
 *   - SIGHUP reloads certificate and key under a running client loop that
 *     loses no call; new connections get the new certificate;
 *   - --admin-cert-subject makes a certificate admin (subject or SAN), the
 *     tokens still working beside it.
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "cluster/cluster_testlib.h"

static ct_store st;
static char certs[700];

/* A server with its stderr in a log file (ct_server drops it). */
typedef struct tsrv {
  pid_t pid;
  char addr[64];
  int port, http_port;
  char log[700];
} tsrv;

/* Servers still running when a check fails are killed by the test's
 * teardown (else they would hold the store's lock, and ctest's pipe). */
static pid_t live[16];

static int kill_live(void **state) {
  (void)state;
  for (int i = 0; i < 16; i++)
    if (live[i] > 0) {
      kill(live[i], SIGKILL);
      waitpid(live[i], NULL, 0);
      live[i] = 0;
    }
  return 0;
}

static void srv_start(tsrv *s, const char *const *extra) {
  char bin[4096], pf[700];
  m3t_bin_path(bin, sizeof bin, "m3-server");
  if (access(bin, X_OK) != 0) {
    print_message("no m3-server at %s: skipped\n", bin);
    exit(77);
  }
  static int seq;
  seq++;
  snprintf(pf, sizeof pf, "%s/tls-port.%d", st.dir, seq);
  snprintf(s->log, sizeof s->log, "%s/tls-server.%d.log", st.dir, seq);
  unlink(pf);
  const char *argv[40] = {bin, "--store", st.store, "--listen", "127.0.0.1:0", "--http",
                          "127.0.0.1:0", "--port-file", pf, "--name", "tls-test"};
  int n = 11;
  for (int i = 0; extra && extra[i] && n < 39; i++) argv[n++] = extra[i];
  argv[n] = NULL;
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open(s->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) dup2(fd, 2);
    execv(bin, (char *const *)argv);
    _exit(127);
  }
  s->pid = pid;
  for (int i = 0; i < 16; i++)
    if (live[i] == 0) {
      live[i] = pid;
      break;
    }
  long long deadline = m3t_now_ms() + 20000;
  while (m3t_now_ms() < deadline) {
    FILE *f = fopen(pf, "r");
    if (f) {
      int got = fscanf(f, "rpc=%d http=%d", &s->port, &s->http_port);
      fclose(f);
      if (got == 2 && s->port > 0) {
        snprintf(s->addr, sizeof s->addr, "127.0.0.1:%d", s->port);
        return;
      }
    }
    if (waitpid(pid, NULL, WNOHANG) == pid) {
      m3t_sh("cat %s >&2", s->log);
      fail_msg("m3-server exited before listening");
    }
    m3t_sleep_ms(20);
  }
  fail_msg("m3-server did not listen within 20 s");
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL) return strdup("");
  char *buf = malloc(1 << 20);
  size_t n = fread(buf, 1, (1 << 20) - 1, f);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

static void srv_stop(tsrv *s) {
  kill(s->pid, SIGTERM);
  int wst = 0;
  waitpid(s->pid, &wst, 0);
  for (int i = 0; i < 16; i++)
    if (live[i] == s->pid) live[i] = 0;
  if (!WIFEXITED(wst) || WEXITSTATUS(wst) != 0) {
    m3t_sh("cat %s >&2", s->log);
    fail_msg("m3-server exited with status %d", wst);
  }
}

/* GET /metrics and the value of one series (0 when absent). */
static double metric(const tsrv *s, const char *series) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->http_port)};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) fail_msg("connect to /metrics");
  const char req[] = "GET /metrics HTTP/1.0\r\n\r\n";
  if (write(fd, req, sizeof req - 1) < 0) fail_msg("write");
  size_t cap = 1 << 20, n = 0;
  char *b = malloc(cap);
  ssize_t r;
  while ((r = read(fd, b + n, cap - n - 1)) > 0) n += (size_t)r;
  b[n] = '\0';
  close(fd);
  double v = 0;
  char key[200];
  snprintf(key, sizeof key, "\n%s ", series);
  char *p = strstr(b, key);
  if (p) v = strtod(p + strlen(key), NULL);
  free(b);
  return v;
}

static char *cert(const char *name) {
  static char buf[64][800];
  static int i;
  i = (i + 1) % 64;
  snprintf(buf[i], sizeof buf[i], "%s/%s", certs, name);
  return buf[i];
}

/* Connect with TLS options (NULL: unset); *rc the result, m3_errmsg() kept
 * in msg. */
static m3_client *tls_connect(const char *addr, const char *ca, const char *crt, const char *key,
                              const char *name, const char *token, int *rc, char *msg,
                              size_t cap) {
  m3_client_options o;
  m3_client_options_init(&o);
  o.tls_ca = ca;
  o.tls_cert = crt;
  o.tls_key = key;
  o.tls_name = name;
  o.token = token;
  m3_client *c = NULL;
  *rc = m3_client_connect(addr, &o, &c);
  snprintf(msg, cap, "%s", *rc ? m3_errmsg() : "");
  return c;
}

static m3_client *client_ok(const char *addr, const char *ca, const char *crt, const char *key) {
  int rc;
  char msg[700];
  m3_client *c = tls_connect(addr, ca, crt, key, NULL, NULL, &rc, msg, sizeof msg);
  if (rc) fail_msg("connect %s: %s", addr, msg);
  return c;
}

static int setup(void **state) {
  (void)state;
  ct_store_make(&st, 200, 32);
  snprintf(certs, sizeof certs, "%s/certs", st.dir);
  const char *src = getenv("M3_SOURCE_DIR");
  if (src == NULL) src = ".";
  if (m3t_sh("bash %s/tests/tls/make_certs.sh %s", src, certs) != 0)
    fail_msg("make_certs.sh failed");
  return 0;
}

static int teardown(void **state) {
  (void)state;
  ct_store_free(&st);
  return 0;
}

#define NQ 8
#define K 5

/* The same Retrieve (NQ x top-K, with texts) and a Fetch of every id. */
static void rounds(m3_client *c, cl_round *ret, cl_round *fet) {
  uint64_t rng = 7;
  float q[NQ][32];
  m3_client_query qs[NQ];
  for (int i = 0; i < NQ; i++) {
    m3t_rand_unit(&rng, q[i], 32);
    qs[i] = (m3_client_query){.vector = q[i], .dim = 32};
  }
  cl_round_init(ret, NQ, K);
  CHECK_OK(m3_client_retrieve(c, qs, NQ, K, 1, cl_round_on_mem, ret));
  uint64_t ids[200];
  for (int i = 0; i < 200; i++) ids[i] = (uint64_t)i;
  cl_round_init(fet, 200, 1);
  CHECK_OK(m3_client_fetch(c, ids, 200, 0, cl_round_on_mem, fet));
}

/* Landing (m3_client_set_landing) under TLS: OpenSSL decrypts into the
 * caller's slots; one slot per id, 8-aligned. */
static uint8_t *land_slots;
static void *land_at(void *ud, uint64_t chunk_id, uint32_t query, uint32_t rank, size_t len) {
  (void)ud, (void)rank, (void)chunk_id;
  return len <= st.mem_len ? land_slots + (size_t)query * ((st.mem_len + 7) & ~(size_t)7) : NULL;
}

static void fetch_landed(m3_client *c, const cl_round *want) {
  size_t slot = (st.mem_len + 7) & ~(size_t)7;
  land_slots = aligned_alloc(8, 200 * slot);
  memset(land_slots, 0, 200 * slot);
  uint64_t ids[200];
  for (int i = 0; i < 200; i++) ids[i] = (uint64_t)i;
  cl_round got;
  cl_round_init(&got, 200, 1);
  m3_client_set_landing(c, land_at, NULL);
  CHECK_OK(m3_client_fetch(c, ids, 200, 0, cl_round_on_mem, &got));
  m3_client_set_landing(c, NULL, NULL);
  cl_round_expect_equal(want, &got, "TLS landed Fetch vs plain");
  for (size_t i = 0; i < 200; i++)
    if (memcmp(land_slots + i * slot, st.mem[i], st.mem_len) != 0)
      fail_msg("TLS landed fetch of %zu: the slot does not hold the store's bytes", i);
  cl_round_free(&got);
  free(land_slots);
}

static void test_tls_equals_plain(void **state) {
  (void)state;
  tsrv s;
  srv_start(&s, NULL);
  m3_client *c = client_ok(s.addr, NULL, NULL, NULL);
  cl_round pr, pf;
  rounds(c, &pr, &pf);
  m3_client_close(c);
  srv_stop(&s);
  /* The fetched bytes are the store's. */
  for (size_t i = 0; i < 200; i++) {
    if (pf.h[i].len != st.mem_len || memcmp(pf.h[i].data, st.mem[i], st.mem_len) != 0)
      fail_msg("plain fetch of %zu differs from the store", i);
  }
  const char *modes[2] = {NULL, "--no-sendfile"};
  for (int m = 0; m < 2; m++) {
    const char *args[] = {"--tls-cert", cert("server.pem"), "--tls-key", cert("server.key"),
                          "--tls-ca", cert("ca.pem"), modes[m], NULL};
    srv_start(&s, args);
    c = client_ok(s.addr, cert("ca.pem"), cert("client.pem"), cert("client.key"));
    cl_round tr, tf;
    rounds(c, &tr, &tf);
    cl_round_expect_equal(&pr, &tr, m ? "TLS --no-sendfile Retrieve vs plain"
                                      : "TLS Retrieve vs plain");
    cl_round_expect_equal(&pf, &tf, m ? "TLS --no-sendfile Fetch vs plain" : "TLS Fetch vs plain");
    fetch_landed(c, &pf);
    m3_client_counters cn;
    m3_client_counters_get(c, &cn);
    if (cn.bytes_read < (uint64_t)200 * st.mem_len) fail_msg("read %llu bytes", (unsigned long long)cn.bytes_read);
    double on = metric(&s, "m3_tls"), hs = metric(&s, "m3_tls_handshakes_total");
    if (on != 1 || hs < 1) fail_msg("m3_tls %g, m3_tls_handshakes_total %g", on, hs);
    double ktls = metric(&s, "m3_tls_ktls_send_connections_total");
    double read = metric(&s, "m3_tls_file_bytes_read_total");
    print_message("TLS%s: kTLS send connections %g, file bytes read to encrypt %g\n",
                  m ? " --no-sendfile" : "", ktls, read);
    /* Without kTLS the sendfile path reads the records to encrypt them. */
    if (m == 0 && ktls == 0 && read < (double)st.mem_len)
      fail_msg("sendfile path under TLS: m3_tls_file_bytes_read_total %g", read);
    char *log = slurp(s.log);
    CHECK_CONTAINS(log, "client certificate CN=worker-1 (DNS:worker-1, URI:spiffe://m3/worker-1)");
    CHECK_CONTAINS(log, "TLS 1.3: certificate");
    free(log);
    m3_client_close(c);
    srv_stop(&s);
    cl_round_free(&tr);
    cl_round_free(&tf);
  }
  cl_round_free(&pr);
  cl_round_free(&pf);
}

/* Connecting must fail with a message containing want (and the address). */
static void refused(const char *addr, const char *ca, const char *crt, const char *key,
                    const char *name, const char *want, const char *what) {
  int rc;
  char msg[700];
  long long t0 = m3t_now_ms();
  m3_client *c = tls_connect(addr, ca, crt, key, name, NULL, &rc, msg, sizeof msg);
  long long ms = m3t_now_ms() - t0;
  if (rc == 0) {
    m3_client_close(c);
    fail_msg("%s: connected, want a refusal saying '%s'", what, want);
  }
  if (strstr(msg, want) == NULL || strstr(msg, addr) == NULL)
    fail_msg("%s: message '%s' lacks '%s' or the address %s", what, msg, want, addr);
  if (ms > 3000) fail_msg("%s: took %lld ms", what, ms);
  print_message("%s: %s (%lld ms)\n", what, msg, ms);
}

static void test_tls_refusals(void **state) {
  (void)state;
  tsrv s;
  const char *mutual[] = {"--tls-cert", cert("server.pem"), "--tls-key", cert("server.key"),
                          "--tls-ca", cert("ca.pem"), NULL};
  srv_start(&s, mutual);
  const char *cc = cert("client.pem"), *ck = cert("client.key");
  refused(s.addr, cert("other-ca.pem"), cc, ck, NULL, "unknown CA: its certificate is not signed",
          "server certificate of an unknown CA");
  refused(s.addr, cert("ca.pem"), NULL, NULL, NULL, "the server requires a client certificate",
          "no client certificate");
  refused(s.addr, cert("ca.pem"), cert("rogue-client.pem"), cert("rogue-client.key"), NULL,
          "the server refused our client certificate: unknown CA", "client certificate of an unknown CA");
  refused(s.addr, cert("ca.pem"), cert("expired-client.pem"), cert("expired-client.key"), NULL,
          "the server refused our client certificate: it has expired", "expired client certificate");
  refused(s.addr, cert("ca.pem"), cc, ck, "other.example", "hostname mismatch",
          "--tls-name another name");
  /* The name checked: localhost is in the certificate's SANs too. */
  int rc;
  char msg[700];
  m3_client *c = tls_connect(s.addr, cert("ca.pem"), cc, ck, "localhost", NULL, &rc, msg, sizeof msg);
  if (rc) fail_msg("--tls-name localhost: %s", msg);
  m3_client_close(c);
  if (metric(&s, "m3_tls_handshake_failures_total") < 2)
    fail_msg("m3_tls_handshake_failures_total %g", metric(&s, "m3_tls_handshake_failures_total"));
  char *log = slurp(s.log);
  CHECK_CONTAINS(log, "TLS handshake failed");
  free(log);
  srv_stop(&s);

  const char *expired[] = {"--tls-cert", cert("expired.pem"), "--tls-key", cert("expired.key"), NULL};
  srv_start(&s, expired);
  refused(s.addr, cert("ca.pem"), NULL, NULL, NULL, "its certificate has expired",
          "expired server certificate");
  srv_stop(&s);
  const char *wrong[] = {"--tls-cert", cert("wronghost.pem"), "--tls-key", cert("wronghost.key"), NULL};
  srv_start(&s, wrong);
  refused(s.addr, cert("ca.pem"), NULL, NULL, NULL, "hostname mismatch: its certificate does not name '127.0.0.1'",
          "server certificate for another host");
  srv_stop(&s);
}

static void test_tls_mismatch(void **state) {
  (void)state;
  tsrv s;
  const char *tls[] = {"--tls-cert", cert("server.pem"), "--tls-key", cert("server.key"), NULL};
  srv_start(&s, tls);
  refused(s.addr, NULL, NULL, NULL, NULL, "this port speaks TLS", "plain client on the TLS port");
  if (metric(&s, "m3_tls_plain_refused_total") != 1)
    fail_msg("m3_tls_plain_refused_total %g", metric(&s, "m3_tls_plain_refused_total"));
  srv_stop(&s);
  srv_start(&s, NULL);
  refused(s.addr, cert("ca.pem"), NULL, NULL, NULL, "does this port speak TLS",
          "TLS client on the plain port");
  srv_stop(&s);
  /* Plain off loopback: refused at start unless forced. */
  char bin[4096];
  m3t_bin_path(bin, sizeof bin, "m3-server");
  int ex = m3t_sh("%s --store %s --listen 0.0.0.0:0 --http off 2>%s/plain-remote.log", bin,
                  st.store, st.dir);
  if (ex != 2) fail_msg("plain --listen 0.0.0.0:0 exited %d, want 2", ex);
  char path[800];
  snprintf(path, sizeof path, "%s/plain-remote.log", st.dir);
  char *log = slurp(path);
  CHECK_CONTAINS(log, "is not a loopback address and no TLS is configured");
  free(log);
  const char *forced[] = {"--allow-plain-remote", NULL};
  srv_start(&s, forced); /* on 127.0.0.1, the flag is harmless */
  srv_stop(&s);
}

static void test_tls_s_client(void **state) {
  (void)state;
  tsrv s;
  const char *mutual[] = {"--tls-cert", cert("server.pem"), "--tls-key", cert("server.key"),
                          "--tls-ca", cert("ca.pem"), NULL};
  srv_start(&s, mutual);
  char out[800];
  snprintf(out, sizeof out, "%s/s_client.out", st.dir);
  int ex = m3t_sh("openssl s_client -connect %s -CAfile %s -cert %s -key %s -verify_return_error "
                  "-brief </dev/null >%s 2>&1", s.addr, cert("ca.pem"), cert("client.pem"),
                  cert("client.key"), out);
  char *txt = slurp(out);
  if (ex != 0) fail_msg("openssl s_client exited %d: %s", ex, txt);
  CHECK_CONTAINS(txt, "Protocol version: TLSv1.3");
  CHECK_CONTAINS(txt, "Verification: OK");
  free(txt);
  ex = m3t_sh("openssl s_client -connect %s -CAfile %s -tls1_2 </dev/null >%s 2>&1", s.addr,
              cert("ca.pem"), out);
  txt = slurp(out);
  if (ex == 0 && strstr(txt, "Cipher is (NONE)") == NULL) fail_msg("TLS 1.2 was accepted: %s", txt);
  free(txt);
  srv_stop(&s);
}

/* ---- SIGHUP reload under load ----------------------------------------- */

typedef struct loop_ctx {
  const char *addr;
  atomic_int stop;
  long calls, failures, fresh;
  char err[1000];
} loop_ctx;

static int count_mem(void *ud, const m3_client_memory *m) {
  int *n = ud;
  if (m->status == 0) (*n)++;
  return 0;
}

static void *client_loop(void *arg) {
  loop_ctx *x = arg;
  m3_client *c = client_ok(x->addr, cert("ca.pem"), cert("client.pem"), cert("client.key"));
  uint64_t ids[5] = {1, 2, 3, 4, 5};
  while (!atomic_load(&x->stop)) {
    int got = 0;
    int rc = m3_client_fetch(c, ids, 5, 0, count_mem, &got);
    x->calls++;
    if (rc != 0 || got != 5) {
      x->failures++;
      snprintf(x->err, sizeof x->err, "persistent connection: rc %d got %d: %s", rc, got, m3_errmsg());
    }
    if (x->calls % 20 == 0) { /* a fresh connection: the certificate of the moment */
      int crc;
      char msg[700];
      m3_client *f = tls_connect(x->addr, cert("ca.pem"), cert("client.pem"), cert("client.key"),
                                 NULL, NULL, &crc, msg, sizeof msg);
      got = 0;
      if (crc == 0) crc = m3_client_fetch(f, ids, 5, 0, count_mem, &got);
      x->fresh++;
      if (crc != 0 || got != 5) {
        x->failures++;
        snprintf(x->err, sizeof x->err, "fresh connection: %d: %s", crc, msg);
      }
      m3_client_close(f);
    }
  }
  m3_client_close(c);
  return NULL;
}

static void install(const char *name) {
  /* cert and key replaced together (renames), then the signal */
  if (m3t_sh("cp %s/%s.pem %s/live.pem.tmp && cp %s/%s.key %s/live.key.tmp && "
             "mv %s/live.pem.tmp %s/live.pem && mv %s/live.key.tmp %s/live.key",
             certs, name, certs, certs, name, certs, certs, certs, certs, certs) != 0)
    fail_msg("installing %s", name);
}

static void served_cn(const tsrv *s, const char *want) {
  char out[800];
  snprintf(out, sizeof out, "%s/s_client.cn", st.dir);
  m3t_sh("openssl s_client -connect %s -CAfile %s -cert %s -key %s </dev/null 2>/dev/null | "
         "openssl x509 -noout -subject >%s 2>&1", s->addr, cert("ca.pem"), cert("client.pem"),
         cert("client.key"), out);
  char *txt = slurp(out);
  if (strstr(txt, want) == NULL) fail_msg("served certificate '%s', want %s", txt, want);
  free(txt);
}

static void test_tls_reload(void **state) {
  (void)state;
  install("server");
  tsrv s;
  const char *args[] = {"--tls-cert", cert("live.pem"), "--tls-key", cert("live.key"),
                        "--tls-ca", cert("ca.pem"), NULL};
  srv_start(&s, args);
  served_cn(&s, "CN = m3-server\n");
  loop_ctx x = {.addr = s.addr};
  pthread_t t;
  pthread_create(&t, NULL, client_loop, &x);
  const char *seq[] = {"server2", "server", "server2"};
  for (int i = 0; i < 3; i++) {
    m3t_sleep_ms(300);
    install(seq[i]);
    kill(s.pid, SIGHUP);
  }
  m3t_sleep_ms(300);
  /* A key that does not match the certificate: refused, the old pair stays. */
  if (m3t_sh("cp %s/server.key %s/live.key", certs, certs) != 0) fail_msg("cp");
  kill(s.pid, SIGHUP);
  m3t_sleep_ms(300);
  atomic_store(&x.stop, 1);
  pthread_join(t, NULL);
  print_message("reload under load: %ld calls (%ld on fresh connections), %ld failed\n", x.calls,
                x.fresh, x.failures);
  if (x.failures) fail_msg("%ld of %ld calls failed across the reloads: %s", x.failures, x.calls, x.err);
  if (x.calls < 20 || x.fresh < 1) fail_msg("only %ld calls (%ld fresh)", x.calls, x.fresh);
  if (metric(&s, "m3_tls_reloads_total") != 3 || metric(&s, "m3_tls_reload_failures_total") != 1)
    fail_msg("reloads %g, failures %g", metric(&s, "m3_tls_reloads_total"),
             metric(&s, "m3_tls_reload_failures_total"));
  served_cn(&s, "CN = m3-server-2\n");
  char *log = slurp(s.log);
  CHECK_CONTAINS(log, "SIGHUP: reloaded");
  CHECK_CONTAINS(log, "SIGHUP: TLS reload refused, the old certificate stays");
  free(log);
  srv_stop(&s);
}

/* ---- the admin role bound to a certificate ---------------------------- */

static int admin_of(const char *addr, const char *who, const char *token, int *rc) {
  char msg[700];
  m3_client *c = tls_connect(addr, cert("ca.pem"), cert(who[0] == 'o' ? "ops.pem" : "client.pem"),
                             cert(who[0] == 'o' ? "ops.key" : "client.key"), NULL, token, rc, msg,
                             sizeof msg);
  if (*rc) return -1;
  int admin = m3_client_info_get(c)->admin;
  m3_client_close(c);
  return admin;
}

static void test_tls_admin_cert(void **state) {
  (void)state;
  char *tok = m3t_write_file(st.dir, "read.token", "read-token-0123456789abcdef\n");
  char *adm = m3t_write_file(st.dir, "admin.token", "admin-token-0123456789abcdef\n");
  const char *subjects[] = {"CN=ops,O=m3", "spiffe://m3/ops"};
  for (int i = 0; i < 2; i++) {
    tsrv s;
    const char *args[] = {"--tls-cert", cert("server.pem"), "--tls-key", cert("server.key"),
                          "--tls-ca", cert("ca.pem"), "--admin-cert-subject", subjects[i],
                          "--token-file", tok, "--admin-token-file", adm, NULL};
    srv_start(&s, args);
    int rc;
    if (admin_of(s.addr, "ops", NULL, &rc) != 1) fail_msg("%s: the ops certificate is not admin", subjects[i]);
    if (admin_of(s.addr, "worker", "admin-token-0123456789abcdef", &rc) != 1)
      fail_msg("%s: the admin token on a worker certificate is not admin", subjects[i]);
    if (admin_of(s.addr, "worker", "read-token-0123456789abcdef", &rc) != 0)
      fail_msg("%s: a worker certificate with the read token is admin (rc %d)", subjects[i], rc);
    if (admin_of(s.addr, "worker", NULL, &rc) != -1)
      fail_msg("%s: a worker certificate without a token was let in", subjects[i]);
    srv_stop(&s);
  }
  /* Without --tls-ca there is no client certificate to bind. */
  char bin[4096];
  m3t_bin_path(bin, sizeof bin, "m3-server");
  int ex = m3t_sh("%s --store %s --tls-cert %s --tls-key %s --admin-cert-subject CN=ops "
                  "--http off 2>/dev/null", bin, st.store, cert("server.pem"), cert("server.key"));
  if (ex != 2) fail_msg("--admin-cert-subject without --tls-ca exited %d, want 2", ex);
  free(tok);
  free(adm);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_tls_equals_plain, kill_live),
      cmocka_unit_test_teardown(test_tls_refusals, kill_live),
      cmocka_unit_test_teardown(test_tls_mismatch, kill_live),
      cmocka_unit_test_teardown(test_tls_s_client, kill_live),
      cmocka_unit_test_teardown(test_tls_reload, kill_live),
      cmocka_unit_test_teardown(test_tls_admin_cert, kill_live),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
