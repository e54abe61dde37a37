/*
 * libm3client, cluster part: one knowledge base split into shards by chunk
 * id, each shard served by several replicas (m3-server processes holding
 * the same shard store), used as if it were one server.
 *
 * Cluster map (a JSON file or string; the same map drives m3, m3-bench and
 * deploy/local/m3-cluster):
 *
 *   {
 *     "shards": [
 *       {"id": 0, "replicas": ["127.0.0.1:7600", "127.0.0.1:7610"]},
 *       {"id": 1, "replicas": ["127.0.0.1:7620", "127.0.0.1:7630"]}
 *     ],
 *     "token": "optional read token for every server",
 *     "codec_fingerprint": "73796e7468657469",     (optional, 16 hex digits)
 *     "tls": {"ca": "ca.pem", "cert": "client.pem", "key": "client.key",
 *             "name": "m3.example"}                (optional: TLS to every
 *                                                   replica; cert/key for
 *                                                   mutual TLS; name: the
 *                                                   name every server's
 *                                                   certificate must carry,
 *                                                   else each replica's host;
 *                                                   relative files are
 *                                                   relative to the map file)
 *   }
 *
 * Shard ids are 0..S-1, each exactly once (in any order); every shard has at
 * least one replica ("HOST:PORT", "[v6]:PORT"). Unknown keys are refused (a
 * typo is an error, not a silently ignored setting).
 *
 * Sharding rule (the only one, used by the client, the splitter
 * `m3 store split` and the launcher): chunk id c lives on shard
 * c % S (m3_cluster_shard_of). Every replica of shard s holds exactly the
 * chunks with c % S == s.
 *
 * Pool: per replica, up to max_conns_per_replica m3_client connections,
 * opened lazily on first use and kept idle for the next call. Each
 * m3_client is one synchronous connection; a call borrows one connection
 * for its duration, so calls from many threads run concurrently on
 * separate connections (the server multiplexes them per connection anyway,
 * and a pool of sync connections keeps the single-connection client simple
 * and lets a broken connection fail exactly the call that used it).
 *
 * Hello and layout check: every new connection says Hello. The cluster's
 * reference layout (shape, codec, code bytes, codec fingerprint, embedding
 * dims) is fixed once: by options.codec_fingerprint (check_fingerprint set;
 * the server also refuses a mismatch), else by the map's codec_fingerprint,
 * and for the rest by the first server in map order that answers. A server
 * whose layout or fingerprint differs is refused (M3_EFINGERPRINT, the
 * message names the server and its shard) and treated as a failed replica.
 *
 * Workers: the handle owns a fixed pool of threads (options.threads,
 * started by m3_cluster_open, joined by m3_cluster_close). A call hands
 * its per-shard work to the pool and runs one shard itself; while it waits
 * it takes back and runs the shards no worker has started, so no call ever
 * waits on the queue and a pool smaller than the work only serialises it.
 * Calls create no threads.
 *
 * A retrieval round (m3_cluster_retrieve): Search on every shard in
 * parallel (a job per shard on the pool, one replica each), merge to the
 * global top-k of each query (score descending, then chunk id ascending: the
 * server's index order, so the round equals what one unsharded store
 * gives), then Fetch the winners from their owning shards in parallel
 * (each distinct id once) and hand each memory to the callback tagged with
 * its query, rank and score. Payload CRC32C and record headers are checked
 * by the connection (m3/client.h) before the callback sees them.
 *
 * Failover: each call has one overall deadline (call_timeout_ms). On one
 * replica an attempt gets at most try_timeout_ms. A replica that errors
 * (transport failure, UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, DATA_LOSS,
 * refused at Hello) is marked down and the attempt moves on to the next
 * replica of the same shard while the deadline allows; a Fetch that fails
 * mid-stream resumes on the next replica with only the ids not yet
 * delivered, so the callback never sees a memory twice. Down replicas are
 * backed off (backoff_min_ms doubling per consecutive failure, capped at
 * backoff_max_ms) and probed again by a background thread (connect, Hello,
 * Health) when their backoff ends; a call uses them only when every other
 * replica of the shard has failed. Request errors (INVALID_ARGUMENT,
 * NOT_FOUND, UNIMPLEMENTED, UNAUTHENTICATED, PERMISSION_DENIED, ...) are the
 * same on every replica and end the call at once.
 *
 * Hedging (hedge_delay_ms > 0, shards with 2 replicas or more): a Search
 * or Fetch attempt on a shard that has not answered after hedge_delay_ms
 * is also sent to the next replica; the first complete answer wins. A
 * loser still waiting for its answer is interrupted (its connection is shut
 * and closed, freeing its worker at once; one still connecting ends within
 * connect_timeout_ms), and its replica, not failed, is tried after the
 * others for a backoff (backoff_min_ms doubling per race it loses in a row,
 * up to backoff_max_ms; an answer ends it): a replica gone slow stops
 * taking first attempts instead of costing every call the hedge delay.
 * Each attempt runs on a pool thread; when every pool thread is busy, the
 * shard's job runs the attempt itself and cannot hedge it. With hedging
 * on, a Fetch attempt copies each memory
 * it receives into a buffer and the callback gets the winner's copies once
 * it has finished (so no memory reaches the callback twice): hedged Fetch
 * costs one copy of each memory and delivers a shard's memories only when
 * its whole answer is in, instead of as they arrive. Items that failed
 * alone on the winner (bad bytes) are then asked of the other replicas, as
 * without hedging. counters.hedges counts the second attempts sent.
 *
 * Errors: 0 or a negative m3 code. When every replica of a shard failed,
 * the call fails with M3_EBUSY and gRPC status UNAVAILABLE, and the message
 * names the shard and each replica's error ("shard 1 unavailable: all 2
 * replicas failed: ADDR: why; ADDR: why");
 * when the deadline ran out, M3_EBUSY with DEADLINE_EXCEEDED; when every
 * replica of a shard was refused for its layout, M3_EFINGERPRINT
 * (FAILED_PRECONDITION). A failed call is never a partial answer: if it
 * fails in the search phase the callback has seen nothing; if it fails in
 * the fetch phase the callback may have seen some memories, and the non-zero
 * return says the round is incomplete. A server whose answer breaks the
 * protocol (a Fetch item whose Memory.query is not an index of the ids
 * asked, or that carries a Memory.rank) is a failed replica, as one that
 * does not answer: its connection is closed and the call moves on; its
 * error says "protocol error". How a call ended travels as fields, not
 * only as text: m3_cluster_last_error() (per thread; async ops: their
 * m3_cluster_result) gives the code, the gRPC status, the shard and the
 * replica that decided it, and the message; m3_errmsg() holds the message
 * too.
 *
 * Threads: an m3_cluster is thread-safe: any number of threads may call it
 * at once. Callbacks of one sync call run on the calling thread or the
 * cluster's worker threads, one at a time (serialised by the call), never
 * after the call returned.
 *
 * Async calls (m3_cluster_search_async, _retrieve_async, _fetch_async):
 * the call copies its request (queries with their vectors and texts, ids)
 * and returns at once; the caller may free its arrays then. The op runs on
 * the worker pool like a sync call (same failover, hedging and results; its
 * deadline, call_timeout_ms, counts from submission), and completes in the
 * mode options.completion chose for the handle:
 *
 *   M3_CLUSTER_COMPLETION_CALLBACK (default): the memory callback and then
 *   the done callback run on the cluster's worker threads. The memory
 *   callbacks of one op are serialised and all run before its done
 *   callback; different ops run concurrently.
 *
 *   M3_CLUSTER_COMPLETION_DISPATCH (loop integration): each memory is
 *   copied into a per-cluster queue as it arrives (record bytes, text,
 *   error and parsed header: m.data and m.record point into the copy), and
 *   m3_cluster_event_fd() becomes readable while the queue is not empty.
 *   The application calls m3_cluster_dispatch() on its own thread (an event
 *   loop's, e.g. a libuv uv_poll_t on that fd): it runs the queued memory
 *   callbacks and done callbacks there, in arrival order, a memory of an op
 *   always before its done. The copies live until dispatched: a loop that
 *   does not dispatch lets them pile up.
 *
 * Every successfully submitted op gets exactly one done callback, with
 * what the sync call would have returned (m3_cluster_result); a submission
 * that fails returns its code and never calls back (no done either).
 * Cancel (m3_cluster_op_cancel) is best effort: no memory callback starts
 * after it returned (in dispatch mode, queued memories are dropped); a
 * shard request in flight is not interrupted (it ends at its next memory,
 * or within try_timeout_ms) but no new one starts; an op not started yet
 * does nothing. If the cancel came before the done callback started, done
 * reports rc M3_ECANCELED with status 1 (CANCELLED) and a message starting
 * "cancelled", even if every memory had been delivered. A memory
 * callback returning non-zero stops its op the same way, and done gets
 * that value.
 *
 * Ops and memory: m3_cluster_op is a handle the caller asked for (op_out
 * not NULL) and must give back with m3_cluster_op_free, before or after
 * the op completed (even after m3_cluster_close); the op itself is freed
 * when it is both completed (done callback returned) and given back.
 * m3_cluster_op_cancel is safe on any op not yet given back, also after
 * its done callback ran (then it does nothing).
 *
 * m3_cluster_close with ops outstanding cancels them, waits until the
 * workers finished them, and, in dispatch mode, runs the done callbacks
 * still queued on the closing thread (their memories are dropped): every
 * op has had its done callback when close returns. No callback may call
 * m3_cluster_close; async submissions during close fail with M3_EBUSY.
 */
