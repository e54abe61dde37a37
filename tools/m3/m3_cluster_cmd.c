/*
 * m3 store split DIR --shards S --out OUTDIR: split one store into S shard
 * stores OUTDIR/shard-0 .. shard-<S-1> by the cluster's sharding rule
 * (chunk id % S, m3_cluster_shard_of), for deploy/local/m3-cluster.
 *
 * Each record is read through the normal read path (m3_store_fetch: CRC
 * checked), with its text and retrieval embedding, and written to its shard
 * with m3_store_put: the shard stores have the source's layout and record
 * alignment, so a record's memory bytes are the same bytes in both.
 * Workload: a local test cluster (thousands of records); a production split
 * moves segments instead (DESIGN.md section 8).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "m3/cluster.h"
#include "m3/error.h"
#include "m3/internal/cli.h"
#include "m3/store.h"

#define BATCH 64

typedef struct ids {
  uint64_t *v;
  size_t n, cap;
} ids;

static int add_id(void *ud, uint64_t id, const m3_location *loc) {
  (void)loc;
  ids *s = ud;
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 1024;
    uint64_t *v = realloc(s->v, cap * sizeof *v);
    if (v == NULL) return M3_ENOMEM;
    s->v = v;
    s->cap = cap;
  }
  s->v[s->n++] = id;
  return 0;
}

/* The files an encoded store keeps beside its records: how it was embedded
 * and encoded (encode.json, and for words:DIM its IDF table), its codec and
 * tokenizer. Each shard gets them, so a server on a shard knows its
 * embedder as the whole store's would. */
static const char *const side_files[] = {"encode.json", "codec.m3c", "tokenizer.json", "idf.bin"};

static int copy_file(const char *from, const char *to) {
  FILE *in = fopen(from, "rb");
  if (in == NULL) return errno == ENOENT ? 0 : m3__syserr(errno, "open %s", from);
  FILE *out = fopen(to, "wb");
  int rc = out ? 0 : m3__syserr(errno, "create %s", to);
  char buf[65536];
  for (size_t n; rc == 0 && (n = fread(buf, 1, sizeof buf, in)) > 0;)
    if (fwrite(buf, 1, n, out) != n) rc = m3__syserr(errno, "write %s", to);
  if (rc == 0 && ferror(in)) rc = m3__syserr(EIO, "read %s", from);
  if (out && (fflush(out) != 0 || fsync(fileno(out)) != 0) && rc == 0)
    rc = m3__syserr(errno, "write %s", to);
  if (out && fclose(out) != 0 && rc == 0) rc = m3__syserr(errno, "close %s", to);
  fclose(in);
  return rc;
}

static void usage(FILE *f) {
  fputs("usage: m3 store split DIR --shards S --out OUTDIR [--json]\n"
        "Write OUTDIR/shard-0 .. OUTDIR/shard-<S-1>: shard s holds the chunks of DIR whose\n"
        "id % S == s (texts and embeddings included, same layout; encode.json, codec.m3c,\n"
        "tokenizer.json and idf.bin copied beside each). OUTDIR/shard-* must not\n"
        "exist yet.\n",
        f);
}

