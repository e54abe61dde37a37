/* libFuzzer target for what the server parses from the network: a stream of
 * frames (header checks, lengths, reassembly) and the protobuf message of
 * each, unpacked with its method's request and response descriptors. The
 * header CRC is recomputed on a copy too, so that the fuzzer gets past it to
 * the fields and messages behind it. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "m3/crc32c.h"
#include "m3/error.h"
#include "m3/frame.h"

static void walk(const uint8_t *data, size_t size) {
  size_t off = 0;
  while (size - off >= M3_FRAME_HEADER_SIZE) {
    m3_frame f;
    if (m3_frame_decode(data + off, 1u << 20, &f) != 0) return;
    size_t total = M3_FRAME_HEADER_SIZE + (size_t)f.msg_len + f.att_len;
    if (size - off < total) return;
    const uint8_t *msg = data + off + M3_FRAME_HEADER_SIZE;
    if (f.method > 0 && f.method < M3_METHOD_COUNT) {
      const m3_method_info *mi = &m3_methods[f.method];
      ProtobufCMessage *m = protobuf_c_message_unpack(mi->request, NULL, f.msg_len, msg);
      if (m) protobuf_c_message_free_unpacked(m, NULL);
      m = protobuf_c_message_unpack(mi->response, NULL, f.msg_len, msg);
      if (m) protobuf_c_message_free_unpacked(m, NULL);
    }
    ProtobufCMessage *st = protobuf_c_message_unpack(&m3__status__descriptor, NULL, f.msg_len, msg);
    if (st) protobuf_c_message_free_unpacked(st, NULL);
    off += total;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  walk(data, size);
  if (size < M3_FRAME_HEADER_SIZE) return 0;
  uint8_t *copy = malloc(size);
  memcpy(copy, data, size);
  copy[0] = 'M';
  copy[1] = '3';
  uint32_t crc = m3_crc32c(0, copy, 28);
  for (int i = 0; i < 4; i++) copy[28 + i] = (uint8_t)(crc >> (8 * i));
  walk(copy, size);
  free(copy);
  return 0;
}
