/*
 * m3: the command-line tool of m3store. This file holds the dispatcher and
 * the `m3 store ...` commands that operate on a store directory directly.
 *
 * Exit codes: 0 success; 1 the store has problems (verify found damage,
 * repair lost records); 2 the command could not run (bad usage, I/O error).
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "m3/error.h"
#include "m3/internal/cli.h"
#include "m3/log.h"
#include "m3/store.h"
#include "m3/version.h"

/* The commands that talk to a server (m3_remote.c). */
int m3__cmd_query(int argc, char **argv);
int m3__cmd_fetch(int argc, char **argv);
int m3__cmd_stats(int argc, char **argv);
int m3__cmd_delete(int argc, char **argv);
int m3__cmd_put(int argc, char **argv);
/* m3 store split (m3_cluster_cmd.c). */
int m3__cmd_store_split(int argc, char **argv);
/* m3 store merge (m3_merge_cmd.c). */
int m3__cmd_store_merge(int argc, char **argv);
/* m3 store dump (m3_dump.c). */
int m3__cmd_store_dump(int argc, char **argv);

#define EXIT_PROBLEMS 1
#define EXIT_FAILURE_ 2

static const char *usage_text =
    "usage: m3 <command> [options]\n"
    "\n"
    "Store commands (operate on a store directory on this machine):\n"
    "  m3 store info DIR [--json]      counts, bytes, space overhead, layout\n"
    "  m3 store verify DIR [--json]    read and check every record; exit 1 on damage\n"
    "  m3 store repair DIR [--json]    rebuild the catalog from the segments\n"
    "  m3 store compact DIR            rewrite segments without deleted records\n"
    "  m3 store get DIR --id N [--json]  one memory: location, checksum status, text\n"
    "  m3 store dump DIR --id N [--json] [--codec FILE] [--model DIR]\n"
    "                                  one memory decoded: text, tokens, positions, K, V\n"
    "  m3 store split DIR --shards S --out OUTDIR\n"
    "                                  split into OUTDIR/shard-<s> stores by chunk id % S\n"
    "  m3 store merge --shards S --out OUTDIR PARTIAL...\n"
    "                                  partial stores (m3-encode --slice) into shard stores\n"
    "\n"
    "Server commands (talk to an m3-server; exit 1 when it answers with a failure):\n"
    "  m3 query (--server HOST:PORT | --cluster MAP) (--text \"...\" | --vector-file F)\n"
    "           [-k 5] [--json]\n"
    "                                  top-k memories of each query: ids, scores, texts\n"
    "  m3 fetch (--server HOST:PORT | --cluster MAP) --id N [--id M ...] [--out FILE] [--json]\n"
    "                                  memories by chunk id: bytes, CRC check, text\n"
    "  m3 stats (--server HOST:PORT | --cluster MAP) [--json]\n"
    "                                  the server's layout, limits and counters; with\n"
    "                                  --cluster every replica's, up or down, and totals\n"
    "  m3 put --server HOST:PORT --store DIR --input FILE.jsonl [m3-encode options]\n"
    "                                  encode the lines with the served store's own model,\n"
    "                                  codec and embedder; send them through admin Put\n"
    "  m3 delete --server HOST:PORT --id N [--id M ...] [--json]\n"
    "                                  remove memories by chunk id (admin Delete)\n"
    "  (all take --token-file F and --timeout-ms MS; put and delete need the server's\n"
    "  admin token)\n"
    "\n"
    "Options:\n"
    "  --json        machine-readable output on stdout\n"
    "  -h, --help    this help\n"
    "  --version     version, git commit and build options\n"
    "\n"
    "Environment: M3_LOG_LEVEL=debug|info|warn|error, M3_IO=uring|pread.\n";

static int fail(const char *what, int rc) {
  const char *msg = m3_errmsg();
  fprintf(stderr, "m3: %s: %s%s%s\n", what, m3_strerror(rc), *msg ? ": " : "", msg);
  return EXIT_FAILURE_;
}

static int print_json(json_t *j) {
  char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  json_decref(j);
  if (s == NULL) return EXIT_FAILURE_;
  puts(s);
  free(s);
  return 0;
}

