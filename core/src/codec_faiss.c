/*
 * The FAISS side of the codec layer (library m3codec): training codecs,
 * encoding, building decode tables by probing FAISS's sa_decode and checking
 * them against it, and reference decoding. Only the FAISS C API is used
 * (faiss_index_factory, faiss_Index_train, faiss_Index_sa_code_size /
 * sa_encode / sa_decode, faiss_write_index / faiss_read_index); FAISS errors
 * become m3 codes here, with FAISS's message quoted.
 *
 * Workload: training runs once per knowledge base on up to a few hundred
 * thousand vectors (minutes for the paper's quantizer); encoding runs over
 * every memory (2,816 vectors each), so m3_codec_encode batches all vectors
 * that share a codec into one sa_encode call.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>

#include "codec_internal.h"
#include "m3_endian.h"
#include "m3/error.h"
#include "m3/log.h"

#define WHY_CAP 160

/* OpenBLAS threads while FAISS trains with n OpenMP threads (docs/CODECS.md,
 * "Training threads"). */
#define M3__TRAIN_BLAS_THREADS(n) ((int)(n))

static const char *faiss_msg(void) {
  const char *m = faiss_get_last_error();
  if (!m)
    return "(no message)";
  /* FAISS messages carry a long "Error in ... at file:line:" prefix; keep the tail */
  const char *p = strstr(m, "': ");
  return p ? p + 3 : m;
}

static void free_index(void *p) { faiss_Index_free((FaissIndex *)p); }

static const char *role(uint32_t ci) { return (ci & 1) ? "V" : "K"; }

static uint64_t rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The codec's FAISS index, read from the set's bytes on first use. */
static int get_index(m3_codec_set *cs, int ci, FaissIndex **out) {
  int rc = 0;
  m3__codec *c = &cs->codecs[ci];
  pthread_mutex_lock(&cs->lock);
  if (!c->faiss_index) {
    FaissIndex *idx = NULL;
    FILE *f = fmemopen((void *)c->faiss, c->faiss_bytes, "rb");
    if (!f) {
      rc = m3__seterr(M3_ENOMEM, "codec set %s: codec %d (%s): fmemopen failed", cs->name, ci,
                      role((uint32_t)ci));
    } else {
      if (faiss_read_index(f, 0, &idx) != 0)
        rc = m3__seterr(M3_EBADFORMAT, "codec set %s: codec %d (%s): FAISS cannot read its index (%zu bytes): %s",
                        cs->name, ci, role((uint32_t)ci), c->faiss_bytes, faiss_msg());
      fclose(f);
    }
    if (!rc) {
      c->faiss_index = idx;
      cs->faiss_free = free_index;
    }
  }
  *out = c->faiss_index;
  pthread_mutex_unlock(&cs->lock);
  return rc;
}

/*
 * Compare table decode with FAISS's sa_decode on n_rand random codes plus the
 * codes FAISS gives the n_real vectors x. Fills *max_abs, *max_rel. Returns 0
 * when every vector is within tol (relative to its largest component),
 * M3_EUNSUPPORTED with why otherwise, other codes on failures.
 */
