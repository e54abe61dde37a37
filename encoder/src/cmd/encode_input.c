/*
 * The input side of m3-encode: a knowledge base (a JSONL file, or a folder of
 * .txt/.md documents) into reference chunks with their token sequences and
 * chunk ids, in a deterministic order, one line or paragraph at a time (the
 * whole knowledge base is never held in memory).
 *
 * Chunking: a JSONL line's "text", or a document paragraph (lines up to a
 * blank line, newlines turned into spaces), is one chunk when its sequence
 * (m3/sequence.h: BOS + prefix + text) fits,
 *   n_prefix + len(tokenize(text)) <= max_tokens,
 * else (--long-chunks split, the default) it is cut at whitespace into the
 * longest pieces that fit (a word longer than the budget is cut between
 * UTF-8 characters); --long-chunks truncate keeps the first such piece only;
 * --long-chunks fail makes the line bad input. Each piece is
 * tokenized on its own, so tokenize(piece text) is exactly the chunk's
 * tokens and the stored text re-tokenizes to them (m3 store dump relies on
 * it).
 *
 * Chunk ids (docs/ENCODER.md, "id scheme"):
 *   JSONL "id": N           part 0 is N; part p >= 1 of a split line is
 *                           ENC_PIECE_ID(N, p) (bit 63 set, so it can
 *                           never be another line's id: JSON ids are
 *                           below 2^63)
 *   no id, default          hash of (file name, line, part): fnv1a64 of
 *                           "NAME\nLINE\nPART" through MurmurHash3's fmix64,
 *                           shifted right by 1 (63 bits)
 *   no id, --id-base B      B + the chunk's ordinal in the input
 * An id produced twice makes the second line bad; the message names the
 * line that took it first.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "encode_int.h"
#include "m3/error.h"
#include "m3/internal/hash.h"
#include "m3/sequence.h"

/* ---- a set of u64 ids (open addressing) ------------------------------- */

/* Each id keeps where it came from (the file's index and the line), so that a
 * collision can name both lines. */
typedef struct id_origin {
  uint32_t file;
  long line;
} id_origin;

typedef struct idset {
  uint64_t *slots; /* 0 is empty; id 0 is kept in has_zero */
  id_origin *from; /* beside slots */
  size_t cap, n;
  int has_zero;
  id_origin zero_from;
} idset;

/* Where id came from, or NULL when the set does not hold it. */
static const id_origin *idset_find(const idset *s, uint64_t id) {
  if (id == 0) return s->has_zero ? &s->zero_from : NULL;
  if (!s->cap) return NULL;
  for (size_t i = m3__fmix64(id) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
    if (s->slots[i] == id) return &s->from[i];
    if (s->slots[i] == 0) return NULL;
  }
}

static int idset_add(idset *s, uint64_t id, id_origin from) {
  if (id == 0) return s->has_zero = 1, s->zero_from = from, 0;
  if ((s->n + 1) * 2 > s->cap) {
    size_t ncap = s->cap ? s->cap * 2 : 1024;
    uint64_t *ns = calloc(ncap, sizeof *ns);
    id_origin *nf = malloc(ncap * sizeof *nf);
    if (!ns || !nf) {
      free(ns), free(nf);
      return m3__seterr(M3_ENOMEM, "input: out of memory for the chunk id set");
    }
    for (size_t i = 0; i < s->cap; i++) {
      if (!s->slots[i]) continue;
      size_t j = m3__fmix64(s->slots[i]) & (ncap - 1);
      while (ns[j]) j = (j + 1) & (ncap - 1);
      ns[j] = s->slots[i];
      nf[j] = s->from[i];
    }
    free(s->slots), free(s->from);
    s->slots = ns, s->from = nf, s->cap = ncap;
  }
  size_t i = m3__fmix64(id) & (s->cap - 1);
  while (s->slots[i] && s->slots[i] != id) i = (i + 1) & (s->cap - 1);
  if (!s->slots[i]) s->slots[i] = id, s->from[i] = from, s->n++;
  return 0;
}

/* ---- the reader ------------------------------------------------------- */

