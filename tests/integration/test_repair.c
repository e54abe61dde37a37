/*
 * Repair: the catalog rebuilt from the segments alone holds the same content
 * (ids, locations, texts, stats) after puts, deletes, replacements and
 * delete-then-put; a torn tail is cut by repair and by a plain open
 * (roll-forward); repair refuses while another process has the store open.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "m3/fault.h"
#include "unit/testutil.h"

extern size_t m3__repair_batch; /* core/src/store_int.h: records per repair SST */

#define SEG 300000

typedef tu_fixture fixture;

static int count_problems(int *n) { return *n; }

static void on_problem(void *ud, const m3_problem *p) {
  (*(int *)ud)++;
  print_message("repair problem: chunk %llu segment %u offset %llu %s: %s\n",
                (unsigned long long)p->chunk_id, p->segment, (unsigned long long)p->offset,
                m3_err_name(p->err), p->detail);
}

static m3_store *reopen(fixture *f) { return tu_open(f->dir, &f->l, 0, SEG); }

/* 40 puts, 5 replaced (new text too), 5 deleted, one of them put again, an
 * idempotent re-put: 6 tombstones... recorded in the report. */
static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->dir = m3t_mkdtemp("repair");
  f->l = tu_layout_m3_14();
  m3_store_options o;
  tu_opts(&o, &f->l, 1, SEG);
  CHECK_OK(m3_store_open(f->dir, &o, &f->s));
  for (uint64_t i = 0; i < 40; i += 8) CHECK_OK(tu_put_range(f->s, i, 8, 0));
  CHECK_OK(tu_put_range(f->s, 5, 5, 1));
  uint64_t del[] = {10, 11, 12, 13, 14};
  size_t nd = 0;
  CHECK_OK(m3_store_delete(f->s, del, 5, &nd));
  CHECK_U64(nd, 5);
  CHECK_OK(tu_put_range(f->s, 12, 1, 2));
  CHECK_OK(tu_put_range(f->s, 0, 4, 0)); /* idempotent */
  CHECK_OK(tu_put_range(f->s, 7, 1, 3)); /* replaced twice */
  *state = f;
  return 0;
}

static void rm_catalog(fixture *f) {
  char cat[4200];
  snprintf(cat, sizeof cat, "%s/catalog", f->dir);
  m3t_rmrf(cat);
  assert_true(access(cat, F_OK) != 0);
}

static void rebuild_same_content(fixture *f) {
  tu_dump a, b;
  tu_dump_store(f->s, &a);
  CHECK_U64(a.n, 36);
  assert_true(a.st.segments >= 4);
  m3_store_close(f->s);
  f->s = NULL;
  rm_catalog(f);
  /* without a catalog the store does not open; it says to repair */
  m3_store_options o;
  tu_opts(&o, &f->l, 0, SEG);
  m3_store *s = NULL;
  CHECK_RC(m3_store_open(f->dir, &o, &s), M3_ENOTFOUND);
  CHECK_CONTAINS(m3_errmsg(), "repair");
  o.create = 1;
  CHECK_RC(m3_store_open(f->dir, &o, &s), M3_ENOTFOUND);
  int np = 0;
  m3_repair_report rep;
  CHECK_OK(m3_store_repair(f->dir, on_problem, &np, &rep));
  CHECK_U64(np, 0);
  CHECK_U64(rep.records, 36);
  CHECK_U64(rep.tombstones, 5);
  CHECK_U64(rep.damaged, 0);
  CHECK_U64(rep.truncated_bytes, 0);
  CHECK_U64(rep.segments, a.st.segments);
  f->s = reopen(f);
  tu_dump_store(f->s, &b);
  tu_dump_compare(&a, &b, 1);
  CHECK_OK(m3_store_verify(f->s, NULL, NULL, NULL));
  CHECK_U64(m3_store_layout(f->s)->codec_fp, f->l.codec_fp);
  CHECK_U64(m3_store_align(f->s), 512);
  /* the rebuilt store keeps working: new writes go to a new place */
  CHECK_OK(tu_put_range(f->s, 100, 3, 0));
  tu_check_fetch(f->s, 101, 0);
  tu_check_fetch(f->s, 7, 3);
  tu_check_fetch(f->s, 12, 2);
  CHECK_OK(m3_store_verify(f->s, NULL, NULL, NULL));
  /* repair over an existing catalog (not removed) gives the same again */
  tu_dump c, d;
  tu_dump_store(f->s, &c);
  m3_store_close(f->s);
  f->s = NULL;
  CHECK_OK(m3_store_repair(f->dir, NULL, NULL, &rep));
  CHECK_U64(rep.records, 39);
  f->s = reopen(f);
  tu_dump_store(f->s, &d);
  tu_dump_compare(&c, &d, 1);
  tu_dump_free(&a);
  tu_dump_free(&b);
  tu_dump_free(&c);
  tu_dump_free(&d);
}

