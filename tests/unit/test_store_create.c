/*
 * A store create killed between the catalog and its meta (the catalog
 * exists, empty; no segments): a plain open answers "no store"
 * (M3_ENOTFOUND, which m3-encode takes as "create it"), and a create
 * completes it into a working store.
 */
#include <rocksdb/c.h>
#include <stdio.h>
#include <stdlib.h>

#include "testutil.h"

static void test_interrupted_create(void **state) {
  (void)state;
  char *dir = m3t_mkdtemp("store-create");
  char cat[4200];
  snprintf(cat, sizeof cat, "%s/catalog", dir);
  /* The state a kill leaves: RocksDB created the catalog, no meta yet. */
  rocksdb_options_t *ro = rocksdb_options_create();
  rocksdb_options_set_create_if_missing(ro, 1);
  char *err = NULL;
  rocksdb_t *db = rocksdb_open(ro, cat, &err);
  if (err) fail_msg("rocksdb_open %s: %s", cat, err);
  rocksdb_close(db);
  rocksdb_options_destroy(ro);

  m3_store_options o;
  m3_store_options_init(&o);
  m3_store *s = NULL;
  CHECK_RC(m3_store_open(dir, &o, &s), M3_ENOTFOUND);
  CHECK_CONTAINS(m3_errmsg(), "interrupted create");
  assert_null(s);

  m3_layout l = tu_layout_m3_14();
  s = tu_open(dir, &l, 1, 0); /* create=1 completes it */
  assert_non_null(s);
  CHECK_OK(tu_put_range(s, 0, 3, 0));
  for (uint64_t i = 0; i < 3; i++) tu_check_fetch(s, i, 0);
  m3_store_close(s);
  s = tu_open(dir, &l, 0, 0); /* and it opens plainly afterwards */
  assert_non_null(s);
  tu_check_fetch(s, 2, 0);
  m3_store_close(s);
  m3t_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_interrupted_create)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
