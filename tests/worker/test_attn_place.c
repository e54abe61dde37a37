/*
 * Attention-buffer placement on the host (m3_attn_create_host): every
 * element of a round's K/V and position buffers against the records decoded
 * by hand, one vector at a time; raw-f32 K/V equal the stored vectors
 * exactly; empty tokens and empty ranks are masked (-1, zeros) whatever the
 * buffer held before; failed items and records of another codec or shape
 * leave their range empty and are counted; layer-major strides; f16/bf16;
 * a FAISS-coded store (PQ codec trained here); the codes sink.
 */
#include <stdlib.h>

#include "worker/worker_testlib.h"

static const m3_spec kSpec = {3, 2, 4, 8}; /* L, H, T, D */

/* Place memories per assign (-1: nothing arrives) through the retrieval
 * callback, as m3_client_retrieve would, then finish and check. */
static void run_round(const wt_mems *m, const m3_codec_set *cs, m3_attn_geom *g,
                      const int *assign, int exact, m3_attn_stats *st_out) {
  m3_attn *a = NULL;
  CHECK_OK(m3_attn_create_host(cs, g, &a));
  const size_t kvb = m3_attn_kv_elems(g) * m3_dtype_size(g->dtype);
  const size_t posn = m3_attn_pos_elems(g);
  void *kv = malloc(kvb);
  int32_t *pos = malloc(posn * 4);
  memset(kv, 0xAB, kvb); /* last round's leftovers must not show */
  memset(pos, 0x5A, posn * 4);
  uint64_t ids[64];
  float scores[64];
  m3_attn_round r = {.kv = kv, .pos = pos, .ids = ids, .scores = scores};
  CHECK_OK(m3_attn_begin(a, &r));
  CHECK_RC(m3_attn_begin(a, &r), M3_EINVAL); /* one round at a time */
  for (uint32_t q = 0; q < g->n_queries; q++)
    for (uint32_t k = 0; k < g->k; k++) {
      int mi = assign[q * g->k + k];
      if (mi < 0) continue;
      size_t len;
      m3_record rec;
      uint8_t *buf = wt_record(m, (size_t)mi, &len, &rec);
      m3_client_memory cm = {.chunk_id = (uint64_t)mi, .query = q, .rank = k,
                             .score = 1.0f - 0.1f * k, .error = "", .data = buf, .len = len,
                             .record = &rec, .text = ""};
      CHECK_OK(m3_attn_memory_fn(a, &cm));
      free(buf);
    }
  m3_attn_stats st;
  CHECK_OK(m3_attn_finish(a, &st));
  wt_check_round(m, cs, g, kv, pos, assign, exact);
  for (uint32_t i = 0; i < g->n_queries * g->k; i++) {
    CHECK_U64(ids[i], assign[i] < 0 ? UINT64_MAX : (uint64_t)assign[i]);
    if (assign[i] >= 0 && scores[i] != 1.0f - 0.1f * (i % g->k))
      fail_msg("score %u: %g", i, scores[i]);
  }
  if (st_out) *st_out = st;
  free(kv);
  free(pos);
  m3_attn_destroy(a);
}

static m3_codec_set *raw_set(int kind) {
  m3_codec_set *cs = NULL;
  CHECK_OK(m3_codec_set_create_raw(kind, kSpec.head_dim, &cs));
  return cs;
}