/* Usage of the store commands, from usage_text (so there is one text): with
 * cmd, the entry of `m3 store CMD` (its line and the indented lines under
 * it); without, the whole "Store commands" section. */
static void store_usage(const char *cmd, FILE *f) {
  char head[64];
  snprintf(head, sizeof head, cmd ? "  m3 store %s " : "Store commands", cmd ? cmd : "");
  const char *p = strstr(usage_text, head);
  if (p == NULL) {
    fputs(usage_text, f);
    return;
  }
  if (cmd) fputs("usage: ", f);
  for (int first = 1; *p; first = 0) {
    const char *nl = strchr(p, '\n');
    size_t len = nl ? (size_t)(nl - p) + 1 : strlen(p);
    if (!first && (len <= 1 || (cmd && strncmp(p, "          ", 10) != 0))) break;
    fprintf(f, "%.*s", (int)(first && cmd ? len - 2 : len), first && cmd ? p + 2 : p);
    p += len;
  }
}

typedef struct store_args {
  const char *dir;
  int json;
  int has_id;
  unsigned long long id;
} store_args;

/* Parse `DIR [--json]`; returns 0, or an exit code after printing usage. */
static int parse_store_args(int argc, char **argv, store_args *a) {
  static const struct option opts[] = {{"json", no_argument, NULL, 'j'},
                                       {"id", required_argument, NULL, 'i'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  memset(a, 0, sizeof *a);
  char prog[64];
  snprintf(prog, sizeof prog, "m3 store %s", argv[0]);
  if (m3_cli_exact_long(argc, argv, "h", opts, prog)) return EXIT_FAILURE_;
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 'j': a->json = 1; break;
    case 'i': {
      char *end;
      a->id = strtoull(optarg, &end, 10);
      if (*optarg == '\0' || *end != '\0') {
        fprintf(stderr, "m3 %s: --id '%s' is not a chunk id (an unsigned integer)\n", argv[0], optarg);
        return EXIT_FAILURE_;
      }
      a->has_id = 1;
      break;
    }
    case 'h': store_usage(argv[0], stdout); exit(0);
    default: store_usage(argv[0], stderr); return EXIT_FAILURE_;
    }
  }
  if (optind != argc - 1) {
    fprintf(stderr, "m3 %s: expected one store directory\n", argv[0]);
    return EXIT_FAILURE_;
  }
  a->dir = argv[optind];
  return 0;
}

static json_t *layout_json(const m3_layout *l) {
  char fp[20];
  snprintf(fp, sizeof fp, "%016llx", (unsigned long long)l->codec_fp);
  return json_pack("{s:i,s:i,s:i,s:i,s:s,s:i,s:s,s:i}", "n_layers", l->spec.n_layers,
                   "n_kv_heads", l->spec.n_kv_heads, "n_tokens", l->spec.n_tokens, "head_dim",
                   l->spec.head_dim, "codec", m3_codec_kind_name(l->codec_kind), "code_bytes",
                   l->code_bytes, "codec_fingerprint", fp, "embedding_dim", l->emb_dim);
}

/* Open dir read-only for an inspecting command; on failure the reason is
 * printed and the command's exit code returned. */
static int open_read_only(const char *dir, m3_store **s) {
  m3_store_options o;
  m3_store_options_init(&o);
  o.read_only = 1;
  int rc = m3_store_open(dir, &o, s);
  return rc ? fail(dir, rc) : 0;
}

