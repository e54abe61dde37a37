/*
 * Bulk ingest (m3_store_bulk_*) on a real store: checkpoints make records
 * visible and durable, an id added twice ends with the last content, a
 * resumed ingest of the same content writes nothing, abort cuts what no
 * checkpoint committed, puts wait for the bulk (M3_EBUSY), and after all of
 * it verify, the location table and a reopen agree.
 */
#include <stdlib.h>

#include "unit/testutil.h"

#define N 5000
#define SEG (1u << 19) /* ~1000 records per segment: rolls inside a bulk */

static void add_range(m3_store_bulk *b, const m3_layout *l, uint64_t first, size_t n,
                      uint32_t version) {
  tu_mem *m = calloc(n, sizeof *m);
  m3_record_in *in = calloc(n, sizeof *in);
  for (size_t i = 0; i < n; i++) {
    tu_mem_make(&m[i], l, first + i, version);
    in[i] = m[i].in;
  }
  CHECK_OK(m3_store_bulk_add(b, in, n));
  for (size_t i = 0; i < n; i++) tu_mem_free(&m[i]);
  free(m);
  free(in);
}

static uint32_t version_of(uint64_t id) { return id >= 10 && id < 20 ? 1 : id < 100 ? 2 : 0; }

static void check_content(m3_store *s, int replaced) {
  uint64_t checked = 0;
  CHECK_OK(m3_store_verify(s, NULL, NULL, &checked));
  CHECK_U64(checked, N);
  CHECK_OK(m3_store_check_locations(s, &checked));
  CHECK_U64(checked, N);
  for (uint64_t id = 0; id < N; id += 3) {
    uint32_t v = version_of(id);
    if (!replaced && v == 2) v = 0;
    tu_check_fetch(s, id, v);
  }
  CHECK_RC(m3_store_contains(s, N), 0);
}

static void test_bulk(void **state) {
  (void)state;
  char *dir = m3t_mkdtemp("bulk");
  m3_layout l = tu_layout_small();
  m3_store *s = tu_open(dir, &l, 1, SEG);
  m3_store_bulk_options bo;
  m3_store_bulk_options_init(&bo);
  bo.checkpoint_records = 1000;
  m3_store_bulk *b;
  CHECK_OK(m3_store_bulk_begin(s, &bo, &b));
  m3_store_bulk *b2;
  CHECK_RC(m3_store_bulk_begin(s, &bo, &b2), M3_EBUSY);
  CHECK_RC(tu_put_range(s, 0, 1, 0), M3_EBUSY);
  uint64_t none = 0;
  CHECK_RC(m3_store_compact(s, &none), M3_EBUSY);

  for (uint64_t id = 0; id < N; id += 250) add_range(b, &l, id, 250, 0);
  add_range(b, &l, 10, 10, 1); /* in the same bulk: the last one wins */
  m3_store_bulk_stats bs;
  m3_store_bulk_stats_get(b, &bs);
  CHECK_U64(bs.added, N + 10);
  CHECK_U64(bs.checkpoints, 5); /* automatic, every 1000 staged */
  CHECK_U64(bs.durable, N);
  CHECK_RC(m3_store_contains(s, 10), 1);
  tu_check_fetch(s, 10, 0); /* visible content: the last checkpoint's */
  CHECK_OK(m3_store_bulk_finish(b));
  check_content(s, 0);
  m3_store_stats st;
  CHECK_OK(m3_store_stats_get(s, &st));
  CHECK_U64(st.records, N);
  assert_true(st.segments > 3);
  uint64_t dead = st.dead_bytes, seg_bytes = st.segment_bytes;

  /* Resume: the same content again is skipped, nothing written. */
  CHECK_OK(m3_store_bulk_begin(s, NULL, &b));
  add_range(b, &l, 0, 10, 0);
  add_range(b, &l, 10, 10, 1);
  add_range(b, &l, 20, N - 20, 0);
  add_range(b, &l, 10, 10, 1); /* equal to what is staged: skipped too */
  m3_store_bulk_stats_get(b, &bs);
  CHECK_U64(bs.skipped, N + 10);
  CHECK_OK(m3_store_bulk_finish(b));
  CHECK_OK(m3_store_stats_get(s, &st));
  CHECK_U64(st.segment_bytes, seg_bytes);
  CHECK_U64(st.dead_bytes, dead);

  /* Abort drops what no checkpoint committed: 1500 records of 512 B roll
   * at least one segment (SEG), which goes too, with nothing in it. */
  uint64_t segs_before = st.segments;
  CHECK_OK(m3_store_bulk_begin(s, NULL, &b));
  add_range(b, &l, N, 1500, 0);
  m3_store_bulk_abort(b);
  CHECK_RC(m3_store_contains(s, N), 0);
  CHECK_OK(m3_store_stats_get(s, &st));
  CHECK_U64(st.dead_bytes, dead); /* cut back */
  CHECK_U64(st.records, N);
  CHECK_U64(st.segment_bytes, seg_bytes);
  CHECK_U64(st.segments, segs_before); /* no empty segment left behind */
  CHECK_U64(tu_count_segment_files(dir, 0), segs_before);
  CHECK_U64(tu_count_segment_files(dir, 512), 0);

  /* Replacing stored ids. */
  CHECK_OK(m3_store_bulk_begin(s, NULL, &b));
  add_range(b, &l, 0, 10, 2);
  add_range(b, &l, 20, 80, 2);
  CHECK_OK(m3_store_bulk_finish(b));
  check_content(s, 1);
  CHECK_OK(tu_put_range(s, N + 1, 1, 0)); /* puts work again */
  uint64_t del = N + 1;
  CHECK_OK(m3_store_delete(s, &del, 1, NULL));
  m3_store_close(s);

  s = tu_open(dir, &l, 0, SEG);
  check_content(s, 1);
  m3_store_close(s);
  m3t_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_bulk)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
