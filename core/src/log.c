/* Structured (logfmt) logging to stderr; see m3/log.h. */
#include "m3/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int log_level = -1; /* -1: not yet read from the environment */

static m3_log_level level_from_env(void) {
  const char *s = getenv("M3_LOG_LEVEL");
  if (s == NULL) return M3_LOG_INFO;
  if (!strcmp(s, "debug")) return M3_LOG_DEBUG;
  if (!strcmp(s, "warn")) return M3_LOG_WARN;
  if (!strcmp(s, "error")) return M3_LOG_ERROR;
  if (!strcmp(s, "off")) return M3_LOG_OFF;
  return M3_LOG_INFO;
}

void m3_log_set_level(m3_log_level level) { log_level = (int)level; }

m3_log_level m3_log_get_level(void) {
  if (log_level < 0) log_level = (int)level_from_env();
  return (m3_log_level)log_level;
}

void m3_log(m3_log_level level, const char *comp, const char *fmt, ...) {
  static const char *names[] = {"debug", "info", "warn", "error"};
  if (level < m3_log_get_level() || level >= M3_LOG_OFF) return;

  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);

  /* Quote the message: escape backslashes, quotes and newlines. */
  char quoted[2 * sizeof msg + 3];
  size_t q = 0;
  quoted[q++] = '"';
  for (const char *p = msg; *p; p++) {
    if (*p == '"' || *p == '\\') quoted[q++] = '\\';
    if (*p == '\n') { quoted[q++] = '\\'; quoted[q++] = 'n'; continue; }
    quoted[q++] = *p;
  }
  quoted[q++] = '"';
  quoted[q] = '\0';

  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char when[32];
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
  fprintf(stderr, "ts=%s.%03ldZ level=%s comp=%s msg=%s\n", when,
          ts.tv_nsec / 1000000, names[level], comp, quoted);
}
