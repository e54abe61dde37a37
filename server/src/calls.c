/*
 * The methods of m3.proto: request checks on the loop thread, blocking work
 * (index search, writes, reads without io_uring) on the threadpool, memory
 * reads with io_uring on the loop itself, answers from the loop thread.
 *
 * Search and Retrieve share one search pipeline: calls queue up while a
 * search job runs, and the next job searches every queued query in one index
 * call (micro-batching: under load, N concurrent calls cost one FAISS search).
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "m3/crc32c.h"
#include "m3/embed.h"
#include "m3/error.h"
#include "m3/log.h"
#include "server.h"

enum {
  ST_OK = M3__STATUS_CODE__OK,
  ST_CANCELLED = M3__STATUS_CODE__CANCELLED,
  ST_INVALID = M3__STATUS_CODE__INVALID_ARGUMENT,
  ST_DEADLINE = M3__STATUS_CODE__DEADLINE_EXCEEDED,
  ST_NOT_FOUND = M3__STATUS_CODE__NOT_FOUND,
  ST_PERMISSION = M3__STATUS_CODE__PERMISSION_DENIED,
  ST_EXHAUSTED = M3__STATUS_CODE__RESOURCE_EXHAUSTED,
  ST_PRECONDITION = M3__STATUS_CODE__FAILED_PRECONDITION,
  ST_UNIMPLEMENTED = M3__STATUS_CODE__UNIMPLEMENTED,
  ST_INTERNAL = M3__STATUS_CODE__INTERNAL,
  ST_UNAVAILABLE = M3__STATUS_CODE__UNAVAILABLE,
  ST_DATA_LOSS = M3__STATUS_CODE__DATA_LOSS,
  ST_UNAUTHENTICATED = M3__STATUS_CODE__UNAUTHENTICATED,
};

/* Tokens compare in constant time: no early exit on the first difference. */
static int token_equal(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  unsigned char diff = (unsigned char)(la != lb);
  for (size_t i = 0; i < lb; i++) diff |= (unsigned char)(a[i % (la ? la : 1)] ^ b[i]);
  return diff == 0;
}

static void fill_layout(server *s, M3__Layout *l) {
  const m3_layout *sl = m3_store_layout(s->store);
  l->n_layers = sl->spec.n_layers;
  l->n_kv_heads = sl->spec.n_kv_heads;
  l->n_tokens = sl->spec.n_tokens;
  l->head_dim = sl->spec.head_dim;
  l->codec_kind = sl->codec_kind;
  l->code_bytes = sl->code_bytes;
  l->codec_fingerprint = sl->codec_fp;
  l->embedding_dim = sl->emb_dim;
  l->memory_bytes = (uint32_t)m3_record_mem_size(sl);
}

/* ---- Hello, Stats, Health ------------------------------------------- */

static void do_hello(call *cl) {
  conn *c = cl->c;
  server *s = c->s;
  M3__HelloRequest *r = (M3__HelloRequest *)cl->req;
  if (r->protocol_version != M3_PROTOCOL_VERSION) {
    call_end(cl, ST_PRECONDITION, "protocol version %u; this server speaks %u", r->protocol_version,
             M3_PROTOCOL_VERSION);
    return;
  }
  const char *tok = r->token ? r->token : "";
  int is_admin = s->admin_token && token_equal(tok, s->admin_token);
  int is_reader = is_admin || s->token == NULL || token_equal(tok, s->token);
  if (!is_reader) {
    M3_WARN("server", "%s: Hello with a wrong token", c->peer);
    call_end(cl, ST_UNAUTHENTICATED, "wrong token");
    return;
  }
  const m3_layout *sl = m3_store_layout(s->store);
  if (r->check_fingerprint && r->codec_fingerprint != sl->codec_fp) {
    call_end(cl, ST_PRECONDITION,
             "codec fingerprint mismatch: the client decodes with %016llx, this store holds %016llx",
             (unsigned long long)r->codec_fingerprint, (unsigned long long)sl->codec_fp);
    return;
  }
  c->hello = 1;
  c->admin = is_admin;
  M3__HelloResponse out = M3__HELLO_RESPONSE__INIT;
  M3__Layout layout = M3__LAYOUT__INIT;
  M3__Limits limits = M3__LIMITS__INIT;
  fill_layout(s, &layout);
  limits.max_frame_bytes = s->cfg.max_frame_bytes;
  limits.max_inflight_calls = s->cfg.max_inflight;
  limits.max_queries_per_call = s->cfg.max_queries;
  limits.max_k = s->cfg.max_k;
  limits.max_ids_per_call = s->cfg.max_ids;
  limits.idle_timeout_ms = s->cfg.idle_timeout_ms;
  out.protocol_version = M3_PROTOCOL_VERSION;
  out.layout = &layout;
  out.limits = &limits;
  out.server_name = (char *)s->cfg.name;
  out.records = s->records;
  out.admin = is_admin;
  out.shard = s->cfg.shard;
  M3_DEBUG("server", "%s: Hello from '%s'%s", c->peer, r->client_name ? r->client_name : "",
           is_admin ? " (admin)" : "");
  call_reply(cl, &out.base);
}

