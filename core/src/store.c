/*
 * The store: open (with roll-forward recovery), group-commit writes, batched
 * checksummed reads. See m3/store.h for the contract and segment.h /
 * catalog.h for the on-disk pieces.
 *
 * Why one file of ~950 lines: open's recovery, the commit and the read path
 * are the three users of the segment array and the store's rwlock, and
 * their invariants (what a committed end means, when a location may be
 * read) are easiest to check side by side. What does not need the array
 * lives apart: store_ops.c, store_verify.c, store_bulk.c, store_loc.c,
 * store_aio.c, store_merge.c.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "m3/crc32c.h"
#include "m3/error.h"
#include "m3/internal/fsutil.h"
#include "m3/log.h"
#include "store_int.h"

#define DEFAULT_ALIGN 512u
#define DEFAULT_SEGMENT_BYTES (1ull << 30)
#define BUF_ALIGN 4096u

void m3_store_options_init(m3_store_options *o) {
  memset(o, 0, sizeof *o);
  o->layout.spec = M3_SPEC_MEMORY3;
  o->layout.codec_kind = M3_CODEC_RAW_BF16;
  o->layout.code_bytes = 2 * 80;
  o->align = DEFAULT_ALIGN;
  o->segment_bytes = DEFAULT_SEGMENT_BYTES;
  o->io = M3_IO_AUTO;
  o->queue_depth = 64;
  const char *env = getenv("M3_IO");
  if (env && !strcmp(env, "pread")) o->io = M3_IO_PREAD;
  else if (env && !strcmp(env, "uring")) o->io = M3_IO_URING;
}

const m3_layout *m3_store_layout(const m3_store *s) { return &s->ident.layout; }
uint32_t m3_store_align(const m3_store *s) { return s->ident.align; }
const char *m3_store_io_backend(const m3_store *s) { return s->io->ops->name; }

int m3__store_io_get(m3_store *s, m3_io **io) {
  pthread_mutex_lock(&s->iolock);
  m3_io *got = s->niopool ? s->iopool[--s->niopool] : NULL;
  pthread_mutex_unlock(&s->iolock);
  if (got) {
    *io = got;
    return 0;
  }
  /* Same kind as the first backend: the choice was made at open. */
  if (s->io->ops == NULL || strcmp(s->io->ops->name, "io_uring") != 0) return m3__io_pread_create(io);
  return m3__io_uring_create(s->opts.queue_depth, io);
}

void m3__store_io_put(m3_store *s, m3_io *io) {
  pthread_mutex_lock(&s->iolock);
  if (s->niopool < (int)(sizeof s->iopool / sizeof s->iopool[0])) {
    s->iopool[s->niopool++] = io;
    io = NULL;
  }
  pthread_mutex_unlock(&s->iolock);
  if (io) io->ops->destroy(io);
}

void m3__store_retire(m3_store *s, m3_segment *seg) {
  pthread_mutex_lock(&s->retire_lock);
  if (atomic_load(&s->aio_reads) > 0) {
    if (s->nretired + 2 > s->capretired) {
      size_t cap = s->capretired ? 2 * s->capretired : 16;
      int *n = realloc(s->retired, cap * sizeof *n);
      /* Out of memory: leak the two descriptors rather than close them
       * under a read that still waits to use them. */
      if (n == NULL) goto keep;
      s->retired = n;
      s->capretired = cap;
    }
    if (seg->fd >= 0) s->retired[s->nretired++] = seg->fd;
    if (seg->dfd >= 0) s->retired[s->nretired++] = seg->dfd;
  keep:
    seg->fd = seg->dfd = -1;
  } else {
    m3__segment_close(seg);
  }
  pthread_mutex_unlock(&s->retire_lock);
}

void m3__store_retire_sweep(m3_store *s) {
  pthread_mutex_lock(&s->retire_lock);
  if (atomic_load(&s->aio_reads) == 0) {
    for (size_t i = 0; i < s->nretired; i++) close(s->retired[i]);
    s->nretired = 0;
  }
  pthread_mutex_unlock(&s->retire_lock);
}

char *m3_store_segment_path(const m3_store *s, uint32_t segment, char *buf, size_t cap) {
  return m3__segment_path(s->dir, segment, buf, cap);
}

m3_segment *m3__store_seg(m3_store *s, uint32_t id) {
  size_t lo = 0, hi = s->nsegs;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (s->segs[mid].id < id) lo = mid + 1;
    else hi = mid;
  }
  return lo < s->nsegs && s->segs[lo].id == id ? &s->segs[lo] : NULL;
}

int m3__store_wbuf(m3_store *s, size_t size) {
  if (size <= s->wcap) return 0;
  size_t cap = s->wcap ? s->wcap : (1u << 20);
  while (cap < size) cap *= 2;
  void *p = NULL;
  if (posix_memalign(&p, BUF_ALIGN, cap) != 0)
    return m3__seterr(M3_ENOMEM, "store %s: out of memory for a %zu-byte write", s->dir, size);
  free(s->wbuf);
  s->wbuf = p;
  s->wcap = cap;
  return 0;
}

static int push_seg(m3_store *s, const m3_segment *seg) {
  if (s->nsegs == s->capsegs) {
    size_t cap = s->capsegs ? s->capsegs * 2 : 8;
    m3_segment *n = realloc(s->segs, cap * sizeof *n);
    if (n == NULL) return m3__seterr(M3_ENOMEM, "store %s: out of memory", s->dir);
    s->segs = n;
    s->capsegs = cap;
  }
  s->segs[s->nsegs++] = *seg;
  return 0;
}

/* ---- open ----------------------------------------------------------- */

typedef struct open_ctx {
  m3_store *s;
  uint64_t *ends; /* committed end per loaded segment */
  size_t cap;
} open_ctx;

