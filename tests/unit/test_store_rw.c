/*
 * Store reads and writes: puts, batched fetches, deletes, idempotent and
 * replacing puts, texts, iteration order, segment roll-over, missing ids,
 * direct I/O on and off, and that a reopened store holds the same content.
 * Run once per read backend: argv[1] is "uring" or "pread" (exported as
 * M3_IO, which m3_store_options_init honours).
 */
#include <stdlib.h>
#include <unistd.h>

#include "testutil.h"

static const char *g_backend = "pread";    /* M3_IO value */
static const char *g_backend_name = "pread"; /* m3_store_io_backend() */

typedef tu_fixture fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->dir = m3t_mkdtemp("rw");
  f->l = tu_layout_m3_14();
  *state = f;
  return 0;
}

static m3_store *open_store(fixture *f, int create, uint64_t segment_bytes, int direct) {
  m3_store_options o;
  tu_opts(&o, &f->l, create, segment_bytes);
  o.direct = direct;
  m3_store *s = NULL;
  CHECK_OK(m3_store_open(f->dir, &o, &s));
  assert_string_equal(m3_store_io_backend(s), g_backend_name);
  return s;
}

static uint64_t seg_bytes_on_disk(m3_store *s) {
  m3_store_stats st;
  CHECK_OK(m3_store_stats_get(s, &st));
  return st.segment_bytes;
}

static void test_backend_selected(void **state) {
  fixture *f = *state;
  f->s = open_store(f, 1, 0, 0);
  const m3_layout *l = m3_store_layout(f->s);
  CHECK_U64(l->code_bytes, 14);
  CHECK_U64(l->codec_fp, f->l.codec_fp);
  CHECK_U64(m3_store_align(f->s), 512);
}

static void test_put_fetch_batches(void **state) {
  fixture *f = *state;
  f->s = open_store(f, 1, 0, 0);
  /* batches of 1, 7 and 42 */
  CHECK_OK(tu_put_range(f->s, 0, 1, 0));
  CHECK_OK(tu_put_range(f->s, 1, 7, 0));
  CHECK_OK(tu_put_range(f->s, 8, 42, 0));
  for (int i = 0; i < 50; i++) CHECK_U64(m3_store_contains(f->s, (uint64_t)i), 1);
  CHECK_U64(m3_store_contains(f->s, 50), 0);
  /* one batched fetch of 40 (more than the 32 on the stack), shuffled, with a
   * duplicate and missing ids mixed in */
  enum { N = 44 };
  size_t cap = m3_store_fetch_cap(f->s);
  m3_fetch_item it[N];
  uint64_t ids[N];
  uint64_t st = 7;
  for (int i = 0; i < 40; i++) ids[i] = (uint64_t)((i * 13) % 50);
  ids[40] = 1000;     /* missing */
  ids[41] = 3;        /* duplicate */
  ids[42] = UINT64_MAX; /* missing */
  ids[43] = 49;
  for (int i = 0; i < N; i++) {
    it[i] = (m3_fetch_item){.chunk_id = ids[i], .buf = malloc(cap), .cap = cap};
    it[i].status = 12345;
  }
  (void)m3t_rand(&st);
  CHECK_OK(m3_store_fetch(f->s, it, N));
  size_t mem = m3_record_mem_size(&f->l);
  for (int i = 0; i < N; i++) {
    if (ids[i] >= 50) {
      CHECK_RC(it[i].status, M3_ENOTFOUND);
      assert_null(it[i].data);
      CHECK_U64(it[i].len, 0);
      continue;
    }
    CHECK_RC(it[i].status, 0);
    CHECK_U64(it[i].len, mem);
    size_t len;
    uint8_t *want = tu_expected(&f->l, ids[i], 0, &len);
    if (memcmp(it[i].data, want, mem) != 0)
      fail_msg("item %d (chunk %llu): bytes differ", i, (unsigned long long)ids[i]);
    m3_record r;
    CHECK_OK(m3_record_parse(it[i].data, it[i].len, M3_PARSE_MEM, &r));
    CHECK_U64(r.chunk_id, ids[i]);
    CHECK_U64(r.chunk_len, 64 + ids[i] % 449);
    free(want);
  }
  for (int i = 0; i < N; i++) free(it[i].buf);
  /* texts */
  for (uint64_t i = 0; i < 50; i += 7) tu_check_fetch(f->s, i, 0);
  char *t = (char *)1;
  size_t tl = 99;
  CHECK_RC(m3_store_get_text(f->s, 50, &t, &tl), M3_ENOTFOUND);
  /* empty batch */
  CHECK_OK(m3_store_put(f->s, NULL, 0));
  CHECK_OK(m3_store_fetch(f->s, NULL, 0));
  /* a buffer too small is refused */
  uint8_t small[64];
  m3_fetch_item bad = {.chunk_id = 1, .buf = small, .cap = sizeof small};
  CHECK_RC(m3_store_fetch(f->s, &bad, 1), M3_EINVAL);
}

