/*
 * m3-bench rpc: retrieval rounds against an m3-server, as inference workers
 * send them: each call is one Retrieve of Q queries x top-k (Memory3: 32 x 5
 * = 160 memories), over C connections, one thread and one call at a time per
 * connection.
 *
 * Closed loop (default): each connection sends its next call when the last
 * one returns; latency is send to last memory. Open loop (--rate R): calls
 * are scheduled at R calls/s over all connections; a call's latency counts
 * from its scheduled time, so a stalled server is charged for the calls that
 * queued behind it (no coordinated omission).
 *
 * --cluster MAP: the same calls through one shared m3_cluster (every shard
 * searched, global top-k fetched from the owners, failover between
 * replicas); "connections" are then worker threads sharing the cluster's
 * pools, and wire bytes come from the cluster's counters.
 *
 * Baselines from the same run: wire_overhead (socket bytes read / payload
 * bytes - 1) and, with --store DIR (the server's store directory on this
 * machine, opened read-only beside the running server), raw_round_us: the
 * raw io_uring O_DIRECT time to read exactly the memories sampled calls
 * returned, one submission per call (bench_raw_reader, as m3-bench storage).
 *
 * After the calls, loopback_mb_per_s (bench_link.c): plain TCP streams on the
 * server's interface, as many as the connections, writing one memory frame
 * at a time, so every run prints served / loopback. When the servers run on
 * this machine their CPU time over the measured window is read from /proc:
 * server_cpu_s_per_gb (user + sys seconds per GB of payload served); this
 * process's own is client_cpu_s_per_gb (getrusage), so a change that moves
 * work from one side to the other shows.
 *
 * --fetch: each call is a Fetch of Q x k random ids instead (no search: the
 * send and receive paths alone, as m3-bench peer redis's m3 side). --land:
 * records are received straight into a per-connection staging buffer of
 * Q x k slots (m3_client_set_landing), as a worker's round would be.
 *
 * TLS: --tls-ca F [--tls-cert F --tls-key F] [--tls-name N] speaks TLS 1.3
 * to the server (or the cluster's replicas). --plain-server HOST:PORT (a
 * plain server of the same store, e.g. a copy) runs the same calls against
 * it first, in the same run: tls.plain holds its figures and
 * tls_over_plain the ratio of served MB/s (docs/BENCHMARKS.md).
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "bench.h"
#include "m3/internal/cli.h"
#include "m3/client.h"
#include "m3/cluster.h"
#include "m3/error.h"

#define POOL 4096 /* random query vectors drawn from */

typedef struct rpc_args {
  const char *server, *cluster, *store, *token_file;
  const char *tls_ca, *tls_cert, *tls_key, *tls_name; /* NULL: plain (or the map's) */
  const char *plain_server; /* TLS run: the plain baseline first (same calls) */
  unsigned conns, qpc, k;
  double duration, rate;
  unsigned long long calls;
  unsigned warmup;
  unsigned raw_samples;
  double loopback_s;
  int timeout_ms;
  int text;
  int land; /* --land: records received straight into a staging buffer */
  int fetch; /* --fetch: Fetch calls of Q x k random ids instead of Retrieve */
  int json;
  uint64_t seed;
  m3_search_params params; /* --nprobe, --ef-search (0: the server's) */
  int hedge_ms;
} rpc_args;

typedef struct rpc_shared {
  const rpc_args *a;
  const float *pool; /* (POOL, dim) unit vectors */
  uint32_t dim;
  uint64_t t_start, t_end; /* ns; t_end 0 with --calls */
  double period_ns;        /* open loop: ns between scheduled calls */
  atomic_ullong issued;    /* --calls: calls claimed */
  char token[512];
  m3_cluster *cl;          /* --cluster */
  uint64_t records;        /* --fetch: ids are drawn from [0, records) */
} rpc_shared;

typedef struct rpc_thread {
  rpc_shared *sh;
  unsigned idx;
  pthread_t tid;
  m3_client *c;
  double *lat; /* us per measured call */
  size_t n, cap;
  uint64_t calls, errors, memories, payload, wire;
  uint64_t *sample_ids; /* ids of sampled calls, qpc*k per call (UINT64_MAX: none) */
  size_t n_samples, max_samples;
  uint64_t rng;
  /* current call */
  uint64_t call_memories, call_payload, *call_ids;
  int call_failed_items;
  char err[256];
  uint8_t *staging; /* --land: (qpc, k, slot) records, as a worker's round */
  size_t slot;
} rpc_thread;

/* --land: the slot of (query, rank) in the thread's staging buffer. */
static void *land_slot(void *ud, uint64_t chunk_id, uint32_t query, uint32_t rank, size_t len) {
  rpc_thread *t = ud;
  (void)chunk_id;
  if (len > t->slot) return NULL;
  /* Fetch: query is the index into the ids (rank 0). */
  size_t i = t->sh->a->fetch ? query : (size_t)query * t->sh->a->k + rank;
  return t->staging + i * t->slot;
}