static int load_segment(void *ud, uint32_t id, uint64_t end) {
  open_ctx *ctx = ud;
  m3_store *s = ctx->s;
  m3_segment seg;
  int rc = m3__segment_open(s->dir, id, s->opts.read_only, s->opts.direct, &s->ident, NULL, &seg);
  if (rc == M3_ENOTFOUND) {
    /* Open anyway: the rest of the store is good. Fetches of its records
     * fail with M3_ECORRUPT, verify lists them, repair drops them. */
    M3_ERROR("store", "%s (its records are lost; run `m3 store verify %s`)", m3_errmsg(), s->dir);
    return 0;
  }
  if (rc) return rc;
  if ((rc = push_seg(s, &seg)) != 0) {
    m3__segment_close(&seg);
    return rc;
  }
  if (s->nsegs > ctx->cap) {
    size_t cap = ctx->cap ? ctx->cap * 2 : 8;
    uint64_t *n = realloc(ctx->ends, cap * sizeof *n);
    if (n == NULL) return m3__seterr(M3_ENOMEM, "store %s: out of memory", s->dir);
    ctx->ends = n;
    ctx->cap = cap;
  }
  ctx->ends[s->nsegs - 1] = end;
  return 0;
}

/* Remove segment files the catalog does not list: outputs of a compaction
 * that never committed, inputs of one that did, and half-created segments. */
static void remove_orphans(m3_store *s) {
  DIR *d = opendir(s->dir);
  if (d == NULL) return;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    uint32_t id;
    size_t len = strlen(e->d_name);
    int tmp = len > 8 && !strncmp(e->d_name, "seg-", 4) && !strcmp(e->d_name + len - 4, ".tmp");
    /* An SST a bulk ingest wrote but had not moved into the catalog. */
    tmp |= len > 9 && !strncmp(e->d_name, "bulk-", 5) && !strcmp(e->d_name + len - 4, ".sst");
    if (!tmp && (!m3__segment_parse_name(e->d_name, &id) || m3__store_seg(s, id) != NULL))
      continue;
    char p[4400];
    snprintf(p, sizeof p, "%s/%s", s->dir, e->d_name);
    M3_WARN("store", "removing %s: not a live segment (left by an interrupted compaction or create)", p);
    unlink(p);
  }
  closedir(d);
}

typedef struct roll_ctx {
  m3_store *s;
  m3__wbatch *b;
  uint64_t applied;
} roll_ctx;

static void loc_of(const m3_record *r, uint32_t seg, uint64_t off, uint32_t rec_len,
                   m3_location *loc) {
  loc->segment = seg;
  loc->offset = off;
  loc->mem_len = M3_RECORD_HEADER_SIZE + r->mem_bytes;
  loc->rec_len = rec_len;
  loc->mem_crc = r->mem_crc;
  loc->text_crc = r->text_crc;
}

static int roll_record(void *ud, const m3_segment *seg, uint64_t off, const m3_record *r,
                       uint32_t rec_len) {
  roll_ctx *ctx = ud;
  if (r->flags & M3_RECORD_TOMBSTONE) {
    m3__batch_del_chunk(ctx->b, r->chunk_id);
  } else {
    m3_location loc;
    loc_of(r, seg->id, off, rec_len, &loc);
    m3__batch_put_chunk(ctx->b, r->chunk_id, &loc, r->text, r->text_bytes, r->embedding,
                        4u * r->layout.emb_dim);
  }
  /* A bulk ingest's tail can hold 10^5 records: bound the batch. Applying
   * them again after a crash here is harmless (same entries), and the
   * segment's end is committed only after the last of them. */
  if (++ctx->applied % 4096 == 0) {
    int rc = m3__catalog_commit(&ctx->s->cat, ctx->b, 0);
    m3__batch_clear(ctx->b);
    if (rc) return rc;
  }
  return 0;
}

static void roll_problem(void *ud, const m3_problem *p) {
  m3_store *s = ((roll_ctx *)ud)->s;
  char path[4096];
  M3_ERROR("store", "%s offset %llu: %s (skipped)",
           m3__segment_path(s->dir, p->segment, path, sizeof path),
           (unsigned long long)p->offset, p->detail);
}

/*
 * Bring the catalog up to what the segments hold: records appended after the
 * last committed end of a segment (a crash between the segment sync and the
 * catalog commit) are applied; a torn tail is cut off.
 */
static int roll_forward(m3_store *s, const uint64_t *ends) {
  m3__wbatch *b = m3__batch_new();
  roll_ctx ctx = {s, b, 0};
  int rc = 0, changed = 0;
  for (size_t i = 0; i < s->nsegs; i++) {
    m3_segment *seg = &s->segs[i];
    char path[4096];
    m3__segment_path(s->dir, seg->id, path, sizeof path);
    if (seg->size < ends[i]) {
      M3_ERROR("store", "%s: the catalog says %llu bytes but the file has %llu: records past "
               "the end are lost (run verify)", path, (unsigned long long)ends[i],
               (unsigned long long)seg->size);
      seg->size = ends[i];
      continue;
    }
    if (seg->size == ends[i]) continue;
    uint64_t before = ctx.applied, good_end = ends[i], damaged = 0;
    m3_scan_cb cb = {&ctx, roll_record, roll_problem, &s->ident.layout};
    if ((rc = m3__segment_scan(seg, s->dir, ends[i], s->ident.align, &cb, &good_end, &damaged)) != 0)
      goto out;
    if (ctx.applied > before)
      M3_INFO("store", "%s: recovered %llu records written after the last catalog commit", path,
              (unsigned long long)(ctx.applied - before));
    if (good_end < seg->size) {
      M3_WARN("store", "%s: cutting a torn tail of %llu bytes at offset %llu", path,
              (unsigned long long)(seg->size - good_end), (unsigned long long)good_end);
      if ((rc = m3__segment_truncate(seg, s->dir, good_end)) != 0) goto out;
    }
    seg->size = good_end;
    m3__batch_put_segment(b, seg->id, good_end);
    changed = 1;
  }
  if (changed) rc = m3__catalog_commit(&s->cat, b, 1);
out:
  m3__batch_free(b);
  return rc;
}

