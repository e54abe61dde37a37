/* See select_tie.h. */
#include "encoder/select_tie.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "m3/forward.h"

static int cmp_desc(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return a < b ? 1 : a > b ? -1 : 0;
}

/* Well formed: n increasing in-range positions, then M3_POS_NONE. */
static int well_formed(const uint16_t *s, int len, int n_prefix, int n_tokens, int n, const char *name,
                       char *why, size_t cap) {
  for (int k = 0; k < n_tokens; k++) {
    if (k >= n) {
      if (s[k] != M3_POS_NONE) {
        snprintf(why, cap, "%s slot %d: position %u, want none (only %d candidates)", name, k, s[k], n);
        return 0;
      }
      continue;
    }
    if (s[k] == M3_POS_NONE || s[k] < n_prefix || s[k] >= len) {
      snprintf(why, cap, "%s slot %d: position %u outside the candidates [%d, %d)", name, k, s[k],
               n_prefix, len);
      return 0;
    }
    if (k > 0 && s[k] <= s[k - 1]) {
      snprintf(why, cap, "%s slot %d: position %u after %u (want increasing)", name, k, s[k], s[k - 1]);
      return 0;
    }
  }
  return 1;
}

static int contains(const uint16_t *s, int n, uint16_t p) {
  for (int k = 0; k < n; k++)
    if (s[k] == p) return 1;
  return 0;
}

/* Every position of x not in y is a tie at thr; counts them into *diff. */
static int ties_only(const double *logw, const uint16_t *x, const uint16_t *y, int n, double thr,
                     double tol, const char *xn, const char *yn, int *diff, char *why, size_t cap) {
  *diff = 0;
  for (int k = 0; k < n; k++) {
    if (contains(y, n, x[k])) continue;
    (*diff)++;
    double w = logw[x[k]];
    if (!(fabs(w - thr) <= tol)) {
      snprintf(why, cap,
               "%s slot %d: position %u (log w %.9g) is not in %s and not a tie: the boundary is %.9g, "
               "tolerance %g",
               xn, k, x[k], w, yn, thr, tol);
      return 0;
    }
  }
  return 1;
}

int sel_tie_check(const double *logw, int len, int n_prefix, int n_tokens, const uint16_t *a,
                  const uint16_t *b, double tol, char *why, size_t cap) {
  int cand = len - n_prefix > 0 ? len - n_prefix : 0;
  int n = cand < n_tokens ? cand : n_tokens;
  if (!well_formed(a, len, n_prefix, n_tokens, n, "a", why, cap) ||
      !well_formed(b, len, n_prefix, n_tokens, n, "b", why, cap))
    return -1;
  if (n == 0) return 0;
  double *sorted = malloc((size_t)cand * sizeof *sorted);
  if (sorted == NULL) {
    snprintf(why, cap, "out of memory");
    return -1;
  }
  for (int j = 0; j < cand; j++) sorted[j] = logw[n_prefix + j];
  qsort(sorted, (size_t)cand, sizeof *sorted, cmp_desc);
  double thr = sorted[n - 1];
  free(sorted);
  int da, db;
  if (!ties_only(logw, a, b, n, thr, tol, "a", "b", &da, why, cap) ||
      !ties_only(logw, b, a, n, thr, tol, "b", "a", &db, why, cap))
    return -1;
  return da; /* == db: both hold n distinct positions */
}
