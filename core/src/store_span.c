/*
 * Where memories lie in the segment files, for a server that sends them
 * without reading them through user space (m3/store.h, m3_store_spans).
 *
 * Under the store's shared lock (trylock: an event loop never waits behind
 * a commit) each item is looked up (cache, location table) as m3_store_aio_submit
 * does; for a record in a segment file, only its 64-byte header is read
 * (pread: this path is for stores served from the page cache) and checked
 * (header CRC, chunk id, mem_crc against the catalog, layout), and the
 * record's byte range is handed out with the segment's descriptor. The
 * memory bytes themselves are not checked here: whoever receives them
 * checks the payload CRC32C. Each span pins the descriptor like a read in
 * flight (s->aio_reads) until m3_store_spans_release.
 *
 * With M3_SPANS_CACHED (the server's default) the header and the record's
 * last byte are read with preadv2(RWF_NOWAIT), which fails with EAGAIN
 * instead of going to the disk: a record not in the page cache makes the
 * whole batch COLD and the server reads it on its io_uring instead, so the
 * loop thread never waits for the drive on this path.
 */

#include <errno.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>

#include "m3/error.h"
#include "m3/log.h"
#include "store_int.h"

/* pread, or with nowait a preadv2(RWF_NOWAIT): -1 with errno EAGAIN when
 * the bytes are not in the page cache (EOPNOTSUPP: cannot tell). */
static ssize_t read_at(int fd, void *buf, size_t len, uint64_t off, int nowait) {
  if (!nowait) return pread(fd, buf, len, (off_t)off);
  struct iovec v = {buf, len};
  return preadv2(fd, &v, 1, (off_t)off, RWF_NOWAIT);
}

static int is_cold(int err) { return err == EAGAIN || err == EOPNOTSUPP || err == EWOULDBLOCK; }

/* Read and check the header of the record at loc (into it->buf). */
static int span_one(m3_store *s, m3_fetch_item *it, const m3_location *loc, m3_span *sp,
                    int nowait) {
  char path[4096];
  m3_segment *seg = m3__store_seg(s, loc->segment);
  if (seg == NULL || seg->fd < 0 || loc->offset + loc->mem_len > seg->size)
    return m3__seterr(M3_ECORRUPT, "chunk %llu: catalog points at %s offset %llu, past the data",
                      (unsigned long long)it->chunk_id,
                      m3__segment_path(s->dir, loc->segment, path, sizeof path),
                      (unsigned long long)loc->offset);
  ssize_t got = read_at(seg->fd, it->buf, M3_RECORD_HEADER_SIZE, loc->offset, nowait);
  if (got < 0 && nowait && is_cold(errno)) return M3_SPANS_COLD;
  if (got < 0)
    return m3__syserr(errno, "read the header of chunk %llu from %s offset %llu",
                      (unsigned long long)it->chunk_id,
                      m3__segment_path(s->dir, loc->segment, path, sizeof path),
                      (unsigned long long)loc->offset);
  m3_record r;
  int rc = got < M3_RECORD_HEADER_SIZE
               ? m3__seterr(M3_ECORRUPT, "record %llu: the file ends inside its header",
                            (unsigned long long)it->chunk_id)
               : m3_record_parse(it->buf, M3_RECORD_HEADER_SIZE, M3_PARSE_HEADER, &r);
  if (rc == 0 && r.chunk_id != it->chunk_id)
    rc = m3__seterr(M3_ECORRUPT, "record at the location of chunk %llu holds chunk %llu",
                    (unsigned long long)it->chunk_id, (unsigned long long)r.chunk_id);
  if (rc == 0 && (r.mem_crc != loc->mem_crc ||
                  M3_RECORD_HEADER_SIZE + (size_t)r.mem_bytes != loc->mem_len))
    rc = m3__seterr(M3_ECORRUPT, "record %llu: mem_crc %08x of %u bytes, catalog expects %08x",
                    (unsigned long long)it->chunk_id, r.mem_crc, r.mem_bytes, loc->mem_crc);
  if (rc == 0 && !m3_layout_equal(&r.layout, &s->ident.layout))
    rc = m3__seterr(M3_ECORRUPT, "record %llu: layout differs from the store's",
                    (unsigned long long)it->chunk_id);
  if (rc) {
    M3_ERROR("store", "%s offset %llu: %s",
             m3__segment_path(s->dir, loc->segment, path, sizeof path),
             (unsigned long long)loc->offset, m3_errmsg());
    return rc == M3_EBADFORMAT || rc == M3_EVERSION ? M3_ECORRUPT : rc;
  }
  if (nowait && loc->mem_len > M3_RECORD_HEADER_SIZE) {
    uint8_t last;
    ssize_t t = read_at(seg->fd, &last, 1, loc->offset + loc->mem_len - 1, 1);
    if (t < 0 && is_cold(errno)) return M3_SPANS_COLD;
    if (t != 1)
      return m3__syserr(t < 0 ? errno : EIO, "read the end of chunk %llu from %s offset %llu",
                        (unsigned long long)it->chunk_id,
                        m3__segment_path(s->dir, loc->segment, path, sizeof path),
                        (unsigned long long)loc->offset);
  }
  it->data = it->buf;
  it->len = loc->mem_len;
  sp->fd = seg->fd;
  sp->off = loc->offset;
  sp->len = loc->mem_len;
  return 0;
}

