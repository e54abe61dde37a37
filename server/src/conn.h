/*
 * Connections (conn.c): the server's transport. A connection reads bytes,
 * cuts them into frames and hands each whole frame up through
 * server.hooks.frame; it writes frames with backpressure and tells the
 * writer when libuv is done with a write's buffers through the write's
 * conn_write_cb (as uv_write_cb). It knows nothing of calls or methods.
 */
#ifndef M3_SERVER_CONN_H
#define M3_SERVER_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "m3/frame.h"

typedef struct server server;
typedef struct conn conn;

/* What a connection calls up into; set once, before the first accept. */
typedef struct conn_hooks {
  /* A whole frame arrived. msg (f->msg_len bytes) and att (f->att_len)
   * point into c's read buffer: valid during the call only. The hook may
   * close c. */
  void (*frame)(conn *c, const m3_frame *f, const uint8_t *msg, const uint8_t *att);
  /* c is closing: end what it has in flight. Runs once, from conn_close. */
  void (*closing)(conn *c);
  /* A write of c completed (or, c closing, was cancelled): its queued
   * bytes went down and what it carried is back (readers waiting for
   * buffers or for c's backlog to drain may go on). */
  void (*written)(conn *c);
} conn_hooks;

/* A write is done with its buffers: status 0 (written) or a libuv error
 * (not, or not all). Runs once per write that conn_send or conn_send_batch
 * queued; never for one that they refused. */
typedef void (*conn_write_cb)(void *ud, int status);

/* One piece of a write: buf (len bytes in memory), or, with buf NULL, len
 * bytes of file fd from off (sent with sendfile: the page cache goes to the
 * socket without passing through user space). */
typedef struct conn_piece {
  const void *buf;
  int fd;
  uint64_t off;
  size_t len;
} conn_piece;

typedef struct conn_zwrite conn_zwrite; /* a write of pieces (conn.c) */

struct conn {
  uv_tcp_t tcp;
  server *s;
  conn *next, *prev;  /* s->conns */
  char peer[64];
  uint8_t *rbuf;
  size_t rlen, rcap;
  int closing;
  int hangup;         /* close once the queued writes are written (conn_hangup) */
  int reading;
  size_t queued;      /* bytes handed to uv_write not yet written */
  uv_timer_t idle;    /* handshake / idle / stalled-writer timeout */
  uint64_t last_activity_ns;
  uint64_t accepted_ns; /* the handshake deadline counts from here */
  size_t last_write_queue; /* libuv's write queue size at the last idle tick */
  int refs;           /* handle + timer + conn_ref holders; freed at 0 */
  /* Kept by the layers above; conn.c reads hello and ncalls for its
   * timeouts and writes none of them. */
  int hello;          /* Hello succeeded (method_hello.c) */
  int admin;          /* with the admin token (method_hello.c) */
  unsigned ncalls;    /* calls in flight (call.c) */
  struct call *calls; /* (call.c) */
  size_t fetching;    /* read buffer bytes lent to this connection's calls
                         whose memories are not yet queued for writing; none
                         are lent while queued + fetching is past the write
                         high-water mark (a client that does not read cannot
                         make the server read memories for it) (readbuf.c) */
  size_t lent;        /* read buffers lent to its calls, not yet back (readbuf.c) */
  /* Writes of pieces (conn_send_pieces), in order; while any waits, every
   * write of c goes through this queue (conn.c). */
  conn_zwrite *zhead, *ztail;
  conn_zwrite *zdone;  /* written; their callbacks run from the idle timer */
  unsigned uv_pending; /* uv_write requests not yet called back */
  int zerr;            /* a piece failed to go out: closed from the timer */
  unsigned tick_ms;    /* the idle timer's period */
  size_t zunsent;      /* bytes of zhead.. not yet given to the kernel or libuv */
  uint64_t enq_total;  /* bytes ever queued for writing */
  uint64_t drain_t0_ns; /* start of the current drain-rate window (conn.c) */
  uint64_t drain_bytes; /* bytes the kernel had taken at that start */
  unsigned slow_ticks;  /* consecutive windows drained below the floor */
};

void conn_accept(server *s, uv_stream_t *listener);

/* Queue a frame (header + msg) and an optional attachment (att_len bytes at
 * att, which must stay valid until cb runs). On success cb(ud, status)
 * runs once the write is done; on failure (M3_EIO: closing or libuv
 * refused, M3_ENOMEM) nothing was queued and cb never runs. cb may be NULL. */
int conn_send(conn *c, m3_frame *f, const ProtobufCMessage *msg, const void *att,
              size_t att_len, conn_write_cb cb, void *ud);

/* Queue n frames in one write: frames holds their headers and messages back
 * to back (frame i ends at frame_ends[i]), each followed on the wire by its
 * attachment (att_lens[i] bytes at atts[i], valid until cb runs). Takes
 * frames' memory on success (frames is emptied); on failure the caller
 * keeps it and cb never runs. */
int conn_send_batch(conn *c, m3_wbuf *frames, const size_t *frame_ends,
                    const void *const *atts, const size_t *att_lens, size_t n,
                    conn_write_cb cb, void *ud);

/* Queue one write of n pieces (pieces and owned, both malloc'ed: taken on
 * success; owned may be NULL, it is freed when the write is done: the
 * memory the pieces point into). File pieces' descriptors must stay open
 * until cb runs. Written with sendmsg and sendfile straight from the loop
 * while the socket takes them; when it is full, the rest of the piece at
 * hand goes through libuv (a file piece's rest read into a bounce buffer)
 * and the queue goes on when that is written. cb(ud, status) runs once,
 * never from within this call. On failure (M3_EIO, M3_ENOMEM) nothing
 * was queued and cb never runs. */
int conn_send_pieces(conn *c, uint8_t *owned, conn_piece *pieces, size_t n, conn_write_cb cb,
                     void *ud);

/* A frame of type END or GOAWAY with a Status (code, message; error: the
 * Status.error of m3/status.h's NAMED rows, else 0), on no call. */
int conn_send_status(conn *c, m3_frame_type type, uint16_t method, uint32_t stream, int code,
                     int error, const char *message);

/* Keep c's memory alive (not the connection open) until conn_unref. */
void conn_ref(conn *c);
void conn_unref(conn *c);

/* Close c (hooks.closing runs first); idempotent. */
void conn_close(conn *c);
/* Read nothing more from c and close it once what is queued has been
 * written (the answer that says why reaches the peer first). */
void conn_hangup(conn *c);
/* Frames before Hello succeeds are at most this big (a Hello is a few
 * hundred bytes): a connection that has not authenticated cannot make the
 * server buffer or unpack more. */
#define CONN_PREHELLO_FRAME_MAX 4096u

/* Stop reading c until its queued writes drain below half the high-water
 * mark. */
void conn_pause_reading(conn *c);
/* GOAWAY INVALID_ARGUMENT with why, then close c: for a peer that broke
 * framing or the protocol, whose calls can no longer be told apart. */
void conn_protocol_error(conn *c, const char *why);
/* GOAWAY UNAVAILABLE on every connection (the server drains). */
void conn_goaway_all(server *s);

#endif /* M3_SERVER_CONN_H */