#ifndef M3_CLUSTER_H
#define M3_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include "m3/client.h"
#include "m3/shard.h"

/* ---- cluster map ---------------------------------------------------- */

typedef struct m3_cluster_map m3_cluster_map;

/* The sharding rule: the shard that owns chunk_id among n_shards. */
static inline uint32_t m3_cluster_shard_of(uint64_t chunk_id, uint32_t n_shards) {
  return m3_shard_of(chunk_id, n_shards); /* m3/shard.h */
}

/*
 * Parse a cluster map from the file at path, or from the NUL-terminated
 * json (named `name` in messages; NULL: "<string>"). On success *out owns
 * the map (m3_cluster_map_free). Errors: M3_ENOTFOUND / M3_EIO (file),
 * M3_EBADFORMAT (not JSON: the message gives file, line and column),
 * M3_EINVAL (a field is missing or wrong: the message names the file and
 * the field, e.g. "cluster.json: shards[1].replicas[0]: ...").
 */
int m3_cluster_map_load(const char *path, m3_cluster_map **out);
int m3_cluster_map_parse(const char *json, const char *name, m3_cluster_map **out);
void m3_cluster_map_free(m3_cluster_map *m);

/* Accessors; strings are owned by the map. replica() returns NULL out of
 * range; token() NULL when the map sets none; *fp 0 and returns 0 when the
 * map sets no codec_fingerprint (1 when it does). */
