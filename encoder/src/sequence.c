/*
 * The token sequence of a reference chunk (m3/sequence.h): the one place
 * that writes [BOS] + tokenize(prefix) + tokenize(text).
 */
#include "m3/sequence.h"

#include <string.h>

#include "m3/error.h"

int m3_seq_tokens(m3_tokenizer *tok, const char *prefix, const char *text, size_t len,
                  int32_t *ids, size_t cap, size_t *n, size_t *n_prefix) {
  size_t k = 0, got = 0;
  int rc;
  *n = 0;
  if (n_prefix) *n_prefix = 0;
  int32_t bos = m3_tokenizer_bos_id(tok);
  if (bos >= 0) {
    if (cap < 1) return m3__seterr(M3_ERANGE, "sequence: no room for BOS (%zu tokens at most)", cap);
    ids[k++] = bos;
  }
  if (prefix && *prefix) {
    rc = m3_tokenizer_encode(tok, prefix, strlen(prefix), 0, ids + k, cap - k, &got);
    if (rc == M3_ERANGE) {
      *n = cap;
      return m3__seterr(M3_ERANGE, "prefix '%s' is %zu tokens: too long for %zu tokens at most",
                        prefix, got, cap);
    }
    if (rc) return rc;
    k += got;
  }
  *n = k;
  if (n_prefix) *n_prefix = k;
  if (len == 0) return 0;
  rc = m3_tokenizer_encode(tok, text, len, 0, ids + k, cap - k, &got);
  if (rc == M3_ERANGE) {
    *n = cap;
    return m3__seterr(M3_ERANGE, "text is %zu tokens: with the %zu of BOS and prefix, more than %zu",
                      got, k, cap);
  }
  if (rc) return rc;
  *n = k + got;
  return 0;
}
