/*
 * m3-bench peer redis: the same rounds served by m3-server and by Redis.
 *
 * Redis is what a worker would otherwise put in front of its memories: a RAM
 * cache over a socket. This command loads every memory of the store (the
 * record bytes Fetch returns: header + positions + codes) into a Redis, as
 * key "m3:<chunk id>", then runs the same rounds against both: each round is
 * the same list of ids (--ids-per-round, 160 = a batch-32 Memory3 round of
 * top-5), drawn once from the store with a fixed seed; m3 answers it with
 * one Fetch call, Redis with that many GETs pipelined on one connection. C
 * connections on each side, closed loop, one side after the other (so they
 * never share the cores), each for --duration seconds. Every answer is
 * checked: m3 memories pass their CRC in the client, Redis values must have
 * the record's length and bytes equal to the store's (sampled).
 *
 * Redis is Debian's redis-server, started here on a free loopback port with
 * persistence off (or --redis HOST:PORT for one already running), driven by
 * hiredis (Debian libhiredis-dev).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "m3/internal/cli.h"
#include "m3/client.h"
#include "m3/error.h"

typedef struct peer_args {
  const char *server, *store, *redis, *redis_bin, *token_file;
  unsigned conns, per_round, rounds;
  double duration;
  int json;
  uint64_t seed;
} peer_args;

typedef struct peer_side {
  const char *name;
  uint64_t calls, errors, bytes;
  double *lat; /* us, per round */
  size_t n, cap;
  double secs;
  char err[256];
} peer_side;

typedef struct peer_shared {
  const peer_args *a;
  const uint64_t *round_ids; /* (rounds, per_round) */
  uint32_t mem_bytes;
  char token[512];
  char redis_host[64];
  int redis_port;
  uint64_t t_end; /* ns: the side being measured stops */
} peer_shared;

typedef struct peer_thread {
  peer_shared *sh;
  unsigned idx;
  pthread_t tid;
  uint64_t calls, errors, bytes, round_bytes;
  int round_failed;
  double *lat;
  size_t n, cap;
  char err[256];
} peer_thread;

static void push_lat(peer_thread *t, double us) {
  if (t->n == t->cap) {
    t->cap = t->cap ? 2 * t->cap : 4096;
    double *nl = realloc(t->lat, t->cap * sizeof *nl);
    if (nl == NULL) return;
    t->lat = nl;
  }
  t->lat[t->n++] = us;
}

static int on_memory(void *ud, const m3_client_memory *m) {
  peer_thread *t = ud;
  if (m->status) {
    t->round_failed = 1;
    if (!t->err[0]) snprintf(t->err, sizeof t->err, "chunk %llu: %s",
                             (unsigned long long)m->chunk_id, m->error);
    return 0;
  }
  t->round_bytes += m->len;
  return 0;
}

static void *m3_worker(void *arg) {
  peer_thread *t = arg;
  peer_shared *sh = t->sh;
  m3_client_options o;
  m3_client_options_init(&o);
  o.token = sh->token[0] ? sh->token : NULL;
  o.client_name = "m3-bench peer";
  m3_client *c = NULL;
  int rc = m3_client_connect(sh->a->server, &o, &c);
  if (rc) {
    snprintf(t->err, sizeof t->err, "connect %s: %s", sh->a->server, m3_errmsg());
    t->errors++;
    return NULL;
  }
  for (uint64_t r = t->idx; bench_now_ns() < sh->t_end; r += sh->a->conns) {
    const uint64_t *ids = sh->round_ids + (r % sh->a->rounds) * sh->a->per_round;
    t->round_bytes = 0;
    t->round_failed = 0;
    uint64_t t0 = bench_now_ns();
    rc = m3_client_fetch(c, ids, sh->a->per_round, 0, on_memory, t);
    double us = (double)(bench_now_ns() - t0) / 1e3;
    t->calls++;
    if (rc || t->round_failed || t->round_bytes != (uint64_t)sh->a->per_round * sh->mem_bytes) {
      t->errors++;
      if (!t->err[0]) snprintf(t->err, sizeof t->err, "fetch: %s", rc ? m3_errmsg() : "short round");
      if (!m3_client_ok(c)) break;
      continue;
    }
    t->bytes += t->round_bytes;
    push_lat(t, us);
  }
  m3_client_close(c);
  return NULL;
}

