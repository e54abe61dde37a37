/*
 * m3-server internals: what the server's files share (SQLite's sqliteInt.h
 * in small), the server's threading rules and its lock order.
 *
 * Threads. One libuv loop thread owns every connection, call and timer, and
 * submits and completes memory reads on an io_uring whose eventfd it polls;
 * the libuv threadpool runs the blocking work (index search, store writes,
 * reads where io_uring is not used) and hands results back to the loop in
 * its after-work callbacks. Nothing but those work functions runs off the
 * loop thread, and while one runs it touches only its own call's method
 * state (held: call.working is set) and the store and index, never the
 * server, a connection or the call's arena (which grows on the loop only).
 *
 * Lock order. The server's own files take no lock: the loop thread is the
 * only one that touches their state. The locks are the store's and the
 * index's (m3/store.h, m3/index.h), taken inside their calls, and
 * server.admin_lock, which Put's and Delete's work functions hold around
 * both: admin_lock first, then the store's (m3_store_put or
 * m3_store_delete), released, then the index's (m3_index_add or
 * m3_index_remove); the store's and the index's are never held together.
 *
 * Files, and the one way their calls go (each calls only files below it;
 * upward, only through a callback it was handed: conn_hooks, conn_write_cb,
 * call.on_end, search_req.done, rb_reads.run_job/send):
 *
 *   main.c          options, open, listen, signals, drain, shutdown
 *   dispatch.c      a frame from conn.c: CANCEL, checks, the call's start,
 *                   its method's handler (method_handlers, generated from
 *                   m3.proto's service with the method table)
 *   method_*.c      one file per rpc: its request checks, its state, its
 *                   answer (hello, search, retrieve, fetch, stats, health,
 *                   put, delete)
 *   search.c        the search pipeline shared by Search and Retrieve
 *                   (micro-batched index searches on the threadpool)
 *   fetch.c         the memories of a Retrieve or Fetch: plan, threadpool
 *                   reads, streaming them out
 *   readbuf.c       the read-buffer budget, the queue of calls waiting for
 *                   buffers and the io_uring pump (m3_store_aio)
 *   auth.c          tokens, failed Hellos per address
 *   call.c          a call's life: create, deadline, end, free; its arena
 *   conn.c          transport: accept, frames up, writes with backpressure,
 *                   timeouts
 *   http.c, metrics.c  /metrics
 */
#ifndef M3_SERVER_H
#define M3_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include <pthread.h>

#include "auth.h"
#include "conn.h"
#include "m3/embed.h"
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
  const char *index_params;    /* FAISS search parameters ("nprobe=16"), or NULL */
  const char *name;
  unsigned max_connections;
  unsigned max_http_connections; /* open HTTP connections at once */
  unsigned auth_fail_limit;    /* failed Hellos per address per minute (0: no limit) */
  unsigned search_budget;      /* queries queued or searched, all calls together */
  unsigned max_batch_queries;  /* queries in one index search (one batch) */
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
  size_t min_drain_bytes_per_s; /* a connection with answers queued that drains
                                   slower than this is closed (0: never) */
  size_t cache_bytes;          /* SIZE_MAX: auto (256 MB with --direct, else 0) */
  unsigned search_threads;     /* OpenMP and BLAS threads of an index search */
  int direct;
  int sendfile;                /* send page-cache memories with sendfile,
                                  checked by the client only (--sendfile);
                                  else read into buffers on the io_uring and
                                  checked by the server too */
  unsigned shard;
  const char *tls_cert;        /* PEM certificate chain: the RPC port speaks TLS 1.3 */
  const char *tls_key;
  const char *tls_ca;          /* require client certificates signed by it (mutual TLS) */
  const char *admin_cert_subject; /* a client certificate whose subject or a SAN is
                                     this is admin (with or without the admin token) */
  int allow_plain_remote;      /* plain (no TLS) on a non-loopback address */
  int ktls;                    /* try kernel TLS for sends (1; --no-ktls) */
  int http_tls;                /* the HTTP port speaks TLS too (--http-tls) */
  const char *http_tls_ca;     /* and requires client certificates signed by it */
} server_config;

void server_config_defaults(server_config *c);

typedef struct call call;
typedef struct http_conn http_conn;
typedef struct search_req search_req;
typedef struct rb_reads rb_reads;

