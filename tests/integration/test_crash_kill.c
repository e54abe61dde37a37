/*
 * kill -9 of a writer at random points, then reopen + verify.
 *
 * A crash_writer child puts deterministic Memory3-shaped memories and deletes
 * some, announcing each step before it starts and acknowledging it after the
 * store returned 0. The parent kills it with SIGKILL after a random delay
 * (during store creation, during writes, around segment rolls: segments are
 * small so that rolls are frequent), reopens the store in-process and checks
 * that it opens, verifies clean, that every acknowledged chunk is present
 * with exactly its bytes, every acknowledged delete absent, and that any
 * other present chunk is whole. The next iteration resumes writing into the
 * same store. Iterations scale with M3_SOAK_SCALE.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "unit/testutil.h"

enum { ST_UNKNOWN = 0, ST_PRESENT, ST_DELETED, ST_MAYBE_DELETED };

#define SEGMENT_BYTES 262144 /* ~6 memories of 42.5 KB per segment */

typedef struct track {
  uint8_t *st;          /* per chunk id */
  size_t cap;
  uint64_t max_acked;   /* highest acknowledged put id + 1 */
  uint64_t max_intent;  /* highest announced put id + 1 */
  int created;          /* a writer printed "open" for this store */
  uint64_t acked_puts, acked_dels;
} track;

static void grow(track *t, uint64_t id) {
  if (id < t->cap) return;
  size_t cap = t->cap ? t->cap : 1024;
  while (cap <= id) cap *= 2;
  t->st = realloc(t->st, cap);
  memset(t->st + t->cap, 0, cap - t->cap);
  t->cap = cap;
}

/* Apply the writer's complete lines (a trailing partial line is ignored). */
static void apply(track *t, const char *out) {
  for (const char *p = out; *p;) {
    const char *nl = strchr(p, '\n');
    if (nl == NULL) break;
    char line[512];
    size_t n = (size_t)(nl - p) < sizeof line - 1 ? (size_t)(nl - p) : sizeof line - 1;
    memcpy(line, p, n);
    line[n] = '\0';
    p = nl + 1;
    unsigned long long a, b;
    if (!strcmp(line, "open")) {
      t->created = 1;
    } else if (sscanf(line, "P %llu %llu", &a, &b) == 2) {
      if (a + b > t->max_intent) t->max_intent = a + b;
    } else if (sscanf(line, "p %llu %llu", &a, &b) == 2) {
      grow(t, a + b);
      for (uint64_t id = a; id < a + b; id++) t->st[id] = ST_PRESENT;
      if (a + b > t->max_acked) t->max_acked = a + b;
      t->acked_puts += b;
    } else if (line[0] == 'D' || line[0] == 'd') {
      char *q = line + 1;
      for (;;) {
        char *end;
        unsigned long long id = strtoull(q, &end, 10);
        if (end == q) break;
        q = end;
        grow(t, id);
        if (line[0] == 'd') {
          t->st[id] = ST_DELETED;
          t->acked_dels++;
        } else if (t->st[id] != ST_DELETED) {
          t->st[id] = ST_MAYBE_DELETED;
        }
      }
    } else if (!strncmp(line, "err", 3)) {
      fail_msg("writer failed: %s", line);
    }
  }
}

typedef struct seen {
  uint64_t n, max_id;
} seen;

static int count_fn(void *ud, uint64_t id, const m3_location *loc) {
  seen *s = ud;
  (void)loc;
  s->n++;
  if (id + 1 > s->max_id) s->max_id = id + 1;
  return 0;
}

static void on_problem(void *ud, const m3_problem *p) {
  (void)ud;
  print_error("verify problem: chunk %llu segment %u offset %llu: %s: %s\n",
              (unsigned long long)p->chunk_id, p->segment, (unsigned long long)p->offset,
              m3_err_name(p->err), p->detail);
}

