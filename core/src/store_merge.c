/*
 * m3_store_merge: partial stores (one per encoder of a fleet) into S shard
 * stores; contract in m3/store.h. For each shard: the shard's chunks of all
 * inputs are listed from their catalogs and sorted by id, duplicates are
 * checked, the record bytes are copied into fresh segments in id order, the
 * catalog entries go in as one SST file, and the finished directory is
 * renamed into place.
 *
 * Workload: 10^6..10^7 records a shard; memory is one entry (48 bytes) per
 * record of the shard being built; I/O is one sequential copy of the
 * shard's record bytes (a clone where the filesystem can) plus catalog
 * reads of texts and embeddings.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "catalog.h"
#include "m3/embed.h"
#include "m3/error.h"
#include "m3/shard.h"
#include "m3/store.h"
#include "m3_endian.h"
#include "segment.h"

#define DEFAULT_SEGMENT_BYTES (1ull << 30)

typedef struct input {
  const char *dir;
  m3_store *st;
  int *fds; /* (nfds) by segment id, -1: not open */
  uint32_t nfds;
} input;

typedef struct entry {
  uint64_t id;
  uint32_t in; /* input index */
  m3_location loc;
} entry;

typedef struct list {
  entry *v;
  size_t n, cap;
  uint32_t shard, shards, in;
} list;

typedef struct merge {
  input *ins;
  size_t n_in;
  const char *outdir;
  m3_merge_options o;
  m3_merge_report rep;
  int no_cfr; /* copy_file_range refused here: plain copies */
} merge;

static int add_entry(void *ud, uint64_t id, const m3_location *loc) {
  list *l = ud;
  if (m3_shard_of(id, l->shards) != l->shard) return 0;
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 4096;
    entry *v = realloc(l->v, cap * sizeof *v);
    if (v == NULL) return m3__seterr(M3_ENOMEM, "merge: out of memory listing chunks");
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n++] = (entry){id, l->in, *loc};
  return 0;
}

static int cmp_entry(const void *a, const void *b) {
  const entry *x = a, *y = b;
  if (x->id != y->id) return x->id < y->id ? -1 : 1;
  return x->in < y->in ? -1 : x->in > y->in;
}

static int src_fd(merge *m, uint32_t in, uint32_t seg, int *fd) {
  input *p = &m->ins[in];
  if (seg >= p->nfds) {
    uint32_t n = seg + 16;
    int *v = realloc(p->fds, n * sizeof *v);
    if (v == NULL) return m3__seterr(M3_ENOMEM, "merge: out of memory");
    for (uint32_t i = p->nfds; i < n; i++) v[i] = -1;
    p->fds = v;
    p->nfds = n;
  }
  if (p->fds[seg] < 0) {
    char path[4200];
    m3_store_segment_path(p->st, seg, path, sizeof path);
    if ((p->fds[seg] = open(path, O_RDONLY | O_CLOEXEC)) < 0)
      return m3__syserr(errno, "merge: open %s", path);
  }
  *fd = p->fds[seg];
  return 0;
}

/* Copy len bytes: copy_file_range (a clone where the filesystem can), else
 * pread/pwrite. */
