/*
 * kill -9 of a bulk ingest at random points, then reopen, verify, resume.
 *
 * A bulk_writer child ingests ids 0..COUNT-1 and acknowledges checkpoints
 * ("c N": ids below N durable). The parent kills it after a random delay
 * (while creating, writing, syncing, ingesting an SST, rolling segments),
 * reopens the store in-process and checks that it opens and verifies clean,
 * that the location table equals the catalog, that every acknowledged id is
 * present with exactly its bytes, that any other present id is whole, and
 * that no id outside 0..COUNT-1 appears, and that no empty segment is
 * left. The next run resumes (re-adds from
 * 0; stored ids are skipped). The last run is left to finish: then every id
 * is present and the store holds no duplicate records (no dead bytes).
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "unit/testutil.h"

#define COUNT 20000
#define SEGMENT_BYTES (2u << 20) /* ~4000 records of 512 B: rolls during a run */
#define CHECKPOINT "3000"

static uint64_t acked(const char *out, uint64_t prev) {
  for (const char *p = out; (p = strstr(p, "c ")) != NULL; p += 2) {
    if (p != out && p[-1] != '\n') continue;
    const char *nl = strchr(p, '\n');
    if (nl == NULL) break; /* a partial line is no acknowledgement */
    uint64_t n = strtoull(p + 2, NULL, 10);
    if (n > prev) prev = n;
  }
  return prev;
}

static void on_problem(void *ud, const m3_problem *p) {
  (void)ud;
  print_error("verify problem: chunk %llu segment %u offset %llu: %s: %s\n",
              (unsigned long long)p->chunk_id, p->segment, (unsigned long long)p->offset,
              m3_err_name(p->err), p->detail);
}

static int max_fn(void *ud, uint64_t id, const m3_location *loc) {
  (void)loc;
  if (id + 1 > *(uint64_t *)ud) *(uint64_t *)ud = id + 1;
  return 0;
}

static void check_store(const char *dir, uint64_t durable, int iter, int finished) {
  m3_layout l = tu_layout_small();
  m3_store_options o;
  tu_opts(&o, &l, 1, SEGMENT_BYTES);
  m3_store *s = NULL;
  int rc = m3_store_open(dir, &o, &s);
  if (rc) fail_msg("iteration %d: reopen after kill: %s: %s", iter, m3_err_name(rc), m3_errmsg());
  uint64_t checked = 0, max = 0;
  rc = m3_store_verify(s, on_problem, NULL, &checked);
  if (rc) fail_msg("iteration %d: verify: %s: %s", iter, m3_err_name(rc), m3_errmsg());
  CHECK_OK(m3_store_check_locations(s, NULL));
  /* A kill right after a roll left a segment with nothing in it: the open
   * removed it. */
  if (tu_count_segment_files(dir, 512) != 0)
    fail_msg("iteration %d: a segment holding only its header is left after the reopen", iter);
  CHECK_OK(m3_store_iterate(s, max_fn, &max));
  if (max > COUNT) fail_msg("iteration %d: chunk %llu was never written", iter, (unsigned long long)max - 1);
  uint64_t present = 0;
  for (uint64_t id = 0; id < COUNT; id++) {
    int c = m3_store_contains(s, id);
    if (id < durable && c != 1)
      fail_msg("iteration %d: chunk %llu acknowledged durable (c %llu) but missing", iter,
               (unsigned long long)id, (unsigned long long)durable);
    if (c == 1) {
      if (id % 5 == 0 || id >= durable) tu_check_fetch(s, id, 0);
      present++;
    }
  }
  m3_store_stats st;
  CHECK_OK(m3_store_stats_get(s, &st));
  CHECK_U64(present, st.records);
  CHECK_U64(checked, st.records);
  if (finished) {
    CHECK_U64(st.records, COUNT);
    CHECK_U64(st.dead_bytes, 0); /* resumes wrote nothing twice */
  }
  m3_store_close(s);
}

static char *g_root;

static int teardown(void **state) {
  (void)state;
  m3t_rmrf(g_root);
  free(g_root);
  return 0;
}

static void test_bulk_kill_loop(void **state) {
  (void)state;
  int iters = 12 * tu_scale();
  const char *seed_env = getenv("M3_TEST_SEED");
  uint64_t rng = seed_env ? strtoull(seed_env, NULL, 10) : (uint64_t)time(NULL) ^ (uint64_t)getpid();
  print_message("seed %llu (set M3_TEST_SEED to repeat), %d iterations\n",
                (unsigned long long)rng, iters);
  char writer[4096];
  m3t_bin_path(writer, sizeof writer, "bulk_writer");
  if (access(writer, X_OK) != 0) fail_msg("%s: not found (M3_BIN_DIR)", writer);
  g_root = m3t_mkdtemp("bulkkill");
  char dir[4200];
  snprintf(dir, sizeof dir, "%s/store", g_root);
  uint64_t durable = 0;
  int killed = 0, runs = 0;
  /* Kill after a random delay below max_delay ms. A resumed run has less
   * left to write, and a quiet machine writes fast, so a run that finished
   * before its kill halves max_delay; runs go on until iters kills landed
   * (at most 4 * iters runs), then one last run finishes the ingest. */
  long long max_delay = 400;
  for (int i = 0;; i++) {
    int last = killed >= iters || i >= 4 * iters;
    char count[32], seed[32], segb[32];
    snprintf(count, sizeof count, "%d", COUNT);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)m3t_rand(&rng));
    snprintf(segb, sizeof segb, "%u", SEGMENT_BYTES);
    char *argv[] = {writer, dir, count, seed, segb, CHECKPOINT, NULL};
    tu_child c;
    tu_child_start(&c, argv, NULL);
    long long delay = last ? 120000 : (long long)(m3t_rand(&rng) % (uint64_t)max_delay);
    int eof = tu_child_read_until(&c, m3t_now_ms() + delay);
    int status = tu_child_finish(&c, !last);
    if (strstr(c.out, "\nerr") || !strncmp(c.out, "err", 3)) fail_msg("writer failed: %s", c.out);
    int was_killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    killed += was_killed;
    runs++;
    if (!was_killed && max_delay > 2) max_delay /= 2;
    if (last && !(eof && WIFEXITED(status) && WEXITSTATUS(status) == 0))
      fail_msg("the last run did not finish (status %#x): %s", status, c.out);
    durable = acked(c.out, durable);
    tu_child_free(&c);
    check_store(dir, durable, i, last);
    if (last) break;
  }
  print_message("%d kills in %d runs; all %d ids durable and verified after the last run\n",
                killed, runs, COUNT);
  assert_true(killed >= iters / 2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_bulk_kill_loop, teardown)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
