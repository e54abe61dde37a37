/*
 * Code fields are unpacked exactly as FAISS packs them, and the f16 / bf16
 * conversions the CPU and CUDA decoders share round to nearest even.
 * References: ports of FAISS 1.7.3's PQEncoderGeneric::encode
 * (impl/ProductQuantizer-inl.h) and Level1Quantizer::encode_listno
 * (IndexIVF.cpp).
 */
#include "codec_testlib.h"

#include "m3/internal/codec_math.h"

/* faiss::PQEncoderGeneric, C port */
typedef struct pq_enc {
  uint8_t *code;
  uint8_t offset;
  int nbits;
  uint8_t reg;
} pq_enc;

static void pq_encode(pq_enc *e, uint64_t x) {
  e->reg |= (uint8_t)(x << e->offset);
  x >>= (8 - e->offset);
  if (e->offset + e->nbits >= 8) {
    *e->code++ = e->reg;
    for (int i = 0; i < (e->nbits - (8 - e->offset)) / 8; ++i) {
      *e->code++ = (uint8_t)x;
      x >>= 8;
    }
    e->offset += e->nbits;
    e->offset &= 7;
    e->reg = (uint8_t)x;
  } else {
    e->offset += e->nbits;
  }
}

static void pq_finish(pq_enc *e) {
  if (e->offset > 0)
    *e->code = e->reg;
}

static void test_fields_match_faiss_pq_encoder(void **state) {
  uint64_t s = 42;
  for (int nbits = 1; nbits <= 24; nbits++)
    for (int trial = 0; trial < 50; trial++) {
      int M = 1 + (int)(m3t_rand(&s) % 20);
      uint32_t vals[20];
      uint8_t code[64] = {0}, mine[64] = {0};
      pq_enc e = {code, 0, nbits, 0};
      for (int m = 0; m < M; m++) {
        vals[m] = (uint32_t)(m3t_rand(&s) & ((1u << nbits) - 1));
        pq_encode(&e, vals[m]);
        m3__code_put(mine, (uint32_t)(m * nbits), (uint32_t)nbits, vals[m]);
      }
      pq_finish(&e);
      size_t bytes = ((size_t)M * nbits + 7) / 8;
      assert_memory_equal(code, mine, bytes);
      for (int m = 0; m < M; m++) {
        uint32_t got = m3__code_bits(code, (uint32_t)(m * nbits), (uint32_t)nbits);
        if (got != vals[m])
          fail_msg("nbits %d M %d field %d: read %u, FAISS packed %u", nbits, M, m, got, vals[m]);
        /* the word-load fast path, bounded by the code's size */
        got = m3__code_bits_in(code, (uint32_t)bytes, (uint32_t)(m * nbits), (uint32_t)nbits);
        if (got != vals[m])
          fail_msg("nbits %d M %d field %d: fast path read %u, FAISS packed %u", nbits, M, m, got,
                   vals[m]);
      }
    }
}

/* Index2Layer with a 2x14 multi-index: list number i0 | i1 << 14 in 4 bytes
 * little-endian (encode_listno), then an 8x10 PQ code. */
static void test_paper_layout_matches_faiss_packing(void **state) {
  uint64_t s = 7;
  for (int trial = 0; trial < 1000; trial++) {
    uint8_t code[14] = {0};
    uint32_t i0 = (uint32_t)(m3t_rand(&s) & 0x3fff), i1 = (uint32_t)(m3t_rand(&s) & 0x3fff);
    uint64_t list_no = i0 | (uint64_t)i1 << 14;
    /* encode_listno(nlist = 2^28) */
    uint8_t *p = code;
    for (uint64_t nl = (1ull << 28) - 1; nl > 0; nl >>= 8) {
      *p++ = (uint8_t)(list_no & 0xff);
      list_no >>= 8;
    }
    assert_int_equal(p - code, 4);
    uint32_t pq[8];
    pq_enc e = {code + 4, 0, 10, 0};
    for (int m = 0; m < 8; m++)
      pq_encode(&e, pq[m] = (uint32_t)(m3t_rand(&s) & 0x3ff));
    pq_finish(&e);
    assert_int_equal(m3__code_bits(code, 0, 14), i0);
    assert_int_equal(m3__code_bits(code, 14, 14), i1);
    assert_int_equal(m3__code_bits(code, 28, 4), 0);
    for (int m = 0; m < 8; m++)
      assert_int_equal(m3__code_bits(code, 32 + 10 * (uint32_t)m, 10), pq[m]);
  }
}

