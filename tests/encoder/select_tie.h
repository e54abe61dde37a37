/*
 * Whether two Memory3 selections of the same candidates differ only by ties:
 * used where two backends (CUDA, CPU) or a backend and the reference pick
 * the top n_tokens of the same log w_j in different float arithmetic, so a
 * near-tie at the selection boundary may go either way, and nothing else
 * may differ.
 */
#ifndef M3_TEST_SELECT_TIE_H
#define M3_TEST_SELECT_TIE_H

#include <stddef.h>
#include <stdint.h>

/*
 * a and b are selections (n_tokens slots each) of logw[n_prefix..len): the
 * selected positions in increasing order, then M3_POS_NONE. logw (len) are
 * the scores to judge by (the double reference). Each must be well formed
 * (positions in range, increasing, as many as min(n_tokens, len - n_prefix)),
 * and every position in one and not the other must be a tie at the
 * boundary: its logw within tol of thr, the n-th highest logw of the
 * candidates (n = the count selected).
 *
 * Returns how many positions of a are not in b (0: the same set), or -1
 * with the first reason written into why (cap bytes; names the slot,
 * position, score and thr).
 */
int sel_tie_check(const double *logw, int len, int n_prefix, int n_tokens, const uint16_t *a,
                  const uint16_t *b, double tol, char *why, size_t cap);

#endif