uint32_t m3_cluster_map_shards(const m3_cluster_map *m);
uint32_t m3_cluster_map_replicas(const m3_cluster_map *m, uint32_t shard);
const char *m3_cluster_map_replica(const m3_cluster_map *m, uint32_t shard, uint32_t replica);
const char *m3_cluster_map_token(const m3_cluster_map *m);
/* The map's "tls" object into o's tls_ca, tls_cert, tls_key, tls_name
 * (pointers owned by m; fields the map leaves out untouched); returns
 * whether the map has one. For tools that dial the map's replicas one by
 * one (m3 stats --cluster). */
int m3_cluster_map_tls(const m3_cluster_map *m, struct m3_client_options *o);
int m3_cluster_map_fingerprint(const m3_cluster_map *m, uint64_t *fp);

/* ---- the cluster handle --------------------------------------------- */

typedef struct m3_cluster m3_cluster;

typedef struct m3_cluster_options {
  int connect_timeout_ms;    /* TCP connect plus Hello, per attempt (2000) */
  int call_timeout_ms;       /* overall deadline of each call, search and
                                fetch and every failover included (10000) */
  int try_timeout_ms;        /* most one replica gets within a call (3000) */
  int hedge_delay_ms;        /* Search and Fetch: also ask the next replica
                                after this long without an answer; 0: off (0) */
  int max_conns_per_replica; /* pooled connections per replica; callers
                                beyond wait for one (16) */
  int backoff_min_ms;        /* first backoff of a failed replica (100) */
  int backoff_max_ms;        /* backoff cap (5000) */
  int probe_interval_ms;     /* how often the prober looks for replicas whose
                                backoff ended; 0: no prober, calls retry
                                them when the backoff ends (100) */
  const char *token;         /* NULL: the map's token; borrowed for open */
  uint64_t codec_fingerprint;/* with check_fingerprint: the codec this
                                worker decodes with (0) */
  int check_fingerprint;     /* (0) */
  const char *client_name;   /* ("libm3client cluster"); borrowed for open */
  int threads;               /* worker threads running the shards' work of
                                every call and the async ops; 0: 2 x shards,
                                3 x shards with hedging, at least 2 (0) */
  int completion;            /* m3_cluster_completion: how async ops
                                complete (M3_CLUSTER_COMPLETION_CALLBACK) */
  /* TLS to every replica (m3_client_options.tls_*); tls_ca set: these
   * files instead of the map's "tls" object; tls_name overrides the
   * map's name. Borrowed for open. */
  const char *tls_ca, *tls_cert, *tls_key, *tls_name;
} m3_cluster_options;

