/*
 * Compaction: after deletes and replacements it reclaims the dead bytes,
 * every live record fetches identical bytes, verify passes, the store keeps
 * working and reopens. Crash safety: segment files the catalog does not list
 * (an interrupted compaction's outputs) are removed at open with the data
 * intact; and a compacting child killed at random points leaves a store that
 * opens with the same content.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "unit/testutil.h"

#define SEG 200000

typedef tu_fixture fixture;

static m3_store *reopen(fixture *f) { return tu_open(f->dir, &f->l, 0, SEG); }

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->dir = m3t_mkdtemp("compact");
  f->l = tu_layout_m3_14();
  m3_store_options o;
  tu_opts(&o, &f->l, 1, SEG);
  o.cache_bytes = 4u << 20;
  CHECK_OK(m3_store_open(f->dir, &o, &f->s));
  for (uint64_t i = 0; i < 30; i += 6) CHECK_OK(tu_put_range(f->s, i, 6, 0));
  *state = f;
  return 0;
}

static void make_dead(m3_store *s) {
  uint64_t del[10];
  for (int i = 0; i < 10; i++) del[i] = (uint64_t)i;
  CHECK_OK(m3_store_delete(s, del, 10, NULL));
  CHECK_OK(tu_put_range(s, 10, 5, 1));
}

static void test_reclaims(void **state) {
  fixture *f = *state;
  make_dead(f->s);
  tu_check_fetch(f->s, 20, 0); /* cached before compaction */
  m3_store_stats before, after;
  CHECK_OK(m3_store_stats_get(f->s, &before));
  CHECK_U64(before.records, 20);
  assert_true(before.dead_bytes > 0);
  tu_dump a, b;
  tu_dump_store(f->s, &a);
  uint64_t reclaimed = 0;
  CHECK_OK(m3_store_compact(f->s, &reclaimed));
  CHECK_OK(m3_store_stats_get(f->s, &after));
  print_message("compact: %llu -> %llu segment bytes (%llu dead), reclaimed %llu\n",
                (unsigned long long)before.segment_bytes, (unsigned long long)after.segment_bytes,
                (unsigned long long)before.dead_bytes, (unsigned long long)reclaimed);
  CHECK_U64(after.dead_bytes, 0);
  CHECK_U64(after.records, 20);
  assert_true(after.segment_bytes < before.segment_bytes);
  CHECK_U64(reclaimed, before.segment_bytes - after.segment_bytes);
  /* what is left is live records, their padding and segment headers */
  assert_true(reclaimed >= before.dead_bytes - before.segments * 512);
  CHECK_OK(m3_store_verify(f->s, NULL, NULL, NULL));
  tu_dump_store(f->s, &b);
  tu_dump_compare(&a, &b, 0);
  for (uint64_t i = 0; i < 10; i++) CHECK_U64(m3_store_contains(f->s, i), 0);
  /* the old segment files are gone, only the catalog's remain */
  uint64_t files = 0;
  for (uint32_t id = 0; id < 64; id++) {
    char p[4096];
    files += m3t_file_size(m3_store_segment_path(f->s, id, p, sizeof p)) >= 0;
  }
  CHECK_U64(files, after.segments);
  /* writes continue; compaction again with nothing dead is a no-op */
  CHECK_OK(tu_put_range(f->s, 40, 3, 0));
  CHECK_OK(m3_store_compact(f->s, &reclaimed));
  CHECK_U64(reclaimed, 0);
  tu_check_fetch(f->s, 41, 0);
  m3_store_close(f->s);
  f->s = reopen(f);
  CHECK_OK(m3_store_verify(f->s, NULL, NULL, NULL));
  tu_dump c;
  tu_dump_store(f->s, &c);
  CHECK_U64(c.n, 23);
  for (size_t i = 0; i < b.n; i++) {
    tu_check_fetch(f->s, b.v[i].id, b.v[i].id >= 10 && b.v[i].id < 15 ? 1 : 0);
  }
  /* repair from the compacted segments gives the same catalog */
  m3_store_close(f->s);
  f->s = NULL;
  CHECK_OK(m3_store_repair(f->dir, NULL, NULL, NULL));
  f->s = reopen(f);
  tu_dump d;
  tu_dump_store(f->s, &d);
  tu_dump_compare(&c, &d, 1);
  tu_dump_free(&a);
  tu_dump_free(&b);
  tu_dump_free(&c);
  tu_dump_free(&d);
}

