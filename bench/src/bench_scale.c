/*
 * m3-bench scale: how the store grows with its number of memories N.
 *
 * For each N (10^4, 10^5, 10^6 by default; --big adds 10^7) it builds a
 * fresh store by bulk ingest, then measures on it: bulk write records/s,
 * store open time (with the location table snapshot the close wrote, and
 * rebuilt from the catalog without it), fetch of 5 random memories p50/p99 against raw io_uring
 * reads of the same bytes (page cache, then O_DIRECT; m3-bench storage's
 * alternating loop), RAM and disk bytes per memory, and with embeddings,
 * search of a 32-query batch: an exact index ("IDMap,Flat") against a
 * trained IVF ("IVF<sqrt N>,Flat", trained on a sample of the store), the
 * smallest nprobe with recall@5 >= 0.95 against exact, and the speedup at
 * that nprobe. Every ratio's baseline is measured in the same run, and the
 * load average (/proc/loadavg) is printed beside each N.
 *
 * Shape: 2x2x8x16 with 4-byte synthetic codes (384-byte memories, records
 * of 512 bytes padded) and --emb-dim 256 clustered embeddings (1024
 * centers): small for the catalog, the paper's retrieval dims order.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"
#include "m3/internal/cli.h"
#include "m3/error.h"
#include "m3/index.h"
#include "m3/store.h"

#define MAX_SIZES 8
#define NQ 32          /* queries per timed batch */
#define NQ_RECALL 64   /* queries recall is measured on */
#define K 5

typedef struct scale_row {
  uint64_t n;
  double load;            /* 1-minute load average when the row started */
  double end_load;        /* ... and when it ended */
  double write_rps, open_s, rebuild_s; /* open with the table's snapshot, and without */
  bench_fetch_result pc, dio;
  double ram_per_mem, disk_per_mem;
  int has_index;
  double exact_p50, exact_p99, ivf_p50, ivf_p99, recall, speedup, train_s;
  unsigned nlist, nprobe;
} scale_row;

static double loadavg(void) {
  double l = 0;
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf", &l) != 1) l = 0;
    fclose(f);
  }
  return l;
}

static void rm_store(const char *dir) {
  char cmd[4400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "m3-bench scale: could not remove %s\n", dir);
}

/* Time reps searches of the NQ-query batch; p50/p99 in microseconds. */
static int time_search(m3_index *ix, const float *q, const char *params, int reps, double *p50,
                       double *p99) {
  uint64_t ids[NQ * K];
  double *t = malloc((size_t)reps * sizeof *t);
  int rc = 0;
  for (int r = 0; r < reps && rc == 0; r++) {
    uint64_t t0 = bench_now_ns();
    rc = m3_index_search_params(ix, q, NQ, K, ids, NULL, params);
    t[r] = (double)(bench_now_ns() - t0) / 1e3;
  }
  if (rc == 0) {
    bench_sort(t, (size_t)reps);
    *p50 = bench_quantile(t, (size_t)reps, 0.5);
    *p99 = bench_quantile(t, (size_t)reps, 0.99);
  }
  free(t);
  return rc;
}

static double recall_of(const uint64_t *got, const uint64_t *want, size_t nq) {
  size_t hit = 0;
  for (size_t i = 0; i < nq; i++)
    for (int a = 0; a < K; a++)
      for (int b = 0; b < K; b++) hit += got[i * K + a] == want[i * K + b];
  return (double)hit / (double)(nq * K);
}

