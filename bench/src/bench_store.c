/*
 * m3-bench gen and m3-bench storage.
 *
 * storage answers: how much does the store add to reading a retrieval's
 * memories from disk? For the same random batches of chunk ids it times (a)
 * raw io_uring reads of exactly the byte ranges the records occupy (same
 * alignment, same O_DIRECT setting, one submission per batch) and (b)
 * m3_store_fetch of those ids (catalog lookup, batched read, checksum of
 * every byte). The two alternate op by op, so drift in the machine hits both.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <liburing.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"
#include "m3/internal/cli.h"
#include "m3/error.h"
#include "m3/store.h"

#define SYNTHETIC_FP 0x73796e7468657469ull /* "synthetic" */

/* ---- gen ------------------------------------------------------------ */

/* One synthetic embedding: uniform directions, or with clusters, a center
 * (from the seed and id % clusters) plus noise of half its length: the
 * cluster structure real retrieval embeddings have. */
static void gen_embedding(const bench_gen_cfg *g, uint64_t id, uint64_t *r, float *e) {
  double norm = 0;
  uint64_t cr = g->seed * 0x51ED27ull + (g->emb_clusters ? id % g->emb_clusters : 0) + 7;
  for (unsigned d = 0; d < g->emb_dim; d++) {
    /* Sum of uniforms: roughly Gaussian, so directions are uniform enough. */
    double v = 0, c = 0;
    for (int k = 0; k < 4; k++) v += (double)(bench_rand(r) >> 11) / 9007199254740992.0 - 0.5;
    if (g->emb_clusters) {
      for (int k = 0; k < 4; k++) c += (double)(bench_rand(&cr) >> 11) / 9007199254740992.0 - 0.5;
      v = c + 0.5 * v;
    }
    e[d] = (float)v;
    norm += v * v;
  }
  for (unsigned d = 0; d < g->emb_dim; d++) e[d] = (float)(e[d] / sqrt(norm > 0 ? norm : 1));
}

void bench_gen_query(const bench_gen_cfg *g, uint64_t id, uint64_t *r, float *q) {
  uint64_t rr = g->seed * 0x9E3779B97F4A7C15ull ^ (id + 1);
  gen_embedding(g, id, &rr, q);
  for (unsigned d = 0; d < g->emb_dim; d++)
    q[d] += (float)(0.02 * ((double)(bench_rand(r) >> 11) / 9007199254740992.0 - 0.5));
}

int bench_gen_write(const bench_gen_cfg *g, double *secs, m3_store_stats *st) {
  m3_store_options o;
  m3_store_options_init(&o);
  o.create = 1;
  int rc = m3_spec_parse(g->shape, &o.layout.spec);
  if (rc) return bench_fail("--shape", rc);
  o.layout.codec_kind = M3_CODEC_SYNTHETIC;
  o.layout.code_bytes = (uint16_t)g->code_bytes;
  o.layout.codec_fp = SYNTHETIC_FP;
  o.layout.emb_dim = (uint16_t)g->emb_dim;
  m3_store *s;
  if ((rc = m3_store_open(g->dir, &o, &s)) != 0) return bench_fail(g->dir, rc);
  m3_store_bulk *bulk = NULL;
  if (!g->use_put && (rc = m3_store_bulk_begin(s, NULL, &bulk)) != 0) {
    m3_store_close(s);
    return bench_fail("bulk", rc);
  }
  size_t batch = g->batch, emb_dim = g->emb_dim;
  size_t npos = m3_spec_positions(&o.layout.spec);
  size_t ncode = m3_layout_codes_bytes(&o.layout);
  uint16_t *pos = malloc(batch * npos * sizeof *pos);
  uint8_t *codes = malloc(batch * ncode);
  char (*text)[48] = malloc(batch * sizeof *text);
  m3_record_in *items = malloc(batch * sizeof *items);
  float *emb = malloc(batch * (emb_dim ? emb_dim : 1) * sizeof *emb);
  if (!pos || !codes || !text || !items || !emb) {
    fprintf(stderr, "m3-bench gen: out of memory\n");
    rc = 2;
    goto out;
  }
  uint64_t t0 = bench_now_ns();
  int tty = !g->quiet && isatty(2);
  for (uint64_t base = 0; base < g->count; base += batch) {
    size_t n = g->count - base < batch ? (size_t)(g->count - base) : batch;
    for (size_t i = 0; i < n; i++) {
      uint64_t id = base + i, r = g->seed * 0x9E3779B97F4A7C15ull ^ (id + 1);
      float *e = emb + i * emb_dim;
      if (emb_dim) gen_embedding(g, id, &r, e);
      uint16_t *p = pos + i * npos;
      /* 8 sorted distinct positions per head inside a 128-token chunk */
      for (size_t h = 0; h < npos; h += o.layout.spec.n_tokens)
        for (size_t t = 0; t < o.layout.spec.n_tokens && h + t < npos; t++)
          p[h + t] = (uint16_t)(1 + t * 15 + bench_rand(&r) % 15);
      uint8_t *cb = codes + i * ncode;
      for (size_t k = 0; k < ncode; k += 8) {
        uint64_t v = bench_rand(&r);
        memcpy(cb + k, &v, ncode - k < 8 ? ncode - k : 8);
      }
      int tl = snprintf(text[i], sizeof text[i], "synthetic memory %llu", (unsigned long long)id);
      items[i] = (m3_record_in){.chunk_id = id, .chunk_len = 128, .positions = p, .codes = cb,
                                .text = text[i], .text_len = (size_t)tl,
                                .embedding = emb_dim ? e : NULL};
    }
    rc = bulk ? m3_store_bulk_add(bulk, items, n) : m3_store_put(s, items, n);
    if (rc) {
      rc = bench_fail(bulk ? "bulk add" : "put", rc);
      goto out;
    }
    if (tty) fprintf(stderr, "\r%llu/%llu memories", (unsigned long long)(base + n),
                     (unsigned long long)g->count);
  }
  rc = bulk ? m3_store_bulk_finish(bulk) : 0;
  bulk = NULL;
  if (rc) {
    rc = bench_fail("bulk finish", rc);
    goto out;
  }
  *secs = (double)(bench_now_ns() - t0) / 1e9;
  if (tty) fputc('\n', stderr);
  if ((rc = m3_store_stats_get(s, st)) != 0) rc = bench_fail("stats", rc);
out:
  m3_store_bulk_abort(bulk);
  m3_store_close(s);
  free(pos);
  free(codes);
  free(text);
  free(items);
  free(emb);
  return rc;
}

