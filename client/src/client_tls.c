/*
 * libm3client over TLS 1.3 (m3_client_options.tls_*): the handshake at
 * connect, with the server's certificate verified against tls_ca and its
 * name (tls_name, else the address's host: SNI and hostname or IP check),
 * and the byte stream client_conn.c reads and writes through OpenSSL once
 * it is up. The socket stays non-blocking: OpenSSL's wants become the
 * poll events client_conn.c waits for (c->tls_events), under the call's
 * deadline as on a plain connection.
 *
 * Each failure has its own message, naming the server: its certificate
 * did not verify (unknown CA, expired, not yet valid, another name), it
 * wants a client certificate or refused ours, it does not speak TLS on that
 * port (a plain m3-server closes on a ClientHello).
 *
 * OpenSSL reaches the socket through a small BIO of ours that writes with
 * MSG_NOSIGNAL: a server that went away must not kill the worker with
 * SIGPIPE (the plain path sends with MSG_NOSIGNAL too).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "client_int.h"
#include "m3/error.h"

/* ---- the socket BIO (MSG_NOSIGNAL) ------------------------------------ */

static int sock_write(BIO *b, const char *p, size_t n, size_t *done) {
  int fd = (int)(intptr_t)BIO_get_data(b);
  BIO_clear_retry_flags(b);
  ssize_t w;
  do w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (w < 0 && errno == EINTR);
  if (w < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) BIO_set_retry_write(b);
    return 0;
  }
  *done = (size_t)w;
  return 1;
}

static int sock_read(BIO *b, char *p, size_t n, size_t *done) {
  int fd = (int)(intptr_t)BIO_get_data(b);
  BIO_clear_retry_flags(b);
  ssize_t r;
  do r = recv(fd, p, n, MSG_DONTWAIT);
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) BIO_set_retry_read(b);
    return 0;
  }
  if (r == 0) return 0; /* end of stream */
  *done = (size_t)r;
  return 1;
}

static long sock_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)b, (void)num, (void)ptr;
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int sock_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

static BIO_METHOD *sock_method;
static pthread_once_t sock_once = PTHREAD_ONCE_INIT;
static void sock_method_make(void) {
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "m3 client socket");
  if (m == NULL) return;
  BIO_meth_set_write_ex(m, sock_write);
  BIO_meth_set_read_ex(m, sock_read);
  BIO_meth_set_ctrl(m, sock_ctrl);
  BIO_meth_set_create(m, sock_create);
  sock_method = m;
}

/* ---- errors ------------------------------------------------------------ */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* OpenSSL's first queued reason (and the queue emptied); 0 when none. */
static unsigned long first_error(char *buf, size_t cap) {
  unsigned long e = ERR_get_error(), first = e;
  buf[0] = '\0';
  if (e) {
    const char *r = ERR_reason_error_string(e);
    if (r) snprintf(buf, cap, "%s", r);
    else ERR_error_string_n(e, buf, cap);
  }
  ERR_clear_error();
  return first;
}

/* The server's alert about our client certificate, as a message into
 * c->tls_err (prefix before it); 0 when reason is no such alert. */
static int cert_alert(m3_client *c, int reason, const char *why, const char *prefix) {
  const char *m = NULL;
  switch (reason) {
  case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
    m = "the server requires a client certificate (mutual TLS): give --tls-cert and --tls-key "
        "(m3_client_options.tls_cert/tls_key)";
    break;
  case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    m = "the server refused our client certificate: unknown CA (not signed by the server's "
        "--tls-ca)";
    break;
  case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
    m = "the server refused our client certificate: it has expired";
    break;
  case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
  case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
  case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
  case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
    snprintf(c->tls_err, sizeof c->tls_err, "%sthe server refused our client certificate: %s",
             prefix, why);
    return 1;
  default: return 0;
  }
  snprintf(c->tls_err, sizeof c->tls_err, "%s%s", prefix, m);
  return 1;
}

