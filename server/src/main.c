/*
 * m3-server: serves one store (one shard) to inference workers over the m3
 * protocol (docs/PROTOCOL.md), with Prometheus metrics on an HTTP port.
 *
 * Configuration: defaults, then the config file (--config, `key = value`
 * lines with the long option names), then command-line flags: flags win.
 */
#include <dlfcn.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "m3/token.h"
#include "m3/error.h"
#include "m3/internal/cli.h"
#include "m3/log.h"
#include "call.h"
#include "dispatch.h"
#include "embedder.h"
#include "fetch.h"
#include "readbuf.h"
#include "server.h"
#include "tls.h"
#include "m3/version.h"

static const char *usage_text =
    "usage: m3-server --store DIR [options]\n"
    "\n"
    "  --store DIR               the store to serve (required)\n"
    "  --listen HOST:PORT        RPC address (127.0.0.1:7600; port 0 picks a free one;\n"
    "                            HOST an IP address or a name such as localhost)\n"
    "  --http HOST:PORT          /metrics, /healthz, /readyz (127.0.0.1:7601; 'off' disables)\n"
    "  --config FILE             `key = value` lines with these option names; flags win\n"
    "  --token-file F            read token (first line); clients without it are refused\n"
    "  --admin-token-file F      admin token for Put and Delete (off without it)\n"
    "  --port-file F             write the bound ports (\"rpc=N http=M\") once listening\n"
    "  --index STR               FAISS index_factory string of the retrieval index (IDMap,Flat;\n"
    "                            at 10^6+ memories a trained one: IVF1024,Flat, IVF4096,PQ32,\n"
    "                            IDMap,HNSW32; docs/INDEX.md)\n"
    "  --index-params STR        FAISS search parameters set after the index opens, e.g.\n"
    "                            nprobe=16 (IVF) or efSearch=64 (HNSW) (FAISS's defaults)\n"
    "  --cache-mb N              hot-memory cache (256 with --direct; 0 otherwise: the\n"
    "                            page cache already holds hot memories)\n"
    "  --search-threads N        OpenMP/BLAS threads of an index search (1: the libuv\n"
    "                            pool runs searches beside reads; spinning BLAS threads\n"
    "                            would take their cores)\n"
    "  --direct                  read memories with O_DIRECT\n"
    "  --max-connections N       (1024)\n"
    "  --max-http-connections N  open HTTP connections at once (64)\n"
    "  --auth-fail-limit N       failed Hellos per address a minute; then Hello is\n"
    "                            refused unchecked for the rest of it (10; 0: none)\n"
    "  --search-budget N         queries queued or searched, all calls (16384)\n"
    "  --max-batch-queries N     queries in one index search (1024)\n"
    "  --max-frame-mb N          (64; at most 4095)\n"
    "  --max-inflight N          calls per connection (64)\n"
    "  --max-queries N           queries per call (256)\n"
    "  --max-k N                 (64)\n"
    "  --max-ids N               ids per Fetch (4096)\n"
    "  --idle-timeout-ms N       close idle or non-reading connections (60000)\n"
    "  --handshake-timeout-ms N  time to send Hello (5000)\n"
    "  --default-timeout-ms N    deadline of calls that set none (30000)\n"
    "  --drain-timeout-ms N      on SIGTERM, wait this long for calls (10000)\n"
    "  --write-high-water-mb N   stop reading a connection with more queued (16)\n"
    "  --fetch-memory-mb N       read buffers of all calls together; calls beyond\n"
    "                            wait for buffers, oldest first (256)\n"
    "  --no-sendfile             always read memories into buffers on the io_uring and\n"
    "                            check them in the server. Default: memories whose\n"
    "                            pages are in the page cache (probed without blocking)\n"
    "                            go out with sendfile, only their headers checked here\n"
    "                            (the client checks every CRC32C); the rest are read\n"
    "                            into buffers and checked here\n"
    "  --min-drain-kb-per-s N    close a connection whose queued answers drain\n"
    "                            slower than this for 2 s: its buffers go back (256)\n"
    "  --shard N                 shard number announced in Hello (0)\n"
    "  --tls-cert F              PEM certificate (chain) for TLS 1.3 on the RPC port\n"
    "  --tls-key F               its PEM private key (both re-read on SIGHUP)\n"
    "  --tls-ca F                require client certificates signed by this CA (mutual\n"
    "                            TLS); the certificate's subject and SANs are logged\n"
    "  --admin-cert-subject S    a client certificate whose subject (RFC 2253, e.g.\n"
    "                            CN=ops,O=m3) or a SAN (DNS/URI/email value) is S is\n"
    "                            admin for Put and Delete (needs --tls-ca)\n"
    "  --http-tls                the HTTP port speaks TLS 1.3 too, with the same certificate\n"
    "                            (no client certificate asked: a scraper verifies the\n"
    "                            server with the CA, e.g. Prometheus tls_config.ca_file)\n"
    "  --http-tls-ca F           and requires client certificates signed by F (implies\n"
    "                            --http-tls)\n"
    "  --no-ktls                 encrypt in user space even where the kernel offers\n"
    "                            kTLS (kTLS keeps sendfile for TLS connections)\n"
    "  --allow-plain-remote      serve without TLS on a non-loopback --listen (refused\n"
    "                            otherwise: tokens and memories would cross the network\n"
    "                            in clear)\n"
    "  --name NAME               server name announced in Hello\n"
    "  -h, --help\n"
    "  --version                 version, git commit and build options\n"
    "\n"
    "SIGTERM or SIGINT: stop accepting, finish in-flight calls, exit 0.\n"
    "SIGHUP: re-read --tls-cert, --tls-key and the CAs (open connections keep theirs).\n";

