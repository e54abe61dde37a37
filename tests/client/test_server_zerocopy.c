/*
 * m3-server's two send paths, seen by libm3client over loopback: sendfile
 * from the page cache (the default; the server checks only each record's
 * header and the client checks every payload CRC32C) and read buffers
 * checked by the server (--no-sendfile, and any batch not in the page cache).
 *  - both return every memory byte-identical to the store, and the
 *    server's counters say which path sent them: sendfile bytes move on the
 *    default path only; after the segment files are dropped from the page
 *    cache (POSIX_FADV_DONTNEED) the default path reads the batch into
 *    buffers instead (m3_sendfile_cold_batches_total moves);
 *  - a byte flipped in a record's codes in its segment file is caught on
 *    both paths: that memory arrives as DATA_LOSS, the others intact;
 *  - slow readers (the socket fills and the server's sends wait) and calls
 *    cancelled mid-stream leave the server with no more descriptors open
 *    than before, and it still serves and drains (under ASan: no leak);
 *  - the client's receive path: with a landing function
 *    (m3_client_set_landing) every memory is received straight into the
 *    caller's buffer for it (m->data is that buffer), byte-identical, on
 *    both server paths; a misaligned buffer is refused (the memory comes in
 *    the client's own, still identical); the flipped byte is caught as it
 *    lands (DATA_LOSS for that memory, the others arrive in place).
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client/client_testlib.h"
#include "m3/frame.h"
#include "m3/store.h"

#define N 200
#define DIM 16
#define FLIPPED 37

static ct_store S;

typedef struct got {
  size_t n, ok, bad, mismatch;
  long bad_id;
  int bad_grpc;
  unsigned slow_us; /* sleep per memory: a slow reader */
  size_t stop_at;   /* return non-zero at this memory (0: never) */
  uint8_t **land;   /* (N) landing buffers by chunk id, or NULL */
  size_t misalign;  /* land at land[id] + misalign */
  size_t landed;    /* memories whose data was their landing buffer */
  size_t asked;     /* landing calls */
} got;

/* m3_client_land_fn: chunk i lands in g->land[i] (Fetch of ids i % N:
 * query is the index into ids, chunk_id the id). */
static void *land_at(void *ud, uint64_t chunk_id, uint32_t query, uint32_t rank, size_t len) {
  got *g = ud;
  g->asked++;
  if (chunk_id >= N || len != S.mem_len || rank != 0) fail_msg("landing %llu q %u r %u len %zu",
                                                                 (unsigned long long)chunk_id,
                                                                 query, rank, len);
  return g->land[chunk_id] + g->misalign;
}

static int on_memory(void *ud, const m3_client_memory *m) {
  got *g = ud;
  g->n++;
  if (m->status == 0) {
    g->ok++;
    if (m->chunk_id >= N || m->len != S.mem_len || memcmp(m->data, S.mem[m->chunk_id], m->len))
      g->mismatch++;
    else if (g->land && m->data == g->land[m->chunk_id] + g->misalign)
      g->landed++;
  } else {
    g->bad++;
    g->bad_id = (long)m->chunk_id;
    g->bad_grpc = m->grpc_status;
  }
  if (g->slow_us) usleep(g->slow_us);
  return g->stop_at && g->n == g->stop_at ? 7 : 0;
}

