/*
 * SentencePiece's normalizer (normalizer.cc), reproduced step for step so
 * that the normalized string, and so the ids, are the same as
 * spm_encode's:
 *   1. prefixes of the input are replaced by the longest match in the
 *      model's precompiled character map (nmt_nfkc, nfkc_cf, ...; none for
 *      "identity"); user-defined symbols are matched first and kept as they
 *      are; a malformed UTF-8 byte becomes U+FFFD;
 *   2. remove_extra_whitespaces drops leading and trailing spaces and
 *      collapses runs of them to one;
 *   3. add_dummy_prefix puts one space in front;
 *   4. escape_whitespaces writes every space as U+2581 ("▁").
 *
 * The character map is a darts-clone double array whose values index
 * NUL-terminated replacement strings: the format the trainer writes
 * (normalizer::Normalizer::EncodePrecompiledCharsMap).
 */
#include <string.h>

#include "m3/error.h"
#include "tok_int.h"

static const char kSpace[] = "\xE2\x96\x81"; /* U+2581 */

/* darts-clone DoubleArrayUnit accessors */
static inline int unit_has_leaf(uint32_t u) { return (u >> 8) & 1; }
static inline uint32_t unit_value(uint32_t u) { return u & 0x7FFFFFFFu; }
static inline uint32_t unit_label(uint32_t u) { return u & (0x80000000u | 0xFFu); }
static inline uint32_t unit_offset(uint32_t u) {
  return (u >> 10) << ((u & (1u << 9)) >> 6);
}

/* Longest charsmap rule that prefixes s: its length (0: none) and the
 * replacement's offset in *value. Like Normalizer::NormalizePrefix, only the
 * first 32 matches of the common-prefix search count. */
static size_t charsmap_longest(const m3__tok_model *m, const char *s,
                               size_t len, uint32_t *value) {
  const uint32_t *a = m->cm_units;
  size_t n = m->cm_n_units, best = 0, found = 0;
  uint32_t node = unit_offset(a[0]);
  for (size_t i = 0; i < len; i++) {
    uint8_t c = (uint8_t)s[i];
    node ^= c;
    if (node >= n)
      break;
    uint32_t u = a[node];
    if (unit_label(u) != c)
      break;
    node ^= unit_offset(u);
    if (node >= n)
      break;
    if (unit_has_leaf(u)) {
      if (found < 32) {
        best = i + 1;
        *value = unit_value(a[node]);
      }
      found++;
    }
  }
  return best;
}

/* SentencePiece's DecodeUTF8 + IsValidDecodeUTF8: 1 when s starts with a
 * well-formed character (*mblen its length). */
static int spm_valid_utf8(const uint8_t *s, size_t len, size_t *mblen) {
  uint32_t cp;
  *mblen = 1;
  if (s[0] < 0x80)
    return 1;
  if (len >= 2 && (s[0] & 0xE0) == 0xC0) {
    cp = (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
    if ((s[1] & 0xC0) == 0x80 && cp >= 0x80) {
      *mblen = 2;
      return 1;
    }
  } else if (len >= 3 && (s[0] & 0xF0) == 0xE0) {
    cp = (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 |
         (s[2] & 0x3F);
    if ((s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80 && cp >= 0x800 &&
        (cp < 0xD800 || cp >= 0xE000)) {
      *mblen = 3;
      return 1;
    }
  } else if (len >= 4 && (s[0] & 0xF8) == 0xF0) {
    cp = (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 |
         (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
    if ((s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80 &&
        (s[3] & 0xC0) == 0x80 && cp >= 0x10000 && cp <= 0x10FFFF) {
      *mblen = 4;
      return 1;
    }
  }
  return 0;
}

/* Normalizer::NormalizePrefix: the replacement for the longest rule at s
 * (*out, *olen) and how many input bytes it consumes. */
static size_t norm_prefix(const m3__tok_model *m, const char *s, size_t len,
                          const char **out, size_t *olen) {
  if (m->has_user) {
    int32_t v;
    size_t l = m3__trie_longest(&m->user, s, len, &v);
    if (l) {
      *out = s;
      *olen = l;
      return l;
    }
  }
  if (m->cm_units) {
    uint32_t value = 0;
    size_t l = charsmap_longest(m, s, len, &value);
    if (l && value < m->cm_norm_len) {
      *out = m->cm_norm + value;
      *olen = strnlen(*out, m->cm_norm_len - value);
      return l;
    }
  }
  size_t mblen;
  if (!spm_valid_utf8((const uint8_t *)s, len, &mblen)) {
    *out = "\xEF\xBF\xBD";
    *olen = 3;
    return 1;
  }
  *out = s;
  *olen = mblen;
  return mblen;
}

static inline int append(m3__tok_scratch *s, size_t *n, const char *p,
                         size_t l) {
  if (*n + l + 1 > s->norm_cap) {
    int rc = m3__tok_reserve((void **)&s->norm, &s->norm_cap, *n + l + 1);
    if (rc)
      return rc;
  }
  memcpy(s->norm + *n, p, l);
  *n += l;
  return 0;
}

int m3__spm_normalize(const m3__tok_model *m, m3__tok_scratch *s,
                      const char *text, size_t len, size_t *nlen) {
  int rc;
  size_t pos = 0, n = 0;
  const char *sp;
  size_t splen;
  *nlen = 0;
  /* room for the common case up front: a few bytes per input byte */
  if ((rc = m3__tok_reserve((void **)&s->norm, &s->norm_cap, len * 3 + 16)))
    return rc;

  if (m->remove_extra_ws) {
    while (pos < len) {
      size_t c = norm_prefix(m, text + pos, len - pos, &sp, &splen);
      if (!(splen == 1 && sp[0] == ' '))
        break;
      pos += c;
    }
  }
  if (pos == len)
    return 0;

  const char *ws = m->escape_ws ? kSpace : " ";
  size_t wslen = m->escape_ws ? 3 : 1;
  if (m->add_dummy_prefix && (rc = append(s, &n, ws, wslen)))
    return rc;

  int prev_space = m->remove_extra_ws;
  while (pos < len) {
    size_t c = norm_prefix(m, text + pos, len - pos, &sp, &splen);
    if (prev_space && m->remove_extra_ws) {
      while (splen && sp[0] == ' ') {
        sp++;
        splen--;
      }
    }
    if (splen) {
      for (size_t i = 0; i < splen; i++) {
        if (m->escape_ws && sp[i] == ' ')
          rc = append(s, &n, kSpace, 3);
        else
          rc = append(s, &n, sp + i, 1);
        if (rc)
          return rc;
      }
      prev_space = sp[splen - 1] == ' ';
    }
    pos += c;
    if (!m->remove_extra_ws)
      prev_space = 0;
  }

  if (m->remove_extra_ws) {
    while (n >= wslen && memcmp(s->norm + n - wslen, ws, wslen) == 0)
      n -= wslen;
  }
  *nlen = n;
  return 0;
}
