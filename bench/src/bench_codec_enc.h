/*
 * m3-bench codec, the encoder part: FAISS's sa_encode against the GEMM
 * encoder on the same test vectors, in one run (bench_codec_enc.c).
 */
#ifndef M3_BENCH_CODEC_ENC_H
#define M3_BENCH_CODEC_ENC_H

#include <jansson.h>
#include <stddef.h>

#include "m3/codec.h"

/*
 * Encode the n test keys k and values v (n, dim) with both encoders (best of
 * a few interleaved rounds each, process CPU time: one core when OpenMP and
 * OpenBLAS run one thread), time sgemm at the GEMM encoder's shape, and add
 * the figures to j (encode_faiss_vectors_per_s, encode_gemm_vectors_per_s,
 * encode_speedup, sgemm_gflops, encode_gemm_gflops, code_agreement,
 * rel_mse_faiss, rel_mse_gemm, load_avg ...). Leaves the set's encoder at
 * AUTO. Returns 0 or an m3 error code (the message set).
 */
int m3_bench_codec_encoders(m3_codec_set *cs, const float *k, const float *v, size_t n,
                            unsigned dim, json_t *j);

#endif /* M3_BENCH_CODEC_ENC_H */
