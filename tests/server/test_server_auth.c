/*
 * Auth tokens, the fingerprint check, and admin Put/Delete seen by the next
 * Search.
 *
 * m3-server with --token-file (read token) and --admin-token-file:
 *  - any call before Hello: UNAUTHENTICATED (and still no Hello done);
 *    Hello with a wrong or no token: UNAUTHENTICATED, and the connection
 *    is closed;
 *  - Hello with check_fingerprint and a wrong fingerprint:
 *    FAILED_PRECONDITION; with the store's: OK;
 *  - with the read token: Search works, Put and Delete PERMISSION_DENIED;
 *  - with the admin token (Hello says admin): Put of two records built with
 *    m3_record_encode in the layout Hello announced, with the same
 *    embedding, text included; the next Search with that embedding (on
 *    another connection, the read one) returns both first, tied, by id;
 *    Fetch returns their bytes and texts; a record of another layout is
 *    refused INVALID_ARGUMENT; Delete of one: the next Search no longer
 *    returns it, Fetch says NOT_FOUND for it and still returns the other;
 *    Hello on a new connection counts the records.
 */
#include <math.h>
#include <stdlib.h>

#include "m3/crc32c.h"
#include "m3/record.h"
#include "srvtest.h"

#define COUNT 300
#define DIM 32
#define READ_TOKEN "reader-secret-0123456789"
#define ADMIN_TOKEN "admin-secret-0123456789"

static char *dir;
static char store[4200];
static st_server srv;

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static int setup(void **state) {
  (void)state;
  dir = m3t_mkdtemp("auth");
  snprintf(store, sizeof store, "%s/store", dir);
  st_gen_store(store, COUNT, DIM);
  static char tok[4300], adm[4300];
  snprintf(tok, sizeof tok, "%s/token", dir);
  snprintf(adm, sizeof adm, "%s/admin-token", dir);
  write_file(tok, READ_TOKEN "\n");
  write_file(adm, ADMIN_TOKEN "\n");
  const char *args[] = {"--token-file", tok, "--admin-token-file", adm, NULL};
  st_server_start(&srv, dir, store, args, NULL);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  st_server_stop(&srv, 30000);
  m3t_rmrf(dir);
  free(dir);
  return 0;
}

static void test_unauthenticated(void **state) {
  (void)state;
  st_conn c;
  st_conn_open(&c, srv.rpc_port);
  M3__StatsRequest sr = M3__STATS_REQUEST__INIT;
  st_result r;
  st_call(&c, M3_METHOD_STATS, 1, 0, &sr.base, NULL, 0, &r);
  ST_STATUS(r, M3__STATUS_CODE__UNAUTHENTICATED);
  st_result_free(&r);
  st_call(&c, M3_METHOD_STATS, 2, 0, &sr.base, NULL, 0, &r); /* still not */
  ST_STATUS(r, M3__STATUS_CODE__UNAUTHENTICATED);
  st_result_free(&r);
  /* A wrong token is answered, then the connection is closed. */
  const char *wrong[] = {"wrong-token", NULL, READ_TOKEN "x" /* a prefix match is no match */,
                         "reader-secret-0123"};
  for (size_t i = 0; i < sizeof wrong / sizeof *wrong; i++) {
    st_conn w;
    st_conn_open(&w, srv.rpc_port);
    int st = st_hello(&w, 1, wrong[i], NULL);
    if (st != M3__STATUS_CODE__UNAUTHENTICATED)
      fail_msg("Hello, token '%s': %s, want UNAUTHENTICATED", wrong[i] ? wrong[i] : "(none)",
               m3_status_name(st));
    if (!st_wait_closed(&w, 5000, NULL)) fail_msg("connection open after a wrong token");
    st_conn_close(&w);
  }
  M3__HelloResponse *h;
  int st = st_hello(&c, 7, READ_TOKEN, &h);
  if (st != 0) fail_msg("Hello, read token: %s, want OK", m3_status_name(st));
  if (h->admin) fail_msg("Hello with the read token says admin");
  ST_EQ_U64(h->records, COUNT);
  m3__hello_response__free_unpacked(h, NULL);
  st_call(&c, M3_METHOD_STATS, 8, 0, &sr.base, NULL, 0, &r);
  ST_STATUS(r, 0);
  st_result_free(&r);
  st_conn_close(&c);
}