static int cmd_info(int argc, char **argv) {
  store_args a;
  int rc = parse_store_args(argc, argv, &a);
  if (rc) return rc;
  m3_store *s;
  if ((rc = open_read_only(a.dir, &s)) != 0) return rc;
  m3_store_stats st;
  if ((rc = m3_store_stats_get(s, &st)) != 0) {
    m3_store_close(s);
    return fail(a.dir, rc);
  }
  const m3_layout *l = m3_store_layout(s);
  size_t mem = m3_record_mem_size(l);
  /* While serving: the location table and RocksDB's caches and memtables. */
  uint64_t ram = m3_store_ram_bytes(s), disk = st.segment_bytes + st.catalog_bytes;
  if (a.json) {
    json_t *j = json_pack(
        "{s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:I,s:I,s:I,s:f,s:f,s:i,s:I,s:o,s:s}", "store", a.dir,
        "records",
        (json_int_t)st.records, "segments", (json_int_t)st.segments, "segment_bytes",
        (json_int_t)st.segment_bytes, "payload_bytes", (json_int_t)st.payload_bytes, "text_bytes",
        (json_int_t)st.text_bytes, "embedding_bytes", (json_int_t)st.embedding_bytes, "dead_bytes", (json_int_t)st.dead_bytes, "overhead",
        st.overhead, "catalog_bytes", (json_int_t)st.catalog_bytes, "ram_bytes", (json_int_t)ram,
        "location_table_bytes", (json_int_t)st.loc_table_bytes, "ram_bytes_per_memory",
        st.records ? (double)ram / (double)st.records : 0.0, "disk_bytes_per_memory",
        st.records ? (double)disk / (double)st.records : 0.0, "align",
        (int)m3_store_align(s), "memory_bytes", (json_int_t)mem, "layout", layout_json(l),
        "io_backend", m3_store_io_backend(s));
    m3_store_close(s);
    return print_json(j);
  }
  char shape[32];
  printf("store          %s\n", a.dir);
  printf("shape          %s (layers x kv heads x tokens x dim)\n",
         m3_spec_format(&l->spec, shape, sizeof shape));
  printf("codec          %s, %u bytes per vector, fingerprint %016llx\n",
         m3_codec_kind_name(l->codec_kind), l->code_bytes, (unsigned long long)l->codec_fp);
  printf("memory         %zu bytes per record (header + positions + codes)\n", mem);
  if (l->emb_dim) printf("embedding      %u dims (f32) per memory, for retrieval\n", l->emb_dim);
  printf("records        %llu\n", (unsigned long long)st.records);
  printf("segments       %llu, %llu bytes (%llu dead)\n", (unsigned long long)st.segments,
         (unsigned long long)st.segment_bytes, (unsigned long long)st.dead_bytes);
  printf("payload        %llu bytes of memories, %llu bytes of text, %llu bytes of embeddings\n",
         (unsigned long long)st.payload_bytes, (unsigned long long)st.text_bytes,
         (unsigned long long)st.embedding_bytes);
  printf("overhead       %.2f%% (segment bytes over memories, text and embeddings)\n",
         st.overhead * 100);
  printf("catalog        %llu bytes\n", (unsigned long long)st.catalog_bytes);
  if (st.records) {
    printf("RAM serving    %llu bytes, %.1f per memory (location table %llu, RocksDB %llu)\n",
           (unsigned long long)ram, (double)ram / (double)st.records,
           (unsigned long long)st.loc_table_bytes, (unsigned long long)st.catalog_ram_bytes);
    printf("disk           %.1f bytes per memory (segments and catalog)\n",
           (double)disk / (double)st.records);
  }
  m3_store_close(s);
  return 0;
}

typedef struct problems {
  json_t *list; /* with --json */
  unsigned long count;
  const char *dir;
} problems;

static void on_problem(void *ud, const m3_problem *p) {
  problems *pr = ud;
  pr->count++;
  if (pr->list) {
    json_t *o = json_object();
    json_object_set_new(o, "chunk_id", p->chunk_id == UINT64_MAX
                                           ? json_null()
                                           : json_integer((json_int_t)p->chunk_id));
    json_object_set_new(o, "segment", json_integer(p->segment));
    json_object_set_new(o, "offset", json_integer((json_int_t)p->offset));
    json_object_set_new(o, "error", json_string(m3_err_name(p->err)));
    json_object_set_new(o, "detail", json_string(p->detail ? p->detail : ""));
    json_array_append_new(pr->list, o);
    return;
  }
  if (p->chunk_id == UINT64_MAX)
    printf("%s/seg-%06u.m3s offset %llu: %s: %s\n", pr->dir, p->segment,
           (unsigned long long)p->offset, m3_err_name(p->err), p->detail);
  else
    printf("chunk %llu: %s/seg-%06u.m3s offset %llu: %s: %s\n", (unsigned long long)p->chunk_id,
           pr->dir, p->segment, (unsigned long long)p->offset, m3_err_name(p->err), p->detail);
}

