/*
 * Write failures through the fault injection points (m3/fault.h):
 * segment.write (ENOSPC), segment.sync (EIO), catalog.write (EIO). A failed
 * put or delete returns the matching code with a message naming the file,
 * leaves nothing of the batch visible and earlier data intact; the store
 * keeps working once the fault clears, and reopens clean with the same
 * content. A bulk ingest that fails is aborted without leaving an empty
 * segment. Also armed through $M3_FAULT in a child process.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "m3/fault.h"
#include "unit/testutil.h"

#define SEG 200000 /* four 42.5 KB memories per segment */

typedef struct fixture {
  char *dir;
  m3_layout l;
  m3_store *s;
  uint32_t version[64]; /* per id: 0 absent, else version + 1 */
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->dir = m3t_mkdtemp("fault");
  f->l = tu_layout_m3_14();
  m3_store_options o;
  tu_opts(&o, &f->l, 1, SEG);
  o.cache_bytes = 1u << 20;
  CHECK_OK(m3_store_open(f->dir, &o, &f->s));
  CHECK_OK(tu_put_range(f->s, 0, 10, 0));
  for (int i = 0; i < 10; i++) f->version[i] = 1;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  m3_fault_clear();
  m3_store_close(f->s);
  m3t_rmrf(f->dir);
  free(f->dir);
  free(f);
  return 0;
}

/* Everything acknowledged is there with its bytes; nothing else is. */
static void check_content(fixture *f) {
  for (uint64_t id = 0; id < 64; id++) {
    int c = m3_store_contains(f->s, id);
    if (c != (f->version[id] != 0))
      fail_msg("chunk %llu: contains %d, want %d", (unsigned long long)id, c, f->version[id] != 0);
    if (c == 1) tu_check_fetch(f->s, id, f->version[id] - 1);
  }
  uint64_t checked = 0;
  CHECK_OK(m3_store_verify(f->s, NULL, NULL, &checked));
}

static void reopen_and_check(fixture *f) {
  m3_store_close(f->s);
  f->s = NULL;
  m3_store_options o;
  tu_opts(&o, &f->l, 0, SEG);
  CHECK_OK(m3_store_open(f->dir, &o, &f->s));
  check_content(f);
}

/* Segment bytes on disk (sum of the files) and in the stats. */
static uint64_t disk_bytes(fixture *f) {
  uint64_t total = 0;
  for (uint32_t id = 0; id < 100; id++) {
    char p[4096];
    long long n = m3t_file_size(m3_store_segment_path(f->s, id, p, sizeof p));
    if (n > 0) total += (uint64_t)n;
  }
  return total;
}

static void put_ok(fixture *f, uint64_t first, size_t n, uint32_t version) {
  CHECK_OK(tu_put_range(f->s, first, n, version));
  for (size_t i = 0; i < n; i++) f->version[first + i] = version + 1;
}

static void failed_put(fixture *f, const char *point, int err, unsigned nth, uint64_t first,
                       size_t n, uint32_t version, int want, const char *want_msg) {
  m3_store_stats before, after;
  CHECK_OK(m3_store_stats_get(f->s, &before));
  uint64_t disk = disk_bytes(f);
  for (uint64_t id = first; id < first + n; id++)
    if (f->version[id]) tu_check_fetch(f->s, id, f->version[id] - 1); /* warm the cache */
  CHECK_OK(m3_fault_set(point, err, nth));
  CHECK_RC(tu_put_range(f->s, first, n, version), want);
  CHECK_CONTAINS(m3_errmsg(), want_msg);
  print_message("%s=%s@%u: %s\n", point, err == ENOSPC ? "ENOSPC" : "EIO", nth, m3_errmsg());
  m3_fault_clear();
  CHECK_OK(m3_store_stats_get(f->s, &after));
  CHECK_U64(after.records, before.records);
  CHECK_U64(after.record_bytes, before.record_bytes);
  /* segment bytes may only grow by empty segments (headers) created for the batch */
  CHECK_U64((after.segment_bytes - before.segment_bytes) % 512, 0);
  assert_true(after.segment_bytes - before.segment_bytes <= 512 * (after.segments - before.segments));
  CHECK_U64(disk_bytes(f), after.segment_bytes);
  assert_true(disk_bytes(f) >= disk);
  check_content(f); /* nothing of the batch visible, earlier data intact */
}

