/*
 * The GEMM encoder (m3codec): FAISS's standalone codes (sa_encode) for the
 * paper's codec family without calling FAISS to encode. The codebooks are read
 * out of the codec's serialized FAISS index (faiss::write_index bytes,
 * codec_gemm_read.c); encoding (codec_gemm.c) batches vectors and finds
 * nearest centroids as ||x||^2 - 2 x.c + ||c||^2 with OpenBLAS sgemm and
 * precomputed centroid norms, the way FAISS's pairwise_L2sqr does.
 *
 * Supported FAISS structures (anything else: the FAISS path encodes):
 *   IndexPreTransform ("IxPT") of LinearTransforms ("LTra": OPQ, "rrot")
 *   over one of
 *     IndexPQ ("IxPq")                              PQ<M>x<b>[np]
 *     Index2Layer ("Ix2L") over MultiIndexQuantizer Residual<M>x<b>,PQ<m>x<c>
 *     Index2Layer ("Ix2L") over IndexFlatL2         Residual<n>,PQ<m>x<c>
 * Private to core/.
 */
#ifndef M3_CODEC_GEMM_H
#define M3_CODEC_GEMM_H

#include <stddef.h>
#include <stdint.h>

#define M3__GEMM_MAX_LT 4

/* One product quantizer: M sub-quantizers of ksub centroids of dsub dims. */
typedef struct m3__gpq {
  uint32_t d, M, nbits, ksub, dsub;
  float *cent;  /* (M, ksub, dsub), own */
  float *norms; /* (M, ksub) squared norms, own */
} m3__gpq;

/* y = A x (+ b): A (d_out, d_in) row-major as FAISS stores it. */
typedef struct m3__glt {
  uint32_t d_in, d_out;
  float *A; /* own */
  float *b; /* own, NULL without bias */
} m3__glt;

enum { M3__GC_NONE = 0, M3__GC_MULTI = 1, M3__GC_FLAT = 2 };

/* A codec as the GEMM encoder sees it. Everything is owned (m3__gemm_free). */
typedef struct m3__gemm {
  uint32_t d_in;            /* input dims */
  uint32_t d;               /* dims after the transforms */
  uint32_t n_lt;
  m3__glt lt[M3__GEMM_MAX_LT];
  int coarse;               /* M3__GC_*: the Index2Layer's level-1 quantizer */
  m3__gpq q1;               /* multi-index PQ; flat: M 1, dsub d, ksub nlist */
  uint32_t code_size_1;     /* bytes of the little-endian list number */
  m3__gpq pq;               /* PQ of the vector (IndexPQ) or of its residual */
  uint32_t code_size;       /* code_size_1 + pq code bytes */
} m3__gemm;

/*
 * Read the codebooks out of len bytes of faiss::write_index output. On
 * success *out is a new m3__gemm (free with m3__gemm_free). M3_EUNSUPPORTED
 * with the reason in why (cap bytes) when the index is not one of the
 * structures above or its bytes do not parse.
 */
int m3__gemm_read(const uint8_t *buf, size_t len, uint32_t d_in, m3__gemm **out, char *why,
                  size_t cap);

void m3__gemm_free(m3__gemm *g);

/*
 * Encode n vectors x (n, d_in) into codes (n, code_size): FAISS's sa_encode
 * codes. Allocates its scratch per call (reentrant). 0 or M3_ENOMEM.
 */
int m3__gemm_encode(const m3__gemm *g, const float *x, size_t n, uint8_t *codes);

/* Floating-point operations of the encoder's GEMMs for one vector (the
 * figure m3-bench's effective GFLOP/s divides by). */
double m3__gemm_flops_per_vector(const m3__gemm *g);

/* The shape of the encoder's largest sgemm: m vectors x n centroids x k dims. */
void m3__gemm_shape(const m3__gemm *g, uint32_t *m, uint32_t *n, uint32_t *k);

#endif /* M3_CODEC_GEMM_H */
