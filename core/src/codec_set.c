/*
 * Codec set files: building, parsing with full validation, saving, the
 * fingerprint, and the accessors of m3/codec.h. No FAISS here: inference
 * workers open codec sets and decode with m3core alone. A set keeps its file
 * bytes; decode tables and the FAISS index bytes are used in place.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "codec_internal.h"
#include "m3_endian.h"
#include "m3/crc32c.h"
#include "m3/error.h"
#include "m3/internal/fsutil.h"

static size_t pad8(size_t n) { return (n + 7) & ~(size_t)7; }

/* ---- fingerprint ---------------------------------------------------------- */

static uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

/* Each step maps h bijectively for a fixed word and is injective in the word
 * for a fixed h, so a change of any one word (byte) always changes the result. */
uint64_t m3__fp_update(uint64_t h, const void *data, size_t len) {
  const uint8_t *p = data;
  for (; len >= 8; p += 8, len -= 8)
    h = rotl64(h ^ m3__ld64(p), 31) * 0x9e3779b97f4a7c15ull;
  if (len) {
    uint64_t w = 0;
    for (size_t k = 0; k < len; k++)
      w |= (uint64_t)p[k] << (8 * k);
    h = rotl64(h ^ w, 31) * 0x9e3779b97f4a7c15ull;
  }
  return h;
}

uint64_t m3__fp_final(uint64_t h, uint64_t total_len) {
  h ^= total_len * 0xbf58476d1ce4e5b9ull;
  /* splitmix64 finalizer: a bijection */
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h ? h : 1; /* 0 means "no codec" elsewhere */
}

int m3_codec_fingerprint(const void *buf, size_t len, uint64_t *fp) {
  const uint8_t *b = buf;
  if (len < M3_CODEC_HEADER_SIZE)
    return m3__seterr(M3_EBADFORMAT, "codec set: %zu bytes, shorter than the %d-byte header",
                      len, M3_CODEC_HEADER_SIZE);
  uint64_t body = m3__ld64(b + 32);
  if (body > len - M3_CODEC_HEADER_SIZE)
    return m3__seterr(M3_EBADFORMAT, "codec set: body_bytes %llu but only %zu bytes follow the header",
                      (unsigned long long)body, len - M3_CODEC_HEADER_SIZE);
  uint64_t h = m3__fp_update(M3__FP_INIT, b + 8, 16);
  h = m3__fp_update(h, b + M3_CODEC_HEADER_SIZE, (size_t)body);
  *fp = m3__fp_final(h, 16 + body);
  return 0;
}

/* ---- parsing ---------------------------------------------------------------- */

static int kind_ok(int kind) {
  return kind == M3_CODEC_RAW_F32 || kind == M3_CODEC_RAW_F16 || kind == M3_CODEC_RAW_BF16 ||
         kind == M3_CODEC_FAISS;
}

static unsigned raw_code_bytes(int kind, unsigned dim) {
  return kind == M3_CODEC_RAW_F32 ? 4 * dim : 2 * dim;
}

static const char *kv_name(uint32_t i) { return (i & 1) ? "V" : "K"; }

void m3_codec_set_close(m3_codec_set *cs) {
  if (!cs)
    return;
  if (cs->codecs && cs->faiss_free)
    for (uint32_t i = 0; i < cs->n_codecs; i++)
      if (cs->codecs[i].faiss_index)
        cs->faiss_free(cs->codecs[i].faiss_index);
  if (cs->codecs && cs->gemm_free)
    for (uint32_t i = 0; i < cs->n_codecs; i++)
      if (cs->codecs[i].gemm)
        cs->gemm_free(cs->codecs[i].gemm);
  pthread_mutex_destroy(&cs->lock);
  free(cs->no_tables);
  free(cs->strings);
  free(cs->codecs);
  free(cs->buf);
  free(cs->name);
  free(cs);
}

