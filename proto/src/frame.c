/* Frame headers and output buffers; see m3/frame.h (status codes: status.c). */
#include "m3/frame.h"

#include <stdlib.h>
#include <string.h>

#include "m3/crc32c.h"
#include "m3/error.h"

static void st16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}
static void st32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t ld16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t ld32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void m3_frame_encode(uint8_t out[M3_FRAME_HEADER_SIZE], const m3_frame *f) {
  out[0] = 'M';
  out[1] = '3';
  out[2] = M3_PROTOCOL_VERSION;
  out[3] = f->type;
  st16(out + 4, f->flags);
  st16(out + 6, f->method);
  st32(out + 8, f->stream);
  st32(out + 12, f->msg_len);
  st32(out + 16, f->att_len);
  st32(out + 20, f->arg);
  st32(out + 24, 0);
  st32(out + 28, m3_crc32c(0, out, 28));
}

int m3_frame_decode(const uint8_t in[M3_FRAME_HEADER_SIZE], uint32_t max_frame, m3_frame *f) {
  if (in[0] != 'M' || in[1] != '3')
    return m3__seterr(M3_EBADFORMAT, "frame: bad magic %02x%02x (want \"M3\")", in[0], in[1]);
  uint32_t crc = m3_crc32c(0, in, 28);
  if (crc != ld32(in + 28))
    return m3__seterr(M3_EBADFORMAT, "frame: header_crc mismatch (stored %08x, computed %08x)",
                      ld32(in + 28), crc);
  if (in[2] != M3_PROTOCOL_VERSION)
    return m3__seterr(M3_EVERSION, "frame: protocol version %u (this build speaks %u)", in[2],
                      M3_PROTOCOL_VERSION);
  memset(f, 0, sizeof *f);
  f->type = in[3];
  f->flags = ld16(in + 4);
  f->method = ld16(in + 6);
  f->stream = ld32(in + 8);
  f->msg_len = ld32(in + 12);
  f->att_len = ld32(in + 16);
  f->arg = ld32(in + 20);
  if (f->type < M3_FRAME_REQUEST || f->type > M3_FRAME_GOAWAY)
    return m3__seterr(M3_EBADFORMAT, "frame: unknown type %u", f->type);
  if (f->flags & ~(uint16_t)M3_FRAME_FLAG_END)
    return m3__seterr(M3_EBADFORMAT, "frame: unknown flags %#x", f->flags);
  if (ld32(in + 24) != 0) return m3__seterr(M3_EBADFORMAT, "frame: reserved field is not 0");
  if ((f->type == M3_FRAME_REQUEST || f->type == M3_FRAME_RESPONSE) &&
      (f->method == 0 || f->method >= M3_METHOD_COUNT))
    return m3__seterr(M3_EBADFORMAT, "frame: unknown method %u", f->method);
  uint64_t total = (uint64_t)M3_FRAME_HEADER_SIZE + f->msg_len + f->att_len;
  if (total > max_frame)
    return m3__seterr(M3_ERANGE, "frame: %llu bytes, over the limit of %u",
                      (unsigned long long)total, max_frame);
  return 0;
}

int m3_wbuf_reserve(m3_wbuf *b, size_t n) {
  if (b->len + n <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->len + n) cap *= 2;
  uint8_t *p = realloc(b->data, cap);
  if (p == NULL) return m3__seterr(M3_ENOMEM, "frame buffer: out of memory for %zu bytes", cap);
  b->data = p;
  b->cap = cap;
  return 0;
}

void m3_wbuf_free(m3_wbuf *b) {
  free(b->data);
  memset(b, 0, sizeof *b);
}

int m3_frame_append(m3_wbuf *b, m3_frame *f, const ProtobufCMessage *msg) {
  size_t n = msg ? protobuf_c_message_get_packed_size(msg) : 0;
  int rc = m3_wbuf_reserve(b, M3_FRAME_HEADER_SIZE + n);
  if (rc) return rc;
  f->msg_len = (uint32_t)n;
  m3_frame_encode(b->data + b->len, f);
  if (n) protobuf_c_message_pack(msg, b->data + b->len + M3_FRAME_HEADER_SIZE);
  b->len += M3_FRAME_HEADER_SIZE + n;
  return 0;
}
