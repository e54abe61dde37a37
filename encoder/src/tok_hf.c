/*
 * Hugging Face tokenizer.json, BPE models in the Llama/Mistral layout:
 *
 *   "normalizer": Sequence[Prepend("▁"), Replace(" " -> "▁")] | null
 *   "pre_tokenizer": Metaspace{replacement "▁", prepend_scheme, split} | null
 *   "model": {"type": "BPE", "vocab": {piece: id}, "merges": ["a b", ...]
 *             or [["a", "b"], ...], "byte_fallback", "fuse_unk", "unk_token",
 *             "ignore_merges"}
 *   "added_tokens": [{"id", "content", "special"}, ...]
 *   "post_processor": TemplateProcessing (its leading special token is BOS)
 *
 * Encoding follows tokenizers' BPE (models/bpe/word.rs): characters become
 * vocabulary ids (or <0xNN> byte ids, or a fused unknown), then the pair
 * with the lowest merge rank, leftmost first, is merged until no listed
 * pair remains. For a tokenizer.json converted from a SentencePiece BPE
 * model this gives the same ids as the SentencePiece model.
 *
 * Refused with M3_EUNSUPPORTED (message names the field): other model types
 * (WordPiece, Unigram, WordLevel), ByteLevel and other pre-tokenizers,
 * normalizers other than Prepend/Replace of the space marker (NFC, NFKC,
 * Lowercase, Strip, ...), continuing_subword_prefix, end_of_word_suffix,
 * dropout. Added tokens are not matched in the input text (as SentencePiece
 * never matches control pieces): "<s>" written in a text is encoded as text.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "m3/error.h"
#include "m3/internal/hash.h"
#include "tok_int.h"

static const char kSpace[] = "\xE2\x96\x81"; /* U+2581 */

static inline uint64_t merge_key(int32_t l, int32_t r) {
  return (((uint64_t)(uint32_t)l << 32) | (uint32_t)r) + 1;
}

static const m3__merge *merge_get(const m3__tok_model *m, int32_t l, int32_t r) {
  if (!m->merge_cap)
    return NULL;
  uint64_t k = merge_key(l, r);
  size_t mask = m->merge_cap - 1, h = m3__fmix64(k) & mask;
  for (;;) {
    const m3__merge *e = &m->merges[h];
    if (e->key == k)
      return e;
    if (!e->key)
      return NULL;
    h = (h + 1) & mask;
  }
}

/* Later duplicates of a pair replace earlier ones, as a Rust HashMap
 * collected from the merges list does. */
static void merge_put(m3__tok_model *m, int32_t l, int32_t r, int32_t rank,
                      int32_t id) {
  uint64_t k = merge_key(l, r);
  size_t mask = m->merge_cap - 1, h = m3__fmix64(k) & mask;
  while (m->merges[h].key && m->merges[h].key != k)
    h = (h + 1) & mask;
  if (!m->merges[h].key)
    m->n_merges++;
  m->merges[h].key = k;
  m->merges[h].rank = rank;
  m->merges[h].id = id;
}

/* ---- loading ------------------------------------------------------------ */

static int unsupported(const m3__tok_model *m, const char *what) {
  return m3__seterr(M3_EUNSUPPORTED, "%s: %s is not supported (m3 reads "
                    "Llama-style BPE tokenizer.json; see docs/TOKENIZER.md)",
                    m->path, what);
}

static const char *jstr(const json_t *o, const char *key) {
  const json_t *v = json_object_get(o, key);
  return json_is_string(v) ? json_string_value(v) : NULL;
}

