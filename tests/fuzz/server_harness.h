/*
 * The in-process m3-server the fuzz_rpc and fuzz_http targets talk to: the
 * server's own main (server/src/main.c, renamed) runs on a thread of the
 * fuzzer over a real store (written by `m3-bench gen` beside the fuzzer
 * binary) on loopback ports, with a read and an admin token, so that each
 * input goes through the real transport, dispatch, checks and method
 * handlers, and any memory error in them is caught by the fuzzer's
 * sanitizers in this process.
 */
#ifndef M3_FUZZ_SERVER_HARNESS_H
#define M3_FUZZ_SERVER_HARNESS_H

#include <stddef.h>
#include <stdint.h>

typedef struct fz_server {
  int rpc_port, http_port;
  const char *admin_token; /* NUL-terminated */
} fz_server;

/* Start the server once (later calls return the same); aborts when it cannot. */
const fz_server *fz_server_get(void);

/* A blocking loopback TCP connection to port that resets (no TIME_WAIT)
 * when closed; -1 when the server is gone. */
int fz_connect(int port);

/* Write all of buf while reading (and passing to on_read) what the server
 * sends, then keep reading until on_read returns nonzero (FZ_DONE), the
 * server closes (FZ_CLOSED), or timeout_ms pass without a byte
 * (FZ_TIMEOUT). */
enum { FZ_DONE = 0, FZ_CLOSED = 1, FZ_TIMEOUT = 2 };
int fz_exchange(int fd, const uint8_t *buf, size_t len, int shut_wr, int timeout_ms,
                 int (*on_read)(void *ud, const uint8_t *p, size_t n), void *ud);

#endif
