/* The helpers every C test shares; see m3test.h. */
#include "lib/m3test.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

uint64_t m3t_rand(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double m3t_unif(uint64_t *state) { return (double)(m3t_rand(state) >> 11) * 0x1.0p-53; }

float m3t_randf(uint64_t *state) { return (float)(m3t_unif(state) * 2.0 - 1.0); }

void m3t_randvec(uint64_t *state, float *v, unsigned dim) {
  for (unsigned i = 0; i < dim; i++) v[i] = m3t_randf(state);
}

void m3t_rand_unit(uint64_t *state, float *v, unsigned dim) {
  double norm = 0;
  for (unsigned d = 0; d < dim; d++) {
    double g = 0;
    for (int k = 0; k < 4; k++) g += m3t_unif(state) - 0.5;
    v[d] = (float)g;
    norm += g * g;
  }
  for (unsigned d = 0; d < dim; d++) v[d] = (float)(v[d] / sqrt(norm));
}

char *m3t_mkdtemp(const char *tag) {
  const char *tmp = getenv("TMPDIR");
  char *p = malloc(4096);
  assert_non_null(p);
  snprintf(p, 4096, "%s/m3test-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", tag);
  if (mkdtemp(p) == NULL) fail_msg("mkdtemp %s: %s", p, strerror(errno));
  return p;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  remove(path);
  return 0;
}

void m3t_rmrf(const char *path) {
  if (path == NULL) return;
  if (getenv("M3_TEST_KEEP")) {
    fprintf(stderr, "# kept %s\n", path);
    return;
  }
  nftw(path, rm_one, 32, FTW_DEPTH | FTW_PHYS);
}

char *m3t_write_file(const char *dir, const char *name, const char *content) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *path = malloc(n);
  assert_non_null(path);
  snprintf(path, n, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  if (f == NULL) fail_msg("write %s: %s", path, strerror(errno));
  fprintf(f, "%s\n", content);
  if (fclose(f) != 0) fail_msg("write %s: %s", path, strerror(errno));
  return path;
}

long long m3t_file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

void m3t_flip_byte(const char *path, uint64_t off) {
  int fd = open(path, O_RDWR);
  if (fd < 0) fail_msg("open %s: %s", path, strerror(errno));
  uint8_t b;
  if (pread(fd, &b, 1, (off_t)off) != 1) fail_msg("read %s at %llu", path, (unsigned long long)off);
  b ^= 0xff;
  if (pwrite(fd, &b, 1, (off_t)off) != 1) fail_msg("write %s at %llu", path, (unsigned long long)off);
  fsync(fd);
  close(fd);
}

long long m3t_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void m3t_sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

void m3t_bin_path(char *buf, size_t cap, const char *name) {
  const char *bin = getenv("M3_BIN_DIR");
  if (bin && *bin) {
    snprintf(buf, cap, "%s/%s", bin, name);
    return;
  }
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n < 0) fail_msg("readlink /proc/self/exe: %s", strerror(errno));
  self[n] = '\0';
  char *slash = strrchr(self, '/');
  if (slash) *slash = '\0';
  snprintf(buf, cap, "%s/%s", self, name);
}

int m3t_sh(const char *fmt, ...) {
  char cmd[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  fflush(stdout);
  int st = system(cmd);
  if (st == -1) fail_msg("system(%s): %s", cmd, strerror(errno));
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
