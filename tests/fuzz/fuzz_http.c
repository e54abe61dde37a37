/* libFuzzer target for the HTTP port's request parser (server/src/http.c:
 * /metrics, /healthz, /readyz), through the server's own code in this
 * process (server_harness.h): each input is sent as one connection's bytes
 * (at most the 4 KiB the parser buffers, and a little more to pass it),
 * then the write side is shut and the answer read until the server closes.
 * The answer must be an HTTP/1.1 status line. */
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "m3/error.h"
#include "server_harness.h"

typedef struct answer {
  char head[16];
  size_t len;
} answer;

static int on_read(void *ud, const uint8_t *p, size_t n) {
  answer *a = ud;
  size_t k = sizeof a->head - a->len < n ? sizeof a->head - a->len : n;
  memcpy(a->head + a->len, p, k);
  a->len += k;
  return 0; /* read until the server closes */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const fz_server *s = fz_server_get();
  if (size > 6000) size = 6000;
  int fd = fz_connect(s->http_port);
  if (fd < 0) return 0;
  answer a = {{0}, 0};
  fz_exchange(fd, data, size, 1, 2000, on_read, &a);
  close(fd);
  /* Every request that got an answer got a well-formed status line. */
  if (a.len > 0) M3_ASSERT(a.len >= 9 && !memcmp(a.head, "HTTP/1.1 ", 9));
  return 0;
}