static int copy_bytes(merge *m, int in, const char *what, uint64_t ioff, int out, uint64_t ooff,
                      size_t len) {
  while (len > 0 && !m->no_cfr && !m->o.copy) {
    loff_t a = (loff_t)ioff, b = (loff_t)ooff;
    ssize_t k = copy_file_range(in, &a, out, &b, len, 0);
    if (k > 0) {
      ioff += (uint64_t)k, ooff += (uint64_t)k, len -= (size_t)k;
      continue;
    }
    if (k == 0) return m3__seterr(M3_ECORRUPT, "merge: %s ends before its record", what);
    if (errno == EINTR) continue;
    if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
      return m3__syserr(errno, "merge: copy from %s", what);
    m->no_cfr = 1;
  }
  char buf[65536];
  while (len > 0) {
    size_t c = len < sizeof buf ? len : sizeof buf;
    ssize_t k = pread(in, buf, c, (off_t)ioff);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) return m3__syserr(errno, "merge: read %s", what);
    if (k == 0) return m3__seterr(M3_ECORRUPT, "merge: %s ends before its record", what);
    if (pwrite(out, buf, (size_t)k, (off_t)ooff) != k)
      return m3__syserr(errno ? errno : EIO, "merge: write shard segment");
    ioff += (uint64_t)k, ooff += (uint64_t)k, len -= (size_t)k;
  }
  return 0;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *f) {
  (void)st, (void)flag, (void)f;
  return remove(p) ? errno : 0;
}

static int rm_tree(const char *dir) {
  struct stat st;
  if (lstat(dir, &st) != 0) return 0;
  int e = nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  return e ? m3__syserr(e > 0 ? e : errno, "merge: remove %s", dir) : 0;
}

/* Same content: memory bytes, text and embedding. */
static int same_content(merge *m, const entry *a, const entry *b, size_t emb_dim, float *ea,
                        float *eb) {
  if (a->loc.mem_len != b->loc.mem_len || a->loc.rec_len != b->loc.rec_len ||
      a->loc.mem_crc != b->loc.mem_crc || a->loc.text_crc != b->loc.text_crc)
    return 0;
  if (emb_dim == 0) return 1;
  int ra = m3_store_get_embedding(m->ins[a->in].st, a->id, ea);
  int rb = m3_store_get_embedding(m->ins[b->in].st, b->id, eb);
  if (ra != rb) return 0;
  return ra != 0 || memcmp(ea, eb, emb_dim * sizeof *ea) == 0;
}

/* Drop identical duplicates (keep the first input's); refuse different ones. */
static int dedupe(merge *m, list *l) {
  size_t emb_dim = m3_store_layout(m->ins[0].st)->emb_dim;
  float *ea = calloc(emb_dim ? emb_dim : 1, sizeof *ea), *eb = calloc(emb_dim ? emb_dim : 1, sizeof *eb);
  int rc = 0;
  if (!ea || !eb) {
    rc = m3__seterr(M3_ENOMEM, "merge: out of memory");
    goto out;
  }
  size_t w = 0;
  for (size_t i = 0; i < l->n; i++) {
    if (w > 0 && l->v[w - 1].id == l->v[i].id) {
      const entry *a = &l->v[w - 1], *b = &l->v[i];
      if (!same_content(m, a, b, emb_dim, ea, eb)) {
        rc = m3__seterr(M3_EEXIST,
                        "chunk %llu: store %s and store %s hold different content (memory crc "
                        "%08x vs %08x, text crc %08x vs %08x, or the embedding)",
                        (unsigned long long)a->id, m->ins[a->in].dir, m->ins[b->in].dir,
                        a->loc.mem_crc, b->loc.mem_crc, a->loc.text_crc, b->loc.text_crc);
        goto out;
      }
      m->rep.duplicates++;
      continue;
    }
    l->v[w++] = l->v[i];
  }
  l->n = w;
out:
  free(ea);
  free(eb);
  return rc;
}

