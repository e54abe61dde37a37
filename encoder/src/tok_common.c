/*
 * Tokenizer handles: loading (format picked from the file's content),
 * cloning, the encode driver shared by every format, decode and accessors.
 * This is the top of the tokenizer's files: it calls the formats (tok_spm,
 * tok_hf) and algorithms (tok_norm, tok_bpe, tok_unigram), which call only
 * tok_model.c and tok_trie.c below them.
 * Loading happens once per encoder process; encode runs once per reference
 * chunk (<= 128 tokens, a few hundred bytes) on the encoder's hot path, so
 * it works in the handle's scratch and allocates only to grow it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "m3/error.h"
#include "tok_int.h"

/* Tokenizer files are a few MB at most; refuse anything absurd early. */
#define M3__TOK_MAX_FILE ((size_t)1 << 30)

static int read_file(const char *path, char **data, size_t *len) {
  int rc = 0;
  char *buf = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return m3__syserr(errno, "tokenizer: open %s", path);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    rc = m3__syserr(errno, "tokenizer: stat %s", path);
    goto out;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = m3__seterr(M3_EINVAL, "tokenizer: %s is not a regular file", path);
    goto out;
  }
  if ((size_t)st.st_size > M3__TOK_MAX_FILE) {
    rc = m3__seterr(M3_EBADFORMAT, "tokenizer: %s: %lld bytes is too large",
                    path, (long long)st.st_size);
    goto out;
  }
  size_t n = (size_t)st.st_size;
  buf = malloc(n + 1);
  if (!buf) {
    rc = m3__seterr(M3_ENOMEM, "tokenizer: %s: %zu bytes", path, n);
    goto out;
  }
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      rc = m3__syserr(errno, "tokenizer: read %s", path);
      goto out;
    }
    if (r == 0)
      break;
    got += (size_t)r;
  }
  buf[got] = '\0';
  *data = buf;
  *len = got;
  buf = NULL;
out:
  free(buf);
  close(fd);
  return rc;
}

/* A folder: prefer tokenizer.model, then tokenizer.json. */
static int resolve_path(const char *path, char **file) {
  struct stat st;
  if (stat(path, &st) != 0)
    return m3__syserr(errno, "tokenizer: %s", path);
  if (!S_ISDIR(st.st_mode)) {
    *file = strdup(path);
    return *file ? 0 : M3_ENOMEM;
  }
  static const char *const names[] = {"tokenizer.model", "tokenizer.json"};
  for (size_t i = 0; i < 2; i++) {
    size_t n = strlen(path) + strlen(names[i]) + 2;
    char *p = malloc(n);
    if (!p)
      return M3_ENOMEM;
    snprintf(p, n, "%s/%s", path, names[i]);
    if (stat(p, &st) == 0 && S_ISREG(st.st_mode)) {
      *file = p;
      return 0;
    }
    free(p);
  }
  return m3__seterr(M3_ENOTFOUND,
                    "tokenizer: %s holds neither tokenizer.model nor "
                    "tokenizer.json", path);
}

/* Parse data (len bytes, NUL-terminated after them) of the file named
 * file into a handle. */
static int load_bytes(const char *file, const char *data, size_t len, m3_tokenizer **out) {
  int rc = 0;
  m3__tok_model *m = NULL;
  m3_tokenizer *tok = NULL;
  if (!(m = m3__tok_model_new(file)))
    return m3__seterr(M3_ENOMEM, "tokenizer: %s", file);
  size_t i = 0;
  while (i < len && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' ||
                     data[i] == '\r'))
    i++;
  if (len == 0) {
    rc = m3__seterr(M3_EBADFORMAT, "tokenizer: %s is empty", file);
    goto out;
  }
  if (i < len && data[i] == '{')
    rc = m3__tok_load_hf(m, data, len);
  else
    rc = m3__tok_load_spm(m, (const uint8_t *)data, len);
  if (rc != 0)
    goto out;
  if (!(tok = calloc(1, sizeof(*tok)))) {
    rc = m3__seterr(M3_ENOMEM, "tokenizer: %s", file);
    goto out;
  }
  tok->m = m;
  m = NULL;
  *out = tok;
out:
  m3__tok_model_unref(m);
  return rc;
}

int m3_tokenizer_load(const char *path, m3_tokenizer **out) {
  int rc = 0;
  char *file = NULL, *data = NULL;
  size_t len = 0;
  if (!path || !out)
    return m3__seterr(M3_EINVAL, "m3_tokenizer_load: NULL argument");
  *out = NULL;
  if ((rc = resolve_path(path, &file)) != 0)
    goto out;
  if ((rc = read_file(file, &data, &len)) != 0)
    goto out;
  rc = load_bytes(file, data, len, out);
out:
  free(data);
  free(file);
  return rc;
}