/* Parse one entry at body offset off; fills *c and the entry's size. */
static int parse_entry(m3_codec_set *cs, uint32_t i, size_t off, size_t *size, char **strp) {
  const char *nm = cs->name;
  const uint8_t *body = cs->buf + M3_CODEC_HEADER_SIZE;
  size_t body_len = cs->len - M3_CODEC_HEADER_SIZE;
  m3__codec *c = &cs->codecs[i];
  const uint8_t *e = body + off;
#define EBAD(...)                                                                   \
  m3__seterr(M3_EBADFORMAT, "codec set %s: entry %u (%s) at body offset %zu: " __VA_ARGS__)
  if (body_len - off < M3_CODEC_ENTRY_HEADER_SIZE)
    return EBAD("truncated: %zu bytes left, an entry header takes %d", nm, i, kv_name(i), off,
                body_len - off, M3_CODEC_ENTRY_HEADER_SIZE);
  if (memcmp(e, M3_CODEC_ENTRY_MAGIC, 4) != 0)
    return EBAD("field 'magic' is not \"M3CE\"", nm, i, kv_name(i), off);
  c->kind = m3__ld16(e + 4);
  c->dim = m3__ld16(e + 6);
  c->code_bytes = m3__ld16(e + 8);
  c->flags = m3__ld16(e + 10);
  c->n_fields = m3__ld32(e + 12);
  uint32_t factory_len = m3__ld32(e + 16);
  c->table_rows = m3__ld32(e + 20);
  uint64_t faiss_bytes = m3__ld64(e + 24);
  uint64_t u = m3__ld64(e + 32);
  memcpy(&c->check_abs, &u, 8);
  uint64_t entry_bytes = m3__ld64(e + 40);
  if (c->kind != cs->kind)
    return EBAD("field 'kind' is %d, the set's kind is %d", nm, i, kv_name(i), off, c->kind,
                cs->kind);
  if (c->dim != cs->head_dim)
    return EBAD("field 'dim' is %u, the set's head_dim is %u", nm, i, kv_name(i), off, c->dim,
                cs->head_dim);
  if (c->code_bytes != cs->code_bytes)
    return EBAD("field 'code_bytes' is %u, the set's code_bytes is %u", nm, i, kv_name(i), off,
                c->code_bytes, cs->code_bytes);
  if (c->flags & ~M3_CODEC_HAS_TABLES)
    return EBAD("field 'flags' has unknown bits 0x%x", nm, i, kv_name(i), off, c->flags);
  int tables = (c->flags & M3_CODEC_HAS_TABLES) != 0;
  if (c->kind != M3_CODEC_FAISS) {
    if (factory_len || faiss_bytes || c->n_fields || c->table_rows || tables)
      return EBAD("raw codec with non-zero field '%s'", nm, i, kv_name(i), off,
                  factory_len ? "factory_len" : faiss_bytes ? "faiss_bytes"
                  : c->n_fields ? "n_fields" : c->table_rows ? "table_rows" : "flags");
  } else {
    if (factory_len == 0 || factory_len > 4096)
      return EBAD("field 'factory_len' is %u (1..4096)", nm, i, kv_name(i), off, factory_len);
    if (faiss_bytes == 0)
      return EBAD("field 'faiss_bytes' is 0: a faiss codec needs its index", nm, i,
                  kv_name(i), off);
    if (tables && (c->n_fields == 0 || c->n_fields > M3_CODEC_MAX_FIELDS))
      return EBAD("field 'n_fields' is %u (1..%d)", nm, i, kv_name(i), off, c->n_fields,
                  M3_CODEC_MAX_FIELDS);
    if (!tables && (c->n_fields || c->table_rows))
      return EBAD("field '%s' is non-zero without tables", nm, i, kv_name(i), off,
                  c->n_fields ? "n_fields" : "table_rows");
    if (tables && ((size_t)c->table_rows + 1) * c->dim > M3_CODEC_MAX_TABLE_FLOATS)
      return EBAD("field 'table_rows' is %u: tables over the %zu-float limit", nm, i,
                  kv_name(i), off, c->table_rows, M3_CODEC_MAX_TABLE_FLOATS);
  }
  if (faiss_bytes > body_len)
    return EBAD("field 'faiss_bytes' is %llu, larger than the body", nm, i, kv_name(i), off,
                (unsigned long long)faiss_bytes);
  size_t want = M3_CODEC_ENTRY_HEADER_SIZE + pad8(factory_len) + 16 * (size_t)c->n_fields;
  size_t fields_off = M3_CODEC_ENTRY_HEADER_SIZE + pad8(factory_len);
  size_t tables_off = want;
  if (tables)
    want += pad8(4 * (size_t)c->dim * ((size_t)c->table_rows + 1));
  size_t faiss_off = want;
  want += pad8((size_t)faiss_bytes);
  if (entry_bytes != want)
    return EBAD("field 'entry_bytes' is %llu, its fields make %zu", nm, i, kv_name(i), off,
                (unsigned long long)entry_bytes, want);
  if (want > body_len - off)
    return EBAD("truncated: entry_bytes %zu, %zu bytes left in the body", nm, i, kv_name(i),
                off, want, body_len - off);
  /* factory string */
  const char *fs = (const char *)e + M3_CODEC_ENTRY_HEADER_SIZE;
  for (uint32_t k = 0; k < factory_len; k++)
    if (fs[k] < 0x20 || fs[k] > 0x7e)
      return EBAD("field 'factory' has a non-printable byte at %u", nm, i, kv_name(i), off, k);
  memcpy(*strp, fs, factory_len);
  (*strp)[factory_len] = '\0';
  c->factory = *strp;
  *strp += factory_len + 1;
  /* fields */
  c->fields = (const m3__codec_field *)(e + fields_off);
  uint32_t row = 0, end = 0;
  for (uint32_t f = 0; f < c->n_fields; f++) {
    const uint8_t *fp = e + fields_off + 16 * (size_t)f;
    uint32_t bit_off = m3__ld32(fp), nbits = m3__ld32(fp + 4), count = m3__ld32(fp + 8),
             row0 = m3__ld32(fp + 12);
    if (nbits < 1 || nbits > M3_CODEC_MAX_FIELD_BITS)
      return EBAD("field %u: 'nbits' is %u (1..%d)", nm, i, kv_name(i), off, f, nbits,
                  M3_CODEC_MAX_FIELD_BITS);
    if (count < 1 || count > (1u << nbits))
      return EBAD("field %u: 'count' is %u (1..2^%u)", nm, i, kv_name(i), off, f, count, nbits);
    if (bit_off < end || (uint64_t)bit_off + nbits > 8u * (uint64_t)c->code_bytes)
      return EBAD("field %u: 'bit_off' %u with %u bits overlaps a field or leaves the %u-byte code",
                  nm, i, kv_name(i), off, f, bit_off, nbits, c->code_bytes);
    if (row0 != row)
      return EBAD("field %u: 'row0' is %u, the counts before it sum to %u", nm, i, kv_name(i),
                  off, f, row0, row);
    end = bit_off + nbits;
    row += count;
  }
  if (tables && row != c->table_rows)
    return EBAD("field 'table_rows' is %u, the fields' counts sum to %u", nm, i, kv_name(i), off,
                c->table_rows, row);
  if (!tables)
    c->fields = NULL;
  c->bias = tables ? (const float *)(e + tables_off) : NULL;
  c->tables = tables ? c->bias + c->dim : NULL;
  c->faiss = faiss_bytes ? e + faiss_off : NULL;
  c->faiss_bytes = (size_t)faiss_bytes;
  *size = want;
  return 0;
#undef EBAD
}

