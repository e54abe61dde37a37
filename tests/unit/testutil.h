/*
 * Shared helpers for the store tests (on top of tests/lib/m3test.h: random
 * numbers, scratch directories, clocks, program paths): deterministic
 * Memory3-shaped memories derived from (chunk id, version), and assertion
 * macros that print both sides and the m3 error detail.
 */
#ifndef M3_TESTUTIL_H
#define M3_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "check.h"
#include "lib/m3test.h"

#include "m3/error.h"
#include "m3/record.h"
#include "m3/spec.h"
#include "m3/store.h"

/* Memory3 22x8x8x80 with 14-byte FAISS codes (the paper's compression). */
m3_layout tu_layout_m3_14(void);
/* A small 2x2x8x16 shape with 4-byte FAISS codes and 8-dim embeddings
 * (records of about 1 KB): for tests that write 10^4 memories. */
m3_layout tu_layout_small(void);
/* Memory3 with raw bf16 vectors. */
m3_layout tu_layout_m3_bf16(void);

/* One deterministic memory: content is a function of (layout, id, version). */
typedef struct tu_mem {
  m3_record_in in;
  uint16_t *pos;
  uint8_t *codes;
  char text[64];
} tu_mem;

void tu_mem_make(tu_mem *m, const m3_layout *l, uint64_t id, uint32_t version);
void tu_mem_free(tu_mem *m);

/* The text of (id, version): "chunk <id>" for version 0. */
void tu_text(char *buf, size_t cap, uint64_t id, uint32_t version);

/* The whole encoded record of (id, version) in a malloc'ed buffer; *len gets
 * its size. The first m3_record_mem_size() bytes are what a fetch returns. */
uint8_t *tu_expected(const m3_layout *l, uint64_t id, uint32_t version, size_t *len);

/* Put ids [first, first+n) at version in one batch. Returns the m3 code. */
int tu_put_range(m3_store *s, uint64_t first, size_t n, uint32_t version);

/* Fetch id and compare with the expected record of (id, version); fails the
 * test on any difference. */
void tu_check_fetch(m3_store *s, uint64_t id, uint32_t version);

/* Store options: defaults plus layout, create and segment_bytes. */
void tu_opts(m3_store_options *o, const m3_layout *l, int create, uint64_t segment_bytes);

/* The store fixture most store tests share: a temporary directory, the
 * layout, the open store. Tests fill it in their setup. */
typedef struct tu_fixture {
  char *dir;  /* m3t_mkdtemp'ed; removed by tu_teardown */
  m3_layout l;
  m3_store *s;
} tu_fixture;

/* cmocka teardown for a tu_fixture in *state: close the store, remove the
 * directory, free. */
int tu_teardown(void **state);

/* Open (create) the store in dir with tu_opts; fails the test on error. */
m3_store *tu_open(const char *dir, const m3_layout *l, int create, uint64_t segment_bytes);

/* Segment files (seg-*.m3s) in dir; with max_bytes > 0 only those of at
 * most max_bytes bytes (512: segments that hold only their header, at the
 * default alignment). */
uint64_t tu_count_segment_files(const char *dir, uint64_t max_bytes);

/* Environment scale for soak variants (M3_SOAK_SCALE, default 1). */
int tu_scale(void);

/* A full dump of a store's visible content, to compare two states. */
typedef struct tu_entry {
  uint64_t id;
  m3_location loc;
  char *text;
  size_t text_len;
  uint8_t *mem; /* fetched memory bytes */
  size_t mem_len;
} tu_entry;

typedef struct tu_dump {
  tu_entry *v;
  size_t n, cap;
  m3_store_stats st;
} tu_dump;

void tu_dump_store(m3_store *s, tu_dump *d);
/* Compare content; with_locations also compares locations and segment stats. */
void tu_dump_compare(const tu_dump *a, const tu_dump *b, int with_locations);
void tu_dump_free(tu_dump *d);


/* ---- child processes (integration tests) ---------------------------- */

/* A helper program started with pipes on its stdin and stdout. */
typedef struct tu_child {
  int pid;
  int in_fd;   /* write end of the child's stdin, or -1 */
  int out_fd;  /* read end of the child's stdout */
  char *out;   /* everything read so far, NUL-terminated */
  size_t len, cap;
} tu_child;

/* Start argv[0] (a path) with argv; env "K=V" entries (NULL-terminated, may be
 * NULL) are added to the environment. The child's stderr goes to /dev/null
 * unless M3_TEST_VERBOSE is set. */
void tu_child_start(tu_child *c, char *const argv[], char *const env[]);

/* Read whatever the child wrote until deadline_ms (CLOCK_MONOTONIC ms), or
 * EOF. Returns 1 at EOF. */
int tu_child_read_until(tu_child *c, long long deadline_ms);

/* Wait for a line starting with prefix, up to timeout_ms; 1 when found. */
int tu_child_wait_line(tu_child *c, const char *prefix, long long timeout_ms);

/* SIGKILL (when kill_it), reap, read the pipe to EOF; returns the wait status. */
int tu_child_finish(tu_child *c, int kill_it);

void tu_child_free(tu_child *c);

#endif /* M3_TESTUTIL_H */
