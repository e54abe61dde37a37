/* Segment files: create, open, append, truncate, scan. See segment.h. */
#include "segment.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "m3_endian.h"
#include "m3/crc32c.h"
#include "m3/error.h"
#include "m3/internal/fsutil.h"
#include "m3/fault.h"
#include "m3/log.h"
#include "m3/spec.h"

char *m3__segment_path(const char *dir, uint32_t id, char *buf, size_t cap) {
  snprintf(buf, cap, "%s/seg-%06u.m3s", dir, id);
  return buf;
}

int m3__segment_parse_name(const char *name, uint32_t *id) {
  unsigned v;
  int n = 0;
  if (sscanf(name, "seg-%u.m3s%n", &v, &n) != 1 || name[n] != '\0' || strlen(name) < 14)
    return 0;
  *id = v;
  return 1;
}

void m3__ident_encode(uint8_t *p, const m3_ident *id) {
  memcpy(p, id->uuid, 16);
  m3__st16(p + 16, id->layout.spec.n_layers);
  m3__st16(p + 18, id->layout.spec.n_kv_heads);
  m3__st16(p + 20, id->layout.spec.n_tokens);
  m3__st16(p + 22, id->layout.spec.head_dim);
  m3__st16(p + 24, id->layout.codec_kind);
  m3__st16(p + 26, id->layout.code_bytes);
  m3__st64(p + 28, id->layout.codec_fp);
}

void m3__ident_decode(const uint8_t *p, m3_ident *id, uint32_t align) {
  memcpy(id->uuid, p, 16);
  id->layout.spec.n_layers = m3__ld16(p + 16);
  id->layout.spec.n_kv_heads = m3__ld16(p + 18);
  id->layout.spec.n_tokens = m3__ld16(p + 20);
  id->layout.spec.head_dim = m3__ld16(p + 22);
  id->layout.codec_kind = m3__ld16(p + 24);
  id->layout.code_bytes = m3__ld16(p + 26);
  id->layout.codec_fp = m3__ld64(p + 28);
  id->align = align;
}

int m3__ident_equal(const m3_ident *a, const m3_ident *b) {
  return !memcmp(a->uuid, b->uuid, 16) && a->align == b->align &&
         !memcmp(&a->layout.spec, &b->layout.spec, sizeof a->layout.spec) &&
         a->layout.codec_kind == b->layout.codec_kind &&
         a->layout.code_bytes == b->layout.code_bytes &&
         a->layout.codec_fp == b->layout.codec_fp && a->layout.emb_dim == b->layout.emb_dim;
}

/* O_DIRECT alignment this file needs, from statx where the kernel tells. */
static uint32_t dio_align_of(int fd) {
#ifdef STATX_DIOALIGN
  struct statx stx;
  if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
      (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align > 0)
    return stx.stx_dio_offset_align;
#else
  (void)fd;
#endif
  return 4096;
}

static void open_direct(m3_segment *seg, const char *path) {
  seg->dfd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (seg->dfd < 0) {
    M3_WARN("store", "%s: O_DIRECT refused (%s); reading through the page cache", path,
            strerror(errno));
    return;
  }
  seg->dio_align = dio_align_of(seg->dfd);
}

int m3__segment_create(const char *dir, uint32_t id, const m3_ident *ident, int direct,
                       m3_segment *out) {
  char path[4096], tmp[4200];
  m3__segment_path(dir, id, path, sizeof path);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  uint32_t hsize = ident->align;
  uint8_t *h = calloc(1, hsize);
  int rc = 0, fd = -1;
  if (h == NULL) return m3__seterr(M3_ENOMEM, "segment %s: out of memory", path);

  memcpy(h, M3_SEGMENT_MAGIC, 4);
  m3__st16(h + 4, M3_SEGMENT_VERSION);
  m3__st16(h + 6, ident->layout.emb_dim);
  m3__st32(h + 8, id);
  m3__st32(h + 12, ident->align);
  m3__ident_encode(h + 16, ident);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  m3__st64(h + 52, (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec);
  m3__st32(h + 60, m3_crc32c(0, h, 60));

  fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    rc = m3__syserr(errno, "create segment %s", tmp);
    goto out;
  }
  int ferr = m3__fault("segment.write");
  if (ferr || pwrite(fd, h, hsize, 0) != (ssize_t)hsize) {
    rc = m3__syserr(ferr ? ferr : errno ? errno : EIO, "write segment header %s", tmp);
    goto out;
  }
  if (fdatasync(fd) != 0) {
    rc = m3__syserr(errno, "fdatasync %s", tmp);
    goto out;
  }
  if (rename(tmp, path) != 0) {
    rc = m3__syserr(errno, "rename %s to %s", tmp, path);
    goto out;
  }
  if ((rc = m3__fsync_dir(dir)) != 0) goto out;

  memset(out, 0, sizeof *out);
  out->id = id;
  out->fd = fd;
  out->dfd = -1;
  out->dio_align = 4096;
  out->size = hsize;
  fd = -1;
  if (direct) open_direct(out, path);
out:
  if (fd >= 0) {
    close(fd);
    unlink(tmp);
  }
  free(h);
  return rc;
}

