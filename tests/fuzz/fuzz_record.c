/* libFuzzer target for the memory record parser: any bytes in, a parse result
 * out, never a crash, an out-of-bounds read or an inconsistent success.
 *
 * Random bytes almost never carry a valid header CRC, which would keep the
 * fuzzer at the door; so each input is also parsed with its CRCs recomputed,
 * letting it reach the field checks behind them. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "m3/crc32c.h"
#include "m3/error.h"
#include "m3/record.h"

static void st32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t ld32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void parse_all(const uint8_t *data, size_t size) {
  for (int check = M3_PARSE_HEADER; check <= M3_PARSE_ALL; check++) {
    m3_record r;
    if (m3_record_parse(data, size, check, &r) != 0) continue;
    /* A successful parse must describe bytes inside the input. */
    size_t mem_end = M3_RECORD_HEADER_SIZE + (size_t)r.mem_bytes;
    if (r.positions) M3_ASSERT(mem_end <= size);
    if (r.text) M3_ASSERT(mem_end + r.text_bytes <= size);
    if (check & M3_PARSE_MEM) M3_ASSERT(r.codes != NULL || (r.flags & M3_RECORD_TOMBSTONE));
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  parse_all(data, size);
  if (size < M3_RECORD_HEADER_SIZE) return 0;
  uint8_t *copy = malloc(size);
  memcpy(copy, data, size);
  /* Make the checksums agree with whatever the fields say, where they fit. */
  uint64_t mem = ld32(copy + 40), text = ld32(copy + 44);
  if (M3_RECORD_HEADER_SIZE + mem <= size) {
    st32(copy + 48, m3_crc32c(0, copy + M3_RECORD_HEADER_SIZE, mem));
    if (M3_RECORD_HEADER_SIZE + mem + text <= size)
      st32(copy + 52, m3_crc32c(0, copy + M3_RECORD_HEADER_SIZE + mem, text));
  }
  st32(copy + 60, m3_crc32c(0, copy, 60));
  parse_all(copy, size);
  free(copy);
  return 0;
}