static void test_idempotent_and_replace(void **state) {
  fixture *f = *state;
  f->s = open_store(f, 1, 0, 0);
  CHECK_OK(tu_put_range(f->s, 0, 10, 0));
  uint64_t before = seg_bytes_on_disk(f->s);
  m3_location l0, l1;
  CHECK_OK(m3_store_locate(f->s, 4, &l0));
  /* same content again: a no-op, not a byte written */
  CHECK_OK(tu_put_range(f->s, 0, 10, 0));
  CHECK_U64(seg_bytes_on_disk(f->s), before);
  char path[4096];
  m3_store_segment_path(f->s, l0.segment, path, sizeof path);
  CHECK_U64(m3t_file_size(path), before);
  CHECK_OK(m3_store_locate(f->s, 4, &l1));
  CHECK_U64(l1.offset, l0.offset);
  m3_store_stats st;
  CHECK_OK(m3_store_stats_get(f->s, &st));
  CHECK_U64(st.records, 10);
  CHECK_U64(st.dead_bytes, 0);
  /* a batch mixing identical and new content writes only the new ones */
  CHECK_OK(tu_put_range(f->s, 8, 4, 0)); /* 8, 9 same; 10, 11 new */
  CHECK_OK(m3_store_stats_get(f->s, &st));
  CHECK_U64(st.records, 12);
  CHECK_U64(st.dead_bytes, 0);
  uint64_t rec_pad = (m3_record_size(&f->l, 10) + 511) / 512 * 512;
  CHECK_U64(st.segment_bytes, before + 2 * rec_pad);
  /* different content replaces */
  CHECK_OK(tu_put_range(f->s, 4, 1, 1));
  tu_check_fetch(f->s, 4, 1);
  CHECK_OK(m3_store_locate(f->s, 4, &l1));
  assert_true(l1.offset != l0.offset);
  CHECK_OK(m3_store_stats_get(f->s, &st));
  CHECK_U64(st.records, 12);
  assert_true(st.dead_bytes >= rec_pad - 511);
  /* replacing back to version 0 is a replacement too (not the original slot) */
  CHECK_OK(tu_put_range(f->s, 4, 1, 0));
  tu_check_fetch(f->s, 4, 0);
  /* the rest untouched */
  for (uint64_t i = 0; i < 12; i++)
    if (i != 4) tu_check_fetch(f->s, i, 0);
}

/* Only the chunk length differs: the stored record must carry the new one
 * (the record is different content, per "different content replaces it"). */
static void test_replace_chunk_len_only(void **state) {
  fixture *f = *state;
  f->s = open_store(f, 1, 0, 0);
  tu_mem m;
  tu_mem_make(&m, &f->l, 3, 0);
  CHECK_OK(m3_store_put(f->s, &m.in, 1));
  m.in.chunk_len += 100;
  CHECK_OK(m3_store_put(f->s, &m.in, 1));
  size_t cap = m3_store_fetch_cap(f->s);
  void *buf = malloc(cap);
  m3_fetch_item it = {.chunk_id = 3, .buf = buf, .cap = cap};
  CHECK_OK(m3_store_fetch(f->s, &it, 1));
  CHECK_RC(it.status, 0);
  m3_record r;
  CHECK_OK(m3_record_parse(it.data, it.len, M3_PARSE_MEM, &r));
  CHECK_U64(r.chunk_len, m.in.chunk_len);
  free(buf);
  tu_mem_free(&m);
}

