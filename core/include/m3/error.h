/*
 * m3store error space.
 *
 * Every m3 function that can fail returns int: 0 on success, a negative M3_E*
 * code on failure. Foreign errors (errno, RocksDB's errptr strings, FAISS,
 * CUDA) are converted once, in the module that called them, and the module
 * leaves a sentence saying what failed and where (file, offset, chunk id,
 * field) in a thread-local buffer that m3_errmsg() returns.
 *
 * Codes and their descriptions come from one table, M3_ERRNO_MAP.
 */
#ifndef M3_ERROR_H
#define M3_ERROR_H

#include <stdarg.h>

/* XX(name, value, description) */
#define M3_ERRNO_MAP(XX)                                                 \
  XX(INVAL,       -1,  "invalid argument")                               \
  XX(NOMEM,       -2,  "out of memory")                                  \
  XX(NOTFOUND,    -3,  "not found")                                      \
  XX(CORRUPT,     -4,  "data corrupt (checksum mismatch)")               \
  XX(IO,          -5,  "i/o error")                                      \
  XX(NOSPC,       -6,  "no space left on device")                        \
  XX(BADFORMAT,   -7,  "bad format")                                     \
  XX(VERSION,     -8,  "unsupported format version")                     \
  XX(FINGERPRINT, -9,  "codec fingerprint mismatch")                     \
  XX(EXIST,       -10, "already exists")                                 \
  XX(BUSY,        -11, "resource busy or locked")                        \
  XX(UNSUPPORTED, -12, "operation not supported")                        \
  XX(RANGE,       -13, "value out of range")                             \
  XX(SHAPE,       -14, "memory shape mismatch")                          \
  XX(INTERNAL,    -15, "internal error")                                 \
  XX(CANCELED,    -16, "cancelled")                                     \
  XX(AUTH,        -17, "not authenticated")

typedef enum m3_errno {
  M3_OK = 0,
#define M3__ERR_ENUM(name, val, desc) M3_E##name = (val),
  M3_ERRNO_MAP(M3__ERR_ENUM)
#undef M3__ERR_ENUM
} m3_errno;

/* Description of an error code ("not found"); never NULL. */
const char *m3_strerror(int err);

/* Symbolic name of an error code ("M3_ENOTFOUND"); never NULL. */
const char *m3_err_name(int err);

/*
 * The detailed message of the last error set in this thread: what failed and
 * where. Valid until the next m3 call in this thread. Never NULL; "" when no
 * detail was recorded.
 */
const char *m3_errmsg(void);

/* Forget the thread's last error message. */
void m3_errclear(void);

/* ---- for m3's own modules ------------------------------------------- */

/* Record err with a formatted detail message; returns err so that callers can
 * write `return m3__seterr(M3_EIO, "read %s: %s", path, strerror(errno));`. */
int m3__seterr(int err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Map an errno value (positive) to an m3 code. */
int m3__from_errno(int e);

/* Record an errno-based failure: "<what>: <strerror>"; returns the m3 code. */
int m3__syserr(int e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Bugs abort with file and line; failures return codes. */
#define M3_ASSERT(cond)                                                  \
  do {                                                                   \
    if (!(cond))                                                         \
      m3__assert_fail(#cond, __FILE__, __LINE__);                        \
  } while (0)

void m3__assert_fail(const char *expr, const char *file, int line)
    __attribute__((noreturn));

#endif /* M3_ERROR_H */