/* Parse len bytes at buf (malloc'd; ownership passes to this function). */
static int parse_owned(uint8_t *buf, size_t len, const char *name, m3_codec_set **out) {
  int rc = 0;
  m3_codec_set *cs = calloc(1, sizeof *cs);
  if (!cs) {
    free(buf);
    return m3__seterr(M3_ENOMEM, "codec set %s: out of memory", name);
  }
  pthread_mutex_init(&cs->lock, NULL);
  cs->buf = buf;
  cs->len = len;
  cs->name = strdup(name);
  if (!cs->name) {
    rc = m3__seterr(M3_ENOMEM, "codec set %s: out of memory", name);
    goto out;
  }
  const char *nm = cs->name;
  if (len < M3_CODEC_HEADER_SIZE) {
    rc = m3__seterr(M3_EBADFORMAT, "codec set %s: %zu bytes, shorter than the %d-byte header",
                    nm, len, M3_CODEC_HEADER_SIZE);
    goto out;
  }
  if (memcmp(buf, M3_CODEC_FILE_MAGIC, 8) != 0) {
    rc = m3__seterr(M3_EBADFORMAT, "codec set %s: header field 'magic' is not \"M3CODECS\"", nm);
    goto out;
  }
  unsigned version = m3__ld16(buf + 8);
  if (version != M3_CODEC_FILE_VERSION) {
    rc = m3__seterr(M3_EVERSION, "codec set %s: header field 'version' is %u, this build reads %d",
                    nm, version, M3_CODEC_FILE_VERSION);
    goto out;
  }
  uint32_t hcrc = m3_crc32c(0, buf, 60);
  if (hcrc != m3__ld32(buf + 60)) {
    rc = m3__seterr(M3_ECORRUPT, "codec set %s: header field 'header_crc' is 0x%08x, header bytes give 0x%08x",
                    nm, m3__ld32(buf + 60), hcrc);
    goto out;
  }
  unsigned flags = m3__ld16(buf + 10);
  cs->kind = m3__ld16(buf + 12);
  cs->head_dim = m3__ld16(buf + 14);
  cs->code_bytes = m3__ld16(buf + 16);
  cs->n_layers = m3__ld16(buf + 18);
  cs->n_codecs = m3__ld32(buf + 20);
  cs->fp = m3__ld64(buf + 24);
  uint64_t body_bytes = m3__ld64(buf + 32);
  if (flags) {
    rc = m3__seterr(M3_EBADFORMAT, "codec set %s: header field 'flags' is 0x%x, must be 0", nm, flags);
    goto out;
  }
  if (!kind_ok(cs->kind)) {
    rc = m3__seterr(M3_EBADFORMAT, "codec set %s: header field 'kind' is %d, not a codec kind", nm,
                    cs->kind);
    goto out;
  }
  if (cs->head_dim < 1 || cs->head_dim > M3_CODEC_MAX_DIM) {
    rc = m3__seterr(M3_EBADFORMAT, "codec set %s: header field 'head_dim' is %u (1..%d)", nm,
                    cs->head_dim, M3_CODEC_MAX_DIM);
    goto out;
  }
  if (cs->code_bytes == 0 || (cs->kind != M3_CODEC_FAISS &&
                              cs->code_bytes != raw_code_bytes(cs->kind, cs->head_dim))) {
    rc = m3__seterr(M3_EBADFORMAT, "codec set %s: header field 'code_bytes' is %u, wrong for %s with head_dim %u",
                    nm, cs->code_bytes, m3_codec_kind_name(cs->kind), cs->head_dim);
    goto out;
  }
  uint32_t want_codecs = cs->n_layers ? 2u * cs->n_layers : 2u;
  if (cs->n_codecs != want_codecs) {
    rc = m3__seterr(M3_EBADFORMAT, "codec set %s: header field 'n_codecs' is %u, n_layers %u needs %u",
                    nm, cs->n_codecs, cs->n_layers, want_codecs);
    goto out;
  }
  if (body_bytes != len - M3_CODEC_HEADER_SIZE) {
    rc = m3__seterr(M3_EBADFORMAT, "codec set %s: header field 'body_bytes' is %llu, the file has %zu after the header",
                    nm, (unsigned long long)body_bytes, len - M3_CODEC_HEADER_SIZE);
    goto out;
  }
  uint32_t bcrc = m3_crc32c(0, buf + M3_CODEC_HEADER_SIZE, (size_t)body_bytes);
  if (bcrc != m3__ld32(buf + 40)) {
    rc = m3__seterr(M3_ECORRUPT, "codec set %s: header field 'body_crc' is 0x%08x, the body gives 0x%08x",
                    nm, m3__ld32(buf + 40), bcrc);
    goto out;
  }
  uint64_t fp;
  if ((rc = m3_codec_fingerprint(buf, len, &fp)) != 0)
    goto out;
  if (fp != cs->fp) {
    rc = m3__seterr(M3_ECORRUPT, "codec set %s: header field 'fingerprint' is 0x%016llx, the content hashes to 0x%016llx",
                    nm, (unsigned long long)cs->fp, (unsigned long long)fp);
    goto out;
  }
  cs->codecs = calloc(cs->n_codecs, sizeof *cs->codecs);
  cs->strings = malloc(body_bytes + cs->n_codecs);
  cs->no_tables = calloc(cs->n_codecs, M3__NO_TABLES_CAP);
  if (!cs->codecs || !cs->strings || !cs->no_tables) {
    rc = m3__seterr(M3_ENOMEM, "codec set %s: out of memory", nm);
    goto out;
  }
  char *strp = cs->strings;
  size_t off = 0;
  for (uint32_t i = 0; i < cs->n_codecs; i++) {
    size_t size = 0;
    if ((rc = parse_entry(cs, i, off, &size, &strp)) != 0)
      goto out;
    if (cs->kind == M3_CODEC_FAISS && !(cs->codecs[i].flags & M3_CODEC_HAS_TABLES))
      snprintf(cs->no_tables + (size_t)i * M3__NO_TABLES_CAP, M3__NO_TABLES_CAP,
               "the codec set file has no decode tables for this codec");
    off += size;
  }
  if (off != body_bytes) {
    rc = m3__seterr(M3_EBADFORMAT, "codec set %s: %llu bytes after the last entry (body_bytes %llu)",
                    nm, (unsigned long long)(body_bytes - off), (unsigned long long)body_bytes);
    goto out;
  }
out:
  if (rc) {
    m3_codec_set_close(cs);
    cs = NULL;
  }
  *out = cs;
  return rc;
}