static int has_segments(const char *dir) {
  DIR *d = opendir(dir);
  if (d == NULL) return 0;
  struct dirent *e;
  uint32_t id;
  int found = 0;
  while (!found && (e = readdir(d)) != NULL) found = m3__segment_parse_name(e->d_name, &id);
  closedir(d);
  return found;
}

static int create_meta(m3_store *s) {
  int rc = m3_layout_check(&s->opts.layout);
  if (rc) return rc;
  uint32_t a = s->opts.align;
  if (a < 512 || (a & (a - 1)))
    return m3__seterr(M3_EINVAL, "store %s: align %u is not a power of two >= 512", s->dir, a);
  memset(&s->ident, 0, sizeof s->ident);
  if (getrandom(s->ident.uuid, sizeof s->ident.uuid, 0) != (ssize_t)sizeof s->ident.uuid)
    return m3__syserr(errno, "getrandom");
  s->ident.layout = s->opts.layout;
  s->ident.align = a;
  m3__wbatch *b = m3__batch_new();
  m3__batch_put_meta(b, &s->ident);
  m3__batch_put_next_seg(b, 1);
  rc = m3__catalog_commit(&s->cat, b, 1);
  m3__batch_free(b);
  return rc;
}

/*
 * The catalog is locked by another writer (RocksDB takes an fcntl write lock
 * on catalog/LOCK for as long as a read-write open lasts): find who with
 * F_GETLK and say what to do instead of RocksDB's raw lock message. The
 * holder's program name comes from /proc/PID/comm where it can be read.
 */
static int busy_error(const char *dir, const char *catpath) {
  char lock[4300], why[512];
  snprintf(lock, sizeof lock, "%s/LOCK", catpath);
  snprintf(why, sizeof why, "%s", m3_errmsg());
  pid_t pid = 0;
  int fd = open(lock, O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    if (fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK) pid = fl.l_pid;
    close(fd);
  }
  if (pid <= 0) /* our own lock (F_GETLK does not see it), or not an fcntl lock */
    return m3__seterr(M3_EBUSY, "the store %s is already open for writing (in this process, or "
                      "by one whose lock cannot be seen): %s", dir, why);
  char comm[64] = "", path[64];
  snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
  FILE *f = fopen(path, "r");
  if (f) {
    if (fgets(comm, sizeof comm, f) == NULL) comm[0] = '\0';
    fclose(f);
    comm[strcspn(comm, "\n")] = '\0';
  }
  if (!strcmp(comm, "m3-server"))
    return m3__seterr(M3_EBUSY, "the store %s is open by m3-server (pid %d); send updates "
                      "through it with m3 put, or stop it", dir, (int)pid);
  if (comm[0])
    return m3__seterr(M3_EBUSY, "the store %s is open by %s (pid %d); wait for it to finish, "
                      "or stop it", dir, comm, (int)pid);
  return m3__seterr(M3_EBUSY, "the store %s is open by another process (pid %d); wait for it to "
                    "finish, or stop it", dir, (int)pid);
}