int bench_gen(int argc, char **argv) {
  static const struct option opts[] = {
      {"store", required_argument, NULL, 's'}, {"count", required_argument, NULL, 'n'},
      {"shape", required_argument, NULL, 'S'}, {"codec-bytes", required_argument, NULL, 'c'},
      {"batch", required_argument, NULL, 'b'}, {"seed", required_argument, NULL, 'r'},
      {"emb-dim", required_argument, NULL, 'e'}, {"json", no_argument, NULL, 'j'},
      {"put", no_argument, NULL, 'p'},         {"emb-clusters", required_argument, NULL, 'C'},
      {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0}};
  bench_gen_cfg g = {NULL, 0, "memory3", 14, 256, 0, 0, 1, 0, 0};
  int json = 0, c;
  if (m3_cli_exact_long(argc, argv, "h", opts, "m3-bench")) return 2;
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 's': g.dir = optarg; break;
    case 'p': g.use_put = 1; break;
    case 'n': g.count = strtoull(optarg, NULL, 10); break;
    case 'S': g.shape = optarg; break;
    case 'c': g.code_bytes = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'b': g.batch = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'r': g.seed = strtoull(optarg, NULL, 10); break;
    case 'e': g.emb_dim = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'C': g.emb_clusters = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'j': json = 1; break;
    case 'h':
      puts("usage: m3-bench gen --store DIR --count N [--shape memory3|LxHxTxD]\n"
           "                    [--codec-bytes 14] [--emb-dim 0] [--emb-clusters 0] [--batch 256]\n"
           "                    [--seed S] [--put] [--json]\n"
           "Writes N memories with random codes and positions (chunk ids 0..N-1) by bulk\n"
           "ingest (m3_store_bulk_*: real records, segments, catalog SSTs), or with --put\n"
           "through m3_store_put, one group commit per batch. --emb-dim D adds a random\n"
           "unit retrieval embedding of D dims to each; --emb-clusters C draws them around\n"
           "C centers (noise half the center's length) instead of uniformly.");
      return 0;
    default: return 2;
    }
  }
  if (g.dir == NULL || g.count == 0 || g.code_bytes == 0 || g.code_bytes > 65535 || g.batch == 0 ||
      g.emb_dim > 65535) {
    fprintf(stderr, "m3-bench gen: needs --store DIR and --count N > 0 (see --help)\n");
    return 2;
  }
  g.quiet = json;
  double secs = 0;
  m3_store_stats st;
  int rc = bench_gen_write(&g, &secs, &st);
  if (rc) return rc;
  double bytes = (double)g.count * (double)(st.records ? st.payload_bytes / st.records : 0);
  if (json)
    return bench_print_json(json_pack(
        "{s:s,s:s,s:I,s:I,s:I,s:f,s:f,s:f,s:f}", "store", g.dir, "path",
        g.use_put ? "put" : "bulk", "memories", (json_int_t)g.count, "records",
        (json_int_t)st.records, "segment_bytes", (json_int_t)st.segment_bytes, "seconds", secs,
        "records_per_s", (double)g.count / secs, "mb_per_s", bytes / 1e6 / secs, "overhead",
        st.overhead));
  printf("wrote %llu memories to %s in %.2f s (%s, %.0f records/s, %.1f MB/s of positions and codes); "
         "store holds %llu, overhead %.2f%%\n",
         (unsigned long long)g.count, g.dir, secs, g.use_put ? "put" : "bulk ingest",
         (double)g.count / secs, bytes / 1e6 / secs, (unsigned long long)st.records,
         st.overhead * 100);
  return 0;
}

