/*
 * Retrieve, Search and Fetch against an exact search over the store itself.
 *
 * One m3-server over a fresh 300-memory store (Memory3 shape, 32-dim
 * embeddings). Before the server starts, the test reads every embedding,
 * record and text out of the store (read-only; the segment bytes by pread at
 * the catalog's location, not through m3_store_fetch) and answers every
 * query itself with an exact cosine search in double precision. Then:
 *  - Retrieve, 32 queries x top-5: every (query, rank) streamed once, the
 *    chunk ids and their order equal the exact top-k (ties by id; a
 *    float-level near tie may swap), scores within 1e-5, each attachment
 *    byte-identical to the record in the segment, payload_crc its CRC32C,
 *    payload_bytes its length;
 *  - Search gives the same ids and scores;
 *  - text queries (Query.text) equal m3_embed_hash + exact search, for
 *    Search and Retrieve (with_text returns the chunk texts);
 *  - Fetch streams every asked id once (tagged with its index), a missing id gets a per-item
 *    NOT_FOUND while the others succeed, with_text returns the texts;
 *  - requests out of bounds (k 0, k past --max-k, wrong dims, no query)
 *    get INVALID_ARGUMENT or RESOURCE_EXHAUSTED and the connection goes on.
 */
#include <math.h>
#include <stdlib.h>

#include "m3/crc32c.h"
#include "m3/embed.h"
#include "srvtest.h"

#define COUNT 300
#define DIM 32
#define NQ 32
#define K 5

typedef struct fixture {
  char *dir;
  char store[4200];
  st_ref ref;
  st_server srv;
  st_conn conn;
  uint32_t stream;
} fixture;

static fixture F;

static int setup(void **state) {
  (void)state;
  F.dir = m3t_mkdtemp("retrieve");
  snprintf(F.store, sizeof F.store, "%s/store", F.dir);
  st_gen_store(F.store, COUNT, DIM);
  /* The store says its embeddings are the server's hash embedder's, so the
   * server embeds text queries for it (test_text_queries); without this a
   * generated store's embedder is unknown and text is refused. */
  char man[sizeof F.store + 16];
  snprintf(man, sizeof man, "%s/encode.json", F.store);
  FILE *mf = fopen(man, "w");
  assert_non_null(mf);
  fprintf(mf, "{\"embed\": \"hash:%d\"}\n", DIM);
  assert_int_equal(fclose(mf), 0);
  st_ref_load(&F.ref, F.store);
  assert_int_equal(F.ref.n, COUNT);
  st_server_start(&F.srv, F.dir, F.store, NULL, NULL);
  st_conn_open(&F.conn, F.srv.rpc_port);
  st_hello_ok(&F.conn, 1, NULL);
  F.stream = 2;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  st_conn_close(&F.conn);
  st_server_stop(&F.srv, 30000);
  st_ref_free(&F.ref);
  m3t_rmrf(F.dir);
  free(F.dir);
  return 0;
}

/* Check a server ranking (ids, scores; n entries) for query q against the
 * exact one. A swap is accepted only between memories whose exact scores
 * differ by less than 1e-6 (float rounding in the index). */
static void check_ranking(const float *q, unsigned qi, const uint64_t *ids, const float *scores,
                          size_t n, const char *what) {
  uint64_t want[K];
  double wsc[K];
  st_exact_topk(&F.ref, q, K, want, wsc);
  if (n != K) fail_msg("%s query %u: %zu results, want %d", what, qi, n, K);
  for (unsigned j = 0; j < K; j++) {
    long at = st_ref_find(&F.ref, ids[j]);
    if (at < 0) fail_msg("%s query %u rank %u: id %llu is not in the store", what, qi, j,
                         (unsigned long long)ids[j]);
    double exact = st_cosine(&F.ref, q, (size_t)at);
    if (ids[j] != want[j] && fabs(exact - wsc[j]) >= 1e-6)
      fail_msg("%s query %u rank %u: id %llu (cosine %.9f), want id %llu (cosine %.9f)", what, qi,
               j, (unsigned long long)ids[j], exact, (unsigned long long)want[j], wsc[j]);
    if (fabs((double)scores[j] - exact) > 1e-5)
      fail_msg("%s query %u rank %u id %llu: score %.9f, exact cosine %.9f", what, qi, j,
               (unsigned long long)ids[j], (double)scores[j], exact);
    for (unsigned i = 0; i < j; i++)
      if (ids[i] == ids[j]) fail_msg("%s query %u: id %llu twice", what, qi, (unsigned long long)ids[j]);
  }
}