int m3_codec_set_load(const void *buf, size_t len, const char *name, m3_codec_set **out) {
  *out = NULL;
  uint8_t *copy = malloc(len ? len : 1);
  if (!copy)
    return m3__seterr(M3_ENOMEM, "codec set %s: out of memory for %zu bytes",
                      name ? name : "<memory>", len);
  memcpy(copy, buf, len);
  return parse_owned(copy, len, name ? name : "<memory>", out);
}

int m3_codec_set_open(const char *path, m3_codec_set **out) {
  int rc = 0, fd = -1;
  uint8_t *buf = NULL;
  *out = NULL;
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    rc = m3__syserr(errno, "codec set %s: open", path);
    goto out;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    rc = m3__syserr(errno, "codec set %s: fstat", path);
    goto out;
  }
  size_t len = (size_t)st.st_size;
  buf = malloc(len ? len : 1);
  if (!buf) {
    rc = m3__seterr(M3_ENOMEM, "codec set %s: out of memory for %zu bytes", path, len);
    goto out;
  }
  for (size_t got = 0; got < len;) {
    ssize_t r = pread(fd, buf + got, len - got, (off_t)got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      rc = m3__syserr(errno, "codec set %s: read at offset %zu", path, got);
      goto out;
    }
    if (r == 0) {
      rc = m3__seterr(M3_EIO, "codec set %s: file shrank to %zu bytes while reading", path, got);
      goto out;
    }
    got += (size_t)r;
  }
  rc = parse_owned(buf, len, path, out);
  buf = NULL; /* owned by parse_owned */
