/*
 * A call in flight (call.c): its life from the REQUEST that opened it to
 * the moment nothing references it any more, and its arena.
 *
 * Life: dispatch.c creates it (call_new), unpacks its request into its
 * arena and starts it (call_start: on its connection's list, deadline
 * armed); its method's handler either ends it at once or hands it to the
 * threadpool or the read pump, which hold it (working). It ends once
 * (call_end, call_fail or call_reply: the last frame is queued; or its
 * deadline, a CANCEL or its connection closing), and is freed, by
 * call_maybe_free, once it has ended, nothing holds it, its writes have
 * completed and its timer has closed. Everything the call allocated lives
 * in its arena and goes in that one free.
 */
#ifndef M3_SERVER_CALL_H
#define M3_SERVER_CALL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "server.h"

/* The deadline timer's state. */
typedef enum call_timer {
  CALL_TIMER_NONE,    /* no timer, or its handle has closed */
  CALL_TIMER_ARMED,   /* running: on_deadline ends the call */
  CALL_TIMER_CLOSING, /* the call ended; uv_close is in flight (the call
                         cannot be freed before its close callback) */
} call_timer;

typedef struct call_block call_block; /* arena block (call.c) */

struct call {
  conn *c;
  uint32_t stream;
  uint16_t method;        /* m3_method */
  int ended;              /* the last frame of the call is queued */
  int working;            /* a threadpool job or the read pump holds it */
  int writes;             /* queued writes still referencing its memory */
  uint64_t t0_ns;
  uv_timer_t deadline;
  call_timer timer;
  call *next, *prev;      /* its connection's list */
  ProtobufCMessage *req;  /* the request, unpacked into the arena */
  void *state;            /* its method's own state, from the arena
                             (method_*.c define its type) */
  /* Runs first when the call ends, if set: who holds the call in a queue
   * takes it out (readbuf.c). */
  void (*on_end)(void *ud);
  void *on_end_ud;
  call_block *arena;      /* blocks, newest first */
};

/* A call for frame f on c, not yet started: NULL when out of memory. */
call *call_new(conn *c, const m3_frame *f);
/* Free a call that was never started (its request did not unpack). */
void call_discard(call *cl);
/* Put it on its connection's list, count it in flight and arm its deadline
 * (timeout_ms; 0: none). */
void call_start(call *cl, unsigned timeout_ms);

/* size zeroed bytes, 16-byte aligned, from cl's arena: they live until the
 * call is freed, and are never freed one by one. NULL when out of memory.
 * The loop thread only. */
void *call_alloc(call *cl, size_t size);
/* A protobuf-c allocator over cl's arena (for protobuf_c_message_unpack). */
ProtobufCAllocator call_pb_allocator(call *cl);

/* The call on c with that stream id that has not ended, or NULL. */
call *call_find(conn *c, uint32_t stream);

/* End a call with a gRPC status code (END frame), unless it already ended. */
void call_end(call *cl, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* End a call with an m3 error code: its status from the status table, and
 * the code itself in Status.error where the table names it. */
void call_fail(call *cl, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* End a unary call with its response (RESPONSE + FLAG_END). */
void call_reply(call *cl, const ProtobufCMessage *msg);

/* A method's threadpool job, in its state: the work function fills status
 * (an m3 code), errmsg and count. */
typedef struct call_job {
  uv_work_t work;
  int status;
  char errmsg[256];
  uint64_t count; /* what the method counts (Put: written; Delete: deleted) */
} call_job;

/* Run work(j->work) on the threadpool, then done on the loop; the job holds
 * cl until done calls call_work_back. j->work.data is cl. */
void call_queue_job(call *cl, call_job *j, uv_work_cb work, uv_after_work_cb done);

/* A threadpool job of cl is back (uv_status from libuv, err its m3 code,
 * errmsg its detail): cl is no longer held. Returns 1 when the job
 * succeeded and the call is still open (the caller answers it); else 0,
 * having ended it with "<what>: <detail>" on failure, or freed it if it had
 * ended meanwhile (deadline, CANCEL, closed connection). */
int call_work_back(call *cl, int uv_status, int err, const char *what, const char *errmsg);

/* A write that references the call's memory was queued / is done (for
 * writes queued with conn_send_batch by the call's layers). */
void call_write_queued(call *cl);
void call_write_done(call *cl);

/* Free cl if nothing references it any more. */
void call_maybe_free(call *cl);

/* conn_hooks.closing: the connection's calls end (CANCELLED, no frame) and
 * are freed as soon as nothing holds them. */
void call_conn_closing(conn *c);

#endif /* M3_SERVER_CALL_H */
