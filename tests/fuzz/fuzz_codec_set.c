/* libFuzzer target for codec set files (codec.m3c, core/src/codec_set.c):
 * header, entries, fields, tables, FAISS blobs. Each input is loaded as it
 * is and with body_bytes, both CRCs and the fingerprint made to agree with
 * its bytes (otherwise the fuzzer would rarely pass the checksums). A set
 * that loads must answer info for every codec, reload from its own bytes to
 * the same fingerprint, and decode codes without reading past its tables. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "m3/codec.h"
#include "m3/crc32c.h"
#include "m3/error.h"

static void st32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void st64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void check(const uint8_t *data, size_t size) {
  m3_codec_set *cs = NULL;
  if (m3_codec_set_load(data, size, "fuzz.m3c", &cs) != 0) return;
  unsigned layers = m3_codec_set_n_layers(cs) ? m3_codec_set_n_layers(cs) : 1;
  unsigned dim = m3_codec_set_head_dim(cs), cb = m3_codec_set_code_bytes(cs);
  uint8_t codes[4 * 1024];
  float out[4 * 1024];
  for (unsigned l = 0; l < layers && l < 4; l++)
    for (int kv = 0; kv < 2; kv++) {
      m3_codec_info info;
      M3_ASSERT(m3_codec_set_info(cs, l, kv, &info) == 0);
      M3_ASSERT(info.dim == dim && info.code_bytes == cb);
      size_t n = sizeof codes / cb;
      if (n * dim > sizeof out / sizeof *out) n = sizeof out / sizeof *out / dim;
      if (n > 4) n = 4;
      if (n == 0) continue;
      for (size_t i = 0; i < n * cb; i++) codes[i] = (uint8_t)(i * 37 + l * 11 + (unsigned)kv);
      (void)m3_codec_decode_vectors(cs, l, kv, codes, n, M3_DTYPE_F32, out);
    }
  const void *buf;
  size_t len;
  m3_codec_set_bytes(cs, &buf, &len);
  m3_codec_set *again = NULL;
  M3_ASSERT(m3_codec_set_load(buf, len, "again.m3c", &again) == 0);
  M3_ASSERT(m3_codec_set_fingerprint(again) == m3_codec_set_fingerprint(cs));
  m3_codec_set_close(again);
  m3_codec_set_close(cs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  check(data, size);
  if (size < M3_CODEC_HEADER_SIZE) return 0;
  uint8_t *copy = malloc(size);
  if (!copy) return 0;
  memcpy(copy, data, size);
  size_t body = size - M3_CODEC_HEADER_SIZE;
  st64(copy + 32, body);
  st32(copy + 40, m3_crc32c(0, copy + M3_CODEC_HEADER_SIZE, body));
  uint64_t fp;
  if (m3_codec_fingerprint(copy, size, &fp) == 0) st64(copy + 24, fp);
  st32(copy + 60, m3_crc32c(0, copy, 60));
  check(copy, size);
  free(copy);
  return 0;
}