static int on_memory(void *ud, const m3_client_memory *m) {
  rpc_thread *t = ud;
  if (m->status) {
    t->call_failed_items++;
    if (!t->err[0]) snprintf(t->err, sizeof t->err, "%s", m->error);
    return 0;
  }
  t->call_memories++;
  t->call_payload += m->len;
  unsigned k = t->sh->a->k;
  if (t->sh->a->fetch) {
    if (t->call_ids && m->query < (size_t)t->sh->a->qpc * k) t->call_ids[m->query] = m->chunk_id;
  } else if (t->call_ids && m->query < t->sh->a->qpc && m->rank < k) {
    t->call_ids[(size_t)m->query * k + m->rank] = m->chunk_id;
  }
  return 0;
}

static int connect_one(rpc_shared *sh, m3_client **c) {
  m3_client_options o;
  m3_client_options_init(&o);
  o.token = sh->token;
  o.call_timeout_ms = sh->a->timeout_ms;
  o.client_name = "m3-bench rpc";
  o.tls_ca = sh->a->tls_ca;
  o.tls_cert = sh->a->tls_cert;
  o.tls_key = sh->a->tls_key;
  o.tls_name = sh->a->tls_name;
  int rc = m3_client_connect(sh->a->server, &o, c);
  if (rc == 0) m3_client_set_search_params(*c, &sh->a->params);
  return rc;
}