/* The first input's own files beside its store (codec, manifest, tokenizer). */
static int copy_side_files(merge *m, const char *dst) {
  DIR *d = opendir(m->ins[0].dir);
  if (d == NULL) return m3__syserr(errno, "merge: open %s", m->ins[0].dir);
  int rc = 0;
  for (struct dirent *e; rc == 0 && (e = readdir(d)) != NULL;) {
    uint32_t id;
    if (e->d_name[0] == '.' || m3__segment_parse_name(e->d_name, &id) ||
        !strcmp(e->d_name, "slice.json"))
      continue;
    char from[4400], to[4400];
    snprintf(from, sizeof from, "%s/%s", m->ins[0].dir, e->d_name);
    snprintf(to, sizeof to, "%s/%s", dst, e->d_name);
    struct stat st;
    if (stat(from, &st) != 0 || !S_ISREG(st.st_mode)) continue;
    int in = open(from, O_RDONLY | O_CLOEXEC);
    int out = in < 0 ? -1 : open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (in < 0 || out < 0) rc = m3__syserr(errno, "merge: copy %s to %s", from, to);
    else if ((rc = copy_bytes(m, in, from, 0, out, 0, (size_t)st.st_size)) == 0 && fsync(out))
      rc = m3__syserr(errno, "merge: fsync %s", to);
    if (in >= 0) close(in);
    if (out >= 0) close(out);
  }
  closedir(d);
  return rc;
}

typedef struct segs {
  uint32_t *id;
  uint64_t *end;
  size_t n;
} segs;

/* Record bytes of l into fresh segments of the store at dir; l's locations
 * become the new ones. */
static int write_segments(merge *m, const char *dir, const m3_ident *ident, uint32_t first,
                          list *l, segs *out) {
  m3_segment seg = {.fd = -1, .dfd = -1};
  int rc = 0, open_seg = 0;
  uint32_t next = first;
  uint64_t off = 0;
  for (size_t i = 0; i <= l->n; i++) {
    uint64_t padded = i < l->n ? m3__round_up(l->v[i].loc.rec_len, ident->align) : 0;
    if (open_seg && (i == l->n || (off + padded > m->o.segment_bytes && off > ident->align))) {
      if (ftruncate(seg.fd, (off_t)off) != 0 || fdatasync(seg.fd) != 0) {
        rc = m3__syserr(errno, "merge: sync segment %u of %s", seg.id, dir);
        goto out;
      }
      out->id[out->n] = seg.id;
      out->end[out->n++] = off;
      m3__segment_close(&seg);
      open_seg = 0;
    }
    if (i == l->n) break;
    if (!open_seg) {
      uint32_t *ni = realloc(out->id, (out->n + 1) * sizeof *ni);
      if (ni) out->id = ni;
      uint64_t *ne = ni ? realloc(out->end, (out->n + 1) * sizeof *ne) : NULL;
      if (ne) out->end = ne;
      if (!ni || !ne) {
        rc = m3__seterr(M3_ENOMEM, "merge: out of memory");
        goto out;
      }
      if ((rc = m3__segment_create(dir, next++, ident, 0, &seg)) != 0) goto out;
      open_seg = 1;
      off = seg.size;
    }
    entry *e = &l->v[i];
    int fd = -1;
    char what[4400];
    if ((rc = src_fd(m, e->in, e->loc.segment, &fd)) != 0) goto out;
    m3_store_segment_path(m->ins[e->in].st, e->loc.segment, what, sizeof what);
    if ((rc = copy_bytes(m, fd, what, e->loc.offset, seg.fd, off, e->loc.rec_len)) != 0) goto out;
    e->loc.segment = seg.id;
    e->loc.offset = off;
    off += padded;
    m->rep.bytes += e->loc.rec_len;
  }
out:
  if (open_seg) m3__segment_close(&seg);
  return rc;
}

/* The catalog side, the one place that writes catalog entries: batches of
 * INGEST_BATCH entries, each one sorted SST file ingested (m3__catalog_ingest,
 * the store's bulk path), texts and embeddings read from the inputs; then
 * the segments and the next segment id in one write batch. */
#define INGEST_BATCH 65536