static void test_segment_write_enospc(void **state) {
  fixture *f = *state;
  char seg[4096];
  m3_location loc;
  CHECK_OK(m3_store_locate(f->s, 9, &loc));
  m3_store_segment_path(f->s, loc.segment, seg, sizeof seg);
  /* the first write of the batch: the active segment is named */
  failed_put(f, "segment.write", ENOSPC, 1, 10, 2, 0, M3_ENOSPC, seg);
  /* a replacement that fails keeps the old version */
  failed_put(f, "segment.write", ENOSPC, 1, 3, 2, 1, M3_ENOSPC, "seg-");
  /* a batch spanning rolls (8 records, 4 per segment), failing at its 2nd
   * and 4th write: after some bytes reached a segment */
  failed_put(f, "segment.write", ENOSPC, 2, 20, 8, 0, M3_ENOSPC, ".m3s");
  failed_put(f, "segment.write", ENOSPC, 3, 20, 8, 0, M3_ENOSPC, ".m3s");
  CHECK_CONTAINS(m3_errmsg(), f->dir);
  /* the store keeps working */
  put_ok(f, 10, 2, 0);
  put_ok(f, 3, 2, 1);
  put_ok(f, 20, 8, 0);
  check_content(f);
  reopen_and_check(f);
}

static void test_segment_sync_eio(void **state) {
  fixture *f = *state;
  failed_put(f, "segment.sync", EIO, 1, 30, 3, 0, M3_EIO, "fdatasync");
  CHECK_CONTAINS(m3_errmsg(), "seg-");
  failed_put(f, "segment.sync", EIO, 2, 30, 9, 0, M3_EIO, "seg-");
  put_ok(f, 30, 3, 0);
  reopen_and_check(f);
}

static void test_catalog_write_eio(void **state) {
  fixture *f = *state;
  char cat[4200];
  snprintf(cat, sizeof cat, "%s/catalog", f->dir);
  failed_put(f, "catalog.write", EIO, 1, 40, 2, 0, M3_EIO, cat);
  failed_put(f, "catalog.write", EIO, 1, 5, 1, 4, M3_EIO, cat);
  /* a batch that rolls: its catalog commit for the new segment or the batch fails */
  failed_put(f, "catalog.write", EIO, 1, 40, 9, 0, M3_EIO, cat);
  failed_put(f, "catalog.write", EIO, 2, 40, 9, 0, M3_EIO, cat);
  put_ok(f, 40, 9, 0);
  reopen_and_check(f);
}

static void test_delete_faults(void **state) {
  fixture *f = *state;
  uint64_t ids[] = {1, 2};
  const char *points[] = {"segment.write", "segment.sync", "catalog.write"};
  int errs[] = {ENOSPC, EIO, EIO}, want[] = {M3_ENOSPC, M3_EIO, M3_EIO};
  for (int i = 0; i < 3; i++) {
    CHECK_OK(m3_fault_set(points[i], errs[i], 1));
    size_t del = 99;
    CHECK_RC(m3_store_delete(f->s, ids, 2, &del), want[i]);
    CHECK_U64(del, 0);
    m3_fault_clear();
    check_content(f);
  }
  CHECK_OK(m3_store_delete(f->s, ids, 2, NULL));
  f->version[1] = f->version[2] = 0;
  reopen_and_check(f);
}

/* Repeated failures and successes interleaved, then reopen. */
static void test_fail_then_recover_many(void **state) {
  fixture *f = *state;
  uint64_t rng = 5;
  for (int round = 0; round < 12; round++) {
    uint64_t first = 10 + m3t_rand(&rng) % 40;
    size_t n = 1 + (size_t)(m3t_rand(&rng) % 6);
    if (first + n > 64) n = 64 - first;
    int which = (int)(m3t_rand(&rng) % 3);
    const char *pt = which == 0 ? "segment.write" : which == 1 ? "segment.sync" : "catalog.write";
    int err = which == 0 ? ENOSPC : EIO;
    CHECK_OK(m3_fault_set(pt, err, 1 + (unsigned)(m3t_rand(&rng) % 3)));
    int rc = tu_put_range(f->s, first, n, (uint32_t)round);
    m3_fault_clear();
    if (rc == 0)
      for (size_t i = 0; i < n; i++) f->version[first + i] = (uint32_t)round + 1;
    else if (rc != M3_ENOSPC && rc != M3_EIO)
      fail_msg("round %d: %s: %s", round, m3_err_name(rc), m3_errmsg());
    check_content(f);
    put_ok(f, first, n, (uint32_t)round + 100);
  }
  reopen_and_check(f);
}

