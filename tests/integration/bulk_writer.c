/*
 * The bulk ingester that test_bulk_crash kills with SIGKILL at random points.
 *
 *   bulk_writer DIR COUNT SEED SEGMENT_BYTES CHECKPOINT
 *
 * Opens (creating) the store at DIR with the small test layout and
 * bulk-ingests ids 0..COUNT-1 (content of version 0) in batches of random
 * size, from 0 every time: a resumed run re-adds what is stored and the
 * bulk skips it. Automatic checkpoints every CHECKPOINT records; now and
 * then an explicit one, acknowledged:
 *   open        the store is open
 *   c N         ids 0..N-1 are durable (a checkpoint or finish returned 0)
 *   done N      finished; N records skipped as already stored
 *   err MESSAGE a store call failed (exit 1)
 */
#include <stdio.h>
#include <stdlib.h>

#include "unit/testutil.h"

static void die(const char *what, int rc) {
  printf("err %s: %s: %s\n", what, m3_err_name(rc), m3_errmsg());
  fflush(stdout);
  exit(1);
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s DIR COUNT SEED SEGMENT_BYTES CHECKPOINT\n", argv[0]);
    return 2;
  }
  uint64_t count = strtoull(argv[2], NULL, 10), rng = strtoull(argv[3], NULL, 10);
  m3_layout l = tu_layout_small();
  m3_store_options o;
  tu_opts(&o, &l, 1, strtoull(argv[4], NULL, 10));
  m3_store *s = NULL;
  int rc = m3_store_open(argv[1], &o, &s);
  if (rc) die("open", rc);
  printf("open\n");
  fflush(stdout);
  m3_store_bulk_options bo;
  m3_store_bulk_options_init(&bo);
  bo.checkpoint_records = strtoull(argv[5], NULL, 10);
  m3_store_bulk *b;
  if ((rc = m3_store_bulk_begin(s, &bo, &b)) != 0) die("bulk begin", rc);
  tu_mem m[64];
  m3_record_in in[64];
  for (uint64_t next = 0; next < count;) {
    size_t n = 1 + (size_t)(m3t_rand(&rng) % 64);
    if (n > count - next) n = (size_t)(count - next);
    for (size_t i = 0; i < n; i++) {
      tu_mem_make(&m[i], &l, next + i, 0);
      in[i] = m[i].in;
    }
    rc = m3_store_bulk_add(b, in, n);
    for (size_t i = 0; i < n; i++) tu_mem_free(&m[i]);
    if (rc) die("bulk add", rc);
    next += n;
    if (m3t_rand(&rng) % 16 == 0) {
      if ((rc = m3_store_bulk_checkpoint(b)) != 0) die("checkpoint", rc);
      printf("c %llu\n", (unsigned long long)next);
      fflush(stdout);
    }
  }
  m3_store_bulk_stats st;
  m3_store_bulk_stats_get(b, &st);
  if ((rc = m3_store_bulk_finish(b)) != 0) die("bulk finish", rc);
  printf("c %llu\ndone %llu\n", (unsigned long long)count, (unsigned long long)st.skipped);
  fflush(stdout);
  m3_store_close(s);
  return 0;
}
