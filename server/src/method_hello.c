/* Hello (m3.proto): protocol version, token, codec fingerprint; the first
 * call on every connection. Answers with the store's layout and limits. */
#include <string.h>

#include "auth.h"
#include "call.h"
#include "m3/log.h"
#include "m3_handlers.h"
#include "tls.h"

static void fill_layout(server *s, M3__Layout *l) {
  const m3_layout *sl = m3_store_layout(s->store);
  l->n_layers = sl->spec.n_layers;
  l->n_kv_heads = sl->spec.n_kv_heads;
  l->n_tokens = sl->spec.n_tokens;
  l->head_dim = sl->spec.head_dim;
  l->codec_kind = sl->codec_kind;
  l->code_bytes = sl->code_bytes;
  l->codec_fingerprint = sl->codec_fp;
  l->embedding_dim = sl->emb_dim;
  l->memory_bytes = (uint32_t)m3_record_mem_size(sl);
}

void method_hello(call *cl, const uint8_t *att, size_t att_len) {
  (void)att;
  (void)att_len;
  conn *c = cl->c;
  server *s = c->s;
  M3__HelloRequest *r = (M3__HelloRequest *)cl->req;
  if (r->protocol_version != M3_PROTOCOL_VERSION) {
    call_end(cl, M3_STATUS_FAILED_PRECONDITION, "protocol version %u; this server speaks %u",
             r->protocol_version, M3_PROTOCOL_VERSION);
    return;
  }
  char host[48];
  auth_peer_host(c->peer, host, sizeof host);
  uint64_t now = now_ns();
  uint64_t wait_ms = auth_blocked_ms(&s->auth, host, s->cfg.auth_fail_limit, now);
  if (wait_ms) {
    /* The token is not even looked at: guessing goes no faster than the
     * limit, whatever the connection rate. */
    s->auth.limited++;
    conn_hangup(c);
    call_end(cl, M3_STATUS_RESOURCE_EXHAUSTED,
             "too many failed Hellos from %s (--auth-fail-limit %u a minute): retry in %llu ms",
             host, s->cfg.auth_fail_limit, (unsigned long long)wait_ms);
    return;
  }
  const char *tok = r->token ? r->token : "";
  int is_admin = s->admin_token && auth_token_equal(tok, s->admin_token);
  /* A client certificate bound to the admin role (--admin-cert-subject):
   * verified by the handshake (--tls-ca), so admin whatever the token. */
  int cert_admin = s->cfg.admin_cert_subject && c->tls &&
                   tls_conn_identity_matches(c->tls, s->cfg.admin_cert_subject);
  is_admin = is_admin || cert_admin;
  int is_reader = is_admin || s->token == NULL || auth_token_equal(tok, s->token);
  if (!is_reader) {
    M3_WARN("server", "%s: Hello with %s: closing", c->peer, *tok ? "a wrong token" : "no token");
    auth_failed(&s->auth, host, now);
    conn_hangup(c);
    if (*tok)
      call_end(cl, M3_STATUS_UNAUTHENTICATED, "the server refused the token");
    else
      call_end(cl, M3_STATUS_UNAUTHENTICATED,
               "this server requires a token (--token-file F, or M3_TOKEN_FILE / M3_TOKEN)");
    return;
  }
  const m3_layout *sl = m3_store_layout(s->store);
  if (r->check_fingerprint && r->codec_fingerprint != sl->codec_fp) {
    call_end(cl, M3_STATUS_FAILED_PRECONDITION,
             "codec fingerprint mismatch: the client decodes with %016llx, this store holds %016llx",
             (unsigned long long)r->codec_fingerprint, (unsigned long long)sl->codec_fp);
    return;
  }
  c->hello = 1;
  c->admin = is_admin;
  M3__HelloResponse out = M3__HELLO_RESPONSE__INIT;
  M3__Layout layout = M3__LAYOUT__INIT;
  M3__Limits limits = M3__LIMITS__INIT;
  fill_layout(s, &layout);
  limits.max_frame_bytes = s->cfg.max_frame_bytes;
  limits.max_inflight_calls = s->cfg.max_inflight;
  limits.max_queries_per_call = s->cfg.max_queries;
  limits.max_k = s->cfg.max_k;
  limits.max_ids_per_call = s->cfg.max_ids;
  limits.idle_timeout_ms = s->cfg.idle_timeout_ms;
  out.protocol_version = M3_PROTOCOL_VERSION;
  out.layout = &layout;
  out.limits = &limits;
  out.server_name = (char *)s->cfg.name;
  out.records = s->records;
  out.admin = is_admin;
  out.shard = s->cfg.shard;
  out.embedder = s->embedder;
  M3_DEBUG("server", "%s: Hello from '%s'%s%s%s", c->peer, r->client_name ? r->client_name : "",
           is_admin ? (cert_admin ? " (admin by its certificate)" : " (admin)") : "",
           c->tls && *tls_conn_identity(c->tls) ? ", certificate " : "",
           c->tls ? tls_conn_identity(c->tls) : "");
  call_reply(cl, &out.base);
}