/* ---- storage -------------------------------------------------------- */

int bench_add_chunk(void *ud, uint64_t id, const m3_location *loc) {
  bench_chunks *c = ud;
  if (c->n == c->cap) {
    c->cap = c->cap ? c->cap * 2 : 4096;
    bench_chunk *nv = realloc(c->v, c->cap * sizeof *nv);
    if (nv == NULL) return M3_ENOMEM;
    c->v = nv;
  }
  c->v[c->n++] = (bench_chunk){id, *loc};
  return 0;
}

/* The baseline: raw io_uring reads, written without any store code
 * (bench_raw_reader in bench.h). */
static uint32_t dio_align(int fd) {
#ifdef STATX_DIOALIGN
  struct statx stx;
  if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 && (stx.stx_mask & STATX_DIOALIGN) &&
      stx.stx_dio_offset_align)
    return stx.stx_dio_offset_align;
#endif
  return 4096;
}

int bench_raw_open(bench_raw_reader *r, m3_store *s, const bench_chunks *cs, int direct,
                   unsigned depth) {
  uint32_t max = 0;
  for (size_t i = 0; i < cs->n; i++)
    if (cs->v[i].loc.segment > max) max = cs->v[i].loc.segment;
  r->nfds = max + 1;
  r->fds = malloc(r->nfds * sizeof *r->fds);
  r->align = malloc(r->nfds * sizeof *r->align);
  for (uint32_t i = 0; i < r->nfds; i++) r->fds[i] = -1;
  for (size_t i = 0; i < cs->n; i++) {
    uint32_t seg = cs->v[i].loc.segment;
    if (r->fds[seg] >= 0) continue;
    char path[4096];
    m3_store_segment_path(s, seg, path, sizeof path);
    r->fds[seg] = open(path, O_RDONLY | (direct ? O_DIRECT : 0));
    if (r->fds[seg] < 0) {
      fprintf(stderr, "m3-bench: open %s: %s\n", path, strerror(errno));
      return -1;
    }
    r->align[seg] = direct ? dio_align(r->fds[seg]) : 1;
  }
  int rc = io_uring_queue_init(depth, &r->ring, 0);
  if (rc < 0) {
    fprintf(stderr, "m3-bench: io_uring_queue_init: %s\n", strerror(-rc));
    return -1;
  }
  return 0;
}

int bench_raw_batch(bench_raw_reader *r, const bench_chunk **batch, size_t n, void **bufs) {
  for (size_t i = 0; i < n; i++) {
    const m3_location *l = &batch[i]->loc;
    uint32_t a = r->align[l->segment];
    uint64_t start = l->offset / a * a, end = (l->offset + l->mem_len + a - 1) / a * a;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    io_uring_prep_read(sqe, r->fds[l->segment], bufs[i], (unsigned)(end - start), start);
  }
  int rc = io_uring_submit_and_wait(&r->ring, (unsigned)n);
  if (rc < 0) return rc;
  struct io_uring_cqe *cqe;
  for (size_t i = 0; i < n; i++) {
    if ((rc = io_uring_wait_cqe(&r->ring, &cqe)) < 0) return rc;
    int res = cqe->res;
    io_uring_cqe_seen(&r->ring, cqe);
    if (res <= 0) return res < 0 ? res : -EIO;
  }
  return 0;
}

void bench_raw_close(bench_raw_reader *r) {
  for (uint32_t i = 0; i < r->nfds; i++)
    if (r->fds[i] >= 0) close(r->fds[i]);
  free(r->fds);
  free(r->align);
  io_uring_queue_exit(&r->ring);
}