static void do_stats(call *cl) {
  server *s = cl->c->s;
  M3__StatsResponse out = M3__STATS_RESPONSE__INIT;
  uint64_t hits, misses, bytes;
  m3_store_cache_counters(s->store, &hits, &misses, &bytes);
  out.records = s->records;
  out.segment_bytes = m3_store_segment_bytes(s->store);
  out.connections = s->nconns;
  uint64_t calls = 0;
  M3__MethodStats ms[M3_METHOD_COUNT], *msp[M3_METHOD_COUNT];
  size_t nm = 0;
  for (unsigned i = 1; i < M3_METHOD_COUNT; i++) {
    uint64_t total = 0, errors = 0;
    for (int st = 0; st < M3_NSTATUS; st++) {
      total += s->m.calls[i][st];
      if (st) errors += s->m.calls[i][st];
    }
    calls += total;
    m3__method_stats__init(&ms[nm]);
    ms[nm].method = (char *)m3_methods[i].name;
    ms[nm].calls = total;
    ms[nm].errors = errors;
    msp[nm] = &ms[nm];
    nm++;
  }
  out.calls = calls;
  out.memories_served = s->m.memories_served;
  out.payload_bytes_served = s->m.payload_bytes_served;
  out.cache_hits = hits;
  out.cache_misses = misses;
  out.io_backend = (char *)m3_store_io_backend(s->store);
  out.uptime_ms = (now_ns() - s->started_ns) / 1000000;
  out.n_methods = nm;
  out.methods = msp;
  out.index_vectors = s->index ? m3_index_count(s->index) : 0;
  call_reply(cl, &out.base);
}

static void do_health(call *cl) {
  server *s = cl->c->s;
  M3__HealthResponse out = M3__HEALTH_RESPONSE__INIT;
  out.serving = !s->draining;
  out.detail = s->draining ? "draining" : "serving";
  call_reply(cl, &out.base);
}

/* ---- search pipeline ------------------------------------------------ */

static void search_start(server *s);
static void fetch_start(call *cl);

static void search_work(uv_work_t *w) {
  server *s = w->data;
  /* OpenMP's thread count is per calling thread: set it on this one. */
  if (s->omp_set_num_threads) s->omp_set_num_threads((int)s->cfg.search_threads);
  /* One index call for every query of every call in the batch. */
  size_t nq = 0, kmax = 0;
  for (call *cl = s->search_batch; cl; cl = cl->qnext) {
    nq += cl->nq;
    if (cl->k > kmax) kmax = cl->k;
  }
  float *q = malloc(nq * s->emb_dim * sizeof *q);
  uint64_t *ids = malloc(nq * kmax * sizeof *ids);
  float *scores = malloc(nq * kmax * sizeof *scores);
  int rc = (q && ids && scores) ? 0 : M3_ENOMEM;
  if (rc == 0) {
    size_t at = 0;
    for (call *cl = s->search_batch; cl; cl = cl->qnext) {
      memcpy(q + at * s->emb_dim, cl->queries, (size_t)cl->nq * s->emb_dim * sizeof *q);
      at += cl->nq;
    }
    rc = m3_index_search(s->index, q, nq, kmax, ids, scores);
  }
  size_t at = 0;
  for (call *cl = s->search_batch; cl; cl = cl->qnext) {
    cl->status = rc;
    if (rc) {
      snprintf(cl->errmsg, sizeof cl->errmsg, "%s", m3_errmsg());
      continue;
    }
    size_t first = at; /* this call's rows in the batch's results */
    at += cl->nq;
    cl->ids = malloc((size_t)cl->nq * cl->k * sizeof *cl->ids);
    cl->scores = malloc((size_t)cl->nq * cl->k * sizeof *cl->scores);
    if (cl->ids == NULL || cl->scores == NULL) {
      cl->status = M3_ENOMEM;
      continue;
    }
    for (unsigned i = 0; i < cl->nq; i++) {
      memcpy(cl->ids + (size_t)i * cl->k, ids + (first + i) * kmax, cl->k * sizeof *ids);
      memcpy(cl->scores + (size_t)i * cl->k, scores + (first + i) * kmax, cl->k * sizeof *scores);
    }
    cl->nids = (size_t)cl->nq * cl->k;
  }
  free(q);
  free(ids);
  free(scores);
}

static void reply_search(call *cl) {
  M3__SearchResponse out = M3__SEARCH_RESPONSE__INIT;
  M3__SearchResult *res = calloc(cl->nq, sizeof *res);
  M3__SearchResult **resp = calloc(cl->nq, sizeof *resp);
  uint64_t *ids = malloc(cl->nids * sizeof *ids);
  float *scores = malloc(cl->nids * sizeof *scores);
  if (!res || !resp || !ids || !scores) {
    call_end(cl, ST_EXHAUSTED, "out of memory");
    goto out;
  }
  size_t n = 0;
  for (unsigned i = 0; i < cl->nq; i++) {
    m3__search_result__init(&res[i]);
    res[i].ids = ids + n;
    res[i].scores = scores + n;
    for (unsigned j = 0; j < cl->k; j++) {
      uint64_t id = cl->ids[(size_t)i * cl->k + j];
      if (id == UINT64_MAX) break; /* fewer memories than k */
      ids[n] = id;
      scores[n] = cl->scores[(size_t)i * cl->k + j];
      n++;
      res[i].n_ids++;
      res[i].n_scores++;
    }
    resp[i] = &res[i];
  }
  out.n_results = cl->nq;
  out.results = resp;
  call_reply(cl, &out.base);
out:
  free(res);
  free(resp);
  free(ids);
  free(scores);
}

