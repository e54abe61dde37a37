/* Memory record encode and parse; the format is specified in m3/record.h. */
#include "m3/record.h"

#include <string.h>

#include "m3_endian.h"
#include "m3/crc32c.h"
#include "m3/error.h"

size_t m3_record_mem_size(const m3_layout *l) {
  return M3_RECORD_HEADER_SIZE + m3_layout_positions_bytes(l) + m3_layout_codes_bytes(l);
}

size_t m3_record_size(const m3_layout *l, size_t text_len) {
  return m3_record_mem_size(l) + text_len + 4u * l->emb_dim;
}

size_t m3_record_total_size(const m3_record *r) {
  return M3_RECORD_HEADER_SIZE + (size_t)r->mem_bytes + r->text_bytes + 4u * r->layout.emb_dim;
}

static void put_header(uint8_t *h, uint16_t flags, uint64_t chunk_id, uint32_t chunk_len,
                       const m3_layout *l, uint32_t mem_bytes, uint32_t text_bytes,
                       uint32_t mem_crc, uint32_t text_crc) {
  memcpy(h, M3_RECORD_MAGIC, 4);
  m3__st16(h + 4, M3_RECORD_VERSION);
  m3__st16(h + 6, flags);
  m3__st64(h + 8, chunk_id);
  m3__st32(h + 16, chunk_len);
  m3__st16(h + 20, l->spec.n_layers);
  m3__st16(h + 22, l->spec.n_kv_heads);
  m3__st16(h + 24, l->spec.n_tokens);
  m3__st16(h + 26, l->spec.head_dim);
  m3__st16(h + 28, l->codec_kind);
  m3__st16(h + 30, l->code_bytes);
  m3__st64(h + 32, l->codec_fp);
  m3__st32(h + 40, mem_bytes);
  m3__st32(h + 44, text_bytes);
  m3__st32(h + 48, mem_crc);
  m3__st32(h + 52, text_crc);
  m3__st16(h + 56, l->emb_dim);
  m3__st16(h + 58, 0);
  m3__st32(h + 60, m3_crc32c(0, h, 60));
}

long m3_record_encode(void *buf, size_t cap, const m3_layout *l, const m3_record_in *in) {
  int rc = m3_layout_check(l);
  if (rc) return rc;
  if (in->text_len > UINT32_MAX)
    return m3__seterr(M3_EINVAL, "record %llu: text of %zu bytes is too long",
                      (unsigned long long)in->chunk_id, in->text_len);
  size_t pos_bytes = m3_layout_positions_bytes(l);
  size_t code_bytes = m3_layout_codes_bytes(l);
  size_t npos = m3_spec_positions(&l->spec);
  size_t size = m3_record_size(l, in->text_len);
  if (cap < size)
    return m3__seterr(M3_EINVAL, "record %llu: needs %zu bytes, buffer has %zu",
                      (unsigned long long)in->chunk_id, size, cap);

  uint8_t *b = buf;
  uint8_t *pos = b + M3_RECORD_HEADER_SIZE;
  /* in->positions may point into a received frame at any alignment (a Put's
   * records): read each by bytes. */
  const uint8_t *src_pos = (const uint8_t *)in->positions;
  for (size_t i = 0; i < npos; i++) {
    uint16_t v;
    memcpy(&v, src_pos + 2 * i, 2);
    m3__st16(pos + 2 * i, v);
  }
  memset(pos + 2 * npos, 0, pos_bytes - 2 * npos);
  memcpy(pos + pos_bytes, in->codes, code_bytes);
  uint8_t *text = pos + pos_bytes + code_bytes;
  if (in->text_len) memcpy(text, in->text, in->text_len);
  uint8_t *emb = text + in->text_len;
  for (size_t i = 0; i < l->emb_dim; i++) {
    uint32_t bits = 0;
    if (in->embedding) memcpy(&bits, &in->embedding[i], 4);
    m3__st32(emb + 4 * i, bits);
  }

  uint32_t mem_bytes = (uint32_t)(pos_bytes + code_bytes);
  size_t tail = in->text_len + 4u * l->emb_dim;
  put_header(b, 0, in->chunk_id, in->chunk_len, l, mem_bytes, (uint32_t)in->text_len,
             m3_crc32c(0, pos, mem_bytes), m3_crc32c(0, text, tail));
  return (long)size;
}

long m3_record_encode_tombstone(void *buf, size_t cap, uint64_t chunk_id) {
  if (cap < M3_RECORD_HEADER_SIZE)
    return m3__seterr(M3_EINVAL, "tombstone: buffer of %zu bytes is too small", cap);
  m3_layout none = {{0, 0, 0, 0}, M3_CODEC_NONE, 0, 0, 0};
  put_header(buf, M3_RECORD_TOMBSTONE, chunk_id, 0, &none, 0, 0, 0, 0);
  return M3_RECORD_HEADER_SIZE;
}

