/*
 * Authentication (auth.c): token checks and the per-address limit on failed
 * Hellos. A peer address that failed Hello --auth-fail-limit times within
 * AUTH_WINDOW_MS is refused Hello (its token unchecked) until that window
 * ends, so tokens cannot be guessed at line rate. Loop thread only.
 */
#ifndef M3_SERVER_AUTH_H
#define M3_SERVER_AUTH_H

#include <stdint.h>

#define AUTH_WINDOW_MS 60000u   /* failed Hellos are counted per address per window */
#define AUTH_TOKEN_MIN 16       /* shortest token the server accepts in a token file */
#define AUTH_SLOTS 256          /* addresses tracked (the oldest window is reused) */

typedef struct auth_slot {
  char host[48];       /* the peer's address without its port; "" free */
  uint64_t start_ns;   /* the window's start */
  unsigned fails;
} auth_slot;

typedef struct auth_state {
  auth_slot slots[AUTH_SLOTS];
  uint64_t failures;   /* Hellos refused for a wrong token */
  uint64_t limited;    /* Hellos refused because their address hit the limit */
} auth_state;

/* Tokens compare in constant time: no early exit on the first difference. */
int auth_token_equal(const char *a, const char *b);

/* The address part of a conn.peer ("1.2.3.4:5" -> "1.2.3.4", "[::1]:5" ->
 * "::1") into host (cap bytes). */
void auth_peer_host(const char *peer, char *host, size_t cap);

/* Milliseconds until host may try Hello again (0: now) under limit failed
 * Hellos per window (limit 0: no limit). */
uint64_t auth_blocked_ms(auth_state *a, const char *host, unsigned limit, uint64_t now_ns);

/* host failed a Hello (wrong token) at now_ns. */
void auth_failed(auth_state *a, const char *host, uint64_t now_ns);

#endif /* M3_SERVER_AUTH_H */