/* A bulk ingest whose final checkpoint cannot sync (segment.sync EIO),
 * after it rolled segments (10 records of 42.5 KB, 4 per segment): finish
 * fails and aborts. Nothing of it is visible, earlier data is intact, and
 * the segments it rolled are removed rather than left empty; the same
 * after a reopen. */
static void test_bulk_sync_eio(void **state) {
  fixture *f = *state;
  m3_store_stats before, after;
  CHECK_OK(m3_store_stats_get(f->s, &before));
  m3_store_bulk *b;
  CHECK_OK(m3_store_bulk_begin(f->s, NULL, &b));
  for (uint64_t id = 20; id < 30; id++) {
    tu_mem m;
    tu_mem_make(&m, &f->l, id, 0);
    CHECK_OK(m3_store_bulk_add(b, &m.in, 1));
    tu_mem_free(&m);
  }
  CHECK_OK(m3_fault_set("segment.sync", EIO, 1));
  CHECK_RC(m3_store_bulk_finish(b), M3_EIO);
  CHECK_CONTAINS(m3_errmsg(), "fdatasync");
  m3_fault_clear();
  CHECK_OK(m3_store_stats_get(f->s, &after));
  CHECK_U64(after.records, before.records);
  CHECK_U64(after.segments, before.segments);
  CHECK_U64(after.segment_bytes, before.segment_bytes);
  CHECK_U64(disk_bytes(f), before.segment_bytes);
  CHECK_U64(tu_count_segment_files(f->dir, 0), before.segments);
  CHECK_U64(tu_count_segment_files(f->dir, 512), 0); /* none holds only its header */
  check_content(f);
  reopen_and_check(f);
  CHECK_U64(tu_count_segment_files(f->dir, 0), before.segments);
  /* The store takes writes again, through bulk and put. */
  CHECK_OK(m3_store_bulk_begin(f->s, NULL, &b));
  tu_mem m;
  tu_mem_make(&m, &f->l, 20, 0);
  CHECK_OK(m3_store_bulk_add(b, &m.in, 1));
  tu_mem_free(&m);
  CHECK_OK(m3_store_bulk_finish(b));
  f->version[20] = 1;
  put_ok(f, 21, 1, 0);
  reopen_and_check(f);
}

/* $M3_FAULT in a child: the 3rd segment write (header of segment 1, first
 * record, second record) fails with ENOSPC. */
static void test_env_fault_child(void **state) {
  fixture *f = *state;
  char dir[4200];
  snprintf(dir, sizeof dir, "%s/child", f->dir);
  char bin[4096];
  m3t_bin_path(bin, sizeof bin, "store_child");
  char *argv[] = {bin, "put", dir, "0", "5", NULL};
  char *env[] = {"M3_FAULT=segment.write=ENOSPC@3", NULL};
  tu_child c;
  tu_child_start(&c, argv, env);
  int status = tu_child_finish(&c, 0);
  print_message("child: %s", c.out);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK_CONTAINS(c.out, "ok 0\n");
  CHECK_CONTAINS(c.out, "fail 1 M3_ENOSPC");
  CHECK_CONTAINS(c.out, "seg-000001.m3s");
  assert_null(strstr(c.out, "ok 1"));
  tu_child_free(&c);
  m3_store_options o;
  tu_opts(&o, &f->l, 0, 0);
  m3_store *s = NULL;
  CHECK_OK(m3_store_open(dir, &o, &s));
  CHECK_U64(m3_store_contains(s, 0), 1);
  CHECK_U64(m3_store_contains(s, 1), 0);
  tu_check_fetch(s, 0, 0);
  CHECK_OK(m3_store_verify(s, NULL, NULL, NULL));
  CHECK_OK(tu_put_range(s, 1, 4, 0));
  tu_check_fetch(s, 4, 0);
  m3_store_close(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_segment_write_enospc, setup, teardown),
      cmocka_unit_test_setup_teardown(test_segment_sync_eio, setup, teardown),
      cmocka_unit_test_setup_teardown(test_catalog_write_eio, setup, teardown),
      cmocka_unit_test_setup_teardown(test_delete_faults, setup, teardown),
      cmocka_unit_test_setup_teardown(test_fail_then_recover_many, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bulk_sync_eio, setup, teardown),
      cmocka_unit_test_setup_teardown(test_env_fault_child, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