static void test_rebuild_same_content(void **state) { rebuild_same_content(*state); }

/* The same with 3 records per SST ingest: repair's batches end between a
 * put and the replacement, tombstone or put-again that follow it, and the
 * later batch must win (the RocksDB ingest order). */
static void test_rebuild_small_batches(void **state) {
  m3__repair_batch = 3;
  rebuild_same_content(*state);
  m3__repair_batch = 262144;
}

static char *last_segment(fixture *f, char *path, size_t cap) {
  m3_store_stats st;
  CHECK_OK(m3_store_stats_get(f->s, &st));
  /* the active segment holds the newest record: id 7 was written last */
  m3_location loc;
  CHECK_OK(m3_store_locate(f->s, 7, &loc));
  return m3_store_segment_path(f->s, loc.segment, path, cap);
}

static void append(const char *path, const void *buf, size_t len) {
  int fd = open(path, O_WRONLY | O_APPEND);
  assert_true(fd >= 0);
  CHECK_U64(write(fd, buf, len), len);
  fsync(fd);
  close(fd);
}

/* What a crash can leave after the last committed record, and what it
 * cannot (issue 14, defect 10: tell a torn tail from damage). */
enum tail_kind {
  TAIL_PARTIAL = 0, /* a valid header, half its payload, then the file ends */
  TAIL_ZEROS = 1,   /* a valid header, half its payload, zeros to its full
                       length (the file grew before the data was written) */
  TAIL_GARBAGE = 2, /* bytes that are no record: damage, not a torn write */
  TAIL_KINDS = 3
};
static const char *const tail_name[] = {"partial record", "zero-filled record", "garbage"};

static size_t make_torn_tail(const char *path, const m3_layout *l, int kind) {
  size_t len;
  uint8_t *rec = tu_expected(l, 999, 0, &len);
  size_t n = kind == TAIL_GARBAGE ? 3000 : kind == TAIL_ZEROS ? len : len / 2;
  if (kind == TAIL_GARBAGE) {
    uint64_t st = 99;
    for (size_t i = 0; i < n; i++) rec[i] = (uint8_t)m3t_rand(&st);
  } else if (kind == TAIL_ZEROS) {
    memset(rec + len / 2, 0, len - len / 2);
  }
  append(path, rec, n);
  free(rec);
  return n;
}

/* Every kind of tail is cut by a plain open (roll-forward): the store
 * opens, verifies and takes the next write where the tail was. A
 * zero-filled record used to be kept as a damaged record. */