/* How async ops deliver their memories and completion (see the top). */
typedef enum m3_cluster_completion {
  M3_CLUSTER_COMPLETION_CALLBACK = 0, /* on the cluster's worker threads */
  M3_CLUSTER_COMPLETION_DISPATCH = 1, /* queued; m3_cluster_dispatch runs them */
} m3_cluster_completion;

void m3_cluster_options_init(m3_cluster_options *o);

/*
 * Make a cluster handle for map with o (NULL: defaults). The map and the
 * options' strings are copied: the caller may free them afterwards. Opens
 * no connection (they are made on first use) but starts the prober thread.
 * On success *out owns the handle; m3_cluster_close() frees it.
 */
int m3_cluster_open(const m3_cluster_map *map, const m3_cluster_options *o, m3_cluster **out);

/* Cancel and finish the async ops (their done callbacks all run, see the
 * top), stop the prober and the workers (abandoned hedged attempts finish
 * first, within try_timeout_ms), close every connection and the event fd,
 * free. No sync call may be running, and no callback may call it.
 * m3_cluster_close(NULL) does nothing. */
void m3_cluster_close(m3_cluster *cl);

uint32_t m3_cluster_shards(const m3_cluster *cl);

/*
 * The reference server's Hello (layout, emb_dim, limits) into *out,
 * connecting if no server has answered yet. M3_EBUSY when none answers.
 */
int m3_cluster_info(m3_cluster *cl, m3_client_info *out);

/*
 * Say Hello to every replica (a connection each, kept in the pool).
 * Returns 0 when all answer with the reference layout; otherwise the code
 * of the first failing replica in map order (M3_EFINGERPRINT for a refused
 * layout; its shard and replica in m3_cluster_last_error()), and
 * m3_errmsg() lists each failing replica with its shard.
 * Failing replicas are marked down as a call would mark them.
 */
int m3_cluster_check(m3_cluster *cl);

/* How an m3_cluster call ended: the error as fields. */
typedef struct m3_cluster_error {
  int rc;         /* what the call returned: 0, an m3 code, or the memory
                     callback's non-zero value */
  int status;     /* gRPC status (m3.proto StatusCode): 0 OK, 1 CANCELLED,
                     4 DEADLINE_EXCEEDED, 9 FAILED_PRECONDITION, 14
                     UNAVAILABLE, or the server's own for a request error */
  int shard;      /* the shard that failed the call; -1 when none did (ok,
                     stopped, cancelled, bad arguments, no server answering
                     for the reference layout) */
  int replica;    /* index in that shard's replicas (the map's order) of
                     the replica whose error decided it: the one that gave
                     a request error, or the last one that failed when all
                     did; -1 when no replica's error did (the deadline
                     passed with none tried, out of memory) */
  char addr[256]; /* that replica's "HOST:PORT"; "" when replica is -1 */
  char msg[1024]; /* why; "" on success. Lists each replica's error when
                     every replica of the shard failed */
} m3_cluster_error;

/*
 * The error of the last m3_cluster call (search, retrieve, fetch, check)
 * made by this thread: owned by the thread, valid (and unchanged) until
 * its next m3_cluster call. Never NULL; before any call, rc 0 and shard
 * and replica -1.
 */
