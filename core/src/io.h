/*
 * Read backends behind one small table: io_uring (batched: one submission
 * for a whole fetch) and pread (one syscall per read, for kernels or
 * containers that refuse io_uring). Both run the same tests. Private to core/.
 */
#ifndef M3_IO_H
#define M3_IO_H

#include <stddef.h>
#include <stdint.h>

typedef struct m3_read {
  int fd;       /* in */
  uint64_t off; /* in */
  uint32_t len; /* in */
  void *buf;    /* in: len bytes */
  int res;      /* out: bytes read (== len unless the file ends first), or -errno */
} m3_read;

typedef struct m3_io m3_io;

typedef struct m3_io_ops {
  const char *name;
  /* Perform all n reads; each gets its own res. Returns 0, or a negative m3
   * code when the batch could not be run at all. */
  int (*read_batch)(m3_io *io, m3_read *reads, size_t n);
  void (*destroy)(m3_io *io);
} m3_io_ops;

struct m3_io {
  const m3_io_ops *ops;
};

/* Create a backend; *out is freed with io->ops->destroy(io). */
int m3__io_uring_create(unsigned depth, m3_io **out);
int m3__io_pread_create(m3_io **out);

#endif /* M3_IO_H */
