/*
 * m3-encode --slice I/N: which chunks one encoder of a fleet encodes, and the
 * slice.json that binds its partial store to the slice and the codec. The
 * placement rule itself is m3_slice_of (m3/shard.h); docs/ENCODER.md
 * ("Slices") is the user-facing description.
 *
 * Workload: one call per chunk (enc_slice_has) and one claim per run.
 */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "encode_int.h"
#include "m3/error.h"
#include "m3/internal/fsutil.h"
#include "m3/shard.h"

#define MAX_SLICES 65536

static int parse_u32(const char *s, size_t len, uint32_t *out) {
  if (len == 0 || len > 9) return -1;
  uint32_t v = 0;
  for (size_t k = 0; k < len; k++) {
    if (s[k] < '0' || s[k] > '9') return -1;
    v = v * 10 + (uint32_t)(s[k] - '0');
  }
  *out = v;
  return 0;
}

int enc_slice_parse(const char *arg, enc_slice *out) {
  const char *slash = strchr(arg, '/');
  uint32_t n = 0, i = 0;
  if (!slash || parse_u32(slash + 1, strlen(slash + 1), &n) || n == 0 || n > MAX_SLICES)
    return m3__seterr(M3_EINVAL, "--slice '%s': expected I/N or auto/N with N in 1..%d", arg,
                      MAX_SLICES);
  if ((size_t)(slash - arg) == 4 && !strncmp(arg, "auto", 4)) {
    const char *env = getenv("JOB_COMPLETION_INDEX");
    if (!env || parse_u32(env, strlen(env), &i))
      return m3__seterr(M3_EINVAL,
                        "--slice %s: JOB_COMPLETION_INDEX is %s%s%s (a Kubernetes Indexed Job "
                        "sets it to 0..N-1)",
                        arg, env ? "'" : "not set", env ? env : "", env ? "'" : "");
  } else if (parse_u32(arg, (size_t)(slash - arg), &i)) {
    return m3__seterr(M3_EINVAL, "--slice '%s': I is not a number", arg);
  }
  if (i >= n)
    return m3__seterr(M3_EINVAL, "--slice %s: slice %u is not below %u", arg, i, n);
  out->i = i;
  out->n = n;
  return 0;
}

int enc_slice_has(const enc_slice *s, uint64_t id) {
  return s->n <= 1 || m3_slice_of(id, s->n) == s->i;
}

/* slice.json of a store: 0 and the fields, M3_ENOTFOUND, or M3_EBADFORMAT. */
static int read_claim(const char *path, uint32_t *i, uint32_t *n, uint64_t *fp) {
  struct stat st;
  if (stat(path, &st) != 0) return M3_ENOTFOUND;
  json_error_t je;
  json_t *j = json_load_file(path, 0, &je);
  const char *f = j ? json_string_value(json_object_get(j, "codec_fingerprint")) : NULL;
  json_t *ji = j ? json_object_get(j, "slice") : NULL, *jn = j ? json_object_get(j, "slices") : NULL;
  int rc = 0;
  if (!f || !json_is_integer(ji) || !json_is_integer(jn))
    rc = m3__seterr(M3_EBADFORMAT, "%s: %s", path,
                    j ? "needs \"slice\", \"slices\" and \"codec_fingerprint\"" : je.text);
  else {
    *i = (uint32_t)json_integer_value(ji);
    *n = (uint32_t)json_integer_value(jn);
    *fp = strtoull(f, NULL, 16);
  }
  json_decref(j);
  return rc;
}

int enc_slice_claim(const char *dir, const enc_slice *s, uint64_t codec_fp) {
  char path[4200], parent[4200];
  uint32_t i, n;
  uint64_t fp;
  snprintf(path, sizeof path, "%s/slice.json", dir);
  int rc = read_claim(path, &i, &n, &fp);
  if (rc == 0 && (i != s->i || n != s->n))
    return m3__seterr(M3_EBADFORMAT, "store %s holds slice %u/%u (%s); this run encodes slice %u/%u",
                      dir, i, n, path, s->i, s->n);
  if (rc != 0 && rc != M3_ENOTFOUND) return rc;

  /* Sibling partial stores (the slices of one knowledge base side by side,
   * as on a shared volume) must share the codec. */
  snprintf(parent, sizeof parent, "%s", dir);
  char *pd = dirname(parent);
  DIR *d = opendir(pd);
  const char *self = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
  for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
    if (e->d_name[0] == '.' || !strcmp(e->d_name, self)) continue;
    char sib[4400];
    snprintf(sib, sizeof sib, "%s/%s/slice.json", pd, e->d_name);
    if (read_claim(sib, &i, &n, &fp) != 0 || n != s->n || fp == codec_fp) continue;
    closedir(d);
    return m3__seterr(M3_EBADFORMAT,
                      "slice %u/%u: codec fingerprint %016llx, but the partial store of slice "
                      "%u/%u (%s) was encoded with %016llx: every slice must use the one codec "
                      "from `m3-encode train-codec`",
                      s->i, s->n, (unsigned long long)codec_fp, i, n, sib, (unsigned long long)fp);
  }
  if (d) closedir(d);
  if (rc == 0) return 0;
  char buf[160];
  int len = snprintf(buf, sizeof buf,
                     "{\"slice\": %u, \"slices\": %u, \"codec_fingerprint\": \"%016llx\"}\n", s->i,
                     s->n, (unsigned long long)codec_fp);
  return m3__fs_replace(path, buf, (size_t)len);
}
