/*
 * Inside the attention buffers: the m3_attn handle shared by the generic
 * part (attn.c: rounds, checks, the retrieval callback, counts) and its
 * backends (host: attn.c; CUDA: worker/cuda/attn_cuda.cu), which sit behind
 * a small function table. Private to worker/.
 */
#ifndef M3_ATTN_INT_H
#define M3_ATTN_INT_H

#include <stdint.h>

#include "m3/attn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct m3__attn_backend {
  const char *name;
  int is_device;
  /* a round opens: a->round holds the buffers */
  int (*begin)(m3_attn *a);
  /* decode rec into (q, rank): checks are done; on failure the range is
   * treated as empty */
  int (*place)(m3_attn *a, uint32_t q, uint32_t rank, const m3_record *rec);
  /* write every range whose a->filled[q * k + rank] is 0 as empty, and
   * complete the round */
  int (*finish)(m3_attn *a);
  /* free a->impl (the handle itself is freed by m3_attn_destroy) */
  void (*destroy)(m3_attn *a);
} m3__attn_backend;

struct m3_attn {
  const m3__attn_backend *be;
  void *impl;               /* the backend's state */
  const m3_codec_set *cs;   /* borrowed */
  m3_attn_geom g;
  size_t es;                /* bytes of one K/V element */
  int open;                 /* a round is open */
  m3_attn_round round;
  uint8_t *filled;          /* (Q, k): 1 when the range holds a memory */
  m3_attn_stats st;
};

/* Make a handle with backend be (impl set by the caller afterwards):
 * validates g against cs. */
int m3__attn_new(const m3_codec_set *cs, const m3_attn_geom *g, const m3__attn_backend *be,
                 m3_attn **out);

#ifdef __cplusplus
}
#endif

#endif /* M3_ATTN_INT_H */