static void test_code_rows_clamps_out_of_range(void **state) {
  m3__codec_field f[2] = {{0, 4, 10, 0}, {4, 4, 16, 10}};
  uint8_t code[1] = {0xfc}; /* field 0 = 12 (>= 10), field 1 = 15 */
  uint32_t rows[2];
  assert_int_not_equal(m3__code_rows(code, 1, f, 2, rows), 0);
  assert_int_equal(rows[0], 9);
  assert_int_equal(rows[1], 25);
  code[0] = 0x35;
  assert_int_equal(m3__code_rows(code, 1, f, 2, rows), 0);
  assert_int_equal(rows[0], 5);
  assert_int_equal(rows[1], 13);
}

static float bits_f(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static void test_f16_round_trip_all(void **state) {
  for (uint32_t h = 0; h < 65536; h++) {
    float f = m3__f16_to_f32((uint16_t)h);
    uint16_t back = m3__f32_to_f16(f);
    int nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
    if (nan) {
      assert_true(f != f);
      assert_int_equal(back & 0x7fff, 0x7e00);
    } else if (back != h) {
      fail_msg("half 0x%04x -> %a -> 0x%04x", h, (double)f, back);
    }
  }
}

/* nearest of the representable neighbours, ties to even: a reference in
 * double for a format whose values are given by to_f. */
static void test_f16_rounding_matches_reference(void **state) {
  uint64_t s = 3;
  for (int i = 0; i < 2000000; i++) {
    uint32_t u = (uint32_t)m3t_rand(&s);
    if (i & 1) /* concentrate on the half range */
      u = (u & 0x807fffffu) | ((uint32_t)(103 + m3t_rand(&s) % 40) << 23);
    float f = bits_f(u);
    if (f != f)
      continue;
    uint16_t h = m3__f32_to_f16(f);
#ifdef __FLT16_MAX__
    _Float16 ref = (_Float16)f;
    uint16_t rh;
    memcpy(&rh, &ref, 2);
    if (rh != h)
      fail_msg("f32 %a: m3 half 0x%04x, _Float16 0x%04x", (double)f, h, rh);
#else
    /* no _Float16: check nearness against the two neighbours */
    double d = f, got = m3__f16_to_f32(h);
    uint16_t other = (uint16_t)(h + ((fabs(got) < fabs(d)) ? 1 : -1));
    if ((h & 0x7fff) != 0x7c00 && (h & 0x7fff) != 0)
      assert_true(fabs(got - d) <= fabs(m3__f16_to_f32(other) - d));
#endif
  }
}

static void test_bf16_rounding_matches_reference(void **state) {
  uint64_t s = 5;
  for (int i = 0; i < 2000000; i++) {
    uint32_t u = (uint32_t)m3t_rand(&s);
    float f = bits_f(u);
    uint16_t b = m3__f32_to_bf16(f);
    if (f != f) {
      assert_true(m3__bf16_to_f32(b) != m3__bf16_to_f32(b));
      continue;
    }
    uint32_t lo = u & 0xffff0000u, rest = u & 0xffffu;
    uint32_t want = rest > 0x8000u || (rest == 0x8000u && (lo & 0x10000u)) ? lo + 0x10000u : lo;
    if (b != (uint16_t)(want >> 16))
      fail_msg("f32 0x%08x: m3 bf16 0x%04x, want 0x%04x", u, b, want >> 16);
  }
  assert_int_equal(m3__f32_to_bf16(1.0f), 0x3f80);
  assert_true(m3__bf16_to_f32(0x3f80) == 1.0f);
}

static void test_f16_edges(void **state) {
  assert_int_equal(m3__f32_to_f16(65504.0f), 0x7bff);
  assert_int_equal(m3__f32_to_f16(65519.99f), 0x7bff);
  assert_int_equal(m3__f32_to_f16(65520.0f), 0x7c00); /* ties to even: rounds to inf */
  assert_int_equal(m3__f32_to_f16(-1e10f), 0xfc00);
  assert_int_equal(m3__f32_to_f16(5.9604644775390625e-8f), 0x0001); /* smallest subnormal */
  assert_int_equal(m3__f32_to_f16(2.98023223876953125e-8f), 0x0000); /* half of it: even */
  assert_int_equal(m3__f32_to_f16(-0.0f), 0x8000);
  assert_true(m3__f16_to_f32(0x3c00) == 1.0f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fields_match_faiss_pq_encoder),
      cmocka_unit_test(test_paper_layout_matches_faiss_packing),
      cmocka_unit_test(test_code_rows_clamps_out_of_range),
      cmocka_unit_test(test_f16_round_trip_all),
      cmocka_unit_test(test_f16_rounding_matches_reference),
      cmocka_unit_test(test_bf16_rounding_matches_reference),
      cmocka_unit_test(test_f16_edges),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