int m3_store_open(const char *dir, const m3_store_options *o, m3_store **out) {
  m3_store_options def;
  if (o == NULL) {
    m3_store_options_init(&def);
    o = &def;
  }
  m3_store *s = calloc(1, sizeof *s);
  if (s == NULL) return m3__seterr(M3_ENOMEM, "store %s: out of memory", dir);
  s->dir = strdup(dir);
  s->opts = *o;
  pthread_mutex_init(&s->iolock, NULL);
  pthread_mutex_init(&s->retire_lock, NULL);
  pthread_rwlockattr_t rwa;
  pthread_rwlockattr_init(&rwa);
  /* Writers must not starve behind a steady stream of fetches. */
  pthread_rwlockattr_setkind_np(&rwa, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&s->rw, &rwa);
  pthread_rwlockattr_destroy(&rwa);
  if (s->opts.align == 0) s->opts.align = DEFAULT_ALIGN;
  if (s->opts.segment_bytes == 0) s->opts.segment_bytes = DEFAULT_SEGMENT_BYTES;
  if (s->opts.queue_depth == 0) s->opts.queue_depth = 64;
  uint64_t *ends = NULL;
  int rc = 0;
  double t_start = m3__now_s(), t_cat = 0, t_roll = 0;
  m3_loctab *snap = NULL;
  uint64_t snap_seq = 0;

  struct stat st;
  if (stat(dir, &st) != 0) {
    if (!o->create) {
      rc = m3__seterr(M3_ENOTFOUND, "no store at %s (the directory does not exist)", dir);
      goto fail;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
      rc = m3__syserr(errno, "create store directory %s", dir);
      goto fail;
    }
  } else if (!S_ISDIR(st.st_mode)) {
    rc = m3__seterr(M3_EINVAL, "store %s: not a directory", dir);
    goto fail;
  }

  char catpath[4200];
  snprintf(catpath, sizeof catpath, "%s/catalog", dir);
  /* A repair interrupted between its two renames left the old catalog
   * aside and none in place: put it back (read-only: open it there). */
  struct stat ast;
  char asidepath[4200];
  snprintf(asidepath, sizeof asidepath, "%s/" M3__CATALOG_ASIDE, dir);
  if (stat(catpath, &ast) != 0 && errno == ENOENT && stat(asidepath, &ast) == 0) {
    if (o->read_only) {
      snprintf(catpath, sizeof catpath, "%s", asidepath);
    } else {
      M3_WARN("store", "store %s: an interrupted repair left the catalog at %s; putting it back",
              dir, asidepath);
      if (rename(asidepath, catpath) != 0) {
        rc = m3__syserr(errno, "rename %s to %s", asidepath, catpath);
        goto fail;
      }
      if ((rc = m3__fsync_dir(dir)) != 0) goto fail;
    }
  }
  int fresh = 0;
  if (o->create && !has_segments(dir)) {
    struct stat cst;
    fresh = stat(catpath, &cst) != 0;
  }
  if (o->create && !fresh && stat(catpath, &st) != 0) {
    rc = m3__seterr(M3_ENOTFOUND, "store %s: segments but no catalog; rebuild it with `m3 store repair %s`", dir, dir);
    goto fail;
  }
  rc = m3__catalog_open(&s->cat, catpath, o->create, o->read_only);
  if (rc == M3_EBUSY) rc = busy_error(dir, catpath);
  if (rc == M3_ENOTFOUND) {
    if (has_segments(dir))
      rc = m3__seterr(rc, "store %s: segments but no catalog; rebuild it with `m3 store repair %s`", dir, dir);
    else
      rc = m3__seterr(rc, "no store at %s", dir);
    goto fail;
  }
  if (rc) goto fail;

  rc = m3__catalog_get_meta(&s->cat, &s->ident);
  if (rc == M3_ENOTFOUND && o->create && !o->read_only) rc = create_meta(s);
  else if (rc == M3_ENOTFOUND && !has_segments(dir))
    /* A create killed between the catalog and its meta: nothing was stored. */
    rc = m3__seterr(M3_ENOTFOUND, "no store at %s (an interrupted create left an empty catalog; creating the store again completes it)", dir);
  else if (rc == M3_ENOTFOUND)
    rc = m3__seterr(M3_EBADFORMAT, "store %s: the catalog has no store meta; rebuild it with `m3 store repair %s`", dir, dir);
  else if (rc == 0 && o->create && !m3_layout_equal(&o->layout, &s->ident.layout)) {
    char a[32], b[32];
    rc = m3__seterr(M3_ESHAPE, "store %s holds %s %s memories (%u-byte codes, fingerprint %016llx), not %s %s",
                    dir, m3_spec_format(&s->ident.layout.spec, a, sizeof a),
                    m3_codec_kind_name(s->ident.layout.codec_kind), s->ident.layout.code_bytes,
                    (unsigned long long)s->ident.layout.codec_fp,
                    m3_spec_format(&o->layout.spec, b, sizeof b), m3_codec_kind_name(o->layout.codec_kind));
  }
  if (rc) goto fail;
  if ((rc = m3__catalog_get_next_seg(&s->cat, &s->next_seg)) != 0) {
    if (rc == M3_ENOTFOUND) rc = m3__seterr(M3_EBADFORMAT, "store %s: catalog lacks the next segment id", dir);
    goto fail;
  }

  snap = m3__store_loc_snap_take(s, &snap_seq);
  t_cat = m3__now_s();
  open_ctx ctx = {s, NULL, 0};
  rc = m3__catalog_segments(&s->cat, load_segment, &ctx);
  ends = ctx.ends;
  if (rc) goto fail;
  if (!o->read_only) {
    remove_orphans(s);
    if ((rc = roll_forward(s, ends)) != 0) goto fail;
    /* A bulk ingest or put killed right after rolling a segment left one
     * with nothing in it. */
    if ((rc = m3__store_drop_empty(s, 0)) != 0) goto fail;
  }

  if (o->io == M3_IO_PREAD) {
    rc = m3__io_pread_create(&s->io);
  } else {
    rc = m3__io_uring_create(s->opts.queue_depth, &s->io);
    if (rc && o->io == M3_IO_AUTO) {
      M3_WARN("store", "io_uring unavailable (%s); reading with pread", m3_errmsg());
      rc = m3__io_pread_create(&s->io);
    }
  }
  if (rc) goto fail;
  if (o->cache_bytes && (rc = m3__cache_create(o->cache_bytes, &s->cache)) != 0) goto fail;
  t_roll = m3__now_s();
  s->mem_size = m3_record_mem_size(&s->ident.layout);
  /* The snapshot holds when nothing changed the catalog since it was
   * written, open's own roll-forward included. */
  int from_snap = snap != NULL && m3_store_seqno(s) == snap_seq;
  if (from_snap) {
    s->loc = snap;
    snap = NULL;
  } else if ((rc = m3__store_loc_build(s)) != 0) {
    goto fail;
  }
  M3_DEBUG("store", "%s: opened in %.3f s: catalog %.3f s, segments and roll-forward %.3f s, "
           "location table (%zu ids, %s) %.3f s", dir, m3__now_s() - t_start, t_cat - t_start,
           t_roll - t_cat, m3__loctab_count(s->loc), from_snap ? "snapshot" : "from the catalog",
           m3__now_s() - t_roll);
  m3__loctab_destroy(snap);

  free(ends);
  *out = s;
  return 0;
fail:
  free(ends);
  m3__loctab_destroy(snap);
  m3_store_close(s);
  return rc;
}

void m3_store_close(m3_store *s) {
  if (s == NULL) return;
  m3__store_loc_snap_save(s);
  for (size_t i = 0; i < s->nsegs; i++) m3__segment_close(&s->segs[i]);
  free(s->segs);
  m3__catalog_close(&s->cat);
  m3__loctab_destroy(s->loc);
  if (s->io) s->io->ops->destroy(s->io);
  for (int i = 0; i < s->niopool; i++) s->iopool[i]->ops->destroy(s->iopool[i]);
  pthread_mutex_destroy(&s->iolock);
  s->aio_reads = 0; /* m3_store_aio_close has waited for every read */
  m3__store_retire_sweep(s);
  free(s->retired);
  pthread_mutex_destroy(&s->retire_lock);
  pthread_rwlock_destroy(&s->rw);
  m3__cache_destroy(s->cache);
  free(s->wbuf);
  free(s->dir);
  free(s);
}

/* ---- writing -------------------------------------------------------- */

