/*
 * TLS on the RPC port (tls.h): one SSL_CTX per configuration (swapped on
 * reload), one SSL per connection with a memory BIO for what the loop read
 * and our own BIO for what OpenSSL writes. Nothing here blocks: the loop
 * reads and writes the socket; OpenSSL only transforms bytes.
 *
 * Kernel TLS. The write BIO answers OpenSSL's BIO_CTRL_SET_KTLS (sent, with
 * SSL_OP_ENABLE_KTLS, when the handshake switches to the application
 * traffic key): it pushes the handshake flight still waiting in its buffer
 * to the socket at once (the socket is empty then; the flight is a few KB)
 * and hands the key to the kernel (TCP_ULP "tls", then SOL_TLS TLS_TX with
 * the crypto_info OpenSSL filled, whose length follows from its cipher).
 * From then on the kernel encrypts every byte written to the socket:
 * conn.c writes in clear and sendfile keeps working. Where anything fails
 * (no TLS module in the kernel, an unsupported cipher, a flight that did
 * not fit) OpenSSL keeps encrypting in user space, as without kTLS. The
 * server sends no session tickets (no resumption), so nothing but
 * application data follows the switch; a peer's KeyUpdate asking for ours
 * cannot be answered under kTLS and closes the connection.
 */
#include <errno.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "m3/error.h"
#include "m3/log.h"
#include "tls.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif
#ifndef TLS_SET_RECORD_TYPE
#define TLS_SET_RECORD_TYPE 1
#endif
/* OpenSSL 3's BIO controls for kTLS, internal to it (its bio.h lists their
 * numbers in a comment): the send key to install, and the record type of
 * the next write (an alert after the switch). */
#define M3_BIO_CTRL_SET_KTLS 72
#define M3_BIO_CTRL_SET_KTLS_TX_SEND_CTRL_MSG 74
#define M3_BIO_CTRL_CLEAR_KTLS_TX_CTRL_MSG 75

struct tls_server {
  SSL_CTX *ctx;
  char *cert, *key, *ca;
  const char *ca_flag; /* the option that named ca, for messages */
  int ktls;
  BIO_METHOD *meth;
  tls_counters ctr;
  char ktls_why[200];
  char subject[256], not_after[64];
};

struct tls_conn {
  tls_server *srv;
  SSL *ssl;
  BIO *rbio;
  int fd;
  const char *peer;
  uint8_t *out;
  size_t olen, ocap;
  int done, ktls_send, sock_idle;
  int ctrl_type;     /* kTLS: the record type of the next write (0: data) */
  char err[300];
  char subject[256];
  char sans[512];    /* "DNS:a, URI:b" */
  char identity[800];
};

/* OpenSSL's queued errors as one string (and the queue emptied). */
static void ossl_errors(char *buf, size_t cap) {
  unsigned long e;
  size_t n = 0;
  buf[0] = '\0';
  while ((e = ERR_get_error()) != 0) {
    char one[256];
    ERR_error_string_n(e, one, sizeof one);
    const char *reason = ERR_reason_error_string(e);
    if (n < cap) n += (size_t)snprintf(buf + n, cap - n, "%s%s", n ? "; " : "", reason ? reason : one);
  }
  if (n == 0) snprintf(buf, cap, "no reason given by OpenSSL");
}

/* ---- the write BIO ----------------------------------------------------- */

