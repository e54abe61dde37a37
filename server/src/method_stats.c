/* Stats (m3.proto): the store's size, per-method call counts, cache and
 * serving counters. */
#include "call.h"
#include "m3_handlers.h"

void method_stats(call *cl, const uint8_t *att, size_t att_len) {
  (void)att;
  (void)att_len;
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
  /* What the index is was fixed at open and how many vectors it holds is
   * published by Put and Delete (server.h): Stats never takes the index's
   * lock, so it never waits behind a search or an add on the loop. */
  out.index_vectors = s->index ? s->index_vectors : 0;
  out.index_factory = (char *)(s->index && s->index_factory ? s->index_factory : "");
  out.index_params = (char *)(s->cfg.index_params ? s->cfg.index_params : "");
  out.embedder = s->embedder;
  call_reply(cl, &out.base);
}
