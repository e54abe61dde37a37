/* libFuzzer target for the RPC port, through the server's own code in this
 * process (server_harness.h): each input becomes one connection that says a
 * valid admin Hello and then the input's calls, and reads what the server
 * answers until every call has ended (or the server closed the connection).
 * Every method's request is unpacked, checked and handled as a real client's
 * would be: Search and Retrieve over the index, Fetch from the store, Put and
 * Delete on it, Stats, Health, a second Hello, CANCELs, bad types and
 * reused streams.
 *
 * Input: a sequence of calls, each
 *   u8 method (taken modulo the method count; 0 is no method)
 *   u8 ctl    bits 0-1: 0, 1 REQUEST, 2 CANCEL of the last stream,
 *                       3 the type is ctl >> 4 (any, unchecked);
 *             bit 2: deadline 1 ms (else none); bit 3: reuse the last stream
 *   u16 msg_len, u16 att_len (little-endian; cut to what is left)
 *   msg_len bytes of protobuf, att_len bytes of attachment
 * The harness writes the 32-byte frame headers (magic, version, CRC), so
 * that the fuzzer spends its time on the messages behind them. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "m3/frame.h"
#include "server_harness.h"

typedef struct reader {
  uint8_t buf[1 << 16];
  size_t len;
  unsigned ends, want;
  int skip; /* bytes of a big frame body still to skip */
} reader;

/* Count the calls that ended (END, or RESPONSE with FLAG_END). */
static int on_read(void *ud, const uint8_t *p, size_t n) {
  reader *r = ud;
  while (n) {
    if (r->skip) {
      size_t k = n < (size_t)r->skip ? n : (size_t)r->skip;
      r->skip -= (int)k, p += k, n -= k;
      continue;
    }
    size_t k = sizeof r->buf - r->len < n ? sizeof r->buf - r->len : n;
    memcpy(r->buf + r->len, p, k);
    r->len += k, p += k, n -= k;
    while (r->len >= M3_FRAME_HEADER_SIZE) {
      m3_frame f;
      if (m3_frame_decode(r->buf, UINT32_MAX, &f) != 0) return 1; /* the server sent garbage? */
      if (f.type == M3_FRAME_END || (f.type == M3_FRAME_RESPONSE && (f.flags & M3_FRAME_FLAG_END)))
        r->ends++;
      size_t total = M3_FRAME_HEADER_SIZE + (size_t)f.msg_len + f.att_len;
      if (total <= r->len) {
        memmove(r->buf, r->buf + total, r->len - total);
        r->len -= total;
      } else {
        r->skip = (int)(total - r->len);
        r->len = 0;
        break;
      }
    }
  }
  return r->ends >= r->want;
}

static void put_frame(m3_wbuf *b, m3_frame *f, const uint8_t *msg, const uint8_t *att) {
  if (m3_wbuf_reserve(b, M3_FRAME_HEADER_SIZE + f->msg_len + f->att_len) != 0) abort();
  m3_frame_encode(b->data + b->len, f);
  b->len += M3_FRAME_HEADER_SIZE;
  if (f->msg_len) memcpy(b->data + b->len, msg, f->msg_len);
  b->len += f->msg_len;
  if (f->att_len) memcpy(b->data + b->len, att, f->att_len);
  b->len += f->att_len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const fz_server *s = fz_server_get();
  m3_wbuf b = {0};
  M3__HelloRequest h = M3__HELLO_REQUEST__INIT;
  h.protocol_version = M3_PROTOCOL_VERSION;
  h.token = (char *)s->admin_token;
  h.client_name = "fuzz";
  m3_frame hf = {.type = M3_FRAME_REQUEST, .method = M3_METHOD_HELLO, .stream = 1};
  if (m3_frame_append(&b, &hf, &h.base) != 0) abort();
  reader *r = calloc(1, sizeof *r);
  if (!r) abort();
  r->want = 1;
  uint32_t stream = 1;
  size_t off = 0;
  while (size - off >= 6) {
    const uint8_t *c = data + off;
    unsigned ctl = c[1];
    size_t left = size - off - 6;
    size_t ml = (size_t)(c[2] | c[3] << 8), al = (size_t)(c[4] | c[5] << 8);
    if (ml > left) ml = left;
    if (al > left - ml) al = left - ml;
    m3_frame f = {0};
    f.method = (uint16_t)(c[0] % M3_METHOD_COUNT);
    switch (ctl & 3) {
    case 0:
    case 1: f.type = M3_FRAME_REQUEST; break;
    case 2: f.type = M3_FRAME_CANCEL; break;
    default: f.type = (uint8_t)(ctl >> 4); break;
    }
    if (f.type != M3_FRAME_CANCEL && !(ctl & 8)) stream++;
    f.stream = stream;
    f.arg = (ctl & 4) ? 1 : 0;
    f.msg_len = (uint32_t)ml;
    f.att_len = (uint32_t)al;
    if (f.type == M3_FRAME_REQUEST && !(ctl & 8)) r->want++;
    put_frame(&b, &f, c + 6, c + 6 + ml);
    off += 6 + ml + al;
  }
  int fd = fz_connect(s->rpc_port);
  if (fd >= 0) {
    int how = fz_exchange(fd, b.data, b.len, 0, 1500, on_read, r);
    close(fd);
    /* Every call ends (or the connection does): one that went silent for
     * 1.5 s is worth a look, though a loaded machine can cause it too. */
    if (how == FZ_TIMEOUT)
      fprintf(stderr, "fuzz_rpc: %u of %u calls ended\n", r->ends, r->want);
  }
  free(r);
  m3_wbuf_free(&b);
  return 0;
}
