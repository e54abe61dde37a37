/*
 * Asynchronous reads for an event loop (m3/store.h, m3_store_aio).
 *
 * Submit looks the items up (cache, catalog) under the store's shared lock,
 * taken with trylock so that the loop never waits behind a commit, plans
 * each read exactly as m3_store_fetch does, and queues it on a private
 * io_uring whose completions signal an eventfd. Reap, called when that
 * descriptor is readable, checks each completed read (the same checks as a
 * synchronous fetch) and hands the item to its callback; reads beyond the
 * ring's depth wait in a FIFO and start as earlier ones complete.
 *
 * Reads run without the lock. What they depend on is kept alive for them:
 * the descriptors of segments a compaction drops are closed by the last
 * read in flight (s->aio_reads, m3__store_retire), and a read that raced a
 * put or delete of its chunk does not leave the old bytes in the cache
 * (s->gen).
 */
#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "m3/error.h"
#include "m3/log.h"
#include "store_int.h"

typedef struct aio_op {
  m3_fetch_item *it;
  m3_store_aio_fn fn;
  void *ud;
  m3_read r;       /* r.res: bytes read so far, then the result */
  m3_location loc;
  uint64_t gen;    /* s->gen when the read was planned */
  int io;          /* counts in s->aio_reads */
  struct aio_op *next;
} aio_op;

typedef struct op_list {
  aio_op *head, *tail;
} op_list;

struct m3_store_aio {
  m3_store *s;
  struct io_uring ring;
  int efd;
  unsigned depth;
  unsigned inflight; /* reads in the kernel */
  size_t pending;    /* submitted items not yet completed */
  op_list wait;      /* reads waiting for room in the ring */
  op_list done;      /* completed items waiting for reap to call fn */
  aio_op *free;
  /* Submit's lookup arrays, kept between calls (one thread uses an aio). */
  uint64_t *ids;
  m3_location *locs;
  int *st;
  aio_op **miss;
  size_t cap;
};

/* Make the lookup arrays hold n items. */
static int scratch(m3_store_aio *a, size_t n) {
  if (n <= a->cap) return 0;
  size_t cap = a->cap ? a->cap : 64;
  while (cap < n) cap *= 2;
  uint64_t *ids = realloc(a->ids, cap * sizeof *ids);
  if (ids) a->ids = ids;
  m3_location *locs = realloc(a->locs, cap * sizeof *locs);
  if (locs) a->locs = locs;
  int *st = realloc(a->st, cap * sizeof *st);
  if (st) a->st = st;
  aio_op **miss = realloc(a->miss, cap * sizeof *miss);
  if (miss) a->miss = miss;
  if (!ids || !locs || !st || !miss)
    return m3__seterr(M3_ENOMEM, "asynchronous fetch of %zu memories: out of memory", n);
  a->cap = cap;
  return 0;
}

static void push(op_list *l, aio_op *op) {
  op->next = NULL;
  if (l->tail) l->tail->next = op;
  else l->head = op;
  l->tail = op;
}

static void push_front(op_list *l, aio_op *op) {
  op->next = l->head;
  l->head = op;
  if (l->tail == NULL) l->tail = op;
}

static aio_op *op_get(m3_store_aio *a) {
  aio_op *op = a->free;
  if (op) a->free = op->next;
  else op = malloc(sizeof *op);
  return op;
}

static void op_put(m3_store_aio *a, aio_op *op) {
  op->next = a->free;
  a->free = op;
}

static void wake(m3_store_aio *a) {
  uint64_t one = 1;
  ssize_t k = write(a->efd, &one, sizeof one);
  (void)k; /* EAGAIN: the counter is already non-zero, the loop will wake */
}

