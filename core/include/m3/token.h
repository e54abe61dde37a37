/*
 * Access tokens, read the same way by m3-server and every client: the first
 * line of a file, with spaces, tabs and the line end trimmed at both ends.
 * Clients also take the environment: M3_TOKEN (the token itself), then
 * M3_TOKEN_FILE (a file as above), when no --token-file is given.
 */
#ifndef M3_TOKEN_H
#define M3_TOKEN_H

#include <stddef.h>

/* The token of path into buf (cap bytes, NUL-terminated). M3_EIO when the
 * file cannot be read, M3_EINVAL when its first line is empty or longer
 * than cap - 1; the message names the file. */
int m3_token_read(const char *path, char *buf, size_t cap);

/* A client's token: token_file when not NULL, else $M3_TOKEN, else
 * $M3_TOKEN_FILE. buf[0] = 0 when there is none (returns 0). *source (may
 * be NULL) names where it came from ("--token-file F", "M3_TOKEN", ...). */
int m3_token_resolve(const char *token_file, char *buf, size_t cap, const char **source);

#endif /* M3_TOKEN_H */