int bench_fetch_compare(const char *dir, unsigned long ops, unsigned long warmup,
                        unsigned long batch, int direct, uint64_t seed, bench_fetch_result *res) {
  m3_store_options o;
  m3_store_options_init(&o);
  o.read_only = 1;
  o.direct = direct;
  m3_store *s;
  int rc = m3_store_open(dir, &o, &s);
  if (rc) return bench_fail(dir, rc);
  bench_chunks cs = {0};
  if ((rc = m3_store_iterate(s, bench_add_chunk, &cs)) != 0) return bench_fail("iterate", rc);
  if (cs.n == 0) {
    fprintf(stderr, "m3-bench storage: %s holds no memories (m3-bench gen writes some)\n", dir);
    return 2;
  }
  bench_raw_reader raw;
  if (bench_raw_open(&raw, s, &cs, direct, 64) != 0) return 2;

  size_t cap = m3_store_fetch_cap(s);
  void *bufs[256];
  m3_fetch_item items[256];
  const bench_chunk *pick[256];
  for (size_t i = 0; i < batch; i++) bufs[i] = m3_store_buf_alloc(s, cap);
  double *raw_us = malloc(ops * sizeof *raw_us), *store_us = malloc(ops * sizeof *store_us);
  double *raw_clean = malloc(ops * sizeof *raw_clean), *store_clean = malloc(ops * sizeof *store_clean);
  uint64_t rng = seed, bytes_per_op = 0;
  double raw_total = 0, store_total = 0;
  size_t nclean = 0;

  for (unsigned long op = 0; op < warmup + ops; op++) {
    uint64_t op_bytes = 0;
    for (size_t i = 0; i < batch; i++) {
      pick[i] = &cs.v[bench_rand(&rng) % cs.n];
      items[i] = (m3_fetch_item){.chunk_id = pick[i]->id, .buf = bufs[i], .cap = cap};
      op_bytes += pick[i]->loc.mem_len;
    }
    double t_raw = 0, t_store = 0;
    /* Involuntary context switches of this thread across both legs: an op
     * the scheduler preempted (a shared machine) measures the queue for a
     * CPU, not the read, and lands on one side only. */
    struct rusage ru0, ru1;
    getrusage(RUSAGE_THREAD, &ru0);
    for (int leg = 0; leg < 2; leg++) {
      /* Alternate which side goes first so neither always reads a warmer device. */
      int do_raw = (leg == 0) == (op % 2 == 0);
      uint64_t t0 = bench_now_ns();
      if (do_raw) {
        if ((rc = bench_raw_batch(&raw, pick, batch, bufs)) < 0) {
          fprintf(stderr, "m3-bench storage: raw read: %s\n", strerror(-rc));
          return 2;
        }
        t_raw = (double)(bench_now_ns() - t0) / 1e3;
      } else {
        if ((rc = m3_store_fetch(s, items, batch)) != 0) return bench_fail("fetch", rc);
        t_store = (double)(bench_now_ns() - t0) / 1e3;
        for (size_t i = 0; i < batch; i++)
          if (items[i].status != 0) return bench_fail("fetch item", items[i].status);
      }
    }
    getrusage(RUSAGE_THREAD, &ru1);
    if (op >= warmup) {
      raw_us[op - warmup] = t_raw;
      store_us[op - warmup] = t_store;
      if (ru1.ru_nivcsw == ru0.ru_nivcsw) {
        raw_clean[nclean] = t_raw;
        store_clean[nclean] = t_store;
        nclean++;
      }
      raw_total += t_raw;
      store_total += t_store;
      bytes_per_op = op_bytes;
    }
  }
  snprintf(res->backend, sizeof res->backend, "%s", m3_store_io_backend(s));
  bench_sort(raw_us, ops);
  bench_sort(store_us, ops);
  res->records = cs.n;
  res->bytes_per_op = bytes_per_op;
  res->raw_p50 = bench_quantile(raw_us, ops, 0.5);
  res->raw_p99 = bench_quantile(raw_us, ops, 0.99);
  res->store_p50 = bench_quantile(store_us, ops, 0.5);
  res->store_p99 = bench_quantile(store_us, ops, 0.99);
  bench_sort(raw_clean, nclean);
  bench_sort(store_clean, nclean);
  res->clean_ops = nclean;
  res->raw_p99_clean = nclean ? bench_quantile(raw_clean, nclean, 0.99) : 0;
  res->store_p99_clean = nclean ? bench_quantile(store_clean, nclean, 0.99) : 0;
  res->raw_mean = raw_total / (double)ops;
  res->store_mean = store_total / (double)ops;
  res->mem_bytes = (double)m3_record_mem_size(m3_store_layout(s));
  bench_raw_close(&raw);
  m3_store_close(s);
  for (size_t i = 0; i < batch; i++) free(bufs[i]);
  free(raw_us);
  free(store_us);
  free(raw_clean);
  free(store_clean);
  free(cs.v);
  return 0;
}

