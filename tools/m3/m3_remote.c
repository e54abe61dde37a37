/*
 * m3 query, m3 fetch, m3 stats: the m3 commands that talk to an m3-server
 * through libm3client, one connection per command; query and fetch also
 * to a whole cluster (--cluster MAP, m3/cluster.h), with the same output;
 * stats --cluster asks every replica of the map for its counters.
 * (One file of ~750 lines: the three commands share the connection set-up,
 * the output writers in text and JSON, and the exit-code rules.)
 *
 * Exit codes, as the rest of m3: 0 success; 1 the server answered with a
 * failure status (for the call, or for one of the fetched ids); 2 the
 * command could not run (bad usage, unreadable file, no connection, Hello
 * refused).
 *
 * Vector files (--vector-file): one query per line, its floats separated by
 * whitespace (spaces, tabs or commas are not allowed: whitespace only);
 * blank lines and lines starting with '#' are skipped. Every line must have
 * the server's embedding_dim values.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "m3/token.h"
#include "m3/client.h"
#include "m3/cluster.h"
#include "m3/error.h"
#include "m3/frame.h"
#include "m3/internal/cli.h"

#define EXIT_STATUS 1
#define EXIT_USAGE 2

int m3__cmd_query(int argc, char **argv);
int m3__cmd_fetch(int argc, char **argv);
int m3__cmd_stats(int argc, char **argv);
int m3__cmd_delete(int argc, char **argv);
int m3__cmd_put(int argc, char **argv);

static int print_json(json_t *j) {
  char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(7));
  json_decref(j);
  if (s == NULL) return EXIT_USAGE;
  puts(s);
  free(s);
  return 0;
}

/* The token: --token-file, else M3_TOKEN, else M3_TOKEN_FILE (m3/token.h);
 * buf[0] = 0 when none is given. */
static int read_token(const char *path, char *buf, size_t cap) {
  if (m3_token_resolve(path, buf, cap, NULL) != 0) {
    fprintf(stderr, "m3: %s\n", m3_errmsg());
    return -1;
  }
  return 0;
}

typedef struct remote_args {
  const char *server;
  const char *cluster;
  const char *token_file;
  const char **texts; /* query: every --text, in order */
  size_t n_texts;
  const char *tls_ca, *tls_cert, *tls_key, *tls_name; /* --tls-* (NULL: the map's, or plain) */
  const char *vector_file;
  const char *out;
  int json;
  int allow_fillers; /* query --allow-fillers */
  int timeout_ms;
  unsigned k;
  m3_search_params params; /* query: --nprobe, --ef-search (0: the server's) */
  uint64_t *ids;
  size_t n_ids;
} remote_args;

/* The TLS options every remote command takes. */
static const char tls_usage[] =
    "TLS: --tls-ca F [--tls-cert F --tls-key F] [--tls-name NAME]: speak TLS 1.3 and\n"
    "refuse a server whose certificate F did not sign or that does not carry NAME\n"
    "(default: the address's host); --tls-cert/--tls-key: a client certificate, for\n"
    "servers that require one (mutual TLS). With --cluster, instead of the map's\n"
    "\"tls\" object.\n";

/* --tls-* into o (a cluster map's "tls" object first, when given). */
static void tls_options(const remote_args *a, const m3_cluster_map *map, m3_client_options *o) {
  if (map) m3_cluster_map_tls(map, o);
  if (a->tls_ca) {
    o->tls_ca = a->tls_ca;
    o->tls_cert = a->tls_cert;
    o->tls_key = a->tls_key;
  }
  if (a->tls_name) o->tls_name = a->tls_name;
}

static void usage_of(const char *cmd);
static void usage(const char *cmd) {
  usage_of(cmd);
  fputs(tls_usage, stdout);
}

static void usage_of(const char *cmd) {
  if (!strcmp(cmd, "query"))
    fputs("usage: m3 query (--server HOST:PORT | --cluster MAP)\n"
          "                (--text \"...\" [--text \"...\" ...] | --vector-file F)\n"
          "                [-k 5] [--nprobe N] [--ef-search N] [--token-file F]\n"
          "                [--timeout-ms 10000] [--json] [--allow-fillers]\n"
          "Retrieve the top-k memories of each query; print ids, scores and chunk texts.\n"
          "Each --text is one query; all go in one call. Ranks count from 0, as in --json.\n"
          "A text query lists only memories scoring above 0 (fewer than k when fewer share\n"
          "a word with it); --allow-fillers lists k anyway.\n"
          "--nprobe N (IVF index) / --ef-search N (HNSW index): how hard the server's index\n"
          "searches for this call (default: the server's --index-params).\n"
          "Vector file: one query per line, floats separated by whitespace ('#' comments).\n"
          "--cluster MAP: a cluster map file (docs/CLIENT.md); every shard is searched and\n"
          "the global top-k fetched from the owning shards, with failover between replicas.\n",
          stdout);
  else if (!strcmp(cmd, "fetch"))
    fputs("usage: m3 fetch (--server HOST:PORT | --cluster MAP) --id N [--id M ...]\n"
          "                [--out FILE] [--token-file F] [--timeout-ms 10000] [--json]\n"
          "Fetch memories by chunk id: id, payload bytes, CRC check, text. --out writes\n"
          "the record bytes of the found memories back to back, in --id order.\n",
          stdout);
  else if (!strcmp(cmd, "delete"))
    fputs("usage: m3 delete --server HOST:PORT --id N [--id M ...] [--token-file F]\n"
          "                 [--timeout-ms 10000] [--json]\n"
          "Remove memories by chunk id through the server's admin Delete (from its store\n"
          "and its retrieval index at once); prints how many of the ids were there. Needs\n"
          "the server's admin token (--token-file F, M3_TOKEN_FILE or M3_TOKEN); the server\n"
          "logs the call. Ids that are not in the store are not an error.\n",
          stdout);
  else
    fputs("usage: m3 stats (--server HOST:PORT | --cluster MAP) [--token-file F]\n"
          "                [--timeout-ms 10000] [--json]\n"
          "The server's Hello (layout, limits) and counters. --cluster MAP: every replica\n"
          "of the map (address, shard, up or down with its error, records, calls, memories\n"
          "served) and the cluster's totals; exit 2 only when no replica answers.\n",
          stdout);
}