/* What an error in the byte stream means: into c->tls_err. */
static void stream_error(m3_client *c, int e) {
  char why[200];
  unsigned long err = first_error(why, sizeof why);
  if (cert_alert(c, err ? ERR_GET_REASON(err) : 0, why, "TLS: ")) return;
  if (e == SSL_ERROR_SYSCALL)
    snprintf(c->tls_err, sizeof c->tls_err, "TLS: %s", errno ? strerror(errno) : "connection lost");
  else
    snprintf(c->tls_err, sizeof c->tls_err, "TLS: %s", why[0] ? why : "failed");
}

/* Why the handshake failed, into c->tls_err (named for the caller). */
static void handshake_error(m3_client *c, SSL *ssl, int e, const char *name, const char *ca) {
  long vr = SSL_get_verify_result(ssl);
  if (vr != X509_V_OK) {
    ERR_clear_error();
    switch (vr) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
      snprintf(c->tls_err, sizeof c->tls_err,
               "its certificate has expired (certificate verify failed: %s)",
               X509_verify_cert_error_string(vr));
      return;
    case X509_V_ERR_CERT_NOT_YET_VALID:
      snprintf(c->tls_err, sizeof c->tls_err, "its certificate is not valid yet");
      return;
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
      snprintf(c->tls_err, sizeof c->tls_err,
               "hostname mismatch: its certificate does not name '%s' (the name checked is "
               "--tls-name, else the address's host)", name);
      return;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
      snprintf(c->tls_err, sizeof c->tls_err,
               "unknown CA: its certificate is not signed by a CA in %s (%s)", ca,
               X509_verify_cert_error_string(vr));
      return;
    default:
      snprintf(c->tls_err, sizeof c->tls_err, "its certificate does not verify: %s",
               X509_verify_cert_error_string(vr));
      return;
    }
  }
  char why[200];
  unsigned long err = first_error(why, sizeof why);
  int reason = err ? ERR_GET_REASON(err) : 0;
  if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0) ||
      reason == SSL_R_UNEXPECTED_EOF_WHILE_READING)
    snprintf(c->tls_err, sizeof c->tls_err,
             "the server closed the connection during the TLS handshake: does this port speak "
             "TLS? (a plain m3-server, without --tls-cert, closes on a TLS ClientHello)");
  else if (reason == SSL_R_WRONG_VERSION_NUMBER || reason == SSL_R_PACKET_LENGTH_TOO_LONG ||
           reason == SSL_R_HTTP_REQUEST)
    snprintf(c->tls_err, sizeof c->tls_err,
             "the server does not speak TLS on this port (it answered bytes that are no TLS "
             "record: %s)", why);
  else if (reason == SSL_R_TLSV1_ALERT_PROTOCOL_VERSION || reason == SSL_R_UNSUPPORTED_PROTOCOL)
    snprintf(c->tls_err, sizeof c->tls_err, "no common TLS version (this client speaks TLS 1.3 only)");
  else if (e == SSL_ERROR_SYSCALL)
    snprintf(c->tls_err, sizeof c->tls_err, "%s", errno ? strerror(errno) : "connection lost");
  else if (!cert_alert(c, reason, why, ""))
    snprintf(c->tls_err, sizeof c->tls_err, "%s", why[0] ? why : "failed");
}

/* ---- connect ----------------------------------------------------------- */

static int file_err(const char *what, const char *path) {
  char why[200];
  first_error(why, sizeof why);
  return m3__seterr(M3_EINVAL, "TLS %s %s: %s", what, path, why[0] ? why : "unreadable");
}

