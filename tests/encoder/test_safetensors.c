/*
 * The safetensors loader on hand-written files: single and sharded, f32 /
 * f16 / bf16 values, and every error case with its message naming the
 * tensor and the file (missing tensor, wrong shape, unsupported dtype,
 * truncated file, truncated or garbage header, bad index).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "m3/model.h"
#include "unit/testutil.h"

static char *g_dir;

typedef struct ent {
  const char *name, *dtype;
  int ndim;
  int64_t shape[2];
  const void *data;
  size_t nbytes;
} ent;

/* Write a safetensors file; cut it to `keep` bytes when keep > 0. */
static void write_st(const char *path, const ent *e, int n, long keep) {
  char hdr[4096];
  size_t off = 0, h = (size_t)snprintf(hdr, sizeof hdr, "{\"__metadata__\":{\"format\":\"pt\"}");
  for (int i = 0; i < n; i++) {
    h += (size_t)snprintf(hdr + h, sizeof hdr - h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", e[i].name,
                          e[i].dtype);
    for (int d = 0; d < e[i].ndim; d++)
      h += (size_t)snprintf(hdr + h, sizeof hdr - h, "%s%lld", d ? "," : "", (long long)e[i].shape[d]);
    h += (size_t)snprintf(hdr + h, sizeof hdr - h, "],\"data_offsets\":[%zu,%zu]}", off,
                          off + e[i].nbytes);
    off += e[i].nbytes;
  }
  h += (size_t)snprintf(hdr + h, sizeof hdr - h, "}");
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  uint64_t hl = h;
  fwrite(&hl, 8, 1, f);
  fwrite(hdr, 1, h, f);
  for (int i = 0; i < n; i++) fwrite(e[i].data, 1, e[i].nbytes, f);
  fclose(f);
  if (keep > 0) assert_int_equal(truncate(path, keep), 0);
}

static void write_raw(const char *path, const void *p, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  fwrite(p, 1, n, f);
  fclose(f);
}

static char *pth(const char *name) {
  static char buf[4][512];
  static int k;
  k = (k + 1) % 4;
  snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
  return buf[k];
}

static const float F32V[6] = {1.0f, -2.5f, 0.15625f, 3e-3f, -0.0f, 65504.0f};
static const uint16_t BF16V[4] = {0x3F80, 0xC020, 0x0000, 0x4049}; /* 1, -2.5, 0, 3.140625 */
static const uint16_t F16V[5] = {0x3C00, 0xC100, 0x0001, 0x7BFF, 0x3555}; /* 1, -2.5, 2^-24, 65504, ~0.333 */
static const int64_t I64V[2] = {7, 8};

static ent base_ents[] = {
    {"a.weight", "F32", 2, {2, 3}, F32V, sizeof F32V},
    {"b.weight", "BF16", 1, {4, 0}, BF16V, sizeof BF16V},
    {"c.weight", "F16", 1, {5, 0}, F16V, sizeof F16V},
    {"ids", "I64", 1, {2, 0}, I64V, sizeof I64V},
};

static int setup(void **state) {
  g_dir = m3t_mkdtemp("enc-st");
  return 0;
}
static int teardown(void **state) {
  m3t_rmrf(g_dir);
  free(g_dir);
  return 0;
}

static void test_single_file_values(void **state) {
  write_st(pth("one.safetensors"), base_ents, 4, 0);
  m3_safetensors *st = NULL;
  CHECK_OK(m3_safetensors_open(pth("one.safetensors"), &st));
  assert_int_equal(m3_safetensors_count(st), 4);
  float f[6];
  int64_t s23[2] = {2, 3}, s4[1] = {4}, s5[1] = {5};
  CHECK_OK(m3_safetensors_read_f32(st, "a.weight", 2, s23, f));
  assert_memory_equal(f, F32V, sizeof F32V);
  CHECK_OK(m3_safetensors_read_f32(st, "b.weight", 1, s4, f));
  assert_true(f[0] == 1.0f && f[1] == -2.5f && f[2] == 0.0f && f[3] == 3.140625f);
  CHECK_OK(m3_safetensors_read_f32(st, "c.weight", 1, s5, f));
  assert_true(f[0] == 1.0f && f[1] == -2.5f && f[2] == ldexpf(1.0f, -24) && f[3] == 65504.0f);
  assert_true(fabsf(f[4] - 1.0f / 3) < 1e-3f);
  m3_tensor t;
  CHECK_OK(m3_safetensors_find(st, "b.weight", &t));
  assert_int_equal(t.dtype, M3_DTYPE_BF16);
  assert_int_equal(t.ndim, 1);
  assert_int_equal(t.shape[0], 4);
  assert_string_equal(t.file, pth("one.safetensors"));
  m3_safetensors_close(st);
}