static void test_compact_everything_deleted(void **state) {
  fixture *f = *state;
  uint64_t del[30];
  for (int i = 0; i < 30; i++) del[i] = (uint64_t)i;
  CHECK_OK(m3_store_delete(f->s, del, 30, NULL));
  uint64_t reclaimed = 0;
  CHECK_OK(m3_store_compact(f->s, &reclaimed));
  m3_store_stats st;
  CHECK_OK(m3_store_stats_get(f->s, &st));
  CHECK_U64(st.records, 0);
  CHECK_U64(st.dead_bytes, 0);
  CHECK_OK(tu_put_range(f->s, 3, 2, 0));
  tu_check_fetch(f->s, 4, 0);
  m3_store_close(f->s);
  f->s = reopen(f);
  tu_check_fetch(f->s, 3, 0);
  CHECK_U64(m3_store_contains(f->s, 5), 0);
  CHECK_OK(m3_store_verify(f->s, NULL, NULL, NULL));
}

static void copy_file(const char *from, const char *to) {
  int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  assert_true(in >= 0 && out >= 0);
  char buf[65536];
  ssize_t k;
  while ((k = read(in, buf, sizeof buf)) > 0) CHECK_U64(write(out, buf, (size_t)k), k);
  close(in);
  close(out);
}

/* Leftovers of a compaction that never committed: extra segment files (a
 * copy of a live one under a new id, a half-written .tmp) are removed at
 * open and the data is intact. */
static void test_orphan_segments_removed(void **state) {
  fixture *f = *state;
  make_dead(f->s);
  tu_dump a, b;
  tu_dump_store(f->s, &a);
  m3_location loc;
  CHECK_OK(m3_store_locate(f->s, 20, &loc));
  char live[4096], orphan[4096], tmp[4200], later[4096];
  m3_store_segment_path(f->s, loc.segment, live, sizeof live);
  m3_store_segment_path(f->s, 900, orphan, sizeof orphan);
  m3_store_segment_path(f->s, 901, later, sizeof later);
  snprintf(tmp, sizeof tmp, "%s.tmp", later);
  m3_store_close(f->s);
  f->s = NULL;
  copy_file(live, orphan);
  copy_file(live, tmp);
  f->s = reopen(f);
  assert_true(m3t_file_size(orphan) < 0);
  assert_true(m3t_file_size(tmp) < 0);
  assert_true(m3t_file_size(live) > 0);
  CHECK_OK(m3_store_verify(f->s, NULL, NULL, NULL));
  tu_dump_store(f->s, &b);
  tu_dump_compare(&a, &b, 1);
  /* compaction afterwards is fine */
  CHECK_OK(m3_store_compact(f->s, NULL));
  CHECK_OK(m3_store_verify(f->s, NULL, NULL, NULL));
  tu_dump_free(&a);
  tu_dump_free(&b);
}

/* A child compacts and is killed at a random point: the store opens, verifies
 * and holds the same content, whichever side of the commit the kill fell. */
static void test_compact_killed(void **state) {
  fixture *f = *state;
  char bin[4096];
  m3t_bin_path(bin, sizeof bin, "store_child");
  uint64_t rng = (uint64_t)getpid();
  int rounds = 6 * tu_scale(), finished = 0;
  for (int r = 0; r < rounds; r++) {
    /* fresh dead bytes every round */
    CHECK_OK(tu_put_range(f->s, 10, 5, (uint32_t)r + 2));
    uint64_t d = 20 + (uint64_t)r % 10;
    CHECK_OK(m3_store_delete(f->s, &d, 1, NULL));
    CHECK_OK(tu_put_range(f->s, d, 1, 0));
    tu_dump a, b;
    tu_dump_store(f->s, &a);
    m3_store_close(f->s);
    f->s = NULL;
    char *argv[] = {bin, "compact", f->dir, NULL};
    tu_child c;
    tu_child_start(&c, argv, NULL);
    if (!tu_child_wait_line(&c, "ready", 30000)) fail_msg("store_child compact: %s", c.out);
    usleep((useconds_t)(m3t_rand(&rng) % 200000));
    tu_child_finish(&c, 1);
    finished += strstr(c.out, "done") != NULL;
    if (strstr(c.out, "fail")) fail_msg("compaction failed: %s", c.out);
    tu_child_free(&c);
    f->s = reopen(f);
    CHECK_OK(m3_store_verify(f->s, NULL, NULL, NULL));
    tu_dump_store(f->s, &b);
    tu_dump_compare(&a, &b, 0);
    tu_dump_free(&a);
    tu_dump_free(&b);
  }
  print_message("%d of %d compactions finished before the kill\n", finished, rounds);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_reclaims, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_compact_everything_deleted, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_orphan_segments_removed, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_compact_killed, setup, tu_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
