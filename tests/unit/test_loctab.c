/*
 * The in-RAM location table (what fetches use) against the catalog (the
 * truth), on a real store: after puts of scattered 64-bit ids (the table
 * grows several times), deletes (backward-shift removal), replacements,
 * compaction, repair and reopen, m3_store_check_locations finds them equal,
 * every live id fetches its latest content and every deleted id is gone.
 * The table's snapshot (written at close) is used only when it equals the
 * catalog: not when damaged or stale.
 */
#include <stdio.h>
#include <stdlib.h>

#include "unit/testutil.h"

extern size_t m3__repair_batch; /* core/src/store_int.h */

#define N 4000
#define SEG 2000000

typedef struct model {
  uint64_t id[N];
  int version[N]; /* -1: deleted */
} model;

static uint64_t scatter(uint64_t i) {
  /* Spread over the id space, with the edges: 0 and UINT64_MAX - 1. */
  if (i == 0) return 0;
  if (i == 1) return UINT64_MAX - 1;
  uint64_t x = i * 0x9E3779B97F4A7C15ull;
  return (x ^ x >> 29) & ~(1ull << 63);
}

static void put_ids(m3_store *s, model *m, size_t first, size_t n, int version) {
  const m3_layout *l = m3_store_layout(s);
  tu_mem *mem = calloc(n, sizeof *mem);
  m3_record_in *in = calloc(n, sizeof *in);
  for (size_t i = 0; i < n; i++) {
    tu_mem_make(&mem[i], l, m->id[first + i], (uint32_t)version);
    in[i] = mem[i].in;
    m->version[first + i] = version;
  }
  CHECK_OK(m3_store_put(s, in, n));
  for (size_t i = 0; i < n; i++) tu_mem_free(&mem[i]);
  free(mem);
  free(in);
}

static void check_all(m3_store *s, const model *m, const char *when) {
  uint64_t checked = 0;
  size_t live = 0;
  CHECK_OK(m3_store_check_locations(s, &checked));
  for (size_t i = 0; i < N; i++) {
    int has = m3_store_contains(s, m->id[i]);
    if (has != (m->version[i] >= 0))
      fail_msg("%s: chunk %llu contains %d, want %d", when, (unsigned long long)m->id[i], has,
               m->version[i] >= 0);
    if (m->version[i] < 0) continue;
    live++;
    if (i % 7 == 0) tu_check_fetch(s, m->id[i], (uint32_t)m->version[i]);
  }
  CHECK_U64(checked, live);
  print_message("%s: %llu locations equal to the catalog's\n", when, (unsigned long long)checked);
}

static void test_table_follows_catalog(void **state) {
  (void)state;
  char *dir = m3t_mkdtemp("loctab");
  m3_layout l = tu_layout_m3_14();
  model *m = calloc(1, sizeof *m);
  for (size_t i = 0; i < N; i++) m->id[i] = scatter(i), m->version[i] = -1;
  m3_store *s = tu_open(dir, &l, 1, SEG);
  for (size_t i = 0; i < N; i += 500) put_ids(s, m, i, 500, 0);
  check_all(s, m, "after puts");

  uint64_t rng = 7, del[N];
  size_t nd = 0;
  for (size_t i = 0; i < N; i++)
    if (m3t_rand(&rng) % 3 == 0) del[nd++] = m->id[i], m->version[i] = -1;
  size_t deleted = 0;
  CHECK_OK(m3_store_delete(s, del, nd, &deleted));
  CHECK_U64(deleted, nd);
  check_all(s, m, "after deletes");

  put_ids(s, m, 1000, 400, 1); /* replaces, and puts back deleted ones */
  check_all(s, m, "after replacements");

  uint64_t reclaimed = 0;
  CHECK_OK(m3_store_compact(s, &reclaimed));
  assert_true(reclaimed > 0);
  check_all(s, m, "after compaction");
  m3_store_close(s);

  /* Repair ingests 700 records per SST here: the tombstones and
   * replacements in later segments must override earlier batches. */
  m3__repair_batch = 700;
  m3_repair_report rep;
  CHECK_OK(m3_store_repair(dir, NULL, NULL, &rep));
  s = tu_open(dir, &l, 0, SEG);
  check_all(s, m, "after repair");
  m3_store_stats st;
  CHECK_OK(m3_store_stats_get(s, &st));
  assert_true(st.loc_table_bytes >= st.records * 28);
  assert_true(m3_store_ram_bytes(s) >= st.loc_table_bytes);
  m3_store_close(s);
  m3t_rmrf(dir);
  free(dir);
  free(m);
}

/* The table's snapshot (loctab.snap, written at close): a reopen uses it
 * and equals the catalog; a damaged one, or a stale one (put back after
 * the catalog changed), is not used: the table is built from the catalog,
 * and still equals it. */
static void test_snapshot(void **state) {
  (void)state;
  char *dir = m3t_mkdtemp("loctab_snap");
  char snap[4200], old[4200];
  snprintf(snap, sizeof snap, "%s/loctab.snap", dir);
  snprintf(old, sizeof old, "%s/loctab.snap.saved", dir);
  m3_layout l = tu_layout_m3_14();
  model *m = calloc(1, sizeof *m);
  for (size_t i = 0; i < N; i++) m->id[i] = scatter(i), m->version[i] = -1;
  m3_store *s = tu_open(dir, &l, 1, SEG);
  put_ids(s, m, 0, 1000, 0);
  m3_store_close(s);
  assert_true(m3t_file_size(snap) > 1000 * 28);

  /* A read-only open uses it and leaves it; a writing open uses it and
   * removes it until its close. */
  m3_store_options o;
  tu_opts(&o, &l, 0, SEG);
  o.read_only = 1;
  CHECK_OK(m3_store_open(dir, &o, &s));
  check_all(s, m, "read-only, from the snapshot");
  m3_store_close(s);
  assert_true(m3t_file_size(snap) > 0);
  s = tu_open(dir, &l, 0, SEG);
  assert_true(m3t_file_size(snap) < 0);
  check_all(s, m, "from the snapshot");
  m3_store_close(s);

  /* Stale: the snapshot of 1000 ids put back after 500 more were put. */
  CHECK_OK(rename(snap, old) == 0 ? 0 : M3_EIO);
  s = tu_open(dir, &l, 0, SEG);
  put_ids(s, m, 1000, 500, 0);
  m3_store_close(s);
  CHECK_OK(rename(old, snap) == 0 ? 0 : M3_EIO);
  s = tu_open(dir, &l, 0, SEG);
  check_all(s, m, "stale snapshot not used");
  m3_store_close(s);

  /* Damaged: one byte of a slot flipped. */
  m3t_flip_byte(snap, 96 + 28 * 5 + 3);
  s = tu_open(dir, &l, 0, SEG);
  check_all(s, m, "damaged snapshot not used");
  uint64_t del[2] = {m->id[3], m->id[1200]};
  CHECK_OK(m3_store_delete(s, del, 2, NULL));
  m->version[3] = m->version[1200] = -1;
  m3_store_close(s);
  s = tu_open(dir, &l, 0, SEG);
  check_all(s, m, "snapshot after deletes");
  m3_store_close(s);
  m3t_rmrf(dir);
  free(dir);
  free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_table_follows_catalog),
                                     cmocka_unit_test(test_snapshot)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
