/*
 * The token sequence of a reference chunk: what m3-encode runs through the
 * memory layers and what `m3 store dump` recomputes from a record's stored
 * text (Memory3's "<s>Reference:" + chunk):
 *   tokens = [BOS] + tokenize(prefix) + tokenize(text)
 * Each tokenize() is the tokenizer's encode without BOS, on that part alone,
 * so a chunk's stored text re-tokenizes to exactly its tokens. The leading
 * BOS + prefix tokens (n_prefix) are never selected; a chunk's record holds
 * chunk_len = n - n_prefix. At most max_tokens in all (M3_SEQ_MAX_TOKENS
 * unless m3-encode --max-tokens says otherwise).
 */
#ifndef M3_SEQUENCE_H
#define M3_SEQUENCE_H

#include <stddef.h>
#include <stdint.h>

#include "m3/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define M3_SEQ_PREFIX "Reference:" /* the default prefix (m3-encode --prefix) */
#define M3_SEQ_MAX_TOKENS 128      /* the default max_tokens (--max-tokens) */

/*
 * Write the sequence of text[0..len) with prefix into ids[0..cap); text may
 * be NULL with len 0 for the BOS + prefix part alone. *n receives the ids
 * written, *n_prefix (may be NULL) the BOS + prefix count. prefix NULL or ""
 * is no prefix. M3_ERANGE when the sequence is longer than cap, with a
 * message naming the part that did not fit (*n then says how many fit).
 * Not thread-safe on one tokenizer (m3_tokenizer_encode).
 */
int m3_seq_tokens(m3_tokenizer *tok, const char *prefix, const char *text, size_t len,
                  int32_t *ids, size_t cap, size_t *n, size_t *n_prefix);

#ifdef __cplusplus
}
#endif
#endif