/* Progress of verify and repair on a terminal's stderr. */
static void on_progress(void *ud, const char *what, uint64_t done, uint64_t total) {
  (void)ud;
  if (total) fprintf(stderr, "\r%s: %llu of %llu (%.0f%%)   ", what, (unsigned long long)done,
                     (unsigned long long)total, 100.0 * (double)done / (double)total);
  else fprintf(stderr, "\r%s: %llu   ", what, (unsigned long long)done);
}

static void progress_on(int json) {
  if (!json && isatty(2)) m3_store_set_progress(on_progress, NULL);
}

static int cmd_verify(int argc, char **argv) {
  store_args a;
  int rc = parse_store_args(argc, argv, &a);
  if (rc) return rc;
  m3_store *s;
  if ((rc = open_read_only(a.dir, &s)) != 0) return rc;
  problems pr = {a.json ? json_array() : NULL, 0, a.dir};
  uint64_t checked = 0;
  progress_on(a.json);
  rc = m3_store_verify(s, on_problem, &pr, &checked);
  if (!a.json && isatty(2)) fputc('\n', stderr);
  m3_store_close(s);
  if (rc != 0 && rc != M3_ECORRUPT) {
    json_decref(pr.list);
    return fail(a.dir, rc);
  }
  if (a.json) {
    print_json(json_pack("{s:s,s:I,s:b,s:o}", "store", a.dir, "checked", (json_int_t)checked,
                         "ok", pr.count == 0, "problems", pr.list));
  } else if (pr.count == 0) {
    printf("verified %llu records: OK\n", (unsigned long long)checked);
  } else {
    printf("verified %llu records: %lu problem%s\n", (unsigned long long)checked, pr.count,
           pr.count == 1 ? "" : "s");
  }
  return pr.count ? EXIT_PROBLEMS : 0;
}

static int cmd_repair(int argc, char **argv) {
  store_args a;
  int rc = parse_store_args(argc, argv, &a);
  if (rc) return rc;
  problems pr = {a.json ? json_array() : NULL, 0, a.dir};
  m3_repair_report rep;
  progress_on(a.json);
  rc = m3_store_repair(a.dir, on_problem, &pr, &rep);
  if (!a.json && isatty(2)) fputc('\n', stderr);
  if (rc != 0 && rc != M3_ECORRUPT) {
    json_decref(pr.list);
    return fail(a.dir, rc);
  }
  if (a.json) {
    print_json(json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:o}", "store", a.dir, "segments",
                         (json_int_t)rep.segments, "records", (json_int_t)rep.records,
                         "tombstones", (json_int_t)rep.tombstones, "damaged",
                         (json_int_t)rep.damaged, "truncated_bytes",
                         (json_int_t)rep.truncated_bytes, "problems", pr.list));
  } else {
    printf("rebuilt the catalog from %llu segments: %llu records, %llu deletes applied\n",
           (unsigned long long)rep.segments, (unsigned long long)rep.records,
           (unsigned long long)rep.tombstones);
    if (rep.truncated_bytes)
      printf("cut %llu bytes of torn tails\n", (unsigned long long)rep.truncated_bytes);
    if (rep.damaged)
      printf("skipped %llu damaged records (listed above)\n", (unsigned long long)rep.damaged);
  }
  return rep.damaged ? EXIT_PROBLEMS : 0;
}

static int cmd_compact(int argc, char **argv) {
  store_args a;
  int rc = parse_store_args(argc, argv, &a);
  if (rc) return rc;
  m3_store_options o;
  m3_store_options_init(&o);
  m3_store *s;
  if ((rc = m3_store_open(a.dir, &o, &s)) != 0) return fail(a.dir, rc);
  uint64_t reclaimed = 0;
  rc = m3_store_compact(s, &reclaimed);
  m3_store_close(s);
  if (rc) return fail(a.dir, rc);
  if (a.json)
    return print_json(json_pack("{s:s,s:I}", "store", a.dir, "reclaimed_bytes", (json_int_t)reclaimed));
  printf("compacted %s: %llu bytes reclaimed\n", a.dir, (unsigned long long)reclaimed);
  return 0;
}