int m3_store_aio_open(m3_store *s, unsigned depth, m3_store_aio **out) {
  if (strcmp(m3_store_io_backend(s), "io_uring") != 0)
    return m3__seterr(M3_EUNSUPPORTED, "store %s reads with %s: asynchronous reads need io_uring",
                      s->dir, m3_store_io_backend(s));
  m3_store_aio *a = calloc(1, sizeof *a);
  if (a == NULL) return m3__seterr(M3_ENOMEM, "store aio: out of memory");
  a->s = s;
  a->depth = depth ? depth : 64;
  a->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (a->efd < 0) {
    int e = errno;
    free(a);
    return m3__syserr(e, "eventfd");
  }
  int rc = io_uring_queue_init(a->depth, &a->ring, 0);
  if (rc == 0) {
    rc = io_uring_register_eventfd(&a->ring, a->efd);
    if (rc < 0) io_uring_queue_exit(&a->ring);
  }
  if (rc < 0) {
    close(a->efd);
    free(a);
    return m3__syserr(-rc, "io_uring for asynchronous reads (depth %u)", depth);
  }
  *out = a;
  return 0;
}

int m3_store_aio_fd(const m3_store_aio *a) { return a->efd; }

size_t m3_store_aio_pending(const m3_store_aio *a) { return a->pending; }

/* Move waiting reads into the ring while it has room, and submit. */
static void pump(m3_store_aio *a) {
  while (a->wait.head && a->inflight < a->depth) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&a->ring);
    if (sqe == NULL) break;
    aio_op *op = a->wait.head;
    a->wait.head = op->next;
    if (a->wait.head == NULL) a->wait.tail = NULL;
    size_t done = (size_t)op->r.res;
    io_uring_prep_read(sqe, op->r.fd, (char *)op->r.buf + done, (unsigned)(op->r.len - done),
                       op->r.off + done);
    io_uring_sqe_set_data(sqe, op);
    a->inflight++;
  }
  if (io_uring_sq_ready(&a->ring) == 0) return;
  int rc = io_uring_submit(&a->ring);
  /* Transient refusals leave the entries in the ring: the next reap (the
   * eventfd fires as earlier reads complete) submits them again. */
  if (rc < 0 && rc != -EAGAIN && rc != -EBUSY && rc != -EINTR)
    M3_ERROR("store", "%s: io_uring_submit: %s", a->s->dir, strerror(-rc));
}

/* One fewer read in flight; the last closes descriptors compaction retired. */
static void read_over(m3_store_aio *a, aio_op *op) {
  if (op->io && atomic_fetch_sub(&a->s->aio_reads, 1) == 1) m3__store_retire_sweep(a->s);
  op->io = 0;
}

int m3_store_aio_submit(m3_store_aio *a, m3_fetch_item *items, size_t n, m3_store_aio_fn fn,
                        void *ud) {
  m3_store *s = a->s;
  if (n == 0) return 0;
  if (pthread_rwlock_tryrdlock(&s->rw) != 0)
    return m3__seterr(M3_EBUSY, "store %s: a write is in progress", s->dir);
  op_list mine = {NULL, NULL};
  size_t nmiss = 0;
  int rc = scratch(a, n);
  uint64_t *ids = a->ids;
  m3_location *locs = a->locs;
  int *st = a->st;
  aio_op **miss = a->miss;
  if (rc) goto out;
  for (size_t i = 0; i < n; i++) {
    aio_op *op = op_get(a);
    if (op == NULL) {
      rc = m3__seterr(M3_ENOMEM, "asynchronous fetch of %zu memories: out of memory", n);
      goto out;
    }
    memset(op, 0, sizeof *op);
    op->it = &items[i];
    op->fn = fn;
    op->ud = ud;
    push(&mine, op);
    int got = m3__fetch_item_init(s, &items[i], i);
    if (got < 0) {
      rc = got;
      goto out;
    }
    if (got == 0) {
      ids[nmiss] = items[i].chunk_id;
      miss[nmiss++] = op;
    }
  }
  if (nmiss && (rc = m3__store_locs(s, ids, nmiss, locs, st)) != 0) goto out;
  uint64_t gen = atomic_load(&s->gen);
  for (size_t j = 0; j < nmiss; j++) {
    aio_op *op = miss[j];
    if (st[j] != 0) {
      op->it->status = st[j];
    } else if (m3__fetch_plan(s, op->it, &locs[j], &op->r)) {
      op->loc = locs[j];
      op->gen = gen;
      op->io = 1;
      atomic_fetch_add(&s->aio_reads, 1); /* under the lock: compaction sees it */
    }
  }
out:
  pthread_rwlock_unlock(&s->rw);
  int woke = 0;
  for (aio_op *op = mine.head, *next; op; op = next) {
    next = op->next;
    if (rc) {
      op_put(a, op);
    } else if (op->io) {
      push(&a->wait, op);
    } else {
      push(&a->done, op);
      woke = 1;
    }
  }
  if (rc == 0) {
    a->pending += n;
    pump(a);
    if (woke) wake(a);
  }
  return rc;
}