void server_config_defaults(server_config *c) {
  memset(c, 0, sizeof *c);
  c->listen = "127.0.0.1:7600";
  c->http = "127.0.0.1:7601";
  c->index_factory = "IDMap,Flat";
  c->name = "m3-server";
  c->max_connections = 1024;
  c->max_http_connections = 64;
  c->auth_fail_limit = 10;
  c->search_budget = 16384;
  c->max_batch_queries = 1024;
  c->max_frame_bytes = 64u << 20;
  c->max_inflight = 64;
  c->max_queries = 256;
  c->max_k = 64;
  c->max_ids = 4096;
  c->idle_timeout_ms = 60000;
  c->handshake_timeout_ms = 5000;
  c->default_timeout_ms = 30000;
  c->drain_timeout_ms = 10000;
  c->write_high_water = 16u << 20;
  c->cache_bytes = SIZE_MAX;
  c->search_threads = 1;
  c->fetch_memory = (size_t)256 << 20;
  c->min_drain_bytes_per_s = (size_t)256 << 10;
  c->sendfile = 1;
  c->ktls = 1;
}

static const struct option opts[] = {
    {"store", required_argument, NULL, 's'},
    {"listen", required_argument, NULL, 'l'},
    {"http", required_argument, NULL, 'H'},
    {"config", required_argument, NULL, 'c'},
    {"token-file", required_argument, NULL, 't'},
    {"admin-token-file", required_argument, NULL, 'a'},
    {"port-file", required_argument, NULL, 'p'},
    {"index", required_argument, NULL, 'i'},
    {"cache-mb", required_argument, NULL, 1},
    {"direct", no_argument, NULL, 2},
    {"max-connections", required_argument, NULL, 3},
    {"max-frame-mb", required_argument, NULL, 4},
    {"max-inflight", required_argument, NULL, 5},
    {"max-queries", required_argument, NULL, 6},
    {"max-k", required_argument, NULL, 7},
    {"max-ids", required_argument, NULL, 8},
    {"idle-timeout-ms", required_argument, NULL, 9},
    {"handshake-timeout-ms", required_argument, NULL, 10},
    {"default-timeout-ms", required_argument, NULL, 11},
    {"drain-timeout-ms", required_argument, NULL, 12},
    {"write-high-water-mb", required_argument, NULL, 13},
    {"shard", required_argument, NULL, 14},
    {"name", required_argument, NULL, 15},
    {"search-threads", required_argument, NULL, 16},
    {"fetch-memory-mb", required_argument, NULL, 17},
    {"index-params", required_argument, NULL, 18},
    {"max-http-connections", required_argument, NULL, 19},
    {"auth-fail-limit", required_argument, NULL, 20},
    {"search-budget", required_argument, NULL, 21},
    {"max-batch-queries", required_argument, NULL, 22},
    {"sendfile", no_argument, NULL, 23},
    {"no-sendfile", no_argument, NULL, 25},
    {"min-drain-kb-per-s", required_argument, NULL, 24},
    {"tls-cert", required_argument, NULL, 26},
    {"tls-key", required_argument, NULL, 27},
    {"tls-ca", required_argument, NULL, 28},
    {"admin-cert-subject", required_argument, NULL, 29},
    {"allow-plain-remote", no_argument, NULL, 30},
    {"no-ktls", no_argument, NULL, 31},
    {"http-tls", no_argument, NULL, 32},
    {"http-tls-ca", required_argument, NULL, 33},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0}};

