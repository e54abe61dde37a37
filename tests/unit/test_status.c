/*
 * The status table (proto/include/m3/status.h): every row both ways, the
 * round trip m3 code -> gRPC status (+ Status.error) -> m3 code, one
 * default row per gRPC code and one sending row per m3 code, the constants
 * against m3.proto's StatusCode, and the contract the callers rely on
 * (DEADLINE_EXCEEDED and UNAVAILABLE are M3_EBUSY; ENOSPC arrives as
 * itself; the retryable set is the one the cluster client fails over on).
 */
#include <string.h>

#include "check.h"
#include "m3.pb-c.h"
#include "m3/status.h"

typedef struct row {
  const char *name;
  int grpc, m3, retryable;
  const char *kind;
} row;

static const row rows[] = {
#define ROW(name, grpc, m3, retry, kind) {#name, grpc, m3, retry, #kind},
    M3_STATUS_MAP(ROW)
#undef ROW
};
#define NROWS (sizeof rows / sizeof rows[0])

static const int m3_codes[] = {
    M3_OK,
#define CODE(name, val, desc) M3_E##name,
    M3_ERRNO_MAP(CODE)
#undef CODE
};
#define NCODES (sizeof m3_codes / sizeof m3_codes[0])

static int is(const row *r, const char *kind) { return strcmp(r->kind, kind) == 0; }
static int is_default(const row *r) { return is(r, "BOTH") || is(r, "RECV"); }

static int default_m3(int grpc) {
  for (size_t i = 0; i < NROWS; i++)
    if (rows[i].grpc == grpc && is_default(&rows[i])) return rows[i].m3;
  fail_msg("gRPC code %d has no default row", grpc);
  return 0;
}

static void test_constants_match_proto(void **state) {
  (void)state;
  const ProtobufCEnumDescriptor *d = &m3__status_code__descriptor;
  if (d->n_values != M3_STATUS_COUNT)
    fail_msg("m3.proto StatusCode has %u values, the table %d", d->n_values, M3_STATUS_COUNT);
  for (size_t i = 0; i < NROWS; i++) {
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value_by_name(d, rows[i].name);
    if (v == NULL) fail_msg("row %zu: %s is not in m3.proto's StatusCode", i, rows[i].name);
    if (v->value != rows[i].grpc)
      fail_msg("row %zu: %s is %d in the table, %d in m3.proto", i, rows[i].name, rows[i].grpc,
               v->value);
    if (strcmp(m3_status_name(rows[i].grpc), rows[i].name) != 0)
      fail_msg("m3_status_name(%d) = %s, want %s", rows[i].grpc, m3_status_name(rows[i].grpc),
               rows[i].name);
  }
  CHECK_U64(M3_STATUS_DEADLINE_EXCEEDED, M3__STATUS_CODE__DEADLINE_EXCEEDED);
  CHECK_U64(M3_STATUS_UNAUTHENTICATED, M3__STATUS_CODE__UNAUTHENTICATED);
}

static void test_one_default_row_per_status(void **state) {
  (void)state;
  for (int g = 0; g < M3_STATUS_COUNT; g++) {
    int n = 0, retry = -1;
    for (size_t i = 0; i < NROWS; i++) {
      if (rows[i].grpc != g) continue;
      n += is_default(&rows[i]);
      if (retry >= 0 && rows[i].retryable != retry)
        fail_msg("%s: rows disagree on retryable", rows[i].name);
      retry = rows[i].retryable;
    }
    if (n != 1) fail_msg("gRPC code %d (%s): %d default rows, want 1", g, m3_status_name(g), n);
    CHECK_U64(m3_status_retryable(g), retry);
  }
}

static void test_one_sending_row_per_code(void **state) {
  (void)state;
  for (size_t j = 0; j < NCODES; j++) {
    int n = 0;
    for (size_t i = 0; i < NROWS; i++) n += rows[i].m3 == m3_codes[j] && !is(&rows[i], "RECV");
    if (n != 1) fail_msg("%s: %d sending rows, want 1", m3_err_name(m3_codes[j]), n);
  }
}

