/*
 * The cluster handle's worker pool: a fixed set of threads (options.threads,
 * started by m3_cluster_open, joined by m3_cluster_close) that run tasks
 * posted to one FIFO queue: the shard jobs of every call, hedged attempts,
 * and async operations.
 *
 * No call may deadlock however small the pool: a thread that waits for the
 * tasks it posted first takes back those still queued (m3__task_take) and
 * runs them itself, so a wait only ever waits for tasks that are running,
 * and a running task is network I/O bounded by the call's deadline or
 * waits, in the same way, for tasks of its own. With a saturated pool a
 * call degrades to running its shards one after the other on its own
 * thread, never to waiting on a queue.
 *
 * Workload: tens of tasks a millisecond at most; the lock is held for a few
 * pointer moves, never across a task.
 */
#include <stdlib.h>

#include "cluster_int.h"
#include "m3/error.h"

static void *worker_main(void *arg) {
  m3__workers *w = arg;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (w->head == NULL && !w->stop) {
      w->idle++;
      pthread_cond_wait(&w->cv, &w->mu);
      w->idle--;
    }
    m3__task *t = w->head;
    if (t == NULL) break; /* stopping, and nothing left to run */
    w->head = t->next;
    if (w->head) w->head->prev = NULL;
    else w->tail = NULL;
    t->queued = 0;
    pthread_mutex_unlock(&w->mu);
    t->run(t); /* t may be freed by now */
    pthread_mutex_lock(&w->mu);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

int m3__workers_start(m3__workers *w, unsigned n) {
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  w->inited = 1;
  w->t = calloc(n, sizeof *w->t);
  if (w->t == NULL) return m3__seterr(M3_ENOMEM, "m3_cluster_open: out of memory");
  for (; w->n < n; w->n++)
    if (pthread_create(&w->t[w->n], NULL, worker_main, w) != 0)
      return m3__seterr(M3_EIO, "m3_cluster_open: cannot start worker thread %u of %u", w->n + 1,
                        n);
  return 0;
}

void m3__workers_stop(m3__workers *w) {
  if (!w->inited) return;
  pthread_mutex_lock(&w->mu);
  w->stop = 1;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  /* Workers run what is still queued (abandoned hedged attempts skip their
   * work), then exit. */
  for (unsigned i = 0; i < w->n; i++) pthread_join(w->t[i], NULL);
  free(w->t);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
  w->inited = 0;
}

void m3__task_post(m3__workers *w, m3__task *t) {
  pthread_mutex_lock(&w->mu);
  M3_ASSERT(!w->stop);
  t->next = NULL;
  t->prev = w->tail;
  if (w->tail) w->tail->next = t;
  else w->head = t;
  w->tail = t;
  t->queued = 1;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

int m3__task_take(m3__workers *w, m3__task *t) {
  pthread_mutex_lock(&w->mu);
  int was = t->queued;
  if (was) {
    if (t->prev) t->prev->next = t->next;
    else w->head = t->next;
    if (t->next) t->next->prev = t->prev;
    else w->tail = t->prev;
    t->queued = 0;
  }
  pthread_mutex_unlock(&w->mu);
  return was;
}

unsigned m3__workers_idle(m3__workers *w) {
  pthread_mutex_lock(&w->mu);
  unsigned n = w->idle;
  pthread_mutex_unlock(&w->mu);
  return n;
}