static int check_tables(const FaissIndex *idx, const m3__dcodec *c, uint32_t n_rand,
                        uint64_t seed, const float *x, size_t n_real, double tol,
                        double *max_abs, double *max_rel, char *why) {
  int rc = 0;
  const size_t n = n_rand + n_real, cb = c->code_bytes, dim = c->dim;
  uint8_t *codes = calloc(n ? n : 1, cb);
  float *ref = malloc((n ? n : 1) * dim * sizeof(float));
  uint32_t *rows = malloc((c->n_fields ? c->n_fields : 1) * sizeof(uint32_t));
  *max_abs = *max_rel = 0;
  if (!codes || !ref || !rows) {
    rc = m3__seterr(M3_ENOMEM, "table check: out of memory");
    goto out;
  }
  uint64_t s = seed;
  for (size_t i = 0; i < n_rand; i++)
    for (uint32_t f = 0; f < c->n_fields; f++)
      m3__code_put(codes + i * cb, c->fields[f].bit_off, c->fields[f].nbits,
                   (uint32_t)(rng_next(&s) % c->fields[f].count));
  if (n_real && faiss_Index_sa_encode(idx, (idx_t)n_real, x, codes + n_rand * cb) != 0) {
    rc = m3__seterr(M3_EINTERNAL, "table check: FAISS sa_encode failed: %s", faiss_msg());
    goto out;
  }
  if (faiss_Index_sa_decode(idx, (idx_t)n, codes, ref) != 0) {
    snprintf(why, WHY_CAP, "FAISS sa_decode refused the check codes: %s", faiss_msg());
    rc = M3_EUNSUPPORTED;
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    const char *what = i < n_rand ? "random" : "encoded";
    if (m3__code_rows(codes + i * cb, (uint32_t)cb, c->fields, c->n_fields, rows)) {
      snprintf(why, WHY_CAP, "%s code %zu holds a field value outside the layout's range", what,
               i < n_rand ? i : i - n_rand);
      rc = M3_EUNSUPPORTED;
      goto out;
    }
    double dmax = 0, rmax = 0;
    for (uint32_t j = 0; j < dim; j++) {
      float t = m3__tdec_elem(c->bias, c->tables, rows, c->n_fields, (uint32_t)dim, j);
      double r = ref[i * dim + j], diff = t - r;
      if (!(diff == diff)) /* NaN */
        diff = 1e300;
      if (diff < 0)
        diff = -diff;
      if (diff > dmax)
        dmax = diff;
      if ((r < 0 ? -r : r) > rmax)
        rmax = r < 0 ? -r : r;
    }
    double rel = rmax > 0 ? dmax / rmax : (dmax > 0 ? 1e300 : 0);
    if (dmax > *max_abs)
      *max_abs = dmax;
    if (rel > *max_rel)
      *max_rel = rel;
    if (rel > tol && rc == 0) {
      snprintf(why, WHY_CAP, "table decode differs from FAISS sa_decode by %.3g relative (%.3g abs) on %s code %zu",
               rel, dmax, what, i < n_rand ? i : i - n_rand);
      rc = M3_EUNSUPPORTED;
    }
  }
out:
  free(rows);
  free(ref);
  free(codes);
  return rc;
}

/* One trained codec, before it goes into a set file. */
typedef struct trained {
  FaissIndex *idx;
  char *blob;   /* serialized index */
  size_t blob_len;
  size_t code_bytes;
  m3__codec_field *fields; /* (M3_CODEC_MAX_FIELDS) */
  uint32_t n_fields;       /* 0: no tables */
  float *dec;              /* probe decodes: bias (dim) then tables (rows, dim) */
  double check_abs;
  char why[WHY_CAP];
} trained;

static void trained_free(trained *t) {
  if (t->idx)
    faiss_Index_free(t->idx);
  free(t->blob);
  free(t->fields);
  free(t->dec);
  memset(t, 0, sizeof *t);
}

/* Contexts the tables are probed in: the codes of the training mean and of
 * some training vectors. */
#define N_CONTEXTS 8

/*
 * Build tables for t by probing; on M3_EUNSUPPORTED t->why says why.
 *
 * In context k (a real code c_k), the probe (f, v) is c_k with field f set to
 * v; table row T_f[v] is the mean over contexts of dec(probe f,v) -
 * dec(probe f,r_f), where r_f is field f of the training mean's code, so
 * T_f[r_f] = 0 and bias = mean_k (dec(c_k) - sum_f T_f[c_k,f]) is a typical
 * vector. Probing around real codes keeps every decoded vector (and so
 * FAISS's float rounding in it) at the data's scale: around the all-zero code
 * a heavy-tailed SQ or PQ codebook decodes to extreme vectors whose rounding
 * alone exceeds the 1e-5 check. Sums are in double.
 */
