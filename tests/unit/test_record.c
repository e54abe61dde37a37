/*
 * The memory record format (m3/record.h): encode/parse round trip of every
 * field for several shapes, tombstones, and that parse validates every
 * header field, both checksums and the buffer length.
 */
#include <stdlib.h>

#include "m3/crc32c.h"
#include "testutil.h"

static uint16_t ld16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t ld32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t ld64(const uint8_t *p) { return ld32(p) | (uint64_t)ld32(p + 4) << 32; }
static void st32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void st16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}
static void reseal(uint8_t *h) { st32(h + 60, m3_crc32c(0, h, 60)); }

static m3_layout mk(uint16_t L, uint16_t H, uint16_t T, uint16_t D, uint16_t kind, uint16_t cb,
                    uint64_t fp) {
  m3_layout l;
  memset(&l, 0, sizeof l);
  l.spec = (m3_spec){L, H, T, D};
  l.codec_kind = kind;
  l.code_bytes = cb;
  l.codec_fp = fp;
  return l;
}

static void round_trip(const m3_layout *l, uint64_t id, uint32_t version, int with_text) {
  tu_mem m;
  tu_mem_make(&m, l, id, version);
  if (!with_text) {
    m.in.text = NULL;
    m.in.text_len = 0;
  }
  size_t size = m3_record_size(l, m.in.text_len);
  size_t pos_bytes = m3_layout_positions_bytes(l), code_bytes = m3_layout_codes_bytes(l);
  size_t npos = m3_spec_positions(&l->spec);
  CHECK_U64(m3_record_mem_size(l), 64 + pos_bytes + code_bytes);
  CHECK_U64(size, 64 + pos_bytes + code_bytes + m.in.text_len);
  CHECK_U64(pos_bytes % 8, 0);
  CHECK_U64(code_bytes, 2ull * l->spec.n_layers * l->spec.n_kv_heads * l->spec.n_tokens * l->code_bytes);

  uint8_t *buf = malloc(size + 16);
  assert_non_null(buf);
  /* too small a buffer is refused */
  CHECK_RC(m3_record_encode(buf, size - 1, l, &m.in), M3_EINVAL);
  long k = m3_record_encode(buf, size + 16, l, &m.in);
  CHECK_U64(k, size);

  /* raw header bytes at the documented offsets */
  assert_memory_equal(buf, "M3MR", 4);
  CHECK_U64(ld16(buf + 4), 1);
  CHECK_U64(ld16(buf + 6), 0);
  CHECK_U64(ld64(buf + 8), id);
  CHECK_U64(ld32(buf + 16), m.in.chunk_len);
  CHECK_U64(ld16(buf + 20), l->spec.n_layers);
  CHECK_U64(ld16(buf + 22), l->spec.n_kv_heads);
  CHECK_U64(ld16(buf + 24), l->spec.n_tokens);
  CHECK_U64(ld16(buf + 26), l->spec.head_dim);
  CHECK_U64(ld16(buf + 28), l->codec_kind);
  CHECK_U64(ld16(buf + 30), l->code_bytes);
  CHECK_U64(ld64(buf + 32), l->codec_fp);
  CHECK_U64(ld32(buf + 40), pos_bytes + code_bytes);
  CHECK_U64(ld32(buf + 44), m.in.text_len);
  CHECK_U64(ld32(buf + 48), m3_crc32c(0, buf + 64, pos_bytes + code_bytes));
  CHECK_U64(ld32(buf + 52), m3_crc32c(0, buf + 64 + pos_bytes + code_bytes, m.in.text_len));
  CHECK_U64(ld16(buf + 56), 0); /* emb_dim: these layouts carry no embedding */
  CHECK_U64(ld16(buf + 58), 0); /* reserved */
  CHECK_U64(ld32(buf + 60), m3_crc32c(0, buf, 60));
  for (size_t i = 0; i < npos; i++) CHECK_U64(ld16(buf + 64 + 2 * i), m.pos[i]);
  for (size_t i = 2 * npos; i < pos_bytes; i++) CHECK_U64(buf[64 + i], 0);
  assert_memory_equal(buf + 64 + pos_bytes, m.codes, code_bytes);
  if (with_text) assert_memory_equal(buf + 64 + pos_bytes + code_bytes, m.text, m.in.text_len);

  m3_record r;
  CHECK_OK(m3_record_parse(buf, size, M3_PARSE_ALL, &r));
  CHECK_U64(r.chunk_id, id);
  CHECK_U64(r.chunk_len, m.in.chunk_len);
  CHECK_U64(r.flags, 0);
  CHECK_U64(r.layout.spec.n_layers, l->spec.n_layers);
  CHECK_U64(r.layout.spec.n_kv_heads, l->spec.n_kv_heads);
  CHECK_U64(r.layout.spec.n_tokens, l->spec.n_tokens);
  CHECK_U64(r.layout.spec.head_dim, l->spec.head_dim);
  CHECK_U64(r.layout.codec_kind, l->codec_kind);
  CHECK_U64(r.layout.code_bytes, l->code_bytes);
  CHECK_U64(r.layout.codec_fp, l->codec_fp);
  CHECK_U64(r.mem_bytes, pos_bytes + code_bytes);
  CHECK_U64(r.text_bytes, m.in.text_len);
  CHECK_U64(r.mem_crc, ld32(buf + 48));
  CHECK_U64(r.text_crc, ld32(buf + 52));
  assert_ptr_equal(r.positions, buf + 64);
  assert_ptr_equal(r.codes, buf + 64 + pos_bytes);
  assert_ptr_equal(r.text, (const char *)buf + 64 + pos_bytes + code_bytes);
  for (size_t i = 0; i < npos; i++) CHECK_U64(ld16((const uint8_t *)&r.positions[i]), m.pos[i]);

  /* the memory part alone parses with M3_PARSE_MEM; text pointer absent */
  CHECK_OK(m3_record_parse(buf, m3_record_mem_size(l), M3_PARSE_MEM, &r));
  if (with_text) assert_null(r.text);
  /* header only */
  CHECK_OK(m3_record_parse(buf, 64, M3_PARSE_HEADER, &r));
  assert_null(r.positions);
  assert_null(r.codes);
  CHECK_U64(r.chunk_id, id);
  tu_mem_free(&m);
  free(buf);
}

