/*
 * TLS on the RPC port and, with --http-tls, the HTTP port (tls.c): OpenSSL driven through memory, never
 * blocking the loop. conn.c reads ciphertext from the socket and hands it
 * in (tls_conn_input), takes plaintext out (tls_conn_read), hands
 * plaintext to seal (tls_conn_seal) and takes the ciphertext to write
 * (tls_conn_take); OpenSSL never touches the socket itself, except for
 * kernel TLS: once the handshake is done and the kernel took the send key
 * (kTLS, TCP_ULP "tls"), the connection's writes go to the socket in clear,
 * sendfile included, and the kernel encrypts them (tls_conn_ktls_send).
 *
 * TLS 1.3 only. With a CA (--tls-ca) every client must present a
 * certificate that it signed (mutual TLS); the certificate's subject and
 * SANs are the connection's identity (tls_conn_identity), logged at the
 * handshake and matched by --admin-cert-subject.
 *
 * Reload (SIGHUP): a new context from the same files; connections made
 * before it keep the old one (OpenSSL counts its references), new ones get
 * the new one. Loop thread only.
 */
#ifndef M3_SERVER_TLS_H
#define M3_SERVER_TLS_H

#include <stddef.h>
#include <stdint.h>

typedef struct tls_server tls_server;
typedef struct tls_conn tls_conn;

typedef struct tls_counters {
  uint64_t handshakes;        /* completed */
  uint64_t handshake_failures;
  uint64_t ktls_send;         /* connections whose sends the kernel encrypts */
  uint64_t reloads, reload_failures;
} tls_counters;

/*
 * Load cert (PEM chain), key (PEM) and, when ca is not NULL, the CA whose
 * client certificates are required (ca_flag: the option that named it, for
 * messages; NULL: "--tls-ca"). ktls: try kernel TLS for sends. On failure
 * returns M3_EINVAL with a message naming the file and OpenSSL's reason.
 * *out is freed by tls_server_close (NULL: nothing).
 */
int tls_server_open(const char *cert, const char *key, const char *ca, const char *ca_flag,
                    int ktls, tls_server **out);
void tls_server_close(tls_server *t);
/* Read the files again; on failure the old context stays (message set). */
int tls_server_reload(tls_server *t);
/* One line for the log: certificate subject and expiry, client CA, kTLS. */
void tls_server_describe(const tls_server *t, char *buf, size_t cap);
tls_counters *tls_server_counters(tls_server *t);
/* Why kernel TLS is not used, after a handshake refused it ("" while none
 * was tried, or it works). */
const char *tls_server_ktls_why(const tls_server *t);

/* A connection's TLS state for socket fd (whose kTLS it may switch on);
 * NULL on no memory. peer: for log lines. */
tls_conn *tls_conn_new(tls_server *t, int fd, const char *peer);
void tls_conn_free(tls_conn *tc);

/* Hand in n bytes of ciphertext read from the socket. */
int tls_conn_input(tls_conn *tc, const void *p, size_t n);

/*
 * Take plaintext out (and drive the handshake): >0 bytes into buf (cap),
 * 0 when none is ready until more ciphertext comes, -1 when the peer is
 * closing (close_notify), -2 on a TLS failure (tls_conn_error says why).
 * Whatever it must answer (handshake, alerts) waits for tls_conn_take.
 * sock_idle: nothing of this connection waits to be written (kTLS may
 * then push the handshake's end to the socket itself and switch on).
 */
long tls_conn_read(tls_conn *tc, void *buf, size_t cap, int sock_idle);
const char *tls_conn_error(const tls_conn *tc);

/* Queue a close_notify alert (after the handshake, without kTLS) for
 * tls_conn_take: the peer then knows the answer ended where it did. */
void tls_conn_close_notify(tls_conn *tc);

/* Encrypt n bytes of plaintext (appended to the output). 0, or -1 (the
 * handshake is not done, or OpenSSL failed). */
int tls_conn_seal(tls_conn *tc, const void *p, size_t n);

/* Make room for the ciphertext of n more bytes of plaintext, so that
 * sealing a large write does not grow its buffer step by step. */
void tls_conn_reserve(tls_conn *tc, size_t n);

/* Take the ciphertext waiting to be written: its length, and *out the
 * malloc'ed bytes (the caller frees); 0 (and *out NULL) when none. */
size_t tls_conn_take(tls_conn *tc, uint8_t **out);

int tls_conn_done(const tls_conn *tc);       /* the handshake is done */
int tls_conn_ktls_send(const tls_conn *tc);  /* the kernel encrypts sends */
/* "CN=worker-1,O=m3 (DNS:worker-1)" of the client's certificate, "" when it
 * sent none. */
const char *tls_conn_identity(const tls_conn *tc);
/* Whether the client's certificate subject (RFC 2253, as in the identity)
 * or one of its SANs (DNS:, URI:, email: value alone) equals want. */
int tls_conn_identity_matches(const tls_conn *tc, const char *want);
/* "TLSv1.3 TLS_AES_256_GCM_SHA384" */
const char *tls_conn_describe(const tls_conn *tc, char *buf, size_t cap);

#endif /* M3_SERVER_TLS_H */
