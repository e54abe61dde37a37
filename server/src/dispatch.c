/*
 * Frames from a connection (conn_hooks.frame): CANCEL, the checks every
 * REQUEST passes (draining, stream reuse, Hello first, in-flight limit,
 * admin, attachment), its request unpacked into a fresh call's arena, and
 * the method's handler from method_handlers (generated from m3.proto's
 * service: m3_handlers.h).
 */
#include "dispatch.h"

#include <stdio.h>

#define MSG_QUERY_TEXT 8192        /* bytes of text a query may average */
#define MSG_ADMIN_MAX (1u << 20)   /* Put's sizes, Delete's ids */

#include "call.h"
#include "m3/log.h"
#include "m3_handlers.h"

/* The largest message a method's request may be (docs/OPERATIONS.md,
 * Limits): protobuf-c allocates for what it unpacks, a multiple of the
 * bytes for some messages (an empty Query is 2 bytes on the wire and a
 * struct in memory), so no request is unpacked past what its method can
 * need. */
static size_t msg_cap(const server *s, unsigned method) {
  switch (method) {
  case M3_METHOD_HELLO: return CONN_PREHELLO_FRAME_MAX;
  case M3_METHOD_SEARCH:
  case M3_METHOD_RETRIEVE:
    /* a float is 5 bytes unpacked-encoded; a text query up to MSG_QUERY_TEXT */
    return 256 + (size_t)s->cfg.max_queries * (16 + 5 * (size_t)s->emb_dim + MSG_QUERY_TEXT);
  case M3_METHOD_FETCH: return 256 + (size_t)s->cfg.max_ids * 16;
  case M3_METHOD_PUT:
  case M3_METHOD_DELETE: return MSG_ADMIN_MAX;
  default: return 256; /* Stats, Health: empty requests */
  }
}

/* An END for a stream that has no call object (the request was refused
 * before one existed). */
static void refuse(conn *c, const m3_frame *f, int code, const char *msg) {
  conn_send_status(c, M3_FRAME_END, f->method, f->stream, code, 0, msg);
  metrics_observe(&c->s->m, f->method < M3_METHOD_COUNT ? f->method : 0, code, 0);
}

/* Refuse a REQUEST whose message is over its method's cap (1), or not (0). */
static int refuse_too_big(conn *c, const m3_frame *f) {
  size_t cap = msg_cap(c->s, f->method);
  if (f->msg_len <= cap) return 0;
  char why[160];
  snprintf(why, sizeof why, "%s message of %u bytes; this server takes at most %zu",
           m3_methods[f->method].request->name, f->msg_len, cap);
  refuse(c, f, M3_STATUS_RESOURCE_EXHAUSTED, why);
  return 1;
}

int dispatch_refuse_early(conn *c, const m3_frame *f) {
  /* Before Hello the frame cap (CONN_PREHELLO_FRAME_MAX) bounds it; other
   * types and streams in use are dispatch_frame's to answer. */
  if (!c->hello || f->type != M3_FRAME_REQUEST || c->s->draining || call_find(c, f->stream))
    return 0;
  return refuse_too_big(c, f);
}

void dispatch_frame(conn *c, const m3_frame *f, const uint8_t *msg, const uint8_t *att) {
  server *s = c->s;
  if (f->type == M3_FRAME_CANCEL) {
    call *cl = call_find(c, f->stream);
    if (cl) {
      call_end(cl, M3_STATUS_CANCELLED, "cancelled by the client");
      call_maybe_free(cl);
    }
    return;
  }
  if (f->type != M3_FRAME_REQUEST) {
    refuse(c, f, M3_STATUS_INVALID_ARGUMENT, "clients send REQUEST and CANCEL frames only");
    return;
  }
  const m3_method_info *mi = &m3_methods[f->method];
  if (s->draining) {
    refuse(c, f, M3_STATUS_UNAVAILABLE, "server is draining");
    return;
  }
  if (call_find(c, f->stream)) {
    /* An END on that stream would end one of two calls the client can no
     * longer tell apart: a protocol error, as in HTTP/2. */
    char why[96];
    snprintf(why, sizeof why, "stream %u reused while its call is in flight", f->stream);
    conn_protocol_error(c, why);
    return;
  }
  if (!c->hello && f->method != M3_METHOD_HELLO) {
    refuse(c, f, M3_STATUS_UNAUTHENTICATED, "the first call on a connection must be Hello");
    return;
  }
  if (c->ncalls >= s->cfg.max_inflight) {
    refuse(c, f, M3_STATUS_RESOURCE_EXHAUSTED, "too many calls in flight on this connection");
    return;
  }
  if (mi->admin && !c->admin) {
    /* What would have made it admin: the token, the certificate, or nothing. */
    int tok = s->admin_token != NULL, cert = s->cfg.admin_cert_subject != NULL;
    M3_WARN("admin", "%s: %s refused: %s", c->peer, mi->name,
            tok && cert ? "neither the admin token nor the admin certificate"
            : tok       ? "not the admin token"
            : cert      ? "not the admin certificate"
                        : "admin methods are off");
    refuse(c, f, M3_STATUS_PERMISSION_DENIED,
           tok && cert ? "needs the admin token or the admin client certificate (--admin-cert-subject)"
           : tok       ? "needs the admin token"
           : cert      ? "needs the admin client certificate (--admin-cert-subject)"
                       : "admin methods are off (no --admin-token-file, no --admin-cert-subject)");
    return;
  }
  if (f->method != M3_METHOD_PUT && f->att_len) {
    refuse(c, f, M3_STATUS_INVALID_ARGUMENT, "this method takes no attachment");
    return;
  }
  if (refuse_too_big(c, f)) return;
  call *cl = call_new(c, f);
  if (cl == NULL) {
    refuse(c, f, M3_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  ProtobufCAllocator pa = call_pb_allocator(cl);
  cl->req = protobuf_c_message_unpack(mi->request, &pa, f->msg_len, msg);
  if (cl->req == NULL) {
    call_discard(cl);
    char why[128];
    snprintf(why, sizeof why, "malformed %s message (%u bytes)", mi->request->name, f->msg_len);
    refuse(c, f, M3_STATUS_INVALID_ARGUMENT, why);
    return;
  }
  call_start(cl, f->arg ? f->arg : s->cfg.default_timeout_ms);
  method_handlers[f->method](cl, att, f->att_len);
  call_maybe_free(cl);
}
