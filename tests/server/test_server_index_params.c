/*
 * Per-call index params (SearchRequest.params / RetrieveRequest.params).
 *
 * One m3-server over a 4000-memory store of random 32-dim embeddings with a
 * trained "IVF64,Flat" index and no --index-params (FAISS's nprobe 1):
 *  - nprobe = nlist (64) scans every list: the exact top-k (same ids as an
 *    exact double-precision search); nprobe 1 misses some of it;
 *  - calls with nprobe 1, 64 and none, sent in one burst on one connection
 *    (so that they queue and are micro-batched), each get what the same
 *    call gets alone: mixed settings never share one FAISS search;
 *  - nprobe past nlist, ef_search on an IVF index: INVALID_ARGUMENT naming
 *    the field, for Search and Retrieve; the connection goes on.
 */
#include <stdlib.h>

#include "srvtest.h"

#define COUNT 4000
#define DIM 32
#define NQ 8
#define K 5
#define NLIST 64
#define BURST 12

static char *dir;
static char store[4200];
static st_ref ref;
static st_server srv;
static st_conn conn;
static uint32_t stream = 2;
static float q[NQ * DIM];

static M3__SearchRequest request(M3__IndexParams *p, unsigned nprobe, unsigned ef) {
  M3__SearchRequest req = M3__SEARCH_REQUEST__INIT;
  req.queries = st_queries(q, NQ, DIM);
  req.n_queries = NQ;
  req.k = K;
  m3__index_params__init(p);
  p->nprobe = nprobe;
  p->ef_search = ef;
  req.params = nprobe || ef ? p : NULL;
  return req;
}

/* The ids of a Search response, (NQ, K), UINT64_MAX where absent. */
static void ids_of(const M3__SearchResponse *r, uint64_t *ids) {
  if (r->n_results != NQ) fail_msg("Search: %zu results for %d queries", r->n_results, NQ);
  for (int i = 0; i < NQ * K; i++) ids[i] = UINT64_MAX;
  for (int i = 0; i < NQ; i++)
    for (size_t j = 0; j < r->results[i]->n_ids && j < K; j++) ids[i * K + j] = r->results[i]->ids[j];
}

static void search_alone(unsigned nprobe, uint64_t *ids) {
  M3__IndexParams p;
  M3__SearchRequest req = request(&p, nprobe, 0);
  st_result r;
  st_call(&conn, M3_METHOD_SEARCH, stream++, 0, &req.base, NULL, 0, &r);
  st_queries_free(req.queries, NQ);
  ST_STATUS(r, 0);
  ids_of((const M3__SearchResponse *)r.resp, ids);
  st_result_free(&r);
}

static int same_sets(const uint64_t *a, const uint64_t *b) {
  for (int i = 0; i < NQ; i++)
    for (int x = 0; x < K; x++) {
      int found = 0;
      for (int y = 0; y < K; y++) found |= a[i * K + x] == b[i * K + y];
      if (!found) return 0;
    }
  return 1;
}