/* A read's completion: finish it, go on with a short read, or retry. */
static void complete(m3_store_aio *a, aio_op *op, int res) {
  m3_store *s = a->s;
  a->inflight--;
  if (res == -EAGAIN || res == -EINTR) {
    push_front(&a->wait, op);
    return;
  }
  if (res > 0) {
    op->r.res += res;
    if ((uint32_t)op->r.res < op->r.len) { /* short read: the rest next */
      push_front(&a->wait, op);
      return;
    }
  } else if (res < 0) {
    op->r.res = res;
  } /* 0: end of file; r.res says how far it got */
  m3__fetch_finish(s, op->it, &op->loc, &op->r, 0);
  if (op->it->status == 0 && s->cache && atomic_load(&s->gen) == op->gen) {
    m3__cache_put(s->cache, op->it->chunk_id, op->it->data, op->it->len);
    /* A put or delete of this chunk that began meanwhile drops it after its
     * commit; one that began between the check and the put is seen here. */
    if (atomic_load(&s->gen) != op->gen) m3__cache_drop(s->cache, op->it->chunk_id);
  }
  read_over(a, op);
  push(&a->done, op);
}

int m3_store_aio_reap(m3_store_aio *a) {
  uint64_t v;
  ssize_t k = read(a->efd, &v, sizeof v);
  (void)k; /* EAGAIN: nothing signalled, but look at the ring anyway */
  struct io_uring_cqe *cqe;
  unsigned head, seen = 0;
  io_uring_for_each_cqe(&a->ring, head, cqe) {
    seen++;
    complete(a, io_uring_cqe_get_data(cqe), cqe->res);
  }
  io_uring_cq_advance(&a->ring, seen);
  pump(a);

  /* Callbacks last, on a detached list: they may submit more items. */
  aio_op *list = a->done.head;
  a->done.head = a->done.tail = NULL;
  int n = 0;
  while (list) {
    aio_op *op = list;
    list = op->next;
    m3_fetch_item *it = op->it;
    m3_store_aio_fn fn = op->fn;
    void *ud = op->ud;
    op_put(a, op);
    a->pending--;
    n++;
    fn(ud, it);
  }
  return n;
}

void m3_store_aio_close(m3_store_aio *a) {
  if (a == NULL) return;
  /* Reads in the kernel write into their buffers: wait for every one. */
  while (a->inflight > 0) {
    struct io_uring_cqe *cqe;
    int rc = io_uring_wait_cqe(&a->ring, &cqe);
    if (rc == -EINTR) continue;
    if (rc < 0) break;
    aio_op *op = io_uring_cqe_get_data(cqe);
    io_uring_cqe_seen(&a->ring, cqe);
    a->inflight--;
    read_over(a, op);
    op_put(a, op);
  }
  for (op_list *l = &a->wait; l->head;) {
    aio_op *op = l->head;
    l->head = op->next;
    read_over(a, op);
    op_put(a, op);
  }
  for (aio_op *op = a->done.head, *next; op; op = next) {
    next = op->next;
    op_put(a, op);
  }
  while (a->free) {
    aio_op *op = a->free;
    a->free = op->next;
    free(op);
  }
  io_uring_queue_exit(&a->ring);
  close(a->efd);
  free(a->ids);
  free(a->locs);
  free(a->st);
  free(a->miss);
  free(a);
}
