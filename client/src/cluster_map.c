/*
 * The cluster map: a small JSON document (format in m3/cluster.h) parsed
 * with jansson. Syntax errors carry jansson's line and column; field errors
 * name the field by its path (shards[1].replicas[0]), since jansson keeps
 * no positions for values.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"
#include "m3/error.h"

void m3_cluster_map_free(m3_cluster_map *m) {
  if (m == NULL) return;
  for (uint32_t s = 0; m->replicas && s < m->n_shards; s++) {
    for (uint32_t r = 0; m->replicas[s] && r < m->n_replicas[s]; r++) free(m->replicas[s][r]);
    free(m->replicas[s]);
  }
  free(m->replicas);
  free(m->n_replicas);
  free(m->token);
  free(m->tls_ca);
  free(m->tls_cert);
  free(m->tls_key);
  free(m->tls_name);
  free(m);
}

/* "HOST:PORT" or "[v6]:PORT" with a port 1..65535. */
static int addr_ok(const char *a) {
  const char *colon = strrchr(a, ':');
  if (colon == NULL || colon == a) return 0;
  if (a[0] == '[' && colon[-1] != ']') return 0;
  char *end;
  long port = strtol(colon + 1, &end, 10);
  return colon[1] != '\0' && *end == '\0' && port > 0 && port <= 65535;
}

static int bad(const char *name, const char *field, const char *fmt, const char *what) {
  char detail[300];
  snprintf(detail, sizeof detail, fmt, what);
  return m3__seterr(M3_EINVAL, "cluster map %s: %s: %s", name, field, detail);
}

/* A file named in the map: relative paths are relative to the map file's
 * folder (base; NULL for a map given as text: as written). */
static char *map_path(const char *base, const char *p) {
  if (p[0] == '/' || base == NULL) return strdup(p);
  const char *slash = strrchr(base, '/');
  if (slash == NULL) return strdup(p);
  size_t dl = (size_t)(slash - base), pl = strlen(p);
  char *out = malloc(dl + 1 + pl + 1);
  if (out == NULL) return NULL;
  memcpy(out, base, dl);
  out[dl] = '/';
  memcpy(out + dl + 1, p, pl + 1);
  return out;
}

/* The "tls" object: {"ca": F, "cert": F, "key": F, "name": N}. */
static int tls_from_json(json_t *tls, const char *name, const char *base, m3_cluster_map *m) {
  if (!json_is_object(tls))
    return bad(name, "tls", "%s", "must be an object {\"ca\": F, \"cert\": F, \"key\": F}");
  const char *key;
  json_t *v;
  json_object_foreach(tls, key, v) {
    char field[64];
    snprintf(field, sizeof field, "tls.%s", key);
    char **dst = !strcmp(key, "ca") ? &m->tls_ca : !strcmp(key, "cert") ? &m->tls_cert
               : !strcmp(key, "key") ? &m->tls_key : !strcmp(key, "name") ? &m->tls_name : NULL;
    if (dst == NULL) return bad(name, field, "unknown key '%s' (known: ca, cert, key, name)", key);
    if (!json_is_string(v) || *json_string_value(v) == '\0')
      return bad(name, field, "%s", "must be a non-empty string");
    *dst = !strcmp(key, "name") ? strdup(json_string_value(v)) : map_path(base, json_string_value(v));
    if (*dst == NULL) return m3__seterr(M3_ENOMEM, "cluster map %s: out of memory", name);
  }
  if (m->tls_ca == NULL) return bad(name, "tls.ca", "%s", "missing (the CA file that signed the servers' certificates)");
  if ((m->tls_cert == NULL) != (m->tls_key == NULL))
    return bad(name, m->tls_cert ? "tls.key" : "tls.cert", "%s", "missing: a client certificate needs both cert and key");
  return 0;
}