static int build_tables(trained *t, const char *factory, unsigned dim, const float *x, size_t n,
                        const m3_codec_train_opts *o, double tol) {
  int rc = 0;
  uint8_t *probe = NULL, *ctx = NULL;
  float *dec = NULL, *mean = NULL;
  double *acc = NULL, *bacc = NULL;
  uint32_t nf = 0, cb = 0, ref[M3_CODEC_MAX_FIELDS], cv[M3_CODEC_MAX_FIELDS];
  rc = m3__codec_layout(factory, dim, t->fields, &nf, &cb, t->why, sizeof t->why);
  if (rc)
    return rc;
  if (cb != t->code_bytes) {
    snprintf(t->why, sizeof t->why, "the layout read off '%s' makes %u-byte codes, FAISS says %zu",
             factory, cb, t->code_bytes);
    return M3_EUNSUPPORTED;
  }
  size_t rows = 0;
  for (uint32_t f = 0; f < nf; f++)
    rows += t->fields[f].count;
  if ((rows + 1) * dim > M3_CODEC_MAX_TABLE_FLOATS) {
    snprintf(t->why, sizeof t->why, "decode tables would take %zu MiB (limit %zu)",
             (rows + 1) * dim * 4 >> 20, M3_CODEC_MAX_TABLE_FLOATS * 4 >> 20);
    return M3_EUNSUPPORTED;
  }
  const size_t cbz = t->code_bytes;
  const size_t K = n + 1 < N_CONTEXTS ? n + 1 : N_CONTEXTS;
  probe = malloc(rows * cbz);
  ctx = calloc(K, cbz);
  dec = malloc(rows * dim * sizeof(float));
  mean = calloc(dim, sizeof(float));
  acc = calloc(rows * dim, sizeof(double));
  bacc = calloc(dim, sizeof(double));
  t->dec = malloc((rows + 1) * dim * sizeof(float));
  if (!probe || !ctx || !dec || !mean || !acc || !bacc || !t->dec) {
    rc = m3__seterr(M3_ENOMEM, "decode tables: out of memory for %zu rows", rows);
    goto out;
  }
  {
    double *m = bacc; /* bacc doubles as the mean's accumulator */
    for (size_t i = 0; i < n; i++)
      for (unsigned j = 0; j < dim; j++)
        m[j] += x[i * dim + j];
    for (unsigned j = 0; j < dim; j++) {
      mean[j] = (float)(m[j] / (double)n);
      m[j] = 0;
    }
  }
  if (faiss_Index_sa_encode(t->idx, 1, mean, ctx) != 0 ||
      (K > 1 && faiss_Index_sa_encode(t->idx, (idx_t)(K - 1), x, ctx + cbz) != 0)) {
    rc = m3__seterr(M3_EINTERNAL, "decode tables: FAISS sa_encode of the probe contexts failed: %s",
                    faiss_msg());
    goto out;
  }
  if (m3__code_rows(ctx, (uint32_t)cbz, t->fields, nf, ref)) {
    snprintf(t->why, sizeof t->why, "a FAISS code holds a field value outside the layout read off '%s'",
             factory);
    rc = M3_EUNSUPPORTED;
    goto out;
  }
  for (size_t k = 0; k < K; k++) {
    const uint8_t *c = ctx + k * cbz;
    if (m3__code_rows(c, (uint32_t)cbz, t->fields, nf, cv)) {
      snprintf(t->why, sizeof t->why, "a FAISS code holds a field value outside the layout read off '%s'",
               factory);
      rc = M3_EUNSUPPORTED;
      goto out;
    }
    for (uint32_t f = 0; f < nf; f++) {
      const m3__codec_field *fd = &t->fields[f];
      for (uint32_t v = 0; v < fd->count; v++) {
        uint8_t *p = probe + ((size_t)fd->row0 + v) * cbz;
        memcpy(p, c, cbz);
        for (uint32_t b = 0; b < fd->nbits; b++) /* clear the field, then set v */
          p[(fd->bit_off + b) >> 3] &= (uint8_t) ~(1u << ((fd->bit_off + b) & 7));
        m3__code_put(p, fd->bit_off, fd->nbits, v);
      }
    }
    if (faiss_Index_sa_decode(t->idx, (idx_t)rows, probe, dec) != 0) {
      snprintf(t->why, sizeof t->why, "FAISS sa_decode refused the probe codes: %s", faiss_msg());
      rc = M3_EUNSUPPORTED;
      goto out;
    }
    for (uint32_t f = 0; f < nf; f++) {
      const m3__codec_field *fd = &t->fields[f];
      const float *r = dec + (size_t)ref[f] * dim;
      for (uint32_t v = 0; v < fd->count; v++) {
        const float *p = dec + ((size_t)fd->row0 + v) * dim;
        double *a = acc + ((size_t)fd->row0 + v) * dim;
        for (unsigned j = 0; j < dim; j++)
          a[j] += (double)p[j] - (double)r[j];
      }
    }
    /* dec(c_k) is the probe of field 0 at its own value; the bias term needs
     * the final tables, so keep sum_k dec(c_k) and the rows c_k selects */
    const float *self = dec + (size_t)cv[0] * dim;
    for (unsigned j = 0; j < dim; j++)
      bacc[j] += self[j];
  }
  /* tables = acc / K; bias = mean_k dec(c_k) - mean_k sum_f T_f[c_k,f] */
  for (size_t r = 0; r < rows * dim; r++)
    acc[r] /= (double)K;
  for (size_t k = 0; k < K; k++) {
    m3__code_rows(ctx + k * cbz, (uint32_t)cbz, t->fields, nf, cv);
    for (uint32_t f = 0; f < nf; f++)
      for (unsigned j = 0; j < dim; j++)
        bacc[j] -= acc[(size_t)cv[f] * dim + j];
  }
  for (unsigned j = 0; j < dim; j++)
    t->dec[j] = (float)(bacc[j] / (double)K);
  for (size_t r = 0; r < rows * dim; r++)
    t->dec[dim + r] = (float)acc[r];
  {
    m3__dcodec d = {M3_CODEC_FAISS, dim, (uint32_t)t->code_bytes, nf, (uint32_t)rows, t->fields,
                    t->dec, t->dec + dim};
    double max_rel;
    size_t n_real = n < 4096 ? n : 4096;
    rc = check_tables(t->idx, &d, o->check_codes ? o->check_codes : 4096, o->seed ^ 0x5eed, x,
                      n_real, tol, &t->check_abs, &max_rel, t->why);
    if (rc)
      goto out;
  }
  t->n_fields = nf;
out:
  free(bacc);
  free(acc);
  free(mean);
  free(dec);
  free(ctx);
  free(probe);
  return rc;
}