static void test_params(void **state) {
  (void)state;
  uint64_t exact[NQ * K], all[NQ * K], one[NQ * K], none[NQ * K];
  for (int i = 0; i < NQ; i++) {
    double sc[K];
    st_exact_topk(&ref, q + i * DIM, K, exact + i * K, sc);
  }
  search_alone(NLIST, all);
  search_alone(1, one);
  search_alone(0, none);
  if (!same_sets(all, exact)) fail_msg("nprobe %d (= nlist) is not the exact top-%d", NLIST, K);
  if (same_sets(one, exact)) fail_msg("nprobe 1 gave the exact top-%d of all %d queries", K, NQ);
  if (memcmp(one, none, sizeof one) != 0) fail_msg("no params differs from FAISS's nprobe 1");

  /* One burst of mixed calls, one write: they queue behind the first. */
  double batches0 = st_server_metric(&srv, "m3_search_batches_total");
  uint8_t *burst = NULL;
  size_t blen = 0;
  uint16_t methods[BURST];
  st_result res[BURST];
  uint32_t first = stream;
  for (int c = 0; c < BURST; c++) {
    unsigned np = c % 3 == 0 ? NLIST : c % 3 == 1 ? 1 : 0;
    M3__IndexParams p;
    M3__SearchRequest req = request(&p, np, 0);
    size_t len;
    uint8_t *f = st_frame_build(M3_FRAME_REQUEST, M3_METHOD_SEARCH, stream++, 0, &req.base, NULL,
                                0, &len);
    st_queries_free(req.queries, NQ);
    burst = realloc(burst, blen + len);
    memcpy(burst + blen, f, len);
    blen += len;
    free(f);
    methods[c] = M3_METHOD_SEARCH;
  }
  st_send_bytes(&conn, burst, blen);
  free(burst);
  st_collect(&conn, first, BURST, methods, res, 30000, NULL);
  for (int c = 0; c < BURST; c++) {
    ST_STATUS(res[c], 0);
    uint64_t got[NQ * K];
    ids_of((const M3__SearchResponse *)res[c].resp, got);
    const uint64_t *want = c % 3 == 0 ? all : c % 3 == 1 ? one : none;
    if (memcmp(got, want, sizeof got) != 0)
      fail_msg("burst call %d (nprobe %s): results differ from the same call alone", c,
               c % 3 == 0 ? "64" : c % 3 == 1 ? "1" : "unset");
    st_result_free(&res[c]);
  }
  double batches = st_server_metric(&srv, "m3_search_batches_total") - batches0;
  print_message("burst of %d calls: %.0f index searches\n", BURST, batches);
  if (batches < 2 || batches > BURST) fail_msg("%.0f index searches for %d calls", batches, BURST);
}

static void expect_invalid(uint16_t method, unsigned nprobe, unsigned ef, const char *field) {
  M3__IndexParams p;
  M3__SearchRequest sreq = request(&p, nprobe, ef);
  M3__RetrieveRequest rreq = M3__RETRIEVE_REQUEST__INIT;
  rreq.queries = sreq.queries;
  rreq.n_queries = NQ;
  rreq.k = K;
  rreq.params = sreq.params;
  st_result r;
  st_call(&conn, method, stream++, 0,
          method == M3_METHOD_SEARCH ? &sreq.base : &rreq.base, NULL, 0, &r);
  st_queries_free(sreq.queries, NQ);
  ST_STATUS(r, M3_STATUS_INVALID_ARGUMENT);
  ST_CONTAINS(r.message, field);
  st_result_free(&r);
}

static void test_refused(void **state) {
  (void)state;
  expect_invalid(M3_METHOD_SEARCH, NLIST + 1, 0, "params.nprobe = 65");
  expect_invalid(M3_METHOD_RETRIEVE, NLIST + 1, 0, "params.nprobe = 65");
  expect_invalid(M3_METHOD_SEARCH, 0, 32, "params.ef_search = 32");
  uint64_t all[NQ * K];
  search_alone(NLIST, all); /* the connection still serves */
}

int main(void) {
  dir = m3t_mkdtemp("index_params");
  snprintf(store, sizeof store, "%s/store", dir);
  st_gen_store(store, COUNT, DIM);
  st_ref_load(&ref, store);
  uint64_t rng = 7;
  for (int i = 0; i < NQ; i++) m3t_rand_unit(&rng, q + i * DIM, DIM);
  const char *args[] = {"--index", "IVF64,Flat", NULL};
  st_server_start(&srv, dir, store, args, NULL);
  st_conn_open(&conn, srv.rpc_port);
  st_hello_ok(&conn, 1, NULL);
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_params), cmocka_unit_test(test_refused)};
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  st_conn_close(&conn);
  st_server_stop(&srv, 30000);
  st_ref_free(&ref);
  m3t_rmrf(dir);
  free(dir);
  return rc;
}
