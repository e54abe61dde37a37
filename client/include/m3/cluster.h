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
 *     "codec_fingerprint": "73796e7468657469"      (optional, 16 hex digits)
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
 * A retrieval round (m3_cluster_retrieve): Search on every shard in
 * parallel (one thread per shard, one replica each), merge to the global
 * top-k of each query (score descending, then chunk id ascending: the
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
 * Hedging (hedge_delay_ms > 0): a Search attempt that has not answered
 * after hedge_delay_ms is also sent to the next replica; the first answer
 * wins and the other is abandoned (it finishes on its own connection
 * within try_timeout_ms and the connection goes back to the pool).
 *
 * Errors: 0 or a negative m3 code. When every replica of a shard failed,
 * the call fails with M3_EBUSY and gRPC status UNAVAILABLE, and the message
 * names the shard and each replica's error ("shard 1 unavailable: ...");
 * when the deadline ran out, M3_EBUSY with DEADLINE_EXCEEDED; when every
 * replica of a shard was refused for its layout, M3_EFINGERPRINT
 * (FAILED_PRECONDITION). A failed call is never a partial answer: if it
 * fails in the search phase the callback has seen nothing; if it fails in
 * the fetch phase the callback may have seen some memories, and the non-zero
 * return says the round is incomplete. m3_errmsg() and
 * m3_cluster_last_status() (per thread) hold the message.
 *
 * Threads: an m3_cluster is thread-safe: any number of threads may call it
 * at once. Callbacks of one call run on the cluster's per-shard threads,
 * one at a time (serialised by the call), never after the call returned.
 */
#ifndef M3_CLUSTER_H
#define M3_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include "m3/client.h"

/* ---- cluster map ---------------------------------------------------- */

typedef struct m3_cluster_map m3_cluster_map;

/* The sharding rule: the shard that owns chunk_id among n_shards. */
static inline uint32_t m3_cluster_shard_of(uint64_t chunk_id, uint32_t n_shards) {
  return (uint32_t)(chunk_id % n_shards);
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
int m3_cluster_map_fingerprint(const m3_cluster_map *m, uint64_t *fp);

/* ---- the cluster handle --------------------------------------------- */

typedef struct m3_cluster m3_cluster;

typedef struct m3_cluster_options {
  int connect_timeout_ms;    /* TCP connect plus Hello, per attempt (2000) */
  int call_timeout_ms;       /* overall deadline of each call, search and
                                fetch and every failover included (10000) */
  int try_timeout_ms;        /* most one replica gets within a call (3000) */
  int hedge_delay_ms;        /* Search: also ask the next replica after this
                                long without an answer; 0: off (0) */
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
} m3_cluster_options;

void m3_cluster_options_init(m3_cluster_options *o);

/*
 * Make a cluster handle for map with o (NULL: defaults). The map and the
 * options' strings are copied: the caller may free them afterwards. Opens
 * no connection (they are made on first use) but starts the prober thread.
 * On success *out owns the handle; m3_cluster_close() frees it.
 */
int m3_cluster_open(const m3_cluster_map *map, const m3_cluster_options *o, m3_cluster **out);

/* Stop the prober, close every connection, free. No call may be running.
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
 * layout), and m3_errmsg() lists each failing replica with its shard.
 * Failing replicas are marked down as a call would mark them.
 */
int m3_cluster_check(m3_cluster *cl);

/*
 * The gRPC status (m3.proto StatusCode; 0 OK, 14 UNAVAILABLE, ...) of the
 * last m3_cluster call made by this thread; *shard (may be NULL) the shard
 * that failed it or -1; *msg (may be NULL) its message, owned by the
 * thread, valid until its next m3_cluster call.
 */
int m3_cluster_last_status(int *shard, const char **msg);

/* ---- calls ---------------------------------------------------------- */

/*
 * Global top-k of each of nq queries over all shards (search phase of a
 * round, no payloads): caller-owned ids and scores (nq, k), counts (nq), as
 * m3_client_search fills them.
 */
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
  uint64_t calls;       /* search, retrieve and fetch calls */
  uint64_t failed;      /* calls that returned an error (not callback stops) */
  uint64_t failovers;   /* attempts moved to another replica */
  uint64_t hedges;      /* hedged second attempts sent */
  uint64_t connects;    /* connections opened (Hello passed) */
  uint64_t probes, probes_ok;
  uint64_t bytes_read;  /* from sockets, all connections (returned ones) */
} m3_cluster_counters;

void m3_cluster_counters_get(m3_cluster *cl, m3_cluster_counters *out);

#endif /* M3_CLUSTER_H */
