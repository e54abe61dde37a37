/*
 * m3-server internals: one libuv loop thread owns every connection, call and
 * timer, and submits and completes memory reads on an io_uring whose
 * eventfd it polls; the libuv threadpool runs the blocking work (index
 * search, store writes, reads where io_uring is not used) and hands results
 * back to the loop in its after-work callbacks. Nothing but those work
 * functions runs off the loop thread.
 */
#ifndef M3_SERVER_H
#define M3_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "m3/frame.h"
#include "m3/index.h"
#include "m3/store.h"
#include "metrics.h"

typedef struct server_config {
  const char *store_dir;
  const char *listen;          /* host:port, default 127.0.0.1:7600 */
  const char *http;            /* host:port for /metrics, default 127.0.0.1:7601; "" disables */
  const char *port_file;       /* write the bound ports here (tests use :0) */
  const char *token_file;      /* read token */
  const char *admin_token_file;
  const char *index_factory;   /* FAISS index_factory string for the retrieval index */
  const char *name;
  unsigned max_connections;
  unsigned max_frame_bytes;
  unsigned max_inflight;       /* calls per connection */
  unsigned max_queries;        /* per call */
  unsigned max_k;
  unsigned max_ids;            /* per Fetch */
  unsigned idle_timeout_ms;
  unsigned handshake_timeout_ms;
  unsigned default_timeout_ms; /* calls without a deadline get this one */
  unsigned drain_timeout_ms;
  size_t write_high_water;     /* stop reading a connection with more queued */
  size_t fetch_memory;         /* read buffers of all calls together */
  size_t cache_bytes;          /* SIZE_MAX: auto (256 MB with --direct, else 0) */
  unsigned search_threads;     /* OpenMP and BLAS threads of an index search */
  int direct;
  unsigned shard;
} server_config;

void server_config_defaults(server_config *c);

typedef struct conn conn;
typedef struct call call;
typedef struct http_conn http_conn;

typedef struct server {
  uv_loop_t *loop;
  server_config cfg;
  m3_store *store;
  m3_index *index;           /* NULL when the store keeps no embeddings */
  unsigned emb_dim;
  char *token, *admin_token; /* NULL when not configured */
  uv_tcp_t listener;
  uv_tcp_t http_listener;
  int http_on;
  http_conn *http_conns;     /* open HTTP connections (http.c) */
  uv_signal_t sigterm, sigint;
  uv_timer_t drain_timer;
  int draining;
  conn *conns;               /* doubly linked */
  unsigned nconns;
  unsigned inflight;         /* calls not yet finished, all connections */
  uint64_t started_ns;
  uint64_t records;          /* live memories (kept current by Put/Delete) */
  metrics m;
  /* Search micro-batching: calls waiting for the one search job in flight. */
  call *search_queue, *search_tail;
  int search_running;
  uv_work_t search_work;
  call *search_batch;        /* the calls the running job serves */
  void (*omp_set_num_threads)(int); /* from the OpenMP runtime FAISS uses, if loaded */
  /* Memory reads. With io_uring they run on the loop: completions signal
   * aio's eventfd, polled by aio_poll, and each memory is sent as soon as
   * its read completes. Without (pread, or calls that want chunk texts
   * from the catalog) a call's reads run as one threadpool job. */
  m3_store_aio *aio;         /* NULL: every fetch on the threadpool */
  uv_poll_t aio_poll;
  uv_timer_t aio_retry;      /* a writer held the store: submit again soon */
  int aio_busy;
  call *flush;               /* calls with memories read and not yet sent */
  /* Read buffers, one memory each, shared by all calls: at most
   * fetch_memory bytes of them (so a burst of large calls waits for memory
   * instead of allocating without bound). Calls wait for buffers in
   * fetch_queue, oldest first. */
  size_t buf_cap;            /* m3_store_fetch_cap */
  size_t bufs_max, bufs_out; /* budget in buffers; buffers lent out */
  size_t bufs_peak;          /* most ever lent out at once */
  void **bufs;               /* free buffers */
  size_t nbufs;
  call *fetch_queue, *fetch_tail;
  size_t fetch_waiting;      /* calls in fetch_queue */
  /* send_ready's arrays, grown as needed (the loop thread only). */
  struct {
    size_t *ends, *att_lens;
    const void **atts;
    void **back;
    size_t cap;
  } send;
} server;

/* A call in flight. Owned by its connection; freed once it has ended (END or
 * final RESPONSE queued), its work is back from the threadpool, and its
 * writes have completed. */