/* Check one streamed memory's attachment against the store's bytes. */
static void check_payload(const st_frame *fr, const M3__Memory *m, const char *what) {
  long at = st_ref_find(&F.ref, m->chunk_id);
  if (at < 0) fail_msg("%s: chunk %llu is not in the store", what, (unsigned long long)m->chunk_id);
  const uint8_t *att = fr->data + fr->f.msg_len;
  ST_EQ_U64(fr->f.att_len, F.ref.mem_len[at]);
  ST_EQ_U64(m->payload_bytes, fr->f.att_len);
  ST_EQ_U64(m->payload_crc, m3_crc32c(0, att, fr->f.att_len));
  /* The catalog's mem_crc covers the memory after the record header. */
  ST_EQ_U64(m3_crc32c(0, att + 64, fr->f.att_len - 64), F.ref.mem_crc[at]);
  if (memcmp(att, F.ref.mem[at], F.ref.mem_len[at]) != 0) {
    size_t i = 0;
    while (att[i] == F.ref.mem[at][i]) i++;
    fail_msg("%s: chunk %llu: payload differs from the segment's record at byte %zu (%02x != %02x)",
             what, (unsigned long long)m->chunk_id, i, att[i], F.ref.mem[at][i]);
  }
}

static void random_queries(float *q, unsigned nq, uint64_t seed) {
  for (unsigned i = 0; i < nq; i++) m3t_rand_unit(&seed, q + (size_t)i * DIM, DIM);
}

/* Retrieve of nq queries (vectors q or texts) and checks; with_text checks
 * the texts too. */
static void retrieve_and_check(M3__Query **qs, const float *qv, unsigned nq, int with_text,
                               const char *what) {
  M3__RetrieveRequest req = M3__RETRIEVE_REQUEST__INIT;
  req.queries = qs;
  req.n_queries = nq;
  req.k = K;
  req.with_text = with_text;
  st_result r;
  st_call(&F.conn, M3_METHOD_RETRIEVE, F.stream++, 0, &req.base, NULL, 0, &r);
  ST_STATUS(r, 0);
  ST_EQ_U64(r.n, (size_t)nq * K);
  uint64_t *ids = calloc((size_t)nq * K, sizeof *ids);
  float *scores = calloc((size_t)nq * K, sizeof *scores);
  uint8_t *seen = calloc((size_t)nq * K, 1);
  assert_true(ids && scores && seen);
  for (size_t i = 0; i < r.n; i++) {
    M3__Memory *m = st_memory(&r.items[i]);
    if (m->query >= nq || m->rank >= K)
      fail_msg("%s item %zu: query %u rank %u out of range (%u queries, k %d)", what, i, m->query,
               m->rank, nq, K);
    size_t slot = (size_t)m->query * K + m->rank;
    if (seen[slot]) fail_msg("%s: query %u rank %u streamed twice", what, m->query, m->rank);
    seen[slot] = 1;
    if (m->status != M3__STATUS_CODE__OK)
      fail_msg("%s: query %u rank %u: item status %d (%s)", what, m->query, m->rank, m->status,
               m->error ? m->error : "");
    ids[slot] = m->chunk_id;
    scores[slot] = m->score;
    check_payload(&r.items[i], m, what);
    if (with_text) {
      long at = st_ref_find(&F.ref, m->chunk_id);
      ST_EQ_STR(m->text, F.ref.text[at]);
    } else if (m->text && m->text[0]) {
      fail_msg("%s: text '%s' sent without with_text", what, m->text);
    }
    m3__memory__free_unpacked(m, NULL);
  }
  for (unsigned i = 0; i < nq; i++)
    check_ranking(qv + (size_t)i * DIM, i, ids + (size_t)i * K, scores + (size_t)i * K, K, what);
  free(ids);
  free(scores);
  free(seen);
  st_result_free(&r);
}