static int parse_args(int argc, char **argv, remote_args *a) {
  static const struct option opts[] = {
      {"server", required_argument, NULL, 's'},     {"token-file", required_argument, NULL, 't'},
      {"cluster", required_argument, NULL, 'C'},
      {"text", required_argument, NULL, 'x'},       {"vector-file", required_argument, NULL, 'v'},
      {"id", required_argument, NULL, 'i'},         {"out", required_argument, NULL, 'o'},
      {"timeout-ms", required_argument, NULL, 'T'}, {"json", no_argument, NULL, 'j'},
      {"nprobe", required_argument, NULL, 'P'},     {"ef-search", required_argument, NULL, 'E'},
      {"help", no_argument, NULL, 'h'},             {"allow-fillers", no_argument, NULL, 'F'},
      {"tls-ca", required_argument, NULL, 1},       {"tls-cert", required_argument, NULL, 2},
      {"tls-key", required_argument, NULL, 3},      {"tls-name", required_argument, NULL, 4},
      {NULL, 0, NULL, 0}};
  memset(a, 0, sizeof *a);
  a->k = 5;
  a->timeout_ms = 10000;
  char prog[64];
  snprintf(prog, sizeof prog, "m3 %s", argv[0]);
  if (m3_cli_exact_long(argc, argv, "hk:", opts, prog)) return EXIT_USAGE;
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "hk:", opts, NULL)) != -1) {
    char *end;
    switch (c) {
    case 's': a->server = optarg; break;
    case 'C': a->cluster = optarg; break;
    case 't': a->token_file = optarg; break;
    case 'x': {
      const char **t = realloc(a->texts, (a->n_texts + 1) * sizeof *t);
      if (t == NULL) return EXIT_USAGE;
      a->texts = t;
      a->texts[a->n_texts++] = optarg;
      break;
    }
    case 'v': a->vector_file = optarg; break;
    case 'o': a->out = optarg; break;
    case 'j': a->json = 1; break;
    case 'F': a->allow_fillers = 1; break;
    case 1: a->tls_ca = optarg; break;
    case 2: a->tls_cert = optarg; break;
    case 3: a->tls_key = optarg; break;
    case 4: a->tls_name = optarg; break;
    case 'k':
      a->k = (unsigned)strtoul(optarg, &end, 10);
      if (*end || a->k == 0) {
        fprintf(stderr, "m3 %s: -k '%s' is not a positive integer\n", argv[0], optarg);
        return EXIT_USAGE;
      }
      break;
    case 'P':
    case 'E': {
      unsigned long v = strtoul(optarg, &end, 10);
      if (*optarg == '\0' || *optarg == '-' || *end || v == 0 || v > UINT32_MAX) {
        fprintf(stderr, "m3 %s: %s '%s' is not a positive integer\n", argv[0],
                c == 'P' ? "--nprobe" : "--ef-search", optarg);
        return EXIT_USAGE;
      }
      if (c == 'P') a->params.nprobe = (uint32_t)v;
      else a->params.ef_search = (uint32_t)v;
      break;
    }
    case 'T':
      a->timeout_ms = (int)strtol(optarg, &end, 10);
      if (*end || a->timeout_ms < 0) {
        fprintf(stderr, "m3 %s: --timeout-ms '%s' is not a number of ms\n", argv[0], optarg);
        return EXIT_USAGE;
      }
      break;
    case 'i': {
      uint64_t id = strtoull(optarg, &end, 10);
      if (*optarg == '\0' || *end != '\0' || *optarg == '-') {
        fprintf(stderr, "m3 %s: --id '%s' is not a chunk id (an unsigned integer)\n", argv[0],
                optarg);
        return EXIT_USAGE;
      }
      uint64_t *v = realloc(a->ids, (a->n_ids + 1) * sizeof *v);
      if (v == NULL) return EXIT_USAGE;
      a->ids = v;
      a->ids[a->n_ids++] = id;
      break;
    }
    case 'h': usage(argv[0]); exit(0);
    default: usage(argv[0]); return EXIT_USAGE;
    }
  }
  if (optind != argc) {
    fprintf(stderr, "m3 %s: unexpected argument '%s'\n", argv[0], argv[optind]);
    return EXIT_USAGE;
  }
  if ((a->server == NULL) == (a->cluster == NULL)) {
    fprintf(stderr, "m3 %s: needs one of --server HOST:PORT or --cluster MAP\n", argv[0]);
    return EXIT_USAGE;
  }
  if (a->server && m3_cli_check_addr(prog, "--server", a->server, 1) != 0) return EXIT_USAGE;
  if ((a->tls_cert || a->tls_key || a->tls_name) && a->tls_ca == NULL && a->server) {
    fprintf(stderr, "m3 %s: --tls-cert, --tls-key and --tls-name need --tls-ca F (the CA that "
                    "signed the server's certificate)\n", argv[0]);
    return EXIT_USAGE;
  }
  if ((a->tls_cert == NULL) != (a->tls_key == NULL)) {
    fprintf(stderr, "m3 %s: %s without %s: a client certificate needs both\n", argv[0],
            a->tls_cert ? "--tls-cert" : "--tls-key", a->tls_cert ? "--tls-key" : "--tls-cert");
    return EXIT_USAGE;
  }
  return 0;
}