struct enc_input {
  enc_input_opts o;
  int is_dir, is_doc;        /* a folder of documents / one document file */
  char **files, **names;     /* full paths and names used in messages/ids */
  size_t n_files, file_i;
  FILE *f;                   /* JSONL being read */
  long line_no;
  char *line;
  size_t line_cap;
  char *doc;                 /* document being split into paragraphs */
  size_t doc_len, doc_pos;
  long doc_line;
  enc_chunk *pend;           /* chunks of the current line or paragraph */
  size_t n_pend, pend_i, cap_pend;
  uint64_t bytes_done, bytes_total, skipped, ordinal;
  uint64_t n_split, n_pieces, n_truncated; /* texts over the budget */
  int truncated;             /* chunk_text cut the current text short */
  unsigned emb_dim;
  idset ids;
  int32_t *tok;              /* max_tokens scratch ids */
  int n_prefix;              /* BOS + prefix tokens of every sequence */
  size_t window;             /* bytes a piece of budget tokens spans, nearly
                                always (chunk_text's first guess) */
  char *para;                /* paragraph scratch */
  size_t para_cap;
};

void enc_chunk_free(enc_chunk *c) {
  if (!c) return;
  free(c->text);
  free(c->tokens);
  free(c->emb);
  memset(c, 0, sizeof *c);
}

static int is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

static int has_ext(const char *name, const char *ext) {
  size_t n = strlen(name), e = strlen(ext);
  return n > e && !strcmp(name + n - e, ext);
}

static int is_doc_name(const char *name) {
  return has_ext(name, ".txt") || has_ext(name, ".md") || has_ext(name, ".markdown");
}

static int add_file(enc_input *in, const char *full, const char *name) {
  char **nf = realloc(in->files, (in->n_files + 1) * sizeof *nf);
  if (!nf) return m3__seterr(M3_ENOMEM, "input: out of memory");
  in->files = nf;
  char **nn = realloc(in->names, (in->n_files + 1) * sizeof *nn);
  if (!nn) return m3__seterr(M3_ENOMEM, "input: out of memory");
  in->names = nn;
  in->files[in->n_files] = strdup(full);
  in->names[in->n_files] = strdup(name);
  if (!in->files[in->n_files] || !in->names[in->n_files]) {
    free(in->files[in->n_files]);
    free(in->names[in->n_files]);
    return m3__seterr(M3_ENOMEM, "input: out of memory");
  }
  in->n_files++;
  struct stat st;
  if (stat(full, &st) == 0) in->bytes_total += (uint64_t)st.st_size;
  return 0;
}

/* Documents under dir (rel: path relative to the input folder), hidden
 * entries skipped. */