/* raw-f32, dense, f32: the buffers hold the stored vectors bit for bit */
static void test_raw_f32_exact(void **state) {
  m3_codec_set *cs = raw_set(M3_CODEC_RAW_F32);
  wt_mems m;
  wt_mems_make(&m, cs, &kSpec, 6, 4, 1);
  wt_mems_encode_raw(&m);
  m3_attn_geom g;
  CHECK_OK(m3_attn_geom_init(&g, &kSpec, 2, 3, M3_DTYPE_F32));
  CHECK_U64(m3_attn_kv_elems(&g), 2ull * 3 * 2 * 2 * 12 * 8);
  CHECK_U64(m3_attn_pos_elems(&g), 2ull * 3 * 2 * 12);
  /* memory 2 and 5 have empty tokens; (0, 2) gets nothing */
  int assign[6] = {0, 1, -1, 2, 5, 4};
  m3_attn_stats st;
  run_round(&m, cs, &g, assign, 1, &st);
  CHECK_U64(st.placed, 5);
  CHECK_U64(st.empty, 1);
  CHECK_U64(st.failed, 0);
  if (st.masked_tokens == 0) fail_msg("expected masked tokens in memories 2 and 5");
  wt_mems_free(&m);
  m3_codec_set_close(cs);
}

/* layer-major strides and 16-bit outputs */
static void test_layer_major_f16_bf16(void **state) {
  m3_codec_set *cs = raw_set(M3_CODEC_RAW_F32);
  wt_mems m;
  wt_mems_make(&m, cs, &kSpec, 6, 4, 2);
  wt_mems_encode_raw(&m);
  int assign[8] = {3, -1, 0, 2, 5, 5, -1, 1};
  for (int dtype = M3_DTYPE_F16; dtype <= M3_DTYPE_BF16; dtype++) {
    m3_attn_geom g;
    CHECK_OK(m3_attn_geom_init(&g, &kSpec, 4, 2, dtype));
    m3_attn_geom_layer_major(&g);
    CHECK_U64(g.kv_kv_stride, 4ull * 2 * 8 * 8);
    CHECK_U64(m3_attn_kv_elems(&g), 3ull * 2 * 4 * 2 * 8 * 8);
    run_round(&m, cs, &g, assign, 0, NULL);
  }
  wt_mems_free(&m);
  m3_codec_set_close(cs);
}

