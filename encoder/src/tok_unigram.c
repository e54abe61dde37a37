/*
 * SentencePiece unigram encoding: the Viterbi best segmentation under the
 * pieces' log-probabilities (unigram_model.cc, Model::EncodeOptimized, the
 * default encoder since SentencePiece 0.1.9x). The lattice is never stored:
 * one forward pass keeps, for every byte position, the best path ending
 * there; a backward pass reads the pieces off. A character no piece covers
 * becomes an unknown node scored min_score - 10. The arithmetic mirrors the
 * C++ (a double candidate compared with, and stored into, float scores), so
 * ties and near-ties resolve the same way.
 */
#include <string.h>

#include "m3/error.h"
#include "tok_int.h"

typedef struct best_node {
  int32_t id;
  float score;
  int32_t starts_at;
} best_node;

static const float kUnkPenalty = 10.0f;

int m3__spm_unigram_encode(const m3__tok_model *m, m3__tok_scratch *s,
                           size_t nlen, size_t *nseg) {
  int rc;
  if ((rc = m3__tok_reserve(&s->work, &s->work_cap,
                            (nlen + 1) * sizeof(best_node))))
    return rc;
  if ((rc = m3__tok_reserve((void **)&s->seg, &s->seg_cap,
                            nlen * sizeof(m3__tok_seg))))
    return rc;
  best_node *best = s->work;
  const char *norm = s->norm;
  const m3__trie *t = &m->pieces;
  const float unk_score = m->min_score - kUnkPenalty;
  for (size_t i = 0; i <= nlen; i++) {
    best[i].id = -1;
    best[i].score = 0.0f;
    best[i].starts_at = -1;
  }

  size_t starts_at = 0;
  while (starts_at < nlen) {
    const float here = best[starts_at].score;
    int has_single = 0;
    size_t mblen = m3__utf8_len((uint8_t)norm[starts_at]);
    if (mblen > nlen - starts_at)
      mblen = nlen - starts_at;
    uint32_t node = 0;
    for (size_t key_pos = starts_at; key_pos < nlen && t->n_nodes;) {
      int32_t child = m3__trie_step(t, node, (uint8_t)norm[key_pos]);
      if (child < 0)
        break;
      node = (uint32_t)child;
      key_pos++;
      int32_t id = m3__trie_value(t, node);
      if (id < 0 || m->type[id] == M3__PIECE_UNUSED)
        continue;
      size_t length = key_pos - starts_at;
      /* user-defined symbols get a bonus so that they always win */
      double score = m->type[id] == M3__PIECE_USER
                         ? (double)((float)length * m->max_score) - 0.1
                         : (double)m->score[id];
      double cand = score + (double)here;
      best_node *tn = &best[key_pos];
      if (tn->starts_at == -1 || cand > (double)tn->score) {
        tn->score = (float)cand;
        tn->starts_at = (int32_t)starts_at;
        tn->id = id;
      }
      if (!has_single && length == mblen)
        has_single = 1;
    }
    if (!has_single) {
      best_node *tn = &best[starts_at + mblen];
      float cand = unk_score + here;
      if (tn->starts_at == -1 || cand > tn->score) {
        tn->score = cand;
        tn->starts_at = (int32_t)starts_at;
        tn->id = m->unk;
      }
    }
    starts_at += mblen;
  }

  size_t n = 0;
  size_t ends_at = nlen;
  while (ends_at > 0) {
    const best_node *bn = &best[ends_at];
    if (bn->starts_at < 0 || (size_t)bn->starts_at >= ends_at)
      return m3__seterr(M3_EINTERNAL, "%s: unigram lattice has no path to "
                        "byte %zu", m->path, ends_at);
    m3__tok_seg g = {(uint32_t)bn->starts_at,
                     (uint32_t)(ends_at - (size_t)bn->starts_at), bn->id};
    s->seg[n++] = g;
    ends_at = (size_t)bn->starts_at;
  }
  for (size_t i = 0; i < n / 2; i++) {
    m3__tok_seg tmp = s->seg[i];
    s->seg[i] = s->seg[n - 1 - i];
    s->seg[n - 1 - i] = tmp;
  }
  *nseg = n;
  return 0;
}