static void search_done(uv_work_t *w, int status) {
  server *s = w->data;
  s->m.search_batches++;
  call *batch = s->search_batch;
  s->search_batch = NULL;
  s->search_running = 0;
  for (call *cl = batch, *next; cl; cl = next) {
    next = cl->qnext;
    cl->qnext = NULL;
    cl->working = 0;
    s->m.search_queries += cl->nq;
    if (cl->ended) { /* deadline, cancel or closed connection meanwhile */
      call_maybe_free(cl);
      continue;
    }
    if (status != 0 || cl->status != 0) {
      call_end(cl, m3_status_from_err(cl->status ? cl->status : M3_EINTERNAL), "search: %s",
               cl->errmsg[0] ? cl->errmsg : m3_strerror(cl->status));
    } else if (cl->method == M3_METHOD_SEARCH) {
      reply_search(cl);
    } else {
      fetch_start(cl);
    }
  }
  if (s->search_queue) search_start(s);
}

static void search_start(server *s) {
  if (s->search_running || s->search_queue == NULL) return;
  s->search_batch = s->search_queue;
  s->search_queue = s->search_tail = NULL;
  s->search_running = 1;
  s->search_work.data = s;
  uv_queue_work(s->loop, &s->search_work, search_work, search_done);
}

static void search_enqueue(call *cl) {
  server *s = cl->c->s;
  cl->working = 1;
  cl->qnext = NULL;
  if (s->search_tail) s->search_tail->qnext = cl;
  else s->search_queue = cl;
  s->search_tail = cl;
  search_start(s);
}

/* Turn the request's queries into (nq, emb_dim) vectors. */
static int load_queries(call *cl, M3__Query **qs, size_t nq) {
  server *s = cl->c->s;
  if (s->index == NULL) {
    call_end(cl, ST_UNIMPLEMENTED, "this store keeps no embeddings: search is not available");
    return -1;
  }
  if (nq == 0 || nq > s->cfg.max_queries) {
    call_end(cl, nq ? ST_EXHAUSTED : ST_INVALID, "%zu queries; a call takes 1 to %u", nq,
             s->cfg.max_queries);
    return -1;
  }
  cl->queries = malloc(nq * s->emb_dim * sizeof *cl->queries);
  if (cl->queries == NULL) {
    call_end(cl, ST_EXHAUSTED, "out of memory for %zu queries", nq);
    return -1;
  }
  for (size_t i = 0; i < nq; i++) {
    float *q = cl->queries + i * s->emb_dim;
    if (qs[i]->n_vector) {
      if (qs[i]->n_vector != s->emb_dim) {
        call_end(cl, ST_INVALID, "query %zu: vector of %zu dims; the store's embeddings have %u", i,
                 qs[i]->n_vector, s->emb_dim);
        return -1;
      }
      memcpy(q, qs[i]->vector, s->emb_dim * sizeof *q);
    } else if (qs[i]->text && qs[i]->text[0]) {
      int rc = m3_embed_hash(qs[i]->text, strlen(qs[i]->text), q, s->emb_dim);
      if (rc) {
        call_end(cl, ST_INVALID, "query %zu: %s", i, m3_errmsg());
        return -1;
      }
    } else {
      call_end(cl, ST_INVALID, "query %zu: neither a vector nor text", i);
      return -1;
    }
  }
  cl->nq = (unsigned)nq;
  return 0;
}

static void do_search(call *cl) {
  M3__SearchRequest *r = (M3__SearchRequest *)cl->req;
  server *s = cl->c->s;
  if (r->k == 0 || r->k > s->cfg.max_k) {
    call_end(cl, ST_INVALID, "k = %u; the server allows 1 to %u", r->k, s->cfg.max_k);
    return;
  }
  cl->k = r->k;
  if (load_queries(cl, r->queries, r->n_queries) == 0) search_enqueue(cl);
}

static void do_retrieve(call *cl) {
  M3__RetrieveRequest *r = (M3__RetrieveRequest *)cl->req;
  server *s = cl->c->s;
  if (r->k == 0 || r->k > s->cfg.max_k) {
    call_end(cl, ST_INVALID, "k = %u; the server allows 1 to %u", r->k, s->cfg.max_k);
    return;
  }
  cl->k = r->k;
  cl->with_text = r->with_text;
  if (load_queries(cl, r->queries, r->n_queries) == 0) search_enqueue(cl);
}

/* ---- reading and streaming memories ---------------------------------- */

/*
 * A Retrieve (after its search) or Fetch becomes nitems store reads, one
 * buffer each. Buffers come from the server's budget (fetch_memory): a call
 * waits in s->fetch_queue until it gets some, oldest call first, and none
 * while its connection's queued writes are past the high-water mark.
 *
 * With io_uring the reads are submitted from the loop (m3_store_aio) as
 * buffers allow, and every memory read by the time the loop looks is sent
 * in one write; a buffer returns to the budget when the write that carried
 * it completes. So a call's memories stream out as they are read, and a
 * call larger than the budget goes through it piece by piece.
 *
 * Otherwise (pread backend, or with_text: chunk texts come from the
 * catalog, a blocking lookup) the reads run as threadpool jobs, one at a
 * time per call, each over as many items as it got buffers for.
 */

/* Whether the fetch still holds the call: reads out, waiting for buffers,
 * memories to send, or a threadpool job. */
static int fetch_busy(const call *cl) {
  return cl->reading > 0 || cl->queued_for_bufs || cl->flushing || cl->job_running;
}

static void fetch_settle(call *cl) {
  cl->working = fetch_busy(cl);
  call_maybe_free(cl);
}

static void *buf_get(server *s) {
  void *b = s->nbufs ? s->bufs[--s->nbufs] : m3_store_buf_alloc(s->store, s->buf_cap);
  if (b && ++s->bufs_out > s->bufs_peak) s->bufs_peak = s->bufs_out;
  return b;
}