static int write_catalog(merge *m, m3_catalog *cat, const char *dir, const list *l,
                         const segs *sg) {
  char path[4200];
  size_t emb_dim = m3_store_layout(m->ins[0].st)->emb_dim;
  size_t cap = l->n < INGEST_BATCH ? l->n : INGEST_BATCH;
  m3__chunk_entry *v = calloc(cap ? cap : 1, sizeof *v);
  char **texts = calloc(cap ? cap : 1, sizeof *texts);
  uint8_t *raw = calloc(cap ? cap : 1, 4 * (emb_dim ? emb_dim : 1));
  float *emb = calloc(emb_dim ? emb_dim : 1, sizeof *emb);
  m3__wbatch *b = NULL;
  int rc = 0;
  if (!v || !texts || !raw || !emb) {
    rc = m3__seterr(M3_ENOMEM, "merge: out of memory");
    goto out;
  }
  for (size_t base = 0; base < l->n && rc == 0; base += cap) {
    size_t n = l->n - base < cap ? l->n - base : cap;
    for (size_t i = 0; i < n && rc == 0; i++) {
      const entry *e = &l->v[base + i];
      m3_store *st = m->ins[e->in].st;
      v[i] = (m3__chunk_entry){.id = e->id, .loc = e->loc};
      free(texts[i]);
      texts[i] = NULL;
      if ((rc = m3_store_get_text(st, e->id, &texts[i], &v[i].text_len)) != 0) break;
      v[i].text = texts[i];
      if (emb_dim == 0) continue;
      rc = m3_store_get_embedding(st, e->id, emb);
      if (rc == M3_ENOTFOUND) {
        rc = 0;
        continue;
      }
      uint8_t *r = raw + i * 4 * emb_dim;
      for (size_t k = 0; k < emb_dim; k++) {
        uint32_t bits;
        memcpy(&bits, &emb[k], 4);
        m3__st32(r + 4 * k, bits);
      }
      v[i].emb = r;
      v[i].emb_bytes = 4 * emb_dim;
    }
    snprintf(path, sizeof path, "%s/merge-%zu.sst", dir, base / cap);
    if (rc == 0) rc = m3__catalog_ingest(cat, path, v, n);
  }
  if (rc) goto out;
  b = m3__batch_new();
  uint32_t next = 1;
  for (size_t i = 0; i < sg->n; i++) {
    m3__batch_put_segment(b, sg->id[i], sg->end[i]);
    next = sg->id[i] + 1;
  }
  m3__batch_put_next_seg(b, next);
  rc = m3__catalog_commit(cat, b, 1);
out:
  m3__batch_free(b);
  for (size_t i = 0; texts && i < cap; i++) free(texts[i]);
  free(texts);
  free(v);
  free(raw);
  free(emb);
  return rc;
}

static int count_records(void *ud, uint64_t id, const m3_location *loc) {
  (void)id, (void)loc;
  ++*(uint64_t *)ud;
  return 0;
}