static int count_fds(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
  DIR *d = opendir(path);
  if (d == NULL) fail_msg("open %s", path);
  int n = 0;
  for (struct dirent *e; (e = readdir(d));) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

static void fetch_all(m3_client *c, got *g, size_t repeat) {
  size_t n = (size_t)N * repeat;
  uint64_t *ids = malloc(n * sizeof *ids);
  for (size_t i = 0; i < n; i++) ids[i] = i % N;
  m3_client_set_landing(c, g->land ? land_at : NULL, g);
  int rc = m3_client_fetch(c, ids, n, 0, on_memory, g);
  if (g->stop_at == 0 && rc != 0) fail_msg("fetch of %zu: %s", n, m3_strerror(rc));
  free(ids);
}

static uint8_t **land_bufs(void) {
  uint8_t **b = calloc(N, sizeof *b);
  for (size_t i = 0; i < N; i++) {
    b[i] = aligned_alloc(64, (S.mem_len + 8 + 63) / 64 * 64);
    memset(b[i], 0xA5, S.mem_len + 8);
  }
  return b;
}

static void land_free(uint8_t **b) {
  for (size_t i = 0; b && i < N; i++) free(b[i]);
  free(b);
}

/* Drop the store's segment files from the page cache. */
static void drop_cache(void) {
  DIR *d = opendir(S.store);
  if (d == NULL) fail_msg("open %s", S.store);
  int n = 0;
  for (struct dirent *e; (e = readdir(d));) {
    if (strncmp(e->d_name, "seg-", 4) != 0) continue;
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", S.store, e->d_name);
    int fd = open(path, O_RDONLY);
    if (fd < 0) fail_msg("open %s", path);
    if (fdatasync(fd) != 0 || posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0)
      fail_msg("drop %s from the page cache", path);
    close(fd);
    n++;
  }
  closedir(d);
  if (n == 0) fail_msg("no segment files in %s", S.store);
}

enum { PATH_SENDFILE, PATH_BUFFERS, PATH_COLD };

/* Every memory, identical to the store, through the server started with
 * extra (plus the HTTP port for its counters), sent the way `path` says. */
static void identical_landed(const char *const *extra, int path, int landing) {
  const char *args[8] = {"--http", "127.0.0.1:0"};
  int na = 2;
  for (int i = 0; extra && extra[i] && na < 7; i++) args[na++] = extra[i];
  args[na] = NULL;
  ct_server srv;
  ct_server_start(&srv, &S, args);
  m3_client *c = ct_connect(&srv, NULL);
  got g = {0};
  if (landing) g.land = land_bufs();
  if (landing == 2) g.misalign = 1; /* refused: the client's own buffer */
  if (path == PATH_COLD) drop_cache();
  fetch_all(c, &g, path == PATH_COLD ? 1 : 3);
  size_t want = path == PATH_COLD ? N : 3 * N;
  assert_int_equal(g.n, want);
  assert_int_equal(g.ok, want);
  assert_int_equal(g.mismatch, 0);
  if (landing) assert_int_equal(g.asked, want);
  assert_int_equal(g.landed, landing == 1 ? want : 0);
  land_free(g.land);
  double sent = ct_metric(&srv, "m3_sendfile_bytes_total");
  double cold = ct_metric(&srv, "m3_sendfile_cold_batches_total");
  print_message("sendfile bytes %.0f, cold batches %.0f\n", sent, cold);
  if (path == PATH_SENDFILE && !(sent >= (double)want * S.mem_len * 0.9 && cold == 0))
    fail_msg("sendfile path: %.0f sendfile bytes of %zu memories, %.0f cold batches", sent, want,
             cold);
  if (path == PATH_BUFFERS && !(sent == 0 && cold == 0))
    fail_msg("--no-sendfile: %.0f sendfile bytes, %.0f cold batches", sent, cold);
  if (path == PATH_COLD && !(cold >= 1 && sent < (double)want * S.mem_len))
    fail_msg("a cold store: %.0f cold batches, %.0f of %zu bytes by sendfile", cold, sent,
             want * (size_t)S.mem_len);
  m3_client_close(c);
  int st = ct_server_stop(&srv);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("m3-server exit %d", st);
}

static void identical(const char *const *extra, int path) { identical_landed(extra, path, 0); }

static void test_identical_sendfile(void **state) {
  identical(NULL, PATH_SENDFILE); /* warms the page cache first: the store was just written */
  identical(NULL, PATH_SENDFILE);
}

static void test_identical_verified(void **state) {
  const char *extra[] = {"--no-sendfile", NULL};
  identical(extra, PATH_BUFFERS);
}

static void test_identical_cold(void **state) { identical(NULL, PATH_COLD); }

static void test_identical_direct(void **state) {
  const char *extra[] = {"--direct", NULL};
  identical(extra, PATH_BUFFERS);
}

/* The receive path: landed in the caller's buffers, on both server paths. */
static void test_landed_in_place(void **state) {
  const char *buffers[] = {"--no-sendfile", NULL};
  identical_landed(NULL, PATH_SENDFILE, 1);
  identical_landed(buffers, PATH_BUFFERS, 1);
  identical_landed(NULL, PATH_SENDFILE, 2);
}

/* Slow readers and cancels, then the descriptors are as before. */
static void slow_and_cancel(const char *const *extra) {
  ct_server srv;
  ct_server_start(&srv, &S, extra);
  m3_client *c = ct_connect(&srv, NULL);
  got warm = {0};
  fetch_all(c, &warm, 1);
  int fds0 = count_fds(srv.child.pid);
  /* 12 MB read at a trickle for a while: the socket fills, the server's
   * sends wait on it; then the call is cancelled mid-stream. */
  got slow = {.slow_us = 2000, .stop_at = 400};
  fetch_all(c, &slow, 1 + 12 * 1000000 / (N * S.mem_len));
  assert_int_equal(slow.n, 400);
  assert_int_equal(slow.mismatch, 0);
  /* Cancelled at once, and a connection closed with its answers unread. */
  for (int i = 0; i < 5; i++) {
    got quick = {.stop_at = 1};
    fetch_all(c, &quick, 2);
  }
  m3_client *c2 = ct_connect(&srv, NULL);
  got stalled = {.slow_us = 5000, .stop_at = 50};
  fetch_all(c2, &stalled, 4);
  m3_client_close(c2);
  /* The connection still serves. */
  got after = {0};
  fetch_all(c, &after, 1);
  assert_int_equal(after.ok, N);
  assert_int_equal(after.mismatch, 0);
  m3_client_close(c);
  int fds = 0;
  for (int i = 0; i < 100; i++) { /* the closed connections' descriptors go */
    fds = count_fds(srv.child.pid);
    if (fds <= fds0 - 1) break;
    usleep(20000);
  }
  if (fds > fds0 - 1) fail_msg("server descriptors: %d before, %d after (client closed)", fds0, fds);
  int st = ct_server_stop(&srv);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("m3-server exit %d", st);
}

static void test_slow_and_cancel_leave_nothing(void **state) {
  const char *sendfile[] = {"--sendfile", NULL};
  slow_and_cancel(sendfile);
}

/* The same on the buffer path (read buffers held by writes in flight). */
static void test_slow_and_cancel_buffers(void **state) {
  const char *buffers[] = {"--no-sendfile", NULL};
  slow_and_cancel(buffers);
}


/* Flip one byte of FLIPPED's codes in its segment file. */
static void flip_byte(void) {
  m3_store_options o = {0};
  o.read_only = 1;
  m3_store *st;
  if (m3_store_open(S.store, &o, &st) != 0) fail_msg("open %s: %s", S.store, m3_errmsg());
  m3_location loc;
  if (m3_store_locate(st, FLIPPED, &loc) != 0) fail_msg("locate: %s", m3_errmsg());
  m3_store_close(st);
  char path[700];
  snprintf(path, sizeof path, "%s/seg-%06u.m3s", S.store, loc.segment);
  int fd = open(path, O_RDWR);
  if (fd < 0) fail_msg("open %s", path);
  off_t at = (off_t)loc.offset + loc.mem_len - 3; /* in the codes */
  uint8_t b;
  assert_int_equal(pread(fd, &b, 1, at), 1);
  b ^= 0x10;
  assert_int_equal(pwrite(fd, &b, 1, at), 1);
  close(fd);
}

static void flipped(const char *const *extra, int landing) {
  ct_server srv;
  ct_server_start(&srv, &S, extra);
  m3_client *c = ct_connect(&srv, NULL);
  got g = {0};
  if (landing) g.land = land_bufs();
  fetch_all(c, &g, 1);
  assert_int_equal(g.n, N);
  assert_int_equal(g.ok, N - 1);
  assert_int_equal(g.mismatch, 0);
  assert_int_equal(g.landed, landing ? N - 1 : 0);
  land_free(g.land);
  assert_int_equal(g.bad, 1);
  assert_int_equal(g.bad_id, FLIPPED);
  assert_int_equal(g.bad_grpc, M3__STATUS_CODE__DATA_LOSS);
  m3_client_close(c);
  int st = ct_server_stop(&srv);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("m3-server exit %d", st);
}

static void test_flipped_byte(void **state) {
  flip_byte();
  const char *buffers[] = {"--no-sendfile", NULL};
  flipped(NULL, 0);
  flipped(buffers, 0);
  flipped(NULL, 1); /* received in place: caught as it landed */
  flipped(buffers, 1);
}

int main(void) {
  ct_store_make(&S, N, DIM);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_identical_sendfile),
      cmocka_unit_test(test_identical_verified),
      cmocka_unit_test(test_identical_cold),
      cmocka_unit_test(test_identical_direct),
      cmocka_unit_test(test_landed_in_place),
      cmocka_unit_test(test_slow_and_cancel_leave_nothing),
      cmocka_unit_test(test_slow_and_cancel_buffers),
      cmocka_unit_test(test_flipped_byte), /* last: it damages the store */
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  ct_store_free(&S);
  return rc;
}