int m3_tokenizer_load_mem(const char *name, const void *data, size_t len,
                          m3_tokenizer **out) {
  if (!name || (!data && len) || !out)
    return m3__seterr(M3_EINVAL, "m3_tokenizer_load_mem: NULL argument");
  *out = NULL;
  char *copy = malloc(len + 1);
  if (!copy)
    return m3__seterr(M3_ENOMEM, "tokenizer: %s", name);
  if (len)
    memcpy(copy, data, len);
  copy[len] = '\0';
  int rc = load_bytes(name, copy, len, out);
  free(copy);
  return rc;
}

int m3_tokenizer_clone(const m3_tokenizer *tok, m3_tokenizer **out) {
  if (!tok || !out)
    return m3__seterr(M3_EINVAL, "m3_tokenizer_clone: NULL argument");
  m3_tokenizer *t = calloc(1, sizeof(*t));
  if (!t)
    return m3__seterr(M3_ENOMEM, "m3_tokenizer_clone");
  atomic_fetch_add(&tok->m->refs, 1);
  t->m = tok->m;
  *out = t;
  return 0;
}

void m3_tokenizer_free(m3_tokenizer *tok) {
  if (!tok)
    return;
  m3__tok_model_unref(tok->m);
  free(tok->s.norm);
  free(tok->s.seg);
  free(tok->s.work);
  free(tok);
}

/* ---- encode ------------------------------------------------------------- */

static inline void emit(int32_t *ids, size_t cap, size_t *n, int32_t id) {
  if (*n < cap)
    ids[*n] = id;
  (*n)++;
}

int m3_tokenizer_encode(m3_tokenizer *tok, const char *text, size_t len,
                        int add_bos, int32_t *ids, size_t cap, size_t *n) {
  int rc;
  size_t nseg = 0, count = 0;
  if (!tok || (!text && len) || (!ids && cap) || !n)
    return m3__seterr(M3_EINVAL, "m3_tokenizer_encode: NULL argument");
  const m3__tok_model *m = tok->m;
  m3__tok_scratch *s = &tok->s;
  *n = 0;
  if (len > (size_t)INT32_MAX / 8)
    return m3__seterr(M3_ERANGE, "tokenizer: text of %zu bytes is too long",
                      len);
  if (m->kind == M3_TOKENIZER_HF_BPE) {
    rc = m3__hf_encode(m, s, text, len, &nseg);
  } else {
    size_t nlen = 0;
    rc = m3__spm_normalize(m, s, text, len, &nlen);
    if (rc == 0 && nlen > 0) {
      if (m->kind == M3_TOKENIZER_SPM_BPE)
        rc = m3__spm_bpe_encode(m, s, nlen, &nseg);
      else
        rc = m3__spm_unigram_encode(m, s, nlen, &nseg);
    }
  }
  if (rc != 0)
    return rc;

  if (add_bos && m->bos >= 0)
    emit(ids, cap, &count, m->bos);
  int spm = m->kind != M3_TOKENIZER_HF_BPE, prev_unk = 0;
  for (size_t i = 0; i < nseg; i++) {
    const m3__tok_seg *g = &s->seg[i];
    int unk = spm && m->type[g->id] == M3__PIECE_UNKNOWN;
    if (unk && m->byte_fallback) {
      /* SentencePiece decomposes an unknown piece into its UTF-8 bytes */
      for (uint32_t b = 0; b < g->len; b++)
        emit(ids, cap, &count, m->byte_id[(uint8_t)s->norm[g->off + b]]);
    } else if (!(unk && prev_unk)) {
      /* without byte fallback a run of unknown pieces is one unknown */
      emit(ids, cap, &count, g->id);
    }
    prev_unk = unk;
  }
  *n = count;
  if (count > cap)
    return m3__seterr(M3_ERANGE, "tokenizer: %zu ids do not fit in %zu",
                      count, cap);
  return 0;
}

/* ---- decode ------------------------------------------------------------- */

typedef struct outbuf {
  char *buf;
  size_t cap, len;
} outbuf;

static void put(outbuf *o, const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (o->len + 1 < o->cap)
      o->buf[o->len] = p[i];
    o->len++;
  }
}

static int valid_utf8(const uint8_t *p, size_t n, size_t *mblen) {
  uint8_t c = p[0];
  uint32_t cp;
  size_t need;
  if (c < 0x80) {
    *mblen = 1;
    return 1;
  } else if ((c & 0xE0) == 0xC0) {
    need = 2;
    cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    need = 3;
    cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    need = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (n < need)
    return 0;
  for (size_t i = 1; i < need; i++) {
    if ((p[i] & 0xC0) != 0x80)
      return 0;
    cp = cp << 6 | (p[i] & 0x3F);
  }
  static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min_cp[need] || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000))
    return 0;
  *mblen = need;
  return 1;
}