static void test_retrieve_exact_topk(void **state) {
  (void)state;
  float q[NQ * DIM];
  random_queries(q, NQ, 42);
  M3__Query **qs = st_queries(q, NQ, DIM);
  retrieve_and_check(qs, q, NQ, 0, "Retrieve");
  /* Queries equal to stored embeddings: each finds its own memory first. */
  float own[8 * DIM];
  for (unsigned i = 0; i < 8; i++) memcpy(own + i * DIM, F.ref.emb + (size_t)(i * 37) * DIM, DIM * sizeof *own);
  M3__Query **qo = st_queries(own, 8, DIM);
  retrieve_and_check(qo, own, 8, 1, "Retrieve(own embeddings, with_text)");
  st_queries_free(qs, NQ);
  st_queries_free(qo, 8);
}

static void test_search_same_ids(void **state) {
  (void)state;
  float q[NQ * DIM];
  random_queries(q, NQ, 42);
  M3__SearchResponse *s = st_search_ok(&F.conn, F.stream++, q, NQ, DIM, K);
  for (unsigned i = 0; i < NQ; i++) {
    M3__SearchResult *res = s->results[i];
    ST_EQ_U64(res->n_ids, res->n_scores);
    check_ranking(q + (size_t)i * DIM, i, res->ids, res->scores, res->n_ids, "Search");
  }
  /* k larger than the store: every memory, then no padding ids. */
  M3__SearchRequest req = M3__SEARCH_REQUEST__INIT;
  req.queries = st_queries(q, 1, DIM);
  req.n_queries = 1;
  req.k = 64;
  st_result r;
  st_call(&F.conn, M3_METHOD_SEARCH, F.stream++, 0, &req.base, NULL, 0, &r);
  ST_STATUS(r, 0);
  M3__SearchResponse *big = (M3__SearchResponse *)r.resp;
  ST_EQ_U64(big->results[0]->n_ids, 64);
  st_queries_free(req.queries, 1);
  st_result_free(&r);
  m3__search_response__free_unpacked(s, NULL);
}

static void test_text_queries(void **state) {
  (void)state;
  const char *texts[] = {"synthetic memory 17", "memory of the synthetic kind",
                         "Hello, World! 42", "un été à Paris"};
  enum { NT = 4 };
  float qv[NT * DIM];
  M3__Query qm[NT], *qs[NT];
  for (unsigned i = 0; i < NT; i++) {
    int rc = m3_embed_hash(texts[i], strlen(texts[i]), qv + i * DIM, DIM);
    if (rc) fail_msg("m3_embed_hash '%s': %d", texts[i], rc);
    m3__query__init(&qm[i]);
    qm[i].text = (char *)texts[i];
    qs[i] = &qm[i];
  }
  M3__SearchRequest req = M3__SEARCH_REQUEST__INIT;
  req.queries = qs;
  req.n_queries = NT;
  req.k = K;
  st_result r;
  st_call(&F.conn, M3_METHOD_SEARCH, F.stream++, 0, &req.base, NULL, 0, &r);
  ST_STATUS(r, 0);
  M3__SearchResponse *s = (M3__SearchResponse *)r.resp;
  ST_EQ_U64(s->n_results, NT);
  for (unsigned i = 0; i < NT; i++)
    check_ranking(qv + i * DIM, i, s->results[i]->ids, s->results[i]->scores, s->results[i]->n_ids,
                  "Search(text)");
  st_result_free(&r);
  retrieve_and_check(qs, qv, NT, 1, "Retrieve(text)");

  /* Text with no word in it has no embedding: INVALID_ARGUMENT. */
  M3__Query bad = M3__QUERY__INIT, *bq = &bad;
  bad.text = "?!";
  req.queries = &bq;
  req.n_queries = 1;
  st_call(&F.conn, M3_METHOD_SEARCH, F.stream++, 0, &req.base, NULL, 0, &r);
  ST_STATUS(r, M3__STATUS_CODE__INVALID_ARGUMENT);
  st_result_free(&r);
}