static int connect_server(const char *cmd, const remote_args *a, m3_client **c) {
  char token[512] = "";
  if (read_token(a->token_file, token, sizeof token) != 0) return EXIT_USAGE;
  m3_client_options o;
  m3_client_options_init(&o);
  o.token = token;
  o.call_timeout_ms = a->timeout_ms;
  o.client_name = "m3 cli";
  tls_options(a, NULL, &o);
  int rc = m3_client_connect(a->server, &o, c);
  if (rc) {
    fprintf(stderr, "m3 %s: %s: %s\n", cmd, m3_strerror(rc), m3_errmsg());
    return EXIT_USAGE;
  }
  return 0;
}

/* A call failed: exit 1 when the server answered with a status, 2 when the
 * connection failed (transport). */
static int call_failed(const char *cmd, m3_client *c, int rc) {
  const char *msg;
  m3_client_last_status(c, &msg);
  fprintf(stderr, "m3 %s: %s: %s\n", cmd, m3_strerror(rc), *msg ? msg : m3_errmsg());
  return m3_client_ok(c) ? EXIT_STATUS : EXIT_USAGE;
}

/* One server (m3_client) or a cluster (m3_cluster), as the command says. */
typedef struct remote {
  m3_client *c;
  m3_cluster *cl;
  const char *key, *where; /* "server" / "cluster" and its address or map */
} remote;

static int remote_open(const char *cmd, const remote_args *a, remote *r) {
  memset(r, 0, sizeof *r);
  r->key = a->cluster ? "cluster" : "server";
  r->where = a->cluster ? a->cluster : a->server;
  if (a->server) return connect_server(cmd, a, &r->c);
  char token[512] = "";
  if (read_token(a->token_file, token, sizeof token) != 0) return EXIT_USAGE;
  m3_cluster_map *map = NULL;
  int rc = m3_cluster_map_load(a->cluster, &map);
  if (rc == 0) {
    m3_cluster_options o;
    m3_cluster_options_init(&o);
    if (token[0]) o.token = token;
    if (a->timeout_ms > 0) o.call_timeout_ms = a->timeout_ms;
    if (o.try_timeout_ms > o.call_timeout_ms) o.try_timeout_ms = o.call_timeout_ms;
    o.probe_interval_ms = 0; /* one call: no prober thread */
    o.client_name = "m3 cli";
    o.tls_ca = a->tls_ca;
    o.tls_cert = a->tls_cert;
    o.tls_key = a->tls_key;
    o.tls_name = a->tls_name;
    rc = m3_cluster_open(map, &o, &r->cl);
    m3_cluster_map_free(map);
  }
  if (rc) {
    fprintf(stderr, "m3 %s: %s: %s\n", cmd, m3_strerror(rc), m3_errmsg());
    return EXIT_USAGE;
  }
  return 0;
}

static void remote_close(remote *r) {
  m3_client_close(r->c);
  m3_cluster_close(r->cl);
}

/* The reference Hello (layout) of the server or cluster. */
static int remote_info(const char *cmd, remote *r, m3_client_info *out) {
  if (r->c) {
    *out = *m3_client_info_get(r->c);
    return 0;
  }
  int rc = m3_cluster_info(r->cl, out);
  if (rc) fprintf(stderr, "m3 %s: %s: %s\n", cmd, m3_strerror(rc), m3_errmsg());
  return rc ? EXIT_USAGE : 0;
}

static int remote_failed(const char *cmd, remote *r, int rc) {
  if (r->c) return call_failed(cmd, r->c, rc);
  const char *msg;
  int code = m3_cluster_last_status(NULL, &msg);
  fprintf(stderr, "m3 %s: %s (%s): %s\n", cmd, m3_strerror(rc), m3_status_name(code),
          *msg ? msg : m3_errmsg());
  return EXIT_STATUS;
}

/* ---- query ---------------------------------------------------------- */

/* Read a vector file into *vecs (nq, dim); malloc'ed, caller frees. */
static int read_vectors(const char *path, float **vecs, size_t *nq, size_t *dim) {
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    fprintf(stderr, "m3 query: --vector-file %s: %s\n", path, strerror(errno));
    return -1;
  }
  char *line = NULL;
  size_t lcap = 0, n = 0, d = 0, cap = 0, lineno = 0;
  float *v = NULL;
  int rc = 0;
  while (getline(&line, &lcap, f) > 0) {
    lineno++;
    char *p = line;
    while (*p == ' ' || *p == '\t') p++;
    if (*p == '#' || *p == '\n' || *p == '\r' || *p == '\0') continue;
    size_t cnt = 0;
    for (;;) {
      while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
      if (*p == '\0') break;
      char *end;
      errno = 0;
      float x = strtof(p, &end);
      if (end == p || errno == ERANGE ||
          (*end && *end != ' ' && *end != '\t' && *end != '\r' && *end != '\n')) {
        fprintf(stderr, "m3 query: %s line %zu: '%.20s' is not a float\n", path, lineno, p);
        rc = -1;
        goto out;
      }
      if ((n * (d ? d : 0)) + cnt + 1 > cap) {
        cap = cap ? cap * 2 : 1024;
        float *nv = realloc(v, cap * sizeof *nv);
        if (nv == NULL) {
          rc = -1;
          goto out;
        }
        v = nv;
      }
      v[(d ? n * d : 0) + cnt++] = x;
      p = end;
    }
    if (d == 0) d = cnt;
    if (cnt != d) {
      fprintf(stderr, "m3 query: %s line %zu: %zu values, the first query had %zu\n", path,
              lineno, cnt, d);
      rc = -1;
      goto out;
    }
    n++;
  }
  if (n == 0) {
    fprintf(stderr, "m3 query: %s holds no query vectors\n", path);
    rc = -1;
  }
