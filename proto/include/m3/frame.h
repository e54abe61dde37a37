/*
 * Frames: how m3 messages travel over a TCP connection.
 *
 * A frame is a 32-byte header, then msg_len bytes of a protobuf message
 * (proto/m3.proto), then att_len bytes of raw attachment (memory records,
 * never copied through protobuf). Header, little-endian:
 *
 *   off size field
 *     0    2 magic       "M3"
 *     2    1 version     1 (M3_PROTOCOL_VERSION)
 *     3    1 type        m3_frame_type
 *     4    2 flags       M3_FRAME_FLAG_*
 *     6    2 method      m3_method (generated from m3.proto)
 *     8    4 stream      call id, chosen by the client, unique per connection
 *    12    4 msg_len     protobuf bytes that follow
 *    16    4 att_len     attachment bytes after the message
 *    20    4 arg         REQUEST: deadline as a timeout in ms (0: none);
 *                        END: the gRPC status code
 *    24    4 reserved    0
 *    28    4 header_crc  CRC32C of bytes 0..27
 *
 * A call: the client sends REQUEST on a fresh stream id. A unary call that
 * succeeds gets one RESPONSE with FLAG_END. A streaming call gets zero or more
 * RESPONSE frames (one message, e.g. a Memory with its record as attachment,
 * each), then END. Any call that fails gets END, whose message is a Status.
 * The client may send CANCEL for a stream; the server answers END
 * (CANCELLED) unless the call already ended. Calls on one connection are
 * multiplexed: frames of different streams interleave.
 */
#ifndef M3_FRAME_H
#define M3_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "m3.pb-c.h"
#include "m3_methods.h"
#include "m3/status.h" /* the END frame's arg, Status.code */

#define M3_PROTOCOL_VERSION 1
#define M3_FRAME_HEADER_SIZE 32
#define M3_FRAME_DEFAULT_MAX (64u << 20)

typedef enum m3_frame_type {
  M3_FRAME_REQUEST = 1,  /* client -> server: opens a call */
  M3_FRAME_RESPONSE = 2, /* server -> client: a response or stream item */
  M3_FRAME_END = 3,      /* server -> client: the call ends; message: Status */
  M3_FRAME_CANCEL = 4,   /* client -> server: stop a call */
  M3_FRAME_GOAWAY = 5,   /* server -> client: draining; no new calls */
} m3_frame_type;

enum {
  M3_FRAME_FLAG_END = 1, /* RESPONSE: the call ends here, OK */
};

typedef struct m3_frame {
  uint8_t type;     /* m3_frame_type */
  uint16_t flags;
  uint16_t method;  /* m3_method */
  uint32_t stream;
  uint32_t msg_len;
  uint32_t att_len;
  uint32_t arg;     /* REQUEST: timeout ms; END: status code */
} m3_frame;

/* Write f's header into out. */
void m3_frame_encode(uint8_t out[M3_FRAME_HEADER_SIZE], const m3_frame *f);

/*
 * Parse and check a header: magic and CRC (M3_EBADFORMAT), version
 * (M3_EVERSION), type, method (M3_EBADFORMAT), and that the whole frame fits
 * in max_frame bytes (M3_ERANGE). A failure means the byte stream can no
 * longer be trusted: close the connection.
 */
int m3_frame_decode(const uint8_t in[M3_FRAME_HEADER_SIZE], uint32_t max_frame, m3_frame *f);

/* A growable output buffer. */
typedef struct m3_wbuf {
  uint8_t *data;
  size_t len, cap;
} m3_wbuf;

/* Make room for n more bytes; M3_ENOMEM on failure. */
int m3_wbuf_reserve(m3_wbuf *b, size_t n);
void m3_wbuf_free(m3_wbuf *b);

/* Append a frame header and msg (packed) to b; f->msg_len is set from msg
 * (NULL: empty message). The att_len bytes of attachment, if any, are the
 * caller's to append (or to send from their own buffer). */
int m3_frame_append(m3_wbuf *b, m3_frame *f, const ProtobufCMessage *msg);

#endif /* M3_FRAME_H */