int m3__segment_open(const char *dir, uint32_t id, int read_only, int direct,
                     const m3_ident *ident, m3_ident *found, m3_segment *out) {
  char path[4096];
  uint8_t h[64];
  m3__segment_path(dir, id, path, sizeof path);
  int fd = open(path, (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (fd < 0) return m3__syserr(errno, "open segment %s", path);

  int rc = 0;
  struct stat st;
  if (fstat(fd, &st) != 0) {
    rc = m3__syserr(errno, "stat %s", path);
    goto fail;
  }
  ssize_t n = pread(fd, h, sizeof h, 0);
  if (n != (ssize_t)sizeof h) {
    rc = m3__seterr(M3_EBADFORMAT, "segment %s: %lld bytes, too short for a header", path,
                    (long long)st.st_size);
    goto fail;
  }
  if (memcmp(h, M3_SEGMENT_MAGIC, 4) != 0) {
    rc = m3__seterr(M3_EBADFORMAT, "segment %s: bad magic (not an m3 segment)", path);
    goto fail;
  }
  if (m3_crc32c(0, h, 60) != m3__ld32(h + 60)) {
    rc = m3__seterr(M3_ECORRUPT, "segment %s: header_crc mismatch", path);
    goto fail;
  }
  if (m3__ld16(h + 4) != M3_SEGMENT_VERSION) {
    rc = m3__seterr(M3_EVERSION, "segment %s: version %u (this build reads %u)", path,
                    m3__ld16(h + 4), M3_SEGMENT_VERSION);
    goto fail;
  }
  if (m3__ld32(h + 8) != id) {
    rc = m3__seterr(M3_EBADFORMAT, "segment %s: header says segment id %u", path,
                    m3__ld32(h + 8));
    goto fail;
  }
  m3_ident have;
  m3__ident_decode(h + 16, &have, m3__ld32(h + 12));
  have.layout.emb_dim = m3__ld16(h + 6);
  if (have.align < 512 || (have.align & (have.align - 1))) {
    rc = m3__seterr(M3_EBADFORMAT, "segment %s: bad align %u", path, have.align);
    goto fail;
  }
  if (ident && !m3__ident_equal(ident, &have)) {
    rc = m3__seterr(M3_EBADFORMAT, "segment %s: belongs to another store (uuid or layout differ)",
                    path);
    goto fail;
  }
  if (found) *found = have;

  memset(out, 0, sizeof *out);
  out->id = id;
  out->fd = fd;
  out->dfd = -1;
  out->dio_align = 4096;
  out->size = (uint64_t)st.st_size;
  if (direct) open_direct(out, path);
  return 0;
fail:
  close(fd);
  return rc;
}

void m3__segment_close(m3_segment *seg) {
  if (seg->fd >= 0) close(seg->fd);
  if (seg->dfd >= 0) close(seg->dfd);
  seg->fd = seg->dfd = -1;
}

int m3__segment_truncate(m3_segment *seg, const char *dir, uint64_t size) {
  char path[4096];
  if (ftruncate(seg->fd, (off_t)size) != 0 || fdatasync(seg->fd) != 0)
    return m3__syserr(errno, "truncate %s to %llu",
                      m3__segment_path(dir, seg->id, path, sizeof path),
                      (unsigned long long)size);
  return 0;
}

int m3__segment_append(m3_segment *seg, const char *dir, const void *buf, size_t len) {
  char path[4096];
  size_t done = 0;
  int err = 0;
  while (done < len && err == 0) {
    err = m3__fault("segment.write");
    if (err) break;
    ssize_t k = pwrite(seg->fd, (const char *)buf + done, len - done,
                       (off_t)(seg->size + done));
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) err = errno;
    else if (k == 0) err = EIO;
    else done += (size_t)k;
  }
  if (err == 0) {
    err = m3__fault("segment.sync");
    if (err == 0 && fdatasync(seg->fd) != 0) err = errno;
    if (err) {
      int rc = m3__syserr(err, "fdatasync %s", m3__segment_path(dir, seg->id, path, sizeof path));
      (void)ftruncate(seg->fd, (off_t)seg->size);
      return rc;
    }
    return 0;
  }
  int rc = m3__syserr(err, "append %zu bytes to %s at offset %llu", len,
                      m3__segment_path(dir, seg->id, path, sizeof path),
                      (unsigned long long)seg->size);
  /* Leave no partial record behind; if even this fails, the next open cuts
   * the torn tail. */
  if (ftruncate(seg->fd, (off_t)seg->size) == 0) (void)fdatasync(seg->fd);
  return rc;
}

/* ---- scanning ------------------------------------------------------- */

typedef struct window {
  int fd;
  uint8_t *buf;
  size_t cap;
  uint64_t off;  /* file offset of buf[0] */
  size_t len;    /* valid bytes in buf */
  uint64_t eof;
} window;

/* Make [off, off+need) available; returns a pointer or NULL when the file
 * ends first (or on a read error, with *err set). */
static const uint8_t *win_get(window *w, uint64_t off, size_t need, int *err) {
  if (off + need > w->eof) return NULL;
  if (off >= w->off && off + need <= w->off + w->len) return w->buf + (off - w->off);
  size_t want = need > (4u << 20) ? need : (4u << 20);
  if (want > w->cap) {
    uint8_t *nb = realloc(w->buf, want);
    if (nb == NULL) {
      *err = M3_ENOMEM;
      return NULL;
    }
    w->buf = nb;
    w->cap = want;
  }
  size_t n = w->cap;
  if (off + n > w->eof) n = (size_t)(w->eof - off);
  size_t got = 0;
  while (got < n) {
    ssize_t k = pread(w->fd, w->buf + got, n - got, (off_t)(off + got));
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      *err = k < 0 ? m3__from_errno(errno) : M3_EIO;
      return NULL;
    }
    got += (size_t)k;
  }
  w->off = off;
  w->len = got;
  return w->buf;
}