static int build_shard(merge *m, uint32_t s, uint64_t *records) {
  char fin[4096], tmp[4096], cpath[4200];
  snprintf(fin, sizeof fin, "%s/shard-%u", m->outdir, s);
  snprintf(tmp, sizeof tmp, "%s/shard-%u.tmp", m->outdir, s);
  struct stat st;
  m3_store *dst = NULL;
  m3_catalog cat;
  int cat_open = 0, rc;
  list l = {.shard = s, .shards = m->o.shards};
  segs sg = {0};
  *records = 0;
  if (stat(fin, &st) == 0) { /* finished by an earlier run (renamed last) */
    m3_store_options so;
    m3_store_options_init(&so);
    so.read_only = 1;
    if ((rc = m3_store_open(fin, &so, &dst)) == 0) rc = m3_store_iterate(dst, count_records, records);
    m3_store_close(dst);
    if (rc == 0) m->rep.present++;
    return rc;
  }
  if ((rc = rm_tree(tmp)) != 0) return rc;
  for (size_t i = 0; i < m->n_in; i++) {
    l.in = (uint32_t)i;
    if ((rc = m3_store_iterate(m->ins[i].st, add_entry, &l)) != 0) goto out;
  }
  qsort(l.v, l.n, sizeof *l.v, cmp_entry);
  if ((rc = dedupe(m, &l)) != 0) goto out;

  if (mkdir(tmp, 0755) != 0) {
    rc = m3__syserr(errno, "merge: mkdir %s", tmp);
    goto out;
  }
  m3_store_options so;
  m3_store_options_init(&so);
  so.create = 1;
  so.layout = *m3_store_layout(m->ins[0].st);
  so.align = m3_store_align(m->ins[0].st);
  if ((rc = m3_store_open(tmp, &so, &dst)) != 0) goto out;
  m3_store_close(dst);
  dst = NULL;
  snprintf(cpath, sizeof cpath, "%s/catalog", tmp);
  if ((rc = m3__catalog_open(&cat, cpath, 0, 0)) != 0) goto out;
  cat_open = 1;
  m3_ident ident;
  uint32_t first;
  if ((rc = m3__catalog_get_meta(&cat, &ident)) != 0 ||
      (rc = m3__catalog_get_next_seg(&cat, &first)) != 0)
    goto out;
  if ((rc = write_segments(m, tmp, &ident, first, &l, &sg)) != 0) goto out;
  if ((rc = write_catalog(m, &cat, tmp, &l, &sg)) != 0) goto out;
  m3__catalog_close(&cat);
  cat_open = 0;
  if ((rc = copy_side_files(m, tmp)) != 0 || (rc = m3__fsync_dir(tmp)) != 0) goto out;
  if (rename(tmp, fin) != 0) {
    rc = m3__syserr(errno, "merge: rename %s to %s", tmp, fin);
    goto out;
  }
  if ((rc = m3__fsync_dir(m->outdir)) != 0) goto out;
  *records = l.n;
  m->rep.built++;
out:
  if (cat_open) m3__catalog_close(&cat);
  free(l.v);
  free(sg.id);
  free(sg.end);
  return rc;
}

/* OUTDIR/merge.json: the shard count a rerun must repeat. */
static int claim_outdir(merge *m) {
  char path[4200], buf[64];
  snprintf(path, sizeof path, "%s/merge.json", m->outdir);
  FILE *f = fopen(path, "r");
  if (f) {
    unsigned s = 0;
    int ok = fscanf(f, "{\"shards\": %u", &s) == 1;
    fclose(f);
    if (!ok) return m3__seterr(M3_EBADFORMAT, "merge: %s: no \"shards\"", path);
    if (s != m->o.shards)
      return m3__seterr(M3_EINVAL, "merge: %s was merged into %u shards (%s); this run asks %u",
                        m->outdir, s, path, m->o.shards);
    return 0;
  }
  int len = snprintf(buf, sizeof buf, "{\"shards\": %u}\n", m->o.shards);
  char tmp[4300];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int rc = 0;
  if (fd < 0 || write(fd, buf, (size_t)len) != len || fsync(fd) != 0)
    rc = m3__syserr(errno ? errno : EIO, "merge: write %s", tmp);
  if (fd >= 0) close(fd);
  if (rc == 0 && rename(tmp, path) != 0) rc = m3__syserr(errno, "merge: rename %s", tmp);
  return rc ? rc : m3__fsync_dir(m->outdir);
}

/* words:DIM slices embed with one IDF table (m3-encode counts it over the
 * whole input): the shards get the first input's DIR/idf.bin (a side
 * file), so every input must hold the same one, or none. */
