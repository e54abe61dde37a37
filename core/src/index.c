/*
 * The retrieval index (m3/index.h): a FAISS index over the store's
 * L2-normalized retrieval embeddings, searched by inner product (= cosine).
 *
 * Workload: micro-batches of a few to a few hundred queries from the server's
 * worker threads, top-5 each, concurrent with a trickle of adds and removes
 * from the write path; a rebuild streams every embedding of the store once
 * (twice when the factory trains). FAISS is reached through its C API only,
 * and its errors become m3 codes here, once.
 *
 * Why one file of ~950 lines: every function here holds the one FAISS handle
 * under the index's lock (search, add, remove, train, save, load, rebuild),
 * and FAISS's C API is used nowhere else in core, so the lock and the
 * conversion of FAISS errors stay in one place.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <faiss/c_api/AutoTune_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/IndexPreTransform_c.h>
#include <faiss/c_api/MetaIndexes_c.h>

#include "m3/crc32c.h"
#include "m3/error.h"
#include "m3/internal/fsutil.h"
#include "m3/fault.h"
#include "m3/index.h"
#include "m3/log.h"

#define FACTORY_MAX 255
#define STAMP_MAX 4096
#define BUILD_BATCH 4096 /* vectors per add_with_ids call during a rebuild */
#define TIE_EXTRA 8      /* results looked at past k to settle ties at the k-th place */
#define TIE_WIDEN_MIN 256 /* a tie is followed once, this deep at least ... */
#define TIE_WIDEN_MUL 8   /* ... or this many times the first look */
#define DEFAULT_TRAIN_SAMPLE 65536

struct m3_index {
  pthread_rwlock_t lock;   /* searches: read; add, remove: write */
  pthread_mutex_t meta;    /* saves, and the fields below that a save changes */
  FaissIndex *fx;
  unsigned dim;
  char factory[FACTORY_MAX + 1];
  char path[PATH_MAX];     /* DIR/index */
  int read_only;
  uint64_t seqno;          /* meta */
  uint64_t unsaved;        /* meta (add/remove also change it, under the write lock) */
  int loaded, trained;
  uint64_t skipped;        /* rebuild: vectors left out */
  uint64_t tie_scans;      /* atomic: searches run under the read lock */
  char reason[768];
  char params[FACTORY_MAX + 1]; /* the open's params, restored after an override */
};

/* ---- FAISS errors ---------------------------------------------------- */

static const char *faiss_msg(void) {
  const char *m = faiss_get_last_error();
  if (!m) return "(no message)";
  /* FAISS messages carry a long "Error in <function> at file.cpp:line: "
   * prefix; keep what follows */
  const char *p = strstr(m, ".cpp:");
  if (!p) return m;
  p += 5;
  while (*p >= '0' && *p <= '9') p++;
  return p[0] == ':' && p[1] == ' ' ? p + 2 : m;
}

/* "not implemented" refusals (remove on HNSW, ids on a bare Flat) are
 * M3_EUNSUPPORTED; everything else FAISS throws is internal. */
static int faiss_code(void) {
  const char *m = faiss_get_last_error();
  return m && strstr(m, "not implemented") ? M3_EUNSUPPORTED : M3_EINTERNAL;
}

/* ---- vectors ----------------------------------------------------------- */

/* Copy v (dim floats) into out scaled to unit length. Returns 1 when v is
 * all zeros (out zeros too), 0 otherwise, -1 when a value is not finite. */
static int normalize(const float *v, unsigned dim, float *out) {
  double ss = 0;
  for (unsigned i = 0; i < dim; i++) {
    if (!isfinite(v[i])) return -1;
    ss += (double)v[i] * v[i];
  }
  if (ss == 0) {
    memset(out, 0, dim * sizeof *out);
    return 1;
  }
  double inv = 1.0 / sqrt(ss);
  for (unsigned i = 0; i < dim; i++) out[i] = (float)(v[i] * inv);
  return 0;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* ---- removing ids ------------------------------------------------------ */

/* Remove ids from fx; caller holds the write lock (or owns fx alone). */
static int remove_ids(m3_index *ix, const uint64_t *ids, size_t n, size_t *removed) {
  size_t nr = 0;
  int rc = 0;
  if (n && faiss_Index_ntotal(ix->fx) > 0) {
    FaissIDSelectorBatch *sel = NULL;
    if (faiss_IDSelectorBatch_new(&sel, n, (const idx_t *)ids) != 0)
      return m3__seterr(M3_ENOMEM, "index %s: id selector of %zu ids: %s", ix->path, n, faiss_msg());
    if (faiss_Index_remove_ids(ix->fx, (const FaissIDSelector *)sel, &nr) != 0)
      rc = m3__seterr(faiss_code(), "index %s (factory %s): removing %zu ids: %s", ix->path,
                      ix->factory, n, faiss_msg());
    faiss_IDSelector_free((FaissIDSelector *)sel);
  }
  if (removed) *removed = nr;
  return rc;
}

/* ---- files ------------------------------------------------------------- */

/* A FILE that writes to fd and keeps the CRC32C and size of what went
 * through: FAISS writes the index through it, so the stamp gets the file's
 * checksum without reading it back. */
typedef struct crc_sink {
  int fd;
  uint32_t crc;
  uint64_t bytes;
  int err; /* errno of the first failed write */
} crc_sink;

static ssize_t sink_write(void *cookie, const char *buf, size_t len) {
  crc_sink *k = cookie;
  int fe = m3__fault("index.write");
  if (fe) {
    k->err = fe;
    return -1;
  }
  int e = m3__fs_write_all(k->fd, buf, len);
  if (e) {
    k->err = e;
    return -1;
  }
  k->crc = m3_crc32c(k->crc, buf, len);
  k->bytes += len;
  return (ssize_t)len;
}

/* Size and CRC32C of a whole file; 0, or an errno value. */
static int file_crc(FILE *f, uint64_t *bytes, uint32_t *crc) {
  char buf[1 << 16];
  size_t r;
  *bytes = 0;
  *crc = 0;
  while ((r = fread(buf, 1, sizeof buf, f)) > 0) {
    *crc = m3_crc32c(*crc, buf, r);
    *bytes += r;
  }
  return ferror(f) ? EIO : 0;
}

/* What a stamp says. */
typedef struct stamp {
  unsigned version;
  char factory[FACTORY_MAX + 1];
  char metric[32];
  unsigned dim;
  uint64_t count, seqno, index_bytes;
  uint32_t index_crc;
} stamp;

static int stamp_format(char *buf, size_t cap, const stamp *st) {
  int n = snprintf(buf, cap,
                   "m3index %u\nfactory %s\nmetric %s\ndim %u\ncount %" PRIu64 "\nseqno %" PRIu64
                   "\nindex_bytes %" PRIu64 "\nindex_crc32c %08" PRIx32 "\n",
                   st->version, st->factory, st->metric, st->dim, st->count, st->seqno,
                   st->index_bytes, st->index_crc);
  if (n < 0 || (size_t)n + 32 > cap) return -1;
  n += snprintf(buf + n, cap - (size_t)n, "crc32c %08" PRIx32 "\n", m3_crc32c(0, buf, (size_t)n));
  return n;
}

/* Next "key value\n" line of the stamp at *p; value copied into val. */
static int stamp_line(const char **p, const char *key, char *val, size_t cap) {
  size_t kl = strlen(key);
  if (strncmp(*p, key, kl) != 0 || (*p)[kl] != ' ') return -1;
  const char *v = *p + kl + 1, *nl = strchr(v, '\n');
  if (!nl || (size_t)(nl - v) >= cap || nl == v) return -1;
  memcpy(val, v, (size_t)(nl - v));
  val[nl - v] = 0;
  *p = nl + 1;
  return 0;
}

static int parse_u64(const char *s, int base, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, base);
  if (errno || end == s || *end || *s == '-') return -1;
  *out = v;
  return 0;
}