out:
  free(line);
  fclose(f);
  if (rc) {
    free(v);
    return rc;
  }
  *vecs = v;
  *nq = n;
  *dim = d;
  return 0;
}

typedef struct query_hit {
  uint64_t id;
  float score;
  int status;
  uint32_t bytes;
  char *text;
  char *error;
} query_hit;

typedef struct query_ctx {
  size_t nq;
  unsigned k;
  query_hit *hits; /* (nq, k) */
  int failed_items;
} query_ctx;

static int on_query_memory(void *ud, const m3_client_memory *m) {
  query_ctx *q = ud;
  if (m->query >= q->nq || m->rank >= q->k) return 0;
  query_hit *h = &q->hits[(size_t)m->query * q->k + m->rank];
  h->id = m->chunk_id;
  h->score = m->score;
  h->status = m->status;
  h->bytes = (uint32_t)m->len;
  free(h->text);
  free(h->error);
  h->text = strdup(m->text);
  h->error = m->status ? strdup(m->error) : NULL;
  if (m->status) q->failed_items++;
  return 0;
}

int m3__cmd_query(int argc, char **argv) {
  remote_args a;
  int rc = parse_args(argc, argv, &a), ex = 0;
  if (rc) return rc;
  if ((a.n_texts == 0) == (a.vector_file == NULL)) {
    fprintf(stderr, "m3 query: needs --text \"...\" (one or more) or --vector-file F, not both\n");
    return EXIT_USAGE;
  }
  float *vecs = NULL;
  size_t nq = a.n_texts, dim = 0;
  if (a.vector_file && read_vectors(a.vector_file, &vecs, &nq, &dim) != 0) return EXIT_USAGE;
  remote rm = {0};
  m3_client_info infob;
  if ((ex = remote_open("query", &a, &rm)) != 0) goto out;
  if ((ex = remote_info("query", &rm, &infob)) != 0) goto out;
  const m3_client_info *info = &infob;
  if (vecs && dim != info->layout.emb_dim) {
    fprintf(stderr, "m3 query: %s has %zu-dim vectors; %s %s embeds in %u dims\n",
            a.vector_file, dim, rm.key, rm.where, info->layout.emb_dim);
    ex = EXIT_USAGE;
    goto out;
  }
  m3_client_query *qs = calloc(nq, sizeof *qs);
  query_ctx q = {nq, a.k, calloc(nq * a.k, sizeof(query_hit)), 0};
  for (size_t i = 0; i < nq * a.k; i++) q.hits[i].id = UINT64_MAX;
  for (size_t i = 0; i < nq; i++) {
    if (vecs) qs[i] = (m3_client_query){.vector = vecs + i * dim, .dim = (uint32_t)dim};
    else qs[i] = (m3_client_query){.text = a.texts[i], .allow_fillers = a.allow_fillers};
  }
  if (rm.c) m3_client_set_search_params(rm.c, &a.params);
  else m3_cluster_set_search_params(rm.cl, &a.params);
  rc = rm.c ? m3_client_retrieve(rm.c, qs, nq, a.k, 1, on_query_memory, &q)
            : m3_cluster_retrieve(rm.cl, qs, nq, a.k, 1, on_query_memory, &q);
  if (rc) {
    ex = remote_failed("query", &rm, rc);
  } else if (a.json) {
    json_t *arr = json_array();
    for (size_t i = 0; i < nq; i++) {
      json_t *res = json_array();
      for (unsigned r = 0; r < a.k; r++) {
        query_hit *h = &q.hits[i * a.k + r];
        if (h->id == UINT64_MAX) continue;
        json_t *o = json_pack("{s:i,s:I,s:f,s:s,s:i,s:s}", "rank", r, "chunk_id",
                              (json_int_t)h->id, "score", (double)h->score, "status",
                              h->status ? m3_err_name(h->status) : "ok", "payload_bytes",
                              (int)h->bytes, "text", h->text ? h->text : "");
        if (h->error) json_object_set_new(o, "error", json_string(h->error));
        json_array_append_new(res, o);
      }
      json_t *qo = json_pack("{s:I}", "query", (json_int_t)i);
      if (a.n_texts) json_object_set_new(qo, "text", json_string(a.texts[i]));
      json_object_set_new(qo, "results", res);
      json_array_append_new(arr, qo);
    }
    print_json(json_pack("{s:s,s:s,s:i,s:o}", rm.key, rm.where, "embedder", info->embedder, "k",
                         a.k, "queries", arr));
  } else {
    for (size_t i = 0; i < nq; i++) {
      if (a.n_texts) printf("query %zu \"%s\"\n", i, a.texts[i]);
      else printf("query %zu\n", i);
      printf("  %-4s %-20s %-9s %s\n", "rank", "chunk_id", "score", "text");
      for (unsigned r = 0; r < a.k; r++) {
        query_hit *h = &q.hits[i * a.k + r];
        if (h->id == UINT64_MAX) continue;
        if (h->status)
          printf("  %-4u %-20llu %-9.5f [%s: %s]\n", r, (unsigned long long)h->id,
                 (double)h->score, m3_err_name(h->status), h->error);
        else
          printf("  %-4u %-20llu %-9.5f %s\n", r, (unsigned long long)h->id,
                 (double)h->score, h->text);
      }
    }
  }
  if (rc == 0 && q.failed_items) {
    fprintf(stderr, "m3 query: %d memories could not be served (see their status)\n",
            q.failed_items);
    ex = EXIT_STATUS;
  }
  for (size_t i = 0; i < nq * a.k; i++) {
    free(q.hits[i].text);
    free(q.hits[i].error);
  }
  free(q.hits);
  free(qs);
out:
  remote_close(&rm);
  free(vecs);
  free(a.ids);
  free(a.texts);
  return ex;
}

