/*
 * Small file and time helpers shared by the m3-encode subcommands (and the
 * encoder tests that link the BPE trainer).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "encode_int.h"
#include "m3/error.h"

double enc_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int enc_read_file(const char *path, char **buf, size_t *len) {
  *buf = NULL, *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return m3__syserr(errno, "open %s", path);
  size_t cap = 1 << 16, n = 0;
  char *b = malloc(cap + 1);
  while (b) {
    size_t got = fread(b + n, 1, cap - n, f);
    n += got;
    if (n < cap) break;
    char *nb = realloc(b, cap * 2 + 1);
    if (!nb) { free(b); b = NULL; break; }
    b = nb, cap *= 2;
  }
  int err = ferror(f);
  fclose(f);
  if (!b) return m3__seterr(M3_ENOMEM, "read %s: out of memory", path);
  if (err) {
    free(b);
    return m3__seterr(M3_EIO, "read %s: i/o error", path);
  }
  b[n] = '\0';
  *buf = b, *len = n;
  return 0;
}

int enc_mkdirs(const char *path) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) return m3__syserr(errno, "mkdir %s", buf);
    *p = '/';
  }
  if (mkdir(buf, 0755) != 0 && errno != EEXIST) return m3__syserr(errno, "mkdir %s", buf);
  return 0;
}