static int index_figures(const char *dir, const bench_gen_cfg *g, scale_row *row) {
  m3_store_options so;
  m3_store_options_init(&so);
  so.read_only = 1;
  m3_store *s;
  int rc = m3_store_open(dir, &so, &s);
  if (rc) return bench_fail(dir, rc);
  float *q = malloc((size_t)NQ_RECALL * g->emb_dim * sizeof *q);
  uint64_t *want = malloc((size_t)NQ_RECALL * K * sizeof *want);
  uint64_t *got = malloc((size_t)NQ_RECALL * K * sizeof *got);
  uint64_t rng = 99;
  for (int i = 0; i < NQ_RECALL; i++)
    bench_gen_query(g, bench_rand(&rng) % g->count, &rng, q + (size_t)i * g->emb_dim);

  m3_index_options io;
  m3_index_options_init(&io);
  io.read_only = 1;
  io.force_rebuild = 1;
  m3_index *exact = NULL, *ivf = NULL;
  if ((rc = m3_index_open(s, &io, &exact)) != 0) {
    rc = bench_fail("exact index", rc);
    goto out;
  }
  int reps = row->n >= 1000000 ? 3 : 10; /* exact search is the slow one */
  if ((rc = time_search(exact, q, NULL, reps, &row->exact_p50, &row->exact_p99)) != 0) goto fail;
  if ((rc = m3_index_search(exact, q, NQ_RECALL, K, want, NULL)) != 0) goto fail;
  m3_index_close(exact);
  exact = NULL;

  unsigned nlist = (unsigned)sqrt((double)row->n);
  char factory[64];
  snprintf(factory, sizeof factory, "IVF%u,Flat", nlist);
  io.factory = factory;
  io.train_sample = (size_t)nlist * 40; /* FAISS wants >= 39 per centroid */
  uint64_t t0 = bench_now_ns();
  if ((rc = m3_index_open(s, &io, &ivf)) != 0) {
    rc = bench_fail(factory, rc);
    goto out;
  }
  row->train_s = (double)(bench_now_ns() - t0) / 1e9;
  row->nlist = nlist;
  for (unsigned np = 1;; np *= 2) {
    if (np > nlist) np = nlist;
    char params[32];
    snprintf(params, sizeof params, "nprobe=%u", np);
    if ((rc = m3_index_search_params(ivf, q, NQ_RECALL, K, got, NULL, params)) != 0) goto fail;
    row->recall = recall_of(got, want, NQ_RECALL);
    row->nprobe = np;
    if (row->recall >= 0.95 || np == nlist) {
      if ((rc = time_search(ivf, q, params, 20, &row->ivf_p50, &row->ivf_p99)) != 0) goto fail;
      break;
    }
  }
  row->speedup = row->exact_p50 / row->ivf_p50;
  row->has_index = 1;
  goto out;
fail:
  rc = bench_fail("search", rc);
out:
  m3_index_close(exact);
  m3_index_close(ivf);
  m3_store_close(s);
  free(q);
  free(want);
  free(got);
  return rc;
}

static int measure(const char *root, uint64_t n, unsigned emb_dim, unsigned long ops, int keep,
                   scale_row *row) {
  char dir[4200];
  snprintf(dir, sizeof dir, "%s/store-%llu", root, (unsigned long long)n);
  rm_store(dir);
  memset(row, 0, sizeof *row);
  row->n = n;
  row->load = loadavg();
  bench_gen_cfg g = {dir, n, "2x2x8x16", 4, 1024, emb_dim, emb_dim ? 1024 : 0, 1, 0, 0};
  double secs = 0;
  m3_store_stats st;
  int rc = bench_gen_write(&g, &secs, &st);
  if (rc) return rc;
  row->write_rps = (double)n / secs;

  /* Open, with the location table built from the catalog. */
  m3_store_options o;
  m3_store_options_init(&o);
  m3_store *s;
  uint64_t t0 = bench_now_ns();
  if ((rc = m3_store_open(dir, &o, &s)) != 0) return bench_fail(dir, rc);
  row->open_s = (double)(bench_now_ns() - t0) / 1e9;
  if ((rc = m3_store_stats_get(s, &st)) != 0) {
    m3_store_close(s);
    return bench_fail("stats", rc);
  }
  row->ram_per_mem = (double)m3_store_ram_bytes(s) / (double)n;
  row->disk_per_mem = (double)(st.segment_bytes + st.catalog_bytes) / (double)n;
  m3_store_close(s);
  /* Again without the snapshot: the table built from the catalog's 'C'
   * entries (what an open after a crash does). The close writes it back. */
  char snap[4300];
  snprintf(snap, sizeof snap, "%s/loctab.snap", dir);
  unlink(snap);
  t0 = bench_now_ns();
  if ((rc = m3_store_open(dir, &o, &s)) != 0) return bench_fail(dir, rc);
  row->rebuild_s = (double)(bench_now_ns() - t0) / 1e9;
  m3_store_close(s);

  if ((rc = bench_fetch_compare(dir, ops, 200, 5, 0, 42, &row->pc)) != 0) return rc;
  if ((rc = bench_fetch_compare(dir, ops, 200, 5, 1, 43, &row->dio)) != 0) return rc;
  if (emb_dim && (rc = index_figures(dir, &g, row)) != 0) return rc;
  row->end_load = loadavg();
  if (!keep) rm_store(dir);
  return 0;
}

