/*
 * What the encoder's forward backends share with its runner (forward.c):
 * the backend tables the registry lists, the batch check and the selection
 * column sums. C and C++ (the CUDA backend includes it). Calls flow one
 * way: forward.c -> a backend -> model.c / select.c.
 */
#ifndef M3_FORWARD_INT_H
#define M3_FORWARD_INT_H

#include <stddef.h>

#include "m3/forward.h"
#include "model_int.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Column log-sum-exp of selection scores: scores holds n_mats matrices
 * (the query heads of one group), matrix a at scores + a * mat_stride, row
 * i (query) at + i * ld, column j (key). logw[j] for j < n_cols over rows
 * i < n_rows of every matrix.
 */
void m3__select_colsum(const float *scores, int n_mats, size_t mat_stride, int n_rows,
                       size_t ld, int n_cols, double *logw);

/* Check a batch against opts and the model; M3_EINVAL with a message. */
int m3__batch_check(const struct m3_model *m, const m3_forward_opts *o, const m3_batch *b);

/* The backends' tables: the CPU reference (forward_cpu.c) and, when
 * compiled (library m3encoder_cuda), the CUDA one. */
extern const m3_backend m3__backend_cpu_table;
extern const m3_backend m3__backend_cuda_table;

#ifdef __cplusplus
}
#endif

#endif /* M3_FORWARD_INT_H */
