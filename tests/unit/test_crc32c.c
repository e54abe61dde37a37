/* CRC32C: standard check vectors, chaining equals one shot, combine, and
 * the copy that computes the CRC in the same pass. */
#include <stdlib.h>

#include "m3/crc32c.h"
#include "testutil.h"

/* Bitwise reference (reflected 0x82F63B78), independent of ISA-L. */
static uint32_t ref_crc(uint32_t crc, const uint8_t *p, size_t n) {
  crc = ~crc;
  while (n--) {
    crc ^= *p++;
    for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
  }
  return ~crc;
}

static void test_vectors(void **state) {
  (void)state;
  CHECK_U64(m3_crc32c(0, "123456789", 9), 0xE3069283u);
  uint8_t z[32] = {0}, ff[32], inc[32], dec[32];
  memset(ff, 0xff, sizeof ff);
  for (int i = 0; i < 32; i++) {
    inc[i] = (uint8_t)i;
    dec[i] = (uint8_t)(31 - i);
  }
  /* RFC 3720 B.4 */
  CHECK_U64(m3_crc32c(0, z, 32), 0x8A9136AAu);
  CHECK_U64(m3_crc32c(0, ff, 32), 0x62A8AB43u);
  CHECK_U64(m3_crc32c(0, inc, 32), 0x46DD794Eu);
  CHECK_U64(m3_crc32c(0, dec, 32), 0x113FDB5Cu);
  CHECK_U64(m3_crc32c(0, "", 0), 0);
  CHECK_U64(m3_crc32c(0x12345678u, "", 0), 0x12345678u);
  CHECK_U64(m3_crc32c(0, "a", 1), 0xC1D04330u);
}

static void test_chaining(void **state) {
  (void)state;
  enum { N = 70000 };
  uint8_t *buf = malloc(N);
  assert_non_null(buf);
  uint64_t st = 42;
  for (size_t i = 0; i < N; i++) buf[i] = (uint8_t)m3t_rand(&st);
  uint32_t whole = m3_crc32c(0, buf, N);
  CHECK_U64(whole, ref_crc(0, buf, N));
  for (int t = 0; t < 200; t++) {
    size_t len = (size_t)(m3t_rand(&st) % (N + 1));
    uint32_t one = m3_crc32c(0, buf, len);
    /* split into up to 6 random pieces, unaligned */
    uint32_t c = 0;
    size_t off = 0;
    while (off < len) {
      size_t piece = (size_t)(m3t_rand(&st) % (len - off + 1));
      if (m3t_rand(&st) % 3 == 0) piece = (size_t)(m3t_rand(&st) % 17);
      if (piece > len - off) piece = len - off;
      c = m3_crc32c(c, buf + off, piece);
      off += piece;
    }
    if (c != one) fail_msg("len %zu: chained %08x != one-shot %08x", len, c, one);
    if (len < 4096 && one != ref_crc(0, buf, len))
      fail_msg("len %zu: %08x != reference %08x", len, one, ref_crc(0, buf, len));
  }
  free(buf);
}

/* combine(crc(A), crc(B), |B|) == crc(A || B) for random splits, empty
 * parts included: what m3-server uses to make a record's payload CRC from
 * its header and its already-verified memory CRC. */
static void test_combine(void **state) {
  (void)state;
  enum { N = 70000 };
  uint8_t *buf = malloc(N);
  assert_non_null(buf);
  uint64_t st = 7;
  for (size_t i = 0; i < N; i++) buf[i] = (uint8_t)m3t_rand(&st);
  for (int t = 0; t < 300; t++) {
    size_t len = (size_t)(m3t_rand(&st) % (N + 1));
    size_t cut = len ? (size_t)(m3t_rand(&st) % (len + 1)) : 0;
    uint32_t a = m3_crc32c(0, buf, cut), b = m3_crc32c(0, buf + cut, len - cut);
    uint32_t want = m3_crc32c(0, buf, len), got = m3_crc32c_combine(a, b, len - cut);
    if (got != want)
      fail_msg("len %zu cut %zu: combine %08x != one-shot %08x", len, cut, got, want);
  }
  free(buf);
}

/* The copy with its CRC equals memcpy + m3_crc32c, at lengths around its
 * 8 KiB blocks and from a running crc. */
static void test_copy(void **state) {
  (void)state;
  enum { MAX = 3 * 8192 + 17 };
  static unsigned char src[MAX], dst[MAX];
  uint64_t x = 12345;
  for (size_t i = 0; i < MAX; i++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    src[i] = (unsigned char)(x >> 56);
  }
  const size_t lens[] = {0, 1, 63, 8191, 8192, 8193, 2 * 8192, MAX};
  for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
    memset(dst, 0, sizeof dst);
    uint32_t got = m3_crc32c_copy(0x1234u, dst, src, lens[k]);
    assert_int_equal(got, ref_crc(0x1234u, src, lens[k]));
    if (lens[k]) assert_memory_equal(dst, src, lens[k]);
    if (lens[k] < MAX) assert_int_equal(dst[lens[k]], 0);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_combine),
      cmocka_unit_test(test_vectors),
      cmocka_unit_test(test_chaining),
      cmocka_unit_test(test_copy),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