static int wbio_write(BIO *b, const char *p, size_t n, size_t *written) {
  tls_conn *tc = BIO_get_data(b);
  if (tc->ktls_send && tc->ctrl_type) {
    /* An alert (or other non-data record) under kTLS: the kernel frames it
     * with the record type given in a control message. Best effort: the
     * connection closes after it. */
    char cbuf[CMSG_SPACE(sizeof(unsigned char))];
    memset(cbuf, 0, sizeof cbuf);
    struct iovec iov = {(void *)p, n};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                        .msg_controllen = sizeof cbuf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_TLS;
    cm->cmsg_type = TLS_SET_RECORD_TYPE;
    cm->cmsg_len = CMSG_LEN(sizeof(unsigned char));
    *CMSG_DATA(cm) = (unsigned char)tc->ctrl_type;
    (void)sendmsg(tc->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    *written = n;
    return 1;
  }
  if (tc->olen + n > tc->ocap) {
    size_t cap = tc->ocap ? tc->ocap : 16384;
    while (cap < tc->olen + n) cap *= 2;
    uint8_t *o = realloc(tc->out, cap);
    if (o == NULL) return 0;
    tc->out = o;
    tc->ocap = cap;
  }
  memcpy(tc->out + tc->olen, p, n);
  tc->olen += n;
  *written = n;
  return 1;
}

/* The length of the crypto_info OpenSSL hands BIO_CTRL_SET_KTLS, from its
 * cipher (its own struct wraps a union of the kernel's). 0: unknown. */
static size_t crypto_info_len(const struct tls_crypto_info *ci) {
  switch (ci->cipher_type) {
#ifdef TLS_CIPHER_AES_GCM_128
  case TLS_CIPHER_AES_GCM_128: return sizeof(struct tls12_crypto_info_aes_gcm_128);
#endif
#ifdef TLS_CIPHER_AES_GCM_256
  case TLS_CIPHER_AES_GCM_256: return sizeof(struct tls12_crypto_info_aes_gcm_256);
#endif
#ifdef TLS_CIPHER_AES_CCM_128
  case TLS_CIPHER_AES_CCM_128: return sizeof(struct tls12_crypto_info_aes_ccm_128);
#endif
#ifdef TLS_CIPHER_CHACHA20_POLY1305
  case TLS_CIPHER_CHACHA20_POLY1305: return sizeof(struct tls12_crypto_info_chacha20_poly1305);
#endif
  default: return 0;
  }
}

/* BIO_CTRL_SET_KTLS: 1 when the kernel took the send key. */
static long wbio_set_ktls(tls_conn *tc, int is_tx, const struct tls_crypto_info *ci) {
  tls_server *t = tc->srv;
  if (!is_tx || ci == NULL) return 0;
  size_t len = crypto_info_len(ci);
  if (len == 0) {
    snprintf(t->ktls_why, sizeof t->ktls_why, "the kernel has no kTLS for cipher type %u",
             ci->cipher_type);
    return 0;
  }
  if (!tc->sock_idle) {
    snprintf(t->ktls_why, sizeof t->ktls_why, "writes were queued at the handshake's end");
    return 0;
  }
  /* The flight encrypted in user space must be on the socket before the
   * kernel encrypts what follows. */
  while (tc->olen) {
    ssize_t w = send(tc->fd, tc->out, tc->olen, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      snprintf(t->ktls_why, sizeof t->ktls_why, "the handshake did not fit the socket");
      return 0;
    }
    memmove(tc->out, tc->out + w, tc->olen - (size_t)w);
    tc->olen -= (size_t)w;
  }
  if (setsockopt(tc->fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof "tls") != 0) {
    snprintf(t->ktls_why, sizeof t->ktls_why, "the kernel refused TCP_ULP tls: %s%s",
             strerror(errno), errno == ENOENT ? " (no tls module: modprobe tls)" : "");
    return 0;
  }
  if (setsockopt(tc->fd, SOL_TLS, TLS_TX, ci, (socklen_t)len) != 0) {
    snprintf(t->ktls_why, sizeof t->ktls_why, "the kernel refused the TLS_TX key: %s",
             strerror(errno));
    return 0;
  }
  t->ktls_why[0] = '\0';
  tc->ktls_send = 1;
  return 1;
}

static long wbio_ctrl(BIO *b, int cmd, long num, void *ptr) {
  tls_conn *tc = BIO_get_data(b);
  switch (cmd) {
  case BIO_CTRL_FLUSH: return 1;
  case BIO_CTRL_WPENDING: return (long)tc->olen;
  case BIO_CTRL_PENDING: return 0;
  case M3_BIO_CTRL_SET_KTLS: return wbio_set_ktls(tc, (int)num, ptr);
  case M3_BIO_CTRL_SET_KTLS_TX_SEND_CTRL_MSG: tc->ctrl_type = (int)num; return 1;
  case M3_BIO_CTRL_CLEAR_KTLS_TX_CTRL_MSG: tc->ctrl_type = 0; return 1;
  case BIO_CTRL_GET_KTLS_SEND: return tc->ktls_send;
  default: return 0;
  }
}

static int wbio_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

/* ---- the context ------------------------------------------------------- */

static SSL_CTX *make_ctx(tls_server *t, char *err, size_t cap) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == NULL) goto ossl;
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_num_tickets(ctx, 0); /* no resumption: nothing but data after the handshake */
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  if (t->ktls) SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS);
  if (SSL_CTX_use_certificate_chain_file(ctx, t->cert) != 1) {
    char e[256];
    ossl_errors(e, sizeof e);
    snprintf(err, cap, "--tls-cert %s: %s", t->cert, e);
    SSL_CTX_free(ctx);
    return NULL;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, t->key, SSL_FILETYPE_PEM) != 1) {
    char e[256];
    ossl_errors(e, sizeof e);
    snprintf(err, cap, "--tls-key %s: %s", t->key, e);
    SSL_CTX_free(ctx);
    return NULL;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    ERR_clear_error();
    snprintf(err, cap, "--tls-key %s does not belong to the certificate in --tls-cert %s",
             t->key, t->cert);
    SSL_CTX_free(ctx);
    return NULL;
  }
  if (t->ca) {
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(t->ca);
    if (SSL_CTX_load_verify_locations(ctx, t->ca, NULL) != 1 || names == NULL) {
      char e[256];
      ossl_errors(e, sizeof e);
      snprintf(err, cap, "%s %s: %s", t->ca_flag, t->ca, names ? e : "no certificate in it");
      sk_X509_NAME_pop_free(names, X509_NAME_free);
      SSL_CTX_free(ctx);
      return NULL;
    }
    SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  }
  return ctx;
