/*
 * A server-side ENOSPC reaches the client as its own code: a real m3-server
 * whose segment writes fail with ENOSPC (fault injection, $M3_FAULT
 * segment.write=ENOSPC) answers a Put with RESOURCE_EXHAUSTED naming
 * M3_ENOSPC (Status.error), and m3_client_put returns M3_ENOSPC, not the
 * M3_ENOMEM of the other RESOURCE_EXHAUSTED answers (a Fetch over
 * --max-ids, checked on the same server). The server goes on serving.
 */
#include <stdlib.h>

#include "client/client_testlib.h"
#include "m3/frame.h"

#define N 20
#define DIM 16
#define ADMIN_TOKEN "admin-secret-0123456789"

static ct_store S;
static ct_server SRV;

static int setup(void **state) {
  (void)state;
  ct_store_make(&S, N, DIM);
  char *at = m3t_write_file(S.dir, "admin.token", ADMIN_TOKEN);
  const char *extra[] = {"--admin-token-file", at, "--max-ids", "8", NULL};
  /* Inherited by the server only: this process writes no store. */
  setenv("M3_FAULT", "segment.write=ENOSPC", 1);
  ct_server_start(&SRV, &S, extra);
  unsetenv("M3_FAULT");
  free(at);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  ct_server_stop(&SRV);
  ct_store_free(&S);
  return 0;
}

static int count_ok(void *ud, const m3_client_memory *m) {
  if (m->status == 0) (*(int *)ud)++;
  return 0;
}

static void test_put_enospc_is_enospc(void **state) {
  (void)state;
  m3_client *c = ct_connect(&SRV, ADMIN_TOKEN);
  float emb[DIM];
  uint64_t rng = 9;
  size_t size;
  uint8_t *rec = ct_record_make(&S, 7000, &rng, emb, &size);
  uint32_t sz = (uint32_t)size, written = 99;
  CHECK_RC(m3_client_put(c, rec, &sz, 1, &written), M3_ENOSPC);
  const char *msg = NULL;
  int st = m3_client_last_status(c, &msg);
  if (st != M3__STATUS_CODE__RESOURCE_EXHAUSTED)
    fail_msg("Put under ENOSPC: status %s \"%s\", want RESOURCE_EXHAUSTED", m3_status_name(st), msg);
  CHECK_CONTAINS(msg, "Put");
  assert_true(m3_client_ok(c));

  /* The other RESOURCE_EXHAUSTED: over a limit, M3_ENOMEM as before. */
  uint64_t ids[9] = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  int n = 0;
  CHECK_RC(m3_client_fetch(c, ids, 9, 0, count_ok, &n), M3_ENOMEM);
  CHECK_U64(m3_client_last_status(c, NULL), M3__STATUS_CODE__RESOURCE_EXHAUSTED);

  /* Reads go on; the failed Put left nothing behind. */
  n = 0;
  CHECK_OK(m3_client_fetch(c, ids, 8, 0, count_ok, &n));
  assert_int_equal(n, 8);
  uint64_t id = 7000;
  int missing = 0;
  CHECK_OK(m3_client_fetch(c, &id, 1, 0, count_ok, &missing));
  assert_int_equal(missing, 0);
  free(rec);
  m3_client_close(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_put_enospc_is_enospc),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
