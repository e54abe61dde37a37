/*
 * Fetch read planning never reads past the item's buffer (issue 14, defect
 * 9): a location whose memory length is not the store's layout's (a foreign
 * record catalogued, a damaged catalog entry, once the in-RAM location
 * table is gone and fetches ask the catalog) is refused as corruption for
 * that item, before any read is planned; a right one plans a read that fits
 * the buffer m3_store_fetch_cap sizes, with and without O_DIRECT.
 */
#include <stdlib.h>

#include "../../core/src/store_int.h"
#include "unit/testutil.h"

static void plan_bounds(int direct) {
  char *dir = m3t_mkdtemp("plan");
  m3_layout l = tu_layout_small();
  m3_store_options o;
  m3_store_options_init(&o);
  o.layout = l;
  o.create = 1;
  o.direct = direct;
  m3_store *s = NULL;
  int rc = m3_store_open(dir, &o, &s);
  if (rc == M3_EUNSUPPORTED || (rc == M3_EINVAL && direct)) {
    m3t_rmrf(dir);
    free(dir);
    skip(); /* no O_DIRECT on this filesystem */
  }
  CHECK_OK(rc);
  CHECK_OK(tu_put_range(s, 1, 3, 0));
  m3_location loc;
  CHECK_OK(m3_store_locate(s, 2, &loc));
  size_t cap = m3_store_fetch_cap(s);
  m3_fetch_item it = {.chunk_id = 2, .buf = m3_store_buf_alloc(s, cap), .cap = cap};
  assert_non_null(it.buf);
  m3_read r;

  /* the store's own location: planned, and it fits */
  CHECK_U64(m3__fetch_item_init(s, &it, 0), 0);
  CHECK_U64(m3__fetch_plan(s, &it, &loc, &r), 1);
  if (r.len > cap) fail_msg("planned a read of %u bytes into a buffer of %zu", r.len, cap);

  /* lengths other than the layout's: refused, nothing planned */
  const uint32_t bad[] = {loc.mem_len * 2, loc.mem_len + 4096 * 4, loc.mem_len - 1, 0};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    m3_location b = loc;
    b.mem_len = bad[i];
    CHECK_U64(m3__fetch_item_init(s, &it, 0), 0);
    int planned = m3__fetch_plan(s, &it, &b, &r);
    if (planned) fail_msg("mem_len %u (layout %u): a read of %u bytes planned into %zu", bad[i],
                          loc.mem_len, r.len, cap);
    if (it.status != M3_ECORRUPT)
      fail_msg("mem_len %u: status %s, want M3_ECORRUPT", bad[i], m3_err_name(it.status));
    assert_non_null(strstr(m3_errmsg(), "layout makes"));
  }
  free(it.buf);
  m3_store_close(s);
  m3t_rmrf(dir);
  free(dir);
}

static void test_plan_bounds_buffered(void **state) {
  (void)state;
  plan_bounds(0);
}

static void test_plan_bounds_direct(void **state) {
  (void)state;
  plan_bounds(1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_plan_bounds_buffered),
      cmocka_unit_test(test_plan_bounds_direct),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