/* ---- fetch ---------------------------------------------------------- */

typedef struct fetch_ctx {
  size_t n;
  json_t **items; /* by id index */
  uint8_t **data;
  size_t *len;
  int failed;
  int json;
} fetch_ctx;

static int on_fetch_memory(void *ud, const m3_client_memory *m) {
  fetch_ctx *f = ud;
  if (m->query >= f->n) return 0;
  if (m->status) f->failed++;
  const char *crc = m->status == 0 ? "ok" : m->status == M3_ECORRUPT ? "mismatch" : "n/a";
  json_t *o = json_pack("{s:I,s:s,s:I,s:s,s:s}", "chunk_id", (json_int_t)m->chunk_id, "status",
                        m->status ? m3_err_name(m->status) : "ok", "payload_bytes",
                        (json_int_t)m->len, "crc", crc, "text", m->text);
  if (m->status) json_object_set_new(o, "error", json_string(m->error));
  if (m->record) {
    json_object_set_new(o, "chunk_len", json_integer(m->record->chunk_len));
  }
  json_decref(f->items[m->query]);
  f->items[m->query] = o;
  if (m->data) {
    free(f->data[m->query]);
    f->data[m->query] = malloc(m->len);
    if (f->data[m->query]) memcpy(f->data[m->query], m->data, m->len);
    f->len[m->query] = m->len;
  }
  return 0;
}

int m3__cmd_fetch(int argc, char **argv) {
  remote_args a;
  int rc = parse_args(argc, argv, &a), ex = 0;
  if (rc) return rc;
  if (a.n_ids == 0) {
    fprintf(stderr, "m3 fetch: needs at least one --id N\n");
    free(a.ids);
    free(a.texts);
    return EXIT_USAGE;
  }
  remote rm = {0};
  fetch_ctx f = {a.n_ids, calloc(a.n_ids, sizeof(json_t *)), calloc(a.n_ids, sizeof(uint8_t *)),
                 calloc(a.n_ids, sizeof(size_t)), 0, a.json};
  if ((ex = remote_open("fetch", &a, &rm)) != 0) goto out;
  rc = rm.c ? m3_client_fetch(rm.c, a.ids, a.n_ids, 1, on_fetch_memory, &f)
            : m3_cluster_fetch(rm.cl, a.ids, a.n_ids, 1, on_fetch_memory, &f);
  if (rc) {
    ex = remote_failed("fetch", &rm, rc);
    goto out;
  }
  if (a.out) {
    FILE *o = fopen(a.out, "wb");
    if (o == NULL) {
      fprintf(stderr, "m3 fetch: --out %s: %s\n", a.out, strerror(errno));
      ex = EXIT_USAGE;
      goto out;
    }
    for (size_t i = 0; i < a.n_ids; i++)
      if (f.data[i] && fwrite(f.data[i], 1, f.len[i], o) != f.len[i]) ex = EXIT_USAGE;
    if (fclose(o) != 0 || ex) {
      fprintf(stderr, "m3 fetch: writing %s: %s\n", a.out, strerror(errno));
      ex = EXIT_USAGE;
      goto out;
    }
  }
  json_t *arr = json_array();
  for (size_t i = 0; i < a.n_ids; i++) {
    if (f.items[i] == NULL) {
      /* The stream ended without this id: the server owes an answer. */
      f.items[i] = json_pack("{s:I,s:s,s:s}", "chunk_id", (json_int_t)a.ids[i], "status",
                             "M3_EIO", "error", "the server sent nothing for this id");
      f.failed++;
    }
    json_array_append(arr, f.items[i]);
  }
  if (a.json) {
    print_json(json_pack("{s:s,s:o}", rm.key, rm.where, "memories", arr));
  } else {
    for (size_t i = 0; i < a.n_ids; i++) {
      json_t *o = f.items[i];
      const char *st = json_string_value(json_object_get(o, "status"));
      printf("chunk_id      %llu\n", (unsigned long long)a.ids[i]);
      printf("status        %s\n", st);
      if (!strcmp(st, "ok")) {
        printf("payload_bytes %lld\n", (long long)json_integer_value(json_object_get(o, "payload_bytes")));
        printf("crc           %s\n", json_string_value(json_object_get(o, "crc")));
        printf("text          %s\n", json_string_value(json_object_get(o, "text")));
      } else {
        printf("error         %s\n", json_string_value(json_object_get(o, "error")));
      }
      if (i + 1 < a.n_ids) putchar('\n');
    }
    json_decref(arr);
  }
  if (f.failed) {
    fprintf(stderr, "m3 fetch: %d of %zu ids failed (see their status)\n", f.failed, a.n_ids);
    ex = EXIT_STATUS;
  }
out:
  for (size_t i = 0; i < a.n_ids; i++) {
    json_decref(f.items[i]);
    free(f.data[i]);
  }
  free(f.items);
  free(f.data);
  free(f.len);
  remote_close(&rm);
  free(a.ids);
  free(a.texts);
  return ex;
}

