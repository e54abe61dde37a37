/* The status table in both directions; see m3/status.h. */
#include "m3/status.h"

#include "m3.pb-c.h"

/* m3_status mirrors m3.proto's StatusCode value for value. */
#define CHECK_PROTO(name, grpc, m3, retry, kind)                                   \
  _Static_assert((int)M3__STATUS_CODE__##name == (grpc), "m3.proto StatusCode " #name);
M3_STATUS_MAP(CHECK_PROTO)
#undef CHECK_PROTO

enum { KIND_BOTH, KIND_RECV, KIND_SEND, KIND_NAMED };

typedef struct row {
  const char *name;
  int grpc, m3, retryable, kind;
} row;

static const row rows[] = {
#define ROW(name, grpc, m3, retry, kind) {#name, grpc, m3, retry, KIND_##kind},
    M3_STATUS_MAP(ROW)
#undef ROW
};
#define NROWS (sizeof rows / sizeof rows[0])

static int is_default(const row *r) { return r->kind == KIND_BOTH || r->kind == KIND_RECV; }
static int is_sending(const row *r) { return r->kind != KIND_RECV; }

static const row *default_row(int code) {
  for (size_t i = 0; i < NROWS; i++)
    if (rows[i].grpc == code && is_default(&rows[i])) return &rows[i];
  return NULL;
}

static const row *sending_row(int err) {
  for (size_t i = 0; i < NROWS; i++)
    if (rows[i].m3 == err && is_sending(&rows[i])) return &rows[i];
  return NULL;
}

const char *m3_status_name(int code) {
  const row *r = default_row(code);
  return r ? r->name : "UNKNOWN";
}

int m3_status_from_err(int err) {
  const row *r = sending_row(err);
  return r ? r->grpc : M3_STATUS_INTERNAL;
}

int m3_status_named_err(int err) {
  const row *r = sending_row(err);
  return r && r->kind == KIND_NAMED ? err : 0;
}

int m3_err_from_status(int code) {
  const row *r = default_row(code);
  return r ? r->m3 : M3_EIO;
}

int m3_err_from_wire(int code, int named) {
  if (named != 0)
    for (size_t i = 0; i < NROWS; i++)
      if (rows[i].kind == KIND_NAMED && rows[i].grpc == code && rows[i].m3 == named) return named;
  return m3_err_from_status(code);
}

int m3_status_retryable(int code) {
  const row *r = default_row(code);
  return r ? r->retryable : 0;
}
