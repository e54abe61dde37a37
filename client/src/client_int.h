/*
 * Inside libm3client: the connection (socket, frame reader and writer,
 * deadlines) that client_conn.c implements and the calls in client.c use.
 */
#ifndef M3_CLIENT_INT_H
#define M3_CLIENT_INT_H

#include <stddef.h>
#include <stdint.h>

#include "m3/client.h"
#include "m3/frame.h"

/* A bump allocator for unpacking protobuf messages: reset per frame, so a
 * stream of Memory messages does not call malloc per item. Allocations that
 * do not fit the block go to malloc and are freed at the next reset. */
typedef struct m3__arena {
  uint8_t *block;
  size_t cap, used;
  void **big; /* malloc'ed overflow allocations */
  size_t nbig, capbig;
  size_t want; /* largest total seen: the next block size */
} m3__arena;

struct ssl_st;
struct ssl_ctx_st;

struct m3_client {
  int fd;
  /* TLS (client_tls.c): NULL on a plain connection. tls_events: the poll
   * events OpenSSL waits for after an EAGAIN; tls_err: why the stream failed. */
  struct ssl_st *ssl;
  struct ssl_ctx_st *ssl_ctx;
  short tls_events;
  char tls_err[300];
  char addr[256];
  m3_client_info info;
  int timeout_ms;
  m3_search_params params; /* sent with Search and Retrieve when non-zero */
  uint32_t max_frame;
  uint32_t next_stream;
  int broken;  /* transport failed: every call fails */
  int goaway;  /* server draining: no new calls */
  int last_status;
  char last_msg[640];
  m3_client_counters ctr;

  uint8_t *rbuf; /* input: headers and messages are parsed in place;
                    rbuf[rpos, rlen) unread */
  size_t rcap, rpos, rlen;
  uint8_t *abuf;  /* the connection's own landing buffer for attachments
                     (8-aligned), when the call gives none */
  size_t acap;
  size_t skip;      /* bytes of an abandoned attachment still to discard */
  int att_crc_ok;   /* att_crc is the CRC32C of the last frame's attachment */
  uint32_t att_crc; /* (computed as it landed) */
  m3_client_land_fn land; /* m3_client_set_landing */
  void *land_ud;
  m3_wbuf out;   /* output: out.data[out_off, out.len) not yet written */
  size_t out_off;

  m3__arena arena;
  ProtobufCAllocator pb_alloc; /* allocates from arena */

  /* scratch of the query encoder, grown as needed */
  M3__Query *qv;
  M3__Query **qp;
  size_t qcap;
};

/* Called with each RESPONSE message of the call (unpacked; owned by the
 * client, valid during the call) and its attachment. Non-zero cancels the
 * call and is its result. */
typedef int (*m3__msg_fn)(void *ud, const ProtobufCMessage *msg, const uint8_t *att,
                          size_t att_len);

/* Where the attachment (att_len bytes) of RESPONSE msg is to land: a
 * buffer of at least att_len bytes, 8-aligned, owned by the caller, or NULL
 * for the connection's own. Called with msg unpacked, before any of the
 * attachment is read. */
typedef uint8_t *(*m3__att_fn)(void *ud, const ProtobufCMessage *msg, size_t att_len);

/*
 * Run one call: send REQUEST (req, plus att_len bytes of attachment from
 * att, sent from the caller's memory), then feed every RESPONSE to fn until
 * the call ends, fails or passes its deadline (timeout_ms; 0: none). Sets
 * the last status. Returns 0 or the m3 code described in m3/client.h.
 */
int m3__client_call(m3_client *c, m3_method method, const ProtobufCMessage *req,
                    const void *att, size_t att_len, int timeout_ms, m3__msg_fn fn, void *ud);

/* m3__client_call whose RESPONSE attachments land where dest says (dest
 * NULL: the connection's own buffer); fn then sees att at that place, its
 * CRC32C computed as it landed (att_crc). */
int m3__client_call_into(m3_client *c, m3_method method, const ProtobufCMessage *req,
                         const void *att, size_t att_len, int timeout_ms, m3__att_fn dest,
                         m3__msg_fn fn, void *ud);

/* Open the TCP connection (fd, TCP_NODELAY, non-blocking) to c->addr,
 * then, when o asks for TLS (tls_ca), its handshake (client_tls.c). */
int m3__client_dial(m3_client *c, const m3_client_options *o, int timeout_ms);

/* client_tls.c. connect: 0 at once when o->tls_ca is NULL; host: the
 * address's host (the name checked without tls_name). send/recv: as
 * send(2)/recv(2) (-1 with errno EAGAIN: poll for c->tls_events; EPROTO:
 * c->tls_err says why; recv 0: the server closed). */
int m3__client_tls_connect(m3_client *c, const m3_client_options *o, const char *host,
                           int timeout_ms);
long m3__client_tls_send(m3_client *c, const void *p, size_t n);
long m3__client_tls_recv(m3_client *c, void *p, size_t n);
void m3__client_tls_free(m3_client *c);

/* Record the call's final status and message (also as m3_errmsg()); returns
 * the m3 code for it (m3/client.h table). */
int m3__client_status(m3_client *c, m3_method method, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/*
 * Make the call in flight on c fail at once (shutdown of the socket: its
 * poll wakes, the read sees the end, c is broken). The one function that
 * may be called while another thread uses c; the caller must know that c
 * is not closed meanwhile (the cluster's hedged races hold a lock that the
 * attempt takes before it gives its connection back).
 */
void m3__client_interrupt(m3_client *c);

#endif /* M3_CLIENT_INT_H */