static void sleep_until(uint64_t t_ns) {
  struct timespec ts = {(time_t)(t_ns / 1000000000ull), (long)(t_ns % 1000000000ull)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

static void *rpc_worker(void *arg) {
  rpc_thread *t = arg;
  rpc_shared *sh = t->sh;
  const rpc_args *a = sh->a;
  size_t per_call = (size_t)a->qpc * a->k;
  m3_client_query *qs = calloc(a->qpc, sizeof *qs);
  char (*texts)[48] = a->text ? calloc(a->qpc, sizeof *texts) : NULL;
  uint64_t *ids = malloc(per_call * sizeof *ids);
  uint64_t *fetch_ids = a->fetch ? malloc(per_call * sizeof *fetch_ids) : NULL;
  m3_client_counters c0 = {0}, c1 = {0};
  if (t->c) m3_client_counters_get(t->c, &c0);
  uint64_t wire_before = 0;
  if (a->land && t->c) {
    m3_client_set_landing(t->c, land_slot, t);
    memset(t->staging, 0, per_call * t->slot); /* touched once, as a worker's */
  }
  for (uint64_t i = 0;; i++) {
    int measured = i >= a->warmup;
    if (i == a->warmup) {
      if (bench_now_ns() < sh->t_start) sleep_until(sh->t_start);
      if (t->c) m3_client_counters_get(t->c, &c0);
      wire_before = 0;
    }
    uint64_t sched = 0;
    if (a->calls && measured && atomic_fetch_add(&sh->issued, 1) >= a->calls) break;
    if (a->rate > 0 && measured) {
      uint64_t j = i - a->warmup;
      sched = sh->t_start + (uint64_t)((double)(j * a->conns + t->idx) * sh->period_ns);
      if (sh->t_end && sched >= sh->t_end) break;
      sleep_until(sched);
    } else if (sh->t_end && measured && bench_now_ns() >= sh->t_end) {
      break;
    }
    for (unsigned q = 0; q < a->qpc; q++) {
      uint64_t r = bench_rand(&t->rng);
      if (a->text) {
        snprintf(texts[q], sizeof texts[q], "synthetic memory %llu",
                 (unsigned long long)(r % 100000));
        qs[q] = (m3_client_query){.text = texts[q]};
      } else {
        qs[q] = (m3_client_query){.vector = sh->pool + (size_t)(r % POOL) * sh->dim, .dim = sh->dim};
      }
    }
    int sample = measured && t->n_samples < t->max_samples;
    t->call_ids = sample ? ids : NULL;
    if (sample)
      for (size_t x = 0; x < per_call; x++) ids[x] = UINT64_MAX;
    t->call_memories = t->call_payload = 0;
    t->call_failed_items = 0;
    uint64_t t0 = bench_now_ns();
    if (fetch_ids)
      for (size_t x = 0; x < per_call; x++) fetch_ids[x] = bench_rand(&t->rng) % sh->records;
    int rc = fetch_ids ? (sh->cl ? m3_cluster_fetch(sh->cl, fetch_ids, per_call, 0, on_memory, t)
                                 : m3_client_fetch(t->c, fetch_ids, per_call, 0, on_memory, t))
             : sh->cl ? m3_cluster_retrieve(sh->cl, qs, a->qpc, a->k, 0, on_memory, t)
                      : m3_client_retrieve(t->c, qs, a->qpc, a->k, 0, on_memory, t);
    uint64_t t1 = bench_now_ns();
    if (!measured) continue;
    t->calls++;
    t->memories += t->call_memories;
    t->payload += t->call_payload;
    if (rc != 0 || t->call_failed_items) {
      t->errors++;
      if (rc && !t->err[0]) {
        const char *msg;
        if (sh->cl) m3_cluster_last_status(NULL, &msg);
        else m3_client_last_status(t->c, &msg);
        snprintf(t->err, sizeof t->err, "%s", msg);
      }
      if (t->c && !m3_client_ok(t->c)) {
        /* Count what this connection read, then start a fresh one. */
        m3_client_counters_get(t->c, &c1);
        wire_before += c1.bytes_read - c0.bytes_read;
        m3_client_close(t->c);
        t->c = NULL;
        if (connect_one(sh, &t->c) != 0) break;
        if (a->land) m3_client_set_landing(t->c, land_slot, t);
        m3_client_counters_get(t->c, &c0);
      }
    } else if (sample) {
      memcpy(t->sample_ids + t->n_samples * per_call, ids, per_call * sizeof *ids);
      t->n_samples++;
    }
    if (t->n == t->cap) {
      t->cap = t->cap ? t->cap * 2 : 4096;
      double *nl = realloc(t->lat, t->cap * sizeof *nl);
      if (nl == NULL) break;
      t->lat = nl;
    }
    t->lat[t->n++] = (double)(t1 - (sched ? sched : t0)) / 1e3;
  }
  if (t->c) {
    m3_client_counters_get(t->c, &c1);
    wire_before += c1.bytes_read - c0.bytes_read;
  }
  t->wire = wire_before;
  free(qs);
  free(texts);
  free(ids);
  free(fetch_ids);
  return NULL;
}

static int cmp_chunk_id(const void *key, const void *elem) {
  uint64_t k = *(const uint64_t *)key, id = ((const bench_chunk *)elem)->id;
  return k < id ? -1 : k > id;
}

/* raw_round_us: time raw O_DIRECT reads of each sampled call's memories. */
static int raw_rounds(const char *dir, rpc_thread *th, unsigned nth, size_t per_call,
                      double **out, size_t *nout) {
  m3_store_options o;
  m3_store_options_init(&o);
  o.read_only = 1;
  m3_store *s;
  int rc = m3_store_open(dir, &o, &s);
  if (rc) return bench_fail(dir, rc);
  bench_chunks cs = {0};
  bench_raw_reader raw;
  void **bufs = NULL;
  const bench_chunk **pick = NULL;
  size_t total = 0, n = 0;
  double *us = NULL;
  if ((rc = m3_store_iterate(s, bench_add_chunk, &cs)) != 0) {
    rc = bench_fail("iterate", rc);
    goto out_store;
  }
  if (bench_raw_open(&raw, s, &cs, 1, 256) != 0) {
    rc = 2;
    goto out_store;
  }
  for (unsigned i = 0; i < nth; i++) total += th[i].n_samples;
  us = malloc((total ? total : 1) * sizeof *us);
  bufs = calloc(per_call, sizeof *bufs);
  pick = calloc(per_call, sizeof *pick);
  size_t bufsz = (m3_record_mem_size(m3_store_layout(s)) + 3 * 4096) / 4096 * 4096;
  for (size_t i = 0; i < per_call; i++) bufs[i] = aligned_alloc(4096, bufsz);
  for (unsigned i = 0; i < nth; i++) {
    for (size_t c = 0; c < th[i].n_samples; c++) {
      const uint64_t *ids = th[i].sample_ids + c * per_call;
      size_t m = 0;
      for (size_t x = 0; x < per_call; x++) {
        if (ids[x] == UINT64_MAX) continue;
        const bench_chunk *ch = bsearch(&ids[x], cs.v, cs.n, sizeof *cs.v, cmp_chunk_id);
        if (ch) pick[m++] = ch;
      }
      if (m == 0) continue;
      uint64_t t0 = bench_now_ns();
      for (size_t off = 0; off < m; off += 256) {
        size_t b = m - off < 256 ? m - off : 256;
        if ((rc = bench_raw_batch(&raw, pick + off, b, bufs + off)) < 0) {
          fprintf(stderr, "m3-bench rpc: raw read: %s\n", strerror(-rc));
          rc = 2;
          goto out_raw;
        }
      }
      us[n++] = (double)(bench_now_ns() - t0) / 1e3;
    }
  }
  rc = 0;
  *out = us;
  *nout = n;
  us = NULL;
out_raw:
  bench_raw_close(&raw);
  for (size_t i = 0; bufs && i < per_call; i++) free(bufs[i]);
out_store:
  free(bufs);
  free(pick);
  free(us);
  free(cs.v);
  m3_store_close(s);
  return rc;
}

/* Servers on this machine whose CPU the run reports: addr's port looked up
 * in /proc when its host is a loopback name or address. */
#define MAX_PIDS 64
static void add_local_pid(const char *addr, long *pids, size_t *n) {
  const char *colon = strrchr(addr, ':');
  if (colon == NULL || *n == MAX_PIDS) return;
  size_t hl = (size_t)(colon - addr);
  int local = hl == 0 || !strncmp(addr, "127.", 4) || !strncmp(addr, "localhost:", 10) ||
              !strncmp(addr, "[::1]:", 6);
  if (!local) return;
  long pid = bench_proc_find_listener((unsigned)strtoul(colon + 1, NULL, 10));
  if (pid > 0) pids[(*n)++] = pid;
}

static double pids_cpu(const long *pids, size_t n) {
  double total = 0;
  for (size_t i = 0; i < n; i++) {
    double u, s;
    if (bench_proc_cpu(pids[i], &u, &s) == 0) total += u + s;
  }
  return total;
}

/* This process's user + sys seconds (the client side of the calls). */
static double self_cpu(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec * 1e-6;
}

static void usage(FILE *f) {
  fputs("usage: m3-bench rpc (--server HOST:PORT | --cluster MAP) [--connections 1]\n"
        "                    [--queries-per-call 32] [--hedge-ms 0]\n"
        "                    [-k 5] [--duration 10 | --calls N] [--rate R] [--warmup 20]\n"
        "                    [--store DIR] [--raw-samples 1000] [--token-file F]\n"
        "                    [--timeout-ms 10000] [--text] [--seed S]\n"
        "                    [--loopback-seconds 3] [--nprobe N] [--ef-search N] [--land]\n"
        "                    [--fetch] [--json]\n"
        "Retrieve calls of Q random unit query vectors (the server's embedding_dim;\n"
        "--text: texts for its embedder) x top-k. Closed loop, or open loop at R calls/s\n"
        "over all connections with latency from each call's scheduled time. --warmup N\n"
        "calls per connection are not measured. --store DIR (the server's store, read\n"
        "beside it) adds raw_round_us: raw io_uring O_DIRECT reads of the memories that\n"
        "sampled calls returned. --cluster MAP: through a cluster (connections = threads\n"
        "sharing its pools; --hedge-ms: hedged searches). After the calls, the link's own\n"
        "limit: plain TCP streams for --loopback-seconds (0: skip), one per connection,\n"
        "on the server's interface (loopback_mb_per_s, served_over_loopback); servers\n"
        "on this machine also get their CPU per GB served (from /proc). --nprobe /\n"
        "--ef-search: every call's index params (IVF / HNSW; default: the server's).\n"
        "--land: each connection receives the records straight into a staging buffer\n"
        "of Q x k slots, as a worker's round (m3_client_set_landing); default: the\n"
        "client's own buffer. --fetch: each call is a Fetch of Q x k ids drawn at random\n"
        "from [0, records) (stores of m3-bench gen: dense ids), no search: the send\n"
        "path alone.\n"
        "TLS: --tls-ca F [--tls-cert F --tls-key F] [--tls-name NAME] (--tls: the same,\n"
        "as a reminder in the command line); --plain-server HOST:PORT: a plain server of\n"
        "the same store measured first with the same calls: tls_over_plain (served MB/s).\n",
        f);
}

static double jnum(json_t *j, const char *k) { return json_number_value(json_object_get(j, k)); }

static void print_text(json_t *j) {
  const char *call = json_string_value(json_object_get(j, "call"));
  if (call && strcmp(call, "fetch") == 0)
    printf("%s loop, %d connections, Fetch of %d random ids per call, %.1f s%s\n",
           json_string_value(json_object_get(j, "mode")), (int)jnum(j, "connections"),
           (int)(jnum(j, "queries_per_call") * jnum(j, "k")), jnum(j, "seconds"),
           json_is_true(json_object_get(j, "tls")) ? ", TLS" : "");
  else
    printf("%s loop, %d connections, %d queries x top-%d per call, %.1f s%s\n",
           json_string_value(json_object_get(j, "mode")), (int)jnum(j, "connections"),
           (int)jnum(j, "queries_per_call"), (int)jnum(j, "k"), jnum(j, "seconds"),
           json_is_true(json_object_get(j, "tls")) ? ", TLS" : "");
  printf("calls %.0f (errors %.0f), %.1f calls/s, %.1f MB/s of payload\n", jnum(j, "calls"),
         jnum(j, "errors"), jnum(j, "calls_per_s"), jnum(j, "payload_mb_per_s"));
  printf("latency us: p50 %.1f  p99 %.1f  p99.9 %.1f\n", jnum(j, "p50_us"), jnum(j, "p99_us"),
         jnum(j, "p999_us"));
  printf("wire overhead %.4f\n", jnum(j, "wire_overhead"));
  json_t *raw = json_object_get(j, "raw_round_us");
  if (raw)
    printf("raw round us: p50 %.1f  p99 %.1f (%.0f calls)\n", jnum(raw, "p50"), jnum(raw, "p99"),
           jnum(raw, "samples"));
  if (json_object_get(j, "loopback_mb_per_s"))
    printf("loopback %.1f MB/s: served / loopback %.3f\n", jnum(j, "loopback_mb_per_s"),
           jnum(j, "served_over_loopback"));
  if (json_object_get(j, "server_processes"))
    printf("server CPU %.2f s (%.0f processes): %.3f s per GB served\n", jnum(j, "server_cpu_s"),
           jnum(j, "server_processes"), jnum(j, "server_cpu_s_per_gb"));
  printf("client CPU %.2f s: %.3f s per GB received\n", jnum(j, "client_cpu_s"),
         jnum(j, "client_cpu_s_per_gb"));
  json_t *pl = json_object_get(j, "plain");
  if (pl)
    printf("plain %s: %.1f MB/s of payload, p50 %.1f us: TLS / plain served MB/s %.3f\n",
           json_string_value(json_object_get(pl, "server")), jnum(pl, "payload_mb_per_s"),
           jnum(pl, "p50_us"), jnum(j, "tls_over_plain"));
  const char *err = json_string_value(json_object_get(j, "first_error"));
  if (err) printf("first error: %s\n", err);
}

static int rpc_run(const rpc_args *ain, json_t **out);

int bench_rpc(int argc, char **argv) {
  static const struct option opts[] = {
      {"server", required_argument, NULL, 's'},  {"connections", required_argument, NULL, 'c'},
      {"cluster", required_argument, NULL, 'C'}, {"hedge-ms", required_argument, NULL, 'H'},
      {"queries-per-call", required_argument, NULL, 'q'},
      {"duration", required_argument, NULL, 'd'}, {"calls", required_argument, NULL, 'n'},
      {"rate", required_argument, NULL, 'r'},     {"store", required_argument, NULL, 'S'},
      {"token-file", required_argument, NULL, 't'}, {"warmup", required_argument, NULL, 'w'},
      {"raw-samples", required_argument, NULL, 'R'}, {"timeout-ms", required_argument, NULL, 'T'},
      {"text", no_argument, NULL, 'x'},           {"seed", required_argument, NULL, 'e'},
      {"loopback-seconds", required_argument, NULL, 'L'},
      {"nprobe", required_argument, NULL, 'P'},   {"ef-search", required_argument, NULL, 'E'},
      {"json", no_argument, NULL, 'j'},           {"help", no_argument, NULL, 'h'},
      {"tls-ca", required_argument, NULL, 1},     {"tls-cert", required_argument, NULL, 2},
      {"tls-key", required_argument, NULL, 3},    {"tls-name", required_argument, NULL, 4},
      {"plain-server", required_argument, NULL, 5}, {"tls", no_argument, NULL, 6},
      {"land", no_argument, NULL, 'l'},           {"fetch", no_argument, NULL, 'F'},
      {NULL, 0, NULL, 0}};
  rpc_args a = {.conns = 1, .qpc = 32, .k = 5, .duration = 10, .warmup = 20,
                .raw_samples = 1000, .loopback_s = 3, .timeout_ms = 10000, .seed = 42};
  int c, have_duration = 0, want_tls = 0;
  a.hedge_ms = 0;
  if (m3_cli_exact_long(argc, argv, "hk:", opts, "m3-bench")) return 2;
  optind = 1;
  while ((c = getopt_long(argc, argv, "hk:", opts, NULL)) != -1) {
    switch (c) {
    case 's': a.server = optarg; break;
    case 'C': a.cluster = optarg; break;
    case 'H': a.hedge_ms = (int)strtol(optarg, NULL, 10); break;
    case 'c': a.conns = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'q': a.qpc = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'k': a.k = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'd': a.duration = strtod(optarg, NULL); have_duration = 1; break;
    case 'n': a.calls = strtoull(optarg, NULL, 10); break;
    case 'r': a.rate = strtod(optarg, NULL); break;
    case 'S': a.store = optarg; break;
    case 't': a.token_file = optarg; break;
    case 'w': a.warmup = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'R': a.raw_samples = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'T': a.timeout_ms = (int)strtol(optarg, NULL, 10); break;
    case 'x': a.text = 1; break;
    case 'L': a.loopback_s = strtod(optarg, NULL); break;
    case 'e': a.seed = strtoull(optarg, NULL, 10); break;
    case 'P': a.params.nprobe = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'E': a.params.ef_search = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'j': a.json = 1; break;
    case 1: a.tls_ca = optarg; break;
    case 2: a.tls_cert = optarg; break;
    case 3: a.tls_key = optarg; break;
    case 4: a.tls_name = optarg; break;
    case 5: a.plain_server = optarg; break;
    case 6: want_tls = 1; break;
    case 'l': a.land = 1; break;
    case 'F': a.fetch = 1; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if ((a.server == NULL) == (a.cluster == NULL) || a.conns == 0 || a.conns > 1024 || a.qpc == 0 || a.k == 0 ||
      (have_duration && a.calls) || (!a.calls && !(a.duration > 0)) || a.rate < 0) {
    fprintf(stderr, "m3-bench rpc: needs --server HOST:PORT or --cluster MAP, --connections 1..1024,\n"
                    "Q and k > 0,\n"
                    "and one of --duration S > 0 or --calls N (see --help)\n");
    return 2;
  }
  if ((want_tls || a.tls_cert || a.tls_key || a.tls_name || a.plain_server) && !a.tls_ca &&
      !a.cluster) {
    fprintf(stderr, "m3-bench rpc: --tls, --tls-cert, --tls-key, --tls-name and --plain-server "
                    "need --tls-ca F (the CA that signed the server's certificate)\n");
    return 2;
  }
  if ((a.tls_cert == NULL) != (a.tls_key == NULL)) {
    fprintf(stderr, "m3-bench rpc: --tls-cert and --tls-key go together\n");
    return 2;
  }
  if (a.plain_server && a.cluster) {
    fprintf(stderr, "m3-bench rpc: --plain-server goes with --server (one server each)\n");
    return 2;
  }
  json_t *j = NULL, *jp = NULL;
  int ex = 0;
  if (a.plain_server) {
    /* The baseline first: the same calls (same seed), in clear. */
    rpc_args pa = a;
    pa.server = a.plain_server;
    pa.tls_ca = pa.tls_cert = pa.tls_key = pa.tls_name = NULL;
    pa.store = NULL;
    pa.loopback_s = 0;
    if ((ex = rpc_run(&pa, &jp)) != 0) return ex;
  }
  if ((ex = rpc_run(&a, &j)) != 0) {
    json_decref(jp);
    return ex;
  }
  if (a.tls_ca || a.cluster) json_object_set_new(j, "tls", json_boolean(a.tls_ca != NULL));
  if (jp) {
    double tls_mbs = json_real_value(json_object_get(j, "payload_mb_per_s"));
    double plain_mbs = json_real_value(json_object_get(jp, "payload_mb_per_s"));
    json_object_set_new(j, "plain", json_pack("{s:s,s:O,s:O,s:O,s:O,s:O}", "server",
                                              a.plain_server, "payload_mb_per_s",
                                              json_object_get(jp, "payload_mb_per_s"), "calls_per_s",
                                              json_object_get(jp, "calls_per_s"), "p50_us",
                                              json_object_get(jp, "p50_us"), "p99_us",
                                              json_object_get(jp, "p99_us"), "errors",
                                              json_object_get(jp, "errors")));
    json_object_set_new(j, "tls_over_plain", json_real(plain_mbs > 0 ? tls_mbs / plain_mbs : 0));
    json_decref(jp);
  }
  if (a.json) {
    bench_print_json(j);
  } else {
    print_text(j);
    json_decref(j);
  }
  return 0;
}

/* One measurement of a's calls into *out (a JSON object); 0 or the exit code. */
static int rpc_run(const rpc_args *ain, json_t **out) {
  rpc_args a = *ain;
  int hedge_ms = a.hedge_ms;
  rpc_shared sh = {.a = &a};
  if (bench_read_token("rpc", a.token_file, sh.token, sizeof sh.token) != 0)
    return 2;
  rpc_thread *th = calloc(a.conns, sizeof *th);
  size_t per_call = (size_t)a.qpc * a.k;
  int rc = 0, ex = 0;
  m3_client_info cinfo;
  long pids[MAX_PIDS];
  size_t npids = 0;
  if (a.server) add_local_pid(a.server, pids, &npids);
  if (a.cluster) {
    m3_cluster_map *map = NULL;
    if ((rc = m3_cluster_map_load(a.cluster, &map)) != 0) {
      ex = bench_fail("cluster map", rc);
      goto out;
    }
    m3_cluster_options co;
    m3_cluster_options_init(&co);
    if (sh.token[0]) co.token = sh.token;
    co.call_timeout_ms = a.timeout_ms;
    if (co.try_timeout_ms > co.call_timeout_ms) co.try_timeout_ms = co.call_timeout_ms;
    co.hedge_delay_ms = hedge_ms;
    co.client_name = "m3-bench rpc";
    co.tls_ca = a.tls_ca;
    co.tls_cert = a.tls_cert;
    co.tls_key = a.tls_key;
    co.tls_name = a.tls_name;
    for (uint32_t sd = 0; sd < m3_cluster_map_shards(map); sd++)
      for (uint32_t rp = 0; rp < m3_cluster_map_replicas(map, sd); rp++)
        add_local_pid(m3_cluster_map_replica(map, sd, rp), pids, &npids);
    rc = m3_cluster_open(map, &co, &sh.cl);
    m3_cluster_map_free(map);
    if (rc == 0) m3_cluster_set_search_params(sh.cl, &a.params);
    if (rc == 0) rc = m3_cluster_info(sh.cl, &cinfo);
    if (rc) {
      ex = bench_fail("cluster", rc);
      goto out;
    }
  }
  for (unsigned i = 0; i < a.conns; i++) {
    th[i] = (rpc_thread){.sh = &sh, .idx = i, .rng = a.seed * 0x9E3779B97F4A7C15ull + i + 1};
    if (!a.cluster && (rc = connect_one(&sh, &th[i].c)) != 0) {
      ex = bench_fail("connect", rc);
      goto out;
    }
    if (a.store) {
      th[i].max_samples = (a.raw_samples + a.conns - 1) / a.conns;
      th[i].sample_ids = malloc(th[i].max_samples * per_call * sizeof(uint64_t));
    }
  }
  const m3_client_info *info = a.cluster ? &cinfo : m3_client_info_get(th[0].c);
  sh.dim = info->layout.emb_dim;
  sh.records = info->records;
  if (a.fetch && sh.records == 0) {
    fprintf(stderr, "m3-bench rpc: --fetch: the server holds no memories\n");
    ex = 2;
    goto out;
  }
  if (a.land && a.cluster) {
    fprintf(stderr, "m3-bench rpc: --land is for --server (one connection per thread)\n");
    ex = 2;
    goto out;
  }
  for (unsigned i = 0; a.land && i < a.conns; i++) {
    th[i].slot = (info->memory_bytes + 64 + 63) / 64 * 64;
    th[i].staging = aligned_alloc(64, per_call * th[i].slot);
    if (th[i].staging == NULL) {
      fprintf(stderr, "m3-bench rpc: no memory for --land staging buffers\n");
      ex = 2;
      goto out;
    }
  }
  if (!a.text && sh.dim == 0) {
    fprintf(stderr, "m3-bench rpc: m3-server %s announces no embedding_dim; use --text\n",
            a.server);
    ex = 2;
    goto out;
  }
  float *pool = malloc((size_t)POOL * (sh.dim ? sh.dim : 1) * sizeof *pool);
  uint64_t r = a.seed;
  for (size_t v = 0; v < POOL; v++) {
    float *e = pool + v * sh.dim;
    double norm = 0;
    for (uint32_t d = 0; d < sh.dim; d++) {
      double g = 0;
      for (int x = 0; x < 4; x++) g += (double)(bench_rand(&r) >> 11) / 9007199254740992.0 - 0.5;
      e[d] = (float)g;
      norm += g * g;
    }
    for (uint32_t d = 0; d < sh.dim; d++) e[d] = (float)(e[d] / sqrt(norm > 0 ? norm : 1));
  }
  sh.pool = pool;
  sh.period_ns = a.rate > 0 ? 1e9 / a.rate : 0;
  /* Warmup runs before t_start; open-loop schedules and the duration count
   * from it. Threads that finish warmup early wait for their first slot. */
  uint64_t warm_ns = a.warmup ? 500000000ull : 0;
  sh.t_start = bench_now_ns() + warm_ns;
  sh.t_end = a.calls ? 0 : sh.t_start + (uint64_t)(a.duration * 1e9);
  m3_cluster_counters cc0 = {0}, cc1 = {0};
  if (sh.cl) m3_cluster_counters_get(sh.cl, &cc0);
  for (unsigned i = 0; i < a.conns; i++) pthread_create(&th[i].tid, NULL, rpc_worker, &th[i]);
  sleep_until(sh.t_start);
  double cpu0 = pids_cpu(pids, npids), ccpu0 = self_cpu();
  for (unsigned i = 0; i < a.conns; i++) pthread_join(th[i].tid, NULL);
  uint64_t t_done = bench_now_ns();
  double server_cpu = pids_cpu(pids, npids) - cpu0, client_cpu = self_cpu() - ccpu0;
  /* The link alone, after the calls so that the two never share the cores. */
  double loop_mbs = 0;
  if (a.loopback_s > 0) {
    char host[64] = "127.0.0.1";
    const char *addr = a.server ? a.server : "";
    const char *colon = strrchr(addr, ':');
    if (colon && (size_t)(colon - addr) < sizeof host && colon > addr) {
      memcpy(host, addr, (size_t)(colon - addr));
      host[colon - addr] = '\0';
    }
    if (bench_loopback(host, a.conns, info->memory_bytes + 64, a.loopback_s, &loop_mbs) != 0)
      loop_mbs = 0;
  }
  double secs = (double)(t_done - sh.t_start) / 1e9;
  if (secs <= 0) secs = 1e-9;

  size_t nlat = 0;
  uint64_t calls = 0, errors = 0, memories = 0, payload = 0, wire = 0;
  for (unsigned i = 0; i < a.conns; i++) {
    nlat += th[i].n;
    calls += th[i].calls;
    errors += th[i].errors;
    memories += th[i].memories;
    payload += th[i].payload;
    wire += th[i].wire;
  }
  if (sh.cl) {
    /* Warmup included: the cluster counts bytes per connection return. */
    m3_cluster_counters_get(sh.cl, &cc1);
    wire = cc1.bytes_read - cc0.bytes_read;
  }
  double *lat = malloc((nlat ? nlat : 1) * sizeof *lat), sum = 0;
  size_t p = 0;
  for (unsigned i = 0; i < a.conns; i++)
    for (size_t j = 0; j < th[i].n; j++) sum += (lat[p++] = th[i].lat[j]);
  bench_sort(lat, nlat);
  double raw50 = 0, raw99 = 0;
  size_t nraw = 0;
  if (a.store) {
    double *raw = NULL;
    if ((ex = raw_rounds(a.store, th, a.conns, per_call, &raw, &nraw)) != 0) goto out;
    bench_sort(raw, nraw);
    raw50 = bench_quantile(raw, nraw, 0.5);
    raw99 = bench_quantile(raw, nraw, 0.99);
    free(raw);
  }
  double p50 = bench_quantile(lat, nlat, 0.5), p99 = bench_quantile(lat, nlat, 0.99),
         p999 = bench_quantile(lat, nlat, 0.999);
  json_t *j = json_pack(
      "{s:s,s:s,s:i,s:i,s:i,s:f,s:f,s:I,s:I,s:I,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:I,s:I,s:f}",
      a.cluster ? "cluster" : "server", a.cluster ? a.cluster : a.server, "mode", a.rate > 0 ? "open" : "closed", "connections", (int)a.conns,
      "queries_per_call", (int)a.qpc, "k", (int)a.k, "rate", a.rate, "seconds", secs, "calls",
      (json_int_t)calls, "errors", (json_int_t)errors, "memories", (json_int_t)memories,
      "memories_per_call", calls ? (double)memories / (double)calls : 0.0, "p50_us", p50,
      "p99_us", p99, "p999_us", p999, "mean_us", nlat ? sum / (double)nlat : 0.0,
      "calls_per_s", (double)calls / secs, "payload_mb_per_s", (double)payload / 1e6 / secs,
      "wire_overhead", payload ? (double)wire / (double)payload - 1 : 0.0, "wire_bytes",
      (json_int_t)wire, "payload_bytes", (json_int_t)payload, "memory_bytes",
      (double)info->memory_bytes);
  if (a.store) {
    json_object_set_new(j, "raw_round_us",
                        json_pack("{s:f,s:f,s:I}", "p50", raw50, "p99", raw99, "samples",
                                  (json_int_t)nraw));
    json_object_set_new(j, "p99_over_raw_p99", json_real(raw99 > 0 ? p99 / raw99 : 0));
  }
  if (a.params.nprobe) json_object_set_new(j, "nprobe", json_integer(a.params.nprobe));
  if (a.params.ef_search) json_object_set_new(j, "ef_search", json_integer(a.params.ef_search));
  if (a.land) json_object_set_new(j, "land", json_true());
  json_object_set_new(j, "call", json_string(a.fetch ? "fetch" : "retrieve"));
  double served_mbs = (double)payload / 1e6 / secs;
  if (loop_mbs > 0) {
    json_object_set_new(j, "loopback_mb_per_s", json_real(loop_mbs));
    json_object_set_new(j, "served_over_loopback", json_real(served_mbs / loop_mbs));
  }
  if (npids) {
    json_object_set_new(j, "server_processes", json_integer((json_int_t)npids));
    json_object_set_new(j, "server_cpu_s", json_real(server_cpu));
    json_object_set_new(j, "server_cpu_s_per_gb",
                        json_real(payload ? server_cpu / ((double)payload / 1e9) : 0));
  }
  json_object_set_new(j, "client_cpu_s", json_real(client_cpu));
  json_object_set_new(j, "client_cpu_s_per_gb",
                      json_real(payload ? client_cpu / ((double)payload / 1e9) : 0));
  for (unsigned i = 0; i < a.conns; i++)
    if (th[i].err[0]) {
      json_object_set_new(j, "first_error", json_string(th[i].err));
      break;
    }
  if (sh.cl) {
    json_object_set_new(j, "shards", json_integer(m3_cluster_shards(sh.cl)));
    json_object_set_new(j, "failovers", json_integer((json_int_t)(cc1.failovers - cc0.failovers)));
    json_object_set_new(j, "hedges", json_integer((json_int_t)(cc1.hedges - cc0.hedges)));
  }
  *out = j;
  free(lat);
  free(pool);
out:
  for (unsigned i = 0; i < a.conns; i++) {
    m3_client_close(th[i].c);
    free(th[i].lat);
    free(th[i].sample_ids);
    free(th[i].staging);
  }
  free(th);
  m3_cluster_close(sh.cl);
  return ex;
}
