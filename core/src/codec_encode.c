/*
 * Encoding (m3codec): vectors into codes, through the encoder the set chose
 * (m3_codec_set_encoder: the function table of m3__encoder, FAISS's sa_encode
 * or the GEMM encoder), or the raw conversions. m3_codec_encode batches every
 * vector that shares a codec into one call, so the GEMM encoder sees whole
 * memories (2,816 vectors each) at a time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec_gemm.h"
#include "codec_internal.h"
#include "m3_endian.h"
#include "m3/error.h"

static const char *role(int ci) { return (ci & 1) ? "V" : "K"; }

/* The encoder codec ci uses under the set's choice. */
static const m3__encoder *encoder_of(m3_codec_set *cs, int ci) {
  if (cs->encoder == M3_CODEC_ENC_FAISS)
    return &m3__enc_faiss;
  char why[M3__NO_TABLES_CAP];
  if (m3__enc_gemm.prepare(cs, ci, why, sizeof why) == 0)
    return &m3__enc_gemm;
  return &m3__enc_faiss; /* AUTO; GEMM was checked when it was chosen */
}

int m3_codec_set_encoder(m3_codec_set *cs, int which) {
  if (which != M3_CODEC_ENC_AUTO && which != M3_CODEC_ENC_FAISS && which != M3_CODEC_ENC_GEMM)
    return m3__seterr(M3_EINVAL, "codec set %s: unknown encoder %d", cs->name, which);
  if (which == M3_CODEC_ENC_GEMM && cs->kind == M3_CODEC_FAISS)
    for (uint32_t ci = 0; ci < cs->n_codecs; ci++) {
      char why[M3__NO_TABLES_CAP];
      int rc = m3__enc_gemm.prepare(cs, (int)ci, why, sizeof why);
      if (rc == M3_EUNSUPPORTED)
        return m3__seterr(rc, "codec set %s: codec %u (%s) '%s': no GEMM encoder: %s", cs->name,
                          ci, role((int)ci), cs->codecs[ci].factory, why);
      if (rc)
        return rc;
    }
  cs->encoder = which;
  return 0;
}

int m3_codec_encoder_info(m3_codec_set *cs, unsigned layer, int kv, m3_codec_enc_info *out) {
  int ci = m3__codec_index(cs, layer, kv);
  memset(out, 0, sizeof *out);
  if (ci < 0)
    return m3__seterr(M3_EINVAL, "codec set %s: no codec for layer %u kv %d", cs->name, layer, kv);
  m3__codec *c = &cs->codecs[ci];
  out->no_gemm = "";
  if (c->kind != M3_CODEC_FAISS) {
    out->encoder = "raw";
    return 0;
  }
  char why[M3__NO_TABLES_CAP];
  int rc = m3__enc_gemm.prepare(cs, ci, why, sizeof why);
  if (rc && rc != M3_EUNSUPPORTED)
    return rc;
  out->encoder = encoder_of(cs, ci)->name;
  if (rc) {
    out->no_gemm = c->gemm_why;
    return 0;
  }
  const m3__gemm *g = c->gemm;
  out->flops_per_vector = m3__gemm_flops_per_vector(g);
  m3__gemm_shape(g, &out->gemm_m, &out->gemm_n, &out->gemm_k);
  return 0;
}

static int encode_ci(m3_codec_set *cs, int ci, const float *x, size_t n, uint8_t *codes) {
  const m3__codec *c = &cs->codecs[ci];
  if (c->kind != M3_CODEC_FAISS) {
    const size_t d = c->dim;
    for (size_t i = 0; i < n * d; i++) {
      if (c->kind == M3_CODEC_RAW_F32)
        m3__st32(codes + 4 * i, m3__f32_bits(x[i]));
      else if (c->kind == M3_CODEC_RAW_F16)
        m3__st16(codes + 2 * i, m3__f32_to_f16(x[i]));
      else
        m3__st16(codes + 2 * i, m3__f32_to_bf16(x[i]));
    }
    return 0;
  }
  return encoder_of(cs, ci)->encode(cs, ci, x, n, codes);
}

int m3_codec_encode_vectors(m3_codec_set *cs, unsigned layer, int kv, const float *x, size_t n,
                            uint8_t *codes) {
  int ci = m3__codec_index(cs, layer, kv);
  if (ci < 0)
    return m3__seterr(M3_EINVAL, "codec set %s: no codec for layer %u kv %d", cs->name, layer, kv);
  return encode_ci(cs, ci, x, n, codes);
}

int m3_codec_encode(m3_codec_set *cs, const m3_spec *spec, const float *kv, size_t n_mem,
                    uint8_t *codes) {
  int rc = 0;
  float *xb = NULL;
  uint8_t *cb_buf = NULL;
  m3_layout l;
  if ((rc = m3_codec_set_layout(cs, spec, &l)) != 0)
    return rc;
  const size_t per_block = (size_t)spec->n_kv_heads * spec->n_tokens;
  const size_t dim = cs->head_dim, cb = cs->code_bytes;
  const size_t blocks = n_mem * spec->n_layers * 2;
  if (cs->kind != M3_CODEC_FAISS) { /* raw: no batching to gain */
    for (size_t b = 0; b < blocks && !rc; b++)
      rc = encode_ci(cs, m3__codec_index(cs, (unsigned)(b / 2 % spec->n_layers), (int)(b % 2)),
                     kv + b * per_block * dim, per_block, codes + b * per_block * cb);
    return rc;
  }
  /* gather every block of one codec, encode them in one call, scatter */
  size_t max_vec = per_block * n_mem * (cs->n_layers ? 1 : spec->n_layers);
  xb = malloc(max_vec * dim * sizeof(float) + 1);
  cb_buf = malloc(max_vec * cb + 1);
  if (!xb || !cb_buf) {
    rc = m3__seterr(M3_ENOMEM, "encode: out of memory for %zu vectors", max_vec);
    goto out;
  }
  for (uint32_t ci = 0; ci < cs->n_codecs; ci++) {
    size_t k = 0;
    for (size_t b = 0; b < blocks; b++)
      if (m3__codec_index(cs, (unsigned)(b / 2 % spec->n_layers), (int)(b % 2)) == (int)ci)
        memcpy(xb + (k++) * per_block * dim, kv + b * per_block * dim,
               per_block * dim * sizeof(float));
    if ((rc = encode_ci(cs, (int)ci, xb, k * per_block, cb_buf)) != 0)
      goto out;
    k = 0;
    for (size_t b = 0; b < blocks; b++)
      if (m3__codec_index(cs, (unsigned)(b / 2 % spec->n_layers), (int)(b % 2)) == (int)ci)
        memcpy(codes + b * per_block * cb, cb_buf + (k++) * per_block * cb, per_block * cb);
  }
out:
  free(cb_buf);
  free(xb);
  return rc;
}