/* One normalizer of the supported kinds; sets the model's flags. */
static int load_normalizer(m3__tok_model *m, const json_t *n) {
  char what[160];
  const char *type = jstr(n, "type");
  if (!type)
    return m3__seterr(M3_EBADFORMAT, "%s: normalizer without a \"type\"",
                      m->path);
  if (strcmp(type, "Sequence") == 0) {
    const json_t *list = json_object_get(n, "normalizers");
    if (!json_is_array(list))
      return m3__seterr(M3_EBADFORMAT, "%s: normalizer Sequence without a "
                        "\"normalizers\" array", m->path);
    size_t i;
    const json_t *sub;
    json_array_foreach(list, i, sub) {
      int rc = load_normalizer(m, sub);
      if (rc)
        return rc;
    }
    return 0;
  }
  if (strcmp(type, "Prepend") == 0) {
    const char *p = jstr(n, "prepend");
    if (!p || strcmp(p, kSpace) != 0)
      return unsupported(m, "normalizer Prepend of anything but \"\xE2\x96\x81\"");
    m->hf_prepend = 1;
    return 0;
  }
  if (strcmp(type, "Replace") == 0) {
    const json_t *pat = json_object_get(n, "pattern");
    const char *s = json_is_object(pat) ? jstr(pat, "String") : NULL;
    const char *c = jstr(n, "content");
    if (!s || !c || strcmp(s, " ") != 0 || strcmp(c, kSpace) != 0)
      return unsupported(m, "normalizer Replace other than String \" \" -> "
                            "\"\xE2\x96\x81\"");
    m->hf_replace_space = 1;
    return 0;
  }
  snprintf(what, sizeof(what), "normalizer \"%s\"", type);
  return unsupported(m, what);
}

static int load_pre_tokenizer(m3__tok_model *m, const json_t *p) {
  char what[160];
  const char *type = jstr(p, "type");
  if (!type)
    return m3__seterr(M3_EBADFORMAT, "%s: pre_tokenizer without a \"type\"",
                      m->path);
  if (strcmp(type, "Sequence") == 0) {
    const json_t *list = json_object_get(p, "pretokenizers");
    if (!json_is_array(list))
      return m3__seterr(M3_EBADFORMAT, "%s: pre_tokenizer Sequence without a "
                        "\"pretokenizers\" array", m->path);
    size_t i;
    const json_t *sub;
    json_array_foreach(list, i, sub) {
      int rc = load_pre_tokenizer(m, sub);
      if (rc)
        return rc;
    }
    return 0;
  }
  if (strcmp(type, "Metaspace") == 0) {
    const char *rep = jstr(p, "replacement");
    if (!rep || strcmp(rep, kSpace) != 0)
      return unsupported(m, "Metaspace with a replacement other than "
                            "\"\xE2\x96\x81\"");
    const char *scheme = jstr(p, "prepend_scheme");
    const json_t *aps = json_object_get(p, "add_prefix_space");
    int prepend = 1;
    if (scheme)
      prepend = strcmp(scheme, "never") != 0; /* "first" == "always" here:
                                                 the text is one section */
    else if (json_is_boolean(aps))
      prepend = json_is_true(aps);
    const json_t *split = json_object_get(p, "split");
    m->hf_replace_space = 1;
    m->hf_prepend_if_missing = prepend;
    m->hf_split = split ? json_is_true(split) : 1;
    return 0;
  }
  snprintf(what, sizeof(what), "pre_tokenizer \"%s\"", type);
  return unsupported(m, what);
}

/* The piece of a merges entry: "a b" or ["a", "b"]. */
static int merge_parts(const json_t *e, const char **a, size_t *alen,
                       const char **b, size_t *blen) {
  if (json_is_string(e)) {
    const char *s = json_string_value(e);
    size_t n = json_string_length(e);
    const char *sp = memchr(s, ' ', n);
    if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s)))
      return -1;
    *a = s;
    *alen = (size_t)(sp - s);
    *b = sp + 1;
    *blen = n - *alen - 1;
    return 0;
  }
  if (json_is_array(e) && json_array_size(e) == 2 &&
      json_is_string(json_array_get(e, 0)) &&
      json_is_string(json_array_get(e, 1))) {
    *a = json_string_value(json_array_get(e, 0));
    *alen = json_string_length(json_array_get(e, 0));
    *b = json_string_value(json_array_get(e, 1));
    *blen = json_string_length(json_array_get(e, 1));
    return 0;
  }
  return -1;
}