static void test_fingerprint(void **state) {
  (void)state;
  st_conn c;
  st_conn_open(&c, srv.rpc_port);
  M3__HelloResponse *h;
  int st = st_hello(&c, 1, READ_TOKEN, &h);
  if (st) fail_msg("Hello: %s", m3_status_name(st));
  uint64_t fp = h->layout->codec_fingerprint;
  m3__hello_response__free_unpacked(h, NULL);
  st_conn_close(&c);

  M3__HelloRequest req = M3__HELLO_REQUEST__INIT;
  req.protocol_version = M3_PROTOCOL_VERSION;
  req.token = READ_TOKEN;
  req.check_fingerprint = 1;
  req.codec_fingerprint = fp ^ 0x10;
  st_result r;
  st_conn_open(&c, srv.rpc_port);
  st_call(&c, M3_METHOD_HELLO, 1, 0, &req.base, NULL, 0, &r);
  ST_STATUS(r, M3__STATUS_CODE__FAILED_PRECONDITION);
  ST_CONTAINS(r.message, "fingerprint");
  st_result_free(&r);
  /* Without the check the same fingerprint is accepted... */
  req.check_fingerprint = 0;
  st_call(&c, M3_METHOD_HELLO, 2, 0, &req.base, NULL, 0, &r);
  ST_STATUS(r, 0);
  st_result_free(&r);
  /* ... and with the store's own it passes the check. */
  st_conn_close(&c);
  st_conn_open(&c, srv.rpc_port);
  req.check_fingerprint = 1;
  req.codec_fingerprint = fp;
  st_call(&c, M3_METHOD_HELLO, 1, 0, &req.base, NULL, 0, &r);
  ST_STATUS(r, 0);
  st_result_free(&r);
  /* Another protocol version is refused. */
  req.protocol_version = M3_PROTOCOL_VERSION + 1;
  st_call(&c, M3_METHOD_HELLO, 2, 0, &req.base, NULL, 0, &r);
  ST_STATUS(r, M3__STATUS_CODE__FAILED_PRECONDITION);
  st_result_free(&r);
  st_conn_close(&c);
}

static void admin_call(st_conn *c, uint16_t method, uint32_t stream, const ProtobufCMessage *req,
                       const void *att, size_t att_len, int want, st_result *r) {
  st_call(c, method, stream, 0, req, att, att_len, r);
  if (r->status != want)
    fail_msg("%s: %s \"%s\", want %s", m3_methods[method].name, m3_status_name(r->status),
             r->message, m3_status_name(want));
}

/* Stats' records and index_vectors (published by Put and Delete, read on
 * the loop without the index's lock). */
static void stats_counts(st_conn *c, uint32_t stream, uint64_t want) {
  M3__StatsRequest sr = M3__STATS_REQUEST__INIT;
  st_result r;
  st_call(c, M3_METHOD_STATS, stream, 0, &sr.base, NULL, 0, &r);
  ST_STATUS(r, 0);
  M3__StatsResponse *st = (M3__StatsResponse *)r.resp;
  ST_EQ_U64(st->records, want);
  ST_EQ_U64(st->index_vectors, want);
  ST_EQ_STR(st->index_factory, "IDMap,Flat");
  st_result_free(&r);
}

