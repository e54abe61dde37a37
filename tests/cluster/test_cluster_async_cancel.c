/*
 * Cancelling async ops and closing a cluster with ops outstanding, on a
 * 2-shard x 2-replica local cluster:
 * - a cancel from the op's own memory callback: no memory callback after
 *   it, done gets M3_ECANCELED with status CANCELLED (1);
 * - a memory callback returning non-zero: done gets that value;
 * - dispatch mode, cancel before dispatching: every queued memory is
 *   dropped, done says cancelled;
 * - close with 48 ops in flight (callback mode) and with 16 ops never
 *   dispatched (dispatch mode): every op's done runs exactly once before
 *   close returns, none after, no memory after its done; in dispatch mode
 *   the done callbacks run on the closing thread, cancelled, and an op
 *   submitted from them is refused with M3_EBUSY; op handles freed after
 *   close (ASan checks the lifetimes);
 * - refused submissions (bad arguments, wrong mode) call nothing back.
 */
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "cluster/cluster_testlib.h"

#define DIM 32

static ct_store st;
static cl_cluster cc;
static pthread_t main_thread;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

typedef struct op_ctx {
  m3_cluster *cl;
  m3_cluster_op *op;
  int cancel_at;  /* cancel at this memory (1-based); 0: never */
  int stop_with;  /* return this at the first memory; 0: never */
  int mems, done, late, rc, status, done_on_main;
  int resubmit_rc; /* what a submission from done returned (dispatch close) */
  char msg[300];
} op_ctx;

static int on_mem(void *ud, const m3_client_memory *m) {
  (void)m;
  op_ctx *c = ud;
  pthread_mutex_lock(&mu);
  if (c->done) c->late++;
  int n = ++c->mems;
  pthread_mutex_unlock(&mu);
  if (c->cancel_at && n == c->cancel_at) m3_cluster_op_cancel(c->op);
  return c->stop_with;
}

static int resubmit;

static void on_done(void *ud, const m3_cluster_result *res) {
  op_ctx *c = ud;
  pthread_mutex_lock(&mu);
  c->done++;
  c->rc = res->rc;
  c->status = res->status;
  c->done_on_main = pthread_equal(pthread_self(), main_thread);
  snprintf(c->msg, sizeof c->msg, "%s", res->msg);
  pthread_mutex_unlock(&mu);
  if (resubmit) {
    uint64_t id = 1;
    c->resubmit_rc = m3_cluster_fetch_async(c->cl, &id, 1, 0, on_mem, on_done, c, NULL);
  }
}

static int done_of(op_ctx *c) {
  pthread_mutex_lock(&mu);
  int d = c->done;
  pthread_mutex_unlock(&mu);
  return d;
}

static void wait_op(op_ctx *c) {
  long long end = m3t_now_ms() + 30000;
  while (!done_of(c)) {
    if (m3t_now_ms() > end) fail_msg("op not done after 30 s");
    usleep(1000);
  }
}

static m3_client_query qs[8];
static float qv[8 * DIM];

static int setup(void **state) {
  (void)state;
  main_thread = pthread_self();
  cl_store_up(&cc, &st, 600, DIM, 2, 2);
  uint64_t rng = 17;
  for (int j = 0; j < 8; j++) {
    m3t_rand_unit(&rng, qv + j * DIM, DIM);
    qs[j] = (m3_client_query){.vector = qv + j * DIM, .dim = DIM};
  }
  return 0;
}

static int teardown(void **state) {
  (void)state;
  cl_store_down(&cc, &st);
  return 0;
}

static m3_cluster *open_mode(int completion) {
  m3_cluster_options o;
  m3_cluster_options_init(&o);
  o.completion = completion;
  return cl_open(&cc, &o);
}