int m3__tok_load_hf(m3__tok_model *m, const char *data, size_t len) {
  int rc = 0;
  json_error_t jerr;
  char *buf = NULL;
  json_t *root = json_loadb(data, len, 0, &jerr);
  if (!root)
    return m3__seterr(M3_EBADFORMAT, "%s:%d:%d: bad JSON: %s", m->path,
                      jerr.line, jerr.column, jerr.text);
  m->kind = M3_TOKENIZER_HF_BPE;
  const json_t *model = json_object_get(root, "model");
  if (!json_is_object(model)) {
    rc = m3__seterr(M3_EBADFORMAT, "%s: no \"model\" object: not a Hugging "
                    "Face tokenizer.json", m->path);
    goto out;
  }
  const char *type = jstr(model, "type");
  if (type && strcmp(type, "BPE") != 0) {
    char what[96];
    snprintf(what, sizeof(what), "model.type \"%.40s\" (only \"BPE\")", type);
    rc = unsupported(m, what);
    goto out;
  }
  const json_t *vocab = json_object_get(model, "vocab");
  const json_t *merges = json_object_get(model, "merges");
  if (!json_is_object(vocab) || !json_is_array(merges)) {
    rc = m3__seterr(M3_EBADFORMAT, "%s: model needs a \"vocab\" object and a "
                    "\"merges\" array", m->path);
    goto out;
  }
  const json_t *v;
  if ((v = json_object_get(model, "dropout")) && !json_is_null(v) &&
      !(json_is_number(v) && json_number_value(v) == 0.0)) {
    rc = unsupported(m, "model.dropout");
    goto out;
  }
  const char *cs = jstr(model, "continuing_subword_prefix");
  const char *ew = jstr(model, "end_of_word_suffix");
  if ((cs && *cs) || (ew && *ew)) {
    rc = unsupported(m, cs && *cs ? "model.continuing_subword_prefix"
                                   : "model.end_of_word_suffix");
    goto out;
  }
  m->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
  m->hf_fuse_unk = json_is_true(json_object_get(model, "fuse_unk"));
  m->hf_ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));

  const json_t *norm = json_object_get(root, "normalizer");
  if (norm && !json_is_null(norm) && (rc = load_normalizer(m, norm)) != 0)
    goto out;
  const json_t *pre = json_object_get(root, "pre_tokenizer");
  if (pre && !json_is_null(pre) && (rc = load_pre_tokenizer(m, pre)) != 0)
    goto out;

  /* ids: the vocab's and the added tokens'; every id below the largest
   * must have a piece */
  const json_t *added = json_object_get(root, "added_tokens");
  if (added && !json_is_array(added))
    added = NULL;
  json_int_t max_id = -1;
  size_t pool = 0;
  const char *key;
  json_object_foreach((json_t *)vocab, key, v) {
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) >= INT32_MAX / 2) {
      rc = m3__seterr(M3_EBADFORMAT, "%s: model.vocab[\"%.60s\"] is not a "
                      "valid id", m->path, key);
      goto out;
    }
    if (json_integer_value(v) > max_id)
      max_id = json_integer_value(v);
    pool += strlen(key);
  }
  size_t i;
  const json_t *at;
  json_array_foreach(added, i, at) {
    const json_t *idv = json_object_get(at, "id");
    const char *content = jstr(at, "content");
    if (!json_is_integer(idv) || json_integer_value(idv) < 0 ||
        json_integer_value(idv) >= INT32_MAX / 2 || !content || !*content) {
      rc = m3__seterr(M3_EBADFORMAT, "%s: added_tokens[%zu] needs an \"id\" "
                      "and a non-empty \"content\"", m->path, i);
      goto out;
    }
    if (json_integer_value(idv) > max_id)
      max_id = json_integer_value(idv);
    pool += strlen(content);
  }
  if (max_id < 0) {
    rc = m3__seterr(M3_EBADFORMAT, "%s: model.vocab is empty", m->path);
    goto out;
  }
  if ((rc = m3__tok_model_alloc(m, (uint32_t)max_id + 1, pool)) != 0)
    goto out;
  size_t off = 0;
  json_object_foreach((json_t *)vocab, key, v) {
    uint32_t id = (uint32_t)json_integer_value(v);
    size_t kl = strlen(key);
    if (m->piece[id]) {
      rc = m3__seterr(M3_EBADFORMAT, "%s: model.vocab gives id %u to both "
                      "\"%.60s\" and \"%.60s\"", m->path, id, m->piece[id], key);
      goto out;
    }
    m3__tok_model_set(m, id, key, kl, 0.0f, M3__PIECE_NORMAL, &off);
    if ((rc = m3__trie_insert(&m->pieces, key, kl, (int32_t)id, NULL)) != 0)
      goto out;
  }
  json_array_foreach(added, i, at) {
    uint32_t id = (uint32_t)json_integer_value(json_object_get(at, "id"));
    const char *content = jstr(at, "content");
    int special = json_is_true(json_object_get(at, "special"));
    if (m->piece[id]) {
      if (strcmp(m->piece[id], content) != 0) {
        rc = m3__seterr(M3_EBADFORMAT, "%s: added_tokens[%zu] \"%.60s\" has "
                        "id %u, which model.vocab gives to \"%.60s\"", m->path,
                        i, content, id, m->piece[id]);
        goto out;
      }
    } else {
      m3__tok_model_set(m, id, content, strlen(content), 0.0f,
                        M3__PIECE_NORMAL, &off);
      if ((rc = m3__trie_insert(&m->reserved, content, strlen(content),
                                (int32_t)id, NULL)) != 0)
        goto out;
    }
    if (special)
      m->type[id] = M3__PIECE_CONTROL;
  }
  for (uint32_t id = 0; id < m->n_pieces; id++) {
    if (!m->piece[id]) {
      rc = m3__seterr(M3_EBADFORMAT, "%s: id %u (below the largest, %u) has "
                      "no piece in model.vocab or added_tokens", m->path, id,
                      m->n_pieces - 1);
      goto out;
    }
  }

  const char *unk = jstr(model, "unk_token");
  if (unk) {
    m->unk = m3__trie_get(&m->pieces, unk, strlen(unk));
    if (m->unk < 0) {
      rc = m3__seterr(M3_EBADFORMAT, "%s: model.unk_token \"%.60s\" is not in "
                      "model.vocab", m->path, unk);
      goto out;
    }
    m->type[m->unk] = M3__PIECE_UNKNOWN;
  }
  if (m->byte_fallback) {
    m3__tok_model_find_bytes(m, 1);
    for (int b = 0; b < 256; b++)
      if (m->byte_id[b] >= 0)
        m->type[m->byte_id[b]] = M3__PIECE_BYTE;
  }

  /* merges: rank r merges (a, b) into the piece a+b */
  size_t nm = json_array_size(merges);
  m->merge_cap = 16;
  while (m->merge_cap < nm * 2)
    m->merge_cap *= 2;
  m->merges = calloc(m->merge_cap, sizeof(*m->merges));
  buf = malloc(2 * m->max_piece_len + 2);
  if (!m->merges || !buf) {
    rc = m3__seterr(M3_ENOMEM, "%s: %zu merges", m->path, nm);
    goto out;
  }
  const json_t *e;
  json_array_foreach(merges, i, e) {
    const char *a, *b;
    size_t al, bl;
    if (merge_parts(e, &a, &al, &b, &bl) != 0) {
      rc = m3__seterr(M3_EBADFORMAT, "%s: model.merges[%zu] is neither \"a b\" "
                      "nor [\"a\", \"b\"]", m->path, i);
      goto out;
    }
    int32_t la = m3__trie_get(&m->pieces, a, al);
    int32_t lb = m3__trie_get(&m->pieces, b, bl);
    int32_t lm = -1;
    if (la >= 0 && lb >= 0 && al + bl <= 2 * (size_t)m->max_piece_len) {
      memcpy(buf, a, al);
      memcpy(buf + al, b, bl);
      lm = m3__trie_get(&m->pieces, buf, al + bl);
    }
    if (la < 0 || lb < 0 || lm < 0) {
      rc = m3__seterr(M3_EBADFORMAT, "%s: model.merges[%zu] (\"%.*s\" + "
                      "\"%.*s\"): %s is not in model.vocab", m->path, i,
                      (int)(al > 60 ? 60 : al), a, (int)(bl > 60 ? 60 : bl), b,
                      la < 0 ? "the left part" : lb < 0 ? "the right part"
                                                        : "the merged piece");
      goto out;
    }
    merge_put(m, la, lb, (int32_t)i, lm);
    if (m->score[lm] == 0.0f)
      m->score[lm] = -(float)i - 1.0f;
  }

  /* special ids */
  const json_t *pp = json_object_get(root, "post_processor");
  const json_t *single = json_is_object(pp) ? json_object_get(pp, "single") : NULL;
  if (json_is_array(single) && json_array_size(single) > 0) {
    const json_t *st = json_object_get(json_array_get(single, 0), "SpecialToken");
    const char *bos = json_is_object(st) ? jstr(st, "id") : NULL;
    if (bos)
      m->bos = m3__tok_model_piece_id(m, bos);
  }
  if (m->bos < 0)
    m->bos = m3__tok_model_piece_id(m, "<s>");
  m->eos = m3__tok_model_piece_id(m, "</s>");
  m->pad = m3__tok_model_piece_id(m, "<pad>");