/* Reopen after the kill and check everything the writer acknowledged. */
static void check_store(const char *dir, track *t, int iter) {
  m3_layout l = tu_layout_m3_14();
  m3_store_options o;
  /* before the writer got the store open, it may not exist yet */
  tu_opts(&o, &l, !t->created, SEGMENT_BYTES);
  m3_store *s = NULL;
  int rc = m3_store_open(dir, &o, &s);
  if (rc) fail_msg("iteration %d: reopen after kill: %s: %s", iter, m3_err_name(rc), m3_errmsg());
  uint64_t checked = 0;
  rc = m3_store_verify(s, on_problem, NULL, &checked);
  if (rc) fail_msg("iteration %d: verify: %s: %s", iter, m3_err_name(rc), m3_errmsg());
  m3_store_stats st;
  CHECK_OK(m3_store_stats_get(s, &st));
  CHECK_U64(checked, st.records);
  seen sn = {0, 0};
  CHECK_OK(m3_store_iterate(s, count_fn, &sn));
  CHECK_U64(sn.n, st.records);
  if (sn.max_id > t->max_intent)
    fail_msg("iteration %d: chunk %llu present but never written (max %llu)", iter,
             (unsigned long long)sn.max_id - 1, (unsigned long long)t->max_intent);
  grow(t, t->max_intent);
  uint64_t present = 0;
  for (uint64_t id = 0; id < t->max_intent; id++) {
    int c = m3_store_contains(s, id);
    if (c < 0) fail_msg("contains %llu: %s", (unsigned long long)id, m3_err_name(c));
    if (t->st[id] == ST_PRESENT && c != 1)
      fail_msg("iteration %d: acknowledged chunk %llu is missing", iter, (unsigned long long)id);
    if (t->st[id] == ST_DELETED && c != 0)
      fail_msg("iteration %d: acknowledged delete of %llu, but it is present", iter,
               (unsigned long long)id);
    if (c == 1) {
      tu_check_fetch(s, id, 0); /* exact bytes and text, acknowledged or not */
      present++;
    }
  }
  CHECK_U64(present, st.records);
  m3_store_close(s);
}

static char *g_root; /* removed by teardown, also when the test fails */

static int teardown(void **state) {
  (void)state;
  m3t_rmrf(g_root);
  free(g_root);
  g_root = NULL;
  return 0;
}

static void test_kill_loop(void **state) {
  (void)state;
  int scale = tu_scale();
  int iters = 40 * scale;
  const char *seed_env = getenv("M3_TEST_SEED");
  uint64_t rng = seed_env ? strtoull(seed_env, NULL, 10) : (uint64_t)time(NULL) ^ (uint64_t)getpid();
  print_message("seed %llu (set M3_TEST_SEED to repeat), %d iterations\n",
                (unsigned long long)rng, iters);
  char writer[4096];
  m3t_bin_path(writer, sizeof writer, "crash_writer");
  if (access(writer, X_OK) != 0) fail_msg("%s: not found (M3_BIN_DIR)", writer);

  char *root = g_root = m3t_mkdtemp("kill");
  char dir[4200];
  track t;
  memset(&t, 0, sizeof t);
  int epoch = -1, before_open = 0, killed = 0;
  long long t0 = m3t_now_ms();
  for (int i = 0; i < iters; i++) {
    if (i % 8 == 0) { /* a fresh store: kills land in its creation too */
      epoch++;
      free(t.st);
      memset(&t, 0, sizeof t);
      snprintf(dir, sizeof dir, "%s/store%d", root, epoch);
    }
    long long delay;
    uint64_t r = m3t_rand(&rng);
    if (i % 8 == 0 || r % 5 == 0)
      delay = (long long)(m3t_rand(&rng) % 40); /* creation / open / roll-forward */
    else
      delay = 20 + (long long)(m3t_rand(&rng) % 200);
    char start[32], seed[32], segb[32];
    snprintf(start, sizeof start, "%llu", (unsigned long long)t.max_acked);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)m3t_rand(&rng));
    snprintf(segb, sizeof segb, "%d", SEGMENT_BYTES);
    char *argv[] = {writer, dir, start, seed, segb, NULL};
    tu_child c;
    tu_child_start(&c, argv, NULL);
    int eof = tu_child_read_until(&c, m3t_now_ms() + delay);
    int status = tu_child_finish(&c, 1);
    if (eof && !(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL))
      fail_msg("iteration %d: writer exited before the kill (status %#x): %s", i, status, c.out);
    killed += WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    int had_open = t.created;
    apply(&t, c.out);
    before_open += !t.created || (had_open && strstr(c.out, "open\n") == NULL);
    tu_child_free(&c);
    check_store(dir, &t, i);
    t.created = 1; /* check_store created it if the writer had not */
  }
  print_message("%d kills (%d before the writer had the store open) in %lld ms; last store: "
                "%llu acked puts, %llu acked deletes\n",
                killed, before_open, m3t_now_ms() - t0, (unsigned long long)t.acked_puts,
                (unsigned long long)t.acked_dels);
  assert_true(killed >= iters);
  free(t.st);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_kill_loop, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
