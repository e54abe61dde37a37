/*
 * The writer that test_crash_kill kills with SIGKILL at random points.
 *
 *   crash_writer DIR START SEED SEGMENT_BYTES
 *
 * Opens (creating) the store at DIR with the Memory3 22x8x8x80 layout and
 * 14-byte codes, then forever: puts a batch of deterministic memories
 * (content derived from the chunk id, text "chunk <id>") with ids from START
 * on, and now and then deletes a few earlier ids. Every step is announced on
 * stdout before it starts and acknowledged after the store call returned 0,
 * one line each, flushed:
 *   open                     the store is open
 *   P FIRST N / p FIRST N    put of ids FIRST..FIRST+N-1: intent / ack
 *   D ID... / d ID...        delete: intent / ack
 *   err MESSAGE              a store call failed (exit 1)
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "unit/testutil.h"

static void die(const char *what, int rc) {
  printf("err %s: %s: %s\n", what, m3_err_name(rc), m3_errmsg());
  fflush(stdout);
  exit(1);
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s DIR START SEED SEGMENT_BYTES\n", argv[0]);
    return 2;
  }
  const char *dir = argv[1];
  uint64_t next = strtoull(argv[2], NULL, 10);
  uint64_t rng = strtoull(argv[3], NULL, 10);
  m3_layout l = tu_layout_m3_14();
  m3_store_options o;
  tu_opts(&o, &l, 1, strtoull(argv[4], NULL, 10));
  m3_store *s = NULL;
  int rc = m3_store_open(dir, &o, &s);
  if (rc) die("open", rc);
  printf("open\n");
  fflush(stdout);
  for (int step = 0; step < 100000; step++) {
    size_t n = 1 + (size_t)(m3t_rand(&rng) % 5);
    printf("P %llu %zu\n", (unsigned long long)next, n);
    fflush(stdout);
    if ((rc = tu_put_range(s, next, n, 0)) != 0) die("put", rc);
    printf("p %llu %zu\n", (unsigned long long)next, n);
    fflush(stdout);
    next += n;
    if (m3t_rand(&rng) % 4 == 0) {
      uint64_t ids[3];
      size_t k = 1 + (size_t)(m3t_rand(&rng) % 3);
      uint64_t span = next < 40 ? next : 40;
      char line[256];
      int pos = 0;
      for (size_t i = 0; i < k; i++) {
        ids[i] = next - 1 - m3t_rand(&rng) % span;
        pos += snprintf(line + pos, sizeof line - (size_t)pos, " %llu", (unsigned long long)ids[i]);
      }
      printf("D%s\n", line);
      fflush(stdout);
      if ((rc = m3_store_delete(s, ids, k, NULL)) != 0) die("delete", rc);
      printf("d%s\n", line);
      fflush(stdout);
    }
  }
  m3_store_close(s);
  return 0;
}