int bench_storage(int argc, char **argv) {
  static const struct option opts[] = {
      {"store", required_argument, NULL, 's'}, {"ops", required_argument, NULL, 'n'},
      {"batch", required_argument, NULL, 'b'}, {"direct", no_argument, NULL, 'd'},
      {"warmup", required_argument, NULL, 'w'}, {"seed", required_argument, NULL, 'r'},
      {"json", no_argument, NULL, 'j'},         {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  const char *dir = NULL;
  unsigned long ops = 2000, warmup = 100, batch = 5;
  unsigned long long seed = 42;
  int direct = 0, json = 0, c;
  if (m3_cli_exact_long(argc, argv, "h", opts, "m3-bench")) return 2;
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 's': dir = optarg; break;
    case 'n': ops = strtoul(optarg, NULL, 10); break;
    case 'b': batch = strtoul(optarg, NULL, 10); break;
    case 'd': direct = 1; break;
    case 'w': warmup = strtoul(optarg, NULL, 10); break;
    case 'r': seed = strtoull(optarg, NULL, 10); break;
    case 'j': json = 1; break;
    case 'h':
      puts("usage: m3-bench storage --store DIR [--ops 2000] [--batch 5] [--direct]\n"
           "                        [--warmup 100] [--seed 42] [--json]\n"
           "Times m3_store_fetch of random batches of chunk ids against raw io_uring reads\n"
           "of the same byte ranges, alternating op by op. --direct uses O_DIRECT for both\n"
           "(disk, not page cache). $M3_IO=pread switches the store's backend.");
      return 0;
    default: return 2;
    }
  }
  if (dir == NULL || ops == 0 || batch == 0 || batch > 256) {
    fprintf(stderr, "m3-bench storage: needs --store DIR, --ops > 0, --batch 1..256\n");
    return 2;
  }
  bench_fetch_result r;
  int rc = bench_fetch_compare(dir, ops, warmup, batch, direct, seed, &r);
  if (rc) return rc;
  double rp50 = r.raw_p50, rp99 = r.raw_p99, sp50 = r.store_p50, sp99 = r.store_p99;
  double mem = r.mem_bytes, raw_total = r.raw_mean * (double)ops, store_total = r.store_mean * (double)ops;
  const char *backend = r.backend;
  json_t *j = json_pack(
      "{s:s,s:I,s:I,s:I,s:f,s:s,s:b,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f}", "store", dir,
      "records", (json_int_t)r.records, "ops", (json_int_t)ops, "batch", (json_int_t)batch,
      "bytes_per_op", (double)r.bytes_per_op, "io_backend", backend, "direct", direct,
      "raw_p50_us", rp50, "raw_p99_us", rp99, "store_p50_us", sp50, "store_p99_us", sp99,
      "ratio_p50", sp50 / rp50, "ratio_p99", sp99 / rp99, "raw_mean_us", r.raw_mean,
      "store_mean_us", r.store_mean, "raw_mb_per_s",
      mem * (double)batch * (double)ops / raw_total, "store_mb_per_s",
      mem * (double)batch * (double)ops / store_total);
  json_object_set_new(j, "clean_ops", json_integer((json_int_t)r.clean_ops));
  json_object_set_new(j, "raw_p99_clean_us", json_real(r.raw_p99_clean));
  json_object_set_new(j, "store_p99_clean_us", json_real(r.store_p99_clean));
  json_object_set_new(j, "ratio_p99_clean",
                      json_real(r.raw_p99_clean > 0 ? r.store_p99_clean / r.raw_p99_clean : 0));
  if (json) return bench_print_json(j);
  printf("%lu ops of %lu memories (%s%s), %zu records\n", ops, batch, backend,
         direct ? ", O_DIRECT" : "", r.records);
  printf("           p50 us    p99 us\n");
  printf("raw     %9.1f %9.1f\n", rp50, rp99);
  printf("store   %9.1f %9.1f\n", sp50, sp99);
  printf("ratio   %9.3f %9.3f\n", sp50 / rp50, sp99 / rp99);
  printf("p99 over the %zu ops not preempted: raw %.1f, store %.1f, ratio %.3f\n", r.clean_ops,
         r.raw_p99_clean, r.store_p99_clean,
         r.raw_p99_clean > 0 ? r.store_p99_clean / r.raw_p99_clean : 0);
  json_decref(j);
  return 0;
}
