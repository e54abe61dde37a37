/*
 * Shared by the worker-facing tests (attention buffers, memory attention,
 * Python binding): deterministic small memories with known K/V vectors and
 * positions (some tokens M3_ATTN_POS_NONE), their records, a real store
 * written with m3_store_put, and the "by hand" decode the buffers are
 * checked against.
 */
#ifndef M3_WORKER_TESTLIB_H
#define M3_WORKER_TESTLIB_H

#include <stddef.h>
#include <stdint.h>

#include "m3/attn.h"
#include "m3/codec.h"
/* brings unit/testutil.h (whose tail is outside its include guard: include
 * it only through here) and the real-server helpers */
#include "client/client_testlib.h"

typedef struct wt_mems {
  m3_spec spec;
  m3_layout layout;  /* from the codec set, with emb_dim */
  size_t n;          /* memories; chunk ids 0..n-1 */
  float *kv;         /* (n, L, 2, H, T, D): zeros for POS_NONE tokens */
  uint16_t *pos;     /* (n, L, H, T) */
  float *emb;        /* (n, emb_dim) */
  uint8_t *codes;    /* (n, codes bytes): filled by wt_mems_encode_raw or
                        the caller (m3_codec_encode) */
  size_t codes_bytes;
} wt_mems;

/* n memories of spec for codec set cs; memory i has fewer real tokens in
 * some (layer, head) when i % 3 == 2. */
void wt_mems_make(wt_mems *m, const m3_codec_set *cs, const m3_spec *spec, size_t n,
                  uint16_t emb_dim, uint64_t seed);
/* codes = the vectors (raw-f32 sets only). */
void wt_mems_encode_raw(wt_mems *m);
void wt_mems_free(wt_mems *m);

/* Record of memory i (text "worker memory <i>") in a malloc'ed buffer;
 * *len its size; *rec parsed (pointers into the buffer). */
uint8_t *wt_record(const wt_mems *m, size_t i, size_t *len, m3_record *rec);

/* Create a store at dir holding every memory. */
void wt_store_write(const wt_mems *m, const char *dir);

/*
 * Check a round's buffers against memories decoded one vector at a time
 * with m3_codec_decode_vectors: assign[q * k + r] is the memory index placed
 * at (q, r) or -1 for an empty range. exact_f32: for raw-f32 sets and f32
 * output, also compare with the original vectors. Fails the test with the
 * first differing element.
 */
void wt_check_round(const wt_mems *m, const m3_codec_set *cs, const m3_attn_geom *g,
                    const void *kv, const int32_t *pos, const int *assign, int exact_f32);

#endif