static void test_sharded_with_index(void **state) {
  char *d = pth("sharded");
  char cmd[600];
  snprintf(cmd, sizeof cmd, "mkdir -p %s", d);
  assert_int_equal(system(cmd), 0);
  char p1[600], p2[600], pi[600];
  snprintf(p1, sizeof p1, "%s/model-00001-of-00002.safetensors", d);
  snprintf(p2, sizeof p2, "%s/model-00002-of-00002.safetensors", d);
  snprintf(pi, sizeof pi, "%s/model.safetensors.index.json", d);
  write_st(p1, base_ents, 2, 0);
  write_st(p2, base_ents + 2, 1, 0);
  const char *idx = "{\"metadata\":{},\"weight_map\":{"
                    "\"a.weight\":\"model-00001-of-00002.safetensors\","
                    "\"b.weight\":\"model-00001-of-00002.safetensors\","
                    "\"c.weight\":\"model-00002-of-00002.safetensors\"}}";
  write_raw(pi, idx, strlen(idx));
  m3_safetensors *st = NULL;
  CHECK_OK(m3_safetensors_open(d, &st)); /* the folder: index preferred */
  assert_int_equal(m3_safetensors_count(st), 3);
  float f[6];
  int64_t s23[2] = {2, 3}, s5[1] = {5};
  CHECK_OK(m3_safetensors_read_f32(st, "a.weight", 2, s23, f));
  assert_memory_equal(f, F32V, sizeof F32V);
  CHECK_OK(m3_safetensors_read_f32(st, "c.weight", 1, s5, f));
  assert_true(f[0] == 1.0f);
  m3_tensor t;
  CHECK_OK(m3_safetensors_find(st, "c.weight", &t));
  assert_string_equal(t.file, p2);
  /* missing from every shard: names the tensor and the index */
  CHECK_RC(m3_safetensors_read_f32(st, "z.weight", 2, s23, f), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "z.weight");
  CHECK_CONTAINS(m3_errmsg(), "model.safetensors.index.json");
  m3_safetensors_close(st);

  /* the index names a tensor its shard does not have */
  const char *bad = "{\"weight_map\":{\"a.weight\":\"model-00001-of-00002.safetensors\","
                    "\"q.weight\":\"model-00002-of-00002.safetensors\"}}";
  write_raw(pi, bad, strlen(bad));
  CHECK_RC(m3_safetensors_open(d, &st), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "q.weight");
  CHECK_CONTAINS(m3_errmsg(), "model-00002-of-00002.safetensors");
  /* the index names a shard that does not exist */
  const char *gone = "{\"weight_map\":{\"a.weight\":\"model-00009-of-00009.safetensors\"}}";
  write_raw(pi, gone, strlen(gone));
  int rc = m3_safetensors_open(d, &st);
  assert_true(rc < 0);
  CHECK_CONTAINS(m3_errmsg(), "model-00009-of-00009.safetensors");
  write_raw(pi, "{not json", 9);
  CHECK_RC(m3_safetensors_open(d, &st), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "model.safetensors.index.json");
}

static void test_missing_tensor(void **state) {
  write_st(pth("m.safetensors"), base_ents, 2, 0);
  m3_safetensors *st = NULL;
  CHECK_OK(m3_safetensors_open(pth("m.safetensors"), &st));
  float f[6];
  int64_t s[2] = {2, 3};
  CHECK_RC(m3_safetensors_read_f32(st, "model.layers.3.mlp.up_proj.weight", 2, s, f), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "model.layers.3.mlp.up_proj.weight");
  CHECK_CONTAINS(m3_errmsg(), pth("m.safetensors"));
  CHECK_RC(m3_safetensors_find(st, "nope", NULL), M3_ENOTFOUND);
  CHECK_CONTAINS(m3_errmsg(), "nope");
  m3_safetensors_close(st);
}

static void test_wrong_shape(void **state) {
  write_st(pth("s.safetensors"), base_ents, 1, 0);
  m3_safetensors *st = NULL;
  CHECK_OK(m3_safetensors_open(pth("s.safetensors"), &st));
  float f[6];
  int64_t s[2] = {3, 2};
  CHECK_RC(m3_safetensors_read_f32(st, "a.weight", 2, s, f), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "a.weight");
  CHECK_CONTAINS(m3_errmsg(), pth("s.safetensors"));
  CHECK_CONTAINS(m3_errmsg(), "(2, 3)");
  CHECK_CONTAINS(m3_errmsg(), "expected (3, 2)");
  int64_t s1[1] = {6};
  CHECK_RC(m3_safetensors_read_f32(st, "a.weight", 1, s1, f), M3_EBADFORMAT);
  m3_safetensors_close(st);
}

