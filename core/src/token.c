/* Access tokens (m3/token.h). */
#include "m3/token.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "m3/error.h"

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* Trim s (len bytes) into buf. */
static int trimmed(const char *s, size_t len, char *buf, size_t cap, const char *what) {
  while (len && is_space(*s)) s++, len--;
  while (len && is_space(s[len - 1])) len--;
  if (len == 0) return m3__seterr(M3_EINVAL, "%s: empty; the token is its first line", what);
  if (len >= cap)
    return m3__seterr(M3_EINVAL, "%s: the token is longer than %zu bytes", what, cap - 1);
  memcpy(buf, s, len);
  buf[len] = '\0';
  return 0;
}

int m3_token_read(const char *path, char *buf, size_t cap) {
  FILE *f = fopen(path, "r");
  if (f == NULL) return m3__syserr(errno, "token file %s", path);
  char line[4096];
  size_t len = fgets(line, sizeof line, f) ? strcspn(line, "\n") : 0;
  fclose(f);
  char what[4200];
  snprintf(what, sizeof what, "token file %s", path);
  return trimmed(line, len, buf, cap, what);
}

int m3_token_resolve(const char *token_file, char *buf, size_t cap, const char **source) {
  static char src[4200];
  buf[0] = '\0';
  if (source) *source = NULL;
  const char *env;
  if (token_file) {
    snprintf(src, sizeof src, "--token-file %s", token_file);
    if (source) *source = src;
    return m3_token_read(token_file, buf, cap);
  }
  if ((env = getenv("M3_TOKEN")) != NULL && *env) {
    if (source) *source = "M3_TOKEN";
    return trimmed(env, strlen(env), buf, cap, "M3_TOKEN");
  }
  if ((env = getenv("M3_TOKEN_FILE")) != NULL && *env) {
    snprintf(src, sizeof src, "M3_TOKEN_FILE %s", env);
    if (source) *source = src;
    return m3_token_read(env, buf, cap);
  }
  return 0;
}