int m3_record_parse(const void *buf, size_t len, int check, m3_record *out) {
  const uint8_t *h = buf;
  if (len < M3_RECORD_HEADER_SIZE)
    return m3__seterr(M3_EBADFORMAT, "record: %zu bytes, shorter than its 64-byte header", len);
  if (memcmp(h, M3_RECORD_MAGIC, 4) != 0)
    return m3__seterr(M3_EBADFORMAT, "record: bad magic %02x%02x%02x%02x (want \"M3MR\")",
                      h[0], h[1], h[2], h[3]);
  uint32_t hcrc = m3_crc32c(0, h, 60);
  if (hcrc != m3__ld32(h + 60))
    return m3__seterr(M3_ECORRUPT, "record: header_crc mismatch (stored %08x, computed %08x)",
                      m3__ld32(h + 60), hcrc);
  uint16_t version = m3__ld16(h + 4);
  if (version != M3_RECORD_VERSION)
    return m3__seterr(M3_EVERSION, "record: version %u (this build reads %u)", version,
                      M3_RECORD_VERSION);

  m3_record r;
  memset(&r, 0, sizeof r);
  r.flags = m3__ld16(h + 6);
  r.chunk_id = m3__ld64(h + 8);
  r.chunk_len = m3__ld32(h + 16);
  r.layout.spec.n_layers = m3__ld16(h + 20);
  r.layout.spec.n_kv_heads = m3__ld16(h + 22);
  r.layout.spec.n_tokens = m3__ld16(h + 24);
  r.layout.spec.head_dim = m3__ld16(h + 26);
  r.layout.codec_kind = m3__ld16(h + 28);
  r.layout.code_bytes = m3__ld16(h + 30);
  r.layout.codec_fp = m3__ld64(h + 32);
  r.mem_bytes = m3__ld32(h + 40);
  r.text_bytes = m3__ld32(h + 44);
  r.mem_crc = m3__ld32(h + 48);
  r.text_crc = m3__ld32(h + 52);
  r.layout.emb_dim = m3__ld16(h + 56);
  unsigned long long id = (unsigned long long)r.chunk_id;

  if (r.flags & ~M3_RECORD_TOMBSTONE)
    return m3__seterr(M3_EBADFORMAT, "record %llu: unknown flags %#x", id, r.flags);
  if (m3__ld16(h + 58) != 0)
    return m3__seterr(M3_EBADFORMAT, "record %llu: reserved field is not 0", id);
  if (r.flags & M3_RECORD_TOMBSTONE) {
    if (r.mem_bytes || r.text_bytes || r.layout.emb_dim || r.layout.codec_kind != M3_CODEC_NONE)
      return m3__seterr(M3_EBADFORMAT, "record %llu: tombstone with a payload", id);
    *out = r;
    return 0;
  }
  int rc = m3_layout_check(&r.layout);
  if (rc) return m3__seterr(M3_EBADFORMAT, "record %llu: %s", id, m3_errmsg());
  size_t pos_bytes = m3_layout_positions_bytes(&r.layout);
  size_t want = pos_bytes + m3_layout_codes_bytes(&r.layout);
  if (r.mem_bytes != want)
    return m3__seterr(M3_EBADFORMAT, "record %llu: mem_bytes %u, but shape %ux%ux%ux%u with %u-byte codes needs %zu",
                      id, r.mem_bytes, r.layout.spec.n_layers, r.layout.spec.n_kv_heads,
                      r.layout.spec.n_tokens, r.layout.spec.head_dim, r.layout.code_bytes, want);

  const uint8_t *mem = h + M3_RECORD_HEADER_SIZE;
  size_t mem_end = M3_RECORD_HEADER_SIZE + (size_t)r.mem_bytes;
  if (len >= mem_end) {
    r.positions = (const uint16_t *)mem;
    r.codes = mem + pos_bytes;
  }
  size_t tail = (size_t)r.text_bytes + 4u * r.layout.emb_dim;
  if (len >= mem_end + r.text_bytes) r.text = (const char *)h + mem_end;
  if (r.layout.emb_dim && len >= mem_end + tail) r.embedding = h + mem_end + r.text_bytes;

  if (check & M3_PARSE_MEM) {
    if (len < mem_end)
      return m3__seterr(M3_EBADFORMAT, "record %llu: truncated: %zu of %zu memory bytes", id,
                        len, mem_end);
    uint32_t c = m3_crc32c(0, mem, r.mem_bytes);
    if (c != r.mem_crc)
      return m3__seterr(M3_ECORRUPT, "record %llu: mem_crc mismatch (stored %08x, computed %08x)",
                        id, r.mem_crc, c);
  }
  if (check & M3_PARSE_TEXT) {
    if (len < mem_end + tail)
      return m3__seterr(M3_EBADFORMAT, "record %llu: truncated text/embedding: %zu of %zu bytes",
                        id, len, mem_end + tail);
    uint32_t c = m3_crc32c(0, h + mem_end, tail);
    if (c != r.text_crc)
      return m3__seterr(M3_ECORRUPT, "record %llu: text_crc mismatch (stored %08x, computed %08x)",
                        id, r.text_crc, c);
  }
  *out = r;
  return 0;
}