struct call {
  conn *c;
  uint32_t stream;
  uint16_t method;
  int ended;        /* the last frame of the call is queued */
  int working;      /* a threadpool job holds it */
  int writes;       /* uv_write requests still referencing its buffers */
  uint64_t t0_ns;
  uv_timer_t deadline;
  int timer_on;
  call *next, *prev;      /* connection's list */
  call *qnext;            /* search queue */
  /* request */
  ProtobufCMessage *req;
  float *queries;         /* (nq, emb_dim) */
  unsigned nq, k;
  int with_text;
  uint64_t *ids;          /* Search/Retrieve: (nq, k) results; Fetch: requested */
  float *scores;
  size_t nids;
  uint8_t *attach;        /* Put: records (owned) */
  size_t attach_len;
  /* results */
  int status;             /* m3 error of the work, 0 ok */
  char errmsg[256];
  m3_fetch_item *items;   /* Retrieve/Fetch: the memories to read */
  size_t *slot;           /* item j answers ids[slot[j]] (query, rank) */
  size_t nitems;
  size_t started;         /* items [0, started) have buffers and were started */
  size_t reading;         /* items started and not yet read */
  size_t *ready;          /* items read, waiting to be sent */
  size_t nready;
  size_t sent;            /* items whose frames are queued */
  int pool_job;           /* reads run as threadpool jobs */
  int job_running;        /* a job is on the threadpool: items
                             [job_first, job_first + job_n) */
  size_t job_first, job_n;
  int queued_for_bufs;    /* in s->fetch_queue */
  int flushing;           /* in s->flush */
  call *fqnext, *fqprev, *flnext;
  char **texts;           /* per item, with_text */
  uint64_t count;         /* Put: written; Delete: deleted */
  uv_work_t work;
};

struct conn {
  uv_tcp_t tcp;
  server *s;
  conn *next, *prev;
  char peer[64];
  uint8_t *rbuf;
  size_t rlen, rcap;
  int hello;          /* Hello succeeded */
  int admin;
  int closing;
  int reading;
  size_t queued;      /* bytes handed to uv_write not yet written */
  size_t fetching;    /* read buffer bytes lent to this connection's calls
                         whose memories are not yet queued for writing; none
                         are lent while queued + fetching is past the write
                         high-water mark (a client that does not read cannot
                         make the server read memories for it) */
  size_t lent;        /* read buffers lent to its calls and not yet back */
  unsigned ncalls;
  call *calls;
  uv_timer_t idle;    /* handshake / idle / stalled-writer timeout */
  uint64_t last_activity_ns;
  uint64_t accepted_ns; /* the handshake deadline counts from here */
  size_t last_write_queue; /* libuv's write queue size at the last idle tick */
  int refs;           /* handle + calls; freed at 0 */
};

/* conn.c */
void conn_accept(server *s, uv_stream_t *listener);
/* Queue a frame (header + message) and optional attachment for c. */
int conn_send(conn *c, call *cl, m3_frame *f, const ProtobufCMessage *msg, const void *att,
              size_t att_len);
/* Queue n frames in one write: frames holds their headers and messages back
 * to back (frame i ends at frame_ends[i]), each followed on the wire by its
 * attachment (att_lens[i] bytes at atts[i], which must stay valid until the
 * write completes). The attachments are read buffers lent to cl: the write
 * takes them (nbufs pointers at bufs, an array it frees) and gives them
 * back with fetch_bufs_put once written or failed. Takes frames' memory on
 * success; on failure the caller still owns both. */
int conn_send_batch(conn *c, call *cl, m3_wbuf *frames, const size_t *frame_ends,
                    const void *const *atts, const size_t *att_lens, size_t n, void **bufs,
                    size_t nbufs);
/* End a call with a status (END frame), unless it already ended. */
void call_end(call *cl, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* End a unary call with its response (RESPONSE + FLAG_END). */
void call_reply(call *cl, const ProtobufCMessage *msg);
/* Free cl if nothing references it any more. */
void call_maybe_free(call *cl);
void conn_close(conn *c);
/* Stop reading c until its queued writes drain below half the high-water
 * mark. */
void conn_pause_reading(conn *c);
/* GOAWAY INVALID_ARGUMENT with why, then close c: for a peer that broke
 * framing or the protocol, whose calls can no longer be told apart. */
void conn_protocol_error(conn *c, const char *why);
void server_goaway_all(server *s);

/* calls.c */
void call_dispatch(conn *c, const m3_frame *f, const uint8_t *msg, const uint8_t *att);
/* Start reads that wait for buffers, oldest call first. */
void fetch_pump(server *s);
/* A call that ended leaves the queue for buffers (conn.c, when it ends). */
void fetch_forget(call *cl);
/* Give n read buffers lent to c back to the server's budget (NULL entries
 * are skipped); starts nothing: the caller pumps (fetch_pump). */
void fetch_bufs_put(server *s, conn *c, void **bufs, size_t n);
/* Set up and tear down loop reads (aio NULL: threadpool reads only). */
int fetch_init(server *s);
void fetch_close(server *s);

/* http.c */
int http_start(server *s);
/* Close every open HTTP connection (at exit: their memory is freed in the
 * close callbacks). */
void http_close_all(server *s);

uint64_t now_ns(void);

#endif /* M3_SERVER_H */