ossl:
  ossl_errors(err, cap);
  return NULL;
}

static void describe_cert(tls_server *t) {
  X509 *x = SSL_CTX_get0_certificate(t->ctx);
  t->subject[0] = t->not_after[0] = '\0';
  if (x == NULL) return;
  X509_NAME_oneline(X509_get_subject_name(x), t->subject, sizeof t->subject);
  BIO *m = BIO_new(BIO_s_mem());
  if (m && ASN1_TIME_print(m, X509_get0_notAfter(x)) == 1) {
    int n = BIO_read(m, t->not_after, sizeof t->not_after - 1);
    t->not_after[n > 0 ? n : 0] = '\0';
  }
  BIO_free(m);
}

int tls_server_open(const char *cert, const char *key, const char *ca, const char *ca_flag,
                    int ktls, tls_server **out) {
  *out = NULL;
  if (cert == NULL || key == NULL)
    return m3__seterr(M3_EINVAL, "TLS needs both --tls-cert and --tls-key");
  tls_server *t = calloc(1, sizeof *t);
  if (t == NULL) return m3__seterr(M3_ENOMEM, "TLS: out of memory");
  t->cert = strdup(cert);
  t->key = strdup(key);
  t->ca = ca ? strdup(ca) : NULL;
  t->ca_flag = ca_flag ? ca_flag : "--tls-ca";
  t->ktls = ktls;
  t->meth = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "m3 conn");
  if (t->cert == NULL || t->key == NULL || (ca && t->ca == NULL) || t->meth == NULL) {
    tls_server_close(t);
    return m3__seterr(M3_ENOMEM, "TLS: out of memory");
  }
  BIO_meth_set_write_ex(t->meth, wbio_write);
  BIO_meth_set_ctrl(t->meth, wbio_ctrl);
  BIO_meth_set_create(t->meth, wbio_create);
  char err[400];
  if ((t->ctx = make_ctx(t, err, sizeof err)) == NULL) {
    tls_server_close(t);
    return m3__seterr(M3_EINVAL, "%s", err);
  }
  describe_cert(t);
  if (ktls) {
    /* Whether the kernel has its TLS module: an unconnected socket is
     * refused ENOTCONN by it, ENOENT without it. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd >= 0 && setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof "tls") != 0 &&
        errno == ENOENT)
      snprintf(t->ktls_why, sizeof t->ktls_why,
               "the kernel offers no TLS (TCP_ULP tls: %s; modprobe tls)", strerror(ENOENT));
    if (fd >= 0) close(fd);
  } else {
    snprintf(t->ktls_why, sizeof t->ktls_why, "off (--no-ktls)");
  }
  *out = t;
  return 0;
}

void tls_server_close(tls_server *t) {
  if (t == NULL) return;
  SSL_CTX_free(t->ctx);
  BIO_meth_free(t->meth);
  free(t->cert);
  free(t->key);
  free(t->ca);
  free(t);
}

int tls_server_reload(tls_server *t) {
  char err[400];
  SSL_CTX *ctx = make_ctx(t, err, sizeof err);
  if (ctx == NULL) {
    t->ctr.reload_failures++;
    return m3__seterr(M3_EINVAL, "%s", err);
  }
  SSL_CTX_free(t->ctx); /* connections made with it hold their own reference */
  t->ctx = ctx;
  describe_cert(t);
  t->ctr.reloads++;
  return 0;
}

