/*
 * m3-bench: measurements of m3store against the hardware and the tools a
 * user would otherwise pick. Every figure is a ratio against a baseline
 * measured in the same run, on the same data.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "m3/token.h"
#include "m3/error.h"
#include "m3/version.h"

static const char *usage_text =
    "usage: m3-bench <command> [options]\n"
    "\n"
    "  gen      --store DIR --count N [--shape memory3|LxHxTxD] [--codec-bytes 14]\n"
    "           [--batch 256] [--seed S] [--json]\n"
    "           write N synthetic memories (random codes, real records and catalog)\n"
    "           with chunk ids 0..N-1\n"
    "  rpc      --server HOST:PORT [--connections C] [--queries-per-call 32] [-k 5]\n"
    "           [--duration S | --calls N] [--rate R] [--store DIR] [--token-file F] [--json]\n"
    "           Retrieve calls against an m3-server, closed- or open-loop: latency,\n"
    "           throughput, wire overhead, raw disk time of the same memories, the\n"
    "           loopback link's own MB/s and the server's CPU per GB\n"
    "  peer     redis --server HOST:PORT --store DIR [--connections 2] [--ids-per-round 160]\n"
    "           [--duration 10] [--json]\n"
    "           the same rounds served by m3-server (Fetch) and by Redis (pipelined GETs)\n"
    "  storage  --store DIR [--ops N] [--batch 5] [--direct] [--warmup N] [--seed S] [--json]\n"
    "           store fetches of random batches vs raw io_uring reads of the same bytes\n"
    "  scale    --dir DIR [--sizes 10000,100000,1000000] [--big] [--emb-dim 256] [--plot DIR]\n"
    "           [--json]  bulk write, open, fetch vs raw reads, bytes per memory and trained\n"
    "           index search/recall against the number of memories\n"
    "  codec    --codec STR [--train N] [--test N] [--vectors FILE] [--json]\n"
    "           codec size, error and speed (see m3-bench codec --help)\n"
    "  encode   [--hidden 1024 --layers 8 --heads 16 --kv-heads 4 --head-dim 64 --batch 8\n"
    "           --seq 128] [--json]\n"
    "           encoder memory-layer forward + selection vs OpenBLAS sgemm\n"
    "  decode   --model DIR (--server HOST:PORT | --cluster MAP) --prompts FILE [--batch 8]\n"
    "           [--new-tokens 64] [--no-memory] [--trace FILE] [--json]\n"
    "           the reference worker's decode with retrieval every 64 tokens vs without\n"
    "\n"
    "Run `m3-bench <command> --help` for a command's options; `m3-bench --version` for\n"
    "the version, git commit and build options.\n";

double bench_quantile(const double *sorted, size_t n, double q) {
  if (n == 0) return 0;
  size_t i = (size_t)(q * (double)n);
  return sorted[i >= n ? n - 1 : i];
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

void bench_sort(double *v, size_t n) { qsort(v, n, sizeof *v, cmp_double); }

int bench_print_json(json_t *j) {
  char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
  json_decref(j);
  if (s) puts(s);
  free(s);
  return 0;
}

int bench_read_token(const char *cmd, const char *path, char *buf, size_t cap) {
  if (m3_token_resolve(path, buf, cap, NULL) != 0) {
    fprintf(stderr, "m3-bench %s: %s\n", cmd, m3_errmsg());
    return -1;
  }
  return 0;
}

int bench_fail(const char *what, int rc) {
  const char *msg = m3_errmsg();
  fprintf(stderr, "m3-bench: %s: %s%s%s\n", what, m3_strerror(rc), *msg ? ": " : "", msg);
  return 2;
}

int main(int argc, char **argv) {
  if (m3_version_asked(argc, argv, "m3-bench")) return 0;
  static const struct {
    const char *name;
    int (*fn)(int, char **);
  } cmds[] = {
      {"gen", bench_gen},
      {"storage", bench_storage},
      {"rpc", bench_rpc},
      {"scale", bench_scale},
      {"peer", bench_peer},
      {"codec", m3_bench_codec},
      {"encode", bench_encode},
      {"decode", bench_decode},
  };
  if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
    fputs(usage_text, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
    if (!strcmp(argv[1], cmds[i].name)) return cmds[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "m3-bench: unknown command '%s'; see m3-bench --help\n", argv[1]);
  return 2;
}
