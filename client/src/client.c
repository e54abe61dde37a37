/*
 * libm3client's calls: Hello at connect, then Search, Retrieve, Fetch,
 * Stats, Health, Put and Delete, each one synchronous call on the
 * connection (client_conn.c). Streamed memories are checked here (payload
 * CRC32C, record header, chunk id, layout) before the caller sees them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client_int.h"
#include "m3/crc32c.h"
#include "m3/error.h"
#include "m3/log.h"

void m3_client_options_init(m3_client_options *o) {
  memset(o, 0, sizeof *o);
  o->connect_timeout_ms = 5000;
  o->call_timeout_ms = 10000;
  o->client_name = "libm3client";
  o->max_frame_bytes = M3_FRAME_DEFAULT_MAX;
}

const m3_client_info *m3_client_info_get(const m3_client *c) { return &c->info; }
const char *m3_client_address(const m3_client *c) { return c->addr; }
int m3_client_ok(const m3_client *c) { return !c->broken && !c->goaway; }
void m3_client_set_timeout(m3_client *c, int timeout_ms) {
  c->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
}

void m3_client_set_landing(m3_client *c, m3_client_land_fn fn, void *ud) {
  c->land = fn;
  c->land_ud = fn ? ud : NULL;
}

void m3_client_set_search_params(m3_client *c, const m3_search_params *p) {
  if (p) c->params = *p;
  else memset(&c->params, 0, sizeof c->params);
}

/* The IndexParams of a Search or Retrieve: NULL when every field is 0 (the
 * message stays as an older client sent it). */
static M3__IndexParams *index_params(m3_client *c, M3__IndexParams *out) {
  if (c->params.nprobe == 0 && c->params.ef_search == 0) return NULL;
  m3__index_params__init(out);
  out->nprobe = c->params.nprobe;
  out->ef_search = c->params.ef_search;
  return out;
}

int m3_client_last_status(const m3_client *c, const char **msg) {
  if (msg) *msg = c->last_msg;
  return c->last_status;
}

void m3_client_counters_get(const m3_client *c, m3_client_counters *out) { *out = c->ctr; }

static void copy_str(char *dst, size_t cap, const char *src) {
  if (cap == 0) return;
  snprintf(dst, cap, "%s", src ? src : "");
}

/* ---- Hello ---------------------------------------------------------- */

static int on_hello(void *ud, const ProtobufCMessage *msg, const uint8_t *att, size_t att_len) {
  m3_client *c = ud;
  const M3__HelloResponse *h = (const M3__HelloResponse *)msg;
  m3_client_info *i = &c->info;
  i->protocol_version = h->protocol_version;
  if (h->layout) {
    const M3__Layout *l = h->layout;
    i->layout.spec = (m3_spec){(uint16_t)l->n_layers, (uint16_t)l->n_kv_heads,
                               (uint16_t)l->n_tokens, (uint16_t)l->head_dim};
    i->layout.codec_kind = (uint16_t)l->codec_kind;
    i->layout.code_bytes = (uint16_t)l->code_bytes;
    i->layout.codec_fp = l->codec_fingerprint;
    i->layout.emb_dim = (uint16_t)l->embedding_dim;
    i->memory_bytes = l->memory_bytes;
  }
  if (h->limits) {
    const M3__Limits *l = h->limits;
    i->max_frame_bytes = l->max_frame_bytes;
    i->max_inflight_calls = l->max_inflight_calls;
    i->max_queries_per_call = l->max_queries_per_call;
    i->max_k = l->max_k;
    i->max_ids_per_call = l->max_ids_per_call;
    i->idle_timeout_ms = l->idle_timeout_ms;
  }
  i->records = h->records;
  i->admin = h->admin;
  i->shard = h->shard;
  copy_str(i->server_name, sizeof i->server_name, h->server_name);
  copy_str(i->embedder, sizeof i->embedder, h->embedder);
  return 0;
}