/* Parse an unsigned option value in lo..hi; exits with a message naming the
 * option (and where: FILE:LINE). */
static unsigned long num_in(const char *name, const char *v, const char *where, unsigned long lo,
                            unsigned long hi) {
  char *end;
  errno = 0;
  unsigned long x = strtoul(v, &end, 10);
  const char *w = where ? where : "", *sep = where ? ": " : "";
  if (*v == '\0' || *v == '-' || *end != '\0' || errno) {
    fprintf(stderr, "m3-server: %s%s--%s: '%s' is not a number\n", w, sep, name, v);
    exit(2);
  }
  if (x < lo || x > hi) {
    fprintf(stderr, "m3-server: %s%s--%s: %s is out of range (%lu to %lu)\n", w, sep, name, v, lo,
            hi);
    exit(2);
  }
  return x;
}

/* The ranges of the numeric options. */
#define MS_DAY 86400000ul
#define MB_MAX (1ul << 20) /* a TiB in MiB */
static unsigned long num(const char *name, const char *v, const char *where) {
  static const struct {
    const char *name;
    unsigned long lo, hi;
  } ranges[] = {
      {"cache-mb", 0, MB_MAX},           {"max-connections", 1, 1u << 20},
      {"max-frame-mb", 1, 4095},         {"max-inflight", 1, 1u << 16},
      {"max-queries", 1, 1u << 16},      {"max-k", 1, M3_INDEX_MAX_K},
      {"max-ids", 1, 1u << 20},          {"idle-timeout-ms", 1, MS_DAY},
      {"handshake-timeout-ms", 1, MS_DAY}, {"default-timeout-ms", 0, MS_DAY},
      {"drain-timeout-ms", 0, MS_DAY},   {"write-high-water-mb", 1, 4095},
      {"shard", 0, 0xFFFFFFFFul},        {"search-threads", 0, 1024},
      {"fetch-memory-mb", 1, MB_MAX},    {"max-http-connections", 1, 1u << 16},
      {"auth-fail-limit", 0, 1u << 20},  {"search-budget", 1, 1u << 24},
      {"max-batch-queries", 1, 1u << 20}, {"listen", 0, 65535},
      {"http", 0, 65535},                {"min-drain-kb-per-s", 0, 1u << 22},
  };
  for (size_t i = 0; i < sizeof ranges / sizeof *ranges; i++)
    if (!strcmp(ranges[i].name, name)) return num_in(name, v, where, ranges[i].lo, ranges[i].hi);
  return num_in(name, v, where, 0, 0xFFFFFFFFul);
}