out:
  free(buf);
  if (fd >= 0)
    close(fd);
  return rc;
}

int m3_codec_set_save(const m3_codec_set *cs, const char *path) {
  return m3__fs_replace(path, cs->buf, cs->len);
}

/* ---- building ----------------------------------------------------------------- */

int m3__codec_set_build(uint16_t n_layers, const m3__codec_in *in, uint32_t n, const char *name,
                        m3_codec_set **out) {
  *out = NULL;
  size_t body = 0;
  for (uint32_t i = 0; i < n; i++) {
    size_t flen = in[i].factory ? strlen(in[i].factory) : 0;
    size_t rows = 0;
    for (uint32_t f = 0; f < in[i].n_fields; f++)
      rows += in[i].fields[f].count;
    body += M3_CODEC_ENTRY_HEADER_SIZE + pad8(flen) + 16 * (size_t)in[i].n_fields +
            (in[i].n_fields ? pad8(4 * (size_t)in[i].dim * (rows + 1)) : 0) +
            pad8(in[i].faiss_bytes);
  }
  size_t len = M3_CODEC_HEADER_SIZE + body;
  uint8_t *buf = calloc(1, len);
  if (!buf)
    return m3__seterr(M3_ENOMEM, "codec set %s: out of memory for %zu bytes", name, len);
  memcpy(buf, M3_CODEC_FILE_MAGIC, 8);
  m3__st16(buf + 8, M3_CODEC_FILE_VERSION);
  m3__st16(buf + 12, (uint16_t)in[0].kind);
  m3__st16(buf + 14, in[0].dim);
  m3__st16(buf + 16, in[0].code_bytes);
  m3__st16(buf + 18, n_layers);
  m3__st32(buf + 20, n);
  m3__st64(buf + 32, body);
  uint8_t *e = buf + M3_CODEC_HEADER_SIZE;
  for (uint32_t i = 0; i < n; i++) {
    const m3__codec_in *c = &in[i];
    size_t flen = c->factory ? strlen(c->factory) : 0;
    uint32_t rows = 0;
    for (uint32_t f = 0; f < c->n_fields; f++)
      rows += c->fields[f].count;
    size_t tbytes = c->n_fields ? pad8(4 * (size_t)c->dim * ((size_t)rows + 1)) : 0;
    size_t size = M3_CODEC_ENTRY_HEADER_SIZE + pad8(flen) + 16 * (size_t)c->n_fields + tbytes +
                  pad8(c->faiss_bytes);
    memcpy(e, M3_CODEC_ENTRY_MAGIC, 4);
    m3__st16(e + 4, (uint16_t)c->kind);
    m3__st16(e + 6, c->dim);
    m3__st16(e + 8, c->code_bytes);
    m3__st16(e + 10, c->n_fields ? M3_CODEC_HAS_TABLES : 0);
    m3__st32(e + 12, c->n_fields);
    m3__st32(e + 16, (uint32_t)flen);
    m3__st32(e + 20, rows);
    m3__st64(e + 24, c->faiss_bytes);
    uint64_t u;
    memcpy(&u, &c->check_abs, 8);
    m3__st64(e + 32, u);
    m3__st64(e + 40, size);
    uint8_t *p = e + M3_CODEC_ENTRY_HEADER_SIZE;
    if (flen)
      memcpy(p, c->factory, flen);
    p += pad8(flen);
    for (uint32_t f = 0; f < c->n_fields; f++, p += 16) {
      m3__st32(p, c->fields[f].bit_off);
      m3__st32(p + 4, c->fields[f].nbits);
      m3__st32(p + 8, c->fields[f].count);
      m3__st32(p + 12, c->fields[f].row0);
    }
    if (c->n_fields) {
      memcpy(p, c->bias, 4 * (size_t)c->dim);
      memcpy(p + 4 * (size_t)c->dim, c->tables, 4 * (size_t)c->dim * rows);
      p += tbytes;
    }
    if (c->faiss_bytes)
      memcpy(p, c->faiss, c->faiss_bytes);
    e += size;
  }
  m3__st32(buf + 40, m3_crc32c(0, buf + M3_CODEC_HEADER_SIZE, body));
  uint64_t fp;
  m3_codec_fingerprint(buf, len, &fp);
  m3__st64(buf + 24, fp);
  m3__st32(buf + 60, m3_crc32c(0, buf, 60));
  return parse_owned(buf, len, name, out);
}

