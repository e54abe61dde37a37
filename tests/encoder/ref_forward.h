/*
 * A naive reference of the memory-layer forward and the Memory3 selection
 * scores, written for the tests: plain loops, double accumulation, weights
 * read straight from the checkpoint with m3_safetensors_read_f32, one
 * unpadded sequence at a time. Shares nothing with the library's forward.
 */
#ifndef M3_TEST_REF_FORWARD_H
#define M3_TEST_REF_FORWARD_H

#include <stdint.h>

#include "m3/model.h"

typedef struct ref_out {
  int L, K, D, len;
  double *k;    /* (L, K, len, D) keys after rotary */
  double *v;    /* (L, K, len, D) values */
  double *logw; /* (L, K, len) log of w_j, computed as the plain sum of exps */
} ref_out;

/* Run the reference through the first n_mem layers of the model in dir on
 * tokens[0..len). Returns 0 or an m3 code. free with ref_out_free. */
int ref_forward(const char *dir, int n_mem, const int32_t *tokens, int len, ref_out *out);
void ref_out_free(ref_out *o);

/* The brute-force selection from ref logw: top n_tokens of positions
 * [n_prefix, len) (ties: lower position), in position order, into pos;
 * returns how many. */
int ref_select(const double *logw, int len, int n_prefix, int n_tokens, uint16_t *pos);

#endif
