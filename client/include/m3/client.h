/*
 * libm3client: an inference worker's connection to one m3-server.
 *
 * One m3_client is one TCP connection that has passed the Hello handshake
 * (protocol version, token, codec fingerprint; docs/PROTOCOL.md). Calls are
 * synchronous: each sends a REQUEST on a fresh stream id, waits for its
 * answer until the call's deadline, and returns. Retrieve and Fetch stream
 * their memories to a callback as they arrive, so the worker can decode one
 * memory while the next is still on the wire; the record bytes are read into
 * one reusable buffer and never copied through protobuf.
 *
 * Integrity: every streamed memory's CRC32C (Memory.payload_crc) is checked
 * and its record header parsed (m3_record_parse, M3_PARSE_MEM) before the
 * callback sees it; a memory that fails either reaches the callback with
 * status M3_ECORRUPT (gRPC DATA_LOSS) and no data, never as data.
 *
 * Threads: an m3_client is not thread-safe; use one per thread (connections
 * are cheap), or serialise calls on it.
 *
 * Errors: every call returns 0 or a negative m3 code (m3/error.h), and
 * m3_client_last_status() gives the gRPC status code and message of the last
 * call. The m3 code comes from the status table (m3_err_from_wire(),
 * m3/status.h; the whole table is in docs/PROTOCOL.md):
 *
 *   OK                  0
 *   INVALID_ARGUMENT    M3_EINVAL
 *   RESOURCE_EXHAUSTED  M3_ENOMEM         (M3_ENOSPC when the server names it:
 *                                          out of disk space)
 *   NOT_FOUND           M3_ENOTFOUND
 *   DATA_LOSS           M3_ECORRUPT
 *   FAILED_PRECONDITION M3_EFINGERPRINT   (fingerprint or version refused)
 *   UNIMPLEMENTED       M3_EUNSUPPORTED   ALREADY_EXISTS M3_EEXIST
 *   UNAVAILABLE         M3_EBUSY          (server draining or overloaded: retry)
 *   DEADLINE_EXCEEDED   M3_EBUSY          (no answer in time; retry)
 *   CANCELLED           M3_ECANCELED
 *   anything else       M3_EIO            (UNAUTHENTICATED, PERMISSION_DENIED,
 *                                          INTERNAL, UNKNOWN, ABORTED,
 *                                          OUT_OF_RANGE)
 *
 * Transport failures (connection refused or reset, the server closed the
 * connection, a frame that does not decode) return M3_EIO with the status
 * UNAVAILABLE; the connection is then broken (m3_client_ok() is 0) and every
 * later call fails at once: close it and connect again. After a GOAWAY
 * (server draining) the call in flight finishes and new calls fail with
 * UNAVAILABLE / M3_EBUSY. Messages (m3_errmsg() and the status message)
 * name the server address and the method.
 *
 * Deadlines: each call gets the client's call timeout (options, or
 * m3_client_set_timeout()); the REQUEST carries it to the server. When it
 * expires before the call ends the client sends CANCEL, forgets the stream
 * (its late frames are skipped by later calls) and returns M3_EBUSY with
 * DEADLINE_EXCEEDED; the connection stays usable.
 */
#ifndef M3_CLIENT_H
#define M3_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "m3/record.h"
#include "m3/spec.h"

typedef struct m3_client m3_client;

typedef struct m3_client_options {
  int connect_timeout_ms;     /* TCP connect plus Hello (5000) */
  int call_timeout_ms;        /* deadline of each call; 0: none (10000) */
  const char *token;          /* read or admin token; NULL: none. Borrowed
                                 for the duration of m3_client_connect. */
  uint64_t codec_fingerprint; /* the codec this worker decodes with (0) */
  int check_fingerprint;      /* ask the server to refuse a mismatch, and
                                 check its answer too (0) */
  const char *client_name;    /* shown in server logs ("libm3client");
                                 borrowed for the duration of connect */
  uint32_t max_frame_bytes;   /* largest frame accepted from the server
                                 (M3_FRAME_DEFAULT_MAX, 64 MiB) */
  /* TLS 1.3 (docs/CLIENT.md, TLS). All borrowed for the duration of
   * connect; NULL: unset. */
  const char *tls_ca;         /* PEM CA file: speak TLS and refuse a server
                                 whose certificate it did not sign; NULL:
                                 plain m3 */
  const char *tls_cert;       /* PEM client certificate (chain), for a server
                                 that requires one (mutual TLS); with tls_key */
  const char *tls_key;        /* its PEM private key */
  const char *tls_name;       /* the name the server's certificate must carry,
                                 also sent as SNI; NULL: the host of addr (a
                                 name, or an IP address checked as one) */
} m3_client_options;

/* Fill o with the defaults above. */
void m3_client_options_init(m3_client_options *o);

