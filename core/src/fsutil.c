/*
 * Durable file replacement (m3/internal/fsutil.h): temp file, fsync,
 * rename, directory fsync, in one place.
 */
#include "m3/internal/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "m3/error.h"

int m3__fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return m3__syserr(errno, "open directory %s", dir);
  int rc = fsync(fd) != 0 ? m3__syserr(errno, "fsync directory %s", dir) : 0;
  close(fd);
  return rc;
}

int m3__fs_write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len) {
    ssize_t w = write(fd, p, len);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return w < 0 ? errno : EIO;
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

/* The directory part of path ("." when it has none) into a new string. */
static char *dir_of(const char *path) {
  const char *slash = strrchr(path, '/');
  if (!slash) return strdup(".");
  size_t n = slash == path ? 1 : (size_t)(slash - path);
  char *d = malloc(n + 1);
  if (d) {
    memcpy(d, path, n);
    d[n] = '\0';
  }
  return d;
}

int m3__fs_replace_fn(const char *path, m3__fs_writer fn, void *ud) {
  size_t plen = strlen(path);
  char *tmp = malloc(plen + 5), *dir = dir_of(path);
  int rc = 0, fd = -1, renamed = 0;
  if (!tmp || !dir) {
    rc = m3__seterr(M3_ENOMEM, "replace %s: out of memory", path);
    goto out;
  }
  memcpy(tmp, path, plen);
  memcpy(tmp + plen, ".tmp", 5);
  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    rc = m3__syserr(errno, "create %s", tmp);
    goto out;
  }
  if ((rc = fn(fd, tmp, ud)) != 0) goto out;
  if (fsync(fd) != 0) {
    rc = m3__syserr(errno, "fsync %s", tmp);
    goto out;
  }
  int cl = close(fd);
  fd = -1;
  if (cl != 0) {
    rc = m3__syserr(errno, "close %s", tmp);
    goto out;
  }
  if (rename(tmp, path) != 0) {
    rc = m3__syserr(errno, "rename %s to %s", tmp, path);
    goto out;
  }
  renamed = 1;
  rc = m3__fsync_dir(dir);
out:
  if (fd >= 0) close(fd);
  if (rc && !renamed && tmp) unlink(tmp);
  free(tmp);
  free(dir);
  return rc;
}

typedef struct buf_src {
  const void *buf;
  size_t len;
} buf_src;

static int write_buf(int fd, const char *tmp, void *ud) {
  const buf_src *b = ud;
  int e = m3__fs_write_all(fd, b->buf, b->len);
  return e ? m3__syserr(e, "write %s", tmp) : 0;
}

int m3__fs_replace(const char *path, const void *buf, size_t len) {
  buf_src b = {buf, len};
  return m3__fs_replace_fn(path, write_buf, &b);
}