static void test_delete(void **state) {
  fixture *f = *state;
  f->s = open_store(f, 1, 0, 0);
  CHECK_OK(tu_put_range(f->s, 100, 20, 0));
  uint64_t ids[] = {101, 105, 999, 105, 119};
  size_t del = 77;
  CHECK_OK(m3_store_delete(f->s, ids, 5, &del));
  /* 105 twice: both lookups saw it present */
  assert_true(del == 3 || del == 4);
  for (int i = 0; i < 5; i++) CHECK_U64(m3_store_contains(f->s, ids[i]), 0);
  char *t = NULL;
  size_t tl;
  CHECK_RC(m3_store_get_text(f->s, 105, &t, &tl), M3_ENOTFOUND);
  m3_location loc;
  CHECK_RC(m3_store_locate(f->s, 105, &loc), M3_ENOTFOUND);
  /* fetch of a deleted id among present ones */
  size_t cap = m3_store_fetch_cap(f->s);
  m3_fetch_item it[3] = {{.chunk_id = 100}, {.chunk_id = 101}, {.chunk_id = 102}};
  for (int i = 0; i < 3; i++) {
    it[i].buf = malloc(cap);
    it[i].cap = cap;
  }
  CHECK_OK(m3_store_fetch(f->s, it, 3));
  CHECK_RC(it[0].status, 0);
  CHECK_RC(it[1].status, M3_ENOTFOUND);
  assert_null(it[1].data);
  CHECK_RC(it[2].status, 0);
  for (int i = 0; i < 3; i++) free(it[i].buf);
  /* absent ids: nothing written */
  uint64_t before = seg_bytes_on_disk(f->s);
  uint64_t absent[] = {101, 5000};
  del = 77;
  CHECK_OK(m3_store_delete(f->s, absent, 2, &del));
  CHECK_U64(del, 0);
  CHECK_U64(seg_bytes_on_disk(f->s), before);
  CHECK_OK(m3_store_delete(f->s, absent, 0, NULL));
  /* delete then put again */
  CHECK_OK(tu_put_range(f->s, 105, 1, 3));
  tu_check_fetch(f->s, 105, 3);
  CHECK_OK(tu_put_range(f->s, 101, 1, 0));
  tu_check_fetch(f->s, 101, 0);
  m3_store_stats st;
  CHECK_OK(m3_store_stats_get(f->s, &st));
  CHECK_U64(st.records, 19);
  /* survives reopen */
  m3_store_close(f->s);
  f->s = open_store(f, 0, 0, 0);
  CHECK_U64(m3_store_contains(f->s, 119), 0);
  CHECK_U64(m3_store_contains(f->s, 999), 0);
  tu_check_fetch(f->s, 105, 3);
  tu_check_fetch(f->s, 101, 0);
  CHECK_OK(m3_store_stats_get(f->s, &st));
  CHECK_U64(st.records, 19);
}

typedef struct walk {
  uint64_t ids[64];
  int n, stop_after;
} walk;

static int walk_fn(void *ud, uint64_t id, const m3_location *loc) {
  walk *w = ud;
  (void)loc;
  w->ids[w->n++] = id;
  return w->n == w->stop_after ? 42 : 0;
}

static void test_iterate_order(void **state) {
  fixture *f = *state;
  f->s = open_store(f, 1, 0, 0);
  uint64_t order[] = {500, 3, 1ull << 40, 77, 256, 255, 0, UINT64_MAX - 5};
  for (int i = 0; i < 8; i++) CHECK_OK(tu_put_range(f->s, order[i], 1, 0));
  walk w = {.stop_after = -1};
  CHECK_OK(m3_store_iterate(f->s, walk_fn, &w));
  uint64_t want[] = {0, 3, 77, 255, 256, 500, 1ull << 40, UINT64_MAX - 5};
  CHECK_U64(w.n, 8);
  for (int i = 0; i < 8; i++) CHECK_U64(w.ids[i], want[i]);
  walk w2 = {.stop_after = 3};
  CHECK_RC(m3_store_iterate(f->s, walk_fn, &w2), 42);
  CHECK_U64(w2.n, 3);
}