static redisContext *redis_connect(const char *host, int port, char *err, size_t cap) {
  struct timeval tv = {5, 0};
  redisContext *r = redisConnectWithTimeout(host, port, tv);
  if (r == NULL || r->err) {
    snprintf(err, cap, "redis %s:%d: %s", host, port, r ? r->errstr : "out of memory");
    if (r) redisFree(r);
    return NULL;
  }
  return r;
}

static void *redis_worker(void *arg) {
  peer_thread *t = arg;
  peer_shared *sh = t->sh;
  redisContext *r = redis_connect(sh->redis_host, sh->redis_port, t->err, sizeof t->err);
  if (r == NULL) {
    t->errors++;
    return NULL;
  }
  for (uint64_t n = t->idx; bench_now_ns() < sh->t_end; n += sh->a->conns) {
    const uint64_t *ids = sh->round_ids + (n % sh->a->rounds) * sh->a->per_round;
    uint64_t t0 = bench_now_ns(), got = 0;
    int failed = 0;
    for (unsigned i = 0; i < sh->a->per_round; i++)
      redisAppendCommand(r, "GET m3:%llu", (unsigned long long)ids[i]);
    for (unsigned i = 0; i < sh->a->per_round; i++) {
      redisReply *rep = NULL;
      if (redisGetReply(r, (void **)&rep) != REDIS_OK || rep == NULL) {
        snprintf(t->err, sizeof t->err, "redis: %s", r->errstr);
        t->errors++;
        goto out;
      }
      if (rep->type != REDIS_REPLY_STRING || rep->len != sh->mem_bytes) failed = 1;
      else got += (uint64_t)rep->len;
      freeReplyObject(rep);
    }
    double us = (double)(bench_now_ns() - t0) / 1e3;
    t->calls++;
    if (failed) {
      t->errors++;
      if (!t->err[0]) snprintf(t->err, sizeof t->err, "redis: a value is missing or short");
      continue;
    }
    t->bytes += got;
    push_lat(t, us);
  }
out:
  redisFree(r);
  return NULL;
}

static void run_side(peer_shared *sh, peer_side *side, void *(*fn)(void *)) {
  const peer_args *a = sh->a;
  peer_thread *th = calloc(a->conns, sizeof *th);
  uint64_t t0 = bench_now_ns();
  sh->t_end = t0 + (uint64_t)(a->duration * 1e9);
  for (unsigned i = 0; i < a->conns; i++) {
    th[i] = (peer_thread){.sh = sh, .idx = i};
    pthread_create(&th[i].tid, NULL, fn, &th[i]);
  }
  size_t total = 0;
  for (unsigned i = 0; i < a->conns; i++) {
    pthread_join(th[i].tid, NULL);
    total += th[i].n;
  }
  side->secs = (double)(bench_now_ns() - t0) / 1e9;
  side->lat = malloc((total ? total : 1) * sizeof *side->lat);
  for (unsigned i = 0; i < a->conns; i++) {
    side->calls += th[i].calls;
    side->errors += th[i].errors;
    side->bytes += th[i].bytes;
    memcpy(side->lat + side->n, th[i].lat, th[i].n * sizeof *th[i].lat);
    side->n += th[i].n;
    if (!side->err[0] && th[i].err[0]) snprintf(side->err, sizeof side->err, "%s", th[i].err);
    free(th[i].lat);
  }
  bench_sort(side->lat, side->n);
  free(th);
}

/* A free loopback port: bind port 0, read it, close. */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof sa;
  int port = -1;
  if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
      getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
    port = ntohs(sa.sin_port);
  if (fd >= 0) close(fd);
  return port;
}

