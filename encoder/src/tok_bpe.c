/*
 * SentencePiece BPE encoding (bpe_model.cc, Model::SampleEncode without
 * dropout), the algorithm of Llama-2's tokenizer.model:
 *   - split the normalized text into characters (user-defined symbols whole
 *     and frozen);
 *   - repeatedly merge the adjacent pair whose concatenation is a vocabulary
 *     piece of the highest score, leftmost first on ties (a heap of
 *     candidate pairs; stale entries are skipped when popped);
 *   - pieces of type UNUSED are split back into the pair that formed them;
 *   - a final symbol outside the vocabulary gets the unknown id (byte
 *     fallback turns it into <0xNN> pieces in tok_common.c).
 * Work is O(n log n) in the characters of one chunk; every array lives in
 * the handle's scratch.
 */
#include <string.h>

#include "m3/error.h"
#include "tok_int.h"

typedef struct sym {
  int32_t prev, next;
  uint32_t off, len;
  int freeze;
} sym;

typedef struct pair {
  float score;
  int32_t left, right;
  uint32_t size;
} pair;

/* for UNUSED pieces: the last pair seen forming piece id */
typedef struct revmerge {
  int32_t id;
  uint32_t llen, rlen;
} revmerge;

typedef struct bpe_ctx {
  const m3__tok_model *m;
  const char *norm;
  sym *syms;
  pair *heap;
  size_t nheap;
  revmerge *rev;
  size_t nrev;
  m3__tok_seg *seg;
  size_t nseg;
} bpe_ctx;

/* priority: higher score first, then smaller left */
static inline int before(const pair *a, const pair *b) {
  return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(bpe_ctx *c, pair p) {
  size_t i = c->nheap++;
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!before(&p, &c->heap[parent]))
      break;
    c->heap[i] = c->heap[parent];
    i = parent;
  }
  c->heap[i] = p;
}

static pair heap_pop(bpe_ctx *c) {
  pair top = c->heap[0];
  pair last = c->heap[--c->nheap];
  size_t i = 0, n = c->nheap;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, best = i;
    const pair *bp = &last;
    if (l < n && before(&c->heap[l], bp)) {
      best = l;
      bp = &c->heap[l];
    }
    if (r < n && before(&c->heap[r], bp))
      best = r;
    if (best == i)
      break;
    c->heap[i] = c->heap[best];
    i = best;
  }
  if (n)
    c->heap[i] = last;
  return top;
}

static void maybe_add_pair(bpe_ctx *c, int32_t left, int32_t right) {
  if (left < 0 || right < 0 || c->syms[left].freeze || c->syms[right].freeze)
    return;
  const sym *l = &c->syms[left], *r = &c->syms[right];
  uint32_t size = l->len + r->len;
  int32_t id = m3__trie_get(&c->m->pieces, c->norm + l->off, size);
  if (id < 0)
    return;
  pair p = {c->m->score[id], left, right, size};
  heap_push(c, p);
  if (c->m->type[id] == M3__PIECE_UNUSED) {
    revmerge rm = {id, l->len, r->len};
    c->rev[c->nrev++] = rm;
  }
}

/* ModelInterface::PieceToId: reserved pieces first, then normal ones, else
 * the unknown id. */
static int32_t piece_to_id(const m3__tok_model *m, const char *p, size_t len) {
  int32_t id = m3__trie_get(&m->reserved, p, len);
  if (id < 0)
    id = m3__trie_get(&m->pieces, p, len);
  return id < 0 ? m->unk : id;
}

static void resegment(bpe_ctx *c, uint32_t off, uint32_t len) {
  int32_t id = piece_to_id(c->m, c->norm + off, len);
  if (c->m->type[id] == M3__PIECE_UNUSED) {
    for (size_t i = c->nrev; i-- > 0;) {
      const revmerge *rm = &c->rev[i];
      if (rm->id != id)
        continue;
      /* the pair's strings are the same bytes wherever they were seen:
       * split this occurrence at the same place */
      if (rm->llen + rm->rlen == len) {
        resegment(c, off, rm->llen);
        resegment(c, off + rm->llen, rm->rlen);
        return;
      }
    }
  }
  m3__tok_seg g = {off, len, id};
  c->seg[c->nseg++] = g;
}

int m3__spm_bpe_encode(const m3__tok_model *m, m3__tok_scratch *s,
                       size_t nlen, size_t *nseg) {
  int rc;
  /* characters <= bytes; each merge pushes at most two pairs */
  size_t nmax = nlen;
  size_t need = nmax * sizeof(sym) + 3 * nmax * sizeof(pair) +
                (m->has_unused ? 3 * nmax * sizeof(revmerge) : 0) + 64;
  if ((rc = m3__tok_reserve(&s->work, &s->work_cap, need)))
    return rc;
  if ((rc = m3__tok_reserve((void **)&s->seg, &s->seg_cap,
                            nmax * sizeof(m3__tok_seg))))
    return rc;
  bpe_ctx c = {0};
  c.m = m;
  c.norm = s->norm;
  c.syms = s->work;
  c.heap = (pair *)(c.syms + nmax);
  c.rev = (revmerge *)(c.heap + 3 * nmax);
  c.seg = s->seg;

  size_t n = 0;
  for (size_t pos = 0; pos < nlen; n++) {
    size_t l = 0;
    int freeze = 0;
    if (m->has_user) {
      int32_t v;
      l = m3__trie_longest(&m->user, s->norm + pos, nlen - pos, &v);
      freeze = l > 0;
    }
    if (!l) {
      l = m3__utf8_len((uint8_t)s->norm[pos]);
      if (l > nlen - pos)
        l = nlen - pos;
    }
    sym *y = &c.syms[n];
    y->prev = (int32_t)n - 1;
    y->off = (uint32_t)pos;
    y->len = (uint32_t)l;
    y->freeze = freeze;
    pos += l;
    y->next = pos < nlen ? (int32_t)n + 1 : -1;
  }
  for (size_t i = 1; i < n; i++)
    maybe_add_pair(&c, (int32_t)i - 1, (int32_t)i);

  while (c.nheap) {
    pair top = heap_pop(&c);
    sym *l = &c.syms[top.left], *r = &c.syms[top.right];
    if (l->len == 0 || r->len == 0 || l->len + r->len != top.size)
      continue; /* stale: one side was merged away since */
    l->len += r->len;
    l->next = r->next;
    if (r->next >= 0)
      c.syms[r->next].prev = top.left;
    r->len = 0;
    maybe_add_pair(&c, l->prev, top.left);
    maybe_add_pair(&c, top.left, l->next);
  }

  for (int32_t i = 0; i != -1 && n > 0; i = c.syms[i].next)
    resegment(&c, c.syms[i].off, c.syms[i].len);
  *nseg = c.nseg;
  return 0;
}