static void test_round_trip_shapes(void **state) {
  (void)state;
  m3_layout m3_14 = tu_layout_m3_14(), bf16 = tu_layout_m3_bf16();
  round_trip(&m3_14, 0, 0, 1);
  round_trip(&m3_14, UINT64_MAX - 1, 3, 1);
  round_trip(&m3_14, 77, 0, 0);
  round_trip(&bf16, 123456789012ull, 0, 1);
  /* odd positions count: 1x1x3 = 3 u16 -> padded to 8 bytes */
  m3_layout odd = mk(1, 1, 3, 5, M3_CODEC_RAW_F32, 20, 0);
  CHECK_U64(m3_layout_positions_bytes(&odd), 8);
  round_trip(&odd, 5, 1, 1);
  m3_layout f16 = mk(2, 3, 4, 8, M3_CODEC_RAW_F16, 16, 7);
  round_trip(&f16, 9, 2, 1);
  m3_layout syn = mk(3, 1, 2, 64, M3_CODEC_SYNTHETIC, 9, 0xffffffffffffffffull);
  round_trip(&syn, 1ull << 40, 0, 1);
}

static void test_memory3_sizes(void **state) {
  (void)state;
  m3_layout l = tu_layout_m3_14();
  /* 22*8*8 = 1408 positions (2816 bytes), 2816 vectors of 14 bytes */
  CHECK_U64(m3_spec_positions(&l.spec), 1408);
  CHECK_U64(m3_spec_vectors(&l.spec), 2816);
  CHECK_U64(m3_layout_positions_bytes(&l), 2816);
  CHECK_U64(m3_layout_codes_bytes(&l), 2816 * 14);
  CHECK_U64(m3_record_mem_size(&l), 64 + 2816 + 2816 * 14);
  m3_layout b = tu_layout_m3_bf16();
  CHECK_U64(m3_layout_codes_bytes(&b), 2816 * 160);
}

static void test_tombstone(void **state) {
  (void)state;
  uint8_t buf[64];
  CHECK_RC(m3_record_encode_tombstone(buf, 63, 5), M3_EINVAL);
  CHECK_U64(m3_record_encode_tombstone(buf, sizeof buf, 4242), 64);
  m3_record r;
  CHECK_OK(m3_record_parse(buf, sizeof buf, M3_PARSE_ALL, &r));
  CHECK_U64(r.chunk_id, 4242);
  CHECK_U64(r.flags, M3_RECORD_TOMBSTONE);
  CHECK_U64(r.mem_bytes, 0);
  CHECK_U64(r.text_bytes, 0);
  CHECK_U64(r.layout.codec_kind, M3_CODEC_NONE);
  assert_null(r.positions);
  /* a tombstone carrying a payload length is refused */
  st32(buf + 40, 8);
  reseal(buf);
  CHECK_RC(m3_record_parse(buf, sizeof buf, M3_PARSE_HEADER, &r), M3_EBADFORMAT);
  m3_record_encode_tombstone(buf, sizeof buf, 4242);
  st16(buf + 28, M3_CODEC_FAISS);
  reseal(buf);
  CHECK_RC(m3_record_parse(buf, sizeof buf, M3_PARSE_HEADER, &r), M3_EBADFORMAT);
}

