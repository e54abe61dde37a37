/*
 * Assertions of the test suite that print both sides and the m3 error detail
 * (libuv's task.h ASSERT_EQ habit), on top of cmocka's fail_msg.
 */
#ifndef M3_TEST_CHECK_H
#define M3_TEST_CHECK_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "m3/error.h"

#define CHECK_OK(expr)                                                          \
  do {                                                                          \
    int rc_ = (int)(expr);                                                      \
    if (rc_ != 0)                                                               \
      fail_msg("%s returned %d (%s), want 0: %s", #expr, rc_, m3_err_name(rc_), \
               m3_errmsg());                                                    \
  } while (0)

#define CHECK_RC(expr, want)                                                    \
  do {                                                                          \
    int rc_ = (int)(expr), want_ = (int)(want);                                 \
    if (rc_ != want_)                                                           \
      fail_msg("%s returned %d (%s), want %d (%s); errmsg: %s", #expr, rc_,     \
               m3_err_name(rc_), want_, m3_err_name(want_), m3_errmsg());       \
  } while (0)

#define CHECK_U64(a, b)                                                         \
  do {                                                                          \
    unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b); \
    if (a_ != b_)                                                               \
      fail_msg("%s == %s: %llu != %llu", #a, #b, a_, b_);                        \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                   \
  do {                                                                          \
    double a_ = (double)(a), b_ = (double)(b);                                  \
    if (!(a_ - b_ <= (tol) && b_ - a_ <= (tol)))                                \
      fail_msg("%s == %s within %g: %.9g != %.9g", #a, #b, (double)(tol), a_, b_); \
  } while (0)

#define CHECK_CONTAINS(hay, needle)                                             \
  do {                                                                          \
    const char *h_ = (hay), *n_ = (needle);                                     \
    if (h_ == NULL || strstr(h_, n_) == NULL)                                   \
      fail_msg("'%s' does not contain '%s'", h_ ? h_ : "(null)", n_);           \
  } while (0)

#endif /* M3_TEST_CHECK_H */
