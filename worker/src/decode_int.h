/*
 * What the decoder's runner (decode.c), its backends (decode_cpu.c, the
 * CUDA one) and its tests share: the backend tables and the CPU attention
 * of one query head over its cache and a round's memory slots.
 */
#ifndef M3_DECODE_INT_H
#define M3_DECODE_INT_H

#include <stdint.h>

#include "m3/decode.h"

#ifdef __cplusplus
extern "C" {
#endif

extern const m3_decode_backend m3__decode_backend_cpu;
extern const m3_decode_backend m3__decode_backend_cuda;

/*
 * Attention of one query head at context index i (decode_attn.c), one
 * softmax over the memory slots and the causal context (m3/decode.h):
 *   qc  (D) the query rotated at its context position (pos_offset + i)
 *   qm  (D) the query rotated at pos_offset + i - mem_base, or NULL: no
 *       memories (then km, vm, mp, S are ignored)
 *   kc, vc  (n_ctx, D) this KV head's cache rows 0..i (n_ctx = i + 1)
 *   km, vm  (S, D) the round's slots of this KV head; mp (S) positions,
 *       < 0: empty (no weight)
 *   scratch S + n_ctx floats; out (D).
 */
void m3__decode_attn(const float *qc, const float *qm, const float *kc, const float *vc,
                     int n_ctx, const float *km, const float *vm, const int32_t *mp, int S,
                     int D, float *scratch, float *out);

#ifdef __cplusplus
}
#endif

#endif /* M3_DECODE_INT_H */
