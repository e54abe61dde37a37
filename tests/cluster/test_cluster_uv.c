/*
 * Dispatch mode driven by a real libuv loop, as docs/CLIENT.md shows it: a
 * uv_poll_t on m3_cluster_event_fd() calls m3_cluster_dispatch(), and every
 * memory and done callback runs on the loop's thread. Three generations of
 * rounds are pipelined: 8 retrieves, 2 fetches and 2 searches in flight at
 * once, each done submitting its successor from the loop, until 36 ops
 * completed; each op's results equal the sync call's for the same request
 * (ids, scores, record bytes, texts; the memories are copies, their parsed
 * records pointing into the copied bytes). The loop ends on its own when the
 * last op is done (the poll handle closed), under a 60 s guard timer.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <uv.h>

#include "cluster/cluster_testlib.h"

#define DIM 32
#define GENERATIONS 3
#define PER_GEN 12

static ct_store st;
static cl_cluster cc;
static m3_cluster *cl;
static pthread_t loop_thread;
static uv_loop_t loop;
static uv_poll_t poller;
static uv_timer_t guard;

typedef struct op_ctx {
  int kind;       /* 0 retrieve, 1 fetch, 2 search */
  int gen, slot;
  float v[8 * DIM];
  size_t nq;
  uint32_t k;
  uint64_t ids[6];
  cl_round want, got;
  uint64_t sids[8 * 5];
  float sscores[8 * 5];
  uint32_t scounts[8];
  int rc, done, off_loop;
  char msg[300];
} op_ctx;

static op_ctx ops[GENERATIONS][PER_GEN];
static int n_done, n_dispatches, n_callbacks;
static uint64_t rng = 4242;

static int on_mem(void *ud, const m3_client_memory *m) {
  op_ctx *c = ud;
  if (!pthread_equal(pthread_self(), loop_thread)) c->off_loop++;
  return cl_round_on_mem(&c->got, m);
}

static void submit(int gen, int slot);

static void on_done(void *ud, const m3_cluster_result *res) {
  op_ctx *c = ud;
  if (!pthread_equal(pthread_self(), loop_thread)) c->off_loop++;
  c->rc = res->rc;
  c->done++;
  snprintf(c->msg, sizeof c->msg, "%s", res->msg);
  if (c->kind == 2 && res->rc == 0) {
    memcpy(c->sids, res->ids, res->nq * res->k * sizeof *c->sids);
    memcpy(c->sscores, res->scores, res->nq * res->k * sizeof *c->sscores);
    memcpy(c->scounts, res->counts, res->nq * sizeof *c->scounts);
  }
  if (++n_done == GENERATIONS * PER_GEN) {
    uv_poll_stop(&poller);
    uv_close((uv_handle_t *)&poller, NULL);
    uv_timer_stop(&guard);
    uv_close((uv_handle_t *)&guard, NULL);
  } else if (c->gen + 1 < GENERATIONS) {
    submit(c->gen + 1, c->slot); /* the next round, from the loop */
  }
}

static void on_readable(uv_poll_t *h, int status, int events) {
  (void)h;
  (void)events;
  if (status < 0) fail_msg("uv_poll: %s", uv_strerror(status));
  int n = m3_cluster_dispatch(cl);
  if (n < 0) fail_msg("m3_cluster_dispatch: %s", m3_errmsg());
  n_dispatches++;
  n_callbacks += n;
}

static void on_guard(uv_timer_t *t) {
  (void)t;
  fail_msg("the loop ran 60 s: %d of %d ops done", n_done, GENERATIONS * PER_GEN);
}

