/*
 * The hot-memory cache (core/src/cache.h): byte budget, LRU order, replace,
 * drop; and through the store: hits are served, puts and deletes invalidate.
 */
#include <stdlib.h>

#include "../../core/src/cache.h" /* private to core/; by path: core/src/endian.h would shadow <endian.h> */
#include "testutil.h"

static void fill(uint8_t *p, size_t n, uint8_t v) { memset(p, v, n); }

static void test_budget_and_lru(void **state) {
  (void)state;
  m3_cache *c = NULL;
  CHECK_OK(m3__cache_create(1000, &c));
  uint8_t buf[1000], out[1000];
  m3_cache_stats st;
  /* 4 entries of 200 bytes: 800 <= 1000 */
  for (uint64_t id = 1; id <= 4; id++) {
    fill(buf, 200, (uint8_t)id);
    m3__cache_put(c, id, buf, 200);
  }
  m3__cache_stats(c, &st);
  CHECK_U64(st.entries, 4);
  CHECK_U64(st.bytes, 800);
  /* touch 1 so that 2 is the least recently used */
  CHECK_U64(m3__cache_get(c, 1, out, sizeof out), 200);
  CHECK_U64(out[0], 1);
  CHECK_U64(out[199], 1);
  /* 300 more bytes: 1100 > 1000 -> evict 2 (LRU), 900 left */
  fill(buf, 300, 5);
  m3__cache_put(c, 5, buf, 300);
  m3__cache_stats(c, &st);
  CHECK_U64(st.bytes, 900);
  CHECK_U64(st.entries, 4);
  CHECK_U64(m3__cache_get(c, 2, out, sizeof out), 0);
  CHECK_U64(m3__cache_get(c, 3, out, sizeof out), 200);
  CHECK_U64(m3__cache_get(c, 1, out, sizeof out), 200);
  CHECK_U64(m3__cache_get(c, 5, out, sizeof out), 300);
  CHECK_U64(out[299], 5);
  /* now the LRU order is 4, 3, 1, 5: a 400-byte put evicts 4 and 3 */
  fill(buf, 400, 6);
  m3__cache_put(c, 6, buf, 400);
  m3__cache_stats(c, &st);
  CHECK_U64(st.bytes, 900);
  CHECK_U64(m3__cache_get(c, 4, out, sizeof out), 0);
  CHECK_U64(m3__cache_get(c, 3, out, sizeof out), 0);
  CHECK_U64(m3__cache_get(c, 1, out, sizeof out), 200);
  CHECK_U64(m3__cache_get(c, 6, out, sizeof out), 400);
  /* larger than the budget: not cached, nothing evicted */
  m3__cache_put(c, 7, buf, 1001);
  CHECK_U64(m3__cache_get(c, 7, out, sizeof out), 0);
  m3__cache_stats(c, &st);
  CHECK_U64(st.bytes, 900);
  /* a get with too small a buffer misses */
  CHECK_U64(m3__cache_get(c, 6, out, 399), 0);
  m3__cache_stats(c, &st);
  CHECK_U64(st.hits, 6);
  CHECK_U64(st.misses, 5);
  m3__cache_destroy(c);
  m3__cache_destroy(NULL);
}

static void test_replace_and_drop(void **state) {
  (void)state;
  m3_cache *c = NULL;
  CHECK_OK(m3__cache_create(1000, &c));
  uint8_t buf[600], out[600];
  m3_cache_stats st;
  fill(buf, 100, 0xaa);
  m3__cache_put(c, 9, buf, 100);
  fill(buf, 600, 0xbb);
  m3__cache_put(c, 9, buf, 600); /* replace: bytes count the new size only */
  m3__cache_stats(c, &st);
  CHECK_U64(st.entries, 1);
  CHECK_U64(st.bytes, 600);
  CHECK_U64(m3__cache_get(c, 9, out, sizeof out), 600);
  CHECK_U64(out[0], 0xbb);
  /* replacing with a record that needs the whole budget evicts others only */
  fill(buf, 300, 0xcc);
  m3__cache_put(c, 10, buf, 300);
  fill(buf, 500, 0xdd);
  m3__cache_put(c, 9, buf, 500);
  m3__cache_stats(c, &st);
  CHECK_U64(st.bytes, 800);
  CHECK_U64(m3__cache_get(c, 10, out, sizeof out), 300);
  m3__cache_drop(c, 9);
  m3__cache_drop(c, 12345); /* absent: no-op */
  m3__cache_stats(c, &st);
  CHECK_U64(st.entries, 1);
  CHECK_U64(st.bytes, 300);
  CHECK_U64(m3__cache_get(c, 9, out, sizeof out), 0);
  m3__cache_destroy(c);
}