int m3_codec_set_create_raw(int kind, uint16_t head_dim, m3_codec_set **out) {
  *out = NULL;
  if (kind != M3_CODEC_RAW_F32 && kind != M3_CODEC_RAW_F16 && kind != M3_CODEC_RAW_BF16)
    return m3__seterr(M3_EINVAL, "codec set: kind %d (%s) is not a raw kind", kind,
                      m3_codec_kind_name(kind));
  if (head_dim < 1 || head_dim > M3_CODEC_MAX_DIM)
    return m3__seterr(M3_EINVAL, "codec set: head_dim %u out of range 1..%d", head_dim,
                      M3_CODEC_MAX_DIM);
  m3__codec_in in[2];
  memset(in, 0, sizeof in);
  for (int i = 0; i < 2; i++) {
    in[i].kind = kind;
    in[i].dim = head_dim;
    in[i].code_bytes = (uint16_t)raw_code_bytes(kind, head_dim);
  }
  return m3__codec_set_build(0, in, 2, "<memory>", out);
}

/* ---- accessors -------------------------------------------------------------------- */

void m3_codec_set_bytes(const m3_codec_set *cs, const void **buf, size_t *len) {
  *buf = cs->buf;
  *len = cs->len;
}

uint64_t m3_codec_set_fingerprint(const m3_codec_set *cs) { return cs->fp; }
int m3_codec_set_kind(const m3_codec_set *cs) { return cs->kind; }
uint16_t m3_codec_set_head_dim(const m3_codec_set *cs) { return cs->head_dim; }
uint16_t m3_codec_set_code_bytes(const m3_codec_set *cs) { return cs->code_bytes; }
uint16_t m3_codec_set_n_layers(const m3_codec_set *cs) { return cs->n_layers; }
const char *m3_codec_set_name(const m3_codec_set *cs) { return cs->name; }