/* Apply one option (from a flag or a config line). where: "FILE:LINE" or NULL. */
static void apply(server_config *c, int id, const char *name, const char *v, const char *where) {
  switch (id) {
  case 's': c->store_dir = v; break;
  case 'l': c->listen = v; break;
  case 'H': c->http = v; break;
  case 't': c->token_file = v; break;
  case 'a': c->admin_token_file = v; break;
  case 'p': c->port_file = v; break;
  case 'i': c->index_factory = v; break;
  case 1: c->cache_bytes = (size_t)num(name, v, where) << 20; break;
  case 2: c->direct = v == NULL || !strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes"); break;
  case 3: c->max_connections = (unsigned)num(name, v, where); break;
  case 4: c->max_frame_bytes = (unsigned)num(name, v, where) << 20; break;
  case 5: c->max_inflight = (unsigned)num(name, v, where); break;
  case 6: c->max_queries = (unsigned)num(name, v, where); break;
  case 7: c->max_k = (unsigned)num(name, v, where); break;
  case 8: c->max_ids = (unsigned)num(name, v, where); break;
  case 9: c->idle_timeout_ms = (unsigned)num(name, v, where); break;
  case 10: c->handshake_timeout_ms = (unsigned)num(name, v, where); break;
  case 11: c->default_timeout_ms = (unsigned)num(name, v, where); break;
  case 12: c->drain_timeout_ms = (unsigned)num(name, v, where); break;
  case 13: c->write_high_water = (size_t)num(name, v, where) << 20; break;
  case 14: c->shard = (unsigned)num(name, v, where); break;
  case 15: c->name = v; break;
  case 16: c->search_threads = (unsigned)num(name, v, where); break;
  case 17: c->fetch_memory = (size_t)num(name, v, where) << 20; break;
  case 18: c->index_params = v; break;
  case 19: c->max_http_connections = (unsigned)num(name, v, where); break;
  case 20: c->auth_fail_limit = (unsigned)num(name, v, where); break;
  case 21: c->search_budget = (unsigned)num(name, v, where); break;
  case 22: c->max_batch_queries = (unsigned)num(name, v, where); break;
  case 23:
    c->sendfile = v == NULL || !strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes");
    break;
  case 24: c->min_drain_bytes_per_s = (size_t)num(name, v, where) << 10; break;
  case 25: c->sendfile = 0; break;
  case 26: c->tls_cert = v; break;
  case 27: c->tls_key = v; break;
  case 28: c->tls_ca = v; break;
  case 29: c->admin_cert_subject = v; break;
  case 30:
    c->allow_plain_remote = v == NULL || !strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes");
    break;
  case 31: c->ktls = !(v == NULL || !strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes")); break;
  case 32:
    c->http_tls = v == NULL || !strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes");
    break;
  case 33:
    c->http_tls_ca = v;
    c->http_tls = 1;
    break;
  }
}

static char *trim(char *p) {
  while (*p == ' ' || *p == '\t') p++;
  char *e = p + strlen(p);
  while (e > p && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r')) *--e = '\0';
  return p;
}

/* Config values, kept for the life of the process (server_config points into
 * them); held here so that they stay reachable (LeakSanitizer). */
static char **config_values;
static size_t n_config_values;

/* Config file: `key = value`, '#' comments. Values are kept for the life of
 * the process. */
static void load_config(server_config *c, const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    fprintf(stderr, "m3-server: --config %s: %s\n", path, strerror(errno));
    exit(2);
  }
  char line[1024];
  int lineno = 0;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    char *hash = strchr(line, '#');
    if (hash) *hash = '\0';
    char *p = trim(line);
    if (*p == '\0') continue;
    char *eq = strchr(p, '=');
    char where[1100];
    snprintf(where, sizeof where, "%s:%d", path, lineno);
    if (eq == NULL) {
      fprintf(stderr, "m3-server: %s: expected `key = value`, got '%s'\n", where, p);
      exit(2);
    }
    *eq = '\0';
    char *key = trim(p), *val = strdup(trim(eq + 1));
    char **vals = realloc(config_values, (n_config_values + 1) * sizeof *vals);
    if (val == NULL || vals == NULL) {
      fprintf(stderr, "m3-server: %s: out of memory\n", where);
      exit(2);
    }
    config_values = vals;
    config_values[n_config_values++] = val;
    const struct option *o = opts;
    while (o->name && strcmp(o->name, key)) o++;
    if (o->name == NULL || !strcmp(key, "config") || !strcmp(key, "help")) {
      fprintf(stderr, "m3-server: %s: unknown key '%s' (see m3-server --help)\n", where, key);
      exit(2);
    }
    apply(c, o->val, key, val, where);
  }
  fclose(f);
}

static char *read_token(const char *path, const char *what) {
  char buf[512];
  if (m3_token_read(path, buf, sizeof buf) != 0) {
    fprintf(stderr, "m3-server: %s: %s\n", what, m3_errmsg());
    exit(2);
  }
  char *t = strdup(buf);
  if (t == NULL) {
    fprintf(stderr, "m3-server: %s: out of memory\n", what);
    exit(2);
  }
  if (strlen(t) < AUTH_TOKEN_MIN) {
    fprintf(stderr,
            "m3-server: %s %s: the token is %zu bytes; tokens must be at least %d (e.g. "
            "`openssl rand -hex 16`)\n",
            what, path, strlen(t), AUTH_TOKEN_MIN);
    exit(2);
  }
  return t;
}

/* HOST:PORT (or [V6]:PORT) into *ss; a name is resolved. 0, or -1 after
 * printing what is wrong with --what. */