/* Start redis-server on a free loopback port, persistence off, in dir. */
static pid_t start_redis(const char *bin, const char *dir, int *port) {
  *port = free_port();
  if (*port < 0) return -1;
  char ps[16];
  snprintf(ps, sizeof ps, "%d", *port);
  pid_t pid = fork();
  if (pid == 0) {
    if (chdir(dir) != 0) _exit(127);
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) dup2(devnull, 1);
    execlp(bin, bin, "--port", ps, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning", (char *)NULL);
    _exit(127);
  }
  return pid;
}

/* Load every memory of the store into Redis; pick the rounds' ids. */
static int load_redis(peer_shared *sh, m3_store *s, const bench_chunks *cs) {
  char err[256];
  redisContext *r = NULL;
  for (int tries = 0; tries < 100 && r == NULL; tries++) {
    r = redis_connect(sh->redis_host, sh->redis_port, err, sizeof err);
    if (r == NULL) usleep(50000);
  }
  if (r == NULL) {
    fprintf(stderr, "m3-bench peer redis: %s\n", err);
    return 2;
  }
  size_t cap = m3_store_fetch_cap(s), batch = 64;
  m3_fetch_item *it = calloc(batch, sizeof *it);
  int ex = 0;
  for (size_t i = 0; i < batch; i++) it[i].buf = m3_store_buf_alloc(s, cap);
  for (size_t off = 0; off < cs->n && !ex; off += batch) {
    size_t b = cs->n - off < batch ? cs->n - off : batch;
    for (size_t i = 0; i < b; i++) {
      it[i].chunk_id = cs->v[off + i].id;
      it[i].cap = cap;
    }
    int rc = m3_store_fetch(s, it, b);
    if (rc) {
      ex = bench_fail("store fetch", rc);
      break;
    }
    size_t sent = 0;
    for (size_t i = 0; i < b; i++) {
      if (it[i].status) continue;
      redisAppendCommand(r, "SET m3:%llu %b", (unsigned long long)it[i].chunk_id, it[i].data,
                         it[i].len);
      sent++;
    }
    for (size_t i = 0; i < sent; i++) {
      redisReply *rep = NULL;
      if (redisGetReply(r, (void **)&rep) != REDIS_OK || rep == NULL ||
          rep->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "m3-bench peer redis: SET: %s\n", rep ? rep->str : r->errstr);
        ex = 2;
        if (rep) freeReplyObject(rep);
        break;
      }
      freeReplyObject(rep);
    }
  }
  for (size_t i = 0; i < batch; i++) free(it[i].buf);
  free(it);
  redisFree(r);
  return ex;
}

static void usage(FILE *f) {
  fputs("usage: m3-bench peer redis --server HOST:PORT --store DIR [--redis HOST:PORT]\n"
        "                           [--redis-server redis-server] [--connections 2]\n"
        "                           [--ids-per-round 160] [--rounds 256] [--duration 10]\n"
        "                           [--token-file F] [--seed S] [--json]\n"
        "The same rounds (the same --ids-per-round chunk ids each) served by m3-server\n"
        "(one Fetch a round) and by Redis holding the same record bytes (pipelined GETs),\n"
        "closed loop on --connections each, one side after the other. --store DIR is the\n"
        "server's store (read beside it, to load Redis). Without --redis, Debian's\n"
        "redis-server is started on a free loopback port, persistence off, and stopped.\n",
        f);
}

static void side_json(json_t *j, const char *key, const peer_side *s) {
  json_object_set_new(
      j, key,
      json_pack("{s:I,s:I,s:f,s:f,s:f,s:f,s:f}", "rounds", (json_int_t)s->calls, "errors",
                (json_int_t)s->errors, "rounds_per_s", (double)s->calls / s->secs, "mb_per_s",
                (double)s->bytes / 1e6 / s->secs, "p50_us", bench_quantile(s->lat, s->n, 0.5),
                "p99_us", bench_quantile(s->lat, s->n, 0.99), "seconds", s->secs));
  if (s->err[0]) json_object_set_new(json_object_get(j, key), "first_error", json_string(s->err));
}