out:
  free(buf);
  json_decref(root);
  return rc;
}

/* ---- encoding ----------------------------------------------------------- */

typedef struct hsym {
  int32_t id;
  int32_t prev, next;
  uint32_t off, len; /* len 0: merged away */
} hsym;

typedef struct hmerge {
  int32_t rank, pos, id;
} hmerge;

/* priority: lower rank first, then lower position */
static inline int hbefore(const hmerge *a, const hmerge *b) {
  return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void hpush(hmerge *h, size_t *n, hmerge x) {
  size_t i = (*n)++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!hbefore(&x, &h[p]))
      break;
    h[i] = h[p];
    i = p;
  }
  h[i] = x;
}

static hmerge hpop(hmerge *h, size_t *n) {
  hmerge top = h[0], last = h[--(*n)];
  size_t i = 0;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, best = i;
    const hmerge *bp = &last;
    if (l < *n && hbefore(&h[l], bp)) {
      best = l;
      bp = &h[l];
    }
    if (r < *n && hbefore(&h[r], bp))
      best = r;
    if (best == i)
      break;
    h[i] = h[best];
    i = best;
  }
  if (*n)
    h[i] = last;
  return top;
}

/* BPE on one word norm[w0, w1), appending segments at s->seg + *nseg. */
static void encode_word(const m3__tok_model *m, m3__tok_scratch *s,
                        hsym *sy, hmerge *heap, size_t w0, size_t w1,
                        size_t *nseg) {
  const char *norm = s->norm;
  if (m->hf_ignore_merges) {
    int32_t id = m3__trie_get(&m->pieces, norm + w0, w1 - w0);
    if (id >= 0) {
      m3__tok_seg g = {(uint32_t)w0, (uint32_t)(w1 - w0), id};
      s->seg[(*nseg)++] = g;
      return;
    }
  }
  size_t n = 0;
  int32_t unk_len = 0;
  uint32_t unk_off = 0;
#define ADD(ID, OFF, LEN)                                                    \
  do {                                                                       \
    sy[n].id = (ID);                                                         \
    sy[n].prev = (int32_t)n - 1;                                             \
    sy[n].next = (int32_t)n + 1;                                             \
    sy[n].off = (uint32_t)(OFF);                                             \
    sy[n].len = (uint32_t)(LEN);                                             \
    n++;                                                                     \
  } while (0)
  for (size_t pos = w0; pos < w1;) {
    size_t cl = m3__utf8_len((uint8_t)norm[pos]);
    if (cl > w1 - pos)
      cl = w1 - pos;
    int32_t id = m3__trie_get(&m->pieces, norm + pos, cl);
    if (id < 0 && m->byte_fallback) {
      int all = 1;
      for (size_t b = 0; b < cl; b++)
        all &= m->byte_id[(uint8_t)norm[pos + b]] >= 0;
      if (all) {
        if (unk_len) {
          ADD(m->unk, unk_off, unk_len);
          unk_len = 0;
        }
        for (size_t b = 0; b < cl; b++)
          ADD(m->byte_id[(uint8_t)norm[pos + b]], pos + b, 1);
        pos += cl;
        continue;
      }
    }
    if (id >= 0) {
      if (unk_len) {
        ADD(m->unk, unk_off, unk_len);
        unk_len = 0;
      }
      ADD(id, pos, cl);
    } else if (m->unk >= 0) {
      if (unk_len && m->hf_fuse_unk) {
        unk_len += (int32_t)cl;
      } else {
        if (unk_len)
          ADD(m->unk, unk_off, unk_len);
        unk_off = (uint32_t)pos;
        unk_len = (int32_t)cl;
      }
    } /* else: no unk token, the character is dropped (as tokenizers does) */
    pos += cl;
  }
  if (unk_len)
    ADD(m->unk, unk_off, unk_len);
#undef ADD
  if (n == 0)
    return;
  sy[n - 1].next = -1;

  size_t nh = 0;
  for (size_t i = 0; i + 1 < n; i++) {
    const m3__merge *mg = merge_get(m, sy[i].id, sy[i + 1].id);
    if (mg) {
      hmerge x = {mg->rank, (int32_t)i, mg->id};
      hpush(heap, &nh, x);
    }
  }
  while (nh) {
    hmerge top = hpop(heap, &nh);
    hsym *cur = &sy[top.pos];
    if (cur->len == 0 || cur->next < 0)
      continue;
    hsym *right = &sy[cur->next];
    const m3__merge *mg = merge_get(m, cur->id, right->id);
    if (!mg || mg->id != top.id)
      continue; /* stale entry */
    cur->id = top.id;
    cur->len += right->len;
    cur->next = right->next;
    right->len = 0;
    if (cur->next >= 0)
      sy[cur->next].prev = top.pos;
    if (cur->prev >= 0) {
      const m3__merge *pm = merge_get(m, sy[cur->prev].id, cur->id);
      if (pm) {
        hmerge x = {pm->rank, cur->prev, pm->id};
        hpush(heap, &nh, x);
      }
    }
    if (cur->next >= 0) {
      const m3__merge *nm = merge_get(m, cur->id, sy[cur->next].id);
      if (nm) {
        hmerge x = {nm->rank, top.pos, nm->id};
        hpush(heap, &nh, x);
      }
    }
  }
  for (int32_t i = 0; i >= 0; i = sy[i].next) {
    m3__tok_seg g = {sy[i].off, sy[i].len, sy[i].id};
    s->seg[(*nseg)++] = g;
  }
}