void fetch_bufs_put(server *s, conn *c, void **bufs, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (bufs[i] == NULL) continue;
    if (s->nbufs < s->bufs_max) s->bufs[s->nbufs++] = bufs[i];
    else free(bufs[i]);
    s->bufs_out--;
    c->lent--;
  }
}

/* The payload CRC32C without another pass over the bytes: the store has
 * just checked the record's memory against the mem_crc in its header, so
 * the CRC of header + memory is that CRC combined with the header's. */
static uint32_t payload_crc(const m3_fetch_item *it) {
  m3_record r;
  if (m3_record_parse(it->data, it->len, M3_PARSE_HEADER, &r) == 0 &&
      it->len == M3_RECORD_HEADER_SIZE + (size_t)r.mem_bytes)
    return m3_crc32c_combine(m3_crc32c(0, it->data, M3_RECORD_HEADER_SIZE), r.mem_crc,
                             r.mem_bytes);
  return m3_crc32c(0, it->data, it->len);
}

/* Make send_ready's arrays hold n memories. */
static int send_scratch(server *s, size_t n) {
  if (n <= s->send.cap) return 0;
  size_t cap = s->send.cap ? s->send.cap : 256;
  while (cap < n) cap *= 2;
  size_t *ends = realloc(s->send.ends, cap * sizeof *ends);
  if (ends) s->send.ends = ends;
  size_t *att_lens = realloc(s->send.att_lens, cap * sizeof *att_lens);
  if (att_lens) s->send.att_lens = att_lens;
  const void **atts = realloc(s->send.atts, cap * sizeof *atts);
  if (atts) s->send.atts = atts;
  void **back = realloc(s->send.back, cap * sizeof *back);
  if (back) s->send.back = back;
  if (!ends || !att_lens || !atts || !back) return M3_ENOMEM;
  s->send.cap = cap;
  return 0;
}

/* Send the call's memories that were read since the last time, in one
 * write whose completion gives their buffers back; ends the call after its
 * last memory. Buffers of failed items (and of a call that already ended)
 * go back at once. Never starts reads: the caller pumps. */
static void send_ready(call *cl) {
  conn *c = cl->c;
  server *s = c->s;
  size_t n = cl->nready;
  if (n == 0) return;
  cl->nready = 0;
  cl->sent += n;
  c->fetching -= n * s->buf_cap; /* queued for writing (or given back) now */
  int retrieve = cl->method == M3_METHOD_RETRIEVE;
  m3_wbuf frames = {0};
  void **lent = malloc(n * sizeof *lent); /* the write takes it */
  size_t nlent = 0, nback = 0;
  if (lent == NULL || send_scratch(s, n) != 0) {
    call_end(cl, ST_EXHAUSTED, "out of memory");
    for (size_t r = 0; r < n; r++) fetch_bufs_put(s, c, &cl->items[cl->ready[r]].buf, 1);
    free(lent);
    return;
  }
  size_t *ends = s->send.ends, *att_lens = s->send.att_lens;
  const void **atts = s->send.atts;
  void **back = s->send.back;
  size_t nf = 0;
  for (size_t r = 0; r < n; r++) {
    m3_fetch_item *it = &cl->items[cl->ready[r]];
    size_t i = cl->slot[cl->ready[r]];
    if (cl->ended || it->status != 0) back[nback++] = it->buf;
    if (cl->ended) continue; /* deadline, CANCEL, lost connection: drop */
    M3__Memory m = M3__MEMORY__INIT;
    m.chunk_id = it->chunk_id;
    m.query = retrieve ? (uint32_t)(i / cl->k) : (uint32_t)i;
    m.rank = retrieve ? (uint32_t)(i % cl->k) : 0;
    m.score = retrieve ? cl->scores[i] : 0;
    size_t att_len = 0;
    if (it->status == 0) {
      att_len = it->len;
      m.payload_bytes = (uint32_t)it->len;
      m.payload_crc = payload_crc(it);
      if (cl->texts && cl->texts[cl->ready[r]]) m.text = cl->texts[cl->ready[r]];
      lent[nlent++] = it->buf;
    } else {
      m.status = (M3__StatusCode)m3_status_from_err(it->status);
      m.error = it->status == M3_ENOTFOUND ? "not in the store" : (char *)m3_strerror(it->status);
    }
    m3_frame f = {M3_FRAME_RESPONSE, 0, cl->method, cl->stream, 0, (uint32_t)att_len, 0};
    if (m3_frame_append(&frames, &f, &m.base) != 0) {
      call_end(cl, ST_EXHAUSTED, "out of memory");
      continue;
    }
    ends[nf] = frames.len;
    atts[nf] = att_len ? it->data : NULL;
    att_lens[nf] = att_len;
    nf++;
  }
  if (!cl->ended && nf && conn_send_batch(c, cl, &frames, ends, atts, att_lens, nf, lent, nlent) == 0) {
    for (size_t f = 0; f < nf; f++) {
      s->m.memories_served += att_lens[f] != 0;
      s->m.payload_bytes_served += att_lens[f];
    }
    lent = NULL; /* the write gives them back */
  } else {
    if (!cl->ended) call_end(cl, ST_UNAVAILABLE, "connection lost");
    fetch_bufs_put(s, c, lent, nlent);
  }
  if (!cl->ended && cl->sent == cl->nitems) call_end(cl, ST_OK, "%s", "");
  fetch_bufs_put(s, c, back, nback);
  m3_wbuf_free(&frames);
  free(lent);
}