/* The p99 ratio over the ops that were not preempted (bench.h). */
static double clean_r99(const bench_fetch_result *f) {
  return f->raw_p99_clean > 0 ? f->store_p99_clean / f->raw_p99_clean : 0;
}

static void print_row(const scale_row *r) {
  printf("%9llu %5.1f %9.0f %7.2f %7.2f | %6.1f %6.1f %5.2f %5.2f %5.2f | %6.1f %6.1f %5.2f %5.2f %5.2f |"
         " %6.1f %6.1f",
         (unsigned long long)r->n, r->load, r->write_rps, r->open_s, r->rebuild_s, r->pc.store_p50,
         r->pc.store_p99, r->pc.store_p50 / r->pc.raw_p50, r->pc.store_p99 / r->pc.raw_p99,
         clean_r99(&r->pc), r->dio.store_p50, r->dio.store_p99, r->dio.store_p50 / r->dio.raw_p50,
         r->dio.store_p99 / r->dio.raw_p99, clean_r99(&r->dio), r->ram_per_mem, r->disk_per_mem);
  if (r->has_index)
    printf(" | %8.0f %8.0f %8.0f %3u/%-4u %5.3f %6.1f", r->exact_p50, r->ivf_p50, r->ivf_p99, r->nprobe,
           r->nlist, r->recall, r->speedup);
  printf(" | load at end %.1f\n", r->end_load);
  fflush(stdout);
}

static json_t *row_json(const scale_row *r) {
  json_t *j = json_pack(
      "{s:I,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f}", "memories",
      (json_int_t)r->n, "load_avg", r->load, "bulk_records_per_s", r->write_rps, "open_s",
      r->open_s, "fetch_p50_us", r->pc.store_p50, "fetch_p99_us", r->pc.store_p99, "raw_p50_us",
      r->pc.raw_p50, "raw_p99_us", r->pc.raw_p99, "ratio_p50", r->pc.store_p50 / r->pc.raw_p50,
      "ratio_p99", r->pc.store_p99 / r->pc.raw_p99, "direct_fetch_p50_us", r->dio.store_p50,
      "direct_fetch_p99_us", r->dio.store_p99, "direct_raw_p50_us", r->dio.raw_p50,
      "direct_raw_p99_us", r->dio.raw_p99, "direct_ratio_p50", r->dio.store_p50 / r->dio.raw_p50,
      "direct_ratio_p99", r->dio.store_p99 / r->dio.raw_p99, "ram_bytes_per_memory",
      r->ram_per_mem, "disk_bytes_per_memory", r->disk_per_mem);
  json_object_set_new(j, "end_load_avg", json_real(r->end_load));
  json_object_set_new(j, "open_rebuild_s", json_real(r->rebuild_s));
  json_object_set_new(j, "clean_ops", json_integer((json_int_t)r->pc.clean_ops));
  json_object_set_new(j, "ratio_p99_clean", json_real(clean_r99(&r->pc)));
  json_object_set_new(j, "direct_clean_ops", json_integer((json_int_t)r->dio.clean_ops));
  json_object_set_new(j, "direct_ratio_p99_clean", json_real(clean_r99(&r->dio)));
  if (r->has_index) {
    json_t *ix = json_pack("{s:s,s:I,s:I,s:f,s:f,s:f,s:f,s:f,s:f,s:f}", "exact", "IDMap,Flat",
                           "nlist", (json_int_t)r->nlist, "nprobe", (json_int_t)r->nprobe,
                           "recall_at_5", r->recall, "exact_p50_us", r->exact_p50, "exact_p99_us",
                           r->exact_p99, "ivf_p50_us", r->ivf_p50, "ivf_p99_us", r->ivf_p99,
                           "speedup_p50", r->speedup, "build_s", r->train_s);
    json_object_set_new(j, "search_32", ix);
  }
  return j;
}

