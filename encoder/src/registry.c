/*
 * Picking a backend from a registry (ggml's shape): the encoder's forward
 * (encoder/src/forward.c) and worker/'s decoder (worker/src/decode.c) each
 * list their backend tables in order of preference; this is the one rule
 * both follow. A table is any struct whose first member is its name.
 */
#include <string.h>

#include "m3/error.h"
#include "model_int.h"

static const char *table_name(const void *t) { return *(const char *const *)t; }

int m3__backend_pick(const void *const *tables, size_t n, const char *want, const char *what,
                     m3__backend_load_fn load, void *ud, const void **chosen) {
  int rc = M3_EUNSUPPORTED;
  *chosen = NULL;
  if (!want || !*want) want = "auto";
  if (strcmp(want, "auto")) {
    for (size_t i = 0; i < n; i++)
      if (!strcmp(table_name(tables[i]), want)) {
        if ((rc = load(tables[i], ud)) == 0) *chosen = tables[i];
        return rc;
      }
    if (!strcmp(want, "cuda")) return m3__seterr(M3_EUNSUPPORTED, "%s: m3 was built without CUDA", what);
    return m3__seterr(M3_EINVAL, "%s: unknown backend '%s' (cpu, cuda, auto)", what, want);
  }
  /* auto: the first that loads; one that cannot run here (M3_EUNSUPPORTED:
   * no GPU) hands on to the next. */
  for (size_t i = 0; i < n && rc == M3_EUNSUPPORTED; i++)
    if ((rc = load(tables[i], ud)) == 0) *chosen = tables[i];
  return rc;
}