typedef struct server {
  uv_loop_t *loop;
  server_config cfg;
  conn_hooks hooks;          /* what conn.c calls up into (main.c sets them) */
  m3_store *store;
  m3_index *index;           /* NULL when the store keeps no embeddings */
  /* What a call's IndexParams may set on it, fixed at open (search.c
   * checks them on the loop, which must not wait for the index's lock):
   * nlist (IVF, the most nprobe; 0: no nprobe), whether it takes ef_search,
   * its factory string (owned by the index). */
  size_t index_nlist;
  int index_ef_search;
  const char *index_factory;
  unsigned emb_dim;
  char embedder[64];         /* how the store was embedded (embedder.c) */
  unsigned text_dim;         /* dims the server embeds text at; 0: it cannot */
  m3_embed_spec text_embed;  /* the built-in embedder text is embedded with
                                (text_dim > 0); its idf: text_idf */
  m3_idf *text_idf;          /* words: DIR/idf.bin (embedder.c frees it) */
  char *token, *admin_token; /* NULL when not configured */
  uv_tcp_t listener;
  uv_tcp_t http_listener;
  int http_on;
  http_conn *http_conns;     /* open HTTP connections (http.c) */
  unsigned http_nconns;
  auth_state auth;           /* failed Hellos per address (auth.c) */
  /* Put and Delete hold it across their store and index writes, so that
   * two writers of one id cannot leave the store and the index disagreeing
   * (a Put's store write, a Delete's store and index writes, then the
   * Put's index write). */
  pthread_mutex_t admin_lock;
  uv_signal_t sigterm, sigint, sighup;
  struct tls_server *tls;    /* NULL: plain (tls.h) */
  struct tls_server *http_tls; /* the HTTP port's; NULL: plain */
  int tls_ktls_logged;       /* why kTLS is off was logged once */
  uint8_t tls_rbuf[65536];   /* ciphertext just read (conn.c; loop thread) */
  uv_timer_t drain_timer;
  int draining;
  conn *conns;               /* doubly linked (conn.c) */
  unsigned nconns;
  unsigned inflight;         /* calls not yet finished, all connections (call.c) */
  uint64_t started_ns;
  uint64_t records;          /* live memories (kept current by Put/Delete) */
  /* Vectors in the index, counted on the threadpool at open and by each
   * Put and Delete (under admin_lock) and published here on the loop, so
   * that Stats and /metrics never take the index's lock, which a search or
   * an add may hold for long. admin_seq numbers the counts (under
   * admin_lock) so that a count taken earlier never replaces a later one
   * whose job completed first (index_vectors_seq, loop). */
  uint64_t index_vectors, index_vectors_seq, admin_seq;
  metrics m;
  /* Search micro-batching (search.c): requests waiting for the one search
   * job in flight. */
  search_req *search_queue, *search_tail;
  int search_running;
  uv_work_t search_work;
  double search_job_s;       /* the last job's index search time (search.c) */
  search_req *search_batch;  /* the requests the running job serves */
  size_t search_held;        /* queries queued or in the running job (cfg.search_budget) */
  void (*omp_set_num_threads)(int); /* from the OpenMP runtime FAISS uses, if loaded */
  /* Memory reads (readbuf.c). With io_uring they run on the loop:
   * completions signal aio's eventfd, polled by aio_poll, and each memory
   * is sent as soon as its read completes. Without (pread, or calls that
   * want chunk texts from the catalog) a call's reads run as threadpool
   * jobs (fetch.c). */
  m3_store_aio *aio;         /* NULL: every fetch on the threadpool */
  uv_poll_t aio_poll;
  uv_timer_t aio_retry;      /* a writer held the store: submit again soon */
  int aio_busy;
  int splice;                /* memories go out with sendfile (readbuf.c) */
  rb_reads *flush;           /* reads done whose memories are not yet sent */
  /* Read buffers, one memory each, shared by all calls: at most
   * fetch_memory bytes of them (so a burst of large calls waits for memory
   * instead of allocating without bound). Calls wait for buffers in
   * fetch_queue, oldest first. */
  size_t buf_cap;            /* m3_store_fetch_cap */
  size_t bufs_max, bufs_out; /* budget in buffers; buffers lent out */
  size_t bufs_peak;          /* most ever lent out at once */
  unsigned borrowers;        /* connections with buffers lent (conn.lent > 0) */
  void **bufs;               /* free buffers */
  size_t nbufs;
  rb_reads *fetch_queue, *fetch_tail;
  size_t fetch_waiting;      /* calls in fetch_queue */
  /* fetch.c's send arrays, grown as needed (the loop thread only). */
  struct {
    size_t *ends, *att_lens;
    const void **atts;
    const struct m3_span **spans; /* NULL: from memory */
    void **back;
    size_t cap;
  } send;
} server;

/* http.c */
int http_start(server *s);
/* Close every open HTTP connection (at exit: their memory is freed in the
 * close callbacks). */
void http_close_all(server *s);

/* CLOCK_MONOTONIC in ns (conn.c). */
uint64_t now_ns(void);

#endif /* M3_SERVER_H */