static int resolve_addr(const char *hostport, const char *what, struct sockaddr_storage *ss) {
  char host[256];
  const char *colon = strrchr(hostport, ':');
  if (colon == NULL || colon == hostport || (size_t)(colon - hostport) >= sizeof host) {
    fprintf(stderr, "m3-server: --%s '%s': expected HOST:PORT\n", what, hostport);
    return -1;
  }
  memcpy(host, hostport, (size_t)(colon - hostport));
  host[colon - hostport] = '\0';
  char *h = host;
  if (h[0] == '[') { /* [::1] */
    h++;
    h[strlen(h) - 1] = '\0';
  }
  int port = (int)num(what, colon + 1, NULL);
  memset(ss, 0, sizeof *ss);
  if (uv_ip4_addr(h, port, (struct sockaddr_in *)ss) != 0 &&
      uv_ip6_addr(h, port, (struct sockaddr_in6 *)ss) != 0) {
    /* A name (localhost): its IPv4 address if it has one, else its first
     * (clients try every address of a name in turn). */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE},
                    *res = NULL, *pick;
    char ps[8];
    snprintf(ps, sizeof ps, "%d", port);
    int g = getaddrinfo(h, ps, &hints, &res);
    if (g != 0 || res == NULL) {
      fprintf(stderr, "m3-server: --%s '%s': not an IP address or a known host name (%s)\n", what,
              hostport, g ? gai_strerror(g) : "no address");
      if (res) freeaddrinfo(res);
      return -1;
    }
    for (pick = res; pick->ai_next && pick->ai_family != AF_INET; pick = pick->ai_next) {
    }
    if (pick->ai_family != AF_INET) pick = res;
    memcpy(ss, pick->ai_addr, pick->ai_addrlen);
    freeaddrinfo(res);
  }
  return 0;
}

static int bind_addr(uv_loop_t *loop, uv_tcp_t *t, const char *hostport, const char *what) {
  struct sockaddr_storage ss;
  if (resolve_addr(hostport, what, &ss) != 0) return -1;
  uv_tcp_init(loop, t);
  int rc = uv_tcp_bind(t, (struct sockaddr *)&ss, 0);
  if (rc) {
    fprintf(stderr, "m3-server: --%s %s: %s\n", what, hostport, uv_strerror(rc));
    return -1;
  }
  return 0;
}

static int bound_port(uv_tcp_t *t) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (uv_tcp_getsockname(t, (struct sockaddr *)&ss, &len) != 0) return -1;
  return ss.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
                                 : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

/* Whether HOST:PORT names a loopback address (127.0.0.0/8, ::1, localhost). */
static int loopback_listen(const char *hostport) {
  if (!strncmp(hostport, "localhost:", 10) || !strncmp(hostport, "[::1]:", 6)) return 1;
  if (strncmp(hostport, "127.", 4) != 0) return 0;
  struct sockaddr_in sa;
  char host[64];
  const char *colon = strrchr(hostport, ':');
  if (colon == NULL || (size_t)(colon - hostport) >= sizeof host) return 0;
  memcpy(host, hostport, (size_t)(colon - hostport));
  host[colon - hostport] = '\0';
  return uv_ip4_addr(host, 0, &sa) == 0;
}

static void on_sighup(uv_signal_t *sig, int signum) {
  server *s = sig->data;
  (void)signum;
  if (s->tls == NULL) {
    M3_INFO("server", "SIGHUP: no TLS configured: nothing to reload");
    return;
  }
  if (tls_server_reload(s->tls) != 0) {
    M3_WARN("server", "SIGHUP: TLS reload refused, the old certificate stays: %s", m3_errmsg());
    return;
  }
  char d[800];
  tls_server_describe(s->tls, d, sizeof d);
  M3_INFO("server", "SIGHUP: reloaded: %s (%u open connections keep theirs)", d, s->nconns);
  if (s->http_tls && tls_server_reload(s->http_tls) != 0)
    M3_WARN("server", "SIGHUP: the HTTP port's TLS reload refused, its old certificate stays: %s",
            m3_errmsg());
  else if (s->http_tls)
    M3_INFO("server", "SIGHUP: reloaded the HTTP port's TLS");
}

static void on_connection(uv_stream_t *l, int status) {
  server *s = l->data;
  if (status < 0) {
    M3_WARN("server", "accept: %s", uv_strerror(status));
    return;
  }
  conn_accept(s, l);
}