/* Parse and check a stamp's text (NUL-terminated, len bytes). 0 or -1 with
 * why filled in. */
static int stamp_parse(const char *text, size_t len, stamp *st, char *why, size_t wcap) {
  const char *last = NULL;
  /* the last line is "crc32c X\n" over everything before it */
  if (len < 2 || text[len - 1] != '\n') goto bad;
  for (const char *q = text + len - 2; q >= text; q--)
    if (*q == '\n') {
      last = q + 1;
      break;
    }
  if (!last) goto bad;
  char v[FACTORY_MAX + 1];
  uint64_t x;
  const char *p = last;
  if (stamp_line(&p, "crc32c", v, sizeof v) || parse_u64(v, 16, &x) ||
      (uint32_t)x != m3_crc32c(0, text, (size_t)(last - text))) {
    snprintf(why, wcap, "stamp checksum mismatch");
    return -1;
  }
  p = text;
  memset(st, 0, sizeof *st);
  if (stamp_line(&p, "m3index", v, sizeof v) || parse_u64(v, 10, &x)) goto bad;
  st->version = (unsigned)x;
  if (st->version != M3_INDEX_FORMAT_VERSION) {
    snprintf(why, wcap, "stamp format version %u, this build reads %u", st->version,
             M3_INDEX_FORMAT_VERSION);
    return -1;
  }
  if (stamp_line(&p, "factory", st->factory, sizeof st->factory)) goto bad;
  if (stamp_line(&p, "metric", st->metric, sizeof st->metric)) goto bad;
  if (stamp_line(&p, "dim", v, sizeof v) || parse_u64(v, 10, &x) || x == 0 || x > 65535) goto bad;
  st->dim = (unsigned)x;
  if (stamp_line(&p, "count", v, sizeof v) || parse_u64(v, 10, &st->count)) goto bad;
  if (stamp_line(&p, "seqno", v, sizeof v) || parse_u64(v, 10, &st->seqno)) goto bad;
  if (stamp_line(&p, "index_bytes", v, sizeof v) || parse_u64(v, 10, &st->index_bytes)) goto bad;
  if (stamp_line(&p, "index_crc32c", v, sizeof v) || parse_u64(v, 16, &x) || x > UINT32_MAX)
    goto bad;
  st->index_crc = (uint32_t)x;
  if (p != last) goto bad;
  return 0;
bad:
  snprintf(why, wcap, "stamp malformed");
  return -1;
}

/*
 * Load DIR/index when it is current for (factory, dim, seqno). Returns 0 with
 * ix->fx set, 1 when it must be rebuilt (ix->reason says why; damage is
 * logged), or a negative code when loading could not even be tried.
 */
