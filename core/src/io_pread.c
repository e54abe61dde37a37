/* The pread read backend: one pread(2) per read, retried until the range is
 * read, the file ends, or an error. The reference the io_uring backend is
 * tested against. */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "io.h"
#include "m3/error.h"

static int pread_batch(m3_io *io, m3_read *reads, size_t n) {
  (void)io;
  for (size_t i = 0; i < n; i++) {
    m3_read *r = &reads[i];
    size_t done = 0;
    r->res = 0;
    while (done < r->len) {
      ssize_t k = pread(r->fd, (char *)r->buf + done, r->len - done, (off_t)(r->off + done));
      if (k < 0) {
        if (errno == EINTR) continue;
        r->res = -errno;
        break;
      }
      if (k == 0) break;
      done += (size_t)k;
    }
    if (r->res == 0) r->res = (int)done;
  }
  return 0;
}

static void pread_destroy(m3_io *io) { free(io); }

static const m3_io_ops pread_ops = {"pread", pread_batch, pread_destroy};

int m3__io_pread_create(m3_io **out) {
  m3_io *io = malloc(sizeof *io);
  if (io == NULL) return m3__seterr(M3_ENOMEM, "pread backend: out of memory");
  io->ops = &pread_ops;
  *out = io;
  return 0;
}