static void flush_bytes(outbuf *o, const uint8_t *b, size_t n) {
  size_t i = 0;
  while (i < n) {
    size_t l;
    if (valid_utf8(b + i, n - i, &l)) {
      put(o, (const char *)b + i, l);
      i += l;
    } else {
      put(o, "\xEF\xBF\xBD", 3);
      i++;
    }
  }
}

int m3_tokenizer_decode(const m3_tokenizer *tok, const int32_t *ids, size_t n,
                        char *buf, size_t cap, size_t *len) {
  if (!tok || (!ids && n) || (!buf && cap) || !len)
    return m3__seterr(M3_EINVAL, "m3_tokenizer_decode: NULL argument");
  const m3__tok_model *m = tok->m;
  outbuf o = {buf, cap, 0};
  uint8_t bytes[64];
  size_t nbytes = 0;
  int first = 1;
  int strip = m->kind == M3_TOKENIZER_HF_BPE ? m->hf_prepend : m->add_dummy_prefix;
  for (size_t i = 0; i < n; i++) {
    int32_t id = ids[i];
    if (id < 0 || (uint32_t)id >= m->n_pieces)
      return m3__seterr(M3_ERANGE, "tokenizer: decode: id %d at %zu is outside "
                        "the vocabulary (%u)", id, i, m->n_pieces);
    int type = m->type[id];
    if (type == M3__PIECE_BYTE) {
      if (nbytes == sizeof(bytes)) {
        flush_bytes(&o, bytes, nbytes);
        nbytes = 0;
      }
      bytes[nbytes++] = (uint8_t)(m3__tok_hexval(m->piece[id][3]) * 16 +
                                  m3__tok_hexval(m->piece[id][4]));
      first = 0;
      continue;
    }
    flush_bytes(&o, bytes, nbytes);
    nbytes = 0;
    if (type == M3__PIECE_CONTROL)
      continue;
    if (type == M3__PIECE_UNKNOWN) {
      put(&o, " \xE2\x81\x87 ", 5);
      first = 0;
      continue;
    }
    const char *p = m->piece[id];
    size_t l = m->piece_len[id];
    for (size_t j = 0; j < l;) {
      if (l - j >= 3 && memcmp(p + j, "\xE2\x96\x81", 3) == 0) {
        if (!(first && j == 0 && strip))
          put(&o, " ", 1);
        j += 3;
      } else {
        put(&o, p + j, 1);
        j++;
      }
    }
    first = 0;
  }
  flush_bytes(&o, bytes, nbytes);
  *len = o.len;
  if (cap > 0)
    buf[o.len < cap ? o.len : cap - 1] = '\0';
  if (o.len + 1 > cap)
    return m3__seterr(M3_ERANGE, "tokenizer: decoded text of %zu bytes does "
                      "not fit in %zu", o.len, cap);
  return 0;
}

/* ---- accessors ---------------------------------------------------------- */

const char *m3_tokenizer_id_to_piece(const m3_tokenizer *tok, int32_t id) {
  if (!tok || id < 0 || (uint32_t)id >= tok->m->n_pieces)
    return NULL;
  return tok->m->piece[id];
}

int32_t m3_tokenizer_piece_to_id(const m3_tokenizer *tok, const char *piece) {
  return tok ? m3__tok_model_piece_id(tok->m, piece) : -1;
}

float m3_tokenizer_score(const m3_tokenizer *tok, int32_t id) {
  if (!tok || id < 0 || (uint32_t)id >= tok->m->n_pieces)
    return 0.0f;
  return tok->m->score[id];
}

int32_t m3_tokenizer_bos_id(const m3_tokenizer *tok) { return tok->m->bos; }
int32_t m3_tokenizer_eos_id(const m3_tokenizer *tok) { return tok->m->eos; }
int32_t m3_tokenizer_unk_id(const m3_tokenizer *tok) { return tok->m->unk; }
int32_t m3_tokenizer_pad_id(const m3_tokenizer *tok) { return tok->m->pad; }

size_t m3_tokenizer_vocab_size(const m3_tokenizer *tok) {
  return tok->m->n_pieces;
}

m3_tokenizer_kind m3_tokenizer_get_kind(const m3_tokenizer *tok) {
  return tok->m->kind;
}

const char *m3_tokenizer_kind_name(m3_tokenizer_kind kind) {
  switch (kind) {
  case M3_TOKENIZER_SPM_BPE:
    return "spm-bpe";
  case M3_TOKENIZER_SPM_UNIGRAM:
    return "spm-unigram";
  case M3_TOKENIZER_HF_BPE:
    return "hf-bpe";
  }
  return "unknown";
}