/* failed items, other codecs, other shapes, bad ranks: empty and counted */
static void test_failures_leave_ranges_empty(void **state) {
  m3_codec_set *cs = raw_set(M3_CODEC_RAW_F32), *cs16 = raw_set(M3_CODEC_RAW_F16);
  wt_mems m, m16, mshape;
  wt_mems_make(&m, cs, &kSpec, 3, 4, 3);
  wt_mems_encode_raw(&m);
  wt_mems_make(&m16, cs16, &kSpec, 1, 4, 4); /* codes unused: zeros are valid f16 */
  m3_spec other = {3, 2, 4, 8};
  other.n_tokens = 2;
  wt_mems_make(&mshape, cs, &other, 1, 4, 5);
  wt_mems_encode_raw(&mshape);

  m3_attn_geom g;
  CHECK_OK(m3_attn_geom_init(&g, &kSpec, 1, 4, M3_DTYPE_F32));
  m3_attn *a = NULL;
  CHECK_OK(m3_attn_create_host(cs, &g, &a));
  float *kv = malloc(m3_attn_kv_elems(&g) * 4);
  int32_t *pos = malloc(m3_attn_pos_elems(&g) * 4);
  memset(kv, 0x7F, m3_attn_kv_elems(&g) * 4);
  memset(pos, 0x11, m3_attn_pos_elems(&g) * 4);
  m3_record rec;
  size_t len;
  CHECK_RC(m3_attn_place(a, 0, 0, NULL), M3_EINVAL); /* no round open */
  m3_attn_round r = {.kv = kv, .pos = pos};
  CHECK_OK(m3_attn_begin(a, &r));
  /* rank 0: a good memory, then overwritten by a failing one: empty */
  uint8_t *b0 = wt_record(&m, 0, &len, &rec);
  CHECK_OK(m3_attn_place(a, 0, 0, &rec));
  uint8_t *b16 = wt_record(&m16, 0, &len, &rec);
  int rc = m3_attn_place(a, 0, 0, &rec);
  if (rc != M3_EBADFORMAT && rc != M3_EFINGERPRINT)
    fail_msg("f16 record into an f32 codec's buffers: %s, want BADFORMAT or FINGERPRINT",
             m3_err_name(rc));
  /* rank 1: another shape */
  uint8_t *bs = wt_record(&mshape, 0, &len, &rec);
  CHECK_RC(m3_attn_place(a, 0, 1, &rec), M3_ESHAPE);
  /* rank 2: an item that failed on the server; rank 9: out of range */
  m3_client_memory cm = {.chunk_id = 7, .query = 0, .rank = 2, .status = M3_ENOTFOUND,
                         .grpc_status = 5, .error = "chunk 7 not found"};
  CHECK_OK(m3_attn_memory_fn(a, &cm));
  cm.status = 0;
  cm.rank = 9;
  m3_record rec1;
  uint8_t *b1 = wt_record(&m, 1, &len, &rec1);
  cm.record = &rec1;
  CHECK_OK(m3_attn_memory_fn(a, &cm));
  /* rank 3: good */
  cm.rank = 3;
  cm.chunk_id = 1;
  CHECK_OK(m3_attn_memory_fn(a, &cm));
  m3_attn_stats st;
  CHECK_OK(m3_attn_finish(a, &st));
  CHECK_U64(st.placed, 1);
  CHECK_U64(st.empty, 3);
  CHECK_U64(st.failed, 4);
  if (st.first_error != M3_EBADFORMAT && st.first_error != M3_EFINGERPRINT)
    fail_msg("first_error %s", m3_err_name(st.first_error));
  int assign[4] = {-1, -1, -1, 1};
  wt_check_round(&m, cs, &g, kv, pos, assign, 1);
  CHECK_RC(m3_attn_finish(a, &st), M3_EINVAL); /* no round open */
  free(b0);
  free(b16);
  free(bs);
  free(b1);
  free(kv);
  free(pos);
  m3_attn_destroy(a);
  m3_attn_destroy(NULL);
  wt_mems_free(&m);
  wt_mems_free(&m16);
  wt_mems_free(&mshape);
  m3_codec_set_close(cs);
  m3_codec_set_close(cs16);
}

static void test_geometry_checks(void **state) {
  m3_attn_geom g;
  m3_spec zero = {3, 0, 4, 8};
  CHECK_RC(m3_attn_geom_init(&g, &zero, 1, 5, M3_DTYPE_F32), M3_EINVAL);
  CHECK_RC(m3_attn_geom_init(&g, &kSpec, 1, 0, M3_DTYPE_F32), M3_EINVAL);
  CHECK_RC(m3_attn_geom_init(&g, &kSpec, 1, 5, 9), M3_EINVAL);
  m3_codec_set *cs = NULL;
  CHECK_OK(m3_codec_set_create_raw(M3_CODEC_RAW_F32, 16, &cs)); /* head_dim 16 != 8 */
  CHECK_OK(m3_attn_geom_init(&g, &kSpec, 1, 5, M3_DTYPE_F32));
  m3_attn *a = NULL;
  CHECK_RC(m3_attn_create_host(cs, &g, &a), M3_ESHAPE);
  if (a) fail_msg("handle returned on failure");
  m3_codec_set_close(cs);
}

/* a FAISS PQ codec: buffers equal the CPU table decoder's output, tokens of
 * zero vectors (whose codes decode to something non-zero) are zeros */