static int try_load(m3_index *ix, uint64_t seqno) {
  char fn[PATH_MAX + 32], text[STAMP_MAX + 1];
  FILE *f = NULL;
  stamp st;
  int rc = 1;

  snprintf(fn, sizeof fn, "%s/stamp", ix->path);
  int fd = open(fn, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) {
      snprintf(ix->reason, sizeof ix->reason, "no saved index");
      return 1;
    }
    return m3__syserr(errno, "open %s", fn);
  }
  ssize_t len = read(fd, text, STAMP_MAX);
  int e = errno;
  close(fd);
  if (len < 0) return m3__syserr(e, "read %s", fn);
  text[len] = 0;
  if (strlen(text) != (size_t)len || stamp_parse(text, (size_t)len, &st, ix->reason, sizeof ix->reason)) {
    if (!ix->reason[0]) snprintf(ix->reason, sizeof ix->reason, "stamp malformed");
    m3_log(M3_LOG_WARN, "index", "%s: %s; rebuilding the index", fn, ix->reason);
    return 1;
  }
  if (strcmp(st.factory, ix->factory) != 0) {
    snprintf(ix->reason, sizeof ix->reason, "factory changed ('%s' saved, '%s' asked)", st.factory,
             ix->factory);
    return 1;
  }
  if (strcmp(st.metric, "inner_product") != 0 || st.dim != ix->dim) {
    snprintf(ix->reason, sizeof ix->reason, "saved index has metric %s dim %u, want inner_product dim %u",
             st.metric, st.dim, ix->dim);
    return 1;
  }
  if (st.seqno != seqno) {
    snprintf(ix->reason, sizeof ix->reason, "store changed (seqno %" PRIu64 " saved, %" PRIu64 " now)",
             st.seqno, seqno);
    return 1;
  }

  /* Check the whole file before FAISS parses it: a damaged length field
   * would have FAISS allocate whatever it says. */
  snprintf(fn, sizeof fn, "%s/index.faiss", ix->path);
  f = fopen(fn, "rbe");
  if (!f) {
    snprintf(ix->reason, sizeof ix->reason, "index file missing (%s)", strerror(errno));
    m3_log(M3_LOG_WARN, "index", "%s: %s; rebuilding the index", fn, ix->reason);
    return 1;
  }
  uint64_t bytes;
  uint32_t crc;
  if ((e = file_crc(f, &bytes, &crc)) != 0) {
    rc = m3__syserr(e, "read %s", fn);
    goto out;
  }
  if (bytes != st.index_bytes || crc != st.index_crc) {
    snprintf(ix->reason, sizeof ix->reason,
             "index file damaged (%" PRIu64 " bytes crc32c %08" PRIx32 ", stamp says %" PRIu64
             " bytes %08" PRIx32 ")", bytes, crc, st.index_bytes, st.index_crc);
    m3_log(M3_LOG_WARN, "index", "%s: %s; rebuilding the index", fn, ix->reason);
    goto out;
  }
  rewind(f);
  FaissIndex *fx = NULL;
  if (faiss_read_index(f, 0, &fx) != 0) {
    snprintf(ix->reason, sizeof ix->reason, "FAISS cannot read the index file: %s", faiss_msg());
    m3_log(M3_LOG_WARN, "index", "%s: %s; rebuilding the index", fn, ix->reason);
    goto out;
  }
  if ((unsigned)faiss_Index_d(fx) != ix->dim || faiss_Index_metric_type(fx) != METRIC_INNER_PRODUCT ||
      (uint64_t)faiss_Index_ntotal(fx) != st.count) {
    snprintf(ix->reason, sizeof ix->reason,
             "index file holds dim %d metric %d count %" PRId64 ", stamp says dim %u count %" PRIu64,
             faiss_Index_d(fx), (int)faiss_Index_metric_type(fx), (int64_t)faiss_Index_ntotal(fx),
             st.dim, st.count);
    m3_log(M3_LOG_WARN, "index", "%s: %s; rebuilding the index", fn, ix->reason);
    faiss_Index_free(fx);
    goto out;
  }
  ix->fx = fx;
  ix->reason[0] = 0;
  rc = 0;
out:
  fclose(f);
  return rc;
}

/* The index file's contents (m3__fs_writer): FAISS's serialization through
 * a crc_sink, so the stamp gets the file's size and checksum. */
typedef struct index_src {
  const m3_index *ix;
  crc_sink k;
} index_src;

static int write_index(int fd, const char *tmp, void *ud) {
  index_src *w = ud;
  w->k = (crc_sink){fd, 0, 0, 0};
  FILE *f = fopencookie(&w->k, "w", (cookie_io_functions_t){.write = sink_write});
  if (!f) return m3__syserr(errno, "fopencookie for %s", tmp);
  int wr = faiss_write_index(w->ix->fx, f);
  int fl = fclose(f);
  if (w->k.err) return m3__syserr(w->k.err, "write %s", tmp);
  if (wr != 0 || fl != 0)
    return m3__seterr(M3_EINTERNAL, "write %s (factory %s): %s", tmp, w->ix->factory,
                      wr ? faiss_msg() : "fclose failed");
  return 0;
}

/* Write the index and its stamp; caller holds the read lock and ix->meta.
 * Index first: a crash (or a failed stamp write) after its replace leaves
 * an old stamp whose checksum does not match the new file, which reads as
 * stale. */
static int save_locked(m3_index *ix, uint64_t seqno) {
  char dst[PATH_MAX + 32], sdst[PATH_MAX + 32];
  char text[STAMP_MAX];
  int rc;

  if (mkdir(ix->path, 0755) != 0 && errno != EEXIST) return m3__syserr(errno, "mkdir %s", ix->path);
  snprintf(dst, sizeof dst, "%s/index.faiss", ix->path);
  snprintf(sdst, sizeof sdst, "%s/stamp", ix->path);

  index_src w = {.ix = ix};
  if ((rc = m3__fs_replace_fn(dst, write_index, &w)) != 0) return rc;

  stamp st = {.version = M3_INDEX_FORMAT_VERSION, .dim = ix->dim,
              .count = (uint64_t)faiss_Index_ntotal(ix->fx), .seqno = seqno,
              .index_bytes = w.k.bytes, .index_crc = w.k.crc};
  snprintf(st.factory, sizeof st.factory, "%s", ix->factory);
  snprintf(st.metric, sizeof st.metric, "inner_product");
  int n = stamp_format(text, sizeof text, &st);
  M3_ASSERT(n > 0);
  int e = m3__fault("index.write");
  if (e) return m3__syserr(e, "write %s.tmp", sdst);
  return m3__fs_replace(sdst, text, (size_t)n);
}

