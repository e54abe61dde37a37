/*
 * A second process for the integration tests.
 *
 *   store_child hold DIR          open the store, print "ready", keep it open
 *                                 until stdin closes
 *   store_child put DIR FIRST N   open (creating, Memory3 with 14-byte codes),
 *                                 put ids FIRST.. one per group commit; print
 *                                 "ok ID" per acknowledged put, or
 *                                 "fail ID ERRNAME MESSAGE" and stop (exit 0)
 *   store_child compact DIR       open, print "ready", compact, print "done"
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "unit/testutil.h"

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s hold|put|compact DIR ...\n", argv[0]);
    return 2;
  }
  const char *mode = argv[1], *dir = argv[2];
  m3_layout l = tu_layout_m3_14();
  m3_store_options o;
  tu_opts(&o, &l, !strcmp(mode, "put"), 0);
  m3_store *s = NULL;
  int rc = m3_store_open(dir, &o, &s);
  if (rc) {
    printf("fail open %s %s\n", m3_err_name(rc), m3_errmsg());
    fflush(stdout);
    return 1;
  }
  if (!strcmp(mode, "hold")) {
    printf("ready\n");
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
  } else if (!strcmp(mode, "put") && argc == 5) {
    uint64_t first = strtoull(argv[3], NULL, 10), n = strtoull(argv[4], NULL, 10);
    for (uint64_t id = first; id < first + n; id++) {
      rc = tu_put_range(s, id, 1, 0);
      if (rc) {
        printf("fail %llu %s %s\n", (unsigned long long)id, m3_err_name(rc), m3_errmsg());
        break;
      }
      printf("ok %llu\n", (unsigned long long)id);
    }
    fflush(stdout);
  } else if (!strcmp(mode, "compact")) {
    printf("ready\n");
    fflush(stdout);
    uint64_t reclaimed = 0;
    rc = m3_store_compact(s, &reclaimed);
    if (rc)
      printf("fail compact %s %s\n", m3_err_name(rc), m3_errmsg());
    else
      printf("done %llu\n", (unsigned long long)reclaimed);
    fflush(stdout);
  } else {
    fprintf(stderr, "bad arguments\n");
    m3_store_close(s);
    return 2;
  }
  m3_store_close(s);
  return 0;
}