static void test_torn_tail_open(void **state) {
  fixture *f = *state;
  for (int kind = 0; kind < TAIL_KINDS; kind++) {
    print_message("tail: %s\n", tail_name[kind]);
    tu_dump a, b;
    tu_dump_store(f->s, &a);
    char path[4096];
    last_segment(f, path, sizeof path);
    long long size = m3t_file_size(path);
    m3_store_close(f->s);
    f->s = NULL;
    size_t n = make_torn_tail(path, &f->l, kind);
    CHECK_U64(m3t_file_size(path), size + (long long)n);
    f->s = reopen(f); /* roll-forward cuts it */
    CHECK_U64(m3t_file_size(path), size);
    CHECK_U64(m3_store_contains(f->s, 999), 0);
    CHECK_OK(m3_store_verify(f->s, NULL, NULL, NULL));
    tu_dump_store(f->s, &b);
    tu_dump_compare(&a, &b, 1);
    /* and the next write lands where the tail was */
    CHECK_OK(tu_put_range(f->s, 500 + (uint64_t)kind, 1, 0));
    tu_check_fetch(f->s, 500 + (uint64_t)kind, 0);
    tu_dump_free(&a);
    tu_dump_free(&b);
  }
}

/* Repair cuts every kind of tail too, but tells them apart: a torn write
 * (partial or zero-filled) is what a crash leaves, not reported, repair
 * succeeds; garbage is damage, reported, and repair says records may be
 * lost (M3_ECORRUPT; the store is still usable). */
static void test_torn_tail_repair(void **state) {
  fixture *f = *state;
  for (int kind = 0; kind < TAIL_KINDS; kind++) {
    print_message("tail: %s\n", tail_name[kind]);
    tu_dump a, b;
    tu_dump_store(f->s, &a);
    char path[4096];
    last_segment(f, path, sizeof path);
    long long size = m3t_file_size(path);
    m3_store_close(f->s);
    f->s = NULL;
    size_t n = make_torn_tail(path, &f->l, kind);
    rm_catalog(f);
    int np = 0;
    m3_repair_report rep;
    int rc = m3_store_repair(f->dir, on_problem, &np, &rep);
    if (kind == TAIL_GARBAGE) {
      if (rc != M3_ECORRUPT)
        fail_msg("repair of a garbage tail: %s (%s), want M3_ECORRUPT", m3_err_name(rc),
                 m3_errmsg());
      CHECK_U64(rep.damaged, 1);
      CHECK_U64((uint64_t)count_problems(&np), 1);
    } else {
      if (rc != 0)
        fail_msg("repair of a torn tail (%s): %s: %s", tail_name[kind], m3_err_name(rc),
                 m3_errmsg());
      CHECK_U64(rep.damaged, 0);
      CHECK_U64((uint64_t)count_problems(&np), 0);
    }
    CHECK_U64(rep.truncated_bytes, n);
    CHECK_U64(rep.records, a.n);
    CHECK_U64(m3t_file_size(path), size);
    f->s = reopen(f);
    CHECK_OK(m3_store_verify(f->s, NULL, NULL, NULL));
    tu_dump_store(f->s, &b);
    tu_dump_compare(&a, &b, 1);
    tu_dump_free(&a);
    tu_dump_free(&b);
  }
}

/* A valid record of another layout (more tokens: a bigger memory) at the
 * end of a segment: roll-forward and repair must not catalogue it (its
 * size would overflow a fetch buffer planned for the store's layout), but
 * skip it and report it (issue 14, defect 9). */
static void test_foreign_layout_record(void **state) {
  fixture *f = *state;
  tu_dump a, b;
  tu_dump_store(f->s, &a);
  char path[4096];
  last_segment(f, path, sizeof path);
  m3_store_close(f->s);
  f->s = NULL;
  m3_layout big = f->l;
  big.spec.n_tokens *= 2;
  size_t len;
  uint8_t *rec = tu_expected(&big, 998, 0, &len);
  append(path, rec, len);
  free(rec);
  f->s = reopen(f); /* roll-forward */
  CHECK_U64(m3_store_contains(f->s, 998), 0);
  int np = 0;
  tu_dump_store(f->s, &b);
  tu_dump_compare(&a, &b, 0); /* its bytes stay (damage is kept) */
  tu_dump_free(&b);
  m3_store_close(f->s);
  f->s = NULL;
  rm_catalog(f);
  m3_repair_report rep;
  np = 0;
  CHECK_RC(m3_store_repair(f->dir, on_problem, &np, &rep), M3_ECORRUPT);
  CHECK_U64(rep.damaged, 1);
  CHECK_U64(rep.records, a.n);
  f->s = reopen(f);
  CHECK_U64(m3_store_contains(f->s, 998), 0);
  tu_dump_store(f->s, &b);
  tu_dump_compare(&a, &b, 0); /* its bytes stay (damage is kept) */
  tu_dump_free(&a);
  tu_dump_free(&b);
}