/* One PNG per figure against N (log x), through gnuplot when present. */
static void plot(const char *dir, const scale_row *rows, int nrows) {
  char dat[4200], gp[4200];
  snprintf(dat, sizeof dat, "%s/scale.dat", dir);
  snprintf(gp, sizeof gp, "%s/scale.gp", dir);
  FILE *f = fopen(dat, "w");
  if (!f) return;
  fprintf(f, "# N write_rps open_s pc_p50 pc_p99 pc_r50 pc_r99 dio_p50 dio_p99 dio_r50 dio_r99 "
             "ram disk exact_p50 ivf_p50 ivf_p99 recall speedup load pc_r99_clean dio_r99_clean\n");
  for (int i = 0; i < nrows; i++) {
    const scale_row *r = &rows[i];
    fprintf(f, "%llu %f %f %f %f %f %f %f %f %f %f %f %f %f %f %f %f %f %f %f %f\n",
            (unsigned long long)r->n, r->write_rps, r->open_s, r->pc.store_p50, r->pc.store_p99,
            r->pc.store_p50 / r->pc.raw_p50, r->pc.store_p99 / r->pc.raw_p99, r->dio.store_p50,
            r->dio.store_p99, r->dio.store_p50 / r->dio.raw_p50, r->dio.store_p99 / r->dio.raw_p99,
            r->ram_per_mem, r->disk_per_mem, r->exact_p50, r->ivf_p50, r->ivf_p99, r->recall,
            r->speedup, r->load, clean_r99(&r->pc), clean_r99(&r->dio));
  }
  fclose(f);
  static const struct {
    const char *name, *ylabel, *cols;
  } figs[] = {
      {"write", "bulk write, records/s", "2 w lp t 'bulk ingest'"},
      {"open", "store open, s", "3 w lp t 'open'"},
      {"fetch_ratio", "fetch-of-5 / raw read of the same bytes",
       "6 w lp t 'p50 page cache', '' u 1:7 w lp t 'p99 page cache', '' u 1:10 w lp t 'p50 O_DIRECT', "
       "'' u 1:11 w lp t 'p99 O_DIRECT', '' u 1:20 w lp t 'p99 page cache, not preempted', "
       "'' u 1:21 w lp t 'p99 O_DIRECT, not preempted'"},
      {"fetch_us", "fetch of 5, us", "4 w lp t 'p50 page cache', '' u 1:5 w lp t 'p99 page cache', "
                                     "'' u 1:8 w lp t 'p50 O_DIRECT', '' u 1:9 w lp t 'p99 O_DIRECT'"},
      {"bytes", "bytes per memory", "12 w lp t 'RAM', '' u 1:13 w lp t 'disk'"},
      {"search_us", "32-query search, us", "14 w lp t 'exact p50', '' u 1:15 w lp t 'IVF p50', "
                                           "'' u 1:16 w lp t 'IVF p99'"},
      {"recall", "recall@5 vs exact", "17 w lp t 'IVF at the chosen nprobe'"},
  };
  f = fopen(gp, "w");
  if (!f) return;
  fprintf(f, "set terminal pngcairo size 800,500 noenhanced\nset logscale x\nset xlabel 'memories (N)'\n"
             "set key left top\nset grid\n");
  for (size_t i = 0; i < sizeof figs / sizeof figs[0]; i++)
    fprintf(f, "set output '%s/scale_%s.png'\nset ylabel '%s'\nplot '%s' u 1:%s\n", dir,
            figs[i].name, figs[i].ylabel, dat, figs[i].cols);
  fclose(f);
  char cmd[4400];
  snprintf(cmd, sizeof cmd, "gnuplot '%s'", gp);
  if (access("/usr/bin/gnuplot", X_OK) == 0 && system(cmd) == 0)
    fprintf(stderr, "m3-bench scale: plots in %s/scale_*.png\n", dir);
  else
    fprintf(stderr, "m3-bench scale: gnuplot not run (apt-get install gnuplot-nox); data in %s\n", dat);
}