int m3__store_roll_segment(m3_store *s) {
  m3_segment seg;
  int rc = m3__segment_create(s->dir, s->next_seg, &s->ident, s->opts.direct, &seg);
  if (rc) return rc;
  m3__wbatch *b = m3__batch_new();
  m3__batch_put_segment(b, seg.id, seg.size);
  m3__batch_put_next_seg(b, seg.id + 1);
  rc = m3__catalog_commit(&s->cat, b, 1);
  m3__batch_free(b);
  if (rc == 0) rc = push_seg(s, &seg);
  if (rc) {
    char path[4096];
    m3__segment_close(&seg);
    unlink(m3__segment_path(s->dir, seg.id, path, sizeof path));
    return rc;
  }
  s->next_seg = seg.id + 1;
  return 0;
}

int m3__store_drop_empty(m3_store *s, uint32_t min_id) {
  m3__wbatch *b = m3__batch_new();
  size_t n = 0;
  for (size_t i = 0; i < s->nsegs; i++)
    if (s->segs[i].id >= min_id && s->segs[i].size <= s->ident.align) {
      m3__batch_del_segment(b, s->segs[i].id);
      n++;
    }
  int rc = n ? m3__catalog_commit(&s->cat, b, 1) : 0;
  m3__batch_free(b);
  if (rc || n == 0) return rc;
  /* Unlisted now: a crash before the unlink leaves an orphan, which the
   * next open removes. */
  size_t k = 0;
  for (size_t i = 0; i < s->nsegs; i++) {
    m3_segment *seg = &s->segs[i];
    if (seg->id < min_id || seg->size > s->ident.align) {
      s->segs[k++] = *seg;
      continue;
    }
    char path[4096];
    m3__segment_path(s->dir, seg->id, path, sizeof path);
    M3_INFO("store", "removing %s: it holds no record (left by an aborted or interrupted write)",
            path);
    m3__store_retire(s, seg);
    unlink(path);
  }
  s->nsegs = k;
  return m3__fsync_dir(s->dir);
}

/* A group commit in the making: staged records in s->wbuf, appended to
 * segments run by run, then one catalog batch. */
typedef struct commit {
  m3_store *s;
  m3__wbatch *b;
  size_t run_start;  /* wbuf offset where the current run starts */
  size_t staged;     /* bytes staged in wbuf */
  struct touch { uint32_t seg; uint64_t old_size, new_size; } *touched; /* malloc'ed */
  int ntouched, captouched;
} commit;

static m3_segment *active(m3_store *s) { return s->nsegs ? &s->segs[s->nsegs - 1] : NULL; }

/* Write the current run to the active segment. */
static int flush_run(commit *c) {
  m3_store *s = c->s;
  size_t len = c->staged - c->run_start;
  if (len == 0) return 0;
  m3_segment *seg = active(s);
  /* Room to remember this run before writing it, so that abort_commit can
   * always cut back what was appended (a batch may span any number of
   * segments). */
  if (c->ntouched == c->captouched) {
    int cap = c->captouched ? 2 * c->captouched : 8;
    struct touch *t = realloc(c->touched, (size_t)cap * sizeof *t);
    if (t == NULL) return m3__seterr(M3_ENOMEM, "store %s: out of memory", s->dir);
    c->touched = t;
    c->captouched = cap;
  }
  int rc = m3__segment_append(seg, s->dir, s->wbuf + c->run_start, len);
  if (rc) return rc;
  c->touched[c->ntouched].seg = seg->id;
  c->touched[c->ntouched].old_size = seg->size;
  c->touched[c->ntouched].new_size = seg->size + len;
  c->ntouched++;
  /* Advance now so that a following run (after a roll) is placed right;
   * undone by abort_commit on failure. */
  seg->size += len;
  c->run_start = c->staged;
  return 0;
}

/* Where a record of len padded bytes goes: rolls the segment when needed.
 * Returns the file offset it will have. */
static int place(commit *c, size_t len, uint32_t *seg_id, uint64_t *off) {
  m3_store *s = c->s;
  m3_segment *seg = active(s);
  uint64_t pending = c->staged - c->run_start;
  int rc;
  if (seg == NULL ||
      (seg->size + pending + len > s->opts.segment_bytes && seg->size + pending > s->ident.align)) {
    if ((rc = flush_run(c)) != 0) return rc;
    if ((rc = m3__store_roll_segment(s)) != 0) return rc;
    seg = active(s);
    pending = 0;
  }
  *seg_id = seg->id;
  *off = seg->size + pending;
  return 0;
}

/* Undo a failed commit: cut each touched segment back to its size before
 * the commit. Nothing of the batch is visible now (the catalog did not
 * commit). A cut that fails leaves the records in the file: those written
 * whole ARE rolled forward by the next open (a Put reported failed may
 * persist, as m3/store.h says); a partial one is cut there as a torn tail. */
static void abort_commit(commit *c) {
  for (int i = c->ntouched - 1; i >= 0; i--) {
    m3_segment *seg = m3__store_seg(c->s, c->touched[i].seg);
    if (seg == NULL) continue;
    seg->size = c->touched[i].old_size;
    if (m3__segment_truncate(seg, c->s->dir, seg->size) != 0)
      M3_WARN("store", "%s (the next open cuts the tail)", m3_errmsg());
  }
}

static int finish_commit(commit *c) {
  m3_store *s = c->s;
  int rc = flush_run(c);
  if (rc == 0) {
    for (int i = 0; i < c->ntouched; i++)
      m3__batch_put_segment(c->b, c->touched[i].seg, c->touched[i].new_size);
    rc = m3__catalog_commit(&s->cat, c->b, s->opts.sync_catalog);
  }
  if (rc) abort_commit(c);
  return rc;
}

/* Whether the stored record at loc has exactly this header: the CRCs cover
 * positions, codes and text, but fields such as chunk_len live only in the
 * header. */
static int same_header(m3_store *s, const m3_location *loc, const uint8_t *rec) {
  m3_segment *seg = m3__store_seg(s, loc->segment);
  uint8_t h[M3_RECORD_HEADER_SIZE];
  return seg != NULL && pread(seg->fd, h, sizeof h, (off_t)loc->offset) == (ssize_t)sizeof h &&
         memcmp(h, rec, sizeof h) == 0;
}