/* ---- building ---------------------------------------------------------- */

typedef struct build_ctx {
  m3_index *ix;
  int pass_train;     /* 1: sampling for training, 0: adding */
  uint64_t *ids;      /* (BUILD_BATCH) */
  float *vecs;        /* (BUILD_BATCH, dim) normalized */
  size_t n;
  float *sample;      /* (cap, dim) reservoir of normalized vectors */
  size_t ns, cap;
  uint64_t seen, rng;
} build_ctx;

/* splitmix64: the reservoir's fixed-seed generator (a rebuild is repeatable) */
static uint64_t next_rand(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static int flush_batch(build_ctx *c) {
  if (c->n == 0) return 0;
  m3_index *ix = c->ix;
  int rc = 0;
  if (faiss_Index_add_with_ids(ix->fx, (idx_t)c->n, c->vecs, (const idx_t *)c->ids) != 0)
    rc = m3__seterr(faiss_code(), "index %s (factory %s): adding %zu vectors: %s", ix->path,
                    ix->factory, c->n, faiss_msg());
  c->n = 0;
  return rc;
}

#define SKIP_LOGGED 16 /* skipped vectors named one by one in the log */

static void skip(m3_index *ix, uint64_t id, const char *why) {
  if (ix->skipped++ < SKIP_LOGGED)
    M3_WARN("index", "%s: chunk %" PRIu64 " left out of the index: %s", ix->path, id, why);
}

static int build_entry(void *ud, uint64_t id, const float *emb) {
  build_ctx *c = ud;
  m3_index *ix = c->ix;
  unsigned d = ix->dim;
  if (id == UINT64_MAX) {
    if (!c->pass_train) skip(ix, id, "its id cannot be indexed");
    return 0;
  }
  if (c->pass_train) {
    float *slot;
    c->seen++;
    if (c->ns < c->cap) {
      slot = c->sample + c->ns * d;
    } else {
      uint64_t j = next_rand(&c->rng) % c->seen;
      if (j >= c->cap) return 0;
      slot = c->sample + j * d;
    }
    int z = normalize(emb, d, slot);
    if (z != 0) { /* zero or not finite: not indexed, so not a training vector either */
      c->seen--;
      return 0;
    }
    if (c->ns < c->cap) c->ns++;
    return 0;
  }
  int z = normalize(emb, d, c->vecs + c->n * d);
  if (z < 0) {
    /* A record the index cannot hold must not keep the server from
     * starting: it is left out (not searchable) and reported. */
    skip(ix, id, "its embedding has a non-finite value");
    return 0;
  }
  if (z == 1) return 0;
  c->ids[c->n++] = id;
  return c->n == BUILD_BATCH ? flush_batch(c) : 0;
}

/* Train ix->fx on a uniform sample of at most cap vectors of n stores (one
 * reservoir across all of them, fixed seed: repeatable). */
static int train_sampled(m3_index *ix, m3_store *const *stores, size_t n, size_t cap) {
  build_ctx c = {.ix = ix, .rng = 0x6d33696e646578ull /* "m3index" */, .pass_train = 1};
  int rc = 0;
  c.cap = cap ? cap : DEFAULT_TRAIN_SAMPLE;
  c.sample = malloc(c.cap * ix->dim * sizeof(float));
  if (!c.sample) return m3__seterr(M3_ENOMEM, "index %s: training sample of %zu vectors", ix->path, c.cap);
  for (size_t i = 0; i < n && rc == 0; i++) rc = m3_store_iterate_embeddings(stores[i], build_entry, &c);
  if (rc) goto out;
  if (c.ns == 0) {
    rc = m3__seterr(M3_EINVAL,
                    "index factory '%s' needs training, and store %s holds no embeddings to "
                    "train it on: use an untrained factory (IDMap,Flat) until it does",
                    ix->factory, m3_store_dir(stores[0]));
    goto out;
  }
  M3_INFO("index", "%s: training '%s' on %zu of %" PRIu64 " vectors", ix->path, ix->factory, c.ns,
          c.seen);
  if (faiss_Index_train(ix->fx, (idx_t)c.ns, c.sample) != 0)
    rc = m3__seterr(M3_EINVAL, "index factory '%s': training on %zu vectors failed: %s", ix->factory,
                    c.ns, faiss_msg());
out:
  free(c.sample);
  return rc;
}

/* ix->fx := the trained, empty index in file path (m3_index_train_file). */
static int load_trained(m3_index *ix, const char *path) {
  FaissIndex *fx = NULL;
  if (faiss_read_index_fname(path, 0, &fx) != 0)
    return m3__seterr(M3_EINVAL, "trained index %s: %s", path, faiss_msg());
  if ((unsigned)faiss_Index_d(fx) != ix->dim || !faiss_Index_is_trained(fx) ||
      faiss_Index_ntotal(fx) != 0 || faiss_Index_metric_type(fx) != METRIC_INNER_PRODUCT) {
    faiss_Index_free(fx);
    return m3__seterr(M3_EINVAL,
                      "trained index %s is not an empty trained inner-product index of %u dims "
                      "(factory %s)", path, ix->dim, ix->factory);
  }
  faiss_Index_free(ix->fx);
  ix->fx = fx;
  return 0;
}

/* Build ix->fx from the store's embeddings. */
static int rebuild(m3_index *ix, m3_store *s, size_t train_sample, const char *trained) {
  build_ctx c = {.ix = ix};
  float *probe = NULL;
  int rc = 0;

  if (faiss_index_factory(&ix->fx, (int)ix->dim, ix->factory, METRIC_INNER_PRODUCT) != 0) {
    ix->fx = NULL;
    return m3__seterr(M3_EINVAL, "index factory '%s' (dim %u): %s", ix->factory, ix->dim, faiss_msg());
  }
  if (!faiss_Index_is_trained(ix->fx)) {
    rc = trained ? load_trained(ix, trained) : train_sampled(ix, &s, 1, train_sample);
    if (rc) goto out;
    ix->trained = 1;
  }
  /* Does it take ids? Asked now, not at the first put. */
  probe = calloc(ix->dim, sizeof(float));
  if (!probe) {
    rc = m3__seterr(M3_ENOMEM, "index %s: out of memory", ix->path);
    goto out;
  }
  idx_t pid = 0;
  if (faiss_Index_add_with_ids(ix->fx, 0, probe, &pid) != 0) {
    rc = m3__seterr(M3_EINVAL,
                    "index factory '%s' does not take chunk ids (%s): prefix it with 'IDMap,' "
                    "(e.g. 'IDMap,%s')", ix->factory, faiss_msg(), ix->factory);
    goto out;
  }
  c.ids = malloc(BUILD_BATCH * sizeof *c.ids);
  c.vecs = malloc((size_t)BUILD_BATCH * ix->dim * sizeof(float));
  if (!c.ids || !c.vecs) {
    rc = m3__seterr(M3_ENOMEM, "index %s: out of memory", ix->path);
    goto out;
  }
  ix->skipped = 0;
  if ((rc = m3_store_iterate_embeddings(s, build_entry, &c)) != 0) goto out;
  rc = flush_batch(&c);
  if (rc == 0 && ix->skipped)
    M3_WARN("index", "%s: %" PRIu64 " store vectors left out of the index (not searchable; "
            "Fetch still serves them): delete or rewrite them", ix->path, ix->skipped);
out:
  free(probe);
  free(c.sample);
  free(c.ids);
  free(c.vecs);
  if (rc && ix->fx) {
    faiss_Index_free(ix->fx);
    ix->fx = NULL;
  }
  return rc;
}

/* ---- public API -------------------------------------------------------- */

void m3_index_options_init(m3_index_options *o) {
  memset(o, 0, sizeof *o);
  o->factory = M3_INDEX_DEFAULT_FACTORY;
  o->train_sample = DEFAULT_TRAIN_SAMPLE;
}

static int apply_params(m3_index *ix, const char *params) {
  FaissParameterSpace *ps = NULL;
  if (!params || !params[0]) return 0;
  if (faiss_ParameterSpace_new(&ps) != 0)
    return m3__seterr(M3_ENOMEM, "index %s: FAISS parameter space: %s", ix->path, faiss_msg());
  int rc = 0;
  if (faiss_ParameterSpace_set_index_parameters(ps, ix->fx, params) != 0)
    rc = m3__seterr(M3_EINVAL, "index params '%s' for factory '%s': %s", params, ix->factory,
                    faiss_msg());
  faiss_ParameterSpace_free(ps);
  return rc;
}

int m3_index_open(m3_store *s, const m3_index_options *o, m3_index **out) {
  m3_index_options def;
  m3_index *ix = NULL;
  int rc = 0;

  *out = NULL;
  if (!o) {
    m3_index_options_init(&def);
    o = &def;
  }
  const m3_layout *l = m3_store_layout(s);
  if (l->emb_dim == 0)
    return m3__seterr(M3_EUNSUPPORTED,
                      "store %s keeps no retrieval embeddings (layout emb_dim 0): nothing to index",
                      m3_store_dir(s));
  const char *factory = o->factory && o->factory[0] ? o->factory : M3_INDEX_DEFAULT_FACTORY;
  if (strlen(factory) > FACTORY_MAX || strpbrk(factory, "\n\r"))
    return m3__seterr(M3_EINVAL, "index factory '%.40s...': longer than %d bytes or multi-line",
                      factory, FACTORY_MAX);

  ix = calloc(1, sizeof *ix);
  if (!ix) return m3__seterr(M3_ENOMEM, "index: out of memory");
  pthread_rwlockattr_t ra;
  pthread_rwlockattr_init(&ra);
  /* the write path must not starve under a steady stream of searches */
  pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&ix->lock, &ra);
  pthread_rwlockattr_destroy(&ra);
  pthread_mutex_init(&ix->meta, NULL);
  ix->dim = l->emb_dim;
  ix->read_only = o->read_only;
  snprintf(ix->factory, sizeof ix->factory, "%s", factory);
  if ((size_t)snprintf(ix->path, sizeof ix->path, "%s/index", m3_store_dir(s)) >= sizeof ix->path) {
    rc = m3__seterr(M3_EINVAL, "store directory %s: path too long", m3_store_dir(s));
    goto out;
  }

  uint64_t seqno = m3_store_seqno(s);
  rc = 1;
  if (o->force_rebuild)
    snprintf(ix->reason, sizeof ix->reason, "rebuild asked");
  else if ((rc = try_load(ix, seqno)) < 0)
    goto out;
  if (rc == 0) {
    ix->loaded = 1;
  } else {
    M3_INFO("index", "%s: building '%s' (dim %u): %s", ix->path, ix->factory, ix->dim, ix->reason);
    if ((rc = rebuild(ix, s, o->train_sample, o->trained)) != 0) goto out;
    if (!ix->read_only && (rc = save_locked(ix, seqno)) != 0) goto out;
  }
  ix->seqno = seqno;
  if ((rc = apply_params(ix, o->params)) != 0) goto out;
  if (o->params) snprintf(ix->params, sizeof ix->params, "%s", o->params);
  M3_INFO("index", "%s: %s '%s', %" PRId64 " vectors of %u dims at seqno %" PRIu64, ix->path,
          ix->loaded ? "loaded" : "built", ix->factory, (int64_t)faiss_Index_ntotal(ix->fx), ix->dim,
          seqno);
out:
  if (rc) {
    m3_index_close(ix);
    return rc;
  }
  *out = ix;
  return 0;
}