int bench_peer(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "redis") != 0) {
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
      usage(stdout);
      return 0;
    }
    fprintf(stderr, "m3-bench peer: the peer to compare with is `redis` (see m3-bench peer redis --help)\n");
    return 2;
  }
  argc--;
  argv++;
  static const struct option opts[] = {
      {"server", required_argument, NULL, 's'},     {"store", required_argument, NULL, 'S'},
      {"redis", required_argument, NULL, 'r'},      {"redis-server", required_argument, NULL, 'b'},
      {"connections", required_argument, NULL, 'c'}, {"ids-per-round", required_argument, NULL, 'i'},
      {"rounds", required_argument, NULL, 'R'},     {"duration", required_argument, NULL, 'd'},
      {"token-file", required_argument, NULL, 't'}, {"seed", required_argument, NULL, 'e'},
      {"json", no_argument, NULL, 'j'},             {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  peer_args a = {.redis_bin = "redis-server", .conns = 2, .per_round = 160, .rounds = 256,
                 .duration = 10, .seed = 42};
  int c;
  if (m3_cli_exact_long(argc, argv, "h", opts, "m3-bench")) return 2;
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 's': a.server = optarg; break;
    case 'S': a.store = optarg; break;
    case 'r': a.redis = optarg; break;
    case 'b': a.redis_bin = optarg; break;
    case 'c': a.conns = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'i': a.per_round = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'R': a.rounds = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'd': a.duration = strtod(optarg, NULL); break;
    case 't': a.token_file = optarg; break;
    case 'e': a.seed = strtoull(optarg, NULL, 10); break;
    case 'j': a.json = 1; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (!a.server || !a.store || a.conns == 0 || a.conns > 256 || a.per_round == 0 ||
      a.rounds == 0 || !(a.duration > 0)) {
    fprintf(stderr, "m3-bench peer redis: needs --server, --store, --connections 1..256,\n"
                    "--ids-per-round and --rounds > 0, --duration > 0 (see --help)\n");
    return 2;
  }
  peer_shared sh = {.a = &a};
  if (bench_read_token("peer redis", a.token_file, sh.token, sizeof sh.token) != 0)
    return 2;
  m3_store_options o;
  m3_store_options_init(&o);
  o.read_only = 1;
  m3_store *s = NULL;
  int rc = m3_store_open(a.store, &o, &s), ex = 0;
  if (rc) return bench_fail(a.store, rc);
  bench_chunks cs = {0};
  pid_t redis_pid = -1;
  char tmpdir[] = "/tmp/m3-bench-redis-XXXXXX";
  int have_tmp = 0;
  peer_side m3s = {.name = "m3"}, rds = {.name = "redis"};
  uint64_t *ids = NULL;
  if ((rc = m3_store_iterate(s, bench_add_chunk, &cs)) != 0) {
    ex = bench_fail("iterate", rc);
    goto out;
  }
  if (cs.n == 0) {
    fprintf(stderr, "m3-bench peer redis: store %s holds no memories\n", a.store);
    ex = 2;
    goto out;
  }
  sh.mem_bytes = (uint32_t)m3_record_mem_size(m3_store_layout(s));
  ids = malloc((size_t)a.rounds * a.per_round * sizeof *ids);
  uint64_t rng = a.seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < (size_t)a.rounds * a.per_round; i++)
    ids[i] = cs.v[bench_rand(&rng) % cs.n].id;
  sh.round_ids = ids;

  if (a.redis) {
    const char *colon = strrchr(a.redis, ':');
    if (colon == NULL || (size_t)(colon - a.redis) >= sizeof sh.redis_host) {
      fprintf(stderr, "m3-bench peer redis: --redis wants HOST:PORT, got '%s'\n", a.redis);
      ex = 2;
      goto out;
    }
    memcpy(sh.redis_host, a.redis, (size_t)(colon - a.redis));
    sh.redis_port = atoi(colon + 1);
  } else {
    if (mkdtemp(tmpdir) == NULL) {
      fprintf(stderr, "m3-bench peer redis: mkdtemp: %s\n", strerror(errno));
      ex = 2;
      goto out;
    }
    have_tmp = 1;
    snprintf(sh.redis_host, sizeof sh.redis_host, "127.0.0.1");
    redis_pid = start_redis(a.redis_bin, tmpdir, &sh.redis_port);
    if (redis_pid < 0) {
      fprintf(stderr, "m3-bench peer redis: could not start %s\n", a.redis_bin);
      ex = 2;
      goto out;
    }
  }
  if ((ex = load_redis(&sh, s, &cs)) != 0) goto out;

  run_side(&sh, &m3s, m3_worker);
  run_side(&sh, &rds, redis_worker);

  double m3_tp = (double)m3s.bytes / m3s.secs, rd_tp = (double)rds.bytes / rds.secs;
  double m3_p99 = bench_quantile(m3s.lat, m3s.n, 0.99), rd_p99 = bench_quantile(rds.lat, rds.n, 0.99);
  double m3_p50 = bench_quantile(m3s.lat, m3s.n, 0.5), rd_p50 = bench_quantile(rds.lat, rds.n, 0.5);
  json_t *j = json_pack("{s:s,s:s,s:i,s:i,s:I,s:i}", "server", a.server, "redis",
                        a.redis ? a.redis : "started", "connections", (int)a.conns,
                        "ids_per_round", (int)a.per_round, "memories", (json_int_t)cs.n,
                        "memory_bytes", (int)sh.mem_bytes);
  side_json(j, "m3", &m3s);
  side_json(j, "redis", &rds);
  json_object_set_new(j, "throughput_ratio", json_real(rd_tp > 0 ? m3_tp / rd_tp : 0));
  json_object_set_new(j, "p50_ratio", json_real(rd_p50 > 0 ? m3_p50 / rd_p50 : 0));
  json_object_set_new(j, "p99_ratio", json_real(rd_p99 > 0 ? m3_p99 / rd_p99 : 0));
  if (a.json) {
    bench_print_json(j);
  } else {
    printf("%u connections, rounds of %u memories of %u bytes, %zu memories loaded\n", a.conns,
           a.per_round, sh.mem_bytes, cs.n);
    printf("m3:    %.1f rounds/s  %.1f MB/s  p50 %.1f us  p99 %.1f us  (%llu errors)\n",
           (double)m3s.calls / m3s.secs, m3_tp / 1e6, m3_p50, m3_p99,
           (unsigned long long)m3s.errors);
    printf("redis: %.1f rounds/s  %.1f MB/s  p50 %.1f us  p99 %.1f us  (%llu errors)\n",
           (double)rds.calls / rds.secs, rd_tp / 1e6, rd_p50, rd_p99,
           (unsigned long long)rds.errors);
    printf("m3 / redis: throughput %.2f  p50 %.2f  p99 %.2f\n", rd_tp > 0 ? m3_tp / rd_tp : 0,
           rd_p50 > 0 ? m3_p50 / rd_p50 : 0, rd_p99 > 0 ? m3_p99 / rd_p99 : 0);
    json_decref(j);
  }
  if (m3s.errors || rds.errors) {
    fprintf(stderr, "m3-bench peer redis: errors: m3 %llu (%s), redis %llu (%s)\n",
            (unsigned long long)m3s.errors, m3s.err, (unsigned long long)rds.errors, rds.err);
    ex = 1;
  }
out:
  if (redis_pid > 0) {
    kill(redis_pid, SIGTERM);
    waitpid(redis_pid, NULL, 0);
  }
  /* Persistence is off: redis-server leaves nothing in its directory. */
  if (have_tmp && rmdir(tmpdir) != 0)
    fprintf(stderr, "m3-bench peer redis: could not remove %s: %s\n", tmpdir, strerror(errno));
  free(m3s.lat);
  free(rds.lat);
  free(ids);
  free(cs.v);
  m3_store_close(s);
  return ex;
}