static int put_locked(m3_store *s, const m3_record_in *items, size_t n);

int m3_store_put(m3_store *s, const m3_record_in *items, size_t n) {
  pthread_rwlock_wrlock(&s->rw);
  s->gen++;
  int rc = put_locked(s, items, n);
  pthread_rwlock_unlock(&s->rw);
  return rc;
}

static int put_locked(m3_store *s, const m3_record_in *items, size_t n) {
  if (s->opts.read_only) return m3__seterr(M3_EUNSUPPORTED, "store %s: opened read-only", s->dir);
  if (s->bulk) return m3__store_bulk_busy(s);
  if (n == 0) return 0;
  const m3_layout *l = &s->ident.layout;
  uint32_t align = s->ident.align;
  int rc = 0;
  uint64_t *ids = malloc(n * sizeof *ids);
  m3_location *old = malloc(n * sizeof *old);
  int *st = malloc(n * sizeof *st);
  commit c = {s, m3__batch_new(), 0, 0, NULL, 0, 0};
  if (!ids || !old || !st) {
    rc = m3__seterr(M3_ENOMEM, "store %s: out of memory", s->dir);
    goto out;
  }
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    ids[i] = items[i].chunk_id;
    total += m3__round_up(m3_record_size(l, items[i].text_len), align);
  }
  if ((rc = m3__store_locs(s, ids, n, old, st)) != 0) goto out;
  if ((rc = m3__store_wbuf(s, total)) != 0) goto out;

  size_t written = 0;
  for (size_t i = 0; i < n; i++) {
    size_t size = m3_record_size(l, items[i].text_len);
    size_t padded = m3__round_up(size, align);
    uint8_t *rec = s->wbuf + c.staged;
    long k = m3_record_encode(rec, s->wcap - c.staged, l, &items[i]);
    if (k < 0) {
      rc = (int)k;
      goto fail;
    }
    m3_record r;
    m3_record_parse(rec, (size_t)k, M3_PARSE_HEADER, &r);
    if (st[i] == 0 && old[i].mem_crc == r.mem_crc && old[i].text_crc == r.text_crc &&
        old[i].rec_len == (uint32_t)size && same_header(s, &old[i], rec))
      continue; /* identical content already stored: idempotent put */
    uint32_t seg_id;
    uint64_t off;
    /* place() may flush staged bytes; the record stays where it is. */
    if ((rc = place(&c, padded, &seg_id, &off)) != 0) goto fail;
    memset(rec + size, 0, padded - size);
    c.staged += padded;
    m3_location loc;
    loc_of(&r, seg_id, off, (uint32_t)size, &loc);
    m3__batch_put_chunk(c.b, r.chunk_id, &loc, items[i].text, items[i].text_len,
                        rec + size - 4u * l->emb_dim, 4u * l->emb_dim);
    old[i] = loc; /* from here on: where item i now lives */
    st[i] = 1;
    written++;
  }
  if (written == 0) goto out;
  if ((rc = finish_commit(&c)) != 0) goto out;
  /* In item order, so that the last of a repeated id wins, as in the batch. */
  for (size_t i = 0; i < n; i++)
    if (st[i] == 1) m3__store_loc_set(s, ids[i], &old[i]);
  if (s->cache)
    for (size_t i = 0; i < n; i++) m3__cache_drop(s->cache, ids[i]);
  goto out;
fail:
  abort_commit(&c);
out:
  m3__batch_free(c.b);
  free(c.touched);
  free(ids);
  free(old);
  free(st);
  return rc;
}

static int delete_locked(m3_store *s, const uint64_t *ids, size_t n, size_t *deleted);

int m3_store_delete(m3_store *s, const uint64_t *ids, size_t n, size_t *deleted) {
  pthread_rwlock_wrlock(&s->rw);
  s->gen++;
  int rc = delete_locked(s, ids, n, deleted);
  pthread_rwlock_unlock(&s->rw);
  return rc;
}

static int delete_locked(m3_store *s, const uint64_t *ids, size_t n, size_t *deleted) {
  if (s->opts.read_only) return m3__seterr(M3_EUNSUPPORTED, "store %s: opened read-only", s->dir);
  if (s->bulk) return m3__store_bulk_busy(s);
  size_t present = 0;
  int rc = 0;
  m3_location *locs = malloc((n ? n : 1) * sizeof *locs);
  int *st = malloc((n ? n : 1) * sizeof *st);
  commit c = {s, m3__batch_new(), 0, 0, NULL, 0, 0};
  if (!locs || !st) {
    rc = m3__seterr(M3_ENOMEM, "store %s: out of memory", s->dir);
    goto out;
  }
  if ((rc = m3__store_locs(s, ids, n, locs, st)) != 0) goto out;
  uint32_t align = s->ident.align;
  for (size_t i = 0; i < n; i++) present += st[i] == 0;
  if (present == 0) goto out;
  if ((rc = m3__store_wbuf(s, present * align)) != 0) goto out;
  for (size_t i = 0; i < n; i++) {
    if (st[i] != 0) continue;
    uint32_t seg_id;
    uint64_t off;
    if ((rc = place(&c, align, &seg_id, &off)) != 0) goto fail;
    uint8_t *rec = s->wbuf + c.staged;
    memset(rec, 0, align);
    m3_record_encode_tombstone(rec, align, ids[i]);
    c.staged += align;
    m3__batch_del_chunk(c.b, ids[i]);
  }
  if ((rc = finish_commit(&c)) != 0) goto out;
  for (size_t i = 0; i < n; i++)
    if (st[i] == 0) m3__store_loc_set(s, ids[i], NULL);
  if (s->cache)
    for (size_t i = 0; i < n; i++) m3__cache_drop(s->cache, ids[i]);
  goto out;
fail:
  abort_commit(&c);
out:
  if (deleted) *deleted = rc == 0 ? present : 0;
  m3__batch_free(c.b);
  free(c.touched);
  free(locs);
  free(st);
  return rc;
}