/* Flip each header byte in turn: the header CRC catches all of 0..63 except
 * the magic (checked first: bad format). With the CRC re-sealed, each field's
 * own check must fire. */
static void test_header_byte_flips(void **state) {
  (void)state;
  m3_layout l = tu_layout_m3_14();
  size_t len;
  uint8_t *orig = tu_expected(&l, 99, 0, &len);
  uint8_t *buf = malloc(len);
  m3_record r;
  for (int i = 0; i < 64; i++) {
    memcpy(buf, orig, len);
    buf[i] ^= 0x5a;
    int want = i < 4 ? M3_EBADFORMAT : M3_ECORRUPT;
    int rc = m3_record_parse(buf, len, M3_PARSE_ALL, &r);
    if (rc != want)
      fail_msg("flip of header byte %d: parse %d (%s), want %s: %s", i, rc, m3_err_name(rc),
               m3_err_name(want), m3_errmsg());
  }
  /* re-sealed: the field check itself must fail */
  struct {
    int off;
    int want;
    const char *what;
  } fields[] = {
      {4, M3_EVERSION, "version"},   {6, M3_EBADFORMAT, "flags"},
      {20, M3_EBADFORMAT, "n_layers"}, {22, M3_EBADFORMAT, "n_kv_heads"},
      {24, M3_EBADFORMAT, "n_tokens"},
      {28, M3_EBADFORMAT, "codec_kind"}, {30, M3_EBADFORMAT, "code_bytes"},
      {40, M3_EBADFORMAT, "mem_bytes"}, {48, M3_ECORRUPT, "mem_crc"},
      {52, M3_ECORRUPT, "text_crc"}, {58, M3_EBADFORMAT, "reserved"},
      {56, M3_EBADFORMAT, "emb_dim (the tail no longer fits the buffer)"},
  };
  for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
    memcpy(buf, orig, len);
    buf[fields[f].off] ^= 0x01;
    reseal(buf);
    int rc = m3_record_parse(buf, len, M3_PARSE_ALL, &r);
    if (rc != fields[f].want)
      fail_msg("re-sealed flip of %s (byte %d): parse %d (%s), want %s", fields[f].what,
               fields[f].off, rc, m3_err_name(rc), m3_err_name(fields[f].want));
  }
  /* head_dim sizes raw vectors: with bf16 codes a changed head_dim is caught */
  {
    m3_layout b = tu_layout_m3_bf16();
    size_t blen;
    uint8_t *bb = tu_expected(&b, 5, 0, &blen);
    bb[26] ^= 0x01;
    reseal(bb);
    CHECK_RC(m3_record_parse(bb, blen, M3_PARSE_HEADER, &r), M3_EBADFORMAT);
    free(bb);
  }
  /* magic is checked before the CRC: bad format */
  memcpy(buf, orig, len);
  buf[0] = 'X';
  reseal(buf);
  CHECK_RC(m3_record_parse(buf, len, M3_PARSE_ALL, &r), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "magic");
  /* unknown version */
  memcpy(buf, orig, len);
  st16(buf + 4, 2);
  reseal(buf);
  CHECK_RC(m3_record_parse(buf, len, M3_PARSE_HEADER, &r), M3_EVERSION);
  /* fields that are free (chunk_id, chunk_len, codec_fp) parse when re-sealed */
  memcpy(buf, orig, len);
  buf[8] ^= 1;
  buf[16] ^= 1;
  buf[32] ^= 1;
  reseal(buf);
  CHECK_OK(m3_record_parse(buf, len, M3_PARSE_ALL, &r));
  CHECK_U64(r.chunk_id, 99 ^ 1);
  free(buf);
  free(orig);
}

/* A shape whose mem_bytes does not match: re-sealed so that the size check
 * is what fails. */
static void test_wrong_mem_bytes(void **state) {
  (void)state;
  m3_layout l = tu_layout_m3_14();
  size_t len;
  uint8_t *buf = tu_expected(&l, 7, 0, &len);
  m3_record r;
  uint32_t mem = ld32(buf + 40);
  /* mem_bytes off by 8 */
  st32(buf + 40, mem + 8);
  reseal(buf);
  CHECK_RC(m3_record_parse(buf, len, M3_PARSE_HEADER, &r), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "mem_bytes");
  /* shape changed (n_tokens 8 -> 4) with mem_bytes left for 8 */
  st32(buf + 40, mem);
  st16(buf + 24, 4);
  reseal(buf);
  CHECK_RC(m3_record_parse(buf, len, M3_PARSE_HEADER, &r), M3_EBADFORMAT);
  CHECK_CONTAINS(m3_errmsg(), "mem_bytes");
  /* code_bytes 14 -> 15 */
  st16(buf + 24, 8);
  st16(buf + 30, 15);
  reseal(buf);
  CHECK_RC(m3_record_parse(buf, len, M3_PARSE_HEADER, &r), M3_EBADFORMAT);
  /* raw bf16 needs code_bytes == 2*head_dim */
  st16(buf + 30, 14);
  st16(buf + 28, M3_CODEC_RAW_BF16);
  reseal(buf);
  CHECK_RC(m3_record_parse(buf, len, M3_PARSE_HEADER, &r), M3_EBADFORMAT);
  /* restored: parses again (so that the checks above are what failed) */
  st16(buf + 28, M3_CODEC_FAISS);
  reseal(buf);
  CHECK_OK(m3_record_parse(buf, len, M3_PARSE_ALL, &r));
  free(buf);
}