void m3_index_close(m3_index *ix) {
  if (!ix) return;
  if (ix->fx) faiss_Index_free(ix->fx);
  pthread_rwlock_destroy(&ix->lock);
  pthread_mutex_destroy(&ix->meta);
  free(ix);
}

typedef struct id_at {
  uint64_t id;
  size_t at;
} id_at;

static int cmp_id_at(const void *a, const void *b) {
  const id_at *x = a, *y = b;
  if (x->id != y->id) return x->id < y->id ? -1 : 1;
  return x->at < y->at ? -1 : x->at > y->at;
}

int m3_index_check(unsigned dim, const uint64_t *ids, const float *vecs, size_t n) {
  if (n == 0) return 0;
  if (!ids || !vecs) return m3__seterr(M3_EINVAL, "index add: ids or vecs is NULL");
  for (size_t i = 0; i < n; i++) {
    if (ids[i] == UINT64_MAX)
      return m3__seterr(M3_ERANGE, "item %zu: chunk id %" PRIu64 " (UINT64_MAX) cannot be indexed",
                        i, ids[i]);
    for (unsigned d = 0; d < dim; d++)
      if (!isfinite(vecs[i * dim + d]))
        return m3__seterr(M3_EINVAL, "item %zu: the embedding of chunk %" PRIu64
                          " has a non-finite value at dimension %u", i, ids[i], d);
  }
  id_at *s = malloc(n * sizeof *s);
  if (!s) return m3__seterr(M3_ENOMEM, "index check of %zu vectors: out of memory", n);
  for (size_t i = 0; i < n; i++) s[i] = (id_at){ids[i], i};
  qsort(s, n, sizeof *s, cmp_id_at);
  int rc = 0;
  for (size_t i = 1; i < n && rc == 0; i++)
    if (s[i].id == s[i - 1].id)
      rc = m3__seterr(M3_EINVAL, "items %zu and %zu: chunk id %" PRIu64 " twice in one batch",
                      s[i - 1].at, s[i].at, s[i].id);
  free(s);
  return rc;
}