static void test_put_delete(void **state) {
  (void)state;
  st_conn rd, adm;
  st_conn_open(&rd, srv.rpc_port);
  st_conn_open(&adm, srv.rpc_port);
  st_hello_ok(&rd, 1, READ_TOKEN);
  M3__HelloResponse *h;
  int st = st_hello(&adm, 1, ADMIN_TOKEN, &h);
  if (st) fail_msg("Hello, admin token: %s", m3_status_name(st));
  if (!h->admin) fail_msg("Hello with the admin token does not say admin");
  m3_layout l = st_layout_from_hello(h->layout);
  ST_EQ_U64(h->layout->memory_bytes, m3_record_mem_size(&l));
  ST_EQ_U64(l.emb_dim, DIM);
  m3__hello_response__free_unpacked(h, NULL);

  /* Two new chunks with one embedding: a tie, broken by id. */
  const uint64_t A = 1000001, B = 1000000;
  float e[DIM];
  uint64_t seed = 99;
  m3t_rand_unit(&seed, e, DIM);
  size_t la, lb;
  uint8_t *ra = st_make_record(&l, A, e, "the admin put this one", &la);
  uint8_t *rb = st_make_record(&l, B, e, "and this one too", &lb);
  uint8_t *att = malloc(la + lb);
  memcpy(att, ra, la);
  memcpy(att + la, rb, lb);
  uint32_t sizes[2] = {(uint32_t)la, (uint32_t)lb};
  M3__PutRequest put = M3__PUT_REQUEST__INIT;
  put.sizes = sizes;
  put.n_sizes = 2;
  st_result r;

  /* The read token may not write. */
  admin_call(&rd, M3_METHOD_PUT, 2, &put.base, att, la + lb, M3__STATUS_CODE__PERMISSION_DENIED, &r);
  st_result_free(&r);
  M3__DeleteRequest del = M3__DELETE_REQUEST__INIT;
  uint64_t del_ids[1] = {5};
  del.ids = del_ids;
  del.n_ids = 1;
  admin_call(&rd, M3_METHOD_DELETE, 3, &del.base, NULL, 0, M3__STATUS_CODE__PERMISSION_DENIED, &r);
  st_result_free(&r);

  /* Sizes that do not add up to the attachment: INVALID_ARGUMENT. */
  sizes[1] = (uint32_t)lb - 1;
  admin_call(&adm, M3_METHOD_PUT, 2, &put.base, att, la + lb, M3__STATUS_CODE__INVALID_ARGUMENT, &r);
  st_result_free(&r);
  sizes[1] = (uint32_t)lb;
  /* A record of another layout (another fingerprint): INVALID_ARGUMENT, nothing written. */
  m3_layout other = l;
  other.codec_fp ^= 1;
  size_t lo;
  uint8_t *ro = st_make_record(&other, 1000002, e, "wrong codec", &lo);
  M3__PutRequest put_other = M3__PUT_REQUEST__INIT;
  uint32_t so[1] = {(uint32_t)lo};
  put_other.sizes = so;
  put_other.n_sizes = 1;
  admin_call(&adm, M3_METHOD_PUT, 3, &put_other.base, ro, lo, M3__STATUS_CODE__INVALID_ARGUMENT, &r);
  st_result_free(&r);
  free(ro);

  admin_call(&adm, M3_METHOD_PUT, 4, &put.base, att, la + lb, 0, &r);
  ST_EQ_U64(((M3__PutResponse *)r.resp)->written, 2);
  st_result_free(&r);
  stats_counts(&rd, 40, COUNT + 2);

  /* The next Search, on the other connection, finds both, tied, by id. */
  M3__SearchResponse *s = st_search_ok(&rd, 4, e, 1, DIM, 3);
  if (s->results[0]->n_ids < 2 || s->results[0]->ids[0] != B || s->results[0]->ids[1] != A)
    fail_msg("Search after Put: ids %llu, %llu; want %llu, %llu (a tie, by id)",
             (unsigned long long)s->results[0]->ids[0],
             (unsigned long long)(s->results[0]->n_ids > 1 ? s->results[0]->ids[1] : 0),
             (unsigned long long)B, (unsigned long long)A);
  if (fabsf(s->results[0]->scores[0] - 1.0f) > 1e-5f || s->results[0]->scores[0] != s->results[0]->scores[1])
    fail_msg("Search after Put: scores %.9f, %.9f; want 1, 1", (double)s->results[0]->scores[0],
             (double)s->results[0]->scores[1]);
  m3__search_response__free_unpacked(s, NULL);

  /* Fetch returns their bytes (the memory part of the records) and texts. */
  uint64_t fids[3] = {A, B, 3};
  M3__FetchRequest fr = M3__FETCH_REQUEST__INIT;
  fr.ids = fids;
  fr.n_ids = 3;
  fr.with_text = 1;
  st_call(&rd, M3_METHOD_FETCH, 5, 0, &fr.base, NULL, 0, &r);
  ST_STATUS(r, 0);
  ST_EQ_U64(r.n, 3);
  size_t mem = m3_record_mem_size(&l);
  for (size_t i = 0; i < r.n; i++) {
    M3__Memory *m = st_memory(&r.items[i]);
    if (m->status != 0) fail_msg("Fetch %llu: item status %s", (unsigned long long)m->chunk_id, m3_status_name(m->status));
    const uint8_t *p = r.items[i].data + r.items[i].f.msg_len;
    ST_EQ_U64(r.items[i].f.att_len, mem);
    ST_EQ_U64(m->payload_crc, m3_crc32c(0, p, mem));
    if (m->chunk_id == A || m->chunk_id == B) {
      const uint8_t *want = m->chunk_id == A ? ra : rb;
      if (memcmp(p, want, mem) != 0) fail_msg("Fetch %llu: bytes differ from the record put", (unsigned long long)m->chunk_id);
      ST_EQ_STR(m->text, m->chunk_id == A ? "the admin put this one" : "and this one too");
    }
    m3__memory__free_unpacked(m, NULL);
  }
  st_result_free(&r);

  /* Delete A: gone from Search and Fetch; B stays. */
  uint64_t dA[2] = {A, 77777777};
  del.ids = dA;
  del.n_ids = 2;
  admin_call(&adm, M3_METHOD_DELETE, 5, &del.base, NULL, 0, 0, &r);
  ST_EQ_U64(((M3__DeleteResponse *)r.resp)->deleted, 1);
  st_result_free(&r);
  stats_counts(&rd, 41, COUNT + 1);
  s = st_search_ok(&rd, 6, e, 1, DIM, 5);
  for (size_t j = 0; j < s->results[0]->n_ids; j++)
    if (s->results[0]->ids[j] == A) fail_msg("Search after Delete still returns %llu at rank %zu", (unsigned long long)A, j);
  if (s->results[0]->ids[0] != B) fail_msg("Search after Delete: first id %llu, want %llu", (unsigned long long)s->results[0]->ids[0], (unsigned long long)B);
  m3__search_response__free_unpacked(s, NULL);
  fr.with_text = 0;
  st_call(&rd, M3_METHOD_FETCH, 7, 0, &fr.base, NULL, 0, &r);
  ST_STATUS(r, 0);
  ST_EQ_U64(r.n, 3);
  for (size_t i = 0; i < r.n; i++) {
    M3__Memory *m = st_memory(&r.items[i]);
    int want = m->chunk_id == A ? M3__STATUS_CODE__NOT_FOUND : 0;
    if ((int)m->status != want)
      fail_msg("Fetch %llu after Delete: item %s, want %s", (unsigned long long)m->chunk_id,
               m3_status_name(m->status), m3_status_name(want));
    m3__memory__free_unpacked(m, NULL);
  }
  st_result_free(&r);

  /* A new connection's Hello counts them: 300 + 2 - 1. */
  st_conn c3;
  st_conn_open(&c3, srv.rpc_port);
  st = st_hello(&c3, 1, READ_TOKEN, &h);
  if (st) fail_msg("Hello: %s", m3_status_name(st));
  ST_EQ_U64(h->records, COUNT + 1);
  m3__hello_response__free_unpacked(h, NULL);
  st_conn_close(&c3);

  free(ra);
  free(rb);
  free(att);
  st_conn_close(&rd);
  st_conn_close(&adm);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_unauthenticated),
      cmocka_unit_test(test_fingerprint),
      cmocka_unit_test(test_put_delete),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