const m3_cluster_error *m3_cluster_last_error(void);

/*
 * The same, as the gRPC status (m3_cluster_last_error()->status); *shard
 * (may be NULL) its shard; *msg (may be NULL) its message.
 */
int m3_cluster_last_status(int *shard, const char **msg);

/* ---- calls ---------------------------------------------------------- */

/*
 * Global top-k of each of nq queries over all shards (search phase of a
 * round, no payloads): caller-owned ids and scores (nq, k), counts (nq), as
 * m3_client_search fills them.
 */
/*
 * The search params (m3_search_params, client.h) that calls started after
 * this one send with each shard's Search (sync and async search and
 * retrieve); NULL: none, each server's setting. Safe to call while other
 * threads make calls: each call reads the params once when it starts (an
 * async one when it is submitted).
 */
void m3_cluster_set_search_params(m3_cluster *cl, const m3_search_params *p);

int m3_cluster_search(m3_cluster *cl, const m3_client_query *queries, size_t nq, uint32_t k,
                      uint64_t *ids, float *scores, uint32_t *counts);

/*
 * A retrieval round: the global top-k memories of each of nq queries to fn,
 * each tagged m.query (index of the query), m.rank (0 = best, global) and
 * m.score; nq * k calls of fn at most (fewer when the knowledge base holds
 * fewer than k chunks). An id that is the answer of several queries is
 * fetched once and handed to fn once per (query, rank). Items can fail
 * alone (m.status, e.g. M3_ENOTFOUND when deleted between search and fetch,
 * or M3_ECORRUPT when no replica had good bytes), as in m3_client_retrieve.
 * Returns 0 when every shard answered; fn returning non-zero stops the call
 * and is returned. Pointers in m are valid during the callback only.
 */
int m3_cluster_retrieve(m3_cluster *cl, const m3_client_query *queries, size_t nq, uint32_t k,
                        int with_text, m3_client_memory_fn fn, void *ud);

/*
 * Fetch n chunk ids from their owning shards to fn (m.query is the index in
 * ids; a duplicate id is fetched once and delivered for each index). A
 * missing id is an item with status M3_ENOTFOUND.
 */
int m3_cluster_fetch(m3_cluster *cl, const uint64_t *ids, size_t n, int with_text,
                     m3_client_memory_fn fn, void *ud);

/*
 * m3_cluster_retrieve and m3_cluster_fetch whose memories are received
 * straight into the caller's buffers: land(ud, ...) names the buffer of
 * each memory as m3_client_land_fn says (query, rank: the first slot the
 * memory is delivered to; a memory delivered to several slots arrives in
 * the first one's buffer and fn sees that buffer for each). land may run
 * on several worker threads at once, each time for a different (query,
 * rank). A shard raced over its replicas (hedge_delay_ms) delivers the
 * winner's copies instead (land is not called for them).
 */
int m3_cluster_retrieve_into(m3_cluster *cl, const m3_client_query *queries, size_t nq,
                             uint32_t k, int with_text, m3_client_land_fn land,
                             m3_client_memory_fn fn, void *ud);
int m3_cluster_fetch_into(m3_cluster *cl, const uint64_t *ids, size_t n, int with_text,
                          m3_client_land_fn land, m3_client_memory_fn fn, void *ud);

/* ---- async calls ---------------------------------------------------- */

typedef struct m3_cluster_op m3_cluster_op;

/* How an async op ended, for its done callback; every pointer is owned by
 * the op and valid during the callback only. */
typedef struct m3_cluster_result {
  int rc;                 /* what the sync call returns: 0, an m3 code, or
                             the memory callback's non-zero value */
  int status;             /* gRPC status, as m3_cluster_last_status */
  int shard;              /* the shard that failed the op, or -1 */
  int replica;            /* the replica that decided it, or -1; addr its
                             "HOST:PORT" or "" (as m3_cluster_error) */
  const char *addr;
  const char *msg;        /* why it failed; "" on success */
  /* m3_cluster_search_async (NULL for the others): the global top-k as
   * m3_cluster_search fills its arrays, ids and scores (nq, k), counts (nq);
   * only meaningful when rc is 0 */
  const uint64_t *ids;
  const float *scores;
  const uint32_t *counts;
  size_t nq;
  uint32_t k;
} m3_cluster_result;

