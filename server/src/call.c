/*
 * A call's life (call.h): create, deadline, end, free, and its arena.
 * Calls are short and their memory dies with them, so each call gets a
 * bump arena (the request unpacked by protobuf-c, the method's state, its
 * result arrays, Put's records) freed in one place, call_free.
 */
#include "call.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "m3/error.h"
#include "m3/log.h"

/* ---- arena -------------------------------------------------------------- */

struct call_block {
  call_block *next;
  size_t cap, used;
  _Alignas(16) unsigned char data[];
};

#define BLOCK_MIN 4096 /* most calls fit in one: Hello, Stats, a small Fetch */
#define BIG 1024       /* larger asks get a block of their own */

static call_block *block_new(size_t cap) {
  call_block *b = malloc(sizeof *b + cap);
  if (b == NULL) return NULL;
  b->cap = cap;
  b->used = 0;
  return b;
}

void *call_alloc(call *cl, size_t size) {
  size = (size + 15) & ~(size_t)15;
  if (size == 0) size = 16;
  call_block *b = cl->arena;
  if (b == NULL || b->cap - b->used < size) {
    if (size > BIG) {
      /* After the current block, which goes on serving small asks. */
      call_block *big = block_new(size);
      if (big == NULL) return NULL;
      big->used = size;
      if (b) {
        big->next = b->next;
        b->next = big;
      } else {
        big->next = NULL;
        cl->arena = big;
      }
      memset(big->data, 0, size);
      return big->data;
    }
    b = block_new(BLOCK_MIN);
    if (b == NULL) return NULL;
    b->next = cl->arena;
    cl->arena = b;
  }
  void *p = b->data + b->used;
  b->used += size;
  memset(p, 0, size);
  return p;
}

static void *pb_alloc(void *ud, size_t size) { return call_alloc(ud, size); }
static void pb_free(void *ud, void *p) {
  (void)ud;
  (void)p; /* freed with the call */
}

ProtobufCAllocator call_pb_allocator(call *cl) {
  return (ProtobufCAllocator){pb_alloc, pb_free, cl};
}

/* ---- life ---------------------------------------------------------------- */

call *call_new(conn *c, const m3_frame *f) {
  call *cl = calloc(1, sizeof *cl);
  if (cl == NULL) return NULL;
  cl->c = c;
  cl->stream = f->stream;
  cl->method = f->method;
  cl->t0_ns = now_ns();
  return cl;
}

static void arena_free(call *cl) {
  for (call_block *b = cl->arena, *next; b; b = next) {
    next = b->next;
    free(b);
  }
}

void call_discard(call *cl) {
  arena_free(cl);
  free(cl);
}

static void on_deadline(uv_timer_t *t) {
  call *cl = t->data;
  call_end(cl, M3_STATUS_DEADLINE_EXCEEDED, "deadline of %llu ms exceeded",
           (unsigned long long)((now_ns() - cl->t0_ns) / 1000000));
  call_maybe_free(cl);
}

void call_start(call *cl, unsigned timeout_ms) {
  conn *c = cl->c;
  server *s = c->s;
  cl->next = c->calls;
  if (c->calls) c->calls->prev = cl;
  c->calls = cl;
  c->ncalls++;
  conn_ref(c);
  s->inflight++;
  if (timeout_ms) {
    uv_timer_init(s->loop, &cl->deadline);
    cl->deadline.data = cl;
    cl->timer = CALL_TIMER_ARMED;
    uv_timer_start(&cl->deadline, on_deadline, timeout_ms, 0);
  }
}

call *call_find(conn *c, uint32_t stream) {
  for (call *cl = c->calls; cl; cl = cl->next)
    if (cl->stream == stream && !cl->ended) return cl;
  return NULL;
}

static void timer_closed(uv_handle_t *h) {
  call *cl = h->data;
  cl->timer = CALL_TIMER_NONE;
  call_maybe_free(cl);
}

