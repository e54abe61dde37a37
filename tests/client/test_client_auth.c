/*
 * Auth against a real m3-server started with a read token and an admin
 * token: no token and a wrong token are refused (UNAUTHENTICATED), the read
 * token reads but may not Put (PERMISSION_DENIED), the admin token Puts a
 * memory that the next Search finds and Fetch returns byte for byte, and
 * Deletes it again.
 */
#include <stdlib.h>
#include <sys/wait.h>

#include "client/client_testlib.h"
#include "m3/frame.h"

#define N 100
#define DIM 16
#define READ_TOKEN "read-secret-0123456789"
#define ADMIN_TOKEN "admin-secret-0123456789"

static ct_store S;
static ct_server SRV;

static int setup(void **state) {
  ct_store_make(&S, N, DIM);
  char *rt = m3t_write_file(S.dir, "read.token", READ_TOKEN);
  char *at = m3t_write_file(S.dir, "admin.token", ADMIN_TOKEN);
  const char *extra[] = {"--token-file", rt, "--admin-token-file", at, NULL};
  ct_server_start(&SRV, &S, extra);
  free(rt);
  free(at);
  return 0;
}

static int teardown(void **state) {
  ct_server_stop(&SRV);
  ct_store_free(&S);
  return 0;
}

static void refused(const char *token) {
  m3_client_options o;
  m3_client_options_init(&o);
  o.token = token;
  m3_client *c = NULL;
  int rc = m3_client_connect(SRV.addr, &o, &c);
  if (rc == 0) fail_msg("token '%s' was accepted", token ? token : "(none)");
  assert_null(c);
  CHECK_CONTAINS(m3_errmsg(), "UNAUTHENTICATED");
  CHECK_CONTAINS(m3_errmsg(), SRV.addr);
}

static void test_no_or_wrong_token_refused(void **state) {
  refused(NULL);
  refused("read-secret-");
  refused("read-secret-0123456789x");
}

static int count_ok(void *ud, const m3_client_memory *m) {
  if (m->status == 0) (*(int *)ud)++;
  return 0;
}

static void test_read_token_reads_not_writes(void **state) {
  m3_client *c = ct_connect(&SRV, READ_TOKEN);
  assert_int_equal(m3_client_info_get(c)->admin, 0);
  uint64_t id = 3;
  int n = 0;
  CHECK_OK(m3_client_fetch(c, &id, 1, 0, count_ok, &n));
  assert_int_equal(n, 1);
  uint32_t deleted = 99;
  assert_true(m3_client_delete(c, &id, 1, &deleted) < 0);
  assert_int_equal(m3_client_last_status(c, NULL), M3__STATUS_CODE__PERMISSION_DENIED);
  /* Still there. */
  n = 0;
  CHECK_OK(m3_client_fetch(c, &id, 1, 0, count_ok, &n));
  assert_int_equal(n, 1);
  m3_client_close(c);
}

typedef struct same {
  const uint8_t *want;
  size_t len;
  int ok, missing;
} same;

static int check_same(void *ud, const m3_client_memory *m) {
  same *s = ud;
  if (m->status == M3_ENOTFOUND) s->missing++;
  else if (m->status == 0 && m->len == s->len && memcmp(m->data, s->want, s->len) == 0) s->ok++;
  return 0;
}

static void test_admin_put_search_delete(void **state) {
  m3_client *c = ct_connect(&SRV, ADMIN_TOKEN);
  assert_int_equal(m3_client_info_get(c)->admin, 1);
  const uint64_t id = 5000;
  float emb[DIM];
  uint64_t rng = 5;
  size_t size;
  uint8_t *rec = ct_record_make(&S, id, &rng, emb, &size);
  uint32_t sz = (uint32_t)size, written = 0;
  CHECK_OK(m3_client_put(c, rec, &sz, 1, &written));
  assert_int_equal(written, 1);

  m3_client_query q = {.vector = emb, .dim = DIM};
  uint64_t ids[3];
  float scores[3];
  uint32_t count;
  CHECK_OK(m3_client_search(c, &q, 1, 3, ids, scores, &count));
  CHECK_U64(ids[0], id);
  assert_true(scores[0] > 0.999f);

  same s = {.want = rec, .len = m3_record_mem_size(&S.layout)};
  CHECK_OK(m3_client_fetch(c, &id, 1, 0, check_same, &s));
  assert_int_equal(s.ok, 1);

  uint32_t deleted = 0;
  CHECK_OK(m3_client_delete(c, &id, 1, &deleted));
  assert_int_equal(deleted, 1);
  s = (same){.want = rec, .len = m3_record_mem_size(&S.layout)};
  CHECK_OK(m3_client_fetch(c, &id, 1, 0, check_same, &s));
  assert_int_equal(s.missing, 1);
  CHECK_OK(m3_client_search(c, &q, 1, 3, ids, scores, &count));
  assert_true(ids[0] != id);
  free(rec);
  m3_client_close(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_no_or_wrong_token_refused),
      cmocka_unit_test(test_read_token_reads_not_writes),
      cmocka_unit_test(test_admin_put_search_delete),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
