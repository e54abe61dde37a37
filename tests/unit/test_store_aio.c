/*
 * Asynchronous store reads (m3_store_aio): every item completes exactly
 * once through its callback, from reap and never from submit, with the
 * bytes a synchronous fetch returns; more reads than the ring holds wait
 * their turn; missing ids, cache hits and corrupt records complete with
 * their status; a compaction in the middle of reads in flight neither
 * breaks them nor leaks the dropped segments' descriptors; a writer makes
 * submit answer M3_EBUSY instead of blocking; close with reads in flight.
 */
#include <dirent.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "testutil.h"

typedef tu_fixture fixture;

static int setup(void **state) {
  setenv("M3_IO", "uring", 1);
  fixture *f = calloc(1, sizeof *f);
  f->dir = m3t_mkdtemp("aio");
  f->l = tu_layout_m3_14();
  *state = f;
  return 0;
}

static m3_store *open_store(fixture *f, int direct, size_t cache_bytes) {
  m3_store_options o;
  tu_opts(&o, &f->l, 1, 1 << 20); /* small segments: reads span several */
  o.direct = direct;
  o.cache_bytes = cache_bytes;
  m3_store *s = NULL;
  CHECK_OK(m3_store_open(f->dir, &o, &s));
  return s;
}

typedef struct batch {
  m3_fetch_item *it;
  int *calls; /* per item: how many times fn saw it */
  size_t n;
  size_t done;
} batch;

static void on_item(void *ud, m3_fetch_item *it) {
  batch *b = ud;
  b->calls[it - b->it]++;
  b->done++;
}

static void batch_make(batch *b, m3_store *s, const uint64_t *ids, size_t n) {
  size_t cap = m3_store_fetch_cap(s);
  b->it = calloc(n, sizeof *b->it);
  b->calls = calloc(n, sizeof *b->calls);
  b->n = n;
  b->done = 0;
  for (size_t i = 0; i < n; i++) {
    b->it[i].chunk_id = ids[i];
    b->it[i].buf = m3_store_buf_alloc(s, cap);
    b->it[i].cap = cap;
  }
}

static void batch_free(batch *b) {
  for (size_t i = 0; i < b->n; i++) free(b->it[i].buf);
  free(b->it);
  free(b->calls);
}

/* Poll the eventfd and reap until every item of b has completed. */
static void run_until_done(m3_store_aio *a, batch *b) {
  long long until = m3t_now_ms() + 10000;
  while (b->done < b->n) {
    struct pollfd p = {m3_store_aio_fd(a), POLLIN, 0};
    int r = poll(&p, 1, 1000);
    assert_true(r >= 0);
    int got = m3_store_aio_reap(a);
    assert_true(got >= 0);
    if (m3t_now_ms() > until) fail_msg("%zu of %zu items completed in 10 s", b->done, b->n);
  }
  CHECK_U64(m3_store_aio_pending(a), 0);
}

/* Each item completed once; good ids hold their expected bytes. */
static void check_batch(const fixture *f, batch *b, uint64_t nstored) {
  for (size_t i = 0; i < b->n; i++) {
    m3_fetch_item *it = &b->it[i];
    CHECK_U64(b->calls[i], 1);
    if (it->chunk_id >= nstored) {
      CHECK_RC(it->status, M3_ENOTFOUND);
      continue;
    }
    CHECK_OK(it->status);
    size_t len;
    uint8_t *want = tu_expected(&f->l, it->chunk_id, 0, &len);
    CHECK_U64(it->len, m3_record_mem_size(&f->l));
    assert_memory_equal(it->data, want, it->len);
    free(want);
  }
}

static void many_reads(fixture *f, int direct) {
  enum { STORED = 120, N = 300 };
  f->s = open_store(f, direct, 0);
  CHECK_OK(tu_put_range(f->s, 0, STORED, 0));
  m3_store_aio *a = NULL;
  CHECK_OK(m3_store_aio_open(f->s, 16, &a)); /* far fewer slots than reads */
  uint64_t ids[N], st = 99;
  for (size_t i = 0; i < N; i++) ids[i] = m3t_rand(&st) % (STORED + 20); /* some missing */
  ids[7] = ids[8];                                                        /* a duplicate */
  batch b;
  batch_make(&b, f->s, ids, N);
  CHECK_OK(m3_store_aio_submit(a, b.it, N, on_item, &b));
  CHECK_U64(b.done, 0); /* never from within submit */
  CHECK_U64(m3_store_aio_pending(a), N);
  run_until_done(a, &b);
  check_batch(f, &b, STORED);
  batch_free(&b);
  m3_store_aio_close(a);
}

