/*
 * A small BPE trainer for `m3-encode test-model`: learns merges from a
 * corpus and writes a Llama-style Hugging Face tokenizer.json (the layout
 * transformers' LlamaConverter produces, which tok_hf.c reads), so a test
 * model folder needs no tool outside m3 (no spm_train at run time).
 *
 * Workload: corpora of kilobytes to a few megabytes, vocabularies of a few
 * thousand; plain recounting of all pairs per merge is fast enough.
 *
 * Algorithm (classic BPE, Sennrich et al., as SentencePiece BPE splits):
 *   1. words: maximal runs of non-whitespace bytes, each written "▁" + word
 *      (the normalizer turns spaces into "▁" and prepends one);
 *   2. alphabet: the words' UTF-8 characters by frequency (ties: bytes
 *      order), as many as fit after the 3 specials and 256 byte pieces;
 *      characters left out, and invalid UTF-8, fall back to bytes when
 *      encoding and never merge;
 *   3. repeat: the most frequent adjacent pair of symbols inside words (ties:
 *      the smaller (left id, right id)), seen at least min_frequency times,
 *      merges everywhere; its concatenation becomes a piece (unless it is one
 *      already); until the vocabulary is full or no pair is frequent enough.
 * Merges never cross words: no piece has "▁" anywhere but first, so the
 * whole-string BPE of tokenizer.json reproduces the per-word training.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "encode_int.h"
#include "m3/error.h"
#include "m3/internal/hash.h"
#include "m3/internal/fsutil.h"

#define SPACE_MARK "\xe2\x96\x81" /* U+2581 */

typedef struct strmap {
  char **keys;
  int *vals;
  size_t cap, n;
} strmap;

static uint64_t hstr(const char *s, size_t n) {
  uint64_t h = m3__fnv1a64(s, n);
  return h ^ (h >> 29);
}

static int *strmap_find(strmap *m, const char *k, size_t n) {
  if (!m->cap) return NULL;
  for (size_t i = hstr(k, n) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    if (!m->keys[i]) return NULL;
    if (strlen(m->keys[i]) == n && !memcmp(m->keys[i], k, n)) return &m->vals[i];
  }
}

/* Insert k (copied) with value v when absent; returns the slot's value. */
static int *strmap_put(strmap *m, const char *k, size_t n, int v) {
  int *f = strmap_find(m, k, n);
  if (f) return f;
  if ((m->n + 1) * 2 > m->cap) {
    size_t nc = m->cap ? m->cap * 2 : 4096;
    char **nk = calloc(nc, sizeof *nk);
    int *nv = calloc(nc, sizeof *nv);
    if (!nk || !nv) { free(nk); free(nv); return NULL; }
    for (size_t i = 0; i < m->cap; i++) {
      if (!m->keys[i]) continue;
      size_t j = hstr(m->keys[i], strlen(m->keys[i])) & (nc - 1);
      while (nk[j]) j = (j + 1) & (nc - 1);
      nk[j] = m->keys[i], nv[j] = m->vals[i];
    }
    free(m->keys), free(m->vals);
    m->keys = nk, m->vals = nv, m->cap = nc;
  }
  size_t i = hstr(k, n) & (m->cap - 1);
  while (m->keys[i]) i = (i + 1) & (m->cap - 1);
  char *c = malloc(n + 1);
  if (!c) return NULL;
  memcpy(c, k, n);
  c[n] = '\0';
  m->keys[i] = c, m->vals[i] = v, m->n++;
  return &m->vals[i];
}

static void strmap_free(strmap *m) {
  for (size_t i = 0; i < m->cap; i++) free(m->keys[i]);
  free(m->keys), free(m->vals);
}

/* Length of the valid UTF-8 character at s (n bytes left), 0 if invalid. */
static int utf8_len(const unsigned char *s, size_t n) {
  int l = s[0] < 0x80 ? 1 : (s[0] & 0xE0) == 0xC0 ? 2 : (s[0] & 0xF0) == 0xE0 ? 3 : (s[0] & 0xF8) == 0xF0 ? 4 : 0;
  if (!l || (size_t)l > n) return 0;
  if (l == 2 && s[0] < 0xC2) return 0;
  for (int i = 1; i < l; i++)
    if ((s[i] & 0xC0) != 0x80) return 0;
  return l;
}

