/*
 * core's internal-but-shared file and hash helpers (m3/internal/fsutil.h,
 * m3/internal/hash.h): a replace writes the new bytes and leaves no temp
 * file; a failed write keeps the old file; errors name the file; published
 * FNV-1a 64 vectors and fmix64 values.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "m3/internal/fsutil.h"
#include "m3/internal/hash.h"
#include "testutil.h"

/* path holds exactly want[0..n), and path.tmp is gone. */
static void check_file(const char *path, const char *want, size_t n) {
  char buf[4096], tmp[4200];
  FILE *f = fopen(path, "rb");
  if (!f) fail_msg("open %s: %s", path, strerror(errno));
  size_t got = fread(buf, 1, sizeof buf, f);
  fclose(f);
  CHECK_U64(got, n);
  assert_memory_equal(buf, want, n);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  struct stat st;
  if (stat(tmp, &st) == 0) fail_msg("%s left behind", tmp);
}

static void test_replace(void **state) {
  (void)state;
  char *dir = m3t_mkdtemp("fsutil");
  char path[4200];
  snprintf(path, sizeof path, "%s/f.bin", dir);
  CHECK_OK(m3__fs_replace(path, "first", 5));
  check_file(path, "first", 5);
  CHECK_OK(m3__fs_replace(path, "the second", 10)); /* over an existing file */
  check_file(path, "the second", 10);
  CHECK_OK(m3__fs_replace(path, "", 0)); /* empty contents */
  check_file(path, "", 0);
  CHECK_OK(m3__fsync_dir(dir));
  m3t_rmrf(dir);
  free(dir);
}

static int fail_after_some(int fd, const char *tmp, void *ud) {
  (void)ud;
  if (m3__fs_write_all(fd, "partial", 7) != 0) return m3__seterr(M3_EIO, "write %s", tmp);
  return m3__seterr(M3_ENOSPC, "write %s: no space (test)", tmp);
}

static void test_failed_write_keeps_old(void **state) {
  (void)state;
  char *dir = m3t_mkdtemp("fsutil");
  char path[4200];
  snprintf(path, sizeof path, "%s/keep", dir);
  CHECK_OK(m3__fs_replace(path, "old", 3));
  CHECK_RC(m3__fs_replace_fn(path, fail_after_some, NULL), M3_ENOSPC);
  CHECK_CONTAINS(m3_errmsg(), "keep.tmp");
  check_file(path, "old", 3);
  m3t_rmrf(dir);
  free(dir);
}

static void test_errors_name_the_file(void **state) {
  (void)state;
  char *dir = m3t_mkdtemp("fsutil");
  char missing[4096], path[4200];
  snprintf(missing, sizeof missing, "%s/no-such-dir", dir);
  snprintf(path, sizeof path, "%s/f", missing);
  int rc = m3__fs_replace(path, "x", 1);
  assert_true(rc < 0);
  CHECK_CONTAINS(m3_errmsg(), "no-such-dir/f.tmp");
  rc = m3__fsync_dir(missing);
  assert_true(rc < 0);
  CHECK_CONTAINS(m3_errmsg(), "no-such-dir");
  m3t_rmrf(dir);
  free(dir);
}

static void test_hash_vectors(void **state) {
  (void)state;
  /* FNV-1a 64 check values (draft-eastlake-fnv). */
  CHECK_U64(m3__fnv1a64("", 0), 0xcbf29ce484222325ull);
  CHECK_U64(m3__fnv1a64("a", 1), 0xaf63dc4c8601ec8cull);
  CHECK_U64(m3__fnv1a64("foobar", 6), 0x85944171f73967e8ull);
  CHECK_U64(m3__fnv1a64_add(m3__fnv1a64("foo", 3), "bar", 3), 0x85944171f73967e8ull);
  /* MurmurHash3 fmix64: 0 is fixed; these two by the reference formula. */
  CHECK_U64(m3__fmix64(0), 0);
  CHECK_U64(m3__fmix64(1), 0xb456bcfc34c2cb2cull);
  CHECK_U64(m3__fmix64(0x123456789abcdef0ull), 0x18b8c062f6f42398ull);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_replace),
      cmocka_unit_test(test_failed_write_keeps_old),
      cmocka_unit_test(test_errors_name_the_file),
      cmocka_unit_test(test_hash_vectors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