/* An item's read completed (from m3_store_aio_reap, on the loop). */
static void on_read(void *ud, m3_fetch_item *it) {
  call *cl = ud;
  server *s = cl->c->s;
  cl->reading--;
  cl->ready[cl->nready++] = (size_t)(it - cl->items);
  if (!cl->flushing) {
    cl->flushing = 1;
    cl->flnext = s->flush;
    s->flush = cl;
  }
}

static void flush_all(server *s) {
  call *list = s->flush;
  s->flush = NULL;
  for (call *cl = list, *next; cl; cl = next) {
    next = cl->flnext;
    cl->flushing = 0;
    send_ready(cl);
    fetch_settle(cl);
  }
}

static void on_aio(uv_poll_t *h, int status, int events) {
  server *s = h->data;
  (void)events;
  if (status < 0) M3_ERROR("server", "polling store reads: %s", uv_strerror(status));
  if (m3_store_aio_reap(s->aio) < 0) M3_ERROR("server", "store reads: %s", m3_errmsg());
  flush_all(s);
  if (s->fetch_queue) fetch_pump(s);
}

static void on_aio_retry(uv_timer_t *t) {
  server *s = t->data;
  s->aio_busy = 0;
  fetch_pump(s);
}

/* Threadpool reads: the items [job_first, job_first + job_n) of a call. */
static void pool_work(uv_work_t *w) {
  call *cl = w->data;
  server *s = cl->c->s;
  m3_fetch_item *items = cl->items + cl->job_first;
  cl->status = m3_store_fetch(s->store, items, cl->job_n);
  if (cl->status) snprintf(cl->errmsg, sizeof cl->errmsg, "%s", m3_errmsg());
  if (cl->texts)
    for (size_t j = 0; j < cl->job_n; j++) {
      size_t len;
      if (items[j].status == 0)
        m3_store_get_text(s->store, items[j].chunk_id, &cl->texts[cl->job_first + j], &len);
    }
}

static void pool_done(uv_work_t *w, int status) {
  call *cl = w->data;
  server *s = cl->c->s;
  cl->job_running = 0;
  if (status != 0 || cl->status != 0)
    call_end(cl, m3_status_from_err(cl->status ? cl->status : M3_EINTERNAL), "fetch: %s",
             cl->errmsg[0] ? cl->errmsg : m3_strerror(cl->status));
  for (size_t j = 0; j < cl->job_n; j++) cl->ready[cl->nready++] = cl->job_first + j;
  cl->reading -= cl->job_n;
  send_ready(cl); /* or, after an error, gives the buffers back */
  fetch_settle(cl);
  if (s->fetch_queue) fetch_pump(s);
}

/* Lend up to n buffers to cl's items from cl->started on; returns how many. */
static size_t lend(server *s, call *cl, size_t n) {
  size_t k = 0;
  for (; k < n; k++) {
    void *b = buf_get(s);
    if (b == NULL) break;
    cl->items[cl->started + k].buf = b;
    cl->items[cl->started + k].cap = s->buf_cap;
  }
  cl->c->fetching += k * s->buf_cap;
  cl->c->lent += k;
  return k;
}

/* Start the reads of k items from cl->started on (buffers lent): 0, or an
 * m3 code (M3_EBUSY: a writer holds the store; nothing started). */
static int start_reads(server *s, call *cl, size_t k) {
  if (!cl->pool_job) {
    int rc = m3_store_aio_submit(s->aio, &cl->items[cl->started], k, on_read, cl);
    if (rc) return rc;
  } else {
    cl->job_first = cl->started;
    cl->job_n = k;
    cl->job_running = 1;
    cl->work.data = cl;
    uv_queue_work(s->loop, &cl->work, pool_work, pool_done);
  }
  cl->started += k;
  cl->reading += k;
  return 0;
}

static void unqueue(server *s, call *cl) {
  if (!cl->queued_for_bufs) return;
  if (cl->fqprev) cl->fqprev->fqnext = cl->fqnext;
  else s->fetch_queue = cl->fqnext;
  if (cl->fqnext) cl->fqnext->fqprev = cl->fqprev;
  else s->fetch_tail = cl->fqprev;
  cl->fqnext = cl->fqprev = NULL;
  cl->queued_for_bufs = 0;
  s->fetch_waiting--;
}

void fetch_forget(call *cl) {
  if (!cl->queued_for_bufs) return;
  unqueue(cl->c->s, cl);
  /* Reads it started still complete (and give their buffers back). */
  cl->working = fetch_busy(cl);
}

/*
 * Lend buffers and start reads, oldest call first; a call leaves the queue
 * once all its reads have started (a call that ends leaves at once:
 * fetch_forget). A call gets no more than its connection may take: nothing
 * while the connection's answers are past the write high-water mark, and
 * at most a quarter of the budget lent to one connection at a time
 * (buffers stay lent until the client has read their memories: a client
 * that stops reading pins its share until the idle timeout closes it, and
 * no more).
 */
