/* The m3 error space: names and descriptions from M3_ERRNO_MAP, and the
 * thread-local detail message each failing module leaves behind. */
#include "m3/error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char errmsg[1024];

const char *m3_strerror(int err) {
  switch (err) {
  case M3_OK: return "success";
#define M3__ERR_DESC(name, val, desc) case M3_E##name: return desc;
    M3_ERRNO_MAP(M3__ERR_DESC)
#undef M3__ERR_DESC
  }
  return "unknown error";
}

const char *m3_err_name(int err) {
  switch (err) {
  case M3_OK: return "M3_OK";
#define M3__ERR_NAME(name, val, desc) case M3_E##name: return "M3_E" #name;
    M3_ERRNO_MAP(M3__ERR_NAME)
#undef M3__ERR_NAME
  }
  return "M3_E?";
}

const char *m3_errmsg(void) { return errmsg; }

void m3_errclear(void) { errmsg[0] = '\0'; }

int m3__seterr(int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(errmsg, sizeof errmsg, fmt, ap);
  va_end(ap);
  return err;
}

int m3__from_errno(int e) {
  switch (e) {
  case 0: return M3_OK;
  case ENOSPC:
  case EDQUOT:
  case EFBIG: return M3_ENOSPC;
  case ENOMEM: return M3_ENOMEM;
  case ENOENT: return M3_ENOTFOUND;
  case EEXIST: return M3_EEXIST;
  case EINVAL: return M3_EINVAL;
  case EAGAIN:
  case EBUSY: return M3_EBUSY;
  case ENOSYS:
  case EOPNOTSUPP:
  case EPERM: return M3_EUNSUPPORTED;
  default: return M3_EIO;
  }
}

int m3__syserr(int e, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(errmsg, sizeof errmsg, fmt, ap);
  va_end(ap);
  if (n >= 0 && (size_t)n < sizeof errmsg)
    snprintf(errmsg + n, sizeof errmsg - (size_t)n, ": %s", strerror(e));
  return m3__from_errno(e);
}

void m3__assert_fail(const char *expr, const char *file, int line) {
  fprintf(stderr, "m3: assertion failed: %s (%s:%d)\n", expr, file, line);
  abort();
}