/* Repair swaps the rebuilt catalog in with two renames (old aside, new
 * in): a crash between them (fault point repair.swap) must leave a store
 * that opens with its old catalog and the same content, and a second
 * repair must finish the job and leave nothing aside (issue 14, defect 10:
 * the old code removed the catalog before renaming the new one in). */
static void test_repair_interrupted_swap(void **state) {
  fixture *f = *state;
  tu_dump a, b;
  tu_dump_store(f->s, &a);
  m3_store_close(f->s);
  f->s = NULL;
  char cat[4200], aside[4200];
  snprintf(cat, sizeof cat, "%s/catalog", f->dir);
  snprintf(aside, sizeof aside, "%s/catalog.old", f->dir);
  CHECK_OK(m3_fault_set("repair.swap", EIO, 1));
  m3_repair_report rep;
  int rc = m3_store_repair(f->dir, NULL, NULL, &rep);
  m3_fault_clear();
  if (rc == 0) fail_msg("repair with the swap interrupted succeeded");
  struct stat st;
  if (stat(cat, &st) == 0) fail_msg("interrupted repair: %s is there already", cat);
  if (stat(aside, &st) != 0) fail_msg("interrupted repair: no catalog set aside at %s", aside);
  f->s = reopen(f); /* puts the old catalog back */
  if (stat(cat, &st) != 0) fail_msg("open after an interrupted repair: no %s", cat);
  CHECK_OK(m3_store_verify(f->s, NULL, NULL, NULL));
  tu_dump_store(f->s, &b);
  tu_dump_compare(&a, &b, 1);
  tu_dump_free(&b);
  m3_store_close(f->s);
  f->s = NULL;
  CHECK_OK(m3_store_repair(f->dir, NULL, NULL, &rep));
  if (stat(aside, &st) == 0) fail_msg("repair left %s behind", aside);
  f->s = reopen(f);
  tu_dump_store(f->s, &b);
  tu_dump_compare(&a, &b, 1);
  tu_dump_free(&a);
  tu_dump_free(&b);
}

typedef struct seg_census {
  uint32_t seg;
  uint64_t in_seg, others;
} seg_census;

static int census(void *ud, uint64_t id, const m3_location *loc) {
  seg_census *c = ud;
  (void)id;
  if (loc->segment == c->seg) c->in_seg++;
  else c->others++;
  return 0;
}

typedef struct lost {
  uint32_t seg;
  int n, wrong;
} lost;

static void on_lost(void *ud, const m3_problem *p) {
  lost *l = ud;
  l->n++;
  if (p->segment != l->seg || p->chunk_id == UINT64_MAX) l->wrong++;
}

/* A segment file that vanished: the store still opens, its records fetch as
 * M3_ECORRUPT while the others are fine, verify names exactly them, and
 * repair rebuilds a store without them that verifies clean. */