void tls_server_describe(const tls_server *t, char *buf, size_t cap) {
  snprintf(buf, cap, "TLS 1.3: certificate %s (expires %s) from %s; %s; kTLS sends %s%s%s",
           t->subject, t->not_after, t->cert,
           t->ca ? "client certificates required (mutual TLS)" : "no client certificates",
           t->ktls_why[0] ? "unavailable" : "tried at each handshake",
           t->ktls_why[0] ? ": " : "", t->ktls_why);
}

tls_counters *tls_server_counters(tls_server *t) { return &t->ctr; }
const char *tls_server_ktls_why(const tls_server *t) { return t->ktls_why; }

/* ---- connections ------------------------------------------------------- */

tls_conn *tls_conn_new(tls_server *t, int fd, const char *peer) {
  tls_conn *tc = calloc(1, sizeof *tc);
  if (tc == NULL) return NULL;
  tc->srv = t;
  tc->fd = fd;
  tc->peer = peer;
  tc->ssl = SSL_new(t->ctx);
  tc->rbio = BIO_new(BIO_s_mem());
  BIO *w = BIO_new(t->meth);
  if (tc->ssl == NULL || tc->rbio == NULL || w == NULL) {
    BIO_free(tc->rbio);
    BIO_free(w);
    SSL_free(tc->ssl);
    free(tc);
    return NULL;
  }
  BIO_set_data(w, tc);
  BIO_set_mem_eof_return(tc->rbio, -1); /* empty: retry, not EOF */
  SSL_set_bio(tc->ssl, tc->rbio, w);    /* the SSL owns both */
  SSL_set_accept_state(tc->ssl);
  return tc;
}

void tls_conn_free(tls_conn *tc) {
  if (tc == NULL) return;
  SSL_free(tc->ssl);
  free(tc->out);
  free(tc);
}

int tls_conn_input(tls_conn *tc, const void *p, size_t n) {
  return BIO_write(tc->rbio, p, (int)n) == (int)n ? 0 : -1;
}

/* The client certificate's subject and SANs, after the handshake. */
static void peer_identity(tls_conn *tc) {
  X509 *x = SSL_get0_peer_certificate(tc->ssl);
  if (x == NULL) return;
  BIO *m = BIO_new(BIO_s_mem());
  if (m && X509_NAME_print_ex(m, X509_get_subject_name(x), 0, XN_FLAG_RFC2253) >= 0) {
    int n = BIO_read(m, tc->subject, sizeof tc->subject - 1);
    tc->subject[n > 0 ? n : 0] = '\0';
  }
  BIO_free(m);
  GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
  size_t len = 0;
  for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens); i++) {
    const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
    const char *kind = g->type == GEN_DNS ? "DNS" : g->type == GEN_URI ? "URI"
                       : g->type == GEN_EMAIL ? "email" : NULL;
    if (kind == NULL) continue;
    const ASN1_IA5STRING *s = g->d.ia5;
    if (len < sizeof tc->sans)
      len += (size_t)snprintf(tc->sans + len, sizeof tc->sans - len, "%s%s:%.*s", len ? ", " : "",
                              kind, s->length, (const char *)s->data);
  }
  GENERAL_NAMES_free(gens);
  snprintf(tc->identity, sizeof tc->identity, "%s%s%s%s", tc->subject, tc->sans[0] ? " (" : "",
           tc->sans, tc->sans[0] ? ")" : "");
}