static void test_segment_roll(void **state) {
  fixture *f = *state;
  /* ~42.5 KiB records, 100 KB segments: two records per segment */
  f->s = open_store(f, 1, 100000, 0);
  for (uint64_t i = 0; i < 12; i += 3) CHECK_OK(tu_put_range(f->s, i, 3, 0));
  m3_store_stats st;
  CHECK_OK(m3_store_stats_get(f->s, &st));
  CHECK_U64(st.records, 12);
  assert_true(st.segments >= 6);
  uint32_t segs[12];
  for (uint64_t i = 0; i < 12; i++) {
    m3_location loc;
    CHECK_OK(m3_store_locate(f->s, i, &loc));
    segs[i] = loc.segment;
    char path[4096];
    m3_store_segment_path(f->s, loc.segment, path, sizeof path);
    assert_true(m3t_file_size(path) <= 100000 || loc.offset == 512);
    assert_true(m3t_file_size(path) >= (long long)(loc.offset + loc.rec_len));
    if (i) assert_true(segs[i] >= segs[i - 1]);
  }
  assert_true(segs[11] > segs[0]);
  for (uint64_t i = 0; i < 12; i++) tu_check_fetch(f->s, i, 0);
  CHECK_OK(m3_store_verify(f->s, NULL, NULL, NULL));
  m3_store_close(f->s);
  f->s = open_store(f, 0, 100000, 0);
  for (uint64_t i = 0; i < 12; i++) tu_check_fetch(f->s, i, 0);
  /* and writing continues in new segments after reopen */
  CHECK_OK(tu_put_range(f->s, 12, 2, 0));
  tu_check_fetch(f->s, 13, 0);
}

/* One batch that needs more segments than the group commit tracks at once
 * (a record per segment, 12 records). */
static void test_batch_spanning_many_segments(void **state) {
  fixture *f = *state;
  f->s = open_store(f, 1, 4096, 0);
  int rc = tu_put_range(f->s, 0, 12, 0);
  CHECK_OK(rc);
  for (uint64_t i = 0; i < 12; i++) tu_check_fetch(f->s, i, 0);
  CHECK_OK(m3_store_verify(f->s, NULL, NULL, NULL));
  m3_store_close(f->s);
  f->s = open_store(f, 0, 4096, 0);
  for (uint64_t i = 0; i < 12; i++) tu_check_fetch(f->s, i, 0);
}

static void test_direct_io(void **state) {
  fixture *f = *state;
  f->s = open_store(f, 1, 200000, 0);
  CHECK_OK(tu_put_range(f->s, 0, 9, 0));
  m3_store_close(f->s);
  f->s = open_store(f, 0, 200000, 1);
  size_t cap = m3_store_fetch_cap(f->s);
  m3_fetch_item it[9];
  for (int i = 0; i < 9; i++) {
    it[i] = (m3_fetch_item){.chunk_id = (uint64_t)(8 - i), .buf = m3_store_buf_alloc(f->s, cap),
                            .cap = cap};
    assert_non_null(it[i].buf);
    assert_true(((uintptr_t)it[i].buf % 4096) == 0);
  }
  CHECK_OK(m3_store_fetch(f->s, it, 9));
  for (int i = 0; i < 9; i++) {
    CHECK_RC(it[i].status, 0);
    size_t len;
    uint8_t *want = tu_expected(&f->l, it[i].chunk_id, 0, &len);
    if (memcmp(it[i].data, want, it[i].len) != 0)
      fail_msg("direct fetch of %llu: bytes differ", (unsigned long long)it[i].chunk_id);
    free(want);
  }
  /* a misaligned buffer and a short one are refused with direct I/O */
  uint8_t *raw = m3_store_buf_alloc(f->s, cap + 4096);
  m3_fetch_item bad = {.chunk_id = 1, .buf = raw + 8, .cap = cap};
  CHECK_RC(m3_store_fetch(f->s, &bad, 1), M3_EINVAL);
  bad = (m3_fetch_item){.chunk_id = 1, .buf = raw, .cap = m3_record_mem_size(&f->l)};
  CHECK_RC(m3_store_fetch(f->s, &bad, 1), M3_EINVAL);
  free(raw);
  /* writes with direct reads on: new records across a roll read back */
  CHECK_OK(tu_put_range(f->s, 9, 6, 0));
  for (uint64_t i = 0; i < 15; i++) tu_check_fetch(f->s, i, 0);
  for (int i = 0; i < 9; i++) free(it[i].buf);
  CHECK_OK(m3_store_verify(f->s, NULL, NULL, NULL));
  m3_store_close(f->s);
  f->s = open_store(f, 0, 200000, 0);
  for (uint64_t i = 0; i < 15; i++) tu_check_fetch(f->s, i, 0);
}