/* DIR/codec-<i>-<hash of factory, dim and sample size>.faiss */
static void checkpoint_path(char *out, size_t cap, const char *dir, uint32_t ci,
                            const char *factory, unsigned dim, size_t n) {
  uint64_t h = m3__fp_update(M3__FP_INIT, factory, strlen(factory));
  uint64_t w[2] = {dim, n};
  h = m3__fp_final(m3__fp_update(h, w, sizeof w), strlen(factory) + sizeof w);
  snprintf(out, cap, "%s/codec-%u-%016llx.faiss", dir, ci, (unsigned long long)h);
}

/* Read a checkpointed index; 1 when there was one. */
static int checkpoint_read(const char *path, unsigned dim, FaissIndex **idx) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return 0;
  FaissIndex *x = NULL;
  int ok = faiss_read_index(f, 0, &x) == 0 && x && faiss_Index_is_trained(x) &&
           faiss_Index_d(x) == (int)dim;
  fclose(f);
  if (!ok) {
    if (x)
      faiss_Index_free(x);
    M3_WARN("codec", "checkpoint %s does not hold a trained %u-dim index: training again", path,
            dim);
    return 0;
  }
  *idx = x;
  return 1;
}

static int checkpoint_write(const char *path, const void *blob, size_t len) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  int ok = f && fwrite(blob, 1, len, f) == len && fflush(f) == 0 && fsync(fileno(f)) == 0;
  if (f && fclose(f) != 0)
    ok = 0;
  if (!ok || rename(tmp, path) != 0) {
    unlink(tmp);
    return m3__seterr(M3_EIO, "codec checkpoint %s: cannot write it", path);
  }
  return 0;
}