static void test_fetch(void **state) {
  (void)state;
  uint64_t ids[] = {7, 0, 299, 123456789, 150, 7};
  enum { N = 6 };
  for (int with_text = 0; with_text <= 1; with_text++) {
    M3__FetchRequest req = M3__FETCH_REQUEST__INIT;
    req.ids = ids;
    req.n_ids = N;
    req.with_text = with_text;
    st_result r;
    st_call(&F.conn, M3_METHOD_FETCH, F.stream++, 0, &req.base, NULL, 0, &r);
    ST_STATUS(r, 0);
    ST_EQ_U64(r.n, N);
    int seen[N] = {0};
    for (size_t i = 0; i < r.n; i++) {
      M3__Memory *m = st_memory(&r.items[i]);
      if (m->query >= N) fail_msg("Fetch item %zu: index %u of %d ids", i, m->query, N);
      if (seen[m->query]++) fail_msg("Fetch: index %u twice", m->query);
      ST_EQ_U64(m->chunk_id, ids[m->query]);
      if (ids[m->query] == 123456789) {
        if (m->status != M3__STATUS_CODE__NOT_FOUND)
          fail_msg("Fetch of a missing id: item status %s, want NOT_FOUND",
                   m3_status_name(m->status));
        ST_EQ_U64(r.items[i].f.att_len, 0);
      } else {
        if (m->status != M3__STATUS_CODE__OK)
          fail_msg("Fetch id %llu: item status %s (%s), want OK", (unsigned long long)m->chunk_id,
                   m3_status_name(m->status), m->error ? m->error : "");
        check_payload(&r.items[i], m, "Fetch");
        long at = st_ref_find(&F.ref, m->chunk_id);
        if (with_text) ST_EQ_STR(m->text, F.ref.text[at]);
        else if (m->text && m->text[0]) fail_msg("Fetch: text without with_text");
      }
      m3__memory__free_unpacked(m, NULL);
    }
    st_result_free(&r);
  }
}

static void test_bad_requests(void **state) {
  (void)state;
  float q[2 * DIM];
  random_queries(q, 2, 7);
  M3__SearchRequest req = M3__SEARCH_REQUEST__INIT;
  req.queries = st_queries(q, 2, DIM);
  req.n_queries = 2;
  st_result r;
  struct {
    unsigned k, nq, dim;
    int want;
  } cases[] = {
      {0, 2, DIM, M3__STATUS_CODE__INVALID_ARGUMENT},     /* k 0 */
      {65, 2, DIM, M3__STATUS_CODE__INVALID_ARGUMENT},    /* past --max-k 64 */
      {5, 0, DIM, M3__STATUS_CODE__INVALID_ARGUMENT},     /* no queries */
      {5, 2, DIM - 1, M3__STATUS_CODE__INVALID_ARGUMENT}, /* wrong dims */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    req.k = cases[i].k;
    req.n_queries = cases[i].nq;
    for (unsigned j = 0; j < 2; j++) req.queries[j]->n_vector = cases[i].dim;
    st_call(&F.conn, M3_METHOD_SEARCH, F.stream++, 0, &req.base, NULL, 0, &r);
    if (r.status != cases[i].want)
      fail_msg("case %zu (k %u, %u queries, %u dims): %s \"%s\", want %s", i, cases[i].k,
               cases[i].nq, cases[i].dim, m3_status_name(r.status), r.message,
               m3_status_name(cases[i].want));
    st_result_free(&r);
  }
  /* Too many ids for one Fetch (--max-ids 4096). */
  uint64_t *ids = calloc(4097, sizeof *ids);
  M3__FetchRequest fr = M3__FETCH_REQUEST__INIT;
  fr.ids = ids;
  fr.n_ids = 4097;
  st_call(&F.conn, M3_METHOD_FETCH, F.stream++, 0, &fr.base, NULL, 0, &r);
  ST_STATUS(r, M3__STATUS_CODE__RESOURCE_EXHAUSTED);
  st_result_free(&r);
  free(ids);
  /* The connection still serves. */
  for (unsigned j = 0; j < 2; j++) req.queries[j]->n_vector = DIM;
  M3__SearchResponse *s = st_search_ok(&F.conn, F.stream++, q, 2, DIM, K);
  m3__search_response__free_unpacked(s, NULL);
  st_queries_free(req.queries, 2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_retrieve_exact_topk),
      cmocka_unit_test(test_search_same_ids),
      cmocka_unit_test(test_text_queries),
      cmocka_unit_test(test_fetch),
      cmocka_unit_test(test_bad_requests),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