void fetch_pump(server *s) {
  size_t share = s->bufs_max / 4 ? s->bufs_max / 4 : 1, hw = s->cfg.write_high_water;
  for (call *cl = s->fetch_queue, *next; cl; cl = next) {
    next = cl->fqnext;
    size_t avail = s->bufs_max > s->bufs_out ? s->bufs_max - s->bufs_out : 0;
    if (avail == 0 || s->aio_busy) break;
    conn *c = cl->c;
    size_t busy = c->queued + c->fetching;
    if (busy > 0 && busy >= hw) {
      /* Its client is not reading: no buffers for it, and no more calls
       * from it until its writes drain (on_write reads it again). */
      conn_pause_reading(c);
      continue;
    }
    if (cl->job_running || c->lent >= share) continue;
    size_t want = cl->nitems - cl->started;
    size_t room = busy < hw ? (hw - busy + s->buf_cap - 1) / s->buf_cap : 1;
    if (want > avail) want = avail;
    if (want > room) want = room;
    if (want > share - c->lent) want = share - c->lent;
    size_t k = lend(s, cl, want);
    int rc = k ? start_reads(s, cl, k) : M3_ENOMEM;
    if (rc) {
      for (size_t j = 0; j < k; j++) fetch_bufs_put(s, c, &cl->items[cl->started + j].buf, 1);
      c->fetching -= k * s->buf_cap;
      if (rc == M3_EBUSY) { /* a commit holds the store: try again in a moment */
        s->m.reads_deferred++;
        s->aio_busy = 1;
        uv_timer_start(&s->aio_retry, on_aio_retry, 1, 0);
        break;
      }
      call_end(cl, rc == M3_ENOMEM ? ST_EXHAUSTED : m3_status_from_err(rc), "fetch: %s",
               rc == M3_ENOMEM ? "out of memory for read buffers" : m3_errmsg());
    } else if (cl->started < cl->nitems) {
      continue;
    }
    unqueue(s, cl);
    fetch_settle(cl);
  }
}

/* Plan the call's reads (one item per id, skipping a Retrieve's empty
 * ranks) and queue it for buffers. */
static void fetch_start(call *cl) {
  server *s = cl->c->s;
  size_t n = 0;
  for (size_t i = 0; i < cl->nids; i++) n += cl->ids[i] != UINT64_MAX;
  cl->items = calloc(n ? n : 1, sizeof *cl->items);
  cl->slot = malloc((n ? n : 1) * sizeof *cl->slot);
  cl->ready = malloc((n ? n : 1) * sizeof *cl->ready);
  if (cl->with_text) cl->texts = calloc(n ? n : 1, sizeof *cl->texts);
  if (!cl->items || !cl->slot || !cl->ready || (cl->with_text && !cl->texts)) {
    call_end(cl, ST_EXHAUSTED, "out of memory");
    fetch_settle(cl);
    return;
  }
  n = 0;
  for (size_t i = 0; i < cl->nids; i++)
    if (cl->ids[i] != UINT64_MAX) {
      cl->items[n].chunk_id = cl->ids[i];
      cl->slot[n++] = i;
    }
  cl->nitems = n;
  if (n == 0) { /* a Retrieve over an empty store */
    call_end(cl, ST_OK, "%s", "");
    fetch_settle(cl);
    return;
  }
  cl->pool_job = s->aio == NULL || cl->with_text;
  cl->queued_for_bufs = 1;
  cl->working = 1;
  cl->fqprev = s->fetch_tail;
  cl->fqnext = NULL;
  if (s->fetch_tail) s->fetch_tail->fqnext = cl;
  else s->fetch_queue = cl;
  s->fetch_tail = cl;
  s->fetch_waiting++;
  fetch_pump(s);
}

int fetch_init(server *s) {
  s->buf_cap = m3_store_fetch_cap(s->store);
  s->bufs_max = s->cfg.fetch_memory / s->buf_cap;
  if (s->bufs_max == 0) s->bufs_max = 1;
  s->bufs = malloc(s->bufs_max * sizeof *s->bufs);
  if (s->bufs == NULL) return m3__seterr(M3_ENOMEM, "read buffer pool: out of memory");
  uv_timer_init(s->loop, &s->aio_retry);
  s->aio_retry.data = s;
  int rc = m3_store_aio_open(s->store, 256, &s->aio);
  if (rc != 0) {
    M3_INFO("server", "memory reads run on the threadpool: %s", m3_errmsg());
    s->aio = NULL;
    return 0;
  }
  uv_poll_init(s->loop, &s->aio_poll, m3_store_aio_fd(s->aio));
  s->aio_poll.data = s;
  uv_poll_start(&s->aio_poll, UV_READABLE, on_aio);
  return 0;
}

void fetch_close(server *s) {
  /* Calls that ended (deadline, closed connection) may still have reads in
   * flight: complete them, so that their buffers and the calls are freed. */
  for (int i = 0; s->aio && m3_store_aio_pending(s->aio) > 0 && i < 500; i++) {
    struct pollfd p = {m3_store_aio_fd(s->aio), POLLIN, 0};
    poll(&p, 1, 10);
    m3_store_aio_reap(s->aio);
    flush_all(s);
  }
  m3_store_aio_close(s->aio);
  s->aio = NULL;
  for (size_t i = 0; i < s->nbufs; i++) free(s->bufs[i]);
  free(s->bufs);
  s->bufs = NULL;
  s->nbufs = 0;
  free(s->send.ends);
  free(s->send.att_lens);
  free(s->send.atts);
  free(s->send.back);
}