int bench_scale(int argc, char **argv) {
  static const struct option opts[] = {
      {"dir", required_argument, NULL, 'd'},  {"sizes", required_argument, NULL, 'n'},
      {"big", no_argument, NULL, 'B'},        {"emb-dim", required_argument, NULL, 'e'},
      {"ops", required_argument, NULL, 'o'},  {"plot", required_argument, NULL, 'p'},
      {"keep", no_argument, NULL, 'k'},       {"json", no_argument, NULL, 'j'},
      {"help", no_argument, NULL, 'h'},       {NULL, 0, NULL, 0}};
  const char *root = NULL, *plot_dir = NULL;
  uint64_t sizes[MAX_SIZES] = {10000, 100000, 1000000};
  int nsizes = 3, json = 0, keep = 0, c;
  unsigned emb_dim = 256;
  unsigned long ops = 2000;
  if (m3_cli_exact_long(argc, argv, "h", opts, "m3-bench")) return 2;
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 'd': root = optarg; break;
    case 'n': {
      nsizes = 0;
      for (char *p = optarg; *p && nsizes < MAX_SIZES;) {
        sizes[nsizes++] = strtoull(p, &p, 10);
        if (*p == ',') p++;
      }
      break;
    }
    case 'B': if (nsizes < MAX_SIZES) sizes[nsizes++] = 10000000; break;
    case 'e': emb_dim = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'o': ops = strtoul(optarg, NULL, 10); break;
    case 'p': plot_dir = optarg; break;
    case 'k': keep = 1; break;
    case 'j': json = 1; break;
    case 'h':
      puts("usage: m3-bench scale --dir DIR [--sizes 10000,100000,1000000] [--big]\n"
           "                      [--emb-dim 256] [--ops 2000] [--plot DIR] [--keep] [--json]\n"
           "Builds a store of each size N under DIR (bulk ingest; shape 2x2x8x16, 4-byte codes,\n"
           "emb-dim clustered embeddings) and measures: bulk write records/s, open time (with\n"
           "the location table snapshot, and rebuilt from the catalog),\n"
           "fetch-of-5 p50/p99 vs raw reads of the same bytes (page cache and O_DIRECT), RAM\n"
           "and disk bytes per memory, and (emb-dim > 0) a 32-query batch on exact search vs\n"
           "a trained IVF at the smallest nprobe with recall@5 >= 0.95. --big adds 10^7.\n"
           "--plot DIR writes scale.dat and one PNG per figure (gnuplot). Stores are removed\n"
           "after each N unless --keep.");
      return 0;
    default: return 2;
    }
  }
  if (root == NULL || nsizes == 0 || ops == 0) {
    fprintf(stderr, "m3-bench scale: needs --dir DIR (see --help)\n");
    return 2;
  }
  mkdir(root, 0755);
  scale_row rows[MAX_SIZES];
  if (!json) {
    printf("shape 2x2x8x16, 4-byte codes, %u-dim embeddings; fetch of 5, %lu ops; us unless said\n",
           emb_dim, ops);
    printf("(c p99: the p99 ratio over the ops no leg of which was preempted)\n");
    printf("(open s: with the location table's snapshot; rebuild s: without, built from the catalog)\n");
    printf("        N  load   write/s  open s rebuild | pc p50 pc p99 r p50 r p99 c p99 | dio p50 p99  r p50 "
           "r p99 c p99 | RAM/m disk/m | exact p50 ivf p50 ivf p99 nprobe recall speedup\n");
  }
  for (int i = 0; i < nsizes; i++) {
    int rc = measure(root, sizes[i], emb_dim, ops, keep, &rows[i]);
    if (rc) return rc;
    if (!json) print_row(&rows[i]);
  }
  if (plot_dir) {
    mkdir(plot_dir, 0755);
    plot(plot_dir, rows, nsizes);
  }
  if (json) {
    json_t *arr = json_array();
    for (int i = 0; i < nsizes; i++) json_array_append_new(arr, row_json(&rows[i]));
    return bench_print_json(json_pack("{s:s,s:I,s:o}", "shape", "2x2x8x16/4B", "emb_dim",
                                      (json_int_t)emb_dim, "rows", arr));
  }
  return 0;
}