typedef struct word {
  int *sym; /* symbol ids; -1: a character outside the alphabet */
  int n;
  long count;
} word;

typedef struct chr {
  const char *s;
  long count;
} chr;

static int by_count(const void *a, const void *b) {
  const chr *x = a, *y = b;
  if (x->count != y->count) return x->count > y->count ? -1 : 1;
  return strcmp(x->s, y->s);
}

/* Pair counts: open addressing on (a << 32 | b). */
typedef struct paircount {
  uint64_t *keys; /* UINT64_MAX empty */
  long *cnt;
  size_t cap;
} paircount;

static size_t pair_slot(paircount *p, uint64_t k) {
  size_t i = (size_t)((k * 0x9E3779B97F4A7C15ull) >> 20) & (p->cap - 1);
  while (p->keys[i] != UINT64_MAX && p->keys[i] != k) i = (i + 1) & (p->cap - 1);
  return i;
}

int enc_bpe_train(const char *corpus, size_t len, const enc_bpe_opts *o, const char *path,
                  unsigned *n_vocab) {
  int rc = 0;
  strmap words = {0}, chars = {0}, pieces = {0};
  word *ws = NULL;
  size_t nw = 0;
  char **vocab = NULL;
  size_t nv = 0, capv = 0;
  int (*merges)[2] = NULL;
  size_t nm = 0, capm = 0;
  chr *cs = NULL;
  paircount pc = {0};
  json_t *root = NULL;
  char *tmp = NULL;
  unsigned min_freq = o->min_frequency ? o->min_frequency : 2;
  if (o->vocab_size < 259 + 1) return m3__seterr(M3_EINVAL, "bpe: vocab %u < 260", o->vocab_size);

  /* 1. words with counts (the strmap value indexes ws) */
  size_t tcap = 256;
  tmp = malloc(tcap);
  if (!tmp) goto nomem;
  for (size_t p = 0; p < len;) {
    while (p < len && strchr(" \t\n\r\f\v", corpus[p]) && corpus[p]) p++;
    size_t q = p;
    while (q < len && !(strchr(" \t\n\r\f\v", corpus[q]) && corpus[q])) q++;
    if (q == p) break;
    size_t wl = 3 + (q - p);
    if (wl > tcap) {
      char *nt = realloc(tmp, tcap = wl * 2);
      if (!nt) goto nomem;
      tmp = nt;
    }
    memcpy(tmp, SPACE_MARK, 3);
    memcpy(tmp + 3, corpus + p, q - p);
    int *slot = strmap_put(&words, tmp, wl, -1);
    if (!slot) goto nomem;
    if (*slot < 0) {
      word *nws = realloc(ws, (nw + 1) * sizeof *ws);
      if (!nws) goto nomem;
      ws = nws;
      memset(&ws[nw], 0, sizeof ws[nw]);
      *slot = (int)nw++;
    }
    ws[*slot].count++;
    p = q;
  }
  /* 2. the alphabet */
  for (size_t i = 0; i < words.cap; i++) {
    if (!words.keys[i]) continue;
    const unsigned char *s = (const unsigned char *)words.keys[i];
    size_t n = strlen(words.keys[i]);
    long cnt = ws[words.vals[i]].count;
    for (size_t j = 0; j < n;) {
      int l = utf8_len(s + j, n - j);
      if (!l) { j++; continue; }
      int *c = strmap_put(&chars, (const char *)s + j, (size_t)l, 0);
      if (!c) goto nomem;
      *c += (int)cnt;
      j += (size_t)l;
    }
  }
  cs = calloc(chars.n + 1, sizeof *cs);
  if (!cs) goto nomem;
  size_t nc = 0;
  for (size_t i = 0; i < chars.cap; i++)
    if (chars.keys[i]) cs[nc++] = (chr){chars.keys[i], chars.vals[i]};
  qsort(cs, nc, sizeof *cs, by_count);
  capv = o->vocab_size;
  vocab = calloc(capv, sizeof *vocab);
  if (!vocab) goto nomem;
  static const char *specials[] = {"<unk>", "<s>", "</s>"};
  char bytepiece[8];
  for (int i = 0; i < 3; i++) vocab[nv++] = strdup(specials[i]);
  for (int b = 0; b < 256; b++) {
    snprintf(bytepiece, sizeof bytepiece, "<0x%02X>", b);
    vocab[nv++] = strdup(bytepiece);
  }
  for (size_t i = 0; i < nc && nv < capv; i++) vocab[nv++] = strdup(cs[i].s);
  for (size_t i = 0; i < nv; i++) {
    if (!vocab[i]) goto nomem;
    int *s = strmap_put(&pieces, vocab[i], strlen(vocab[i]), (int)i);
    if (!s) goto nomem;
  }
  /* the words as symbols */
  for (size_t i = 0; i < words.cap; i++) {
    if (!words.keys[i]) continue;
    word *w = &ws[words.vals[i]];
    const unsigned char *s = (const unsigned char *)words.keys[i];
    size_t n = strlen(words.keys[i]);
    w->sym = malloc(n * sizeof *w->sym);
    if (!w->sym) goto nomem;
    for (size_t j = 0; j < n;) {
      int l = utf8_len(s + j, n - j);
      int *id = l ? strmap_find(&pieces, (const char *)s + j, (size_t)l) : NULL;
      w->sym[w->n++] = id && *id >= 259 ? *id : -1;
      j += l ? (size_t)l : 1;
    }
  }
  /* 3. merges */
  size_t total = 0;
  for (size_t i = 0; i < nw; i++) total += (size_t)ws[i].n;
  pc.cap = 1024;
  while (pc.cap < 2 * total + 2) pc.cap *= 2;
  pc.keys = malloc(pc.cap * sizeof *pc.keys);
  pc.cnt = malloc(pc.cap * sizeof *pc.cnt);
  if (!pc.keys || !pc.cnt) goto nomem;
  size_t max_merges = 8 * (size_t)o->vocab_size;
  while (nv < capv && nm < max_merges) {
    memset(pc.keys, 0xff, pc.cap * sizeof *pc.keys);
    uint64_t best = UINT64_MAX;
    long bestc = 0;
    for (size_t i = 0; i < nw; i++)
      for (int j = 0; j + 1 < ws[i].n; j++) {
        int a = ws[i].sym[j], b = ws[i].sym[j + 1];
        if (a < 0 || b < 0) continue;
        uint64_t k = (uint64_t)a << 32 | (uint32_t)b;
        size_t s = pair_slot(&pc, k);
        if (pc.keys[s] == UINT64_MAX) pc.keys[s] = k, pc.cnt[s] = 0;
        pc.cnt[s] += ws[i].count;
        if (pc.cnt[s] > bestc || (pc.cnt[s] == bestc && k < best)) bestc = pc.cnt[s], best = k;
      }
    if (bestc < (long)min_freq) break;
    int a = (int)(best >> 32), b = (int)(uint32_t)best;
    size_t la = strlen(vocab[a]), lb = strlen(vocab[b]);
    char *m = malloc(la + lb + 1);
    if (!m) goto nomem;
    memcpy(m, vocab[a], la);
    memcpy(m + la, vocab[b], lb + 1);
    int *idp = strmap_find(&pieces, m, la + lb);
    int id;
    if (idp) {
      id = *idp;
      free(m);
    } else {
      id = (int)nv;
      vocab[nv++] = m;
      if (!strmap_put(&pieces, m, la + lb, id)) goto nomem;
    }
    if (nm == capm) {
      capm = capm ? capm * 2 : 256;
      int(*nmg)[2] = realloc(merges, capm * sizeof *merges);
      if (!nmg) goto nomem;
      merges = nmg;
    }
    merges[nm][0] = a, merges[nm][1] = b, nm++;
    for (size_t i = 0; i < nw; i++) {
      word *w = &ws[i];
      int o2 = 0;
      for (int j = 0; j < w->n; j++) {
        if (j + 1 < w->n && w->sym[j] == a && w->sym[j + 1] == b) w->sym[o2++] = id, j++;
        else w->sym[o2++] = w->sym[j];
      }
      w->n = o2;
    }
  }

  /* 4. tokenizer.json */
  root = json_object();
  json_t *added = json_array();
  for (int i = 0; i < 3; i++)
    json_array_append_new(added, json_pack("{s:i,s:s,s:b,s:b,s:b,s:b,s:b}", "id", i, "content",
                                           specials[i], "single_word", 0, "lstrip", 0, "rstrip", 0,
                                           "normalized", 0, "special", 1));
  json_t *vmap = json_object();
  for (size_t i = 0; i < nv; i++) json_object_set_new(vmap, vocab[i], json_integer((json_int_t)i));
  json_t *mlist = json_array();
  for (size_t i = 0; i < nm; i++)
    json_array_append_new(mlist, json_pack("[s,s]", vocab[merges[i][0]], vocab[merges[i][1]]));
  json_object_set_new(root, "version", json_string("1.0"));
  json_object_set_new(root, "truncation", json_null());
  json_object_set_new(root, "padding", json_null());
  json_object_set_new(root, "added_tokens", added);
  json_object_set_new(root, "normalizer",
      json_pack("{s:s,s:[{s:s,s:s},{s:s,s:{s:s},s:s}]}", "type", "Sequence", "normalizers",
                "type", "Prepend", "prepend", SPACE_MARK, "type", "Replace", "pattern", "String",
                " ", "content", SPACE_MARK));
  json_object_set_new(root, "pre_tokenizer", json_null());
  json_object_set_new(root, "post_processor",
      json_pack("{s:s,s:[{s:{s:s,s:i}},{s:{s:s,s:i}}],s:[{s:{s:s,s:i}},{s:{s:s,s:i}},{s:{s:s,s:i}},{s:{s:s,s:i}}],s:{s:{s:s,s:[i],s:[s]}}}",
                "type", "TemplateProcessing", "single", "SpecialToken", "id", "<s>", "type_id", 0,
                "Sequence", "id", "A", "type_id", 0, "pair", "SpecialToken", "id", "<s>",
                "type_id", 0, "Sequence", "id", "A", "type_id", 0, "SpecialToken", "id", "<s>",
                "type_id", 1, "Sequence", "id", "B", "type_id", 1, "special_tokens", "<s>", "id",
                "<s>", "ids", 1, "tokens", "<s>"));
  json_object_set_new(root, "decoder",
      json_pack("{s:s,s:[{s:s,s:{s:s},s:s},{s:s},{s:s},{s:s,s:s,s:i,s:i}]}", "type", "Sequence",
                "decoders", "type", "Replace", "pattern", "String", SPACE_MARK, "content", " ",
                "type", "ByteFallback", "type", "Fuse", "type", "Strip", "content", " ", "start",
                1, "stop", 0));
  json_object_set_new(root, "model",
      json_pack("{s:s,s:n,s:s,s:n,s:n,s:b,s:b,s:b,s:o,s:o}", "type", "BPE", "dropout", "unk_token",
                "<unk>", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", 1,
                "byte_fallback", 1, "ignore_merges", 0, "vocab", vmap, "merges", mlist));
  char *s = json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
  if (!s) {
    rc = m3__seterr(M3_EINTERNAL, "bpe: cannot serialize tokenizer.json");
    goto out;
  }
  rc = m3__fs_replace(path, s, strlen(s));
  free(s);
  if (!rc) *n_vocab = (unsigned)nv;
  goto out;
nomem:
  rc = m3__seterr(M3_ENOMEM, "bpe: out of memory");
out:
  json_decref(root);
  free(tmp);
  for (size_t i = 0; i < nw; i++) free(ws[i].sym);
  free(ws);
  for (size_t i = 0; i < nv; i++) free(vocab[i]);
  free(vocab);
  free(merges);
  free(cs);
  free(pc.keys), free(pc.cnt);
  strmap_free(&words), strmap_free(&chars), strmap_free(&pieces);
  return rc;
}