static void test_many_reads(void **state) { many_reads(*state, 0); }
static void test_many_reads_direct(void **state) { many_reads(*state, 1); }

static void test_cache_hits_complete_in_reap(void **state) {
  fixture *f = *state;
  f->s = open_store(f, 1, 8 << 20);
  CHECK_OK(tu_put_range(f->s, 0, 10, 0));
  m3_store_aio *a = NULL;
  CHECK_OK(m3_store_aio_open(f->s, 0, &a));
  uint64_t ids[10];
  for (int i = 0; i < 10; i++) ids[i] = (uint64_t)i;
  batch b;
  batch_make(&b, f->s, ids, 10);
  CHECK_OK(m3_store_aio_submit(a, b.it, 10, on_item, &b)); /* reads fill the cache */
  run_until_done(a, &b);
  uint64_t hits0, misses0, bytes;
  m3_store_cache_counters(f->s, &hits0, &misses0, &bytes);
  assert_true(bytes > 0);
  b.done = 0;
  for (int i = 0; i < 10; i++) b.calls[i] = 0;
  CHECK_OK(m3_store_aio_submit(a, b.it, 10, on_item, &b)); /* all hits now */
  CHECK_U64(b.done, 0);
  run_until_done(a, &b);
  check_batch(f, &b, 10);
  uint64_t hits1, misses1;
  m3_store_cache_counters(f->s, &hits1, &misses1, &bytes);
  CHECK_U64(hits1 - hits0, 10);
  CHECK_U64(misses1, misses0);
  batch_free(&b);
  m3_store_aio_close(a);
}

static void test_corrupt_record(void **state) {
  fixture *f = *state;
  f->s = open_store(f, 0, 0);
  CHECK_OK(tu_put_range(f->s, 0, 4, 0));
  m3_location loc;
  CHECK_OK(m3_store_locate(f->s, 2, &loc));
  char path[4096];
  m3_store_segment_path(f->s, loc.segment, path, sizeof path);
  m3t_flip_byte(path, loc.offset + loc.mem_len - 10); /* inside the codes */
  m3_store_aio *a = NULL;
  CHECK_OK(m3_store_aio_open(f->s, 0, &a));
  uint64_t ids[4] = {0, 1, 2, 3};
  batch b;
  batch_make(&b, f->s, ids, 4);
  CHECK_OK(m3_store_aio_submit(a, b.it, 4, on_item, &b));
  run_until_done(a, &b);
  CHECK_RC(b.it[2].status, M3_ECORRUPT);
  assert_null(b.it[2].data);
  for (int i = 0; i < 4; i++)
    if (i != 2) CHECK_OK(b.it[i].status);
  batch_free(&b);
  m3_store_aio_close(a);
}

static int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  int n = 0;
  for (struct dirent *e; (e = readdir(d)) != NULL;) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

/* A compaction drops every segment while reads planned against them wait
 * in the ring's queue: they still read the right bytes, and the dropped
 * segments' descriptors are closed once the last of them completed. */