static void test_payload_crcs(void **state) {
  (void)state;
  m3_layout l = tu_layout_m3_14();
  size_t len;
  uint8_t *buf = tu_expected(&l, 31, 0, &len);
  size_t mem = m3_record_mem_size(&l);
  m3_record r;
  /* positions byte, code byte, last code byte */
  size_t offs[] = {64, 64 + 2816, mem - 1};
  for (size_t i = 0; i < 3; i++) {
    buf[offs[i]] ^= 0x80;
    CHECK_RC(m3_record_parse(buf, len, M3_PARSE_MEM, &r), M3_ECORRUPT);
    CHECK_CONTAINS(m3_errmsg(), "mem_crc");
    /* header-only parse does not read the payload */
    CHECK_OK(m3_record_parse(buf, len, M3_PARSE_HEADER, &r));
    CHECK_OK(m3_record_parse(buf, len, M3_PARSE_TEXT, &r));
    buf[offs[i]] ^= 0x80;
  }
  buf[len - 1] ^= 0x01; /* text */
  CHECK_RC(m3_record_parse(buf, len, M3_PARSE_ALL, &r), M3_ECORRUPT);
  CHECK_CONTAINS(m3_errmsg(), "text_crc");
  CHECK_OK(m3_record_parse(buf, len, M3_PARSE_MEM, &r));
  buf[len - 1] ^= 0x01;
  CHECK_OK(m3_record_parse(buf, len, M3_PARSE_ALL, &r));
  free(buf);
}

static void test_truncated(void **state) {
  (void)state;
  m3_layout l = tu_layout_m3_14();
  size_t len;
  uint8_t *buf = tu_expected(&l, 31, 0, &len);
  size_t mem = m3_record_mem_size(&l);
  m3_record r;
  for (size_t n = 0; n < 64; n += 7)
    CHECK_RC(m3_record_parse(buf, n, M3_PARSE_HEADER, &r), M3_EBADFORMAT);
  CHECK_RC(m3_record_parse(buf, 63, M3_PARSE_HEADER, &r), M3_EBADFORMAT);
  CHECK_RC(m3_record_parse(buf, mem - 1, M3_PARSE_MEM, &r), M3_EBADFORMAT);
  CHECK_RC(m3_record_parse(buf, 64, M3_PARSE_MEM, &r), M3_EBADFORMAT);
  CHECK_RC(m3_record_parse(buf, len - 1, M3_PARSE_TEXT, &r), M3_EBADFORMAT);
  CHECK_RC(m3_record_parse(buf, mem, M3_PARSE_ALL, &r), M3_EBADFORMAT);
  CHECK_OK(m3_record_parse(buf, mem, M3_PARSE_MEM, &r));
  free(buf);
}

static void test_encode_rejects_bad_layout(void **state) {
  (void)state;
  uint8_t buf[256];
  uint16_t pos[4] = {0};
  uint8_t codes[64] = {0};
  m3_record_in in = {.chunk_id = 1, .chunk_len = 1, .positions = pos, .codes = codes};
  m3_layout zero = mk(0, 1, 1, 1, M3_CODEC_SYNTHETIC, 1, 0);
  CHECK_RC(m3_record_encode(buf, sizeof buf, &zero, &in), M3_EINVAL);
  m3_layout badbf = mk(1, 1, 1, 8, M3_CODEC_RAW_BF16, 8, 0);
  CHECK_RC(m3_record_encode(buf, sizeof buf, &badbf, &in), M3_EINVAL);
  m3_layout kind = mk(1, 1, 1, 8, 77, 8, 0);
  CHECK_RC(m3_record_encode(buf, sizeof buf, &kind, &in), M3_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip_shapes),
      cmocka_unit_test(test_memory3_sizes),
      cmocka_unit_test(test_tombstone),
      cmocka_unit_test(test_header_byte_flips),
      cmocka_unit_test(test_wrong_mem_bytes),
      cmocka_unit_test(test_payload_crcs),
      cmocka_unit_test(test_truncated),
      cmocka_unit_test(test_encode_rejects_bad_layout),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
