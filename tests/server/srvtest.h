/*
 * Helpers for the m3-server tests: real m3-server processes on loopback over
 * real stores written by `m3-bench gen`, spoken to with raw frames
 * (proto/include/m3/frame.h) rather than the client library, so that the
 * tests can send what a well-behaved client never would.
 *
 * A test typically: makes a scratch directory and a store in it
 * (st_gen_store), reads the reference data from the store before the server
 * opens it (st_ref_load: RocksDB allows one process), starts the server
 * (st_server_start, ports 0, --port-file), opens raw connections
 * (st_conn_open, st_hello), makes calls (st_call, or st_send + st_recv for
 * multiplexed ones), and stops the server with SIGTERM, checking that it
 * exits 0 (under ASan that includes LeakSanitizer's verdict).
 *
 * Scratch directories, clocks and random vectors come from tests/lib
 * (m3t_mkdtemp, m3t_now_ms, m3t_rand_unit ...). Everything fails the cmocka
 * test on unexpected errors and prints both sides of a comparison.
 */
#ifndef M3_SRVTEST_H
#define M3_SRVTEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

#include <cmocka.h>

#include "lib/m3test.h"
#include "m3/frame.h"
#include "m3/spec.h"

/* ---- assertions (both sides printed) --------------------------------- */

#define ST_EQ_U64(a, b)                                                             \
  do {                                                                              \
    unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b);  \
    if (a_ != b_) fail_msg("%s == %s: %llu != %llu", #a, #b, a_, b_);              \
  } while (0)

#define ST_EQ_STR(a, b)                                                             \
  do {                                                                              \
    const char *a_ = (a), *b_ = (b);                                                \
    if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0)                            \
      fail_msg("%s == %s: '%s' != '%s'", #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)"); \
  } while (0)