static int check_idf(merge *m) {
  uint32_t crc0 = 0;
  int has0 = 0;
  for (size_t i = 0; i < m->n_in; i++) {
    char path[4200];
    snprintf(path, sizeof path, "%s/" M3_IDF_FILE, m->ins[i].dir);
    m3_idf *t = NULL;
    int rc = m3_idf_load(path, &t);
    if (rc != 0 && rc != M3_ENOTFOUND) return rc;
    int has = t != NULL;
    uint32_t crc = has ? m3_idf_crc(t) : 0;
    m3_idf_free(t);
    if (i == 0) {
      has0 = has, crc0 = crc;
    } else if (has != has0 || crc != crc0) {
      return m3__seterr(M3_ESHAPE,
                        "merge: store %s %s an IDF table (%s%s) unlike store %s (%s): the slices "
                        "of one words:DIM knowledge base share one table; encode every slice "
                        "from the same input", m->ins[i].dir, has ? "holds" : "lacks", M3_IDF_FILE,
                        has && has0 ? ", another one" : "", m->ins[0].dir, has0 ? "one" : "none");
    }
  }
  return 0;
}

static int check_inputs(merge *m) {
  const m3_layout *l0 = m3_store_layout(m->ins[0].st);
  for (size_t i = 1; i < m->n_in; i++) {
    const m3_layout *li = m3_store_layout(m->ins[i].st);
    if (!m3_layout_equal(l0, li) || m3_store_align(m->ins[0].st) != m3_store_align(m->ins[i].st)) {
      char a[32], b[32];
      m3_spec_format(&l0->spec, a, sizeof a);
      m3_spec_format(&li->spec, b, sizeof b);
      return m3__seterr(M3_ESHAPE,
                        "merge: store %s holds %s memories coded %s (codec fingerprint %016llx, "
                        "%u-dim embeddings, align %u) but store %s holds %s coded %s (%016llx, "
                        "%u dims, align %u): slices must share one codec and layout",
                        m->ins[i].dir, b, m3_codec_kind_name(li->codec_kind),
                        (unsigned long long)li->codec_fp, li->emb_dim,
                        m3_store_align(m->ins[i].st), m->ins[0].dir, a,
                        m3_codec_kind_name(l0->codec_kind), (unsigned long long)l0->codec_fp,
                        l0->emb_dim, m3_store_align(m->ins[0].st));
    }
  }
  return check_idf(m);
}

int m3_store_merge(const char *const *inputs, size_t n, const char *outdir,
                   const m3_merge_options *o, uint64_t *shard_records, m3_merge_report *rep) {
  if (n == 0 || o == NULL || o->shards == 0 || o->shards > 4096)
    return m3__seterr(M3_EINVAL, "merge: needs at least one input and 1..4096 shards");
  merge m = {.n_in = n, .outdir = outdir, .o = *o};
  if (m.o.segment_bytes == 0) m.o.segment_bytes = DEFAULT_SEGMENT_BYTES;
  m.ins = calloc(n, sizeof *m.ins);
  if (m.ins == NULL) return m3__seterr(M3_ENOMEM, "merge: out of memory");
  int rc = 0;
  for (size_t i = 0; i < n; i++) {
    m3_store_options so;
    m3_store_options_init(&so);
    so.read_only = 1;
    m.ins[i].dir = inputs[i];
    if ((rc = m3_store_open(inputs[i], &so, &m.ins[i].st)) != 0) goto out;
  }
  if ((rc = check_inputs(&m)) != 0) goto out;
  if (mkdir(outdir, 0755) != 0 && errno != EEXIST) {
    rc = m3__syserr(errno, "merge: mkdir %s", outdir);
    goto out;
  }
  if ((rc = claim_outdir(&m)) != 0) goto out;
  for (uint32_t s = 0; s < m.o.shards; s++) {
    uint64_t k;
    if ((rc = build_shard(&m, s, &k)) != 0) goto out;
    if (shard_records) shard_records[s] = k;
    m.rep.records += k;
  }
out:
  for (size_t i = 0; i < n; i++) {
    for (uint32_t k = 0; k < m.ins[i].nfds; k++)
      if (m.ins[i].fds[k] >= 0) close(m.ins[i].fds[k]);
    free(m.ins[i].fds);
    m3_store_close(m.ins[i].st);
  }
  free(m.ins);
  if (rep) *rep = m.rep;
  return rc;
}
