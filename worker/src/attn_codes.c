/*
 * Codes output of a retrieval round (m3_attn_codes: each memory's record
 * bytes copied to its (query, rank) as it arrives, for workers that decode
 * themselves, and for the Python binding's decoded=False), and the struct
 * sizes a binding checks its mirrors against (m3_attn_abi_sizeof).
 */
#include <stdint.h>
#include <string.h>

#include "m3/attn.h"
#include "m3/cluster.h"
#include "m3/error.h"

void m3_attn_codes_init(m3_attn_codes *c, uint32_t n_queries, uint32_t k, size_t rec_bytes,
                        uint8_t *buf, uint64_t *ids, float *scores, int32_t *status) {
  memset(c, 0, sizeof *c);
  c->n_queries = n_queries;
  c->k = k;
  c->rec_bytes = rec_bytes;
  c->buf = buf;
  c->ids = ids;
  c->scores = scores;
  c->status = status;
  const size_t n = (size_t)n_queries * k;
  if (buf)
    memset(buf, 0, n * rec_bytes);
  for (size_t i = 0; i < n; i++) {
    if (ids)
      ids[i] = UINT64_MAX;
    if (scores)
      scores[i] = 0.0f;
    if (status)
      status[i] = M3_ENOTFOUND;
  }
}

int m3_attn_codes_fn(void *ud, const m3_client_memory *m) {
  m3_attn_codes *c = ud;
  if (m->query >= c->n_queries || m->rank >= c->k) {
    c->failed++;
    return 0;
  }
  const size_t i = (size_t)m->query * c->k + m->rank;
  int st = m->status;
  if (st == 0 && m->len > c->rec_bytes)
    st = M3_ESHAPE;
  if (c->ids)
    c->ids[i] = m->chunk_id;
  if (c->scores)
    c->scores[i] = m->score;
  if (c->status)
    c->status[i] = st;
  uint8_t *slot = c->buf ? c->buf + i * c->rec_bytes : NULL;
  if (st != 0) {
    /* It may have landed in its slot before it failed (m3_attn_codes_land):
     * an empty slot is zeros. */
    if (slot)
      memset(slot, 0, c->rec_bytes);
    c->failed++;
    return 0;
  }
  if (slot && m->data != slot) /* else received in place */
    memcpy(slot, m->data, m->len);
  c->placed++;
  return 0;
}

void *m3_attn_codes_land(void *ud, uint64_t chunk_id, uint32_t query, uint32_t rank, size_t len) {
  m3_attn_codes *c = ud;
  (void)chunk_id;
  if (c->buf == NULL || query >= c->n_queries || rank >= c->k || len > c->rec_bytes)
    return NULL;
  return c->buf + ((size_t)query * c->k + rank) * c->rec_bytes;
}

size_t m3_attn_abi_sizeof(const char *type) {
  static const struct {
    const char *name;
    size_t size;
  } tab[] = {
#define M3__ABI(t) {#t, sizeof(t)}
      M3__ABI(m3_client_info),     M3__ABI(m3_client_stats),    M3__ABI(m3_client_memory),
      M3__ABI(m3_client_query),    M3__ABI(m3_client_options),  M3__ABI(m3_cluster_options),
      M3__ABI(m3_cluster_counters), M3__ABI(m3_attn_geom),      M3__ABI(m3_attn_round),
      M3__ABI(m3_attn_stats),      M3__ABI(m3_attn_codes),      M3__ABI(m3_attn_ref_args),
      M3__ABI(m3_layout),          M3__ABI(m3_record),          M3__ABI(m3_cluster_replica_info),
      M3__ABI(m3_search_params),   M3__ABI(m3_record_in),
#undef M3__ABI
  };
  for (size_t i = 0; type && i < sizeof tab / sizeof tab[0]; i++)
    if (strcmp(tab[i].name, type) == 0)
      return tab[i].size;
  return 0;
}