int m3_index_add(m3_index *ix, const uint64_t *ids, const float *vecs, size_t n) {
  uint64_t *sorted = NULL, *keep_ids = NULL;
  float *keep = NULL;
  size_t nk = 0;
  int rc = 0;

  if (n == 0) return 0;
  if (!ids || !vecs) return m3__seterr(M3_EINVAL, "index add: ids or vecs is NULL");
  sorted = malloc(n * sizeof *sorted);
  keep_ids = malloc(n * sizeof *keep_ids);
  keep = malloc(n * ix->dim * sizeof *keep);
  if (!sorted || !keep_ids || !keep) {
    rc = m3__seterr(M3_ENOMEM, "index add of %zu vectors: out of memory", n);
    goto out;
  }
  if ((rc = m3_index_check(ix->dim, ids, vecs, n)) != 0) goto out;
  memcpy(sorted, ids, n * sizeof *ids);
  qsort(sorted, n, sizeof *sorted, cmp_u64);
  for (size_t i = 0; i < n; i++)
    if (normalize(vecs + i * ix->dim, ix->dim, keep + nk * ix->dim) == 0) keep_ids[nk++] = ids[i];

  pthread_rwlock_wrlock(&ix->lock);
  rc = remove_ids(ix, sorted, n, NULL);
  if (rc == 0 && nk &&
      faiss_Index_add_with_ids(ix->fx, (idx_t)nk, keep, (const idx_t *)keep_ids) != 0)
    rc = m3__seterr(faiss_code(), "index %s (factory %s): adding %zu vectors: %s", ix->path,
                    ix->factory, nk, faiss_msg());
  ix->unsaved++;
  pthread_rwlock_unlock(&ix->lock);
out:
  free(sorted);
  free(keep_ids);
  free(keep);
  return rc;
}

int m3_index_remove(m3_index *ix, const uint64_t *ids, size_t n, size_t *removed) {
  if (removed) *removed = 0;
  if (n == 0) return 0;
  if (!ids) return m3__seterr(M3_EINVAL, "index remove: ids is NULL");
  pthread_rwlock_wrlock(&ix->lock);
  int rc = remove_ids(ix, ids, n, removed);
  ix->unsaved++;
  pthread_rwlock_unlock(&ix->lock);
  return rc;
}

typedef struct hit {
  float score;
  uint64_t id;
} hit;

