/*
 * The status table: how m3 error codes (m3/error.h) and the gRPC status
 * codes of the wire (m3.proto StatusCode, the END frame's arg) map onto each
 * other, in both directions, from one X-macro table in the style of
 * M3_ERRNO_MAP.
 *
 * XX(name, grpc, m3, retryable, kind), one row per (m3 code, gRPC code) pair:
 *
 *   name       the gRPC status name ("DEADLINE_EXCEEDED"), m3_status_name()
 *   grpc       its value in m3.proto's StatusCode
 *   m3         an m3 error code
 *   retryable  1: another replica, or the same call later, may succeed
 *              (the status says something about this server now, not about
 *              the request); a property of the gRPC code, the same in
 *              every row of one code
 *   kind       which direction the row serves:
 *     BOTH   the server sends m3 as grpc; a client reports grpc as m3
 *            (the one default row of its gRPC code)
 *     RECV   a client reports grpc as m3 (the default row of a gRPC code
 *            that the server never derives from an m3 code)
 *     SEND   the server sends m3 as grpc; a client reports the gRPC
 *            code's default row
 *     NAMED  the server sends m3 as grpc and names m3 in Status.error; a
 *            client that finds it named reports m3 itself, otherwise the
 *            gRPC code's default
 *
 * Every gRPC code has exactly one default row (BOTH or RECV); every m3 code
 * of M3_ERRNO_MAP has exactly one sending row (BOTH, SEND or NAMED); an m3
 * code outside the table is sent as INTERNAL (tests/unit/test_status.c
 * checks all three).
 */
#ifndef M3_STATUS_H
#define M3_STATUS_H

#include "m3/error.h"

#define M3_STATUS_MAP(XX)                                                \
  XX(OK,                  0,  M3_OK,           0, BOTH)                  \
  XX(CANCELLED,           1,  M3_ECANCELED,    1, BOTH)                  \
  XX(UNKNOWN,             2,  M3_EIO,          1, RECV)                  \
  XX(INVALID_ARGUMENT,    3,  M3_EINVAL,       0, BOTH)                  \
  XX(INVALID_ARGUMENT,    3,  M3_ESHAPE,       0, SEND)                  \
  XX(INVALID_ARGUMENT,    3,  M3_EBADFORMAT,   0, SEND)                  \
  XX(INVALID_ARGUMENT,    3,  M3_ERANGE,       0, SEND)                  \
  /* No answer in time: callers retry M3_EBUSY (client.h, cluster.h). */ \
  XX(DEADLINE_EXCEEDED,   4,  M3_EBUSY,        1, RECV)                  \
  XX(NOT_FOUND,           5,  M3_ENOTFOUND,    0, BOTH)                  \
  XX(ALREADY_EXISTS,      6,  M3_EEXIST,       0, BOTH)                  \
  XX(PERMISSION_DENIED,   7,  M3_EAUTH,        0, RECV)                  \
  XX(RESOURCE_EXHAUSTED,  8,  M3_ENOMEM,       1, BOTH)                  \
  XX(RESOURCE_EXHAUSTED,  8,  M3_ENOSPC,       1, NAMED)                 \
  XX(FAILED_PRECONDITION, 9,  M3_EFINGERPRINT, 0, BOTH)                  \
  XX(FAILED_PRECONDITION, 9,  M3_EVERSION,     0, SEND)                  \
  XX(ABORTED,             10, M3_EIO,          1, RECV)                  \
  XX(OUT_OF_RANGE,        11, M3_EIO,          0, RECV)                  \
  XX(UNIMPLEMENTED,       12, M3_EUNSUPPORTED, 0, BOTH)                  \
  XX(INTERNAL,            13, M3_EIO,          1, RECV)                  \
  XX(INTERNAL,            13, M3_EIO,          1, SEND)                  \
  XX(INTERNAL,            13, M3_EINTERNAL,    1, SEND)                  \
  XX(UNAVAILABLE,         14, M3_EBUSY,        1, BOTH)                  \
  XX(DATA_LOSS,           15, M3_ECORRUPT,     1, BOTH)                  \
  XX(UNAUTHENTICATED,     16, M3_EAUTH,        0, BOTH)

/* M3_STATUS_OK = 0, ... M3_STATUS_UNAUTHENTICATED = 16: one constant per
 * gRPC code (its default row), equal to m3.proto's M3__STATUS_CODE__*, for
 * code that does not include the generated protobuf header. */
#define M3__STATUS_ENUM_BOTH(name, grpc) M3_STATUS_##name = (grpc),
#define M3__STATUS_ENUM_RECV(name, grpc) M3_STATUS_##name = (grpc),
#define M3__STATUS_ENUM_SEND(name, grpc)
#define M3__STATUS_ENUM_NAMED(name, grpc)
#define M3__STATUS_ENUM(name, grpc, m3, retry, kind) M3__STATUS_ENUM_##kind(name, grpc)
typedef enum m3_status {
  M3_STATUS_MAP(M3__STATUS_ENUM)
  M3_STATUS_COUNT /* 17: the gRPC codes */
} m3_status;

/* "DEADLINE_EXCEEDED" for a gRPC code; "UNKNOWN" for a value outside
 * 0..M3_STATUS_COUNT-1. Never NULL. */
const char *m3_status_name(int code);

/* Server: the gRPC status for an m3 error code (M3_ENOTFOUND -> NOT_FOUND;
 * a code outside the table -> INTERNAL). */
int m3_status_from_err(int err);

/* Server: what to put in Status.error for err: err when its row is NAMED,
 * else 0 (the gRPC code alone says it). */
int m3_status_named_err(int err);

/* Client: the m3 error code for a gRPC status, from its default row (a
 * value outside the table: M3_EIO). */
int m3_err_from_status(int code);

/* Client: the same, given also the Status.error the server sent (0: none):
 * named when the table has a NAMED row (named, code), else the default. */
int m3_err_from_wire(int code, int named);

/* Whether a call that failed with gRPC code may succeed on another replica
 * or when tried again; 0 for OK and for values outside the table. */
int m3_status_retryable(int code);

#endif /* M3_STATUS_H */