static void test_missing_segment(void **state) {
  fixture *f = *state;
  m3_location loc;
  CHECK_OK(m3_store_locate(f->s, 0, &loc));
  seg_census c = {loc.segment, 0, 0};
  CHECK_OK(m3_store_iterate(f->s, census, &c));
  assert_true(c.in_seg > 0 && c.others > 0);
  char path[4096];
  m3_store_segment_path(f->s, loc.segment, path, sizeof path);
  m3_store_close(f->s);
  f->s = NULL;
  CHECK_OK(unlink(path));

  f->s = reopen(f);
  lost l = {loc.segment, 0, 0};
  uint64_t checked = 0;
  CHECK_RC(m3_store_verify(f->s, on_lost, &l, &checked), M3_ECORRUPT);
  CHECK_U64((uint64_t)l.n, c.in_seg);
  CHECK_U64((uint64_t)l.wrong, 0);
  size_t cap = m3_store_fetch_cap(f->s);
  void *buf = m3_store_buf_alloc(f->s, cap);
  m3_fetch_item it = {.chunk_id = 0, .buf = buf, .cap = cap};
  CHECK_OK(m3_store_fetch(f->s, &it, 1));
  CHECK_RC(it.status, M3_ECORRUPT);
  assert_null(it.data);
  free(buf);
  m3_store_close(f->s);
  f->s = NULL;

  m3_repair_report rep;
  CHECK_OK(m3_store_repair(f->dir, NULL, NULL, &rep));
  CHECK_U64(rep.records, c.others);
  f->s = reopen(f);
  CHECK_OK(m3_store_verify(f->s, NULL, NULL, &checked));
  CHECK_U64(checked, c.others);
  CHECK_RC(m3_store_contains(f->s, 0), 0);
}

/* Repair refuses while another process holds the store open. */
static void test_repair_busy(void **state) {
  fixture *f = *state;
  m3_store_close(f->s);
  f->s = NULL;
  char bin[4096];
  m3t_bin_path(bin, sizeof bin, "store_child");
  char *argv[] = {bin, "hold", f->dir, NULL};
  tu_child c;
  tu_child_start(&c, argv, NULL);
  if (!tu_child_wait_line(&c, "ready", 30000)) fail_msg("store_child hold: no 'ready': %s", c.out);
  CHECK_RC(m3_store_repair(f->dir, NULL, NULL, NULL), M3_EBUSY);
  CHECK_CONTAINS(m3_errmsg(), "open in another process");
  m3_store_options o;
  tu_opts(&o, &f->l, 0, SEG);
  m3_store *s = NULL;
  CHECK_RC(m3_store_open(f->dir, &o, &s), M3_EBUSY);
  int status = tu_child_finish(&c, 0); /* closing its stdin lets it exit */
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  tu_child_free(&c);
  /* the catalog is untouched, and repair works once it is closed */
  f->s = reopen(f);
  tu_dump a, b;
  tu_dump_store(f->s, &a);
  m3_store_close(f->s);
  f->s = NULL;
  CHECK_OK(m3_store_repair(f->dir, NULL, NULL, NULL));
  f->s = reopen(f);
  tu_dump_store(f->s, &b);
  tu_dump_compare(&a, &b, 1);
  tu_dump_free(&a);
  tu_dump_free(&b);
}

static void test_repair_errors(void **state) {
  fixture *f = *state;
  char empty[4200];
  snprintf(empty, sizeof empty, "%s/empty", f->dir);
  mkdir(empty, 0755);
  CHECK_RC(m3_store_repair(empty, NULL, NULL, NULL), M3_ENOTFOUND);
  /* a damaged record in the middle: skipped, reported, the rest rebuilt */
  m3_location loc;
  CHECK_OK(m3_store_locate(f->s, 20, &loc));
  char path[4096];
  m3_store_segment_path(f->s, loc.segment, path, sizeof path);
  m3_store_close(f->s);
  f->s = NULL;
  m3t_flip_byte(path, loc.offset + 64 + 5);
  int np = 0;
  m3_repair_report rep;
  CHECK_RC(m3_store_repair(f->dir, on_problem, &np, &rep), M3_ECORRUPT);
  CHECK_U64(np, 1);
  CHECK_U64(rep.damaged, 1);
  CHECK_U64(rep.records, 35);
  f->s = reopen(f);
  CHECK_U64(m3_store_contains(f->s, 20), 0);
  CHECK_OK(m3_store_verify(f->s, NULL, NULL, NULL));
  tu_check_fetch(f->s, 21, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_rebuild_same_content, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_rebuild_small_batches, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_torn_tail_open, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_torn_tail_repair, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_repair_busy, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_repair_interrupted_swap, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_foreign_layout_record, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_missing_segment, setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_repair_errors, setup, tu_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