static int train_one(const m3_codec_train_opts *o, uint32_t ci, uint32_t n_codecs,
                     const char *factory, const m3_codec_sample *sm, trained *t) {
  int rc = 0;
  FILE *mem = NULL;
  const unsigned dim = o->head_dim;
  double tol = o->check_tol > 0 ? o->check_tol : 1e-5;
  char ckpt[4096] = "";
  t->fields = calloc(M3_CODEC_MAX_FIELDS, sizeof *t->fields);
  if (!t->fields)
    return m3__seterr(M3_ENOMEM, "codec %u: out of memory", ci);
  if (!sm || !sm->x || sm->n == 0) {
    rc = m3__seterr(M3_EINVAL, "codec %u (%s) '%s': no training vectors", ci, role(ci), factory);
    goto out;
  }
  size_t need, want;
  m3_codec_train_sample_size(factory, &need, &want);
  if (sm->n < need) {
    rc = m3__seterr(M3_EINVAL, "codec %u (%s) '%s': %zu training vectors, but its largest k-means has %zu centroids: give at least %zu (FAISS asks for %zu, 39 per centroid)",
                    ci, role(ci), factory, sm->n, need, need, want);
    goto out;
  }
  if (sm->n < want)
    M3_WARN("codec", "codec %u (%s) '%s': %zu training vectors, FAISS asks for %zu (39 per centroid of its %zu-centroid k-means): the codebooks will be undertrained",
            ci, role(ci), factory, sm->n, want, need);
  if (o->checkpoint_dir)
    checkpoint_path(ckpt, sizeof ckpt, o->checkpoint_dir, ci, factory, dim, sm->n);
  double t0 = now_s();
  if (ckpt[0] && checkpoint_read(ckpt, dim, &t->idx)) {
    M3_INFO("codec", "codec %u of %u (%s) '%s': read back from checkpoint %s", ci + 1, n_codecs,
            role(ci), factory, ckpt);
  } else {
    if (faiss_index_factory(&t->idx, (int)dim, factory, METRIC_L2) != 0) {
      t->idx = NULL;
      rc = m3__seterr(M3_EINVAL, "codec %u (%s): FAISS index_factory refused '%s' for %u dims: %s",
                      ci, role(ci), factory, dim, faiss_msg());
      goto out;
    }
    if (o->verbose)
      M3_INFO("codec", "codec %u of %u (%s) '%s': training on %zu vectors (largest k-means %zu centroids)%s%s",
              ci + 1, n_codecs, role(ci), factory, sm->n, need, ckpt[0] ? ", checkpoint " : "", ckpt);
    if (faiss_Index_train(t->idx, (idx_t)sm->n, sm->x) != 0) {
      rc = m3__seterr(M3_EINVAL, "codec %u (%s) '%s': FAISS training on %zu vectors failed: %s",
                      ci, role(ci), factory, sm->n, faiss_msg());
      goto out;
    }
    if (o->verbose)
      M3_INFO("codec", "codec %u of %u (%s): FAISS trained it in %.1f s; building decode tables",
              ci + 1, n_codecs, role(ci), now_s() - t0);
  }
  size_t csz = 0; /* FAISS 1.7.3's C API needs the install-deps patch to fill it */
  if (faiss_Index_sa_code_size(t->idx, &csz) != 0 || csz == 0 || csz > 65535) {
    rc = m3__seterr(M3_EINVAL, "codec %u (%s) '%s': FAISS reports a code size of %zu bytes (%s)",
                    ci, role(ci), factory, csz, faiss_msg());
    goto out;
  }
  t->code_bytes = csz;
  mem = open_memstream(&t->blob, &t->blob_len);
  if (!mem || faiss_write_index(t->idx, mem) != 0) {
    rc = m3__seterr(M3_EINTERNAL, "codec %u (%s) '%s': FAISS write_index failed: %s", ci, role(ci),
                    factory, faiss_msg());
    goto out;
  }
  fclose(mem);
  mem = NULL;
  if (ckpt[0] && (rc = checkpoint_write(ckpt, t->blob, t->blob_len)) != 0)
    goto out;
  int trc = build_tables(t, factory, dim, sm->x, sm->n, o, tol);
  if (trc && trc != M3_EUNSUPPORTED) {
    rc = trc;
    goto out;
  }
  if (trc) {
    t->n_fields = 0;
    if (!o->allow_no_tables) {
      rc = m3__seterr(M3_EUNSUPPORTED, "codec %u (%s) '%s': no decode tables: %s", ci, role(ci),
                      factory, t->why);
      goto out;
    }
    M3_WARN("codec", "codec %u (%s) '%s' has no decode tables: %s", ci, role(ci), factory, t->why);
  }
  if (o->verbose)
    M3_INFO("codec", "codec %u (%s) trained in %.1f s: %zu-byte codes, tables %s (max abs diff %.3g)",
            ci, role(ci), now_s() - t0, csz, t->n_fields ? "checked" : "none", t->check_abs);
out:
  if (mem)
    fclose(mem);
  return rc;
}