static void test_cancel_from_the_memory_callback(void **state) {
  (void)state;
  m3_cluster *cl = open_mode(M3_CLUSTER_COMPLETION_CALLBACK);
  op_ctx c = {.cl = cl, .cancel_at = 1};
  CHECK_OK(m3_cluster_retrieve_async(cl, qs, 8, 5, 0, on_mem, on_done, &c, &c.op));
  wait_op(&c);
  CHECK_U64(c.mems, 1); /* 40 memories were owed; none after the cancel */
  CHECK_RC(c.rc, M3_ECANCELED);
  CHECK_U64(c.status, 1);
  CHECK_CONTAINS(c.msg, "cancelled");
  CHECK_U64(c.done, 1);
  m3_cluster_op_cancel(c.op); /* again, after done: nothing */
  m3_cluster_op_free(c.op);

  /* A callback's non-zero return stops the op with that value. */
  op_ctx s = {.cl = cl, .stop_with = 7};
  CHECK_OK(m3_cluster_retrieve_async(cl, qs, 8, 5, 0, on_mem, on_done, &s, NULL));
  wait_op(&s);
  CHECK_U64(s.mems, 1);
  CHECK_U64(s.rc, 7);
  CHECK_U64(s.status, 1);
  CHECK_CONTAINS(s.msg, "stopped by the callback");

  /* And the same cluster still answers in full. */
  op_ctx f = {.cl = cl};
  CHECK_OK(m3_cluster_retrieve_async(cl, qs, 8, 5, 0, on_mem, on_done, &f, NULL));
  wait_op(&f);
  if (f.rc) fail_msg("%s: %s", m3_err_name(f.rc), f.msg);
  CHECK_U64(f.mems, 40);
  m3_cluster_close(cl);
}

static void test_dispatch_cancel_drops_queued_memories(void **state) {
  (void)state;
  m3_cluster *cl = open_mode(M3_CLUSTER_COMPLETION_DISPATCH);
  int fd = m3_cluster_event_fd(cl);
  if (fd < 0) fail_msg("m3_cluster_event_fd: %s", m3_errmsg());
  op_ctx c = {.cl = cl};
  CHECK_OK(m3_cluster_retrieve_async(cl, qs, 8, 5, 1, on_mem, on_done, &c, &c.op));
  struct pollfd p = {.fd = fd, .events = POLLIN};
  if (poll(&p, 1, 10000) != 1) fail_msg("the event fd did not become readable in 10 s");
  m3_cluster_op_cancel(c.op);
  long long end = m3t_now_ms() + 30000;
  while (!c.done) {
    if (m3t_now_ms() > end) fail_msg("no done in 30 s");
    if (poll(&p, 1, 100) == 1) {
      int n = m3_cluster_dispatch(cl);
      if (n < 0) fail_msg("m3_cluster_dispatch: %s", m3_errmsg());
    }
  }
  CHECK_U64(c.mems, 0);
  CHECK_RC(c.rc, M3_ECANCELED);
  CHECK_U64(c.status, 1);
  CHECK_U64(c.done_on_main, 1);
  m3_cluster_op_free(c.op);
  /* Nothing left: dispatch runs nothing, the fd is not readable. */
  CHECK_U64(m3_cluster_dispatch(cl), 0);
  CHECK_U64(poll(&p, 1, 0), 0);
  m3_cluster_close(cl);
}

