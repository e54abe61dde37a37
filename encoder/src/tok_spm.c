/*
 * SentencePiece model files (tokenizer.model): a serialized
 * sentencepiece.ModelProto (encoder/proto/sentencepiece_model.proto),
 * parsed with protobuf-c and turned into an m3__tok_model the way
 * SentencePiece's ModelInterface::InitializePieces builds its maps, with the
 * same checks (empty or duplicate pieces, exactly one unknown piece, byte
 * pieces only with byte_fallback and then all 256 of them).
 */
#include <stdlib.h>
#include <string.h>

#include "m3/error.h"
#include "sentencepiece_model.pb-c.h"
#include "tok_int.h"

static int load_charsmap(m3__tok_model *m, const ProtobufCBinaryData *b) {
  if (b->len == 0)
    return 0; /* identity: no character map */
  if (b->len <= 4)
    return m3__seterr(M3_EBADFORMAT, "%s: normalizer_spec.precompiled_charsmap "
                      "is %zu bytes, too short", m->path, b->len);
  const uint8_t *p = b->data;
  uint32_t trie_bytes = (uint32_t)p[0] | (uint32_t)p[1] << 8 |
                        (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
  if (trie_bytes >= b->len || trie_bytes > b->len - 4 || trie_bytes % 4 ||
      trie_bytes == 0)
    return m3__seterr(M3_EBADFORMAT, "%s: normalizer_spec.precompiled_charsmap: "
                      "trie of %u bytes in a blob of %zu", m->path, trie_bytes,
                      b->len);
  m->cm_n_units = trie_bytes / 4;
  m->cm_units = malloc(trie_bytes);
  m->cm_norm_len = b->len - 4 - trie_bytes;
  m->cm_norm = malloc(m->cm_norm_len + 1);
  if (!m->cm_units || !m->cm_norm)
    return m3__seterr(M3_ENOMEM, "%s: charsmap", m->path);
  for (size_t i = 0; i < m->cm_n_units; i++) {
    const uint8_t *u = p + 4 + 4 * i;
    m->cm_units[i] = (uint32_t)u[0] | (uint32_t)u[1] << 8 |
                     (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
  }
  memcpy(m->cm_norm, p + 4 + trie_bytes, m->cm_norm_len);
  m->cm_norm[m->cm_norm_len] = '\0';
  return 0;
}

static const char *type_name(int t) {
  static const char *const names[] = {"?", "NORMAL", "UNKNOWN", "CONTROL",
                                      "USER_DEFINED", "UNUSED", "BYTE"};
  return t >= 1 && t <= 6 ? names[t] : "?";
}

/* The id of a special piece, as SentencePieceProcessor::bos_id() and friends
 * find it: by its piece string, and only when that piece is a control piece
 * (or the unknown one for unk). */
static int32_t special_id(const m3__tok_model *m, const char *piece,
                          const char *dflt, int want_type) {
  const char *p = piece && *piece ? piece : dflt;
  int32_t id = m3__trie_get(&m->reserved, p, strlen(p));
  if (id < 0 || m->type[id] != want_type)
    return -1;
  return id;
}

int m3__tok_load_spm(m3__tok_model *m, const uint8_t *data, size_t len) {
  int rc = 0;
  Sentencepiece__ModelProto *mp =
      sentencepiece__model_proto__unpack(NULL, len, data);
  if (!mp)
    return m3__seterr(M3_EBADFORMAT, "%s: not a SentencePiece model: the "
                      "protobuf does not parse (truncated or corrupt, %zu bytes)",
                      m->path, len);
  const Sentencepiece__TrainerSpec *ts = mp->trainer_spec;
  const Sentencepiece__NormalizerSpec *ns = mp->normalizer_spec;

  if (mp->n_pieces == 0) {
    rc = m3__seterr(M3_EBADFORMAT, "%s: SentencePiece model has no pieces "
                    "(field 1)", m->path);
    goto out;
  }
  if (mp->n_pieces > (size_t)INT32_MAX / 2) {
    rc = m3__seterr(M3_EBADFORMAT, "%s: %zu pieces", m->path, mp->n_pieces);
    goto out;
  }
  int model_type = ts && ts->has_model_type ? (int)ts->model_type : 1;
  if (model_type == SENTENCEPIECE__TRAINER_SPEC__MODEL_TYPE__BPE) {
    m->kind = M3_TOKENIZER_SPM_BPE;
  } else if (model_type == SENTENCEPIECE__TRAINER_SPEC__MODEL_TYPE__UNIGRAM) {
    m->kind = M3_TOKENIZER_SPM_UNIGRAM;
  } else {
    rc = m3__seterr(M3_EUNSUPPORTED, "%s: trainer_spec.model_type %d (%s) is "
                    "not supported: only UNIGRAM (1) and BPE (2)", m->path,
                    model_type, model_type == 3 ? "WORD" :
                    model_type == 4 ? "CHAR" : "unknown");
    goto out;
  }
  if (ts && ts->treat_whitespace_as_suffix) {
    rc = m3__seterr(M3_EUNSUPPORTED, "%s: trainer_spec."
                    "treat_whitespace_as_suffix is not supported", m->path);
    goto out;
  }
  m->byte_fallback = ts ? ts->byte_fallback : 0;
  m->add_dummy_prefix = ns ? ns->add_dummy_prefix : 1;
  m->remove_extra_ws = ns ? ns->remove_extra_whitespaces : 1;
  m->escape_ws = ns ? ns->escape_whitespaces : 1;
  if (ns && (rc = load_charsmap(m, &ns->precompiled_charsmap)) != 0)
    goto out;

  size_t pool = 0;
  for (size_t i = 0; i < mp->n_pieces; i++) {
    const char *p = mp->pieces[i]->piece;
    if (!p || !*p) {
      rc = m3__seterr(M3_EBADFORMAT, "%s: piece %zu is empty", m->path, i);
      goto out;
    }
    pool += strlen(p);
  }
  if ((rc = m3__tok_model_alloc(m, (uint32_t)mp->n_pieces, pool)) != 0)
    goto out;

  size_t off = 0;
  m->min_score = 3.402823466e+38F;  /* FLT_MAX, as unigram_model.cc */
  m->max_score = 1.175494351e-38F;  /* FLT_MIN (sic) */
  for (size_t i = 0; i < mp->n_pieces; i++) {
    const Sentencepiece__ModelProto__SentencePiece *sp = mp->pieces[i];
    int type = sp->has_type ? (int)sp->type : M3__PIECE_NORMAL;
    if (type < M3__PIECE_NORMAL || type > M3__PIECE_BYTE) {
      rc = m3__seterr(M3_EBADFORMAT, "%s: piece %zu ('%s') has unknown type %d",
                      m->path, i, sp->piece, type);
      goto out;
    }
    size_t l = strlen(sp->piece);
    m3__tok_model_set(m, (uint32_t)i, sp->piece, l, sp->score, type, &off);
    int normal = type == M3__PIECE_NORMAL || type == M3__PIECE_USER ||
                 type == M3__PIECE_UNUSED;
    int32_t prev = -1;
    if ((rc = m3__trie_insert(normal ? &m->pieces : &m->reserved, sp->piece, l,
                              (int32_t)i, &prev)) != 0)
      goto out;
    if (prev >= 0) {
      rc = m3__seterr(M3_EBADFORMAT, "%s: piece '%s' is defined twice (ids %d "
                      "and %zu)", m->path, sp->piece, prev, i);
      goto out;
    }
    if (type == M3__PIECE_USER) {
      if ((rc = m3__trie_insert(&m->user, sp->piece, l, (int32_t)i, NULL)) != 0)
        goto out;
      m->has_user = 1;
    }
    if (type == M3__PIECE_UNUSED)
      m->has_unused = 1;
    if (type == M3__PIECE_UNKNOWN) {
      if (m->unk >= 0) {
        rc = m3__seterr(M3_EBADFORMAT, "%s: two unknown pieces (ids %d and %zu)",
                        m->path, m->unk, i);
        goto out;
      }
      m->unk = (int32_t)i;
    }
    if (type == M3__PIECE_BYTE && !m->byte_fallback) {
      rc = m3__seterr(M3_EBADFORMAT, "%s: byte piece '%s' (id %zu) although "
                      "trainer_spec.byte_fallback is false", m->path, sp->piece, i);
      goto out;
    }
    if (type == M3__PIECE_NORMAL) {
      if (sp->score < m->min_score)
        m->min_score = sp->score;
      if (sp->score > m->max_score)
        m->max_score = sp->score;
    }
  }
  if (m->unk < 0) {
    rc = m3__seterr(M3_EBADFORMAT, "%s: no piece of type UNKNOWN", m->path);
    goto out;
  }
  m3__tok_model_find_bytes(m, 0);
  if (m->byte_fallback) {
    for (int b = 0; b < 256; b++) {
      if (m->byte_id[b] < 0) {
        rc = m3__seterr(M3_EBADFORMAT, "%s: byte_fallback is set but byte piece "
                        "<0x%02X> is missing (%s pieces must cover all 256 bytes)",
                        m->path, b, type_name(M3__PIECE_BYTE));
        goto out;
      }
    }
  }
  m->bos = special_id(m, ts ? ts->bos_piece : NULL, "<s>", M3__PIECE_CONTROL);
  m->eos = special_id(m, ts ? ts->eos_piece : NULL, "</s>", M3__PIECE_CONTROL);
  m->pad = special_id(m, ts ? ts->pad_piece : NULL, "<pad>", M3__PIECE_CONTROL);
out:
  sentencepiece__model_proto__free_unpacked(mp, NULL);
  return rc;
}
