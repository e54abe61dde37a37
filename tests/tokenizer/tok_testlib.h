/*
 * Helpers for the tokenizer unit tests: write small SentencePiece model files
 * (built with the protobuf-c code generated for m3encoder) and text files
 * into a temporary folder.
 */
#ifndef M3_TOK_TESTLIB_H
#define M3_TOK_TESTLIB_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/m3test.h"
#include "sentencepiece_model.pb-c.h"

typedef struct tpiece {
  const char *piece;
  float score;
  int type; /* 0 = NORMAL */
} tpiece;

/* Options of a test model. */
typedef struct tmodel_opts {
  int model_type;    /* 1 unigram, 2 bpe */
  int byte_fallback; /* adds the 256 <0xNN> pieces after the given ones */
  int add_dummy_prefix, remove_extra_ws, escape_ws; /* -1 = unset (default) */
} tmodel_opts;

static char *tl_dir; /* m3t_mkdtemp'ed on first use */

static inline const char *tl_tmpdir(void) {
  if (tl_dir == NULL) tl_dir = m3t_mkdtemp("tok");
  return tl_dir;
}

static inline void tl_cleanup(void) {
  m3t_rmrf(tl_dir);
  free(tl_dir);
  tl_dir = NULL;
}

/* Write bytes to tmpdir/name; returns the path (static buffer per call
 * site is not needed: a fresh malloc the caller frees). */
static inline char *tl_write(const char *name, const void *data, size_t len) {
  char *path = malloc(512);
  snprintf(path, 512, "%s/%s", tl_tmpdir(), name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, len, f) != len)
    abort();
  fclose(f);
  return path;
}

/* Serialize a model: the special pieces <unk> <s> </s> come first (ids 0, 1,
 * 2), then pieces[], then (with byte_fallback) the 256 byte pieces. *len
 * receives the size; the buffer is malloc'd. */
static inline uint8_t *tl_pack_model(const tpiece *pieces, size_t n,
                                     const tmodel_opts *o, size_t *len) {
  size_t total = 3 + n + (o->byte_fallback ? 256 : 0);
  Sentencepiece__ModelProto mp = SENTENCEPIECE__MODEL_PROTO__INIT;
  Sentencepiece__TrainerSpec ts = SENTENCEPIECE__TRAINER_SPEC__INIT;
  Sentencepiece__NormalizerSpec ns = SENTENCEPIECE__NORMALIZER_SPEC__INIT;
  Sentencepiece__ModelProto__SentencePiece *sp = calloc(total, sizeof(*sp));
  Sentencepiece__ModelProto__SentencePiece **spp = calloc(total, sizeof(*spp));
  char (*bytes)[8] = calloc(256, 8);
  static const tpiece specials[3] = {{"<unk>", 0, 2}, {"<s>", 0, 3}, {"</s>", 0, 3}};
  for (size_t i = 0; i < total; i++) {
    sentencepiece__model_proto__sentence_piece__init(&sp[i]);
    const tpiece *t = NULL;
    tpiece bt;
    if (i < 3) {
      t = &specials[i];
    } else if (i < 3 + n) {
      t = &pieces[i - 3];
    } else {
      size_t b = i - 3 - n;
      snprintf(bytes[b], 8, "<0x%02X>", (unsigned)b);
      bt.piece = bytes[b];
      bt.score = 0;
      bt.type = 6;
      t = &bt;
    }
    sp[i].piece = (char *)t->piece;
    sp[i].has_score = 1;
    sp[i].score = t->score;
    if (t->type) {
      sp[i].has_type = 1;
      sp[i].type = t->type;
    }
    spp[i] = &sp[i];
  }
  mp.n_pieces = total;
  mp.pieces = spp;
  ts.has_model_type = 1;
  ts.model_type = o->model_type;
  ts.has_byte_fallback = 1;
  ts.byte_fallback = o->byte_fallback;
  if (o->add_dummy_prefix >= 0) {
    ns.has_add_dummy_prefix = 1;
    ns.add_dummy_prefix = o->add_dummy_prefix;
  }
  if (o->remove_extra_ws >= 0) {
    ns.has_remove_extra_whitespaces = 1;
    ns.remove_extra_whitespaces = o->remove_extra_ws;
  }
  if (o->escape_ws >= 0) {
    ns.has_escape_whitespaces = 1;
    ns.escape_whitespaces = o->escape_ws;
  }
  ns.name = (char *)"identity";
  mp.trainer_spec = &ts;
  mp.normalizer_spec = &ns;
  *len = sentencepiece__model_proto__get_packed_size(&mp);
  uint8_t *buf = malloc(*len ? *len : 1);
  sentencepiece__model_proto__pack(&mp, buf);
  free(sp);
  free(spp);
  free(bytes);
  return buf;
}

static inline char *tl_write_model(const char *name, const tpiece *pieces,
                                   size_t n, const tmodel_opts *o) {
  size_t len;
  uint8_t *buf = tl_pack_model(pieces, n, o, &len);
  char *path = tl_write(name, buf, len);
  free(buf);
  return path;
}

#endif /* M3_TOK_TESTLIB_H */
