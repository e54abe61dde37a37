/* Memory shapes and layouts; see m3/spec.h. */
#include "m3/spec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "m3/error.h"

size_t m3_spec_vectors(const m3_spec *s) {
  return 2u * (size_t)s->n_layers * s->n_kv_heads * s->n_tokens;
}

size_t m3_spec_positions(const m3_spec *s) {
  return (size_t)s->n_layers * s->n_kv_heads * s->n_tokens;
}

size_t m3_layout_positions_bytes(const m3_layout *l) {
  return (m3_spec_positions(&l->spec) * 2 + 7) & ~(size_t)7;
}

size_t m3_layout_codes_bytes(const m3_layout *l) {
  return m3_spec_vectors(&l->spec) * l->code_bytes;
}

int m3_layout_equal(const m3_layout *a, const m3_layout *b) {
  return a->spec.n_layers == b->spec.n_layers && a->spec.n_kv_heads == b->spec.n_kv_heads &&
         a->spec.n_tokens == b->spec.n_tokens && a->spec.head_dim == b->spec.head_dim &&
         a->codec_kind == b->codec_kind && a->code_bytes == b->code_bytes &&
         a->codec_fp == b->codec_fp && a->emb_dim == b->emb_dim;
}

int m3_layout_check(const m3_layout *l) {
  const m3_spec *s = &l->spec;
  if (s->n_layers == 0) return m3__seterr(M3_EINVAL, "layout: n_layers is 0");
  if (s->n_kv_heads == 0) return m3__seterr(M3_EINVAL, "layout: n_kv_heads is 0");
  if (s->n_tokens == 0) return m3__seterr(M3_EINVAL, "layout: n_tokens is 0");
  if (s->head_dim == 0) return m3__seterr(M3_EINVAL, "layout: head_dim is 0");
  if (l->code_bytes == 0) return m3__seterr(M3_EINVAL, "layout: code_bytes is 0");
  size_t want = 0;
  switch (l->codec_kind) {
  case M3_CODEC_RAW_F32: want = 4u * s->head_dim; break;
  case M3_CODEC_RAW_F16:
  case M3_CODEC_RAW_BF16: want = 2u * s->head_dim; break;
  case M3_CODEC_FAISS:
  case M3_CODEC_SYNTHETIC: break;
  default:
    return m3__seterr(M3_EINVAL, "layout: unknown codec kind %u", l->codec_kind);
  }
  if (want && l->code_bytes != want)
    return m3__seterr(M3_EINVAL, "layout: codec %s needs code_bytes %zu, not %u",
                      m3_codec_kind_name(l->codec_kind), want, l->code_bytes);
  if (m3_layout_positions_bytes(l) + m3_layout_codes_bytes(l) > (1u << 30))
    return m3__seterr(M3_EINVAL, "layout: one memory would exceed 1 GiB");
  return 0;
}

int m3_spec_parse(const char *str, m3_spec *out) {
  if (!strcmp(str, "memory3")) {
    *out = M3_SPEC_MEMORY3;
    return 0;
  }
  unsigned long v[4];
  const char *p = str;
  for (int i = 0; i < 4; i++) {
    char *end;
    v[i] = strtoul(p, &end, 10);
    if (end == p || v[i] == 0 || v[i] > 65535)
      return m3__seterr(M3_EINVAL, "shape '%s': expected 'memory3' or LAYERSxHEADSxTOKENSxDIM, e.g. 22x8x8x80", str);
    p = end;
    if (i < 3) {
      if (*p != 'x')
        return m3__seterr(M3_EINVAL, "shape '%s': expected 'x' after field %d", str, i + 1);
      p++;
    }
  }
  if (*p != '\0')
    return m3__seterr(M3_EINVAL, "shape '%s': trailing characters '%s'", str, p);
  *out = (m3_spec){(uint16_t)v[0], (uint16_t)v[1], (uint16_t)v[2], (uint16_t)v[3]};
  return 0;
}

char *m3_spec_format(const m3_spec *s, char *buf, size_t cap) {
  snprintf(buf, cap, "%ux%ux%ux%u", s->n_layers, s->n_kv_heads, s->n_tokens, s->head_dim);
  return buf;
}

const char *m3_codec_kind_name(int kind) {
  switch (kind) {
  case M3_CODEC_NONE: return "none";
  case M3_CODEC_RAW_F32: return "raw-f32";
  case M3_CODEC_RAW_F16: return "raw-f16";
  case M3_CODEC_RAW_BF16: return "raw-bf16";
  case M3_CODEC_FAISS: return "faiss";
  case M3_CODEC_SYNTHETIC: return "synthetic";
  }
  return "unknown";
}