int m3_client_connect(const char *addr, const m3_client_options *o, m3_client **out) {
  m3_client_options defaults;
  if (o == NULL) {
    m3_client_options_init(&defaults);
    o = &defaults;
  }
  *out = NULL;
  if (addr == NULL || strlen(addr) >= sizeof((m3_client *)0)->addr)
    return m3__seterr(M3_EINVAL, "server address '%s' is not HOST:PORT", addr ? addr : "(null)");
  m3_client *c = calloc(1, sizeof *c);
  if (c == NULL) return m3__seterr(M3_ENOMEM, "m3_client_connect: out of memory");
  c->fd = -1;
  strcpy(c->addr, addr);
  c->timeout_ms = o->call_timeout_ms > 0 ? o->call_timeout_ms : 0;
  c->max_frame = o->max_frame_bytes ? o->max_frame_bytes : M3_FRAME_DEFAULT_MAX;
  c->next_stream = 1;
  int rc = m3__client_dial(c, o, o->connect_timeout_ms);
  if (rc) goto fail;

  M3__HelloRequest req = M3__HELLO_REQUEST__INIT;
  req.protocol_version = M3_PROTOCOL_VERSION;
  req.token = (char *)(o->token ? o->token : "");
  req.codec_fingerprint = o->codec_fingerprint;
  req.check_fingerprint = o->check_fingerprint != 0;
  req.client_name = (char *)(o->client_name ? o->client_name : "");
  rc = m3__client_call(c, M3_METHOD_HELLO, &req.base, NULL, 0, o->connect_timeout_ms, on_hello, c);
  if (rc) {
    /* The status message already names the server and says why. */
    m3__seterr(rc, "Hello failed: %s", c->last_msg);
    goto fail;
  }
  if (c->info.protocol_version != M3_PROTOCOL_VERSION) {
    rc = m3__seterr(M3_EFINGERPRINT, "m3-server %s speaks protocol version %u, this client %u",
                    addr, c->info.protocol_version, M3_PROTOCOL_VERSION);
    goto fail;
  }
  if (o->check_fingerprint && c->info.layout.codec_fp != o->codec_fingerprint) {
    rc = m3__seterr(M3_EFINGERPRINT,
                    "m3-server %s holds codec fingerprint %016llx, this worker decodes %016llx",
                    addr, (unsigned long long)c->info.layout.codec_fp,
                    (unsigned long long)o->codec_fingerprint);
    goto fail;
  }
  *out = c;
  return 0;
fail:
  m3_client_close(c);
  return rc;
}

void m3__client_interrupt(m3_client *c) {
  if (c->fd >= 0) shutdown(c->fd, SHUT_RDWR);
}

void m3_client_close(m3_client *c) {
  if (c == NULL) return;
  m3__client_tls_free(c);
  if (c->fd >= 0) close(c->fd);
  free(c->rbuf);
  free(c->abuf);
  m3_wbuf_free(&c->out);
  free(c->arena.block);
  for (size_t i = 0; i < c->arena.nbig; i++) free(c->arena.big[i]);
  free(c->arena.big);
  free(c->qv);
  free(c->qp);
  free(c);
}

/* ---- queries -------------------------------------------------------- */

/* Point the scratch Query messages at the caller's queries (no copy). */
static int encode_queries(m3_client *c, m3_method method, const m3_client_query *q, size_t nq,
                          M3__Query ***out) {
  if (nq == 0 || q == NULL)
    return m3__client_status(c, method, M3__STATUS_CODE__INVALID_ARGUMENT, "no queries");
  if (nq > c->qcap) {
    M3__Query *qv = realloc(c->qv, nq * sizeof *qv);
    if (qv) c->qv = qv;
    M3__Query **qp = realloc(c->qp, nq * sizeof *qp);
    if (qp) c->qp = qp;
    if (qv == NULL || qp == NULL)
      return m3__client_status(c, method, M3__STATUS_CODE__RESOURCE_EXHAUSTED,
                               "no memory for %zu queries", nq);
    c->qcap = nq;
  }
  for (size_t i = 0; i < nq; i++) {
    M3__Query *m = &c->qv[i];
    m3__query__init(m);
    if (q[i].vector) {
      m->n_vector = q[i].dim;
      m->vector = (float *)q[i].vector;
    } else if (q[i].text) {
      m->text = (char *)q[i].text;
      m->allow_fillers = q[i].allow_fillers != 0;
    } else {
      return m3__client_status(c, method, M3__STATUS_CODE__INVALID_ARGUMENT,
                               "query %zu has neither a vector nor text", i);
    }
    c->qp[i] = m;
  }
  *out = c->qp;
  return 0;
}

typedef struct search_ctx {
  size_t nq;
  uint32_t k;
  uint64_t *ids;
  float *scores;
  uint32_t *counts;
} search_ctx;

static int on_search(void *ud, const ProtobufCMessage *msg, const uint8_t *att, size_t att_len) {
  search_ctx *s = ud;
  const M3__SearchResponse *r = (const M3__SearchResponse *)msg;
  for (size_t q = 0; q < s->nq && q < r->n_results; q++) {
    const M3__SearchResult *res = r->results[q];
    size_t n = res->n_ids < s->k ? res->n_ids : s->k;
    for (size_t j = 0; j < n; j++) {
      s->ids[q * s->k + j] = res->ids[j];
      s->scores[q * s->k + j] = j < res->n_scores ? res->scores[j] : 0;
    }
    s->counts[q] = (uint32_t)n;
  }
  return 0;
}

