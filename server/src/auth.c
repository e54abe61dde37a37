/*
 * Authentication (auth.h): constant-time token comparison and the table of
 * failed Hellos per peer address (a fixed table: an address flood reuses
 * the oldest slots instead of growing memory).
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "auth.h"

int auth_token_equal(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  unsigned char diff = (unsigned char)(la != lb);
  for (size_t i = 0; i < lb; i++) diff |= (unsigned char)(a[i % (la ? la : 1)] ^ b[i]);
  return diff == 0;
}

void auth_peer_host(const char *peer, char *host, size_t cap) {
  const char *p = peer, *end = strrchr(peer, ':');
  if (*p == '[') {
    p++;
    end = strchr(p, ']');
  }
  size_t n = end ? (size_t)(end - p) : strlen(p);
  if (n >= cap) n = cap - 1;
  memcpy(host, p, n);
  host[n] = '\0';
}

static const uint64_t window_ns = (uint64_t)AUTH_WINDOW_MS * 1000000u;

static auth_slot *find(auth_state *a, const char *host, uint64_t now_ns) {
  for (size_t i = 0; i < AUTH_SLOTS; i++) {
    auth_slot *s = &a->slots[i];
    if (s->host[0] && strcmp(s->host, host) == 0) {
      if (now_ns - s->start_ns >= window_ns) { /* its window is over: start afresh */
        s->start_ns = now_ns;
        s->fails = 0;
      }
      return s;
    }
  }
  return NULL;
}

uint64_t auth_blocked_ms(auth_state *a, const char *host, unsigned limit, uint64_t now_ns) {
  if (limit == 0) return 0;
  auth_slot *s = find(a, host, now_ns);
  if (s == NULL || s->fails < limit) return 0;
  return (s->start_ns + window_ns - now_ns) / 1000000u + 1;
}

void auth_failed(auth_state *a, const char *host, uint64_t now_ns) {
  a->failures++;
  auth_slot *s = find(a, host, now_ns);
  if (s == NULL) {
    /* A free slot, else the one whose window started first. */
    s = &a->slots[0];
    for (size_t i = 0; i < AUTH_SLOTS && s->host[0]; i++)
      if (!a->slots[i].host[0] || a->slots[i].start_ns < s->start_ns) s = &a->slots[i];
    snprintf(s->host, sizeof s->host, "%s", host);
    s->start_ns = now_ns;
    s->fails = 0;
  }
  s->fails++;
}
