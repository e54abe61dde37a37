/*
 * The io_uring read backend. A fetch of N memories is N reads submitted with
 * one io_uring_enter and reaped together: the kernel and the drive see the
 * whole batch at once, which is what keeps a 5-memory fetch close to the time
 * of the slowest single read. Short reads (which io_uring may return) are
 * resubmitted for the remainder.
 *
 * A hard failure of io_uring_enter (not EINTR/EAGAIN/EBUSY) must not return
 * while reads are still in the kernel: the caller would free or reuse the
 * buffers the kernel is about to write, and SQEs left unconsumed in the ring
 * would be submitted by the next batch with this batch's pointers. So the
 * batch first reaps every read the kernel took, then replaces the ring (which
 * discards the unconsumed SQEs), and finishes what is left with pread: the
 * caller gets its reads, and the next batch starts on a clean ring. If even
 * reaping fails the process aborts, since no return is safe then.
 */
#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "io.h"
#include "m3/error.h"
#include "m3/fault.h"
#include "m3/log.h"

typedef struct uring_io {
  m3_io base;
  struct io_uring ring;
  unsigned depth;
  int ring_ok; /* 0 after a ring could not be replaced: every read uses pread */
} uring_io;

static void prep(struct io_uring_sqe *sqe, m3_read *r, size_t done, uint64_t idx) {
  io_uring_prep_read(sqe, r->fd, (char *)r->buf + done, (unsigned)(r->len - done),
                     r->off + done);
  io_uring_sqe_set_data64(sqe, idx);
}

/* Finish a read with pread; used only if the ring has no free entry for a
 * resubmission, which the accounting in uring_batch rules out in practice. */
static void finish_sync(m3_read *r) {
  while ((uint32_t)r->res < r->len) {
    ssize_t k = pread(r->fd, (char *)r->buf + r->res, r->len - (uint32_t)r->res,
                      (off_t)(r->off + (uint64_t)r->res));
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) {
      r->res = -errno;
      return;
    }
    if (k == 0) return;
    r->res += (int)k;
  }
}

/* SQEs prepared but not yet consumed by the kernel. */
static unsigned ring_pending(uring_io *u) {
  return io_uring_sq_ready(&u->ring);
}

/* Replace the ring: io_uring_queue_exit discards SQEs the kernel never
 * consumed. On failure the backend falls back to pread for good. */
static void ring_replace(uring_io *u) {
  io_uring_queue_exit(&u->ring);
  int rc = io_uring_queue_init(u->depth, &u->ring, 0);
  if (rc < 0) {
    u->ring_ok = 0;
    M3_WARN("io", "io_uring ring could not be recreated (%s): reads use pread from now on",
            strerror(-rc));
  }
}

/* After io_uring_enter failed with err: reap the `taken` reads the kernel
 * holds, replace the ring, and finish every read with pread from where it
 * stands (reads that completed keep their result). */
static void recover(uring_io *u, m3_read *reads, size_t n, size_t taken, int err) {
  M3_WARN("io", "io_uring_enter failed (%s) with %zu reads in the kernel: draining, "
          "replacing the ring, finishing with pread", strerror(err), taken);
  while (taken > 0) {
    struct io_uring_cqe *cqe;
    int rc = io_uring_wait_cqe(&u->ring, &cqe);
    if (rc == -EINTR || rc == -EAGAIN) continue;
    /* The kernel still owns buffers we cannot reap: no return is safe. */
    M3_ASSERT(rc == 0);
    m3_read *r = &reads[io_uring_cqe_get_data64(cqe)];
    if (cqe->res > 0) r->res += cqe->res;
    io_uring_cqe_seen(&u->ring, cqe);
    taken--;
  }
  ring_replace(u);
  for (size_t i = 0; i < n; i++)
    if (reads[i].res >= 0) finish_sync(&reads[i]);
}

static int uring_batch(m3_io *base, m3_read *reads, size_t n) {
  uring_io *u = (uring_io *)base;
  size_t next = 0, inflight = 0;
  for (size_t i = 0; i < n; i++) reads[i].res = 0;
  if (!u->ring_ok) {
    for (size_t i = 0; i < n; i++) finish_sync(&reads[i]);
    return 0;
  }

  while (next < n || inflight > 0) {
    /* Fill the ring with what is left to submit. */
    while (next < n) {
      struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
      if (sqe == NULL) break;
      prep(sqe, &reads[next], 0, next);
      next++;
      inflight++;
    }
    int ferr = m3__fault("io_uring.submit");
    int rc = ferr ? -ferr : io_uring_submit_and_wait(&u->ring, 1);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      recover(u, reads, n, inflight - ring_pending(u), -rc);
      return 0;
    }

    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&u->ring, head, cqe) {
      seen++;
      size_t i = (size_t)io_uring_cqe_get_data64(cqe);
      m3_read *r = &reads[i];
      inflight--;
      if (cqe->res < 0) {
        if (cqe->res == -EAGAIN || cqe->res == -EINTR) {
          /* Transient: submit again from where this read stands. */
          struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
          if (sqe) {
            prep(sqe, r, (size_t)r->res, i);
            inflight++;
          } else {
            finish_sync(r);
          }
          continue;
        }
        r->res = cqe->res;
        continue;
      }
      if (cqe->res == 0) continue; /* end of file: r->res says how far */
      r->res += cqe->res;
      if ((uint32_t)r->res < r->len) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
        if (sqe == NULL) {
          finish_sync(r);
          continue;
        }
        prep(sqe, r, (size_t)r->res, i);
        inflight++;
      }
    }
    io_uring_cq_advance(&u->ring, seen);
  }
  return 0;
}

static void uring_destroy(m3_io *base) {
  uring_io *u = (uring_io *)base;
  if (u == NULL) return;
  if (u->ring_ok) io_uring_queue_exit(&u->ring);
  free(u);
}

static const m3_io_ops uring_ops = {"io_uring", uring_batch, uring_destroy};

int m3__io_uring_create(unsigned depth, m3_io **out) {
  uring_io *u = calloc(1, sizeof *u);
  if (u == NULL) return m3__seterr(M3_ENOMEM, "io_uring backend: out of memory");
  u->depth = depth ? depth : 64;
  int rc = io_uring_queue_init(u->depth, &u->ring, 0);
  if (rc < 0) {
    free(u);
    return m3__syserr(-rc, "io_uring_queue_init(%u)", depth);
  }
  u->ring_ok = 1;
  u->base.ops = &uring_ops;
  *out = &u->base;
  return 0;
}