/* ---- stats ---------------------------------------------------------- */

/* One replica's answer for stats --cluster. */
typedef struct replica_stats {
  const char *addr;
  uint32_t shard, replica;
  int up;
  char error[700];
  char server_name[64];
  m3_client_stats st;
} replica_stats;

static void replica_stats_get(const remote_args *a, const m3_cluster_map *map, const char *token,
                              replica_stats *r) {
  m3_client_options o;
  m3_client_options_init(&o);
  o.token = token;
  tls_options(a, map, &o);
  o.call_timeout_ms = a->timeout_ms;
  if (a->timeout_ms > 0 && a->timeout_ms < o.connect_timeout_ms)
    o.connect_timeout_ms = a->timeout_ms;
  o.client_name = "m3 cli";
  m3_client *c = NULL;
  int rc = m3_client_connect(r->addr, &o, &c);
  if (rc == 0 && (rc = m3_client_stats_get(c, &r->st)) != 0) {
    const char *msg;
    m3_client_last_status(c, &msg);
    snprintf(r->error, sizeof r->error, "Stats: %s", *msg ? msg : m3_errmsg());
  } else if (rc) {
    snprintf(r->error, sizeof r->error, "%s", m3_errmsg());
  }
  if (rc == 0)
    snprintf(r->server_name, sizeof r->server_name, "%s", m3_client_info_get(c)->server_name);
  r->up = rc == 0;
  m3_client_close(c);
}

/*
 * stats --cluster: every replica's counters (one connection each, in map
 * order), and totals: records of the knowledge base (per shard, the most
 * any answering replica holds), calls and memories served by all. A
 * replica that does not answer is listed down with its error; the command
 * fails (exit 2) only when none answers.
 */
static int cluster_stats(const remote_args *a) {
  char token[512] = "";
  if (read_token(a->token_file, token, sizeof token) != 0) return EXIT_USAGE;
  m3_cluster_map *map = NULL;
  int rc = m3_cluster_map_load(a->cluster, &map);
  if (rc) {
    fprintf(stderr, "m3 stats: %s: %s\n", m3_strerror(rc), m3_errmsg());
    return EXIT_USAGE;
  }
  const char *tok = token[0] ? token : m3_cluster_map_token(map);
  uint32_t ns = m3_cluster_map_shards(map), n = 0;
  for (uint32_t s = 0; s < ns; s++) n += m3_cluster_map_replicas(map, s);
  replica_stats *rs = calloc(n, sizeof *rs);
  if (rs == NULL) {
    m3_cluster_map_free(map);
    return EXIT_USAGE;
  }
  uint64_t records = 0, calls = 0, served = 0;
  uint32_t up = 0, shards_down = 0, i = 0;
  for (uint32_t s = 0; s < ns; s++) {
    uint64_t shard_records = 0;
    int shard_up = 0;
    for (uint32_t r = 0; r < m3_cluster_map_replicas(map, s); r++, i++) {
      rs[i].addr = m3_cluster_map_replica(map, s, r);
      rs[i].shard = s;
      rs[i].replica = r;
      replica_stats_get(a, map, tok, &rs[i]);
      if (!rs[i].up) continue;
      up++;
      shard_up = 1;
      calls += rs[i].st.calls;
      served += rs[i].st.memories_served;
      if (rs[i].st.records > shard_records) shard_records = rs[i].st.records;
    }
    records += shard_records;
    shards_down += !shard_up;
  }
  if (a->json) {
    json_t *arr = json_array();
    for (i = 0; i < n; i++) {
      json_t *o = json_pack("{s:i,s:i,s:s,s:b}", "shard", (int)rs[i].shard, "replica",
                            (int)rs[i].replica, "address", rs[i].addr, "up", rs[i].up);
      if (rs[i].up) {
        json_object_set_new(o, "server_name", json_string(rs[i].server_name));
        json_object_set_new(o, "records", json_integer((json_int_t)rs[i].st.records));
        json_object_set_new(o, "calls", json_integer((json_int_t)rs[i].st.calls));
        json_object_set_new(o, "memories_served",
                            json_integer((json_int_t)rs[i].st.memories_served));
        json_object_set_new(o, "payload_bytes_served",
                            json_integer((json_int_t)rs[i].st.payload_bytes_served));
        json_object_set_new(o, "connections", json_integer((json_int_t)rs[i].st.connections));
        json_object_set_new(o, "uptime_ms", json_integer((json_int_t)rs[i].st.uptime_ms));
      } else {
        json_object_set_new(o, "error", json_string(rs[i].error));
      }
      json_array_append_new(arr, o);
    }
    json_t *tot = json_pack("{s:i,s:i,s:i,s:i,s:I,s:I,s:I}", "replicas", (int)n, "up", (int)up,
                            "down", (int)(n - up), "shards_down", (int)shards_down, "records",
                            (json_int_t)records, "calls", (json_int_t)calls, "memories_served",
                            (json_int_t)served);
    print_json(json_pack("{s:s,s:i,s:o,s:o}", "cluster", a->cluster, "shards", (int)ns,
                         "replicas", arr, "totals", tot));
  } else {
    printf("cluster %s: %u shards, %u replicas, %u up, %u down\n", a->cluster, ns, n, up, n - up);
    printf("%-5s %-7s %-22s %-5s %10s %10s %15s\n", "shard", "replica", "address", "state",
           "records", "calls", "memories_served");
    for (i = 0; i < n; i++) {
      if (rs[i].up)
        printf("%-5u %-7u %-22s %-5s %10llu %10llu %15llu\n", rs[i].shard, rs[i].replica,
               rs[i].addr, "up", (unsigned long long)rs[i].st.records,
               (unsigned long long)rs[i].st.calls, (unsigned long long)rs[i].st.memories_served);
      else
        printf("%-5u %-7u %-22s %-5s %s\n", rs[i].shard, rs[i].replica, rs[i].addr, "down",
               rs[i].error);
    }
    printf("%-5s %-7s %-22s %-5s %10llu %10llu %15llu\n", "total", "", "", "",
           (unsigned long long)records, (unsigned long long)calls, (unsigned long long)served);
  }
  for (i = 0; i < n; i++)
    if (!rs[i].up)
      fprintf(stderr, "m3 stats: shard %u replica %s down: %s\n", rs[i].shard, rs[i].addr,
              rs[i].error);
  if (shards_down && up)
    fprintf(stderr, "m3 stats: %u of %u shards have no replica answering\n", shards_down, ns);
  free(rs);
  m3_cluster_map_free(map);
  if (up == 0) {
    fprintf(stderr, "m3 stats: no replica of %s answers\n", a->cluster);
    return EXIT_USAGE;
  }
  return 0;
}