int m3__cmd_store_split(int argc, char **argv) {
  static const struct option opts[] = {{"shards", required_argument, NULL, 's'},
                                       {"out", required_argument, NULL, 'o'},
                                       {"json", no_argument, NULL, 'j'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  const char *out = NULL, *dir = NULL;
  unsigned long shards = 0;
  int json = 0, c;
  if (m3_cli_exact_long(argc, argv, "h", opts, "m3 store split")) return 2;
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    char *end;
    switch (c) {
    case 's':
      shards = strtoul(optarg, &end, 10);
      if (*end || shards == 0 || shards > 4096) {
        fprintf(stderr, "m3 store split: --shards '%s' is not 1..4096\n", optarg);
        return 2;
      }
      break;
    case 'o': out = optarg; break;
    case 'j': json = 1; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind + 1 != argc || shards == 0 || out == NULL) {
    usage(stderr);
    return 2;
  }
  dir = argv[optind];

  int rc = 0, ex = 2;
  m3_store *src = NULL, **dst = calloc(shards, sizeof *dst);
  size_t *count = calloc(shards, sizeof *count);
  ids all = {0};
  void *bufs[BATCH] = {0};
  m3_fetch_item items[BATCH];
  char *texts[BATCH] = {0};
  float *emb = NULL;
  m3_record recs[BATCH];
  m3_record_in in[BATCH];
  m3_store_options o;
  m3_store_options_init(&o);
  o.read_only = 1;
  if (dst == NULL || count == NULL) {
    fprintf(stderr, "m3 store split: out of memory\n");
    goto out;
  }
  if ((rc = m3_store_open(dir, &o, &src)) != 0) goto fail;
  const m3_layout *l = m3_store_layout(src);
  if (mkdir(out, 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "m3 store split: mkdir %s: %s\n", out, strerror(errno));
    goto out;
  }
  for (unsigned long s = 0; s < shards; s++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/shard-%lu", out, s);
    if (mkdir(path, 0755) != 0) {
      fprintf(stderr, "m3 store split: mkdir %s: %s\n", path, strerror(errno));
      goto out;
    }
    m3_store_options w;
    m3_store_options_init(&w);
    w.create = 1;
    w.layout = *l;
    w.align = m3_store_align(src);
    if ((rc = m3_store_open(path, &w, &dst[s])) != 0) goto fail;
  }
  if ((rc = m3_store_iterate(src, add_id, &all)) != 0) goto fail;
  size_t cap = m3_store_fetch_cap(src);
  for (int i = 0; i < BATCH; i++)
    if ((bufs[i] = m3_store_buf_alloc(src, cap)) == NULL) {
      rc = m3__seterr(M3_ENOMEM, "out of memory");
      goto fail;
    }
  emb = calloc((size_t)BATCH * (l->emb_dim ? l->emb_dim : 1), sizeof *emb);
  if (emb == NULL) {
    rc = m3__seterr(M3_ENOMEM, "out of memory");
    goto fail;
  }
  for (unsigned long s = 0; s < shards; s++) {
    /* One shard at a time keeps each put batch on one store. */
    size_t n = 0;
    for (size_t i = 0; i <= all.n; i++) {
      if (i < all.n && m3_cluster_shard_of(all.v[i], (uint32_t)shards) != s) continue;
      if (i < all.n) {
        items[n] = (m3_fetch_item){.chunk_id = all.v[i], .buf = bufs[n], .cap = cap};
        n++;
      }
      if (n < BATCH && i < all.n) continue;
      if (n == 0) break;
      if ((rc = m3_store_fetch(src, items, n)) != 0) goto fail;
      for (size_t b = 0; b < n; b++) {
        uint64_t id = items[b].chunk_id;
        if ((rc = items[b].status) != 0 ||
            (rc = m3_record_parse(items[b].data, items[b].len, M3_PARSE_MEM, &recs[b])) != 0) {
          m3__seterr(rc, "chunk %llu of %s: %s", (unsigned long long)id, dir, m3_errmsg());
          goto fail;
        }
        size_t tl = 0;
        free(texts[b]);
        texts[b] = NULL;
        if ((rc = m3_store_get_text(src, id, &texts[b], &tl)) != 0) goto fail;
        float *e = l->emb_dim ? emb + b * l->emb_dim : NULL;
        if (e && (rc = m3_store_get_embedding(src, id, e)) != 0) goto fail;
        in[b] = (m3_record_in){.chunk_id = id, .chunk_len = recs[b].chunk_len,
                               .positions = recs[b].positions, .codes = recs[b].codes,
                               .text = texts[b], .text_len = tl, .embedding = e};
      }
      if ((rc = m3_store_put(dst[s], in, n)) != 0) goto fail;
      count[s] += n;
      n = 0;
    }
  }
  for (unsigned long s = 0; s < shards; s++)
    for (size_t f = 0; f < sizeof side_files / sizeof side_files[0]; f++) {
      char from[4200], to[4200];
      snprintf(from, sizeof from, "%s/%s", dir, side_files[f]);
      snprintf(to, sizeof to, "%s/shard-%lu/%s", out, s, side_files[f]);
      if ((rc = copy_file(from, to)) != 0) goto fail;
    }
  if (json) {
    printf("{\"store\": \"%s\", \"shards\": %lu, \"out\": \"%s\", \"records\": [", dir, shards,
           out);
    for (unsigned long s = 0; s < shards; s++) printf("%s%zu", s ? ", " : "", count[s]);
    printf("]}\n");
  } else {
    for (unsigned long s = 0; s < shards; s++)
      printf("shard %lu: %s/shard-%lu, %zu records\n", s, out, s, count[s]);
  }
  ex = 0;
  goto out;
fail:
  fprintf(stderr, "m3 store split: %s: %s\n", m3_strerror(rc), m3_errmsg());
out:
  for (int i = 0; i < BATCH; i++) {
    free(bufs[i]);
    free(texts[i]);
  }
  free(emb);
  free(all.v);
  for (unsigned long s = 0; dst && s < shards; s++) m3_store_close(dst[s]);
  m3_store_close(src);
  free(dst);
  free(count);
  return ex;
}