int m3_store_spans(m3_store *s, m3_fetch_item *items, size_t n, m3_span *spans, unsigned flags) {
  if (n == 0) return 0;
  if (s->opts.direct)
    return m3__seterr(M3_EUNSUPPORTED, "store %s reads with O_DIRECT: no spans", s->dir);
  int rc = 0, locked = 0;
  size_t nmiss = 0;
  uint64_t *ids = malloc(n * sizeof *ids);
  m3_location *locs = malloc(n * sizeof *locs);
  int *st = malloc(n * sizeof *st);
  size_t *miss = malloc(n * sizeof *miss);
  for (size_t i = 0; i < n; i++) spans[i] = (m3_span){-1, 0, 0};
  if (!ids || !locs || !st || !miss) {
    rc = m3__seterr(M3_ENOMEM, "spans of %zu memories: out of memory", n);
    goto out;
  }
  if (pthread_rwlock_tryrdlock(&s->rw) != 0) {
    rc = m3__seterr(M3_EBUSY, "store %s: a write is in progress", s->dir);
    goto out;
  }
  locked = 1;
  for (size_t i = 0; i < n && rc == 0; i++) {
    int got = m3__fetch_item_init(s, &items[i], i);
    if (got < 0) rc = got;
    else if (got == 0) { /* not a cache hit (those are read whole into it->buf) */
      ids[nmiss] = items[i].chunk_id;
      miss[nmiss++] = i;
    }
  }
  if (rc == 0 && nmiss) rc = m3__store_locs(s, ids, nmiss, locs, st);
  for (size_t j = 0; j < nmiss && rc == 0; j++) {
    m3_fetch_item *it = &items[miss[j]];
    int e = st[j] ? st[j] : span_one(s, it, &locs[j], &spans[miss[j]],
                                     (flags & M3_SPANS_CACHED) != 0);
    if (e == M3_SPANS_COLD) {
      rc = e; /* released below: the caller reads the batch */
    } else if (e == 0) {
      atomic_fetch_add(&s->aio_reads, 1); /* under the lock: compaction sees it */
    } else if (e == M3_ENOTFOUND || e == M3_ECORRUPT || e == M3_EIO) {
      it->status = e;
      it->data = NULL;
      it->len = 0;
    } else {
      rc = e;
    }
  }
  if (rc) /* none handed out (an error, or cold) */
    for (size_t i = 0; i < n; i++)
      if (spans[i].fd >= 0) {
        spans[i].fd = -1;
        atomic_fetch_sub(&s->aio_reads, 1);
      }
out:
  if (locked) pthread_rwlock_unlock(&s->rw);
  free(ids);
  free(locs);
  free(st);
  free(miss);
  return rc;
}

void m3_store_spans_release(m3_store *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (atomic_fetch_sub(&s->aio_reads, 1) == 1) m3__store_retire_sweep(s);
}