static void test_faiss_codec(void **state) {
  const unsigned D = kSpec.head_dim;
  const size_t nt = 2000;
  float *xk = malloc(nt * D * 4), *xv = malloc(nt * D * 4);
  uint64_t s = 9;
  for (size_t i = 0; i < nt * D; i++) {
    xk[i] = (float)((double)(m3t_rand(&s) >> 11) / 9007199254740992.0 * 4.0 - 2.0);
    xv[i] = (float)((double)(m3t_rand(&s) >> 11) / 9007199254740992.0 * 3.0 - 1.0);
  }
  m3_codec_sample sm[2] = {{xk, nt}, {xv, nt}};
  m3_codec_train_opts o = {0};
  o.kind = M3_CODEC_FAISS;
  o.head_dim = (uint16_t)D;
  o.factory_k = "PQ4x4np";
  o.seed = 3;
  m3_codec_set *cs = NULL;
  CHECK_OK(m3_codec_set_train(&o, sm, &cs));
  wt_mems m;
  wt_mems_make(&m, cs, &kSpec, 6, 4, 11);
  CHECK_OK(m3_codec_encode(cs, &kSpec, m.kv, m.n, m.codes));
  int assign[6] = {5, 4, 2, -1, 0, 1};
  for (int dtype = M3_DTYPE_F32; dtype <= M3_DTYPE_BF16; dtype++) {
    m3_attn_geom g;
    CHECK_OK(m3_attn_geom_init(&g, &kSpec, 2, 3, dtype));
    run_round(&m, cs, &g, assign, 0, NULL);
  }
  wt_mems_free(&m);
  m3_codec_set_close(cs);
  free(xk);
  free(xv);
}

/* the codes sink keeps each record's bytes at (query, rank) */
static void test_codes_sink(void **state) {
  m3_codec_set *cs = raw_set(M3_CODEC_RAW_F32);
  wt_mems m;
  wt_mems_make(&m, cs, &kSpec, 3, 4, 12);
  wt_mems_encode_raw(&m);
  const size_t rb = m3_record_mem_size(&m.layout);
  uint8_t *buf = malloc(2 * 2 * rb);
  uint64_t ids[4];
  float sc[4];
  int32_t st[4];
  m3_attn_codes c;
  m3_attn_codes_init(&c, 2, 2, rb, buf, ids, sc, st);
  size_t len;
  m3_record rec;
  uint8_t *b2 = wt_record(&m, 2, &len, &rec);
  m3_client_memory cm = {.chunk_id = 2, .query = 1, .rank = 0, .score = 0.5f, .error = "",
                         .data = b2, .len = rec.mem_bytes + M3_RECORD_HEADER_SIZE, .record = &rec};
  CHECK_OK(m3_attn_codes_fn(&c, &cm));
  cm.rank = 1;
  cm.status = M3_ECORRUPT;
  CHECK_OK(m3_attn_codes_fn(&c, &cm));
  CHECK_U64(c.placed, 1);
  CHECK_U64(c.failed, 1);
  if (memcmp(buf + 2 * rb, b2, rb) != 0) fail_msg("record bytes differ at (1, 0)");
  for (size_t i = 0; i < rb; i++)
    if (buf[i] != 0) fail_msg("empty (0, 0) not zero at byte %zu", i);
  CHECK_U64(ids[2], 2);
  CHECK_U64(ids[0], UINT64_MAX);
  CHECK_RC(st[2], 0);
  CHECK_RC(st[3], M3_ECORRUPT);
  CHECK_RC(st[0], M3_ENOTFOUND);
  free(b2);
  free(buf);
  wt_mems_free(&m);
  m3_codec_set_close(cs);
}

static void test_abi_sizes(void **state) {
  CHECK_U64(m3_attn_abi_sizeof("m3_attn_geom"), sizeof(m3_attn_geom));
  CHECK_U64(m3_attn_abi_sizeof("m3_client_info"), sizeof(m3_client_info));
  CHECK_U64(m3_attn_abi_sizeof("nope"), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_raw_f32_exact),
      cmocka_unit_test(test_layer_major_f16_bf16),
      cmocka_unit_test(test_failures_leave_ranges_empty),
      cmocka_unit_test(test_geometry_checks),
      cmocka_unit_test(test_faiss_codec),
      cmocka_unit_test(test_codes_sink),
      cmocka_unit_test(test_abi_sizes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