/* Called once per op, after its last memory callback. */
typedef void (*m3_cluster_done_fn)(void *ud, const m3_cluster_result *res);

/*
 * The async forms of m3_cluster_retrieve, m3_cluster_fetch and
 * m3_cluster_search: same arguments and results (fn gets the same memories
 * tagged the same way), delivered as options.completion says (see the top);
 * done (may be NULL) and fn get ud. The request (queries with their vector
 * and text, ids) is copied: the caller's arrays are free to go when the
 * call returns. op_out (may be NULL: no handle, no cancel) receives a handle
 * the caller must give back with m3_cluster_op_free.
 * Returns 0 when the op was queued; otherwise an m3 code and nothing is
 * called back: M3_EINVAL (no queries, k 0, no ids, no fn), M3_ENOMEM,
 * M3_EBUSY (the cluster is closing).
 */
int m3_cluster_retrieve_async(m3_cluster *cl, const m3_client_query *queries, size_t nq,
                              uint32_t k, int with_text, m3_client_memory_fn fn,
                              m3_cluster_done_fn done, void *ud, m3_cluster_op **op_out);
int m3_cluster_fetch_async(m3_cluster *cl, const uint64_t *ids, size_t n, int with_text,
                           m3_client_memory_fn fn, m3_cluster_done_fn done, void *ud,
                           m3_cluster_op **op_out);
int m3_cluster_search_async(m3_cluster *cl, const m3_client_query *queries, size_t nq,
                            uint32_t k, m3_cluster_done_fn done, void *ud,
                            m3_cluster_op **op_out);

/* Best effort cancel (see the top): thread-safe, from any thread or
 * callback, any time before m3_cluster_op_free; a no-op once done ran. */
void m3_cluster_op_cancel(m3_cluster_op *op);

/* Give back the caller's handle; the op is freed once it has also
 * completed. Does not cancel. m3_cluster_op_free(NULL) does nothing. */
void m3_cluster_op_free(m3_cluster_op *op);

/*
 * Dispatch mode: the eventfd (non-blocking, close-on-exec, owned by the
 * cluster, closed by m3_cluster_close) that is readable while completions
 * wait; watch it for reading in the application's loop. M3_EINVAL in
 * callback mode.
 */
int m3_cluster_event_fd(m3_cluster *cl);

/*
 * Dispatch mode: run the completions queued now (memory callbacks, done
 * callbacks) on this thread, and clear the event fd's readiness. Returns
 * how many callbacks ran (0 when nothing waited), M3_EINVAL in callback
 * mode, M3_EBUSY when another thread is dispatching or when called from a
 * dispatched callback (one dispatcher at a time keeps an op's callbacks
 * serialised).
 */
int m3_cluster_dispatch(m3_cluster *cl);

/* ---- observation ---------------------------------------------------- */

typedef struct m3_cluster_replica_info {
  char addr[256];
  int up;               /* 0 while backed off after a failure */
  unsigned failures;    /* consecutive failures */
  int backoff_ms_left;  /* 0 when up */
  unsigned open_conns;  /* idle plus in use */
  uint64_t calls, errors;
  char last_error[256]; /* "" when none */
} m3_cluster_replica_info;

/* State of one replica into *out. M3_EINVAL out of range. */
int m3_cluster_replica_get(m3_cluster *cl, uint32_t shard, uint32_t replica,
                           m3_cluster_replica_info *out);

typedef struct m3_cluster_counters {
  uint64_t calls;       /* search, retrieve and fetch calls, async included */
  uint64_t failed;      /* calls that returned an error (not callback stops) */
  uint64_t failovers;   /* attempts moved to another replica */
  uint64_t hedges;      /* hedged second attempts sent */
  uint64_t connects;    /* connections opened (Hello passed) */
  uint64_t probes, probes_ok;
  uint64_t bytes_read;  /* from sockets, all connections (returned ones) */
} m3_cluster_counters;

void m3_cluster_counters_get(m3_cluster *cl, m3_cluster_counters *out);

#endif /* M3_CLUSTER_H */