int m3__hf_encode(const m3__tok_model *m, m3__tok_scratch *s,
                  const char *text, size_t len, size_t *nseg) {
  int rc;
  *nseg = 0;
  if (len == 0)
    return 0;
  /* normalize: spaces become ▁ (3 bytes), one ▁ in front */
  size_t need = len * 3 + 4;
  if ((rc = m3__tok_reserve((void **)&s->norm, &s->norm_cap, need)))
    return rc;
  char *o = s->norm;
  size_t n = 0;
  if (m->hf_prepend) {
    memcpy(o, kSpace, 3);
    n = 3;
  }
  for (size_t i = 0; i < len; i++) {
    if (text[i] == ' ' && m->hf_replace_space) {
      memcpy(o + n, kSpace, 3);
      n += 3;
    } else {
      o[n++] = text[i];
    }
  }
  if (m->hf_prepend_if_missing && !(n >= 3 && memcmp(o, kSpace, 3) == 0)) {
    memmove(o + 3, o, n);
    memcpy(o, kSpace, 3);
    n += 3;
  }
  /* symbols <= bytes (byte fallback: one per byte); heap <= 3 per symbol */
  if ((rc = m3__tok_reserve(&s->work, &s->work_cap,
                            n * sizeof(hsym) + 3 * n * sizeof(hmerge))))
    return rc;
  if ((rc = m3__tok_reserve((void **)&s->seg, &s->seg_cap,
                            n * sizeof(m3__tok_seg))))
    return rc;
  hsym *sy = s->work;
  hmerge *heap = (hmerge *)(sy + n);
  if (!m->hf_split) {
    encode_word(m, s, sy, heap, 0, n, nseg);
    return 0;
  }
  /* Metaspace split: every ▁ starts a new word */
  size_t w0 = 0;
  for (size_t i = 1; i + 3 <= n; i++) {
    if (memcmp(o + i, kSpace, 3) == 0) {
      encode_word(m, s, sy, heap, w0, i, nseg);
      w0 = i;
      i += 2;
    }
  }
  encode_word(m, s, sy, heap, w0, n, nseg);
  return 0;
}
