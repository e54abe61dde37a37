/*
 * m3 store merge --shards S --out OUTDIR [--index FACTORY] [--copy] [--json]
 *   PARTIAL...: the partial stores of a fleet's encoders (m3-encode --slice)
 * into S shard stores OUTDIR/shard-<s>, by m3_store_merge (m3/store.h), then
 * each shard's retrieval index (m3_index_open: built and saved, so that
 * m3-server --index FACTORY loads it at once; a factory that trains is
 * trained once on a sample of all inputs, OUTDIR/index-trained.faiss, and
 * each shard adds its vectors to a copy). A rerun after an
 * interruption finishes the job; docs/OPERATIONS.md ("Encoding on a
 * fleet") is the user-facing description.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "m3/error.h"
#include "m3/internal/cli.h"
#include "m3/index.h"
#include "m3/store.h"

static void usage(FILE *f) {
  fputs("usage: m3 store merge --shards S --out OUTDIR [--index FACTORY] [--copy] [--json]\n"
        "                      PARTIAL...\n"
        "Build OUTDIR/shard-0 .. shard-<S-1> from the partial stores: shard s holds every\n"
        "chunk whose id % S == s, record bytes copied as stored (never re-encoded), catalog\n"
        "entries ingested as SST files, and its retrieval index built with FACTORY\n"
        "(IDMap,Flat; use m3-server's --index). --copy: plain copies instead of\n"
        "copy_file_range. Rerun the same command after an interruption to finish.\n"
        "Exit: 0 done, 1 inputs refused (mixed layouts, conflicting ids), 2 failure.\n",
        f);
}

/* OUTDIR/index-trained.faiss from the inputs, unless a run made it already
 * (it is renamed into place complete). */
static int train_shared(char **inputs, size_t n, const char *factory, const char *path,
                        int *needed) {
  m3_store **st = calloc(n, sizeof *st);
  if (st == NULL) return m3__seterr(M3_ENOMEM, "out of memory");
  m3_store_options so;
  m3_store_options_init(&so);
  so.read_only = 1;
  m3_index_options xo;
  m3_index_options_init(&xo);
  xo.factory = factory;
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) rc = m3_store_open(inputs[i], &so, &st[i]);
  if (rc == 0 && m3_store_layout(st[0])->emb_dim) {
    if (access(path, F_OK) == 0) *needed = 1;
    else rc = m3_index_train_file(st, n, &xo, path, needed);
  }
  for (size_t i = 0; i < n; i++) m3_store_close(st[i]);
  free(st);
  return rc;
}

int m3__cmd_store_merge(int argc, char **argv) {
  static const struct option opts[] = {{"shards", required_argument, NULL, 's'},
                                       {"out", required_argument, NULL, 'o'},
                                       {"index", required_argument, NULL, 'x'},
                                       {"copy", no_argument, NULL, 'c'},
                                       {"json", no_argument, NULL, 'j'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  m3_merge_options mo = {0};
  const char *out = NULL, *factory = M3_INDEX_DEFAULT_FACTORY;
  int json = 0, c;
  if (m3_cli_exact_long(argc, argv, "h", opts, "m3 store merge")) return 2;
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    char *end;
    switch (c) {
    case 's': {
      unsigned long v = strtoul(optarg, &end, 10);
      if (*end || v == 0 || v > 4096) {
        fprintf(stderr, "m3 store merge: --shards '%s' is not 1..4096\n", optarg);
        return 2;
      }
      mo.shards = (uint32_t)v;
      break;
    }
    case 'o': out = optarg; break;
    case 'x': factory = optarg; break;
    case 'c': mo.copy = 1; break;
    case 'j': json = 1; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind >= argc || mo.shards == 0 || out == NULL) {
    usage(stderr);
    return 2;
  }
  uint64_t *counts = calloc(mo.shards, sizeof *counts);
  if (counts == NULL) {
    fprintf(stderr, "m3 store merge: out of memory\n");
    return 2;
  }
  m3_merge_report rep;
  int ex = 2;
  int rc = m3_store_merge((const char *const *)argv + optind, (size_t)(argc - optind), out, &mo,
                          counts, &rep);
  if (rc) {
    fprintf(stderr, "m3 store merge: %s: %s\n", m3_strerror(rc), m3_errmsg());
    ex = rc == M3_ESHAPE || rc == M3_EEXIST || rc == M3_EINVAL ? 1 : 2;
    goto out;
  }
  size_t *indexed = calloc(mo.shards, sizeof *indexed);
  if (indexed == NULL) goto out;
  /* A factory that trains (IVF, PQ ...) is trained once, on a sample of all
   * the partial stores, and every shard starts from that. */
  char trained[4200];
  int needed = 0;
  snprintf(trained, sizeof trained, "%s/index-trained.faiss", out);
  if ((rc = train_shared(argv + optind, (size_t)(argc - optind), factory, trained, &needed)) != 0) {
    fprintf(stderr, "m3 store merge: trained index: %s: %s\n", m3_strerror(rc), m3_errmsg());
    free(indexed);
    goto out;
  }
  for (uint32_t s = 0; s < mo.shards && rc == 0; s++) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/shard-%u", out, s);
    m3_store *st = NULL;
    m3_index *ix = NULL;
    m3_index_options xo;
    m3_index_options_init(&xo);
    xo.factory = factory;
    xo.trained = needed ? trained : NULL;
    if ((rc = m3_store_open(dir, NULL, &st)) == 0 &&
        (m3_store_layout(st)->emb_dim == 0 || (rc = m3_index_open(st, &xo, &ix)) == 0)) {
      m3_index_info info;
      if (ix) m3_index_info_get(ix, &info), indexed[s] = info.count;
    }
    if (rc) fprintf(stderr, "m3 store merge: index of %s: %s: %s\n", dir, m3_strerror(rc), m3_errmsg());
    m3_index_close(ix);
    m3_store_close(st);
  }
  if (rc == 0) {
    if (json) {
      printf("{\"out\": \"%s\", \"shards\": %u, \"records\": [", out, mo.shards);
      for (uint32_t s = 0; s < mo.shards; s++) printf("%s%llu", s ? ", " : "", (unsigned long long)counts[s]);
      printf("], \"duplicates\": %llu, \"built\": %u, \"present\": %u, \"bytes\": %llu}\n",
             (unsigned long long)rep.duplicates, rep.built, rep.present, (unsigned long long)rep.bytes);
    } else {
      for (uint32_t s = 0; s < mo.shards; s++)
        printf("shard %u: %s/shard-%u, %llu records, index %s: %zu vectors\n", s, out, s,
               (unsigned long long)counts[s], factory, indexed[s]);
      printf("%d inputs, %llu records, %llu duplicates; %u shards built, %u already done\n",
             argc - optind, (unsigned long long)rep.records, (unsigned long long)rep.duplicates,
             rep.built, rep.present);
    }
    ex = 0;
  }
  free(indexed);
out:
  free(counts);
  return ex;
}