static void test_close_with_ops_in_flight_callback_mode(void **state) {
  (void)state;
  enum { N = 48 };
  m3_cluster_options o;
  m3_cluster_options_init(&o);
  o.threads = 2;
  m3_cluster *cl = cl_open(&cc, &o);
  static op_ctx c[N];
  memset(c, 0, sizeof c);
  uint64_t ids[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  for (int i = 0; i < N; i++) {
    c[i].cl = cl;
    if (i % 3 == 2)
      CHECK_OK(m3_cluster_fetch_async(cl, ids, 10, 1, on_mem, on_done, &c[i], &c[i].op));
    else
      CHECK_OK(m3_cluster_retrieve_async(cl, qs, 1 + i % 8, 5, 0, on_mem, on_done, &c[i],
                                         i % 2 ? &c[i].op : NULL));
  }
  m3_cluster_close(cl);
  int cancelled = 0, complete = 0;
  for (int i = 0; i < N; i++) {
    if (c[i].done != 1) fail_msg("op %d: done ran %d times by the end of close", i, c[i].done);
    CHECK_U64(c[i].late, 0);
    if (c[i].rc == 0) complete++;
    else if (c[i].rc == M3_ECANCELED && c[i].status == 1) cancelled++;
    else fail_msg("op %d: %s (status %d): %s", i, m3_err_name(c[i].rc), c[i].status, c[i].msg);
    m3_cluster_op_free(c[i].op); /* after close: still fine */
  }
  print_message("close with %d ops in flight: %d complete, %d cancelled\n", N, complete,
                cancelled);
  if (cancelled == 0) fail_msg("close cancelled none of %d ops in flight", N);
}

static void test_close_with_ops_never_dispatched(void **state) {
  (void)state;
  enum { N = 16 };
  m3_cluster *cl = open_mode(M3_CLUSTER_COMPLETION_DISPATCH);
  static op_ctx c[N];
  memset(c, 0, sizeof c);
  for (int i = 0; i < N; i++) {
    c[i].cl = cl;
    CHECK_OK(m3_cluster_retrieve_async(cl, qs, 4, 5, 1, on_mem, on_done, &c[i],
                                       i % 2 ? &c[i].op : NULL));
  }
  /* Let most of them finish on the workers, memories queued. */
  struct pollfd p = {.fd = m3_cluster_event_fd(cl), .events = POLLIN};
  if (poll(&p, 1, 10000) != 1) fail_msg("the event fd did not become readable in 10 s");
  usleep(200000);
  resubmit = 1;
  m3_cluster_close(cl);
  resubmit = 0;
  for (int i = 0; i < N; i++) {
    CHECK_U64(c[i].done, 1);
    CHECK_U64(c[i].mems, 0); /* queued memories are dropped */
    CHECK_RC(c[i].rc, M3_ECANCELED);
    CHECK_U64(c[i].status, 1);
    CHECK_U64(c[i].done_on_main, 1);
    CHECK_RC(c[i].resubmit_rc, M3_EBUSY);
    m3_cluster_op_free(c[i].op);
  }
}

static void test_refused_submissions_call_nothing(void **state) {
  (void)state;
  m3_cluster *cl = open_mode(M3_CLUSTER_COMPLETION_CALLBACK);
  op_ctx c = {.cl = cl};
  m3_cluster_op *op = (m3_cluster_op *)&c; /* must be reset to NULL */
  CHECK_RC(m3_cluster_retrieve_async(cl, qs, 0, 5, 0, on_mem, on_done, &c, &op), M3_EINVAL);
  CHECK_U64(op == NULL, 1);
  CHECK_RC(m3_cluster_retrieve_async(cl, qs, 2, 0, 0, on_mem, on_done, &c, NULL), M3_EINVAL);
  CHECK_RC(m3_cluster_retrieve_async(cl, qs, 2, 5, 0, NULL, on_done, &c, NULL), M3_EINVAL);
  CHECK_RC(m3_cluster_fetch_async(cl, NULL, 3, 0, on_mem, on_done, &c, NULL), M3_EINVAL);
  CHECK_RC(m3_cluster_search_async(cl, NULL, 1, 5, on_done, &c, NULL), M3_EINVAL);
  CHECK_RC(m3_cluster_event_fd(cl), M3_EINVAL);
  CHECK_CONTAINS(m3_errmsg(), "completion");
  CHECK_RC(m3_cluster_dispatch(cl), M3_EINVAL);
  m3_cluster_close(cl);
  CHECK_U64(c.done, 0);
  CHECK_U64(c.mems, 0);
  m3_cluster_options o;
  m3_cluster_options_init(&o);
  o.completion = 5;
  m3_cluster_map *map;
  CHECK_OK(m3_cluster_map_load(cc.map, &map));
  CHECK_RC(m3_cluster_open(map, &o, &cl), M3_EINVAL);
  CHECK_CONTAINS(m3_errmsg(), "completion 5");
  o.completion = 0;
  o.threads = -1;
  CHECK_RC(m3_cluster_open(map, &o, &cl), M3_EINVAL);
  CHECK_CONTAINS(m3_errmsg(), "threads -1");
  m3_cluster_map_free(map);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cancel_from_the_memory_callback),
      cmocka_unit_test(test_dispatch_cancel_drops_queued_memories),
      cmocka_unit_test(test_close_with_ops_in_flight_callback_mode),
      cmocka_unit_test(test_close_with_ops_never_dispatched),
      cmocka_unit_test(test_refused_submissions_call_nothing),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
