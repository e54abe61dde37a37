/* Shared helpers of m3-bench subcommands. */
#ifndef M3_BENCH_H
#define M3_BENCH_H

#include <jansson.h>
#include <liburing.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "m3/store.h"

static inline uint64_t bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: fast, seedable, good enough for synthetic data and sampling. */
static inline uint64_t bench_rand(uint64_t *s) {
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1Dull;
}

/* The q-quantile (0..1) of n sorted values. */
double bench_quantile(const double *sorted, size_t n, double q);
void bench_sort(double *v, size_t n);

/* Print j (consumed) on stdout, indented. Returns 0. */
int bench_print_json(json_t *j);

/* The client token (m3/token.h: path when not NULL, else M3_TOKEN, else
 * M3_TOKEN_FILE; buf[0] = 0 when none) into buf (cap bytes). Returns 0, or
 * -1 after printing "m3-bench CMD: why". */
int bench_read_token(const char *cmd, const char *path, char *buf, size_t cap);

/* Report a failed m3 call and return exit code 2. */
int bench_fail(const char *what, int rc);

/* ---- the raw-read baseline (bench_store.c) -------------------------- */

/* Where each memory of a store lives, as m3_store_iterate lists them. */
typedef struct bench_chunk {
  uint64_t id;
  m3_location loc;
} bench_chunk;

typedef struct bench_chunks {
  bench_chunk *v; /* malloc'ed, in chunk id order; the caller frees v */
  size_t n, cap;
} bench_chunks;

/* m3_store_iterate callback appending to a bench_chunks (ud). */
int bench_add_chunk(void *ud, uint64_t id, const m3_location *loc);

/* Raw io_uring reads of records' byte ranges straight from the segment
 * files, written without any store code: the baseline store and server
 * figures are divided by. */
typedef struct bench_raw_reader {
  struct io_uring ring;
  int *fds;        /* by segment id */
  uint32_t *align; /* O_DIRECT alignment by segment id (1 when buffered) */
  uint32_t nfds;
} bench_raw_reader;

/* Open the segments cs's chunks live in (O_DIRECT when direct) and a ring
 * of depth entries. Returns 0, or -1 after printing why. */
int bench_raw_open(bench_raw_reader *r, m3_store *s, const bench_chunks *cs, int direct,
                   unsigned depth);

/* Read the memory part (header + positions + codes) of n <= depth chunks,
 * widened to the alignment, into bufs[i] (aligned, >= mem_len + 2 * align
 * bytes each) with one submission. Returns 0 or a negative errno. */
int bench_raw_batch(bench_raw_reader *r, const bench_chunk **batch, size_t n, void **bufs);
void bench_raw_close(bench_raw_reader *r);

/* ---- synthetic stores (bench_store.c) -------------------------------- */

typedef struct bench_gen_cfg {
  const char *dir;
  uint64_t count;        /* memories, chunk ids 0..count-1 */
  const char *shape;     /* "memory3" or LxHxTxD */
  unsigned code_bytes, batch, emb_dim;
  unsigned emb_clusters; /* 0: uniform embeddings */
  uint64_t seed;
  int use_put;           /* m3_store_put instead of bulk ingest */
  int quiet;             /* no progress on stderr */
} bench_gen_cfg;

/* Create and fill the store; *secs: wall time of the writes, *st: its
 * stats after. 0, or 2 after printing why. */
int bench_gen_write(const bench_gen_cfg *g, double *secs, m3_store_stats *st);

/* A query near the stored embedding of id (emb_dim floats into q). */
void bench_gen_query(const bench_gen_cfg *g, uint64_t id, uint64_t *rng, float *q);

/* Fetch of random batches vs raw reads of the same bytes, alternating op
 * by op (m3-bench storage). Times in microseconds. */
typedef struct bench_fetch_result {
  size_t records;
  uint64_t bytes_per_op;
  double raw_p50, raw_p99, store_p50, store_p99, raw_mean, store_mean;
  /* p99s over the clean_ops ops that neither leg was preempted in (no
   * involuntary context switch of the thread): on a shared machine a
   * preemption of milliseconds lands on one side and decides the plain
   * p99 ratio; the clean one compares reads with reads. */
  size_t clean_ops;
  double raw_p99_clean, store_p99_clean;
  double mem_bytes; /* one memory's bytes */
  char backend[16];
} bench_fetch_result;

/* 0, or 2 after printing why. */
int bench_fetch_compare(const char *dir, unsigned long ops, unsigned long warmup,
                        unsigned long batch, int direct, uint64_t seed, bench_fetch_result *r);

int bench_scale(int argc, char **argv);

/* ---- the link and the server process (bench_link.c) ------------------ */

/* MB/s that conns plain TCP streams carry between two endpoints on host (an
 * IPv4 address; anything else: 127.0.0.1), each written write_bytes at a
 * time, over seconds. Returns 0, or -1 after printing why. */
int bench_loopback(const char *host, unsigned conns, size_t write_bytes, double seconds,
                   double *mb_per_s);

/* The pid of the process on this machine listening on TCP port; -1: none
 * found (not local, or /proc not readable). */
long bench_proc_find_listener(unsigned port);

/* User and system CPU seconds process pid has used. Returns 0 or -1. */
int bench_proc_cpu(long pid, double *user_s, double *sys_s);

int bench_gen(int argc, char **argv);
int bench_rpc(int argc, char **argv);
int bench_peer(int argc, char **argv);
int bench_storage(int argc, char **argv);
int m3_bench_codec(int argc, char **argv);
int bench_encode(int argc, char **argv);
int bench_decode(int argc, char **argv);

#endif /* M3_BENCH_H */