int m3_client_search(m3_client *c, const m3_client_query *queries, size_t nq, uint32_t k,
                     uint64_t *ids, float *scores, uint32_t *counts) {
  M3__SearchRequest req = M3__SEARCH_REQUEST__INIT;
  int rc = encode_queries(c, M3_METHOD_SEARCH, queries, nq, &req.queries);
  if (rc) return rc;
  req.n_queries = nq;
  req.k = k;
  M3__IndexParams ip;
  req.params = index_params(c, &ip);
  for (size_t i = 0; i < nq * k; i++) {
    ids[i] = UINT64_MAX;
    scores[i] = 0;
  }
  memset(counts, 0, nq * sizeof *counts);
  search_ctx s = {nq, k, ids, scores, counts};
  return m3__client_call(c, M3_METHOD_SEARCH, &req.base, NULL, 0, c->timeout_ms, on_search, &s);
}

/* ---- streamed memories ---------------------------------------------- */

typedef struct stream_ctx {
  m3_client *c;
  m3_client_memory_fn fn;
  void *ud;
  size_t nq;       /* queries (Retrieve) or ids (Fetch) asked: Memory.query < nq */
  uint32_t k;      /* ranks per query: Memory.rank < k (Fetch: 1, rank 0) */
  char proto[300]; /* the protocol error that stopped the stream, "" for none */
} stream_ctx;

/* Memory.query and Memory.rank come from the server, and callers use them
 * as indexes (query into their queries or ids, rank into k slots): a
 * server that names a query or rank it was not asked for is refused as a
 * protocol error before the callback sees the item (issue 14; the cluster
 * client's check_item in cluster_fetch.c is the same rule). */
static int check_item(stream_ctx *s, const M3__Memory *m) {
  if (m->query >= s->nq)
    snprintf(s->proto, sizeof s->proto,
             "protocol error: Memory.query %u of chunk %llu, but the call asked for %zu %s",
             m->query, (unsigned long long)m->chunk_id, s->nq, s->k ? "queries" : "ids");
  else if (s->k && m->rank >= s->k)
    snprintf(s->proto, sizeof s->proto,
             "protocol error: Memory.rank %u of chunk %llu, but the Retrieve asked for k = %u",
             m->rank, (unsigned long long)m->chunk_id, s->k);
  else if (!s->k && m->rank != 0)
    snprintf(s->proto, sizeof s->proto,
             "protocol error: Memory.rank %u of chunk %llu in a Fetch answer (only Retrieve "
             "items have a rank)", m->rank, (unsigned long long)m->chunk_id);
  else
    return 0;
  s->c->broken = 1; /* a peer that breaks the protocol is not trusted again */
  return M3_EBADFORMAT;
}

/* The end of a streamed call: a protocol error found by check_item is the
 * call's status (not "stopped by the caller"). */
static int stream_end(stream_ctx *s, m3_method method, int rc) {
  if (s->proto[0] == '\0') return rc;
  M3_WARN("client", "m3-server %s: %s", s->c->addr, s->proto);
  m3__client_status(s->c, method, M3__STATUS_CODE__UNAVAILABLE, "%s", s->proto);
  return m3__seterr(M3_EBADFORMAT, "%s", s->c->last_msg);
}