/* Whether a record's last bytes (up to a sector's worth of its body) are
 * all zeros, as the unwritten rest of an interrupted write reads. */
static int zero_filled_end(const uint8_t *p, uint32_t rec_len) {
  uint32_t body = rec_len > M3_RECORD_HEADER_SIZE ? rec_len - M3_RECORD_HEADER_SIZE : 0;
  uint32_t n = body < 512 ? body : 512;
  if (n == 0) return 0;
  for (uint32_t i = rec_len - n; i < rec_len; i++)
    if (p[i] != 0) return 0;
  return 1;
}

static void report(const m3_scan_cb *cb, const m3_segment *seg, uint64_t off, uint64_t chunk_id,
                   int err, const char *detail) {
  if (cb->on_problem == NULL) return;
  m3_problem p = {chunk_id, seg->id, off, err, detail};
  cb->on_problem(cb->ud, &p);
}

int m3__segment_scan(const m3_segment *seg, const char *dir, uint64_t start, uint32_t align,
                     const m3_scan_cb *cb, uint64_t *good_end, uint64_t *damaged) {
  struct stat st;
  char path[4096];
  m3__segment_path(dir, seg->id, path, sizeof path);
  if (fstat(seg->fd, &st) != 0) return m3__syserr(errno, "stat %s", path);
  window w = {seg->fd, NULL, 0, 0, 0, (uint64_t)st.st_size};
  uint64_t off = m3__round_up(start, align), end_ok = start, ndamaged = 0;
  int rc = 0, in_gap = 0; /* in_gap: looking for the next valid record */
  /* Problems after the last complete record are held back: if nothing
   * complete follows, they are a torn write (cut, not damage); if something
   * does, they are damage and get reported then. The first one is kept. */
  struct {
    int n, err;
    int garbage; /* the first is bytes that are neither zeros nor a record
                    header: damage even when nothing follows */
    uint64_t off, chunk_id;
    char detail[256];
  } held = {0, 0, 0, 0, 0, ""};
#define HOLD(o, id, e, msg)                                                     do {                                                                            if (held.n++ == 0) {                                                            held.off = (o);                                                               held.chunk_id = (id);                                                         held.err = (e);                                                               snprintf(held.detail, sizeof held.detail, "%s", (msg));                     }                                                                           } while (0)
#define FLUSH_HELD()                                                            do {                                                                            if (held.n) {                                                                   ndamaged++;                                                                   report(cb, seg, held.off, held.chunk_id, held.err, held.detail);             held.n = 0; held.garbage = 0;                                                                 }                                                                           } while (0)

  while (off + M3_RECORD_HEADER_SIZE <= w.eof) {
    int err = 0;
    const uint8_t *p = win_get(&w, off, M3_RECORD_HEADER_SIZE, &err);
    if (p == NULL) {
      rc = err ? err : M3_EIO;
      if (rc == M3_EIO) m3__syserr(EIO, "read %s at %llu", path, (unsigned long long)off);
      goto out;
    }
    m3_record r;
    int prc = m3_record_parse(p, M3_RECORD_HEADER_SIZE, M3_PARSE_HEADER, &r);
    if (prc != 0) {
      /* Zeros are padding or a never-written tail, not damage worth a report. */
      if (!in_gap) {
        int zero = 1;
        for (int i = 0; i < M3_RECORD_HEADER_SIZE && zero; i++) zero = p[i] == 0;
        if (!zero) {
          if (held.n == 0) held.garbage = 1;
          HOLD(off, UINT64_MAX, prc, m3_errmsg());
        }
        in_gap = 1;
      }
      off += align;
      continue;
    }
    uint32_t rec_len = (uint32_t)m3_record_total_size(&r);
    p = win_get(&w, off, rec_len, &err);
    if (p == NULL) {
      if (err) {
        rc = err;
        goto out;
      }
      /* The header promises more bytes than the file has: torn. */
      if (!in_gap) {
        char msg[256];
        snprintf(msg, sizeof msg, "record %llu: truncated at end of segment",
                 (unsigned long long)r.chunk_id);
        HOLD(off, r.chunk_id, M3_EBADFORMAT, msg);
      }
      in_gap = 1;
      off += align;
      continue;
    }
    prc = m3_record_parse(p, rec_len, M3_PARSE_ALL, &r);
    if (prc != 0 && !in_gap && zero_filled_end(p, rec_len)) {
      /* A valid header and a body that ends in zeros: the record a crash
       * interrupted after the file grew (preallocated, or its size made
       * durable before its data). Torn if nothing complete follows, as a
       * truncated one; damage (reported then) if something does. */
      char msg[256];
      snprintf(msg, sizeof msg, "record %llu: %s (its end is zeros: an unfinished write)",
               (unsigned long long)r.chunk_id, m3_errmsg());
      HOLD(off, r.chunk_id, prc, msg);
      in_gap = 1;
      off += m3__round_up(rec_len, align);
      continue;
    }
    FLUSH_HELD(); /* a complete record follows: what came before was damage */
    if (prc != 0) {
      ndamaged++;
      report(cb, seg, off, r.chunk_id, prc, m3_errmsg());
      /* The header is intact, so its length can be trusted to skip it. The
       * record is complete on disk, so this is damage, not a torn write:
       * keep its bytes (end_ok moves past it) rather than cut them. */
      off += m3__round_up(rec_len, align);
      end_ok = off;
      in_gap = 0;
      continue;
    }
    in_gap = 0;
    if (cb->layout && !(r.flags & M3_RECORD_TOMBSTONE) && !m3_layout_equal(&r.layout, cb->layout)) {
      char msg[256];
      snprintf(msg, sizeof msg,
               "record %llu: its layout differs from the store's (a foreign record): skipped",
               (unsigned long long)r.chunk_id);
      ndamaged++;
      report(cb, seg, off, r.chunk_id, M3_ESHAPE, msg);
      M3_WARN("store", "%s at offset %llu: %s", path, (unsigned long long)off, msg);
      off += m3__round_up(rec_len, align);
      end_ok = off;
      continue;
    }
    if (cb->on_record && (rc = cb->on_record(cb->ud, seg, off, &r, rec_len)) != 0) goto out;
    off += m3__round_up(rec_len, align);
    end_ok = off;
  }
  /* Nothing complete follows what is held: a torn write, cut by the
   * caller, unless it began with garbage where a record should start, which
   * no crash of ours leaves: damage, reported (and still cut). */
  if (held.garbage) FLUSH_HELD();
#undef HOLD
#undef FLUSH_HELD
out:
  free(w.buf);
  if (good_end) *good_end = end_ok;
  if (damaged) *damaged = ndamaged;
  return rc;
}