/* What the server announced in its HelloResponse. */
typedef struct m3_client_info {
  uint32_t protocol_version;
  m3_layout layout;          /* shape, codec, fingerprint, emb_dim of its memories */
  uint32_t memory_bytes;     /* bytes of one memory record as Fetch returns it */
  uint32_t max_frame_bytes;  /* Limits; 0 where the server sets none */
  uint32_t max_inflight_calls;
  uint32_t max_queries_per_call;
  uint32_t max_k;
  uint32_t max_ids_per_call;
  uint32_t idle_timeout_ms;
  uint64_t records;          /* memories the server held at Hello */
  int admin;                 /* the token grants Put and Delete */
  uint32_t shard;
  char server_name[64];
  char embedder[64];         /* how the store was embedded: "hash:DIM", "external",
                                "hidden:L", "unknown" ("" from an older server) */
} m3_client_info;

/*
 * Connect to addr ("host:port", "[v6addr]:port"; a name is resolved), set
 * TCP_NODELAY, and say Hello with o (NULL: defaults). On success *out owns
 * the connection; free it with m3_client_close(). On failure *out is NULL
 * and m3_errmsg() says what failed, naming addr: M3_EINVAL (bad address or
 * options, an unreadable TLS file), M3_EIO (refused, unreachable, Hello
 * refused for its token: the message carries UNAUTHENTICATED; with TLS: the
 * server's certificate did not verify (unknown CA, expired, hostname
 * mismatch: each said), it wants or refused our client certificate, or the
 * port does not speak TLS; without TLS on a TLS port: the server's answer
 * says so), M3_EFINGERPRINT (the server holds other
 * codebooks or speaks another protocol version), M3_EBUSY (no answer within
 * connect_timeout_ms, or the server is draining).
 */
int m3_client_connect(const char *addr, const m3_client_options *o, m3_client **out);

/* Close the connection and free. m3_client_close(NULL) does nothing. */
void m3_client_close(m3_client *c);

/* The server's Hello (owned by c, valid until m3_client_close). */
const m3_client_info *m3_client_info_get(const m3_client *c);

/* The address c was connected to (owned by c). */
const char *m3_client_address(const m3_client *c);

/* 1 while the connection can take calls; 0 after a transport failure or a
 * GOAWAY. */
int m3_client_ok(const m3_client *c);

/* Deadline of later calls in ms; 0: none. */
void m3_client_set_timeout(m3_client *c, int timeout_ms);

/*
 * The gRPC status code (m3.proto StatusCode, 0 = OK) of the last call, and
 * when msg is not NULL its message in *msg ("" when none; owned by c, valid
 * until the next call on c).
 */
int m3_client_last_status(const m3_client *c, const char **msg);

/* Bytes moved on this connection since connect (Hello included). */
typedef struct m3_client_counters {
  uint64_t bytes_read;    /* from the socket: headers, messages, attachments */
  uint64_t bytes_written;
  uint64_t frames_read;
  uint64_t calls;         /* calls started, Hello included */
} m3_client_counters;

void m3_client_counters_get(const m3_client *c, m3_client_counters *out);

/* ---- queries -------------------------------------------------------- */

/* A retrieval query: a dense vector in the server's embedding space
 * (dim == m3_client_info.layout.emb_dim), or text for the server's built-in
 * embedder when vector is NULL. Pointers are borrowed for the call. */
typedef struct m3_client_query {
  const float *vector; /* (dim) */
  uint32_t dim;
  const char *text;    /* NUL-terminated */
  int allow_fillers;   /* text: keep results scoring <= 0 (Query.allow_fillers;
                          0: the server drops them, fewer than k may come) */
} m3_client_query;

/* How hard the server's trained index searches (SearchRequest.params,
 * m3.proto): 0 leaves a field to the server (m3-server --index-params, else
 * FAISS's default). nprobe is for IVF indexes (1..nlist), ef_search for
 * HNSW (1..65536); a field the server's index does not take, or out of
 * range, fails the call with INVALID_ARGUMENT naming the field. */
typedef struct m3_search_params {
  uint32_t nprobe;
  uint32_t ef_search;
} m3_search_params;

/* The params later Search and Retrieve calls on c send (copied; NULL: none,
 * the server's setting). Like m3_client_set_timeout, not concurrently with
 * a call on c. */
void m3_client_set_search_params(m3_client *c, const m3_search_params *p);

/*
 * Search: the top-k chunk ids of each of nq queries, best first. Results go
 * to caller-owned arrays: ids and scores (nq, k), row q holding counts[q]
 * hits (fewer than k when the store holds fewer); the rest of each row is
 * UINT64_MAX / 0. Scores are cosine similarities.
 */
int m3_client_search(m3_client *c, const m3_client_query *queries, size_t nq, uint32_t k,
                     uint64_t *ids, float *scores, uint32_t *counts);

/* One streamed memory, as the callback sees it. Every pointer is owned by
 * the client and valid only during the callback: copy what you keep. */