static int cmd_get(int argc, char **argv) {
  store_args a;
  int rc = parse_store_args(argc, argv, &a);
  if (rc) return rc;
  if (!a.has_id) {
    fprintf(stderr, "m3 store get: needs --id N\n");
    return EXIT_FAILURE_;
  }
  m3_store *s;
  if ((rc = open_read_only(a.dir, &s)) != 0) return rc;
  m3_location loc;
  char *text = NULL, path[4096];
  size_t tlen = 0;
  if ((rc = m3_store_locate(s, a.id, &loc)) != 0 ||
      (rc = m3_store_get_text(s, a.id, &text, &tlen)) != 0) {
    m3_store_close(s);
    return fail("get", rc);
  }
  size_t cap = m3_store_fetch_cap(s);
  void *buf = m3_store_buf_alloc(s, cap);
  m3_fetch_item it = {.chunk_id = a.id, .buf = buf, .cap = cap};
  rc = m3_store_fetch(s, &it, 1);
  if (rc == 0) rc = it.status;
  m3_record r;
  memset(&r, 0, sizeof r);
  if (rc == 0) m3_record_parse(it.data, it.len, M3_PARSE_HEADER, &r);
  m3_store_segment_path(s, loc.segment, path, sizeof path);
  int out;
  if (a.json) {
    out = print_json(json_pack("{s:I,s:s,s:I,s:I,s:I,s:I,s:s,s:s}", "chunk_id", (json_int_t)a.id,
                               "segment", path, "offset", (json_int_t)loc.offset, "mem_bytes",
                               (json_int_t)loc.mem_len, "record_bytes", (json_int_t)loc.rec_len,
                               "chunk_len", (json_int_t)r.chunk_len, "status",
                               rc ? m3_err_name(rc) : "ok", "text", text));
  } else {
    printf("chunk_id     %llu\n", a.id);
    printf("segment      %s\n", path);
    printf("offset       %llu\n", (unsigned long long)loc.offset);
    printf("mem_bytes    %u\n", loc.mem_len);
    printf("record_bytes %u\n", loc.rec_len);
    printf("status       %s\n", rc ? m3_err_name(rc) : "ok");
    printf("text         %s\n", text);
    out = 0;
  }
  free(buf);
  free(text);
  m3_store_close(s);
  return rc ? EXIT_PROBLEMS : out;
}

static int cmd_store(int argc, char **argv) {
  static const struct {
    const char *name;
    int (*fn)(int, char **);
  } cmds[] = {{"info", cmd_info}, {"verify", cmd_verify}, {"repair", cmd_repair},
              {"compact", cmd_compact}, {"get", cmd_get}, {"split", m3__cmd_store_split},
              {"merge", m3__cmd_store_merge}, {"dump", m3__cmd_store_dump}};
  if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
    store_usage(NULL, argc < 2 ? stderr : stdout);
    return argc < 2 ? EXIT_FAILURE_ : 0;
  }
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
    if (!strcmp(argv[1], cmds[i].name)) return cmds[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "m3 store: unknown command '%s' (info, verify, repair, compact, get, split, merge, dump)\n", argv[1]);
  return EXIT_FAILURE_;
}

int main(int argc, char **argv) {
  if (m3_version_asked(argc, argv, "m3")) return 0;
  if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
    fputs(usage_text, argc < 2 ? stderr : stdout);
    return argc < 2 ? EXIT_FAILURE_ : 0;
  }
  if (!strcmp(argv[1], "store")) return cmd_store(argc - 1, argv + 1);
  static const struct {
    const char *name;
    int (*fn)(int, char **);
  } remote[] = {{"query", m3__cmd_query}, {"fetch", m3__cmd_fetch}, {"stats", m3__cmd_stats},
                {"delete", m3__cmd_delete}, {"put", m3__cmd_put}};
  for (size_t i = 0; i < sizeof remote / sizeof remote[0]; i++)
    if (!strcmp(argv[1], remote[i].name)) return remote[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "m3: unknown command '%s'; see m3 --help\n", argv[1]);
  return EXIT_FAILURE_;
}