/*
 * Size FAISS's thread teams for training: OpenMP's (FAISS's loops) to n and
 * OpenBLAS's (its sgemm calls) to M3__TRAIN_BLAS_THREADS(n); saved[] keeps
 * what they were (restored by threads_restore). Looked up, not linked, as the server
 * does: whatever OpenMP and BLAS FAISS brought in. n 0: nothing changes.
 */
static void threads_set(unsigned n, int saved[2]) {
  saved[0] = saved[1] = 0;
  if (!n)
    return;
  int (*omp_get)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "omp_get_max_threads");
  void (*omp_set)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
  int (*blas_get)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "openblas_get_num_threads");
  void (*blas_set)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "openblas_set_num_threads");
  if (omp_get && omp_set) {
    saved[0] = omp_get();
    omp_set((int)n);
  }
  if (blas_get && blas_set) {
    saved[1] = blas_get();
    blas_set(M3__TRAIN_BLAS_THREADS(n));
  }
}

static void threads_restore(const int saved[2]) {
  void (*omp_set)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
  void (*blas_set)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "openblas_set_num_threads");
  if (saved[0] > 0 && omp_set)
    omp_set(saved[0]);
  if (saved[1] > 0 && blas_set)
    blas_set(saved[1]);
}

int m3_codec_set_train(const m3_codec_train_opts *o, const m3_codec_sample *samples,
                       m3_codec_set **out) {
  int rc = 0;
  int saved[2] = {0, 0};
  *out = NULL;
  int kind = o->kind ? o->kind : M3_CODEC_FAISS;
  if (o->head_dim < 1 || o->head_dim > M3_CODEC_MAX_DIM)
    return m3__seterr(M3_EINVAL, "codec train: head_dim %u out of range 1..%d", o->head_dim,
                      M3_CODEC_MAX_DIM);
  if (kind != M3_CODEC_FAISS)
    return m3_codec_set_create_raw(kind, o->head_dim, out);
  const uint32_t n = o->n_layers ? 2u * o->n_layers : 2u;
  const char *fk = o->factory_k ? o->factory_k : M3_CODEC_DEFAULT_FACTORY;
  const char *fv = o->factory_v ? o->factory_v : fk;
  trained *t = calloc(n, sizeof *t);
  m3__codec_in *in = calloc(n, sizeof *in);
  if (!t || !in) {
    rc = m3__seterr(M3_ENOMEM, "codec train: out of memory");
    goto out;
  }
  threads_set(o->threads, saved);
  for (uint32_t i = 0; i < n; i++) {
    if ((rc = train_one(o, i, n, (i & 1) ? fv : fk, samples ? &samples[i] : NULL, &t[i])) != 0)
      goto out;
    if (t[i].code_bytes != t[0].code_bytes) {
      rc = m3__seterr(M3_EINVAL, "codec train: keys' '%s' makes %zu-byte codes, values' '%s' %zu: a record has one code size",
                      fk, t[0].code_bytes, fv, t[i].code_bytes);
      goto out;
    }
    in[i].kind = M3_CODEC_FAISS;
    in[i].dim = o->head_dim;
    in[i].code_bytes = (uint16_t)t[i].code_bytes;
    in[i].factory = (i & 1) ? fv : fk;
    in[i].n_fields = t[i].n_fields;
    in[i].fields = t[i].fields;
    in[i].bias = t[i].dec;
    in[i].tables = t[i].dec ? t[i].dec + o->head_dim : NULL;
    in[i].faiss = t[i].blob;
    in[i].faiss_bytes = t[i].blob_len;
    in[i].check_abs = t[i].check_abs;
  }
  if ((rc = m3__codec_set_build(o->n_layers, in, n, "<trained>", out)) != 0)
    goto out;
  for (uint32_t i = 0; i < n; i++) {
    if (!t[i].n_fields)
      m3__codec_set_no_tables(*out, i, t[i].why);
    (*out)->codecs[i].faiss_index = t[i].idx; /* the set owns the trained index now */
    t[i].idx = NULL;
  }
  (*out)->faiss_free = free_index;
out:
  threads_restore(saved);
  if (t)
    for (uint32_t i = 0; i < n; i++)
      trained_free(&t[i]);
  free(t);
  free(in);
  return rc;
}