static int walk(enc_input *in, const char *dir, const char *rel) {
  DIR *d = opendir(dir);
  if (!d) return m3__syserr(errno, "input: cannot list %s", dir);
  int rc = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char full[4096], r[4096];
    snprintf(full, sizeof full, "%s/%s", dir, e->d_name);
    snprintf(r, sizeof r, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
    struct stat st;
    if (stat(full, &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) rc = walk(in, full, r);
    else if (S_ISREG(st.st_mode) && is_doc_name(e->d_name)) rc = add_file(in, full, r);
    if (rc) break;
  }
  closedir(d);
  return rc;
}

static char **sort_names; /* qsort has no user pointer; open is not reentrant here */
static int by_name(const void *a, const void *b) {
  return strcmp(sort_names[*(const size_t *)a], sort_names[*(const size_t *)b]);
}

int enc_input_open(const enc_input_opts *o, enc_input **out) {
  *out = NULL;
  enc_input *in = calloc(1, sizeof *in);
  if (!in) return m3__seterr(M3_ENOMEM, "input: out of memory");
  in->o = *o;
  in->emb_dim = o->emb_dim;
  int rc = 0;
  in->tok = malloc((size_t)o->max_tokens * sizeof *in->tok);
  if (!in->tok) {
    rc = m3__seterr(M3_ENOMEM, "input: out of memory");
    goto out;
  }
  size_t np = 0, nseq = 0;
  if ((rc = m3_seq_tokens(o->tok, o->prefix, NULL, 0, in->tok, (size_t)o->max_tokens, &nseq, &np)) != 0)
    goto out;
  in->n_prefix = (int)np;
  /* A piece's tokens each come from at most (the longest vocabulary piece)
   * x 3 bytes of text (NFKC maps some 3-byte characters to one byte): the
   * window chunk_text tries first. Where normalization shrinks text more
   * (runs of spaces), the window grows until the cut is the exact one. */
  size_t longest = 1, nv = m3_tokenizer_vocab_size(o->tok);
  for (size_t i = 0; i < nv; i++) {
    const char *pc = m3_tokenizer_id_to_piece(o->tok, (int32_t)i);
    size_t l = pc ? strlen(pc) : 0;
    if (l > longest) longest = l;
  }
  in->window = (size_t)(o->max_tokens > in->n_prefix ? o->max_tokens - in->n_prefix : 1) * 3 * longest + 16;
  if (o->max_tokens - in->n_prefix < 8) {
    rc = m3__seterr(M3_EINVAL, "--max-tokens %d leaves %d tokens after the %d of BOS and prefix (at least 8 are needed)",
                    o->max_tokens, o->max_tokens - in->n_prefix, in->n_prefix);
    goto out;
  }
  struct stat st;
  if (stat(o->path, &st) != 0) {
    rc = m3__syserr(errno, "input %s", o->path);
    goto out;
  }
  if (S_ISDIR(st.st_mode)) {
    in->is_dir = 1;
    if ((rc = walk(in, o->path, "")) != 0) goto out;
    /* Sort documents by relative name: the input order, and so the ids of
     * --id-base, must not depend on the directory's order. */
    size_t *idx = malloc((in->n_files + 1) * sizeof *idx);
    char **f2 = malloc((in->n_files + 1) * sizeof *f2), **n2 = malloc((in->n_files + 1) * sizeof *n2);
    if (!idx || !f2 || !n2) {
      free(idx), free(f2), free(n2);
      rc = m3__seterr(M3_ENOMEM, "input: out of memory");
      goto out;
    }
    for (size_t i = 0; i < in->n_files; i++) idx[i] = i;
    sort_names = in->names;
    qsort(idx, in->n_files, sizeof *idx, by_name);
    for (size_t i = 0; i < in->n_files; i++) f2[i] = in->files[idx[i]], n2[i] = in->names[idx[i]];
    free(in->files), free(in->names), free(idx);
    in->files = f2, in->names = n2;
    if (in->n_files == 0) {
      rc = m3__seterr(M3_ENOTFOUND, "input %s: no .txt or .md documents in the folder", o->path);
      goto out;
    }
  } else {
    const char *base = strrchr(o->path, '/');
    base = base ? base + 1 : o->path;
    in->is_doc = is_doc_name(base);
    if ((rc = add_file(in, o->path, base)) != 0) goto out;
  }
out:
  if (rc) enc_input_close(in);
  else *out = in;
  return rc;
}

void enc_input_close(enc_input *in) {
  if (!in) return;
  for (size_t i = 0; i < in->n_files; i++) free(in->files[i]), free(in->names[i]);
  free(in->files);
  free(in->names);
  if (in->f) fclose(in->f);
  free(in->line);
  free(in->doc);
  for (size_t i = in->pend_i; i < in->n_pend; i++) enc_chunk_free(&in->pend[i]);
  free(in->pend);
  free(in->ids.slots);
  free(in->ids.from);
  free(in->tok);
  free(in->para);
  free(in);
}

void enc_input_progress(const enc_input *in, uint64_t *done, uint64_t *total) {
  *done = in->bytes_done;
  *total = in->bytes_total;
}
uint64_t enc_input_skipped(const enc_input *in) { return in->skipped; }
void enc_input_long_counts(const enc_input *in, uint64_t *split, uint64_t *pieces,
                           uint64_t *truncated) {
  *split = in->n_split;
  *pieces = in->n_pieces;
  *truncated = in->n_truncated;
}
unsigned enc_input_emb_dim(const enc_input *in) { return in->emb_dim; }

/* ---- chunking ------------------------------------------------------------ */

/* Tokens of text[0..len) without BOS: the count, or budget + 1 when it
 * exceeds budget (ids hold the first budget), or a negative code. */
static long count_tokens(enc_input *in, const char *text, size_t len, int budget) {
  size_t n = 0;
  int rc = m3_tokenizer_encode(in->o.tok, text, len, 0, in->tok, (size_t)budget, &n);
  if (rc == M3_ERANGE) return budget + 1;
  if (rc) return rc;
  return (long)n;
}

static uint64_t hash_id(const char *name, long line, int part) {
  char buf[4200];
  int n = snprintf(buf, sizeof buf, "%s\n%ld\n%d", name, line, part);
  if (n < 0) n = 0;
  if ((size_t)n >= sizeof buf) n = sizeof buf - 1;
  return m3__fmix64(m3__fnv1a64(buf, (size_t)n)) >> 1;
}

/* Append a chunk for text[0..len), whose tokens (n of them) are known to
 * fit: its sequence, written by the rule m3 store dump recomputes. */
static int emit(enc_input *in, const char *text, size_t len, int n, long line) {
  if (in->n_pend == in->cap_pend) {
    size_t nc = in->cap_pend ? in->cap_pend * 2 : 8;
    enc_chunk *np = realloc(in->pend, nc * sizeof *np);
    if (!np) return m3__seterr(M3_ENOMEM, "input: out of memory");
    in->pend = np, in->cap_pend = nc;
  }
  enc_chunk *c = &in->pend[in->n_pend];
  memset(c, 0, sizeof *c);
  c->text = malloc(len + 1);
  size_t cap = (size_t)(in->n_prefix + n), got = 0, np = 0;
  c->tokens = malloc(cap * sizeof *c->tokens);
  if (!c->text || !c->tokens) {
    enc_chunk_free(c);
    return m3__seterr(M3_ENOMEM, "input: out of memory");
  }
  memcpy(c->text, text, len);
  c->text[len] = '\0';
  c->text_len = len;
  int rc = m3_seq_tokens(in->o.tok, in->o.prefix, text, len, c->tokens, cap, &got, &np);
  if (rc == 0 && (got != cap || np != (size_t)in->n_prefix))
    rc = m3__seterr(M3_EINTERNAL, "input: the chunk's sequence is %zu tokens, counted %zu", got, cap);
  if (rc) {
    enc_chunk_free(c);
    return rc;
  }
  c->n_tokens = (int)got;
  c->n_prefix = (int)np;
  c->line = line;
  c->part = (int)in->n_pend;
  in->n_pend++;
  return 0;
}

/* Split text into chunks that fit (see the top of the file). Bad input:
 * M3_EINVAL with the reason in m3_errmsg().
 *
 * Each piece is the longest prefix of words of the rest that fits, found
 * by bisection over the word ends, and every probe tokenizes its prefix. So
 * the probes stay inside a window of the rest whose own prefix does not fit
 * (in->window bytes, doubled while it does, which only text that
 * normalization shrinks needs): a piece costs what its neighbourhood costs,
 * not the whole rest of the line, and a line of L bytes O(L log L) instead
 * of O(L^2). */
static int chunk_text(enc_input *in, const char *text, size_t len, long line) {
  const int budget = in->o.max_tokens - in->n_prefix;
  size_t p = 0;
  in->truncated = 0;
  while (p < len && is_space((unsigned char)text[p])) p++;
  while (len > p && is_space((unsigned char)text[len - 1])) len--;
  if (p == len) return m3__seterr(M3_EINVAL, "the text is empty");
  size_t *ends = NULL, n_ends = 0, cap_ends = 0, k = 0;
  int rc = 0;
  /* Word ends, once for the whole text. */
  for (size_t i = p; i < len; i++) {
    if (is_space((unsigned char)text[i]) || (i + 1 < len && !is_space((unsigned char)text[i + 1])))
      continue;
    if (n_ends == cap_ends) {
      size_t nc = cap_ends ? cap_ends * 2 : 256;
      size_t *ne = realloc(ends, nc * sizeof *ne);
      if (!ne) { rc = m3__seterr(M3_ENOMEM, "input: out of memory"); goto out; }
      ends = ne, cap_ends = nc;
    }
    ends[n_ends++] = i + 1;
  }
  while (p < len) {
    while (k < n_ends && ends[k] <= p) k++;
    /* lim: the end of a window that does not fit, or of the whole rest. */
    size_t lim, win = in->window;
    long n;
    for (;;) {
      lim = len - p <= win ? len : p + win;
      n = count_tokens(in, text + p, lim - p, budget);
      if (n < 0 || n > budget || lim == len) break;
      win *= 2;
    }
    if (n < 0) { rc = (int)n; break; }
    if (n <= budget) { /* the rest fits */
      if (n > 0) rc = emit(in, text + p, len - p, (int)n, line);
      break;
    }
    if (in->n_pend == 0 && in->o.long_chunks == ENC_LONG_FAIL) {
      rc = m3__seterr(M3_EINVAL, "the text is more than the %d tokens a chunk may hold "
                      "(--long-chunks fail; split or truncate would keep it)", budget);
      break;
    }
    if (in->n_pend == 1 && in->o.long_chunks == ENC_LONG_TRUNCATE) {
      in->truncated = 1;
      break;
    }
    /* The longest prefix of words that fits: ends[lo] fits (lo = k - 1:
     * none), ends[hi + 1..] do not (those past lim are longer than a
     * prefix that does not fit). */
    long lo = (long)k - 1, hi = lo;
    while ((size_t)(hi + 1) < n_ends && ends[hi + 1] <= lim) hi++;
    if (hi >= 0 && ends[hi] == lim) hi--; /* lim itself does not fit */
    while (lo < hi) {
      long mid = (lo + hi + 1) / 2;
      long m = count_tokens(in, text + p, ends[mid] - p, budget);
      if (m < 0) { rc = (int)m; goto out; }
      if (m <= budget) lo = mid;
      else hi = mid - 1;
    }
    size_t e;
    if (lo >= (long)k) {
      e = ends[lo];
    } else {
      /* One word longer than the budget: cut it between UTF-8 characters
       * (text[p..b) does not fit: the word's end, or lim inside it). */
      size_t wend = k < n_ends ? ends[k] : len;
      size_t a = p, b = wend < lim ? wend : lim; /* text[p..a) fits (a > p once found) */
      while (b - a > 1) {
        size_t mid = a + (b - a) / 2;
        while (mid > a && ((unsigned char)text[mid] & 0xC0) == 0x80) mid--;
        if (mid == a) {
          mid = a + (b - a) / 2;
          while (mid < b && ((unsigned char)text[mid] & 0xC0) == 0x80) mid++;
          if (mid == b) break;
        }
        long m = count_tokens(in, text + p, mid - p, budget);
        if (m < 0) { rc = (int)m; goto out; }
        if (m <= budget) a = mid;
        else b = mid;
      }
      e = a > p ? a : wend;
      if (e == wend && count_tokens(in, text + p, e - p, budget) > budget) {
        rc = m3__seterr(M3_EINVAL, "cannot split the text into pieces of at most %d tokens", budget);
        goto out;
      }
    }
    long m = count_tokens(in, text + p, e - p, budget);
    if (m < 0) { rc = (int)m; goto out; }
    if (m > 0 && (rc = emit(in, text + p, e - p, (int)m, line)) != 0) goto out;
    p = e;
    while (p < len && is_space((unsigned char)text[p])) p++;
  }
out:
  free(ends);
  if (!rc && in->n_pend == 0) rc = m3__seterr(M3_EINVAL, "the text gives no tokens");
  return rc;
}

/* Count a text over the budget once its line is accepted. */
static void count_long(enc_input *in, int truncated) {
  if (truncated) in->n_truncated++;
  else if (in->n_pend > 1) in->n_split++, in->n_pieces += in->n_pend;
}

static void drop_pending(enc_input *in) {
  for (size_t i = in->pend_i; i < in->n_pend; i++) enc_chunk_free(&in->pend[i]);
  in->n_pend = in->pend_i = 0;
}

/* Give the pending chunks their ids and check them; bad input M3_EINVAL. */
static int assign_ids(enc_input *in, const char *name, long line, int has_id, uint64_t id) {
  for (size_t i = 0; i < in->n_pend; i++) {
    enc_chunk *c = &in->pend[i];
    if (has_id) {
      /* JSON ids are below 2^63 (parse_jsonl takes them as int64), so a
       * piece's id, with bit 63 set, is never a line's own. */
      if (i > 0 && (id > ENC_PIECE_MAX_N || i > ENC_PIECE_MAX_PART))
        return m3__seterr(M3_EINVAL, "\"id\" %llu: the text needs %zu pieces; a split line's "
                          "id must be below 2^47 and its pieces at most %d (use --long-chunks "
                          "truncate, or a shorter text)", (unsigned long long)id, in->n_pend,
                          ENC_PIECE_MAX_PART + 1);
      c->id = i == 0 ? id : ENC_PIECE_ID(id, i);
    } else if (in->o.ids == ENC_ID_SEQUENTIAL) {
      c->id = in->o.id_base + in->ordinal + i;
    } else {
      c->id = hash_id(name, line, (int)i);
    }
    c->src = name;
  }
  if (in->o.sample_only) return 0;
  for (size_t i = 0; i < in->n_pend; i++) {
    uint64_t cid = in->pend[i].id;
    const id_origin *o = idset_find(&in->ids, cid);
    if (o)
      return m3__seterr(M3_EINVAL, "chunk id %llu (part %zu) is already used by %s:%ld",
                        (unsigned long long)cid, i, in->names[o->file], o->line);
    for (size_t j = 0; j < i; j++)
      if (in->pend[j].id == cid)
        return m3__seterr(M3_EINVAL, "chunk id %llu is given to parts %zu and %zu of this line",
                          (unsigned long long)cid, j, i);
  }
  id_origin here = {.file = (uint32_t)in->file_i, .line = line};
  for (size_t i = 0; i < in->n_pend; i++) {
    int rc = idset_add(&in->ids, in->pend[i].id, here);
    if (rc) return rc;
  }
  count_long(in, in->truncated);
  in->ordinal += in->n_pend;
  return 0;
}

/* A bad line: report and skip it, or stop with FILE:LINE: reason. */
static int bad_line(enc_input *in, const char *name, long line) {
  char msg[1024];
  snprintf(msg, sizeof msg, "%s", m3_errmsg());
  drop_pending(in);
  if (!in->o.skip_bad) return m3__seterr(M3_EBADFORMAT, "%s:%ld: %s", name, line, msg);
  in->skipped++;
  if (in->o.report) {
    fprintf(in->o.report, "%s:%ld: %s\n", name, line, msg);
    fflush(in->o.report);
  }
  return 0;
}

static int parse_jsonl(enc_input *in, const char *name, const char *buf, size_t len) {
  json_error_t jerr;
  json_t *j = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
  int rc = 0;
  if (!j) return m3__seterr(M3_EINVAL, "not valid JSON: %s (column %d)", jerr.text, jerr.column);
  if (!json_is_object(j)) {
    rc = m3__seterr(M3_EINVAL, "a JSON object {\"text\": ...} is expected");
    goto out;
  }
  json_t *text = json_object_get(j, "text"), *id = json_object_get(j, "id");
  json_t *emb = json_object_get(j, "embedding"), *meta = json_object_get(j, "meta");
  if (!json_is_string(text)) {
    rc = m3__seterr(M3_EINVAL, "\"text\" is %s", text ? "not a string" : "missing");
    goto out;
  }
  int has_id = id && !json_is_null(id);
  if (has_id && (!json_is_integer(id) || json_integer_value(id) < 0)) {
    rc = m3__seterr(M3_EINVAL, "\"id\" must be a non-negative integer");
    goto out;
  }
  if (meta && !json_is_object(meta) && !json_is_null(meta)) {
    rc = m3__seterr(M3_EINVAL, "\"meta\" must be an object");
    goto out;
  }
  float *vec = NULL;
  size_t dim = 0;
  if (in->o.external_emb && !in->o.sample_only) {
    if (!json_is_array(emb)) {
      rc = m3__seterr(M3_EINVAL, "\"embedding\" is %s (--embed external needs one per line)",
                      emb ? "not an array of numbers" : "missing");
      goto out;
    }
    dim = json_array_size(emb);
    if (dim == 0 || dim > 65535) {
      rc = m3__seterr(M3_EINVAL, "\"embedding\" has %zu values (1..65535)", dim);
      goto out;
    }
    if (in->emb_dim && dim != in->emb_dim) {
      rc = m3__seterr(M3_EINVAL, "\"embedding\" has %zu values, expected %u (the store's embedding dims)",
                      dim, in->emb_dim);
      goto out;
    }
    for (size_t i = 0; i < dim; i++) {
      json_t *x = json_array_get(emb, i);
      if (!json_is_number(x) || !isfinite(json_number_value(x))) {
        rc = m3__seterr(M3_EINVAL, "\"embedding\"[%zu] is not a finite number", i);
        goto out;
      }
    }
  }
  if ((rc = chunk_text(in, json_string_value(text), json_string_length(text), in->line_no)) != 0)
    goto out;
  if ((rc = assign_ids(in, name, in->line_no, has_id, has_id ? (uint64_t)json_integer_value(id) : 0)) != 0)
    goto out;
  if (dim) {
    for (size_t i = 0; i < in->n_pend; i++) {
      vec = malloc(dim * sizeof *vec);
      if (!vec) { rc = m3__seterr(M3_ENOMEM, "input: out of memory"); goto out; }
      for (size_t k = 0; k < dim; k++) vec[k] = (float)json_number_value(json_array_get(emb, k));
      in->pend[i].emb = vec;
    }
    if (!in->emb_dim) in->emb_dim = (unsigned)dim;
  }
out:
  json_decref(j);
  return rc;
}

/* The next paragraph of the current document into in->para; 0 at its end. */
static int next_paragraph(enc_input *in, size_t *plen, long *pline) {
  const char *d = in->doc;
  size_t n = in->doc_len, p = in->doc_pos, len = 0;
  long line = in->doc_line;
  /* skip blank lines */
  for (;;) {
    size_t q = p;
    while (q < n && d[q] != '\n' && is_space((unsigned char)d[q])) q++;
    if (q < n && d[q] == '\n') { p = q + 1, line++; continue; }
    if (q >= n) { in->doc_pos = n, in->doc_line = line; return 0; }
    break;
  }
  *pline = line;
  for (;;) {
    size_t e = p;
    while (e < n && d[e] != '\n') e++;
    size_t q = p;
    while (q < e && is_space((unsigned char)d[q])) q++;
    if (q == e) break; /* blank line ends the paragraph */
    size_t need = len + (e - p) + 2;
    if (need > in->para_cap) {
      size_t nc = need * 2;
      char *np = realloc(in->para, nc);
      if (!np) return m3__seterr(M3_ENOMEM, "input: out of memory");
      in->para = np, in->para_cap = nc;
    }
    if (len) in->para[len++] = ' ';
    for (size_t i = p; i < e; i++) in->para[len++] = d[i] == '\r' ? ' ' : d[i];
    line++;
    p = e < n ? e + 1 : e;
    if (e >= n) break;
  }
  in->doc_pos = p, in->doc_line = line;
  *plen = len;
  return 1;
}

/* Read the next line or paragraph into the pending chunks. 1: one was
 * read (it may have given no chunk: skipped), 0: end of input, < 0 error. */
static int fill(enc_input *in) {
  for (;;) {
    if (in->file_i >= in->n_files) return 0;
    const char *name = in->names[in->file_i];
    if (in->is_dir || in->is_doc) {
      if (!in->doc) {
        int rc = enc_read_file(in->files[in->file_i], &in->doc, &in->doc_len);
        if (rc) return rc;
        in->doc_pos = 0, in->doc_line = 1;
      }
      size_t plen = 0;
      long pline = 0;
      int got = next_paragraph(in, &plen, &pline);
      if (got < 0) return got;
      if (got == 0) {
        in->bytes_done += in->doc_len;
        free(in->doc);
        in->doc = NULL;
        in->file_i++;
        continue;
      }
      int rc = chunk_text(in, in->para, plen, pline);
      if (rc == 0) rc = assign_ids(in, name, pline, 0, 0);
      if (rc == M3_EINVAL) rc = bad_line(in, name, pline);
      return rc ? rc : 1;
    }
    if (!in->f) {
      in->f = fopen(in->files[in->file_i], "rb");
      if (!in->f) return m3__syserr(errno, "input %s", in->files[in->file_i]);
      in->line_no = 0;
    }
    ssize_t n = getline(&in->line, &in->line_cap, in->f);
    if (n < 0) {
      int err = ferror(in->f) ? errno : 0;
      fclose(in->f);
      in->f = NULL;
      if (err) return m3__syserr(err, "input %s", in->files[in->file_i]);
      in->file_i++;
      continue;
    }
    in->line_no++;
    in->bytes_done += (uint64_t)n;
    while (n > 0 && (in->line[n - 1] == '\n' || in->line[n - 1] == '\r')) n--;
    ssize_t q = 0;
    while (q < n && is_space((unsigned char)in->line[q])) q++;
    if (q == n) continue; /* blank line */
    int rc = parse_jsonl(in, name, in->line, (size_t)n);
    if (rc == M3_EINVAL) rc = bad_line(in, name, in->line_no);
    return rc ? rc : 1;
  }
}

int enc_input_next(enc_input *in, enc_chunk *c) {
  while (in->pend_i == in->n_pend) {
    in->n_pend = in->pend_i = 0;
    int rc = fill(in);
    if (rc <= 0) {
      if (rc < 0) drop_pending(in);
      return rc;
    }
  }
  *c = in->pend[in->pend_i];
  memset(&in->pend[in->pend_i], 0, sizeof in->pend[0]);
  in->pend_i++;
  return 1;
}