static void test_compaction_during_reads(void **state) {
  fixture *f = *state;
  enum { STORED = 200 };
  f->s = open_store(f, 0, 0);
  CHECK_OK(tu_put_range(f->s, 0, STORED, 0));
  uint64_t del[STORED / 2];
  for (size_t i = 0; i < STORED / 2; i++) del[i] = 2 * i + 1;
  m3_store_aio *a = NULL;
  CHECK_OK(m3_store_aio_open(f->s, 4, &a));
  uint64_t ids[STORED / 2];
  for (size_t i = 0; i < STORED / 2; i++) ids[i] = 2 * i; /* survivors */
  batch b;
  batch_make(&b, f->s, ids, STORED / 2);
  int fds0 = count_fds();
  CHECK_OK(m3_store_aio_submit(a, b.it, b.n, on_item, &b));
  CHECK_OK(m3_store_delete(f->s, del, STORED / 2, NULL));
  uint64_t reclaimed = 0;
  CHECK_OK(m3_store_compact(f->s, &reclaimed));
  assert_true(reclaimed > 0);
  assert_true(count_fds() >= fds0); /* the old descriptors are still open */
  run_until_done(a, &b);
  check_batch(f, &b, STORED);
  /* The survivors' new segments are fewer than the old: nothing leaked. */
  assert_true(count_fds() < fds0);
  batch_free(&b);
  /* Reads after the compaction see the new segments. */
  batch_make(&b, f->s, ids, STORED / 2);
  CHECK_OK(m3_store_aio_submit(a, b.it, b.n, on_item, &b));
  run_until_done(a, &b);
  check_batch(f, &b, STORED);
  batch_free(&b);
  m3_store_aio_close(a);
}

typedef struct writer {
  m3_store *s;
  atomic_int stop;
  int rc;
} writer;

static void *write_loop(void *arg) {
  writer *w = arg;
  for (uint32_t v = 1; !atomic_load(&w->stop) && w->rc == 0; v++)
    w->rc = tu_put_range(w->s, 1000, 4, v);
  return NULL;
}

/* While a writer commits, submit refuses at once rather than block; what it
 * accepts completes normally. */
static void test_busy_while_writing(void **state) {
  fixture *f = *state;
  f->s = open_store(f, 0, 0);
  CHECK_OK(tu_put_range(f->s, 0, 8, 0));
  m3_store_aio *a = NULL;
  CHECK_OK(m3_store_aio_open(f->s, 0, &a));
  writer w = {f->s, 0, 0};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, write_loop, &w), 0);
  uint64_t ids[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  int busy = 0, ok = 0;
  long long until = m3t_now_ms() + 20000;
  while ((busy == 0 || ok == 0) && m3t_now_ms() < until) {
    batch b;
    batch_make(&b, f->s, ids, 8);
    int rc = m3_store_aio_submit(a, b.it, 8, on_item, &b);
    if (rc == M3_EBUSY) {
      busy++;
      CHECK_U64(m3_store_aio_pending(a), 0);
    } else {
      CHECK_OK(rc);
      ok++;
      run_until_done(a, &b);
      check_batch(f, &b, 8);
    }
    batch_free(&b);
  }
  atomic_store(&w.stop, 1);
  pthread_join(t, NULL);
  CHECK_OK(w.rc);
  if (busy == 0 || ok == 0) fail_msg("in 20 s: %d refused, %d accepted submissions", busy, ok);
  m3_store_aio_close(a);
}

static void test_close_with_reads_in_flight(void **state) {
  fixture *f = *state;
  f->s = open_store(f, 1, 0);
  CHECK_OK(tu_put_range(f->s, 0, 64, 0));
  m3_store_aio *a = NULL;
  CHECK_OK(m3_store_aio_open(f->s, 8, &a));
  uint64_t ids[64];
  for (int i = 0; i < 64; i++) ids[i] = (uint64_t)i;
  batch b;
  batch_make(&b, f->s, ids, 64);
  CHECK_OK(m3_store_aio_submit(a, b.it, 64, on_item, &b));
  m3_store_aio_close(a); /* waits for the kernel's reads; no callback */
  CHECK_U64(b.done, 0);
  batch_free(&b);
}

static void test_needs_io_uring(void **state) {
  fixture *f = *state;
  setenv("M3_IO", "pread", 1);
  f->s = open_store(f, 0, 0);
  setenv("M3_IO", "uring", 1);
  m3_store_aio *a = NULL;
  CHECK_RC(m3_store_aio_open(f->s, 0, &a), M3_EUNSUPPORTED);
  assert_null(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_many_reads, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_many_reads_direct, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_cache_hits_complete_in_reap, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_corrupt_record, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_compaction_during_reads, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_busy_while_writing, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_close_with_reads_in_flight, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_needs_io_uring, setup, tu_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