/* ---- reading -------------------------------------------------------- */

size_t m3_store_fetch_cap(const m3_store *s) {
  return (size_t)m3__round_up(s->mem_size, BUF_ALIGN) + BUF_ALIGN;
}

void *m3_store_buf_alloc(const m3_store *s, size_t size) {
  (void)s;
  void *p = NULL;
  if (posix_memalign(&p, BUF_ALIGN, m3__round_up(size ? size : 1, BUF_ALIGN)) != 0) return NULL;
  return p;
}

int m3_store_get_embedding(m3_store *s, uint64_t chunk_id, float *out) {
  if (s->ident.layout.emb_dim == 0)
    return m3__seterr(M3_ENOTFOUND, "store %s keeps no embeddings", s->dir);
  return m3__catalog_get_embedding(&s->cat, chunk_id, out, s->ident.layout.emb_dim);
}

typedef struct emb_ctx {
  int (*fn)(void *ud, uint64_t chunk_id, const float *emb);
  void *ud;
  float *tmp;
  size_t dim;
} emb_ctx;

static int emb_entry(void *ud, uint64_t id, const uint8_t *emb, size_t n) {
  emb_ctx *c = ud;
  if (n != c->dim)
    return m3__seterr(M3_ECORRUPT, "catalog: embedding of chunk %llu has %zu dims, want %zu",
                      (unsigned long long)id, n, c->dim);
  memcpy(c->tmp, emb, n * sizeof(float)); /* little-endian f32, as on every host we build for */
  return c->fn(c->ud, id, c->tmp);
}

int m3_store_iterate_embeddings(m3_store *s,
                                int (*fn)(void *ud, uint64_t chunk_id, const float *emb),
                                void *ud) {
  size_t dim = s->ident.layout.emb_dim;
  if (dim == 0) return 0;
  emb_ctx c = {fn, ud, malloc(dim * sizeof(float)), dim};
  if (c.tmp == NULL) return m3__seterr(M3_ENOMEM, "store %s: out of memory", s->dir);
  int rc = m3__catalog_embeddings(&s->cat, emb_entry, &c);
  free(c.tmp);
  return rc;
}

uint64_t m3_store_seqno(m3_store *s) { return rocksdb_get_latest_sequence_number(s->cat.db); }

const char *m3_store_dir(const m3_store *s) { return s->dir; }

uint64_t m3_store_segment_bytes(m3_store *s) {
  uint64_t total = 0;
  pthread_rwlock_rdlock(&s->rw);
  for (size_t i = 0; i < s->nsegs; i++) total += s->segs[i].size;
  pthread_rwlock_unlock(&s->rw);
  return total;
}

void m3_store_cache_counters(m3_store *s, uint64_t *hits, uint64_t *misses, uint64_t *bytes) {
  m3_cache_stats cs = {0, 0, 0, 0};
  if (s->cache) m3__cache_stats(s->cache, &cs);
  *hits = cs.hits;
  *misses = cs.misses;
  *bytes = cs.bytes;
}

int m3_store_get_text(m3_store *s, uint64_t chunk_id, char **text, size_t *len) {
  return m3__catalog_get_text(&s->cat, chunk_id, text, len);
}

/* Check a record read for item against what the catalog and store expect. */
static int check_fetched(m3_store *s, m3_fetch_item *it, const m3_location *loc) {
  m3_record r;
  int rc = m3_record_parse(it->data, it->len, M3_PARSE_MEM, &r);
  if (rc == 0 && r.chunk_id != it->chunk_id)
    rc = m3__seterr(M3_ECORRUPT, "record at the location of chunk %llu holds chunk %llu",
                    (unsigned long long)it->chunk_id, (unsigned long long)r.chunk_id);
  if (rc == 0 && r.mem_crc != loc->mem_crc)
    rc = m3__seterr(M3_ECORRUPT, "record %llu: mem_crc %08x, catalog expects %08x",
                    (unsigned long long)it->chunk_id, r.mem_crc, loc->mem_crc);
  if (rc == 0 && !m3_layout_equal(&r.layout, &s->ident.layout))
    rc = m3__seterr(M3_ECORRUPT, "record %llu: layout differs from the store's",
                    (unsigned long long)it->chunk_id);
  if (rc) {
    char path[4096];
    M3_ERROR("store", "%s offset %llu: %s",
             m3__segment_path(s->dir, loc->segment, path, sizeof path),
             (unsigned long long)loc->offset, m3_errmsg());
    return rc == M3_EBADFORMAT || rc == M3_EVERSION ? M3_ECORRUPT : rc;
  }
  return 0;
}

int m3__fetch_item_init(m3_store *s, m3_fetch_item *it, size_t i) {
  size_t need = s->opts.direct ? m3_store_fetch_cap(s) : s->mem_size;
  it->data = NULL;
  it->len = 0;
  it->status = 0;
  if (it->buf == NULL || it->cap < need || (s->opts.direct && ((uintptr_t)it->buf % BUF_ALIGN)))
    return m3__seterr(M3_EINVAL, "fetch item %zu: buffer of %zu bytes at %p; need %zu bytes%s", i,
                      it->cap, it->buf, need,
                      s->opts.direct ? " aligned to 4096 (m3_store_buf_alloc)" : "");
  if (s->cache) {
    size_t got = m3__cache_get(s->cache, it->chunk_id, it->buf, it->cap);
    if (got) {
      it->data = it->buf;
      it->len = got;
      return 1;
    }
  }
  return 0;
}