static int on_memory(void *ud, const ProtobufCMessage *msg, const uint8_t *att, size_t att_len) {
  stream_ctx *s = ud;
  const M3__Memory *m = (const M3__Memory *)msg;
  if (check_item(s, m) != 0) return M3_EBADFORMAT;
  const m3_layout *want = &s->c->info.layout;
  m3_record rec;
  uint32_t crc;
  char err[256] = "";
  m3_client_memory out = {
      .chunk_id = m->chunk_id, .query = m->query, .rank = m->rank, .score = m->score,
      .text = m->text ? m->text : "", .text_len = m->text ? strlen(m->text) : 0};
  if (m->status != M3__STATUS_CODE__OK) {
    out.grpc_status = m->status;
    out.status = m3_err_from_status(m->status);
    snprintf(err, sizeof err, "%s", m->error && *m->error ? m->error : m3_status_name(m->status));
  } else if (m->payload_bytes != att_len) {
    out.grpc_status = M3__STATUS_CODE__DATA_LOSS;
    out.status = M3_ECORRUPT;
    snprintf(err, sizeof err, "chunk %llu: %zu payload bytes arrived, Memory says %u",
             (unsigned long long)m->chunk_id, att_len, m->payload_bytes);
  } else if ((crc = s->c->att_crc_ok ? s->c->att_crc : m3_crc32c(0, att, att_len)) !=
             m->payload_crc) {
    out.grpc_status = M3__STATUS_CODE__DATA_LOSS;
    out.status = M3_ECORRUPT;
    snprintf(err, sizeof err, "chunk %llu: payload CRC32C %08x, Memory says %08x",
             (unsigned long long)m->chunk_id, crc, m->payload_crc);
  } else if (m3_record_parse(att, att_len, M3_PARSE_HEADER, &rec) != 0 ||
             M3_RECORD_HEADER_SIZE + (size_t)rec.mem_bytes != att_len) {
    /* The payload CRC above covered every byte end to end (the server's
     * store checked the record's own CRCs when it read it), so the header's
     * fields and CRC are what is left to check here. */
    out.grpc_status = M3__STATUS_CODE__DATA_LOSS;
    out.status = M3_ECORRUPT;
    snprintf(err, sizeof err, "chunk %llu: bad record: %s", (unsigned long long)m->chunk_id,
             m3_errmsg());
  } else if (rec.chunk_id != m->chunk_id) {
    out.grpc_status = M3__STATUS_CODE__DATA_LOSS;
    out.status = M3_ECORRUPT;
    snprintf(err, sizeof err, "chunk %llu: the record holds chunk %llu",
             (unsigned long long)m->chunk_id, (unsigned long long)rec.chunk_id);
  } else if (want->code_bytes &&
             (memcmp(&rec.layout.spec, &want->spec, sizeof want->spec) != 0 ||
              rec.layout.codec_kind != want->codec_kind ||
              rec.layout.code_bytes != want->code_bytes || rec.layout.codec_fp != want->codec_fp)) {
    out.grpc_status = M3__STATUS_CODE__FAILED_PRECONDITION;
    out.status = M3_ESHAPE;
    snprintf(err, sizeof err, "chunk %llu: record layout or codec differs from the server's Hello",
             (unsigned long long)m->chunk_id);
  } else {
    out.data = att;
    out.len = att_len;
    out.record = &rec;
  }
  if (out.status == M3_ECORRUPT)
    M3_WARN("client", "m3-server %s: %s", s->c->addr, err);
  out.error = err;
  return s->fn(s->ud, &out);
}

/* m3__att_fn of the memory calls: a memory's record lands where the
 * caller's landing function says, for an item that can be delivered
 * (check_item refuses the others when their callback comes). */
static uint8_t *memory_dest(void *ud, const ProtobufCMessage *msg, size_t len) {
  stream_ctx *s = ud;
  const M3__Memory *m = (const M3__Memory *)msg;
  if (s->c->land == NULL || m->status != M3__STATUS_CODE__OK || m->payload_bytes != len ||
      m->query >= s->nq || (s->k ? m->rank >= s->k : m->rank != 0))
    return NULL;
  return s->c->land(s->c->land_ud, m->chunk_id, m->query, m->rank, len);
}

int m3_client_retrieve(m3_client *c, const m3_client_query *queries, size_t nq, uint32_t k,
                       int with_text, m3_client_memory_fn fn, void *ud) {
  M3__RetrieveRequest req = M3__RETRIEVE_REQUEST__INIT;
  int rc = encode_queries(c, M3_METHOD_RETRIEVE, queries, nq, &req.queries);
  if (rc) return rc;
  req.n_queries = nq;
  req.k = k;
  req.with_text = with_text != 0;
  M3__IndexParams ip;
  req.params = index_params(c, &ip);
  stream_ctx s = {.c = c, .fn = fn, .ud = ud, .nq = nq, .k = k};
  rc = m3__client_call_into(c, M3_METHOD_RETRIEVE, &req.base, NULL, 0, c->timeout_ms, memory_dest,
                            on_memory, &s);
  return stream_end(&s, M3_METHOD_RETRIEVE, rc);
}

