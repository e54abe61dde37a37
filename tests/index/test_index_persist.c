/*
 * The saved index: a reopen of an unchanged store loads DIR/index/ without a
 * rebuild and searches the same; a store that changed since (seqno), another
 * factory, a damaged or deleted stamp or index file, or force_rebuild make
 * it rebuild, with the reason said; m3_index_save after adds makes the next
 * open load; read_only never writes; a failing write (ENOSPC) leaves the
 * old files in place.
 */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "index/index_testlib.h"
#include "m3/fault.h"

enum { DIM = 24, N = 300, NQ = 12, K = 7 };

typedef struct fixture {
  char *dir;
  char idx_file[512], stamp[512];
  m3_store *s;
  it_ref ref;
  float q[NQ * DIM];
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->dir = m3t_mkdtemp("persist");
  snprintf(f->idx_file, sizeof f->idx_file, "%s/index/index.faiss", f->dir);
  snprintf(f->stamp, sizeof f->stamp, "%s/index/stamp", f->dir);
  it_ref_init(&f->ref, DIM);
  f->s = it_store_open(f->dir, DIM);
  uint64_t seed = 21, ids[N];
  float *embs = malloc(N * DIM * sizeof *embs);
  for (int i = 0; i < N; i++) {
    ids[i] = (uint64_t)i + 1;
    m3t_randvec(&seed, embs + i * DIM, DIM);
    it_ref_set(&f->ref, ids[i], embs + i * DIM);
  }
  CHECK_OK(it_put(f->s, ids, embs, N));
  free(embs);
  for (int i = 0; i < NQ * DIM; i++) f->q[i] = m3t_randf(&seed);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  m3_fault_clear();
  m3_store_close(f->s);
  it_ref_free(&f->ref);
  m3t_rmrf(f->dir);
  free(f->dir);
  free(f);
  return 0;
}

/* Open with o (NULL: defaults), check loaded-ness and content, close. */
static void open_expect(fixture *f, const m3_index_options *o, int loaded, const char *reason) {
  m3_index *ix = NULL;
  CHECK_OK(m3_index_open(f->s, o, &ix));
  m3_index_info inf;
  m3_index_info_get(ix, &inf);
  if (inf.loaded != loaded)
    fail_msg("loaded %d, want %d (reason: '%s')", inf.loaded, loaded, inf.reason);
  if (reason) CHECK_CONTAINS(inf.reason, reason);
  if (loaded) assert_string_equal(inf.reason, "");
  CHECK_U64(inf.seqno, m3_store_seqno(f->s));
  CHECK_U64(inf.unsaved, 0);
  CHECK_U64(inf.dim, DIM);
  it_check_against_ref(ix, &f->ref, f->q, NQ, K, 1e-5);
  m3_index_close(ix);
}

static void test_reopen_loads(void **state) {
  fixture *f = *state;
  open_expect(f, NULL, 0, "no saved index");
  assert_true(m3t_file_size(f->idx_file) > 0);
  assert_true(m3t_file_size(f->stamp) > 0);
  open_expect(f, NULL, 1, NULL);
  /* and after closing and reopening the store too */
  m3_store_close(f->s);
  f->s = it_store_open(f->dir, DIM);
  open_expect(f, NULL, 1, NULL);
  /* force_rebuild */
  m3_index_options o;
  m3_index_options_init(&o);
  o.force_rebuild = 1;
  open_expect(f, &o, 0, "rebuild asked");
  open_expect(f, NULL, 1, NULL);
}

static void test_store_change_rebuilds(void **state) {
  fixture *f = *state;
  open_expect(f, NULL, 0, NULL);
  uint64_t id = 5000, seed = 77;
  float v[DIM];
  m3t_randvec(&seed, v, DIM);
  CHECK_OK(it_put(f->s, &id, v, 1));
  it_ref_set(&f->ref, id, v);
  open_expect(f, NULL, 0, "store changed");
  open_expect(f, NULL, 1, NULL);
  uint64_t del[2] = {1, 2};
  CHECK_OK(m3_store_delete(f->s, del, 2, NULL));
  it_ref_del(&f->ref, 1);
  it_ref_del(&f->ref, 2);
  open_expect(f, NULL, 0, "store changed");
}