typedef struct m3_client_memory {
  uint64_t chunk_id;
  uint32_t query;      /* Retrieve: index of the query; Fetch: index of the id */
  uint32_t rank;       /* Retrieve: rank within the query's top-k (0 = best) */
  float score;         /* Retrieve: cosine similarity */
  int status;          /* 0; or M3_ENOTFOUND / M3_ECORRUPT / another code for
                          this item alone: data and record are then NULL */
  int grpc_status;     /* the item's gRPC code (NOT_FOUND, DATA_LOSS, ...) */
  const char *error;   /* why the item failed; "" when status is 0 */
  const uint8_t *data; /* the record: header + positions + codes (len bytes),
                          CRC32C checked, header parsed */
  size_t len;
  const m3_record *record; /* data parsed (pointers into data) */
  const char *text;    /* chunk text when asked for (NUL-terminated), else "" */
  size_t text_len;
} m3_client_memory;

/* Called once per streamed memory, in arrival order. Returning non-zero
 * stops the call: the client sends CANCEL and the call returns that value
 * (status CANCELLED). */
typedef int (*m3_client_memory_fn)(void *ud, const m3_client_memory *m);

/*
 * Where a memory's record is to land (the caller's final buffer: its slot
 * of a round's staging buffer, say), so that its bytes go from the socket
 * straight there, with no copy through the client's buffers. Called once
 * per memory that carries a payload, after its Memory message arrived and
 * before any payload byte is read, with what the memory callback will see
 * as chunk_id, query and rank (already checked against the call: query <
 * the queries or ids asked, rank < k) and the payload's length. Return a
 * buffer of at least len bytes, 8-byte aligned, that stays the caller's,
 * or NULL to leave the memory in the client's own buffer. The client
 * writes only len bytes at it, during the call; the memory callback then
 * sees m->data == that buffer when m->status is 0. When the item fails
 * (DATA_LOSS: the CRC32C over the bytes as they landed did not match) the
 * callback gets the failure and the buffer's bytes are unspecified.
 * A misaligned buffer is not used (the memory stays in the client's).
 */
typedef void *(*m3_client_land_fn)(void *ud, uint64_t chunk_id, uint32_t query, uint32_t rank,
                                   size_t len);

/* Use fn (NULL: none, the default) for the memories of the Retrieve and
 * Fetch calls on c that follow. Like m3_client_set_timeout, not
 * concurrently with a call on c. */
void m3_client_set_landing(m3_client *c, m3_client_land_fn fn, void *ud);

/*
 * Retrieve: search, then stream the top-k memories of each of nq queries to
 * fn (nq * k calls at most; per query in rank order, queries interleaved as
 * the server reads them). Returns 0 when the stream ended OK, even if some
 * items failed alone (see m3_client_memory.status); otherwise the call's
 * code (after fn may have seen part of the answer).
 */
int m3_client_retrieve(m3_client *c, const m3_client_query *queries, size_t nq, uint32_t k,
                       int with_text, m3_client_memory_fn fn, void *ud);

/* Fetch: stream the memories of n chunk ids to fn (m.query is the index
 * into ids). A missing id is an item with status M3_ENOTFOUND. */
int m3_client_fetch(m3_client *c, const uint64_t *ids, size_t n, int with_text,
                    m3_client_memory_fn fn, void *ud);

/* ---- operations ----------------------------------------------------- */

#define M3_CLIENT_MAX_METHOD_STATS 16

typedef struct m3_client_stats {
  uint64_t records;
  uint64_t segment_bytes;
  uint64_t connections;
  uint64_t calls;
  uint64_t memories_served;
  uint64_t payload_bytes_served;
  uint64_t cache_hits;
  uint64_t cache_misses;
  uint64_t uptime_ms;
  uint64_t index_vectors;
  char index_factory[256];   /* the retrieval index's FAISS factory ("" without one) */
  char index_params[256];    /* the server's search params (--index-params; "": FAISS's) */
  char io_backend[16];
  char embedder[64];         /* as m3_client_info.embedder */
  size_t n_methods;
  struct {
    char method[32];
    uint64_t calls;
    uint64_t errors;
  } methods[M3_CLIENT_MAX_METHOD_STATS];
} m3_client_stats;

/* The server's counters into *out (caller-owned). */
int m3_client_stats_get(m3_client *c, m3_client_stats *out);

/* Health: *serving 1 or 0; detail (caller's buffer of cap bytes, may be
 * NULL) receives the server's explanation, NUL-terminated, truncated. */
int m3_client_health(m3_client *c, int *serving, char *detail, size_t cap);

/*
 * Admin Put: n complete m3 records (m3_record_encode, text and embedding
 * included) back to back in records, sizes[i] bytes each; sent as the
 * frame's attachment straight from the caller's buffer. *written (may be
 * NULL) receives how many the server stored. Needs an admin token
 * (otherwise PERMISSION_DENIED, M3_EIO).
 */
int m3_client_put(m3_client *c, const void *records, const uint32_t *sizes, size_t n,
                  uint32_t *written);

/* Admin Delete of n chunk ids; *deleted (may be NULL) gets how many existed. */
int m3_client_delete(m3_client *c, const uint64_t *ids, size_t n, uint32_t *deleted);

#endif /* M3_CLIENT_H */