long tls_conn_read(tls_conn *tc, void *buf, size_t cap, int sock_idle) {
  tc->sock_idle = sock_idle;
  if (!tc->done) {
    int r = SSL_do_handshake(tc->ssl);
    if (r != 1) {
      int e = SSL_get_error(tc->ssl, r);
      if (e == SSL_ERROR_WANT_READ) return 0;
      char why[256];
      ossl_errors(why, sizeof why);
      long vr = SSL_get_verify_result(tc->ssl);
      if (vr != X509_V_OK)
        snprintf(tc->err, sizeof tc->err, "TLS handshake failed: the client's certificate: %s",
                 X509_verify_cert_error_string(vr));
      else
        snprintf(tc->err, sizeof tc->err, "TLS handshake failed: %s", why);
      tc->srv->ctr.handshake_failures++;
      return -2;
    }
    tc->done = 1;
    tc->srv->ctr.handshakes++;
    if (tc->ktls_send) tc->srv->ctr.ktls_send++;
    peer_identity(tc);
  }
  int r = SSL_read(tc->ssl, buf, cap > 0x7fffffff ? 0x7fffffff : (int)cap);
  if (r > 0) return r;
  int e = SSL_get_error(tc->ssl, r);
  if (e == SSL_ERROR_WANT_READ) return 0;
  if (e == SSL_ERROR_ZERO_RETURN) return -1;
  char why[256];
  ossl_errors(why, sizeof why);
  snprintf(tc->err, sizeof tc->err, "TLS: %s", why);
  return -2;
}

const char *tls_conn_error(const tls_conn *tc) { return tc->err; }

void tls_conn_close_notify(tls_conn *tc) {
  if (tc->done && !tc->ktls_send) (void)SSL_shutdown(tc->ssl);
  ERR_clear_error();
}

int tls_conn_seal(tls_conn *tc, const void *p, size_t n) {
  if (!tc->done || tc->ktls_send) return -1;
  while (n) {
    int chunk = n > (1u << 30) ? 1 << 30 : (int)n;
    int w = SSL_write(tc->ssl, p, chunk);
    if (w <= 0) {
      ossl_errors(tc->err, sizeof tc->err);
      return -1;
    }
    p = (const uint8_t *)p + w;
    n -= (size_t)w;
  }
  return 0;
}

void tls_conn_reserve(tls_conn *tc, size_t n) {
  /* a record per 16 KiB: 5 bytes of header, 1 of type, 16 of tag */
  size_t need = tc->olen + n + (n / 16384 + 1) * 32;
  if (need <= tc->ocap) return;
  uint8_t *o = realloc(tc->out, need);
  if (o == NULL) return; /* wbio_write grows it, or fails, as before */
  tc->out = o;
  tc->ocap = need;
}

size_t tls_conn_take(tls_conn *tc, uint8_t **out) {
  size_t n = tc->olen;
  *out = n ? tc->out : NULL;
  if (n) {
    tc->out = NULL;
    tc->olen = tc->ocap = 0;
  }
  return n;
}

int tls_conn_done(const tls_conn *tc) { return tc->done; }
int tls_conn_ktls_send(const tls_conn *tc) { return tc->ktls_send; }
const char *tls_conn_identity(const tls_conn *tc) { return tc->identity; }

int tls_conn_identity_matches(const tls_conn *tc, const char *want) {
  if (want == NULL || *want == '\0' || tc->identity[0] == '\0') return 0;
  if (strcmp(tc->subject, want) == 0) return 1;
  /* each SAN is "KIND:value", ", "-separated */
  size_t wl = strlen(want);
  for (const char *p = tc->sans; *p;) {
    const char *colon = strchr(p, ':');
    const char *end = strstr(p, ", ");
    if (end == NULL) end = p + strlen(p);
    if (colon && colon < end && (size_t)(end - colon - 1) == wl && !memcmp(colon + 1, want, wl))
      return 1;
    p = *end ? end + 2 : end;
  }
  return 0;
}

const char *tls_conn_describe(const tls_conn *tc, char *buf, size_t cap) {
  snprintf(buf, cap, "%s %s", SSL_get_version(tc->ssl), SSL_get_cipher_name(tc->ssl));
  return buf;
}