static void test_save_after_add_loads(void **state) {
  fixture *f = *state;
  m3_index *ix = NULL;
  CHECK_OK(m3_index_open(f->s, NULL, &ix));
  /* the server's write path: put into the store, add to the index, save at
   * the store's new seqno */
  uint64_t id = 6000, seed = 78;
  float v[DIM];
  m3t_randvec(&seed, v, DIM);
  CHECK_OK(it_put(f->s, &id, v, 1));
  CHECK_OK(m3_index_add(ix, &id, v, 1));
  it_ref_set(&f->ref, id, v);
  m3_index_info inf;
  m3_index_info_get(ix, &inf);
  CHECK_U64(inf.unsaved, 1);
  CHECK_OK(m3_index_save(ix, m3_store_seqno(f->s)));
  m3_index_info_get(ix, &inf);
  CHECK_U64(inf.unsaved, 0);
  CHECK_U64(inf.seqno, m3_store_seqno(f->s));
  m3_index_close(ix);
  open_expect(f, NULL, 1, NULL);
  assert_true(access(f->idx_file, F_OK) == 0);
  char tmp[600];
  snprintf(tmp, sizeof tmp, "%s.tmp", f->idx_file);
  assert_true(access(tmp, F_OK) != 0); /* no temporary left */
}

static void test_damage_rebuilds(void **state) {
  fixture *f = *state;
  open_expect(f, NULL, 0, NULL);
  /* a flipped byte in the middle of the index file (vector data FAISS would
   * read without complaint) */
  m3t_flip_byte(f->idx_file, m3t_file_size(f->idx_file) / 2);
  open_expect(f, NULL, 0, "index file damaged");
  open_expect(f, NULL, 1, NULL);
  /* a truncated index file */
  CHECK_U64(truncate(f->idx_file, m3t_file_size(f->idx_file) - 9), 0);
  open_expect(f, NULL, 0, "index file damaged");
  /* a flipped byte in the stamp */
  m3t_flip_byte(f->stamp, 20);
  open_expect(f, NULL, 0, "stamp");
  /* an empty stamp */
  CHECK_U64(truncate(f->stamp, 0), 0);
  open_expect(f, NULL, 0, "stamp malformed");
  /* deleted files */
  CHECK_U64(unlink(f->idx_file), 0);
  open_expect(f, NULL, 0, "index file missing");
  CHECK_U64(unlink(f->stamp), 0);
  open_expect(f, NULL, 0, "no saved index");
  open_expect(f, NULL, 1, NULL);
}

static void test_factory_change_rebuilds(void **state) {
  fixture *f = *state;
  open_expect(f, NULL, 0, NULL);
  m3_index_options o;
  m3_index_options_init(&o);
  o.factory = "IDMap2,Flat";
  open_expect(f, &o, 0, "factory changed");
  open_expect(f, &o, 1, NULL);
  open_expect(f, NULL, 0, "factory changed");
}

static void test_read_only(void **state) {
  fixture *f = *state;
  m3_index_options o;
  m3_index_options_init(&o);
  o.read_only = 1;
  m3_index *ix = NULL;
  CHECK_OK(m3_index_open(f->s, &o, &ix));
  assert_true(m3t_file_size(f->stamp) < 0);
  CHECK_RC(m3_index_save(ix, 1), M3_EUNSUPPORTED);
  m3_index_close(ix);
  assert_true(m3t_file_size(f->stamp) < 0);
}

static void test_save_enospc_keeps_old(void **state) {
  fixture *f = *state;
  m3_index *ix = NULL;
  CHECK_OK(m3_index_open(f->s, NULL, &ix));
  long long old = m3t_file_size(f->idx_file);
  uint64_t id = 7000;
  CHECK_OK(m3_index_add(ix, &id, f->q, 1));
  CHECK_OK(m3_fault_set("index.write", ENOSPC, 1));
  CHECK_RC(m3_index_save(ix, 12345), M3_ENOSPC);
  CHECK_CONTAINS(m3_errmsg(), "index.faiss.tmp");
  m3_fault_clear();
  m3_index_info inf;
  m3_index_info_get(ix, &inf);
  CHECK_U64(inf.unsaved, 1);
  m3_index_close(ix);
  CHECK_U64(m3t_file_size(f->idx_file), old);
  open_expect(f, NULL, 1, NULL); /* the old, still current, files */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_reopen_loads, setup, teardown),
      cmocka_unit_test_setup_teardown(test_store_change_rebuilds, setup, teardown),
      cmocka_unit_test_setup_teardown(test_save_after_add_loads, setup, teardown),
      cmocka_unit_test_setup_teardown(test_damage_rebuilds, setup, teardown),
      cmocka_unit_test_setup_teardown(test_factory_change_rebuilds, setup, teardown),
      cmocka_unit_test_setup_teardown(test_read_only, setup, teardown),
      cmocka_unit_test_setup_teardown(test_save_enospc_keeps_old, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
