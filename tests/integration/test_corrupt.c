/*
 * A flipped byte in a segment: verify reports exactly that chunk id and
 * returns M3_ECORRUPT; fetch returns M3_ECORRUPT for it with no data while
 * the other items of the batch succeed; with the cache on, corrupt bytes are
 * never cached or served. Payload, header and text flips.
 */
#include <stdlib.h>

#include "unit/testutil.h"

typedef struct problems {
  uint64_t ids[16];
  int errs[16];
  int n;
} problems;

static void collect(void *ud, const m3_problem *p) {
  problems *ps = ud;
  print_message("problem: chunk %llu segment %u offset %llu %s: %s\n",
                (unsigned long long)p->chunk_id, p->segment, (unsigned long long)p->offset,
                m3_err_name(p->err), p->detail);
  if (ps->n < 16) {
    ps->ids[ps->n] = p->chunk_id;
    ps->errs[ps->n] = p->err;
  }
  ps->n++;
}

typedef tu_fixture fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->dir = m3t_mkdtemp("corrupt");
  f->l = tu_layout_m3_14();
  m3_store_options o;
  tu_opts(&o, &f->l, 1, 200000);
  CHECK_OK(m3_store_open(f->dir, &o, &f->s));
  CHECK_OK(tu_put_range(f->s, 0, 12, 0));
  CHECK_OK(m3_store_verify(f->s, NULL, NULL, NULL));
  *state = f;
  return 0;
}

/* Flip the byte at rel (from the record start) of chunk id; returns the
 * location. The store is closed and reopened around it (with cache_bytes). */
static void flip(fixture *f, uint64_t id, uint64_t rel, size_t cache_bytes) {
  m3_location loc;
  CHECK_OK(m3_store_locate(f->s, id, &loc));
  char path[4096];
  m3_store_segment_path(f->s, loc.segment, path, sizeof path);
  m3_store_close(f->s);
  f->s = NULL;
  m3t_flip_byte(path, loc.offset + rel);
  m3_store_options o;
  tu_opts(&o, &f->l, 0, 200000);
  o.cache_bytes = cache_bytes;
  CHECK_OK(m3_store_open(f->dir, &o, &f->s));
}

static void expect_verify(fixture *f, uint64_t bad_id) {
  problems ps = {.n = 0};
  uint64_t checked = 0;
  CHECK_RC(m3_store_verify(f->s, collect, &ps, &checked), M3_ECORRUPT);
  CHECK_U64(ps.n, 1);
  CHECK_U64(ps.ids[0], bad_id);
  CHECK_RC(ps.errs[0], M3_ECORRUPT);
  CHECK_U64(checked, 12);
}

/* Fetch [a, bad, b, missing] in one batch. */
static void expect_fetch(fixture *f, uint64_t bad_id) {
  uint64_t ids[4] = {bad_id == 0 ? 1 : 0, bad_id, 11, 777};
  size_t cap = m3_store_fetch_cap(f->s);
  m3_fetch_item it[4];
  for (int i = 0; i < 4; i++) {
    it[i] = (m3_fetch_item){.chunk_id = ids[i], .buf = malloc(cap), .cap = cap};
    memset(it[i].buf, 0xee, cap);
  }
  CHECK_OK(m3_store_fetch(f->s, it, 4));
  CHECK_RC(it[0].status, 0);
  CHECK_RC(it[1].status, M3_ECORRUPT);
  assert_null(it[1].data);
  CHECK_U64(it[1].len, 0);
  CHECK_RC(it[2].status, 0);
  CHECK_RC(it[3].status, M3_ENOTFOUND);
  for (int i = 0; i < 4; i += 2) {
    size_t len;
    uint8_t *want = tu_expected(&f->l, ids[i], 0, &len);
    CHECK_U64(it[i].len, m3_record_mem_size(&f->l));
    if (memcmp(it[i].data, want, it[i].len) != 0)
      fail_msg("chunk %llu: bytes differ", (unsigned long long)ids[i]);
    free(want);
  }
  for (int i = 0; i < 4; i++) free(it[i].buf);
}

static void test_payload_flip(void **state) {
  fixture *f = *state;
  flip(f, 5, 64 + 3000, 0);
  expect_verify(f, 5);
  expect_fetch(f, 5);
  /* every other record still fetches */
  for (uint64_t i = 0; i < 12; i++)
    if (i != 5) tu_check_fetch(f->s, i, 0);
}

static void test_payload_flip_with_cache(void **state) {
  fixture *f = *state;
  size_t mem = m3_record_mem_size(&f->l);
  flip(f, 7, mem - 1, 20 * mem); /* the last code byte */
  for (int round = 0; round < 3; round++) expect_fetch(f, 7);
  m3_store_stats st;
  CHECK_OK(m3_store_stats_get(f->s, &st));
  /* ids 0 and 11 come from the cache after the first round; 7 never does */
  CHECK_U64(st.cache_hits, 4);
  expect_verify(f, 7);
  /* a good put of 7 heals it */
  CHECK_OK(tu_put_range(f->s, 7, 1, 1));
  tu_check_fetch(f->s, 7, 1);
  tu_check_fetch(f->s, 7, 1);
  CHECK_OK(m3_store_verify(f->s, NULL, NULL, NULL));
}

static void test_header_flip(void **state) {
  fixture *f = *state;
  flip(f, 3, 9, 0); /* inside chunk_id */
  expect_verify(f, 3);
  expect_fetch(f, 3);
}

static void test_magic_flip(void **state) {
  fixture *f = *state;
  flip(f, 0, 0, 0);
  expect_verify(f, 0);
  expect_fetch(f, 0);
}

static void test_text_flip(void **state) {
  fixture *f = *state;
  /* the text rides after the memory: verify sees it, fetch does not read it */
  flip(f, 9, m3_record_mem_size(&f->l) + 2, 0);
  expect_verify(f, 9);
  tu_check_fetch(f->s, 9, 0);
}

/* Two damaged records in different segments are both reported. */
static void test_two_flips(void **state) {
  fixture *f = *state;
  flip(f, 1, 64 + 10, 0);
  flip(f, 10, 64 + 20000, 0);
  problems ps = {.n = 0};
  CHECK_RC(m3_store_verify(f->s, collect, &ps, NULL), M3_ECORRUPT);
  CHECK_U64(ps.n, 2);
  assert_true((ps.ids[0] == 1 && ps.ids[1] == 10) || (ps.ids[0] == 10 && ps.ids[1] == 1));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_payload_flip, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_payload_flip_with_cache, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_header_flip, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_magic_flip, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_text_flip, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_two_flips, setup, tu_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
