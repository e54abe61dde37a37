/*
 * Structured logging: one line per event on stderr, logfmt style
 *   ts=2026-11-23T17:40:00.123Z level=warn comp=store msg="..."
 * so that operators can grep it and log shippers can parse it.
 */
#ifndef M3_LOG_H
#define M3_LOG_H

typedef enum m3_log_level {
  M3_LOG_DEBUG = 0,
  M3_LOG_INFO = 1,
  M3_LOG_WARN = 2,
  M3_LOG_ERROR = 3,
  M3_LOG_OFF = 4,
} m3_log_level;

/* Messages below level are dropped. Default: INFO, or $M3_LOG_LEVEL
 * (debug|info|warn|error|off) when set. */
void m3_log_set_level(m3_log_level level);
m3_log_level m3_log_get_level(void);

void m3_log(m3_log_level level, const char *comp, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define M3_DEBUG(comp, ...) m3_log(M3_LOG_DEBUG, comp, __VA_ARGS__)
#define M3_INFO(comp, ...)  m3_log(M3_LOG_INFO, comp, __VA_ARGS__)
#define M3_WARN(comp, ...)  m3_log(M3_LOG_WARN, comp, __VA_ARGS__)
#define M3_ERROR(comp, ...) m3_log(M3_LOG_ERROR, comp, __VA_ARGS__)

#endif /* M3_LOG_H */
