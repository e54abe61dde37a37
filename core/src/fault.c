/* Fault injection points; see m3/fault.h. */
#include "m3/fault.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "m3/error.h"
#include "m3/log.h"

#define MAX_POINTS 8

typedef struct fault_point {
  char name[32];
  int err;
  unsigned nth;
  unsigned hits;
} fault_point;

static fault_point points[MAX_POINTS];
static atomic_int npoints; /* read without the lock on the hot path */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t env_once = PTHREAD_ONCE_INIT;

static int errno_from_name(const char *s) {
  static const struct { const char *name; int val; } names[] = {
      {"ENOSPC", ENOSPC}, {"EIO", EIO}, {"EDQUOT", EDQUOT}, {"ENOMEM", ENOMEM},
      {"EROFS", EROFS},   {"EBADF", EBADF},
  };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (!strcmp(s, names[i].name)) return names[i].val;
  return 0;
}

static void load_env(void) {
  const char *env = getenv("M3_FAULT");
  if (env == NULL || !*env) return;
  char *copy = strdup(env), *save = NULL;
  if (copy == NULL) return;
  for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(tok, '=');
    if (eq == NULL) {
      M3_WARN("fault", "M3_FAULT entry '%s' has no '=': ignored", tok);
      continue;
    }
    *eq = '\0';
    char *at = strchr(eq + 1, '@');
    unsigned nth = 1;
    if (at) {
      *at = '\0';
      nth = (unsigned)strtoul(at + 1, NULL, 10);
    }
    int err = errno_from_name(eq + 1);
    if (err == 0 || m3_fault_set(tok, err, nth ? nth : 1) != 0)
      M3_WARN("fault", "M3_FAULT entry '%s=%s' not understood: ignored", tok, eq + 1);
    else
      M3_WARN("fault", "fault injection armed: %s fails with %s from hit %u", tok, eq + 1, nth);
  }
  free(copy);
}

int m3_fault_set(const char *point, int err, unsigned nth) {
  if (strlen(point) >= sizeof points[0].name)
    return m3__seterr(M3_EINVAL, "fault point name '%s' is too long", point);
  pthread_mutex_lock(&lock);
  int i;
  for (i = 0; i < npoints; i++)
    if (!strcmp(points[i].name, point)) break;
  if (i == npoints) {
    if (npoints == MAX_POINTS) {
      pthread_mutex_unlock(&lock);
      return m3__seterr(M3_EINVAL, "too many fault points");
    }
    npoints++;
  }
  strcpy(points[i].name, point);
  points[i].err = err;
  points[i].nth = nth ? nth : 1;
  points[i].hits = 0;
  pthread_mutex_unlock(&lock);
  return 0;
}

void m3_fault_clear(void) {
  pthread_once(&env_once, load_env);
  pthread_mutex_lock(&lock);
  npoints = 0;
  pthread_mutex_unlock(&lock);
}

int m3__fault(const char *point) {
  pthread_once(&env_once, load_env);
  if (npoints == 0) return 0;
  int err = 0;
  pthread_mutex_lock(&lock);
  for (int i = 0; i < npoints; i++) {
    if (points[i].err && !strcmp(points[i].name, point)) {
      if (++points[i].hits >= points[i].nth) err = points[i].err;
      break;
    }
  }
  pthread_mutex_unlock(&lock);
  return err;
}
