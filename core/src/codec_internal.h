/*
 * Inside the codec layer: the in-memory codec set, shared by the m3core part
 * (codec_set.c: files and fingerprints; codec_decode.c: CPU decoder), the
 * FAISS part in m3codec (codec_faiss.c, codec_layout.c) and the CUDA decoder.
 * Private to core/.
 */
#ifndef M3_CODEC_INTERNAL_H
#define M3_CODEC_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "m3/internal/codec_math.h"
#include "m3/codec.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "m3 codec tables are little-endian f32 used in place: little-endian hosts only"
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define M3__NO_TABLES_CAP 160

/* One codec of a set. Pointers point into the set's file bytes (buf) or its
 * strings; nothing here is freed separately except faiss_index. */
typedef struct m3__codec {
  int kind;
  uint16_t dim;
  uint16_t code_bytes;
  uint16_t flags;                 /* M3_CODEC_HAS_TABLES */
  const char *factory;            /* NUL-terminated (own copy), "" for raw */
  uint32_t n_fields;
  const m3__codec_field *fields;  /* (n_fields), into buf; NULL without tables */
  uint32_t table_rows;
  const float *bias;              /* (dim), into buf; NULL without tables */
  const float *tables;            /* (table_rows, dim), into buf */
  const uint8_t *faiss;           /* faiss_bytes, into buf */
  size_t faiss_bytes;
  double check_abs;
  void *faiss_index;              /* FaissIndex*, loaded by m3codec on demand */
  void *gemm;                     /* m3__gemm*, read by m3codec on first GEMM encode */
  int gemm_state;                 /* 0 not tried, 1 gemm ready, -1 unsupported (gemm_why) */
  char gemm_why[M3__NO_TABLES_CAP]; /* why the GEMM encoder cannot encode it */
} m3__codec;

struct m3_codec_set {
  char *name;                     /* for messages */
  uint8_t *buf;                   /* the file bytes, 8-aligned */
  size_t len;
  int kind;
  uint16_t head_dim;
  uint16_t code_bytes;
  uint16_t n_layers;              /* 0: one K/V pair for all layers */
  uint32_t n_codecs;
  uint64_t fp;
  m3__codec *codecs;              /* (n_codecs) */
  char *strings;                  /* factory strings, NUL-separated */
  char *no_tables;                /* per codec reason strings (n_codecs x 160) */
  pthread_mutex_t lock;           /* guards faiss_index loading */
  void (*faiss_free)(void *);     /* set by m3codec when it loads an index */
  void (*gemm_free)(void *);      /* set by m3codec when it reads GEMM codebooks */
  int encoder;                    /* M3_CODEC_ENC_*: what m3_codec_encode* use */
};

/*
 * An encoder of faiss codecs (m3codec's function table; m3_codec_set_encoder
 * picks one, M3_CODEC_ENC_AUTO the GEMM one wherever it applies).
 *   prepare: 0 when codec ci can be encoded this way (loading what it needs,
 *            under cs->lock); M3_EUNSUPPORTED with the reason in why (cap).
 *   encode:  n vectors (n, dim) into codes (n, code_bytes); prepared first.
 */
typedef struct m3__encoder {
  const char *name;
  int (*prepare)(m3_codec_set *cs, int ci, char *why, size_t cap);
  int (*encode)(m3_codec_set *cs, int ci, const float *x, size_t n, uint8_t *codes);
} m3__encoder;

extern const m3__encoder m3__enc_faiss; /* codec_faiss.c: FAISS sa_encode */
extern const m3__encoder m3__enc_gemm;  /* codec_gemm.c: batched sgemm */

/* One codec as the trainer hands it to the file writer. Borrowed pointers. */
typedef struct m3__codec_in {
  int kind;
  uint16_t dim;
  uint16_t code_bytes;
  const char *factory;            /* NULL or "" for raw */
  uint32_t n_fields;              /* 0: no tables */
  const m3__codec_field *fields;
  const float *bias;              /* (dim) */
  const float *tables;            /* (table_rows, dim) */
  const void *faiss;
  size_t faiss_bytes;
  double check_abs;
} m3__codec_in;

/* Build a codec set file from n codecs and load it (the one parser checks
 * what the writer wrote). On success *out is a new set. */
int m3__codec_set_build(uint16_t n_layers, const m3__codec_in *in, uint32_t n,
                        const char *name, m3_codec_set **out);

/* Which codec codes (layer, kv): its index in cs->codecs, or -1. */
int m3__codec_index(const m3_codec_set *cs, unsigned layer, int kv);

/* Set the "why no tables" note of codec i (shown by m3_codec_set_info). */
void m3__codec_set_no_tables(m3_codec_set *cs, uint32_t i, const char *why);

/* The decode view of a codec. */
m3__dcodec m3__codec_dview(const m3__codec *c);

/* 64-bit fingerprint hash (see m3/codec.h): h = m3__fp_update(M3__FP_INIT, ...)
 * over the parts, then m3__fp_final. */
#define M3__FP_INIT 0xcbf29ce484222325ull
uint64_t m3__fp_update(uint64_t h, const void *data, size_t len);
uint64_t m3__fp_final(uint64_t h, uint64_t total_len);

/* ---- codec_layout.c (m3codec) ---- */

/*
 * The code fields of a FAISS factory string whose decode is a sum of
 * code-selected vectors, for input dimension d. On success fills fields
 * (room for M3_CODEC_MAX_FIELDS), *n_fields and *code_bytes. Otherwise
 * returns M3_EUNSUPPORTED and writes the reason into why (cap bytes).
 */
int m3__codec_layout(const char *factory, unsigned d, m3__codec_field *fields,
                     uint32_t *n_fields, uint32_t *code_bytes, char *why, size_t cap);

#ifdef __cplusplus
}
#endif

#endif /* M3_CODEC_INTERNAL_H */