int m3__fetch_plan(m3_store *s, m3_fetch_item *it, const m3_location *loc, m3_read *r) {
  m3_segment *seg = m3__store_seg(s, loc->segment);
  size_t mem = m3_record_mem_size(&s->ident.layout);
  if (loc->mem_len != mem) {
    /* Every memory of the store has its layout's size: a location that says
     * otherwise (a foreign record catalogued, a damaged entry) would read
     * past the item's buffer, sized for the layout (issue 14, defect 9). */
    it->status = m3__seterr(M3_ECORRUPT,
                            "chunk %llu: the catalog says its memory is %u bytes; the store's "
                            "layout makes %zu",
                            (unsigned long long)it->chunk_id, loc->mem_len, mem);
    M3_ERROR("store", "%s", m3_errmsg());
    return 0;
  }
  if (seg == NULL || loc->offset + loc->mem_len > seg->size) {
    char path[4096];
    it->status = m3__seterr(M3_ECORRUPT, "chunk %llu: catalog points at %s offset %llu, past the data",
                            (unsigned long long)it->chunk_id,
                            m3__segment_path(s->dir, loc->segment, path, sizeof path),
                            (unsigned long long)loc->offset);
    M3_ERROR("store", "%s", m3_errmsg());
    return 0;
  }
  uint64_t start = loc->offset, end = loc->offset + loc->mem_len;
  if (seg->dfd >= 0) {
    start = start / seg->dio_align * seg->dio_align;
    end = m3__round_up(end, seg->dio_align);
    r->fd = seg->dfd;
  } else {
    r->fd = seg->fd;
  }
  r->off = start;
  r->len = (uint32_t)(end - start);
  /* m3__fetch_item_init checked the buffer against the layout's size (and
   * the alignment slack with O_DIRECT): a read past it is a bug. */
  M3_ASSERT(r->len <= it->cap);
  r->buf = it->buf;
  r->res = 0;
  it->data = (const uint8_t *)it->buf + (loc->offset - start);
  it->len = loc->mem_len;
  it->status = 1; /* pending */
  return 1;
}

void m3__fetch_finish(m3_store *s, m3_fetch_item *it, const m3_location *loc, const m3_read *r,
                      int cache) {
  uint64_t need = (loc->offset - r->off) + loc->mem_len;
  if (r->res < 0 || (uint64_t)r->res < need) {
    char path[4096];
    m3__segment_path(s->dir, loc->segment, path, sizeof path);
    if (r->res < 0)
      it->status = m3__syserr(-r->res, "read chunk %llu from %s offset %llu",
                              (unsigned long long)it->chunk_id, path, (unsigned long long)r->off);
    else
      it->status = m3__seterr(M3_ECORRUPT, "chunk %llu: %s ends inside its record",
                              (unsigned long long)it->chunk_id, path);
    M3_ERROR("store", "%s", m3_errmsg());
  } else {
    it->status = check_fetched(s, it, loc);
  }
  if (it->status != 0) {
    it->data = NULL;
    it->len = 0;
  } else if (cache && s->cache) {
    m3__cache_put(s->cache, it->chunk_id, it->data, it->len);
  }
}

static int fetch_locked(m3_store *s, m3_io *io, m3_fetch_item *items, size_t n);

int m3_store_fetch(m3_store *s, m3_fetch_item *items, size_t n) {
  m3_io *io;
  int rc = m3__store_io_get(s, &io);
  if (rc) return rc;
  pthread_rwlock_rdlock(&s->rw);
  rc = fetch_locked(s, io, items, n);
  pthread_rwlock_unlock(&s->rw);
  m3__store_io_put(s, io);
  return rc;
}

static int fetch_locked(m3_store *s, m3_io *io, m3_fetch_item *items, size_t n) {
  enum { STACK = 32 };
  uint64_t ids_s[STACK];
  m3_location locs_s[STACK];
  int st_s[STACK];
  size_t miss_s[STACK];
  m3_read reads_s[STACK];
  uint64_t *ids = ids_s;
  m3_location *locs = locs_s;
  int *st = st_s;
  size_t *miss = miss_s;
  m3_read *reads = reads_s;
  int rc = 0;

  if (n > STACK) {
    ids = malloc(n * sizeof *ids);
    locs = malloc(n * sizeof *locs);
    st = malloc(n * sizeof *st);
    miss = malloc(n * sizeof *miss);
    reads = malloc(n * sizeof *reads);
    if (!ids || !locs || !st || !miss || !reads) {
      rc = m3__seterr(M3_ENOMEM, "fetch of %zu memories: out of memory", n);
      goto out;
    }
  }
  size_t nmiss = 0;
  for (size_t i = 0; i < n; i++) {
    int got = m3__fetch_item_init(s, &items[i], i);
    if (got < 0) {
      rc = got;
      goto out;
    }
    if (got) continue; /* from the cache */
    ids[nmiss] = items[i].chunk_id;
    miss[nmiss++] = i;
  }
  if (nmiss == 0) goto out;
  if ((rc = m3__store_locs(s, ids, nmiss, locs, st)) != 0) goto out;

  size_t nreads = 0;
  for (size_t j = 0; j < nmiss; j++) {
    m3_fetch_item *it = &items[miss[j]];
    if (st[j] != 0) it->status = st[j];
    else nreads += (size_t)m3__fetch_plan(s, it, &locs[j], &reads[nreads]);
  }
  if (nreads && (rc = io->ops->read_batch(io, reads, nreads)) != 0) goto out;

  size_t k = 0;
  for (size_t j = 0; j < nmiss; j++) {
    m3_fetch_item *it = &items[miss[j]];
    if (it->status == 1) m3__fetch_finish(s, it, &locs[j], &reads[k++], 1);
  }
out:
  if (ids != ids_s) {
    free(ids);
    free(locs);
    free(st);
    free(miss);
    free(reads);
  }
  return rc;
}

int m3_store_iterate(m3_store *s, int (*fn)(void *ud, uint64_t chunk_id, const m3_location *loc),
                     void *ud) {
  return m3__catalog_chunks(&s->cat, fn, ud);
}