int m3_client_fetch(m3_client *c, const uint64_t *ids, size_t n, int with_text,
                    m3_client_memory_fn fn, void *ud) {
  M3__FetchRequest req = M3__FETCH_REQUEST__INIT;
  if (n == 0 || ids == NULL)
    return m3__client_status(c, M3_METHOD_FETCH, M3__STATUS_CODE__INVALID_ARGUMENT, "no ids");
  req.n_ids = n;
  req.ids = (uint64_t *)ids;
  req.with_text = with_text != 0;
  stream_ctx s = {.c = c, .fn = fn, .ud = ud, .nq = n, .k = 0};
  int rc = m3__client_call_into(c, M3_METHOD_FETCH, &req.base, NULL, 0, c->timeout_ms,
                                memory_dest, on_memory, &s);
  return stream_end(&s, M3_METHOD_FETCH, rc);
}

/* ---- operations ----------------------------------------------------- */

static int on_stats(void *ud, const ProtobufCMessage *msg, const uint8_t *att, size_t att_len) {
  m3_client_stats *o = ud;
  const M3__StatsResponse *r = (const M3__StatsResponse *)msg;
  o->records = r->records;
  o->segment_bytes = r->segment_bytes;
  o->connections = r->connections;
  o->calls = r->calls;
  o->memories_served = r->memories_served;
  o->payload_bytes_served = r->payload_bytes_served;
  o->cache_hits = r->cache_hits;
  o->cache_misses = r->cache_misses;
  o->uptime_ms = r->uptime_ms;
  o->index_vectors = r->index_vectors;
  copy_str(o->index_factory, sizeof o->index_factory, r->index_factory);
  copy_str(o->index_params, sizeof o->index_params, r->index_params);
  copy_str(o->io_backend, sizeof o->io_backend, r->io_backend);
  copy_str(o->embedder, sizeof o->embedder, r->embedder);
  o->n_methods = 0;
  for (size_t i = 0; i < r->n_methods && i < M3_CLIENT_MAX_METHOD_STATS; i++) {
    copy_str(o->methods[i].method, sizeof o->methods[i].method, r->methods[i]->method);
    o->methods[i].calls = r->methods[i]->calls;
    o->methods[i].errors = r->methods[i]->errors;
    o->n_methods++;
  }
  return 0;
}

int m3_client_stats_get(m3_client *c, m3_client_stats *out) {
  M3__StatsRequest req = M3__STATS_REQUEST__INIT;
  memset(out, 0, sizeof *out);
  return m3__client_call(c, M3_METHOD_STATS, &req.base, NULL, 0, c->timeout_ms, on_stats, out);
}

typedef struct health_ctx {
  int *serving;
  char *detail;
  size_t cap;
} health_ctx;

static int on_health(void *ud, const ProtobufCMessage *msg, const uint8_t *att, size_t att_len) {
  health_ctx *h = ud;
  const M3__HealthResponse *r = (const M3__HealthResponse *)msg;
  *h->serving = r->serving;
  if (h->detail) copy_str(h->detail, h->cap, r->detail);
  return 0;
}

int m3_client_health(m3_client *c, int *serving, char *detail, size_t cap) {
  M3__HealthRequest req = M3__HEALTH_REQUEST__INIT;
  health_ctx h = {serving, detail, cap};
  *serving = 0;
  if (detail && cap) detail[0] = '\0';
  return m3__client_call(c, M3_METHOD_HEALTH, &req.base, NULL, 0, c->timeout_ms, on_health, &h);
}

static int on_count(void *ud, const ProtobufCMessage *msg, const uint8_t *att, size_t att_len) {
  uint32_t *n = ud;
  if (msg->descriptor == &m3__put_response__descriptor)
    *n = ((const M3__PutResponse *)msg)->written;
  else
    *n = ((const M3__DeleteResponse *)msg)->deleted;
  return 0;
}

int m3_client_put(m3_client *c, const void *records, const uint32_t *sizes, size_t n,
                  uint32_t *written) {
  M3__PutRequest req = M3__PUT_REQUEST__INIT;
  size_t total = 0;
  for (size_t i = 0; i < n; i++) total += sizes[i];
  req.n_sizes = n;
  req.sizes = (uint32_t *)sizes;
  uint32_t w = 0;
  int rc = m3__client_call(c, M3_METHOD_PUT, &req.base, records, total, c->timeout_ms, on_count, &w);
  if (written) *written = w;
  return rc;
}

int m3_client_delete(m3_client *c, const uint64_t *ids, size_t n, uint32_t *deleted) {
  M3__DeleteRequest req = M3__DELETE_REQUEST__INIT;
  req.n_ids = n;
  req.ids = (uint64_t *)ids;
  uint32_t d = 0;
  int rc = m3__client_call(c, M3_METHOD_DELETE, &req.base, NULL, 0, c->timeout_ms, on_count, &d);
  if (deleted) *deleted = d;
  return rc;
}