/* Each row, in the directions its kind serves. */
static void test_every_row_both_ways(void **state) {
  (void)state;
  for (size_t i = 0; i < NROWS; i++) {
    const row *r = &rows[i];
    if (!is(r, "RECV")) { /* server: m3 -> gRPC */
      if (m3_status_from_err(r->m3) != r->grpc)
        fail_msg("m3_status_from_err(%s) = %s, want %s", m3_err_name(r->m3),
                 m3_status_name(m3_status_from_err(r->m3)), r->name);
      CHECK_U64(m3_status_named_err(r->m3), is(r, "NAMED") ? r->m3 : 0);
    }
    if (is_default(r)) { /* client: gRPC -> m3 */
      if (m3_err_from_status(r->grpc) != r->m3)
        fail_msg("m3_err_from_status(%s) = %s, want %s", r->name,
                 m3_err_name(m3_err_from_status(r->grpc)), m3_err_name(r->m3));
      CHECK_RC(m3_err_from_wire(r->grpc, 0), r->m3);
    }
    if (is(r, "NAMED")) {
      CHECK_RC(m3_err_from_wire(r->grpc, r->m3), r->m3);
      CHECK_RC(m3_err_from_status(r->grpc), default_m3(r->grpc)); /* not named: default */
    }
    if (is(r, "SEND")) CHECK_RC(m3_err_from_wire(r->grpc, r->m3), default_m3(r->grpc));
  }
}

/* Every m3 code through the wire and back: itself where the table keeps it
 * (BOTH, NAMED), the status's default where it does not (SEND). */
static void test_round_trip(void **state) {
  (void)state;
  for (size_t j = 0; j < NCODES; j++) {
    int err = m3_codes[j];
    int code = m3_status_from_err(err);
    int back = m3_err_from_wire(code, m3_status_named_err(err));
    const row *r = NULL;
    for (size_t i = 0; i < NROWS; i++)
      if (rows[i].m3 == err && !is(&rows[i], "RECV")) r = &rows[i];
    int want = is(r, "SEND") ? default_m3(code) : err;
    if (back != want)
      fail_msg("%s -> %s -> %s, want %s", m3_err_name(err), m3_status_name(code),
               m3_err_name(back), m3_err_name(want));
  }
}

static void test_outside_the_table(void **state) {
  (void)state;
  CHECK_U64(m3_status_from_err(-999), M3_STATUS_INTERNAL);
  CHECK_RC(m3_err_from_status(99), M3_EIO);
  CHECK_RC(m3_err_from_status(-1), M3_EIO);
  assert_string_equal(m3_status_name(99), "UNKNOWN");
  CHECK_U64(m3_status_retryable(99), 0);
  /* A named code the table does not name under that status is ignored. */
  CHECK_RC(m3_err_from_wire(M3_STATUS_INVALID_ARGUMENT, M3_ENOSPC), M3_EINVAL);
  CHECK_RC(m3_err_from_wire(M3_STATUS_RESOURCE_EXHAUSTED, M3_ECORRUPT), M3_ENOMEM);
}

/* What libm3client's callers and the cluster client rely on. */
static void test_callers_contract(void **state) {
  (void)state;
  CHECK_RC(m3_err_from_status(M3_STATUS_DEADLINE_EXCEEDED), M3_EBUSY);
  CHECK_RC(m3_err_from_status(M3_STATUS_UNAVAILABLE), M3_EBUSY);
  CHECK_U64(m3_status_from_err(M3_EBUSY), M3_STATUS_UNAVAILABLE);
  CHECK_RC(m3_err_from_status(M3_STATUS_CANCELLED), M3_ECANCELED);
  /* Auth failures read as their own code, not as an i/o error. */
  CHECK_RC(m3_err_from_status(M3_STATUS_PERMISSION_DENIED), M3_EAUTH);
  CHECK_RC(m3_err_from_status(M3_STATUS_UNAUTHENTICATED), M3_EAUTH);
  CHECK_U64(m3_status_from_err(M3_EAUTH), M3_STATUS_UNAUTHENTICATED);
  CHECK_RC(m3_err_from_status(M3_STATUS_RESOURCE_EXHAUSTED), M3_ENOMEM);
  CHECK_U64(m3_status_from_err(M3_ENOSPC), M3_STATUS_RESOURCE_EXHAUSTED);
  CHECK_RC(m3_err_from_wire(M3_STATUS_RESOURCE_EXHAUSTED, m3_status_named_err(M3_ENOSPC)),
           M3_ENOSPC);
  /* The cluster client's failover set (client/src/cluster.c retryable()):
   * requests every replica refuses alike are final, the rest retryable. */
  static const int final[] = {3, 5, 6, 7, 9, 11, 12, 16};
  for (int g = 1; g < M3_STATUS_COUNT; g++) {
    int is_final = 0;
    for (size_t i = 0; i < sizeof final / sizeof final[0]; i++) is_final |= final[i] == g;
    if (m3_status_retryable(g) != !is_final)
      fail_msg("%s: retryable %d, want %d", m3_status_name(g), m3_status_retryable(g), !is_final);
  }
  CHECK_U64(m3_status_retryable(M3_STATUS_OK), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_constants_match_proto),
      cmocka_unit_test(test_one_default_row_per_status),
      cmocka_unit_test(test_one_sending_row_per_code),
      cmocka_unit_test(test_every_row_both_ways),
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_outside_the_table),
      cmocka_unit_test(test_callers_contract),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