int m3__codec_index(const m3_codec_set *cs, unsigned layer, int kv) {
  if (kv != M3_KV_K && kv != M3_KV_V)
    return -1;
  if (!cs->n_layers)
    return kv;
  if (layer >= cs->n_layers)
    return -1;
  return (int)(2 * layer) + kv;
}

void m3__codec_set_no_tables(m3_codec_set *cs, uint32_t i, const char *why) {
  snprintf(cs->no_tables + (size_t)i * M3__NO_TABLES_CAP, M3__NO_TABLES_CAP, "%s", why);
}

m3__dcodec m3__codec_dview(const m3__codec *c) {
  m3__dcodec d;
  d.kind = (uint32_t)c->kind;
  d.dim = c->dim;
  d.code_bytes = c->code_bytes;
  d.n_fields = c->n_fields;
  d.table_rows = c->table_rows;
  d.fields = c->fields;
  d.bias = c->bias;
  d.tables = c->tables;
  return d;
}

int m3_codec_set_info(const m3_codec_set *cs, unsigned layer, int kv, m3_codec_info *out) {
  int i = m3__codec_index(cs, layer, kv);
  if (i < 0)
    return m3__seterr(M3_EINVAL, "codec set %s: no codec for layer %u %s", cs->name, layer,
                      kv == M3_KV_K ? "K" : kv == M3_KV_V ? "V" : "(bad kv)");
  const m3__codec *c = &cs->codecs[i];
  out->kind = c->kind;
  out->dim = c->dim;
  out->code_bytes = c->code_bytes;
  out->factory = c->factory;
  out->has_tables = (c->flags & M3_CODEC_HAS_TABLES) != 0;
  out->n_fields = c->n_fields;
  out->table_rows = c->table_rows;
  out->faiss_bytes = c->faiss_bytes;
  out->check_abs = c->check_abs;
  out->no_tables = cs->no_tables + (size_t)i * M3__NO_TABLES_CAP;
  return 0;
}

int m3_codec_set_layout(const m3_codec_set *cs, const m3_spec *spec, m3_layout *out) {
  if (spec->head_dim != cs->head_dim)
    return m3__seterr(M3_ESHAPE, "codec set %s codes %u-dim vectors, the memory shape has head_dim %u",
                      cs->name, cs->head_dim, spec->head_dim);
  if (cs->n_layers && spec->n_layers != cs->n_layers)
    return m3__seterr(M3_ESHAPE, "codec set %s has codecs for %u layers, the memory shape has %u",
                      cs->name, cs->n_layers, spec->n_layers);
  out->spec = *spec;
  out->codec_kind = (uint16_t)cs->kind;
  out->code_bytes = cs->code_bytes;
  out->codec_fp = cs->fp;
  return 0;
}

int m3_codec_set_check_layout(const m3_codec_set *cs, const m3_layout *l) {
  if (l->codec_fp != cs->fp)
    return m3__seterr(M3_EFINGERPRINT, "codes were made by codec set 0x%016llx, codec set %s is 0x%016llx",
                      (unsigned long long)l->codec_fp, cs->name, (unsigned long long)cs->fp);
  if (l->codec_kind != cs->kind || l->code_bytes != cs->code_bytes)
    return m3__seterr(M3_EBADFORMAT, "codes are %s with %u bytes, codec set %s is %s with %u bytes",
                      m3_codec_kind_name(l->codec_kind), l->code_bytes, cs->name,
                      m3_codec_kind_name(cs->kind), cs->code_bytes);
  m3_layout tmp;
  return m3_codec_set_layout(cs, &l->spec, &tmp);
}