/* ---- drain ------------------------------------------------------------ */

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void drain_tick(uv_timer_t *t) {
  server *s = t->data;
  uint64_t waited_ms = (now_ns() - s->started_ns) / 1000000; /* reset at SIGTERM */
  size_t queued = 0;
  for (conn *c = s->conns; c; c = c->next) queued += c->queued;
  int timed_out = waited_ms >= s->cfg.drain_timeout_ms;
  if ((s->inflight == 0 && queued == 0) || timed_out) {
    if (timed_out)
      M3_WARN("server", "drain timeout: %u calls still in flight are dropped", s->inflight);
    uv_stop(s->loop);
  }
}

static void on_signal(uv_signal_t *sig, int signum) {
  server *s = sig->data;
  if (s->draining) return;
  M3_INFO("server", "signal %d: draining %u in-flight calls on %u connections", signum,
          s->inflight, s->nconns);
  s->draining = 1;
  uv_close((uv_handle_t *)&s->listener, NULL);
  if (s->http_on) uv_close((uv_handle_t *)&s->http_listener, NULL);
  conn_goaway_all(s);
  s->started_ns = now_ns(); /* drain_tick measures from here */
  uv_timer_init(s->loop, &s->drain_timer);
  s->drain_timer.data = s;
  uv_timer_start(&s->drain_timer, drain_tick, 0, 10);
}