int m3__cmd_stats(int argc, char **argv) {
  remote_args a;
  int rc = parse_args(argc, argv, &a), ex = 0;
  if (rc) return rc;
  if (a.cluster) {
    ex = cluster_stats(&a);
    free(a.ids);
    free(a.texts);
    return ex;
  }
  m3_client *c = NULL;
  if ((ex = connect_server("stats", &a, &c)) != 0) goto out;
  m3_client_stats st;
  if ((rc = m3_client_stats_get(c, &st)) != 0) {
    ex = call_failed("stats", c, rc);
    goto out;
  }
  const m3_client_info *in = m3_client_info_get(c);
  const m3_layout *l = &in->layout;
  char fp[20], shape[64];
  snprintf(fp, sizeof fp, "%016llx", (unsigned long long)l->codec_fp);
  m3_spec_format(&l->spec, shape, sizeof shape);
  if (a.json) {
    json_t *methods = json_array();
    for (size_t i = 0; i < st.n_methods; i++)
      json_array_append_new(methods, json_pack("{s:s,s:I,s:I}", "method", st.methods[i].method,
                                               "calls", (json_int_t)st.methods[i].calls,
                                               "errors", (json_int_t)st.methods[i].errors));
    json_t *hello = json_pack(
        "{s:s,s:i,s:s,s:i,s:i,s:s,s:i,s:s,s:i,s:b,s:i}", "server_name", in->server_name,
        "protocol_version", (int)in->protocol_version, "shape", shape, "codec_kind",
        l->codec_kind, "code_bytes", l->code_bytes, "codec_fingerprint", fp, "embedding_dim",
        l->emb_dim, "embedder", st.embedder, "memory_bytes", (int)in->memory_bytes, "admin", in->admin, "shard",
        (int)in->shard);
    json_t *limits = json_pack("{s:I,s:I,s:I,s:I,s:I,s:I}", "max_frame_bytes",
                               (json_int_t)in->max_frame_bytes, "max_inflight_calls",
                               (json_int_t)in->max_inflight_calls, "max_queries_per_call",
                               (json_int_t)in->max_queries_per_call, "max_k",
                               (json_int_t)in->max_k, "max_ids_per_call",
                               (json_int_t)in->max_ids_per_call, "idle_timeout_ms",
                               (json_int_t)in->idle_timeout_ms);
    json_t *top = json_pack(
        "{s:s,s:o,s:o,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:s,s:I,s:I,s:o}", "server", a.server,
        "hello", hello, "limits", limits, "records", (json_int_t)st.records, "segment_bytes",
        (json_int_t)st.segment_bytes, "connections", (json_int_t)st.connections, "calls",
        (json_int_t)st.calls, "memories_served", (json_int_t)st.memories_served,
        "payload_bytes_served", (json_int_t)st.payload_bytes_served, "cache_hits",
        (json_int_t)st.cache_hits, "cache_misses", (json_int_t)st.cache_misses, "io_backend",
        st.io_backend, "uptime_ms", (json_int_t)st.uptime_ms, "index_vectors",
        (json_int_t)st.index_vectors, "methods", methods);
    json_object_set_new(top, "index_factory", json_string(st.index_factory));
    json_object_set_new(top, "index_params", json_string(st.index_params));
    print_json(top);
  } else {
    printf("server          %s (%s), protocol %u%s\n", a.server, in->server_name,
           in->protocol_version, in->admin ? ", admin token" : "");
    printf("layout          %s, codec %s, %u bytes per vector, fingerprint %s\n", shape,
           m3_codec_kind_name(l->codec_kind), l->code_bytes, fp);
    printf("memory          %u bytes per record; embeddings %u dims, embedder %s\n",
           in->memory_bytes, l->emb_dim, st.embedder);
    printf("limits          frame %llu bytes, %llu calls in flight, %llu queries per call, "
           "k %llu, %llu ids per Fetch, idle %llu ms\n",
           (unsigned long long)in->max_frame_bytes, (unsigned long long)in->max_inflight_calls,
           (unsigned long long)in->max_queries_per_call, (unsigned long long)in->max_k,
           (unsigned long long)in->max_ids_per_call, (unsigned long long)in->idle_timeout_ms);
    printf("records         %llu (index %llu vectors)\n", (unsigned long long)st.records,
           (unsigned long long)st.index_vectors);
    if (st.index_factory[0])
      printf("index           %s, search params %s\n", st.index_factory,
             st.index_params[0] ? st.index_params : "FAISS's defaults");
    else
      printf("index           none\n");
    printf("segment_bytes   %llu\n", (unsigned long long)st.segment_bytes);
    printf("io_backend      %s\n", st.io_backend);
    printf("uptime          %.1f s\n", (double)st.uptime_ms / 1e3);
    printf("connections     %llu\n", (unsigned long long)st.connections);
    printf("calls           %llu\n", (unsigned long long)st.calls);
    printf("memories_served %llu (%llu payload bytes)\n", (unsigned long long)st.memories_served,
           (unsigned long long)st.payload_bytes_served);
    printf("cache           %llu hits, %llu misses\n", (unsigned long long)st.cache_hits,
           (unsigned long long)st.cache_misses);
    for (size_t i = 0; i < st.n_methods; i++)
      printf("  %-12s %llu calls, %llu errors\n", st.methods[i].method,
             (unsigned long long)st.methods[i].calls, (unsigned long long)st.methods[i].errors);
  }
out:
  m3_client_close(c);
  free(a.ids);
  free(a.texts);
  return ex;
}