static void do_fetch(call *cl) {
  M3__FetchRequest *r = (M3__FetchRequest *)cl->req;
  server *s = cl->c->s;
  if (r->n_ids == 0 || r->n_ids > s->cfg.max_ids) {
    call_end(cl, r->n_ids ? ST_EXHAUSTED : ST_INVALID, "%zu ids; a Fetch takes 1 to %u", r->n_ids,
             s->cfg.max_ids);
    return;
  }
  cl->ids = malloc(r->n_ids * sizeof *cl->ids);
  if (cl->ids == NULL) {
    call_end(cl, ST_EXHAUSTED, "out of memory");
    return;
  }
  memcpy(cl->ids, r->ids, r->n_ids * sizeof *cl->ids);
  cl->nids = r->n_ids;
  cl->with_text = r->with_text;
  for (size_t i = 0; i < cl->nids; i++)
    if (cl->ids[i] == UINT64_MAX) {
      call_end(cl, ST_INVALID, "id %zu: %llu is reserved", i, (unsigned long long)UINT64_MAX);
      return;
    }
  fetch_start(cl);
}

/* ---- admin: Put, Delete ----------------------------------------------- */

static void put_work(uv_work_t *w) {
  call *cl = w->data;
  server *s = cl->c->s;
  M3__PutRequest *r = (M3__PutRequest *)cl->req;
  const m3_layout *l = m3_store_layout(s->store);
  m3_record_in *in = calloc(r->n_sizes ? r->n_sizes : 1, sizeof *in);
  float *emb = l->emb_dim ? malloc(r->n_sizes * l->emb_dim * sizeof *emb) : NULL;
  uint64_t *ids = malloc((r->n_sizes ? r->n_sizes : 1) * sizeof *ids);
  if (!in || !ids || (l->emb_dim && !emb)) {
    cl->status = M3_ENOMEM;
    goto out;
  }
  size_t off = 0;
  for (size_t i = 0; i < r->n_sizes; i++) {
    m3_record rec;
    int rc = m3_record_parse(cl->attach + off, r->sizes[i], M3_PARSE_ALL, &rec);
    if (rc == 0 && (rec.flags & M3_RECORD_TOMBSTONE))
      rc = m3__seterr(M3_EINVAL, "a tombstone; use Delete");
    if (rc == 0 && !m3_layout_equal(&rec.layout, l))
      rc = m3__seterr(M3_ESHAPE, "its shape, codec or fingerprint differ from the store's");
    if (rc) {
      cl->status = rc == M3_ECORRUPT ? M3_ECORRUPT : M3_EINVAL;
      snprintf(cl->errmsg, sizeof cl->errmsg, "record %zu: %s", i, m3_errmsg());
      goto out;
    }
    in[i].chunk_id = rec.chunk_id;
    in[i].chunk_len = rec.chunk_len;
    in[i].positions = rec.positions;
    in[i].codes = rec.codes;
    in[i].text = rec.text;
    in[i].text_len = rec.text_bytes;
    if (l->emb_dim) {
      memcpy(emb + i * l->emb_dim, rec.embedding, l->emb_dim * sizeof *emb);
      in[i].embedding = emb + i * l->emb_dim;
    }
    ids[i] = rec.chunk_id;
    off += r->sizes[i];
  }
  cl->status = m3_store_put(s->store, in, r->n_sizes);
  if (cl->status == 0 && s->index) cl->status = m3_index_add(s->index, ids, emb, r->n_sizes);
  if (cl->status) snprintf(cl->errmsg, sizeof cl->errmsg, "%s", m3_errmsg());
  else cl->count = r->n_sizes;
out:
  free(in);
  free(emb);
  free(ids);
}

static void delete_work(uv_work_t *w) {
  call *cl = w->data;
  server *s = cl->c->s;
  M3__DeleteRequest *r = (M3__DeleteRequest *)cl->req;
  size_t deleted = 0;
  cl->status = m3_store_delete(s->store, r->ids, r->n_ids, &deleted);
  if (cl->status == 0 && s->index) cl->status = m3_index_remove(s->index, r->ids, r->n_ids, NULL);
  if (cl->status) snprintf(cl->errmsg, sizeof cl->errmsg, "%s", m3_errmsg());
  cl->count = deleted;
}

static void admin_done(uv_work_t *w, int status) {
  call *cl = w->data;
  server *s = cl->c->s;
  cl->working = 0;
  if (cl->status == 0 && status == 0) {
    /* Replacements leave the count unchanged; recount cheaply from the index
     * when there is one. */
    if (cl->method == M3_METHOD_DELETE) s->records -= cl->count;
    else if (s->index) s->records = m3_index_count(s->index);
    else s->records += cl->count;
  }
  if (cl->ended) {
    call_maybe_free(cl);
    return;
  }
  if (status != 0 || cl->status != 0) {
    call_end(cl, m3_status_from_err(cl->status ? cl->status : M3_EINTERNAL), "%s: %s",
             m3_methods[cl->method].name, cl->errmsg[0] ? cl->errmsg : m3_strerror(cl->status));
    return;
  }
  if (cl->method == M3_METHOD_PUT) {
    M3__PutResponse out = M3__PUT_RESPONSE__INIT;
    out.written = (uint32_t)cl->count;
    call_reply(cl, &out.base);
  } else {
    M3__DeleteResponse out = M3__DELETE_RESPONSE__INIT;
    out.deleted = (uint32_t)cl->count;
    call_reply(cl, &out.base);
  }
}

static void do_put(call *cl, const uint8_t *att, size_t att_len) {
  M3__PutRequest *r = (M3__PutRequest *)cl->req;
  uint64_t total = 0;
  for (size_t i = 0; i < r->n_sizes; i++) total += r->sizes[i];
  if (r->n_sizes == 0 || total != att_len) {
    call_end(cl, ST_INVALID, "Put: %zu records of %llu bytes declared, attachment has %zu",
             r->n_sizes, (unsigned long long)total, att_len);
    return;
  }
  cl->attach = malloc(att_len);
  if (cl->attach == NULL) {
    call_end(cl, ST_EXHAUSTED, "out of memory");
    return;
  }
  memcpy(cl->attach, att, att_len);
  cl->attach_len = att_len;
  cl->working = 1;
  cl->work.data = cl;
  uv_queue_work(cl->c->s->loop, &cl->work, put_work, admin_done);
}