int main(int argc, char **argv) {
  if (m3_version_asked(argc, argv, "m3-server")) return 0;
  server s;
  memset(&s, 0, sizeof s);
  server_config_defaults(&s.cfg);

  /* The config file first, so that flags override it. */
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--config") && i + 1 < argc) load_config(&s.cfg, argv[i + 1]);
    else if (!strncmp(argv[i], "--config=", 9)) load_config(&s.cfg, argv[i] + 9);
  }
  if (m3_cli_exact_long(argc, argv, "h", opts, "m3-server")) return 2;
  int ch;
  while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    if (ch == 'h') {
      fputs(usage_text, stdout);
      return 0;
    }
    if (ch == '?') {
      fputs(usage_text, stderr);
      return 2;
    }
    if (ch == 'c') continue;
    const struct option *o = opts;
    while (o->name && o->val != ch) o++;
    apply(&s.cfg, ch, o->name, optarg, NULL);
  }
  if (optind < argc) {
    fprintf(stderr, "m3-server: unexpected argument '%s'\n", argv[optind]);
    return 2;
  }
  if (s.cfg.store_dir == NULL) {
    fprintf(stderr, "m3-server: --store DIR is required\n%s", usage_text);
    return 2;
  }
  /* Addresses before the store opens: a bad port or an unknown host is a
   * usage error. */
  struct sockaddr_storage chk;
  if (m3_cli_check_addr("m3-server", "--listen", s.cfg.listen, 0) != 0 ||
      resolve_addr(s.cfg.listen, "listen", &chk) != 0)
    return 2;
  if (s.cfg.http && *s.cfg.http && strcmp(s.cfg.http, "off") != 0 &&
      (m3_cli_check_addr("m3-server", "--http", s.cfg.http, 0) != 0 ||
       resolve_addr(s.cfg.http, "http", &chk) != 0))
    return 2;
  if (s.cfg.max_queries > s.cfg.search_budget) {
    fprintf(stderr, "m3-server: --max-queries %u is over --search-budget %u: no call could fit\n",
            s.cfg.max_queries, s.cfg.search_budget);
    return 2;
  }
  if ((s.cfg.tls_cert != NULL) != (s.cfg.tls_key != NULL)) {
    fprintf(stderr, "m3-server: %s without %s: TLS needs both\n",
            s.cfg.tls_cert ? "--tls-cert" : "--tls-key", s.cfg.tls_cert ? "--tls-key" : "--tls-cert");
    return 2;
  }
  if (s.cfg.tls_ca && !s.cfg.tls_cert) {
    fprintf(stderr, "m3-server: --tls-ca needs --tls-cert and --tls-key (the server's own)\n");
    return 2;
  }
  if (s.cfg.admin_cert_subject && !s.cfg.tls_ca) {
    fprintf(stderr, "m3-server: --admin-cert-subject needs --tls-ca: without it clients send "
                    "no certificate\n");
    return 2;
  }
  if (!s.cfg.tls_cert && !s.cfg.allow_plain_remote && !loopback_listen(s.cfg.listen)) {
    fprintf(stderr,
            "m3-server: --listen %s is not a loopback address and no TLS is configured: "
            "tokens and memories would cross the network in clear. Give --tls-cert F "
            "--tls-key F (docs/OPERATIONS.md, Security), or --allow-plain-remote on a "
            "network you trust\n",
            s.cfg.listen);
    return 2;
  }
  if (s.cfg.http_tls && !s.cfg.tls_cert) {
    fprintf(stderr, "m3-server: %s needs --tls-cert and --tls-key (the HTTP port uses the RPC "
            "port's certificate)\n", s.cfg.http_tls_ca ? "--http-tls-ca" : "--http-tls");
    return 2;
  }
  if (s.cfg.tls_cert) {
    int trc = tls_server_open(s.cfg.tls_cert, s.cfg.tls_key, s.cfg.tls_ca, NULL, s.cfg.ktls, &s.tls);
    if (trc == 0 && s.cfg.http_tls)
      trc = tls_server_open(s.cfg.tls_cert, s.cfg.tls_key, s.cfg.http_tls_ca, "--http-tls-ca", 0,
                            &s.http_tls);
    if (trc) {
      fprintf(stderr, "m3-server: %s\n", m3_errmsg());
      tls_server_close(s.tls);
      return 2;
    }
  }
  if (s.cfg.token_file) s.token = read_token(s.cfg.token_file, "--token-file");
  if (s.cfg.admin_token_file) s.admin_token = read_token(s.cfg.admin_token_file, "--admin-token-file");

  m3_store_options so;
  m3_store_options_init(&so);
  so.direct = s.cfg.direct;
  so.cache_bytes = s.cfg.cache_bytes != SIZE_MAX ? s.cfg.cache_bytes
                  : s.cfg.direct                 ? (size_t)256 << 20
                                                 : 0;
  /* BLAS and OpenMP threads that spin between calls would compete with the
   * loop and the read workers for the cores: size them once here (OpenBLAS's
   * count is global) and per search (OpenMP's is per thread). Looked up, not
   * linked: whatever BLAS and OpenMP FAISS brought in. */
  if (s.cfg.search_threads == 0) s.cfg.search_threads = 1;
  void (*blas_threads)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "openblas_set_num_threads");
  if (blas_threads) blas_threads((int)s.cfg.search_threads);
  s.omp_set_num_threads = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
  int rc = m3_store_open(s.cfg.store_dir, &so, &s.store);
  if (rc) {
    fprintf(stderr, "m3-server: %s: %s: %s\n", s.cfg.store_dir, m3_strerror(rc), m3_errmsg());
    return 2;
  }
  m3_store_stats st;
  if ((rc = m3_store_stats_get(s.store, &st)) != 0) {
    fprintf(stderr, "m3-server: %s: %s\n", s.cfg.store_dir, m3_errmsg());
    return 2;
  }
  s.records = st.records;
  s.emb_dim = m3_store_layout(s.store)->emb_dim;
  if ((rc = server_embedder_load(&s)) != 0) {
    fprintf(stderr, "m3-server: %s\n", m3_errmsg());
    m3_store_close(s.store);
    return 2;
  }
  if (s.emb_dim) {
    m3_index_options io;
    m3_index_options_init(&io);
    io.factory = s.cfg.index_factory;
    io.params = s.cfg.index_params;
    if ((rc = m3_index_open(s.store, &io, &s.index)) != 0) {
      fprintf(stderr, "m3-server: retrieval index: %s: %s\n", m3_strerror(rc), m3_errmsg());
      server_embedder_close(&s);
      m3_store_close(s.store);
      return 2;
    }
    m3_index_info ii;
    m3_index_info_get(s.index, &ii);
    s.index_nlist = ii.nlist;
    s.index_ef_search = ii.takes_ef_search;
    s.index_factory = ii.factory;
    s.index_vectors = ii.count;
  } else {
    M3_WARN("server", "%s keeps no embeddings: Search and Retrieve are off, Fetch works",
            s.cfg.store_dir);
  }

  pthread_mutex_init(&s.admin_lock, NULL);
  s.loop = uv_default_loop();
  s.started_ns = now_ns();
  s.hooks = (conn_hooks){dispatch_frame, call_conn_closing, rb_written, dispatch_refuse_early};
  if (rb_init(&s) != 0) {
    fprintf(stderr, "m3-server: %s\n", m3_errmsg());
    return 2;
  }
  s.listener.data = &s;
  if (bind_addr(s.loop, &s.listener, s.cfg.listen, "listen") != 0) return 2;
  if ((rc = uv_listen((uv_stream_t *)&s.listener, 1024, on_connection)) != 0) {
    fprintf(stderr, "m3-server: listen %s: %s\n", s.cfg.listen, uv_strerror(rc));
    return 2;
  }
  if (s.cfg.http && *s.cfg.http && strcmp(s.cfg.http, "off") != 0) {
    if (bind_addr(s.loop, &s.http_listener, s.cfg.http, "http") != 0) return 2;
    if ((rc = http_start(&s)) != 0) {
      fprintf(stderr, "m3-server: listen %s: %s\n", s.cfg.http, uv_strerror(rc));
      return 2;
    }
    s.http_on = 1;
  }
  int rpc_port = bound_port(&s.listener), http_port = s.http_on ? bound_port(&s.http_listener) : 0;
  if (s.cfg.port_file) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", s.cfg.port_file);
    FILE *f = fopen(tmp, "w");
    if (f == NULL || fprintf(f, "rpc=%d http=%d\n", rpc_port, http_port) < 0 || fclose(f) != 0 ||
        rename(tmp, s.cfg.port_file) != 0) {
      fprintf(stderr, "m3-server: --port-file %s: %s\n", s.cfg.port_file, strerror(errno));
      return 2;
    }
  }
  uv_signal_init(s.loop, &s.sigterm);
  uv_signal_init(s.loop, &s.sigint);
  s.sigterm.data = s.sigint.data = &s;
  uv_signal_start(&s.sigterm, on_signal, SIGTERM);
  uv_signal_start(&s.sigint, on_signal, SIGINT);
  uv_signal_init(s.loop, &s.sighup);
  s.sighup.data = &s;
  uv_signal_start(&s.sighup, on_sighup, SIGHUP);
  signal(SIGPIPE, SIG_IGN);

  M3_INFO("server", "serving %s (%llu memories, embedder %s, %s, io %s%s) on port %d, http port %d",
          s.cfg.store_dir, (unsigned long long)s.records, s.embedder,
          s.index ? "retrieval index on" : "no retrieval index", m3_store_io_backend(s.store),
          s.aio ? " on the loop" : " on the threadpool", rpc_port, http_port);
  M3_INFO("server", "read auth %s, admin auth %s", s.token ? "on (--token-file)" : "off (anyone may read)",
          s.admin_token ? "on (--admin-token-file)" : "off (Put and Delete refused)");
  if (s.tls) {
    char d[800];
    tls_server_describe(s.tls, d, sizeof d);
    M3_INFO("server", "%s%s%s", d, s.cfg.admin_cert_subject ? "; admin certificate " : "",
            s.cfg.admin_cert_subject ? s.cfg.admin_cert_subject : "");
  }
  if (s.http_on)
    M3_INFO("server", "http port %d: %s", http_port,
            !s.http_tls          ? "plain HTTP"
            : s.cfg.http_tls_ca ? "TLS 1.3, client certificates required (--http-tls-ca)"
                                : "TLS 1.3 (--http-tls), no client certificates");
  if (!s.tls) {
    M3_INFO("server", "TLS off: plain m3 protocol on %s%s", s.cfg.listen,
            loopback_listen(s.cfg.listen) ? " (loopback)" : " (--allow-plain-remote)");
  }
  uv_run(s.loop, UV_RUN_DEFAULT);

  /* Drained (or stopped): close what is left and let the callbacks run. */
  while (s.conns) conn_close(s.conns);
  http_close_all(&s);
  uv_walk(s.loop, close_walk, NULL);
  while (uv_run(s.loop, UV_RUN_NOWAIT)) {
  }
  rb_close(&s);
  fetch_close(&s);
  if (s.index) {
    if ((rc = m3_index_save(s.index, m3_store_seqno(s.store))) != 0)
      M3_WARN("server", "saving the retrieval index: %s (it is rebuilt at the next start)",
              m3_errmsg());
    m3_index_close(s.index);
  }
  server_embedder_close(&s);
  m3_store_close(s.store);
  pthread_mutex_destroy(&s.admin_lock);
  free(s.token);
  free(s.admin_token);
  tls_server_close(s.tls);
  tls_server_close(s.http_tls);
  uv_loop_close(s.loop);
  M3_INFO("server", "stopped");
  return 0;
}