#define ST_CONTAINS(hay, needle)                                                    \
  do {                                                                              \
    const char *h_ = (hay), *n_ = (needle);                                         \
    if (h_ == NULL || strstr(h_, n_) == NULL)                                       \
      fail_msg("%s does not contain '%s': '%s'", #hay, n_, h_ ? h_ : "(null)");     \
  } while (0)

/* A call's gRPC status must be want; prints names and the server's message. */
#define ST_STATUS(res, want)                                                        \
  do {                                                                              \
    const st_result *r_ = &(res);                                                   \
    int w_ = (int)(want);                                                           \
    if (r_->status != w_)                                                           \
      fail_msg("%s: status %s (%d) \"%s\", want %s (%d)", #res,                     \
               m3_status_name(r_->status), r_->status, r_->message,                 \
               m3_status_name(w_), w_);                                             \
  } while (0)

/* ---- scratch space and processes ------------------------------------- */

/* Raise RLIMIT_NOFILE's soft limit to at least want (up to the hard limit);
 * returns the new soft limit. Children inherit it. */
long st_raise_nofile(long want);

/* Write a store of count memories (Memory3 shape, synthetic codes, chunk ids
 * 0..count-1, random unit embeddings of emb_dim) with `m3-bench gen`. */
void st_gen_store(const char *store, unsigned count, unsigned emb_dim);

/* A running m3-server. */
typedef struct st_server {
  pid_t pid;
  int rpc_port, http_port;
  char port_file[512];
  char log_path[512];
  int reaped;
  int wstatus;
} st_server;

/*
 * Start m3-server --store store --listen 127.0.0.1:0 --http 127.0.0.1:0
 * --port-file WORKDIR/ports.N plus args (NULL-terminated, may be NULL), with
 * env ("K=V", NULL-terminated, may be NULL) added to the environment; its
 * stderr goes to WORKDIR/server.N.log. Waits until the port file appears
 * (fails the test, printing the log, when the process exits first).
 */
void st_server_start(st_server *s, const char *workdir, const char *store,
                     const char *const *args, const char *const *env);

/* Run m3-server with exactly argv[1..] (argv[0] ignored) and env, stderr to
 * log_path, and return its pid: for tests of the command line itself. */
pid_t st_spawn_server(const char *const *argv, const char *const *env, const char *log_path);

/* Run m3-server with argv (as st_spawn_server, no env) and require that it
 * exits 2 within 30 s (what refused options and stores do); fails the test,
 * naming what (and printing stderr), otherwise. Returns its stderr
 * (malloc'ed). */
char *st_spawn_expect_exit2(const char *const *argv, const char *log_path, const char *what);

/* Wait up to timeout_ms for pid to exit; 1 and *wstatus when it did. */
int st_wait_pid(pid_t pid, int timeout_ms, int *wstatus);

/* Whether the server process is still running. */
int st_server_alive(st_server *s);

/* SIGTERM, then wait up to timeout_ms; fails the test (printing the log)
 * unless it exits with status 0. SIGKILLs it on timeout. */
void st_server_stop(st_server *s, int timeout_ms);

/* Wait up to timeout_ms for a server that is already stopping (no signal
 * sent: a second SIGTERM may kill it while it exits); fails the test unless
 * it exits with status 0. */
void st_server_expect_exit0(st_server *s, int timeout_ms);

/* SIGKILL and reap (cleanup after a failure path). */
void st_server_kill(st_server *s);

/* The server's VmRSS in KiB (from /proc/PID/status), or -1. */
long st_server_rss_kb(const st_server *s);

/* The server's stderr so far (malloc'ed, NUL-terminated). */
char *st_server_log(const st_server *s);

/* ---- raw protocol connections ---------------------------------------- */

typedef struct st_conn {
  int fd;
  uint8_t *buf; /* received, not yet returned as frames */
  size_t len, cap;
} st_conn;

/* Connect to 127.0.0.1:port (fails the test on error). */
void st_conn_open(st_conn *c, int port);
/* 0, or -errno when the connection could not be made. */
int st_conn_try_open(st_conn *c, int port);
void st_conn_close(st_conn *c);

/* Send bytes as they are (fails the test on error). */
void st_send_bytes(st_conn *c, const void *p, size_t n);

/* Encode a frame (header, packed msg, attachment) into a malloc'ed buffer;
 * *len gets its size. */
uint8_t *st_frame_build(uint8_t type, uint16_t method, uint32_t stream, uint32_t arg,
                        const ProtobufCMessage *msg, const void *att, size_t att_len,
                        size_t *len);

/* Build and send one frame. */
void st_send(st_conn *c, uint8_t type, uint16_t method, uint32_t stream, uint32_t arg,
             const ProtobufCMessage *msg, const void *att, size_t att_len);

/* A received frame: data holds msg_len message bytes then att_len attachment
 * bytes (malloc'ed; st_frame_free). */
typedef struct st_frame {
  m3_frame f;
  uint8_t *data;
} st_frame;

/*
 * Read the next frame, waiting up to timeout_ms. Returns 1 with *fr filled, 0
 * when the peer closed (EOF or reset) before a whole frame came, -1 on
 * timeout. A header that does not decode fails the test.
 */
int st_recv(st_conn *c, st_frame *fr, int timeout_ms);
void st_frame_free(st_frame *fr);

/* Wait up to timeout_ms for the server to close c, discarding frames (other
 * than GOAWAY, which are counted into *goaways when not NULL). 1: closed. */
int st_wait_closed(st_conn *c, int timeout_ms, int *goaways);

/* The end of one call. */
typedef struct st_result {
  uint16_t method;
  int status;            /* gRPC code: END's, or 0 for RESPONSE + FLAG_END */
  char message[512];     /* END's Status message */
  ProtobufCMessage *resp;/* unary: the unpacked response, else NULL */
  st_frame *items;       /* streaming: RESPONSE frames in arrival order */
  size_t n;
  int ended;
} st_result;

void st_result_free(st_result *r);

/* The Memory of a streamed item (unpacked, m3__memory__free_unpacked). */
M3__Memory *st_memory(const st_frame *fr);

/*
 * Read frames until the n calls on streams first..first+n-1 (methods[i]) have
 * all ended, sorting each frame into r[i]. A frame for another stream, or
 * none for timeout_ms, fails the test. GOAWAY frames are counted into
 * *goaways when not NULL (and fail the test otherwise).
 */
void st_collect(st_conn *c, uint32_t first, size_t n, const uint16_t *methods, st_result *r,
                int timeout_ms, int *goaways);

/* One call: send the request, collect its end into *r. */
void st_call(st_conn *c, uint16_t method, uint32_t stream, uint32_t timeout_ms,
             const ProtobufCMessage *req, const void *att, size_t att_len, st_result *r);

/* Hello with token (NULL: none); returns the status; *out (may be NULL)
 * receives the response on success (m3__hello_response__free_unpacked). */
int st_hello(st_conn *c, uint32_t stream, const char *token, M3__HelloResponse **out);

/* Hello that must succeed. */
void st_hello_ok(st_conn *c, uint32_t stream, const char *token);

/* A Search of nq vectors (nq * dim floats) that must succeed; the response
 * is the caller's to free (m3__search_response__free_unpacked). */
M3__SearchResponse *st_search_ok(st_conn *c, uint32_t stream, const float *q, unsigned nq,
                                 unsigned dim, unsigned k);

/* A Retrieve of nq vectors x top-k that must succeed with nq * k memories;
 * returns the milliseconds it took. */
long long st_retrieve_ok(st_conn *c, uint32_t stream, const float *q, unsigned nq, unsigned dim,
                         unsigned k);

/* Queries for a request: nq Query messages over vectors q (nq * dim floats),
 * pointing into q (st_queries_free frees the arrays, not q). */
M3__Query **st_queries(const float *q, unsigned nq, unsigned dim);
void st_queries_free(M3__Query **qs, unsigned nq);

/* ---- HTTP ------------------------------------------------------------- */

/* GET path from 127.0.0.1:port; returns the HTTP status code (fails the test
 * on a transport error); *body (may be NULL) receives the malloc'ed body. */
int st_http_get(int port, const char *path, char **body);

/* Send a raw request on a fresh connection and return the status code. */
int st_http_raw(int port, const char *request, char **body);

/* The value of the Prometheus sample `series` (a name with its labels exactly
 * as rendered, e.g. m3_calls_total{method="Search",status="OK"}). An absent
 * series fails the test, naming it, when present is NULL; otherwise *present
 * says whether it was there (0 returned when not: m3_calls_total renders only
 * the (method, status) pairs that moved). */
double st_metric(const char *text, const char *series, int *present);

/* GET /metrics from server s and return the sample `series`; an absent
 * series fails the test, naming it. */
double st_server_metric(const st_server *s, const char *series);

/* Check that every non-comment line is `name{labels} value` with a valid
 * metric name, well-formed labels and a number; fails the test naming the
 * line. Returns the number of samples. */
size_t st_metrics_check(const char *text);

/* ---- reference data read from the store itself ---------------------- */

typedef struct st_ref {
  m3_layout layout;
  size_t n;
  uint64_t *ids;      /* (n) in chunk id order */
  float *emb;         /* (n, dim) as stored */
  uint8_t **mem;      /* (n) record memory bytes, read from the segment files */
  size_t *mem_len;
  uint32_t *mem_crc;  /* the catalog's mem_crc: CRC32C of mem after its 64-byte header */
  char **text;        /* (n) chunk texts */
} st_ref;

/* Open store read-only (it must not be open elsewhere), read every record's
 * embedding, memory bytes (pread from its segment at m3_store_locate, not
 * through m3_store_fetch) and text, close it. */
void st_ref_load(st_ref *r, const char *store);
void st_ref_free(st_ref *r);
/* Index of chunk id in r, or -1. */
long st_ref_find(const st_ref *r, uint64_t id);

/* Exact cosine top-k of query q (dim floats) over r's embeddings, computed
 * in double: ids and scores (k each), by score descending then id ascending. */
void st_exact_topk(const st_ref *r, const float *q, unsigned k, uint64_t *ids, double *scores);
/* Exact cosine of q with r's embedding i. */
double st_cosine(const st_ref *r, const float *q, size_t i);

/* One complete record (deterministic codes) for chunk id in layout l with
 * embedding emb and text, as Put carries it; malloc'ed, *len its size. */
uint8_t *st_make_record(const m3_layout *l, uint64_t id, const float *emb, const char *text,
                        size_t *len);

/* m3_layout from a HelloResponse's Layout. */
m3_layout st_layout_from_hello(const M3__Layout *l);

#endif /* M3_SRVTEST_H */