static void test_reopen_persists(void **state) {
  fixture *f = *state;
  f->s = open_store(f, 1, 150000, 0);
  CHECK_OK(tu_put_range(f->s, 0, 20, 0));
  CHECK_OK(tu_put_range(f->s, 5, 3, 1));
  uint64_t del[] = {10, 11};
  CHECK_OK(m3_store_delete(f->s, del, 2, NULL));
  tu_dump a, b;
  tu_dump_store(f->s, &a);
  CHECK_U64(a.n, 18);
  m3_store_close(f->s);
  f->s = NULL;
  /* the layout comes from the store, not the options, on a plain open */
  m3_store_options o;
  m3_store_options_init(&o);
  CHECK_OK(m3_store_open(f->dir, &o, &f->s));
  assert_string_equal(m3_store_io_backend(f->s), g_backend_name);
  CHECK_U64(m3_store_layout(f->s)->code_bytes, 14);
  tu_dump_store(f->s, &b);
  tu_dump_compare(&a, &b, 1);
  uint64_t checked = 0;
  CHECK_OK(m3_store_verify(f->s, NULL, NULL, &checked));
  CHECK_U64(checked, 18);
  tu_dump_free(&a);
  tu_dump_free(&b);
}

static void test_open_errors(void **state) {
  fixture *f = *state;
  m3_store_options o;
  m3_store *s = NULL;
  char missing[4200];
  snprintf(missing, sizeof missing, "%s/nope", f->dir);
  tu_opts(&o, &f->l, 0, 0);
  CHECK_RC(m3_store_open(missing, &o, &s), M3_ENOTFOUND);
  /* an empty directory without create */
  CHECK_RC(m3_store_open(f->dir, &o, &s), M3_ENOTFOUND);
  f->s = open_store(f, 1, 0, 0);
  CHECK_OK(tu_put_range(f->s, 0, 2, 0));
  /* a second handle on the same store is refused */
  CHECK_RC(m3_store_open(f->dir, &o, &s), M3_EBUSY);
  m3_store_close(f->s);
  f->s = NULL;
  /* create with another layout */
  m3_layout other = tu_layout_m3_bf16();
  tu_opts(&o, &other, 1, 0);
  CHECK_RC(m3_store_open(f->dir, &o, &s), M3_ESHAPE);
  /* read-only: reads work, writes are refused */
  tu_opts(&o, &f->l, 0, 0);
  o.read_only = 1;
  CHECK_OK(m3_store_open(f->dir, &o, &f->s));
  tu_check_fetch(f->s, 1, 0);
  CHECK_RC(tu_put_range(f->s, 5, 1, 0), M3_EUNSUPPORTED);
  uint64_t id = 1;
  CHECK_RC(m3_store_delete(f->s, &id, 1, NULL), M3_EUNSUPPORTED);
  m3_store_close(NULL);
}

/* The layout is given field by field in a struct whose padding holds junk:
 * the store must compare layouts by their fields. */
static void test_layout_padding_junk(void **state) {
  fixture *f = *state;
  m3_store_options o;
  m3_store_options_init(&o);
  memset(&o.layout, 0xA5, sizeof o.layout);
  o.layout.spec = M3_SPEC_MEMORY3;
  o.layout.codec_kind = M3_CODEC_FAISS;
  o.layout.code_bytes = 14;
  o.layout.codec_fp = f->l.codec_fp;
  o.create = 1;
  CHECK_OK(m3_store_open(f->dir, &o, &f->s));
  CHECK_OK(tu_put_range(f->s, 0, 3, 0));
  tu_check_fetch(f->s, 1, 0);
  uint64_t checked = 0;
  CHECK_OK(m3_store_verify(f->s, NULL, NULL, &checked));
  CHECK_U64(checked, 3);
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "uring")) {
    g_backend = "uring";
    g_backend_name = "io_uring";
  } else if (argc > 1 && strcmp(argv[1], "pread") != 0) {
    fprintf(stderr, "usage: %s uring|pread\n", argv[0]);
    return 2;
  }
  setenv("M3_IO", g_backend, 1);
  if (!strcmp(g_backend, "uring")) {
    /* Skip (77) where the kernel refuses io_uring. */
    char *dir = m3t_mkdtemp("probe");
    m3_store_options o;
    m3_layout l = tu_layout_m3_14();
    tu_opts(&o, &l, 1, 0);
    m3_store *s = NULL;
    int rc = m3_store_open(dir, &o, &s);
    m3_store_close(s);
    m3t_rmrf(dir);
    free(dir);
    if (rc != 0) {
      fprintf(stderr, "io_uring unavailable (%s): skipped\n", m3_errmsg());
      return 77;
    }
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_backend_selected, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_put_fetch_batches, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_idempotent_and_replace, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_replace_chunk_len_only, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_delete, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_iterate_order, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_segment_roll, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_batch_spanning_many_segments, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_direct_io, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_reopen_persists, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_open_errors, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_layout_padding_junk, setup, tu_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
