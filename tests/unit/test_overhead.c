/*
 * Space overhead of segments over payload bytes stays <= 3% for
 * Memory3-shaped memories with the paper's 14-byte codes; the stats that
 * make up the ratio add up.
 */
#include <stdlib.h>

#include "testutil.h"

static void test_overhead_m3_14(void **state) {
  (void)state;
  char *dir = m3t_mkdtemp("overhead");
  m3_layout l = tu_layout_m3_14();
  m3_store_options o;
  tu_opts(&o, &l, 1, 0);
  m3_store *s = NULL;
  CHECK_OK(m3_store_open(dir, &o, &s));
  enum { N = 300 };
  for (uint64_t i = 0; i < N; i += 25) CHECK_OK(tu_put_range(s, i, 25, 0));
  m3_store_stats st;
  CHECK_OK(m3_store_stats_get(s, &st));
  size_t mem = m3_record_mem_size(&l);
  uint64_t text = 0;
  for (uint64_t i = 0; i < N; i++) {
    char t[64];
    tu_text(t, sizeof t, i, 0);
    text += strlen(t);
  }
  CHECK_U64(st.records, N);
  CHECK_U64(st.payload_bytes, (uint64_t)N * (mem - 64));
  CHECK_U64(st.text_bytes, text);
  CHECK_U64(st.record_bytes, (uint64_t)N * mem + text);
  CHECK_U64(st.dead_bytes, 0);
  CHECK_U64(st.segments, 1);
  double want = (double)st.segment_bytes / (double)(st.payload_bytes + st.text_bytes) - 1.0;
  if (st.overhead < want - 1e-9 || st.overhead > want + 1e-9)
    fail_msg("overhead %.6f, segment_bytes/payload-1 = %.6f", st.overhead, want);
  if (!(st.overhead <= 0.03))
    fail_msg("space overhead %.4f > 0.03 (segment %llu bytes, payload %llu + text %llu)",
             st.overhead, (unsigned long long)st.segment_bytes,
             (unsigned long long)st.payload_bytes, (unsigned long long)st.text_bytes);
  assert_true(st.overhead > 0.0);
  char path[4096];
  m3_location loc;
  CHECK_OK(m3_store_locate(s, 0, &loc));
  CHECK_U64(m3t_file_size(m3_store_segment_path(s, loc.segment, path, sizeof path)),
            st.segment_bytes);
  assert_true(st.catalog_bytes > 0);
  m3_store_close(s);
  m3t_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_overhead_m3_14),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