static int cmp_hit(const void *a, const void *b) {
  const hit *x = a, *y = b;
  if (x->score != y->score) return x->score > y->score ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

/* Sort one result row of kk FAISS labels/distances into hits; returns how
 * many are real (not -1 pads). */
static size_t row_hits(const idx_t *lab, const float *dist, size_t kk, hit *h) {
  size_t m = 0;
  for (size_t j = 0; j < kk; j++)
    if (lab[j] >= 0 || lab[j] < -1) h[m++] = (hit){dist[j], (uint64_t)lab[j]};
  qsort(h, m, sizeof *h, cmp_hit);
  return m;
}

/* FAISS's own defaults for what an override may set: restored after it
 * when the open set none. */
static void default_params(const char *over, const char *open_params, char *out, size_t cap) {
  if (open_params[0]) {
    snprintf(out, cap, "%s", open_params);
    return;
  }
  out[0] = '\0';
  if (strstr(over, "nprobe")) snprintf(out + strlen(out), cap - strlen(out), "%snprobe=1", out[0] ? "," : "");
  if (strstr(over, "efSearch"))
    snprintf(out + strlen(out), cap - strlen(out), "%sefSearch=16", out[0] ? "," : "");
}

static int search_locked(m3_index *ix, const float *qn, size_t nq, size_t k, uint64_t *ids,
                         float *scores);

int m3_index_search(m3_index *ix, const float *queries, size_t nq, size_t k, uint64_t *ids,
                    float *scores) {
  return m3_index_search_params(ix, queries, nq, k, ids, scores, NULL);
}

int m3_index_search_params(m3_index *ix, const float *queries, size_t nq, size_t k, uint64_t *ids,
                           float *scores, const char *params) {
  if (nq == 0 || k == 0) return 0;
  if (k > M3_INDEX_MAX_K) return m3__seterr(M3_ERANGE, "index search: k %zu > %d", k, M3_INDEX_MAX_K);
  if (!queries || !ids) return m3__seterr(M3_EINVAL, "index search: queries or ids is NULL");
  if (params && strlen(params) > FACTORY_MAX)
    return m3__seterr(M3_EINVAL, "index search: params longer than %d bytes", FACTORY_MAX);
  unsigned d = ix->dim;
  float *qn = malloc(nq * d * sizeof *qn);
  if (!qn) return m3__seterr(M3_ENOMEM, "index search of %zu queries: out of memory", nq);
  for (size_t q = 0; q < nq; q++)
    if (normalize(queries + q * d, d, qn + q * d) < 0) {
      free(qn);
      return m3__seterr(M3_EINVAL, "index search: query %zu has a non-finite value", q);
    }
  int rc;
  if (params && params[0]) {
    /* FAISS keeps nprobe / efSearch in the index: an override changes it,
     * searches alone, and puts the open's values back. */
    char restore[FACTORY_MAX * 2 + 2];
    default_params(params, ix->params, restore, sizeof restore);
    pthread_rwlock_wrlock(&ix->lock);
    rc = apply_params(ix, params);
    if (rc == 0) {
      rc = search_locked(ix, qn, nq, k, ids, scores);
      int rr = apply_params(ix, restore);
      if (rc == 0) rc = rr;
    }
    pthread_rwlock_unlock(&ix->lock);
  } else {
    pthread_rwlock_rdlock(&ix->lock);
    rc = search_locked(ix, qn, nq, k, ids, scores);
    pthread_rwlock_unlock(&ix->lock);
  }
  free(qn);
  return rc;
}

static int search_locked(m3_index *ix, const float *qn, size_t nq, size_t k, uint64_t *ids,
                         float *scores) {
  float *dist = NULL;
  idx_t *lab = NULL;
  hit *h = NULL;
  int rc = 0;

  unsigned d = ix->dim;
  size_t ntotal = (size_t)faiss_Index_ntotal(ix->fx);
  /* Look a little past k: a tie at the k-th place is then settled by id
   * instead of by FAISS's heap order. */
  size_t kk = k + TIE_EXTRA < ntotal ? k + TIE_EXTRA : ntotal;
  if (kk == 0) {
    for (size_t i = 0; i < nq * k; i++) {
      ids[i] = UINT64_MAX;
      if (scores) scores[i] = -INFINITY;
    }
    goto unlock;
  }
  dist = malloc(nq * kk * sizeof *dist);
  lab = malloc(nq * kk * sizeof *lab);
  h = malloc(kk * sizeof *h);
  if (!dist || !lab || !h) {
    rc = m3__seterr(M3_ENOMEM, "index search of %zu queries: out of memory", nq);
    goto unlock;
  }
  if (faiss_Index_search(ix->fx, (idx_t)nq, qn, (idx_t)kk, dist, lab) != 0) {
    rc = m3__seterr(M3_EINTERNAL, "index %s (factory %s): search of %zu queries: %s", ix->path,
                    ix->factory, nq, faiss_msg());
    goto unlock;
  }
  for (size_t q = 0; q < nq; q++) {
    size_t m = row_hits(lab + q * kk, dist + q * kk, kk, h);
    hit *hq = h, *wh = NULL;
    float *wd = NULL;
    idx_t *wl = NULL;
    /* Still tied from the k-th to the last one looked at, with more to see:
     * look deeper for this query alone (rare: exact duplicates). Once: an
     * all-tied row (duplicates, a degenerate query) costs one extra scan,
     * never a walk down the whole index. */
    size_t kw = kk;
    if (rc == 0 && m == kw && kw < ntotal && m > k && hq[k - 1].score == hq[m - 1].score) {
      kw = kk * TIE_WIDEN_MUL > TIE_WIDEN_MIN ? kk * TIE_WIDEN_MUL : TIE_WIDEN_MIN;
      if (kw > ntotal) kw = ntotal;
      __atomic_fetch_add(&ix->tie_scans, 1, __ATOMIC_RELAXED);
      wh = malloc(kw * sizeof *wh);
      wd = malloc(kw * sizeof *wd);
      wl = malloc(kw * sizeof *wl);
      if (!wh || !wd || !wl)
        rc = m3__seterr(M3_ENOMEM, "index search: out of memory");
      else if (faiss_Index_search(ix->fx, 1, qn + q * d, (idx_t)kw, wd, wl) != 0)
        rc = m3__seterr(M3_EINTERNAL, "index %s (factory %s): search: %s", ix->path, ix->factory,
                        faiss_msg());
      else
        m = row_hits(wl, wd, kw, wh), hq = wh;
    }
    if (rc == 0)
      for (size_t j = 0; j < k; j++) {
        ids[q * k + j] = j < m ? hq[j].id : UINT64_MAX;
        if (scores) scores[q * k + j] = j < m ? hq[j].score : -INFINITY;
      }
    free(wh);
    free(wd);
    free(wl);
    if (rc) goto unlock;
  }
unlock:
  free(dist);
  free(lab);
  free(h);
  return rc;
}

int m3_index_save(m3_index *ix, uint64_t seqno) {
  if (ix->read_only)
    return m3__seterr(M3_EUNSUPPORTED, "index %s was opened read-only: not saved", ix->path);
  pthread_rwlock_rdlock(&ix->lock);
  pthread_mutex_lock(&ix->meta);
  int rc = save_locked(ix, seqno);
  if (rc == 0) {
    ix->seqno = seqno;
    ix->unsaved = 0;
  }
  pthread_mutex_unlock(&ix->meta);
  pthread_rwlock_unlock(&ix->lock);
  return rc;
}

size_t m3_index_count(m3_index *ix) {
  pthread_rwlock_rdlock(&ix->lock);
  size_t n = (size_t)faiss_Index_ntotal(ix->fx);
  pthread_rwlock_unlock(&ix->lock);
  return n;
}

unsigned m3_index_dim(const m3_index *ix) { return ix->dim; }

/* The index under FAISS's wrappers (IDMap, IDMap2, a PreTransform such as
 * OPQ): the one whose search parameters a call can set. */
static FaissIndex *unwrapped(FaissIndex *fx) {
  for (int depth = 0; fx && depth < 8; depth++) {
    FaissIndexIDMap2 *m2 = faiss_IndexIDMap2_cast(fx);
    FaissIndexIDMap *m = m2 ? NULL : faiss_IndexIDMap_cast(fx);
    FaissIndexPreTransform *pt = faiss_IndexPreTransform_cast(fx);
    if (m2) fx = faiss_IndexIDMap2_sub_index(m2);
    else if (m) fx = faiss_IndexIDMap_sub_index(m);
    else if (pt) fx = faiss_IndexPreTransform_index(pt);
    else break;
  }
  return fx;
}

void m3_index_info_get(m3_index *ix, m3_index_info *out) {
  pthread_rwlock_rdlock(&ix->lock);
  pthread_mutex_lock(&ix->meta);
  out->factory = ix->factory;
  out->dim = ix->dim;
  out->count = (size_t)faiss_Index_ntotal(ix->fx);
  out->seqno = ix->seqno;
  out->unsaved = ix->unsaved;
  out->loaded = ix->loaded;
  out->trained = ix->trained;
  out->reason = ix->reason;
  out->path = ix->path;
  out->skipped = ix->skipped;
  out->tie_scans = __atomic_load_n(&ix->tie_scans, __ATOMIC_RELAXED);
  FaissIndex *top = unwrapped(ix->fx);
  FaissIndexIVF *ivf = top ? faiss_IndexIVF_cast(top) : NULL;
  out->nlist = ivf ? faiss_IndexIVF_nlist(ivf) : 0;
  /* FAISS's C API has no HNSW cast: an HNSW factory that is not the
   * coarse quantizer of an IVF ("IVF4096_HNSW32,Flat") is a graph index. */
  out->takes_ef_search = ivf == NULL && strstr(ix->factory, "HNSW") != NULL;
  pthread_mutex_unlock(&ix->meta);
  pthread_rwlock_unlock(&ix->lock);
}

int m3_index_train_file(m3_store *const *stores, size_t n, const m3_index_options *o,
                        const char *path, int *needed) {
  m3_index_options def;
  if (!o) {
    m3_index_options_init(&def);
    o = &def;
  }
  *needed = 0;
  if (n == 0) return m3__seterr(M3_EINVAL, "trained index %s: no stores to sample", path);
  m3_index *ix = calloc(1, sizeof *ix);
  if (!ix) return m3__seterr(M3_ENOMEM, "index: out of memory");
  int rc = 0;
  char tmp[PATH_MAX + 8];
  ix->dim = m3_store_layout(stores[0])->emb_dim;
  snprintf(ix->factory, sizeof ix->factory, "%s",
           o->factory && o->factory[0] ? o->factory : M3_INDEX_DEFAULT_FACTORY);
  snprintf(ix->path, sizeof ix->path, "%s", path);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  for (size_t i = 1; i < n; i++)
    if (m3_store_layout(stores[i])->emb_dim != ix->dim) {
      rc = m3__seterr(M3_ESHAPE, "trained index %s: store %s has %u-dim embeddings, store %s %u",
                      path, m3_store_dir(stores[i]), m3_store_layout(stores[i])->emb_dim,
                      m3_store_dir(stores[0]), ix->dim);
      goto out;
    }
  if (ix->dim == 0) {
    rc = m3__seterr(M3_EUNSUPPORTED, "store %s keeps no retrieval embeddings", m3_store_dir(stores[0]));
    goto out;
  }
  if (faiss_index_factory(&ix->fx, (int)ix->dim, ix->factory, METRIC_INNER_PRODUCT) != 0) {
    ix->fx = NULL;
    rc = m3__seterr(M3_EINVAL, "index factory '%s' (dim %u): %s", ix->factory, ix->dim, faiss_msg());
    goto out;
  }
  if (faiss_Index_is_trained(ix->fx)) goto out; /* nothing to share */
  *needed = 1;
  if ((rc = train_sampled(ix, stores, n, o->train_sample)) != 0) goto out;
  if (faiss_write_index_fname(ix->fx, tmp) != 0) {
    rc = m3__seterr(M3_EIO, "trained index %s: %s", tmp, faiss_msg());
    goto out;
  }
  int fd = open(tmp, O_RDONLY | O_CLOEXEC);
  if (fd < 0 || fsync(fd) != 0) rc = m3__syserr(errno, "fsync %s", tmp);
  if (fd >= 0) close(fd);
  if (rc == 0 && rename(tmp, path) != 0) rc = m3__syserr(errno, "rename %s to %s", tmp, path);
out:
  if (rc) unlink(tmp);
  if (ix->fx) faiss_Index_free(ix->fx);
  free(ix);
  return rc;
}