static void do_delete(call *cl) {
  M3__DeleteRequest *r = (M3__DeleteRequest *)cl->req;
  if (r->n_ids == 0) {
    call_end(cl, ST_INVALID, "Delete: no ids");
    return;
  }
  cl->working = 1;
  cl->work.data = cl;
  uv_queue_work(cl->c->s->loop, &cl->work, delete_work, admin_done);
}

/* ---- dispatch --------------------------------------------------------- */

static void on_deadline(uv_timer_t *t) {
  call *cl = t->data;
  call_end(cl, ST_DEADLINE, "deadline of %llu ms exceeded",
           (unsigned long long)((now_ns() - cl->t0_ns) / 1000000));
  call_maybe_free(cl);
}

static call *find_call(conn *c, uint32_t stream) {
  for (call *cl = c->calls; cl; cl = cl->next)
    if (cl->stream == stream && !cl->ended) return cl;
  return NULL;
}

/* An END for a stream that has no call object (the request was refused
 * before one existed). */
static void refuse(conn *c, const m3_frame *f, int code, const char *msg) {
  M3__Status st = M3__STATUS__INIT;
  st.code = (M3__StatusCode)code;
  st.message = (char *)msg;
  m3_frame e = {M3_FRAME_END, 0, f->method, f->stream, 0, 0, (uint32_t)code};
  conn_send(c, NULL, &e, &st.base, NULL, 0);
  metrics_observe(&c->s->m, f->method < M3_METHOD_COUNT ? f->method : 0, code, 0);
}

void call_dispatch(conn *c, const m3_frame *f, const uint8_t *msg, const uint8_t *att) {
  server *s = c->s;
  if (f->type == M3_FRAME_CANCEL) {
    call *cl = find_call(c, f->stream);
    if (cl) {
      call_end(cl, ST_CANCELLED, "cancelled by the client");
      call_maybe_free(cl);
    }
    return;
  }
  if (f->type != M3_FRAME_REQUEST) {
    refuse(c, f, ST_INVALID, "clients send REQUEST and CANCEL frames only");
    return;
  }
  const m3_method_info *mi = &m3_methods[f->method];
  if (s->draining) {
    refuse(c, f, ST_UNAVAILABLE, "server is draining");
    return;
  }
  if (find_call(c, f->stream)) {
    /* An END on that stream would end one of two calls the client can no
     * longer tell apart: a protocol error, as in HTTP/2. */
    char why[96];
    snprintf(why, sizeof why, "stream %u reused while its call is in flight", f->stream);
    conn_protocol_error(c, why);
    return;
  }
  if (!c->hello && f->method != M3_METHOD_HELLO) {
    refuse(c, f, ST_UNAUTHENTICATED, "the first call on a connection must be Hello");
    return;
  }
  if (c->ncalls >= s->cfg.max_inflight) {
    refuse(c, f, ST_EXHAUSTED, "too many calls in flight on this connection");
    return;
  }
  if (mi->admin && !c->admin) {
    refuse(c, f, ST_PERMISSION,
           s->admin_token ? "needs the admin token" : "admin methods are off (no --admin-token-file)");
    return;
  }
  if (f->method != M3_METHOD_PUT && f->att_len) {
    refuse(c, f, ST_INVALID, "this method takes no attachment");
    return;
  }
  ProtobufCMessage *req = protobuf_c_message_unpack(mi->request, NULL, f->msg_len, msg);
  if (req == NULL) {
    char why[128];
    snprintf(why, sizeof why, "malformed %s message (%u bytes)", mi->request->name, f->msg_len);
    refuse(c, f, ST_INVALID, why);
    return;
  }
  call *cl = calloc(1, sizeof *cl);
  if (cl == NULL) {
    protobuf_c_message_free_unpacked(req, NULL);
    refuse(c, f, ST_EXHAUSTED, "out of memory");
    return;
  }
  cl->c = c;
  cl->stream = f->stream;
  cl->method = f->method;
  cl->req = req;
  cl->t0_ns = now_ns();
  cl->next = c->calls;
  if (c->calls) c->calls->prev = cl;
  c->calls = cl;
  c->ncalls++;
  c->refs++;
  s->inflight++;
  unsigned timeout = f->arg ? f->arg : s->cfg.default_timeout_ms;
  if (timeout) {
    uv_timer_init(s->loop, &cl->deadline);
    cl->deadline.data = cl;
    cl->timer_on = 1;
    uv_timer_start(&cl->deadline, on_deadline, timeout, 0);
  }
  switch (f->method) {
  case M3_METHOD_HELLO: do_hello(cl); break;
  case M3_METHOD_SEARCH: do_search(cl); break;
  case M3_METHOD_RETRIEVE: do_retrieve(cl); break;
  case M3_METHOD_FETCH: do_fetch(cl); break;
  case M3_METHOD_STATS: do_stats(cl); break;
  case M3_METHOD_HEALTH: do_health(cl); break;
  case M3_METHOD_PUT: do_put(cl, att, f->att_len); break;
  case M3_METHOD_DELETE: do_delete(cl); break;
  default: call_end(cl, ST_UNIMPLEMENTED, "method %u", f->method); break;
  }
  call_maybe_free(cl);
}