/* ---- delete (admin) ------------------------------------------------- */

int m3__cmd_delete(int argc, char **argv) {
  remote_args a;
  int rc = parse_args(argc, argv, &a), ex = 0;
  if (rc) return rc;
  m3_client *c = NULL;
  if (a.cluster) {
    fprintf(stderr, "m3 delete: needs --server HOST:PORT: admin calls go to one server (each "
                    "replica of a shard takes its own)\n");
    ex = EXIT_USAGE;
    goto out;
  }
  if (a.n_ids == 0) {
    fprintf(stderr, "m3 delete: needs at least one --id N\n");
    ex = EXIT_USAGE;
    goto out;
  }
  if ((ex = connect_server("delete", &a, &c)) != 0) goto out;
  uint32_t deleted = 0;
  if ((rc = m3_client_delete(c, a.ids, a.n_ids, &deleted)) != 0) {
    ex = call_failed("delete", c, rc);
    goto out;
  }
  if (a.json)
    print_json(json_pack("{s:s,s:I,s:I}", "server", a.server, "ids", (json_int_t)a.n_ids,
                         "deleted", (json_int_t)deleted));
  else
    printf("deleted %u of %zu ids from %s (%zu not in the store)\n", deleted, a.n_ids, a.server,
           a.n_ids - deleted);
out:
  m3_client_close(c);
  free(a.ids);
  free(a.texts);
  return ex;
}

/* ---- put (admin): m3-encode --server --------------------------------- */

static const char *put_usage =
    "usage: m3 put --server HOST:PORT --store DIR --input FILE.jsonl [--token-file F]\n"
    "              [--model DIR] [--timeout-ms 10000] [other m3-encode options]\n"
    "Encode the input's lines (JSONL as m3-encode takes them: {\"id\", \"text\",\n"
    "\"embedding\"}) with the served store's own model, codec and embedder, and send\n"
    "the records through the server's admin Put: the server writes them to its store\n"
    "and retrieval index at once and answers queries with them. A line whose id is\n"
    "already in the store replaces that memory.\n"
    "  --store DIR   the folder of the store the server serves (only read: its\n"
    "                encode.json, codec.m3c, tokenizer and idf.bin), or a copy of\n"
    "                those files when the server runs on another machine\n"
    "  --model DIR   the model (default: the \"model\" of DIR/encode.json)\n"
    "Over TLS: --tls-ca F [--tls-cert F --tls-key F] [--tls-name NAME], as for the\n"
    "other commands (a client certificate may be the admin: m3-server\n"
    "--admin-cert-subject).\n"
    "The server's admin token: --token-file F, M3_TOKEN_FILE or M3_TOKEN. This runs\n"
    "`m3-encode --server HOST:PORT ...` (installed beside m3) with the same options;\n"
    "its exit codes: 0 done, 1 bad input, 2 failure (the server's refusal included).\n";

int m3__cmd_put(int argc, char **argv) {
  int has_server = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      fputs(put_usage, stdout);
      return 0;
    }
    if (!strcmp(argv[i], "--server") || !strncmp(argv[i], "--server=", 9)) has_server = 1;
  }
  if (!has_server) {
    fprintf(stderr, "m3 put: needs --server HOST:PORT (see m3 put --help)\n");
    return EXIT_USAGE;
  }
  /* m3-encode beside this m3 (a build's bin/, or the install's), else PATH. */
  char self[4096], path[4200];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  path[0] = '\0';
  if (n > 0) {
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (slash) {
      *slash = '\0';
      snprintf(path, sizeof path, "%s/m3-encode", self);
      if (access(path, X_OK) != 0) path[0] = '\0';
    }
  }
  char **args = calloc((size_t)argc + 1, sizeof *args);
  if (args == NULL) return EXIT_USAGE;
  args[0] = (char *)"m3-encode";
  for (int i = 1; i < argc; i++) args[i] = argv[i];
  fflush(stdout);
  if (path[0]) execv(path, args);
  else execvp("m3-encode", args);
  fprintf(stderr, "m3 put: cannot run %s: %s (m3 put needs m3-encode installed beside m3)\n",
          path[0] ? path : "m3-encode", strerror(errno));
  free(args);
  return EXIT_USAGE;
}