/* The call has ended (its last frame is queued, or there will be none). */
static void finish(call *cl, int code) {
  cl->ended = 1;
  if (cl->on_end) cl->on_end(cl->on_end_ud);
  server *s = cl->c->s;
  s->inflight--;
  metrics_observe(&s->m, cl->method, code, (double)(now_ns() - cl->t0_ns) / 1e9);
  if (cl->timer == CALL_TIMER_ARMED) {
    uv_timer_stop(&cl->deadline);
    cl->timer = CALL_TIMER_CLOSING;
    uv_close((uv_handle_t *)&cl->deadline, timer_closed);
  }
}

static void wrote(void *ud, int status) {
  (void)status;
  call_write_done(ud);
}

void call_write_queued(call *cl) { cl->writes++; }

void call_write_done(call *cl) {
  cl->writes--;
  call_maybe_free(cl);
}

/* Queue a frame of the call; its memory stays until the write is done. */
static int call_send(call *cl, m3_frame *f, const ProtobufCMessage *msg) {
  int rc = conn_send(cl->c, f, msg, NULL, 0, wrote, cl);
  if (rc == 0) call_write_queued(cl);
  return rc;
}

static void end_v(call *cl, int code, int error, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));
static void end_v(call *cl, int code, int error, const char *fmt, va_list ap) {
  if (cl->ended) return;
  char msg[512];
  vsnprintf(msg, sizeof msg, fmt, ap);
  M3__Status st = M3__STATUS__INIT;
  st.code = (M3__StatusCode)code;
  st.message = msg;
  st.error = error;
  m3_frame f = {M3_FRAME_END, 0, cl->method, cl->stream, 0, 0, (uint32_t)code};
  call_send(cl, &f, &st.base);
  if (code != 0)
    M3_DEBUG("server", "%s stream %u %s: %s: %s", cl->c->peer, cl->stream,
             m3_methods[cl->method].name, m3_status_name(code), msg);
  finish(cl, code);
}

void call_end(call *cl, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  end_v(cl, code, 0, fmt, ap);
  va_end(ap);
}

void call_fail(call *cl, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  end_v(cl, m3_status_from_err(err), m3_status_named_err(err), fmt, ap);
  va_end(ap);
}

void call_reply(call *cl, const ProtobufCMessage *msg) {
  if (cl->ended) return;
  m3_frame f = {M3_FRAME_RESPONSE, M3_FRAME_FLAG_END, cl->method, cl->stream, 0, 0, 0};
  if (call_send(cl, &f, msg) != 0) {
    finish(cl, M3_STATUS_UNAVAILABLE);
    return;
  }
  finish(cl, 0);
}

void call_queue_job(call *cl, call_job *j, uv_work_cb work, uv_after_work_cb done) {
  cl->working = 1;
  j->work.data = cl;
  uv_queue_work(cl->c->s->loop, &j->work, work, done);
}

int call_work_back(call *cl, int uv_status, int err, const char *what, const char *errmsg) {
  cl->working = 0;
  if (cl->ended) {
    call_maybe_free(cl);
    return 0;
  }
  if (uv_status != 0 || err != 0) {
    call_fail(cl, err ? err : M3_EINTERNAL, "%s: %s", what, errmsg[0] ? errmsg : m3_strerror(err));
    call_maybe_free(cl);
    return 0;
  }
  return 1;
}

static void call_free(call *cl) {
  conn *c = cl->c;
  if (cl->prev) cl->prev->next = cl->next;
  else c->calls = cl->next;
  if (cl->next) cl->next->prev = cl->prev;
  c->ncalls--;
  arena_free(cl);
  free(cl);
  conn_unref(c);
}

void call_maybe_free(call *cl) {
  if (cl->ended && !cl->working && cl->writes == 0 && cl->timer == CALL_TIMER_NONE)
    call_free(cl);
}

void call_conn_closing(conn *c) {
  /* Calls still working finish quietly: their results are dropped. */
  for (call *cl = c->calls, *next; cl; cl = next) {
    next = cl->next;
    if (!cl->ended) finish(cl, M3_STATUS_CANCELLED);
    call_maybe_free(cl);
  }
}