/* Many entries with colliding and sequential ids through table growth. */
static void test_many_entries(void **state) {
  (void)state;
  m3_cache *c = NULL;
  enum { N = 5000 };
  CHECK_OK(m3__cache_create(N * 8, &c));
  for (uint64_t i = 0; i < N; i++) {
    uint64_t id = i * 1024; /* same low bits */
    m3__cache_put(c, id, &id, 8);
  }
  m3_cache_stats st;
  m3__cache_stats(c, &st);
  CHECK_U64(st.entries, N);
  CHECK_U64(st.bytes, N * 8);
  for (uint64_t i = 0; i < N; i++) {
    uint64_t v = 0;
    CHECK_U64(m3__cache_get(c, i * 1024, &v, 8), 8);
    CHECK_U64(v, i * 1024);
  }
  /* one more evicts exactly the least recently used: id 0 (gets went in order) */
  uint64_t x = 1;
  m3__cache_put(c, 1, &x, 8);
  uint64_t v;
  CHECK_U64(m3__cache_get(c, 0, &v, 8), 0);
  CHECK_U64(m3__cache_get(c, 1024, &v, 8), 8);
  m3__cache_destroy(c);
}

/* Through the store: a repeated fetch is a hit with the same bytes; a put
 * or delete of the id invalidates it; the budget bounds what is kept. */
static void test_through_store(void **state) {
  (void)state;
  char *dir = m3t_mkdtemp("cache");
  m3_layout l = tu_layout_m3_14();
  m3_store_options o;
  tu_opts(&o, &l, 1, 0);
  size_t mem = m3_record_mem_size(&l);
  o.cache_bytes = 3 * mem; /* room for three memories */
  m3_store *s = NULL;
  CHECK_OK(m3_store_open(dir, &o, &s));
  CHECK_OK(tu_put_range(s, 0, 10, 0));
  m3_store_stats st;
  tu_check_fetch(s, 1, 0); /* miss */
  tu_check_fetch(s, 1, 0); /* hit */
  CHECK_OK(m3_store_stats_get(s, &st));
  CHECK_U64(st.cache_hits, 1);
  CHECK_U64(st.cache_misses, 1);
  /* replace id 1: the next fetch must see the new content */
  CHECK_OK(tu_put_range(s, 1, 1, 2));
  tu_check_fetch(s, 1, 2);
  tu_check_fetch(s, 1, 2);
  CHECK_OK(m3_store_stats_get(s, &st));
  CHECK_U64(st.cache_hits, 2);
  CHECK_U64(st.cache_misses, 2);
  /* delete: not served from the cache */
  uint64_t id = 1;
  size_t del = 0;
  CHECK_OK(m3_store_delete(s, &id, 1, &del));
  CHECK_U64(del, 1);
  size_t cap = m3_store_fetch_cap(s);
  void *buf = m3_store_buf_alloc(s, cap);
  m3_fetch_item it = {.chunk_id = 1, .buf = buf, .cap = cap};
  CHECK_OK(m3_store_fetch(s, &it, 1));
  CHECK_RC(it.status, M3_ENOTFOUND);
  assert_null(it.data);
  /* budget: fetch 2..6 (five memories) -> only the last three stay */
  for (uint64_t i = 2; i <= 6; i++) tu_check_fetch(s, i, 0);
  CHECK_OK(m3_store_stats_get(s, &st));
  uint64_t h0 = st.cache_hits;
  for (uint64_t i = 4; i <= 6; i++) tu_check_fetch(s, i, 0);
  CHECK_OK(m3_store_stats_get(s, &st));
  CHECK_U64(st.cache_hits, h0 + 3);
  tu_check_fetch(s, 2, 0); /* evicted: a miss */
  CHECK_OK(m3_store_stats_get(s, &st));
  CHECK_U64(st.cache_hits, h0 + 3);
  free(buf);
  m3_store_close(s);
  m3t_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_budget_and_lru),
      cmocka_unit_test(test_replace_and_drop),
      cmocka_unit_test(test_many_entries),
      cmocka_unit_test(test_through_store),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