static int from_json(json_t *root, const char *name, const char *base, m3_cluster_map **out) {
  int rc = 0;
  m3_cluster_map *m = calloc(1, sizeof *m);
  if (m == NULL) return m3__seterr(M3_ENOMEM, "cluster map %s: out of memory", name);
  if (!json_is_object(root)) {
    rc = bad(name, "(top level)", "%s", "must be an object {\"shards\": [...]}");
    goto out;
  }
  const char *key;
  json_t *v;
  json_object_foreach(root, key, v) {
    if (strcmp(key, "shards") && strcmp(key, "token") && strcmp(key, "codec_fingerprint") &&
        strcmp(key, "tls")) {
      rc = bad(name, key, "unknown key '%s' (known: shards, token, codec_fingerprint, tls)", key);
      goto out;
    }
  }
  json_t *shards = json_object_get(root, "shards");
  if (!json_is_array(shards) || json_array_size(shards) == 0) {
    rc = bad(name, "shards", "%s", shards ? "must be a non-empty array" : "missing");
    goto out;
  }
  json_t *tok = json_object_get(root, "token");
  if (tok && !json_is_null(tok)) {
    if (!json_is_string(tok)) {
      rc = bad(name, "token", "%s", "must be a string");
      goto out;
    }
    if ((m->token = strdup(json_string_value(tok))) == NULL) goto nomem;
  }
  json_t *tls = json_object_get(root, "tls");
  if (tls && !json_is_null(tls) && (rc = tls_from_json(tls, name, base, m)) != 0) goto out;
  json_t *fp = json_object_get(root, "codec_fingerprint");
  if (fp && !json_is_null(fp)) {
    const char *s = json_string_value(fp);
    char *end = NULL;
    if (s) {
      errno = 0;
      m->fp = strtoull(s, &end, 16);
    }
    if (s == NULL || *s == '\0' || *end != '\0' || errno || strlen(s) > 16) {
      rc = bad(name, "codec_fingerprint", "%s", "must be a string of up to 16 hex digits");
      goto out;
    }
    m->has_fp = 1;
  }
  size_t n = json_array_size(shards);
  if (n > 65536) {
    rc = bad(name, "shards", "%s", "more than 65536 shards");
    goto out;
  }
  m->n_shards = (uint32_t)n;
  m->n_replicas = calloc(n, sizeof *m->n_replicas);
  m->replicas = calloc(n, sizeof *m->replicas);
  if (m->n_replicas == NULL || m->replicas == NULL) goto nomem;
  for (size_t i = 0; i < n; i++) {
    char field[96];
    json_t *sh = json_array_get(shards, i);
    snprintf(field, sizeof field, "shards[%zu]", i);
    if (!json_is_object(sh)) {
      rc = bad(name, field, "%s", "must be an object {\"id\": N, \"replicas\": [...]}");
      goto out;
    }
    json_object_foreach(sh, key, v) {
      if (strcmp(key, "id") && strcmp(key, "replicas")) {
        snprintf(field, sizeof field, "shards[%zu].%s", i, key);
        rc = bad(name, field, "unknown key '%s' (known: id, replicas)", key);
        goto out;
      }
    }
    json_t *id = json_object_get(sh, "id");
    snprintf(field, sizeof field, "shards[%zu].id", i);
    if (!json_is_integer(id) || json_integer_value(id) < 0 ||
        json_integer_value(id) >= (json_int_t)n) {
      char what[64];
      snprintf(what, sizeof what, "%zu", n - 1);
      rc = bad(name, field, id ? "must be an integer 0..%s" : "missing (an integer 0..%s)", what);
      goto out;
    }
    uint32_t sid = (uint32_t)json_integer_value(id);
    if (m->replicas[sid]) {
      char what[32];
      snprintf(what, sizeof what, "%u", sid);
      rc = bad(name, field, "shard %s appears twice", what);
      goto out;
    }
    json_t *reps = json_object_get(sh, "replicas");
    snprintf(field, sizeof field, "shards[%zu].replicas", i);
    if (!json_is_array(reps) || json_array_size(reps) == 0 || json_array_size(reps) > 256) {
      rc = bad(name, field, "%s", reps ? "must be an array of 1..256 \"HOST:PORT\" strings"
                                       : "missing");
      goto out;
    }
    size_t nr = json_array_size(reps);
    m->replicas[sid] = calloc(nr, sizeof(char *));
    if (m->replicas[sid] == NULL) goto nomem;
    m->n_replicas[sid] = (uint32_t)nr;
    for (size_t r = 0; r < nr; r++) {
      const char *a = json_string_value(json_array_get(reps, r));
      snprintf(field, sizeof field, "shards[%zu].replicas[%zu]", i, r);
      if (a == NULL || strlen(a) >= 256 || !addr_ok(a)) {
        rc = bad(name, field, "'%s' is not a \"HOST:PORT\" string", a ? a : "(not a string)");
        goto out;
      }
      if ((m->replicas[sid][r] = strdup(a)) == NULL) goto nomem;
    }
  }
  *out = m;
  return 0;
nomem:
  rc = m3__seterr(M3_ENOMEM, "cluster map %s: out of memory", name);
out:
  m3_cluster_map_free(m);
  return rc;
}

int m3_cluster_map_parse(const char *json, const char *name, m3_cluster_map **out) {
  *out = NULL;
  if (name == NULL) name = "<string>";
  if (json == NULL) return m3__seterr(M3_EINVAL, "cluster map %s: no text", name);
  json_error_t err;
  json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, &err);
  if (root == NULL)
    return m3__seterr(M3_EBADFORMAT, "cluster map %s: line %d, column %d: %s", name, err.line,
                      err.column, err.text);
  int rc = from_json(root, name, NULL, out);
  json_decref(root);
  return rc;
}

int m3_cluster_map_load(const char *path, m3_cluster_map **out) {
  *out = NULL;
  FILE *f = fopen(path, "r");
  if (f == NULL) return m3__syserr(errno, "cluster map %s", path);
  json_error_t err;
  json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &err);
  fclose(f);
  if (root == NULL)
    return m3__seterr(M3_EBADFORMAT, "cluster map %s: line %d, column %d: %s", path, err.line,
                      err.column, err.text);
  int rc = from_json(root, path, path, out);
  json_decref(root);
  return rc;
}

uint32_t m3_cluster_map_shards(const m3_cluster_map *m) { return m->n_shards; }

uint32_t m3_cluster_map_replicas(const m3_cluster_map *m, uint32_t shard) {
  return shard < m->n_shards ? m->n_replicas[shard] : 0;
}

const char *m3_cluster_map_replica(const m3_cluster_map *m, uint32_t shard, uint32_t replica) {
  if (shard >= m->n_shards || replica >= m->n_replicas[shard]) return NULL;
  return m->replicas[shard][replica];
}

const char *m3_cluster_map_token(const m3_cluster_map *m) { return m->token; }

int m3_cluster_map_tls(const m3_cluster_map *m, m3_client_options *o) {
  if (m->tls_ca == NULL) return 0;
  o->tls_ca = m->tls_ca;
  if (m->tls_cert) o->tls_cert = m->tls_cert;
  if (m->tls_key) o->tls_key = m->tls_key;
  if (m->tls_name) o->tls_name = m->tls_name;
  return 1;
}

int m3_cluster_map_fingerprint(const m3_cluster_map *m, uint64_t *fp) {
  *fp = m->has_fp ? m->fp : 0;
  return m->has_fp;
}