/* Build op (gen, slot), compute its sync answer, submit it async. */
static void submit(int gen, int slot) {
  op_ctx *c = &ops[gen][slot];
  c->gen = gen;
  c->slot = slot;
  c->kind = slot < 8 ? 0 : slot < 10 ? 1 : 2;
  c->nq = 1 + (size_t)(slot + gen) % 8;
  c->k = 5;
  m3_client_query q[8];
  for (size_t j = 0; j < c->nq; j++) {
    m3t_rand_unit(&rng, c->v + j * DIM, DIM);
    q[j] = (m3_client_query){.vector = c->v + j * DIM, .dim = DIM};
  }
  if (c->kind == 0) {
    cl_round_init(&c->want, c->nq, c->k);
    cl_round_init(&c->got, c->nq, c->k);
    CHECK_OK(m3_cluster_retrieve(cl, q, c->nq, c->k, 1, cl_round_on_mem, &c->want));
    CHECK_OK(m3_cluster_retrieve_async(cl, q, c->nq, c->k, 1, on_mem, on_done, c, NULL));
  } else if (c->kind == 1) {
    for (int i = 0; i < 6; i++) c->ids[i] = m3t_rand(&rng) % 650; /* some beyond the 600 */
    cl_round_init(&c->want, 6, 1);
    cl_round_init(&c->got, 6, 1);
    CHECK_OK(m3_cluster_fetch(cl, c->ids, 6, 1, cl_round_on_mem, &c->want));
    CHECK_OK(m3_cluster_fetch_async(cl, c->ids, 6, 1, on_mem, on_done, c, NULL));
  } else {
    cl_round_init(&c->want, c->nq, c->k);
    CHECK_OK(m3_cluster_search(cl, q, c->nq, c->k, c->sids, c->sscores, c->scounts));
    /* want holds the sync answer as hits; got is filled from done */
    for (size_t i = 0; i < c->nq * c->k; i++) {
      c->want.h[i].id = c->sids[i];
      c->want.h[i].score = c->sscores[i];
    }
    memset(c->sids, 0, sizeof c->sids);
    CHECK_OK(m3_cluster_search_async(cl, q, c->nq, c->k, on_done, c, NULL));
  }
}

static void test_libuv_loop_dispatch(void **state) {
  (void)state;
  cl_store_up(&cc, &st, 600, DIM, 2, 2);
  m3_cluster_options o;
  m3_cluster_options_init(&o);
  o.completion = M3_CLUSTER_COMPLETION_DISPATCH;
  cl = cl_open(&cc, &o);
  loop_thread = pthread_self();

  CHECK_OK(uv_loop_init(&loop));
  int fd = m3_cluster_event_fd(cl);
  if (fd < 0) fail_msg("m3_cluster_event_fd: %s", m3_errmsg());
  CHECK_OK(uv_poll_init(&loop, &poller, fd));
  CHECK_OK(uv_poll_start(&poller, UV_READABLE, on_readable));
  CHECK_OK(uv_timer_init(&loop, &guard));
  CHECK_OK(uv_timer_start(&guard, on_guard, 60000, 0));
  for (int s = 0; s < PER_GEN; s++) submit(0, s);
  CHECK_OK(uv_run(&loop, UV_RUN_DEFAULT));
  CHECK_OK(uv_loop_close(&loop));

  CHECK_U64(n_done, GENERATIONS * PER_GEN);
  for (int g = 0; g < GENERATIONS; g++) {
    for (int s = 0; s < PER_GEN; s++) {
      op_ctx *c = &ops[g][s];
      char what[64];
      snprintf(what, sizeof what, "generation %d op %d (kind %d)", g, s, c->kind);
      if (c->rc) fail_msg("%s: %s: %s", what, m3_err_name(c->rc), c->msg);
      CHECK_U64(c->done, 1);
      CHECK_U64(c->off_loop, 0);
      if (c->kind < 2) {
        cl_round_expect_equal(&c->want, &c->got, what);
        cl_round_free(&c->got);
      } else {
        for (size_t i = 0; i < c->nq * c->k; i++)
          if (c->want.h[i].id != c->sids[i] || fabsf(c->want.h[i].score - c->sscores[i]) > 1e-6f)
            fail_msg("%s: search result %zu: chunk %llu (%.7f), want %llu (%.7f)", what, i,
                     (unsigned long long)c->sids[i], (double)c->sscores[i],
                     (unsigned long long)c->want.h[i].id, (double)c->want.h[i].score);
      }
      cl_round_free(&c->want);
    }
  }
  print_message("%d ops through a libuv loop: %d dispatches ran %d callbacks\n", n_done,
                n_dispatches, n_callbacks);
  if (n_callbacks < n_done) fail_msg("dispatch ran %d callbacks for %d ops", n_callbacks, n_done);
  m3_cluster_close(cl);
  cl_store_down(&cc, &st);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_libuv_loop_dispatch),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