static void test_unsupported_dtype(void **state) {
  ent e[2] = {base_ents[3], {"odd", "Q4_K", 1, {3, 0}, F32V, 3}};
  write_st(pth("d.safetensors"), e, 2, 0);
  m3_safetensors *st = NULL;
  CHECK_OK(m3_safetensors_open(pth("d.safetensors"), &st)); /* other tensors stay readable */
  float f[4];
  int64_t s2[1] = {2}, s3[1] = {3};
  CHECK_RC(m3_safetensors_read_f32(st, "ids", 1, s2, f), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "'ids'");
  CHECK_CONTAINS(m3_errmsg(), pth("d.safetensors"));
  CHECK_CONTAINS(m3_errmsg(), "I64");
  CHECK_RC(m3_safetensors_read_f32(st, "odd", 1, s3, f), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "Q4_K");
  m3_safetensors_close(st);
}

static void test_truncated_file(void **state) {
  /* the last tensor's data is cut short */
  write_st(pth("t.safetensors"), base_ents, 3, 0);
  FILE *f = fopen(pth("t.safetensors"), "rb");
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fclose(f);
  write_st(pth("t.safetensors"), base_ents, 3, size - 3);
  m3_safetensors *st = NULL;
  CHECK_RC(m3_safetensors_open(pth("t.safetensors"), &st), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "c.weight");
  CHECK_CONTAINS(m3_errmsg(), pth("t.safetensors"));
  CHECK_CONTAINS(m3_errmsg(), "truncated");
}

static void test_truncated_and_garbage_header(void **state) {
  m3_safetensors *st = NULL;
  /* shorter than the length field */
  write_raw(pth("h1.safetensors"), "\x10\x00\x00", 3);
  CHECK_RC(m3_safetensors_open(pth("h1.safetensors"), &st), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), pth("h1.safetensors"));
  CHECK_CONTAINS(m3_errmsg(), "truncated header");
  /* header cut in the middle of its JSON */
  write_st(pth("h2.safetensors"), base_ents, 2, 40);
  CHECK_RC(m3_safetensors_open(pth("h2.safetensors"), &st), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), pth("h2.safetensors"));
  CHECK_CONTAINS(m3_errmsg(), "header");
  /* garbage: random bytes with a plausible length */
  uint8_t junk[256];
  uint64_t rs = 3;
  for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)m3t_rand(&rs);
  uint64_t hl = 100;
  memcpy(junk, &hl, 8);
  write_raw(pth("h3.safetensors"), junk, sizeof junk);
  CHECK_RC(m3_safetensors_open(pth("h3.safetensors"), &st), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), pth("h3.safetensors"));
  /* a huge length */
  hl = ~0ull;
  memcpy(junk, &hl, 8);
  write_raw(pth("h4.safetensors"), junk, sizeof junk);
  CHECK_RC(m3_safetensors_open(pth("h4.safetensors"), &st), M3_EBADFORMAT);
  /* valid JSON, entry with offsets that disagree with shape x dtype */
  ent e = {"x.weight", "F32", 2, {2, 2}, F32V, sizeof F32V};
  write_st(pth("h5.safetensors"), &e, 1, 0);
  CHECK_RC(m3_safetensors_open(pth("h5.safetensors"), &st), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "x.weight");
  CHECK_CONTAINS(m3_errmsg(), pth("h5.safetensors"));
  /* dimensions whose product wraps to 0 (2^40 x 2^24 = 2^64) with an empty
   * data span: refused, not loaded as a huge tensor without data */
  ent big = {"huge.weight", "F32", 2, {(int64_t)1 << 40, (int64_t)1 << 24}, F32V, 0};
  write_st(pth("h7.safetensors"), &big, 1, 0);
  CHECK_RC(m3_safetensors_open(pth("h7.safetensors"), &st), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "huge.weight");
  CHECK_CONTAINS(m3_errmsg(), "more elements than memory");
  /* a header that is JSON but not an object */
  const char arr[] = "\x02\x00\x00\x00\x00\x00\x00\x00[]";
  write_raw(pth("h6.safetensors"), arr, sizeof arr - 1);
  CHECK_RC(m3_safetensors_open(pth("h6.safetensors"), &st), M3_EBADFORMAT);
  /* no such file / empty folder */
  assert_true(m3_safetensors_open(pth("nothere.safetensors"), &st) < 0);
  CHECK_CONTAINS(m3_errmsg(), "nothere.safetensors");
  CHECK_RC(m3_safetensors_open(g_dir, &st), M3_ENOTFOUND);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_single_file_values),
      cmocka_unit_test(test_sharded_with_index),
      cmocka_unit_test(test_missing_tensor),
      cmocka_unit_test(test_wrong_shape),
      cmocka_unit_test(test_unsupported_dtype),
      cmocka_unit_test(test_truncated_file),
      cmocka_unit_test(test_truncated_and_garbage_header),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