static int codec_of(const m3_codec_set *cs, unsigned layer, int kv) {
  int ci = m3__codec_index(cs, layer, kv);
  if (ci < 0)
    m3__seterr(M3_EINVAL, "codec set %s: no codec for layer %u kv %d", cs->name, layer, kv);
  return ci;
}

/* ---- the FAISS encoder (m3__enc_faiss) ---- */

static int faiss_prepare(m3_codec_set *cs, int ci, char *why, size_t cap) {
  FaissIndex *idx;
  int rc = get_index(cs, ci, &idx);
  if (rc)
    snprintf(why, cap, "%s", m3_errmsg());
  return rc;
}

static int faiss_encode(m3_codec_set *cs, int ci, const float *x, size_t n, uint8_t *codes) {
  FaissIndex *idx;
  int rc = get_index(cs, ci, &idx);
  if (rc)
    return rc;
  if (n && faiss_Index_sa_encode(idx, (idx_t)n, x, codes) != 0)
    return m3__seterr(M3_EINTERNAL, "codec set %s: codec %d (%s): FAISS sa_encode of %zu vectors failed: %s",
                      cs->name, ci, role((uint32_t)ci), n, faiss_msg());
  return 0;
}

const m3__encoder m3__enc_faiss = {"faiss", faiss_prepare, faiss_encode};

int m3_codec_decode_vectors_faiss(m3_codec_set *cs, unsigned layer, int kv, const uint8_t *codes,
                                  size_t n, float *out) {
  int ci = codec_of(cs, layer, kv);
  if (ci < 0)
    return M3_EINVAL;
  if (cs->kind != M3_CODEC_FAISS)
    return m3_codec_decode_vectors(cs, layer, kv, codes, n, M3_DTYPE_F32, out);
  FaissIndex *idx;
  int rc = get_index(cs, ci, &idx);
  if (rc)
    return rc;
  if (n && faiss_Index_sa_decode(idx, (idx_t)n, codes, out) != 0)
    return m3__seterr(M3_EINTERNAL, "codec set %s: codec %d (%s): FAISS sa_decode failed: %s",
                      cs->name, ci, role((uint32_t)ci), faiss_msg());
  return 0;
}

int m3_codec_set_verify(m3_codec_set *cs, uint32_t n_codes, uint64_t seed, double tol,
                        double *max_abs, double *max_rel) {
  int rc = 0;
  double wa = 0, wr = 0;
  if (tol <= 0)
    tol = 1e-5;
  for (uint32_t ci = 0; ci < cs->n_codecs && cs->kind == M3_CODEC_FAISS; ci++) {
    const m3__codec *c = &cs->codecs[ci];
    if (!(c->flags & M3_CODEC_HAS_TABLES))
      continue;
    FaissIndex *idx;
    if ((rc = get_index(cs, (int)ci, &idx)) != 0)
      goto out;
    m3__dcodec d = m3__codec_dview(c);
    double a, r;
    char why[WHY_CAP] = "";
    rc = check_tables(idx, &d, n_codes ? n_codes : 4096, seed + ci, NULL, 0, tol, &a, &r, why);
    if (a > wa)
      wa = a;
    if (r > wr)
      wr = r;
    if (rc == M3_EUNSUPPORTED) {
      rc = m3__seterr(M3_ECORRUPT, "codec set %s: codec %u (%s) '%s': decode tables fail the check: %s",
                      cs->name, ci, role(ci), c->factory, why);
      goto out;
    }
    if (rc)
      goto out;
  }
out:
  if (max_abs)
    *max_abs = wa;
  if (max_rel)
    *max_rel = wr;
  return rc;
}