int m3__client_tls_connect(m3_client *c, const m3_client_options *o, const char *host,
                           int timeout_ms) {
  if (o->tls_ca == NULL) {
    if (o->tls_cert || o->tls_key || o->tls_name)
      return m3__seterr(M3_EINVAL, "m3-server %s: TLS options without tls_ca (--tls-ca F): the "
                                   "server's certificate could not be checked", c->addr);
    return 0;
  }
  if ((o->tls_cert == NULL) != (o->tls_key == NULL))
    return m3__seterr(M3_EINVAL, "m3-server %s: %s without %s: a client certificate needs both",
                      c->addr, o->tls_cert ? "tls_cert (--tls-cert)" : "tls_key (--tls-key)",
                      o->tls_cert ? "tls_key (--tls-key)" : "tls_cert (--tls-cert)");
  pthread_once(&sock_once, sock_method_make);
  if (sock_method == NULL) return m3__seterr(M3_ENOMEM, "TLS: out of memory");
  ERR_clear_error();
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == NULL) return m3__seterr(M3_ENOMEM, "TLS: out of memory");
  c->ssl_ctx = ctx;
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  if (SSL_CTX_load_verify_locations(ctx, o->tls_ca, NULL) != 1) return file_err("CA", o->tls_ca);
  if (o->tls_cert) {
    if (SSL_CTX_use_certificate_chain_file(ctx, o->tls_cert) != 1)
      return file_err("certificate", o->tls_cert);
    if (SSL_CTX_use_PrivateKey_file(ctx, o->tls_key, SSL_FILETYPE_PEM) != 1)
      return file_err("key", o->tls_key);
    if (SSL_CTX_check_private_key(ctx) != 1) {
      ERR_clear_error();
      return m3__seterr(M3_EINVAL, "TLS key %s does not belong to the certificate %s", o->tls_key,
                        o->tls_cert);
    }
  }
  SSL *ssl = SSL_new(ctx);
  BIO *b = BIO_new(sock_method);
  if (ssl == NULL || b == NULL) {
    SSL_free(ssl);
    BIO_free(b);
    return m3__seterr(M3_ENOMEM, "TLS: out of memory");
  }
  c->ssl = ssl;
  BIO_set_data(b, (void *)(intptr_t)c->fd);
  SSL_set_bio(ssl, b, b);
  const char *name = o->tls_name && *o->tls_name ? o->tls_name : host;
  unsigned char ip[16];
  int is_ip = inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1;
  if (is_ip) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name);
  } else {
    SSL_set_tlsext_host_name(ssl, name);
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    SSL_set1_host(ssl, name);
  }
  uint64_t deadline = timeout_ms > 0 ? now_ns() + (uint64_t)timeout_ms * 1000000ull : 0;
  for (;;) {
    errno = 0;
    int r = SSL_connect(ssl);
    if (r == 1) break;
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      int ms = -1;
      if (deadline) {
        uint64_t t = now_ns();
        ms = t >= deadline ? 0 : (int)((deadline - t + 999999) / 1000000);
      }
      struct pollfd pfd = {.fd = c->fd, .events = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT};
      int pr = ms == 0 ? 0 : poll(&pfd, 1, ms);
      if (pr < 0 && errno == EINTR) continue;
      if (pr <= 0)
        return m3__seterr(M3_EBUSY, "TLS to m3-server %s: no handshake within %d ms", c->addr,
                          timeout_ms);
      continue;
    }
    handshake_error(c, ssl, e, name, o->tls_ca);
    return m3__seterr(M3_EIO, "TLS to m3-server %s: refused: %s", c->addr, c->tls_err);
  }
  return 0;
}

/* ---- the byte stream --------------------------------------------------- */

long m3__client_tls_send(m3_client *c, const void *p, size_t n) {
  c->tls_events = 0;
  ERR_clear_error();
  int w = SSL_write(c->ssl, p, n > 0x40000000 ? 0x40000000 : (int)n);
  if (w > 0) return w;
  int e = SSL_get_error(c->ssl, w);
  if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
    c->tls_events = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
    errno = EAGAIN;
    return -1;
  }
  stream_error(c, e);
  errno = EPROTO;
  return -1;
}

long m3__client_tls_recv(m3_client *c, void *p, size_t n) {
  c->tls_events = 0;
  ERR_clear_error();
  errno = 0;
  int r = SSL_read(c->ssl, p, n > 0x40000000 ? 0x40000000 : (int)n);
  if (r > 0) return r;
  int e = SSL_get_error(c->ssl, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
    c->tls_events = e == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN;
    errno = EAGAIN;
    return -1;
  }
  if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0)) {
    ERR_clear_error();
    return 0; /* the server closed */
  }
  stream_error(c, e);
  errno = EPROTO;
  return -1;
}

void m3__client_tls_free(m3_client *c) {
  SSL_free(c->ssl); /* no close_notify: the socket closes next, and must not block */
  SSL_CTX_free(c->ssl_ctx);
  c->ssl = NULL;
  c->ssl_ctx = NULL;
}
