/*
 * Training-sample files in the fvecs format (m3/codec.h): what codec training
 * reads until m3-encode feeds real K/V samples, and what m3-bench codec
 * --vectors takes. Files are read whole; samples are at most a few million
 * vectors.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "m3_endian.h"
#include "m3/codec.h"
#include "m3/error.h"

int m3_codec_vectors_read(const char *path, unsigned want_dim, float **x, size_t *n,
                          unsigned *dim) {
  int rc = 0;
  FILE *f = NULL;
  float *v = NULL;
  *x = NULL;
  *n = 0;
  f = fopen(path, "rb");
  if (!f) {
    rc = m3__syserr(errno, "vectors %s: open", path);
    goto out;
  }
  uint8_t hdr[4];
  if (fread(hdr, 1, 4, f) != 4) {
    rc = m3__seterr(M3_EBADFORMAT, "vectors %s: empty or shorter than one vector header", path);
    goto out;
  }
  uint32_t d = m3__ld32(hdr);
  if (d == 0 || d > M3_CODEC_MAX_DIM || (want_dim && d != want_dim)) {
    rc = m3__seterr(M3_EBADFORMAT, "vectors %s: vector 0: dim field is %u, expected %s%u",
                    path, d, want_dim ? "" : "1..", want_dim ? want_dim : M3_CODEC_MAX_DIM);
    goto out;
  }
  if (fseek(f, 0, SEEK_END) != 0) {
    rc = m3__syserr(errno, "vectors %s: seek", path);
    goto out;
  }
  long size = ftell(f);
  size_t rec = 4 + 4 * (size_t)d;
  if (size < 0 || (size_t)size % rec != 0) {
    rc = m3__seterr(M3_EBADFORMAT, "vectors %s: size %ld is not a multiple of the %zu-byte record of a %u-dim vector",
                    path, size, rec, d);
    goto out;
  }
  size_t count = (size_t)size / rec;
  v = malloc(count * d * sizeof(float) + 1);
  uint8_t *row = malloc(rec);
  if (!v || !row) {
    free(row);
    rc = m3__seterr(M3_ENOMEM, "vectors %s: out of memory for %zu vectors", path, count);
    goto out;
  }
  rewind(f);
  for (size_t i = 0; i < count; i++) {
    if (fread(row, 1, rec, f) != rec) {
      rc = m3__seterr(M3_EIO, "vectors %s: short read at vector %zu", path, i);
      break;
    }
    if (m3__ld32(row) != d) {
      rc = m3__seterr(M3_EBADFORMAT, "vectors %s: vector %zu: dim field is %u, vector 0 has %u",
                      path, i, m3__ld32(row), d);
      break;
    }
    for (uint32_t j = 0; j < d; j++) {
      uint32_t u = m3__ld32(row + 4 + 4 * (size_t)j);
      memcpy(&v[i * d + j], &u, 4);
    }
  }
  free(row);
  if (rc)
    goto out;
  *x = v;
  v = NULL;
  *n = count;
  if (dim)
    *dim = d;
out:
  free(v);
  if (f)
    fclose(f);
  return rc;
}

int m3_codec_vectors_write(const char *path, const float *x, size_t n, unsigned dim) {
  int rc = 0;
  FILE *f = fopen(path, "wb");
  if (!f)
    return m3__syserr(errno, "vectors %s: create", path);
  uint8_t hdr[4];
  m3__st32(hdr, dim);
  for (size_t i = 0; i < n && !rc; i++)
    if (fwrite(hdr, 1, 4, f) != 4 || fwrite(x + i * dim, 4, dim, f) != dim)
      rc = m3__syserr(errno, "vectors %s: write at vector %zu", path, i);
  if (fclose(f) != 0 && !rc)
    rc = m3__syserr(errno, "vectors %s: close", path);
  return rc;
}
