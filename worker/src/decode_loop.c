/*
 * The reference worker's loop (m3_generate, m3/decode.h): greedy decode of
 * a batch in lockstep, with a retrieval round per 64-token window submitted
 * async the moment the window's last token is known, decoded into the
 * "next" of two attention-buffer sets while the decode goes on, and waited
 * for (the stall) at the first step of the next window. Also the trace.
 *
 * Threads: the round's memory and done callbacks run on the cluster's
 * worker threads (M3_CLUSTER_COMPLETION_CALLBACK); they write only the
 * "next" buffers and the round's control block, which the loop reads after
 * the done callback signalled it (mutex + condition variable). The decode
 * reads only the "current" buffers.
 */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "m3/decode.h"
#include "m3/error.h"

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* One attention-buffer set and the round in flight into it. */
typedef struct bufset {
  m3_attn *a;
  float *kv;
  int32_t *pos;
  uint64_t *ids;
  float *scores;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int pending, done, rc; /* under mu (done, rc) */
  double t_submit, t_done, decode_ms, query_ms;
  int window;
  float *qvec; /* (n_seq, query_dim) hidden queries, alive while the op runs */
} bufset;

static int mem_fn(void *ud, const m3_client_memory *m) {
  bufset *b = ud;
  double t0 = now_ms();
  int rc = m3_attn_memory_fn(b->a, m);
  b->decode_ms += now_ms() - t0; /* callbacks of one op run one at a time */
  return rc;
}

static void done_fn(void *ud, const m3_cluster_result *res) {
  bufset *b = ud;
  pthread_mutex_lock(&b->mu);
  b->rc = res->rc;
  b->t_done = now_ms();
  b->done = 1;
  pthread_cond_signal(&b->cv);
  pthread_mutex_unlock(&b->mu);
}

/* Wait for b's op, close its round, record it in res. */
static int round_wait(bufset *b, m3_generate_result *res, int n_seq) {
  double t0 = now_ms();
  pthread_mutex_lock(&b->mu);
  while (!b->done) pthread_cond_wait(&b->cv, &b->mu);
  pthread_mutex_unlock(&b->mu);
  double stall = now_ms() - t0;
  b->pending = 0;
  m3_generate_round *r = &res->rounds[res->n_rounds++];
  memset(r, 0, sizeof *r);
  int rc = m3_attn_finish(b->a, &r->stats);
  r->window = b->window;
  r->retrieve_ms = b->t_done - b->t_submit;
  r->query_ms = b->query_ms;
  r->decode_ms = b->decode_ms;
  r->stall_ms = stall;
  r->rc = b->rc;
  r->ids = malloc((size_t)n_seq * res->k * sizeof(uint64_t));
  if (!r->ids) return m3__seterr(M3_ENOMEM, "generate: out of memory");
  memcpy(r->ids, b->ids, (size_t)n_seq * res->k * sizeof(uint64_t));
  return rc;
}

/* The text of tokens [from, from + 64) of a sequence, into *buf (grown). */
static int window_text(m3_tokenizer *tok, const int32_t *ids, char **buf, size_t *cap) {
  size_t len;
  for (;;) {
    int rc = m3_tokenizer_decode(tok, ids, M3_DECODE_WINDOW, *buf, *cap, &len);
    if (rc != M3_ERANGE || len < *cap) return rc;
    char *nb = realloc(*buf, len + 1);
    if (!nb) return m3__seterr(M3_ENOMEM, "generate: out of memory");
    *buf = nb, *cap = len + 1;
  }
}

/* Hidden-state queries of the windows ending at i into b->qvec. */
static int hidden_queries(bufset *b, const m3_generate_opts *o, const int32_t *hist,
                          size_t hstride, int n_seq, int i) {
  const m3_forward_opts fo = m3_forward_get_opts(o->query_fwd);
  const m3_spec sp = m3_forward_spec(o->query_fwd);
  const int np = o->n_query_prefix, S = np + M3_DECODE_WINDOW;
  const int32_t bos = m3_tokenizer_bos_id(o->tok);
  if (n_seq > fo.max_batch || S > fo.max_seq || !fo.hidden || fo.hidden != o->query_hidden)
    return m3__seterr(M3_EINVAL,
                      "generate: the query runner takes %d sequences of %d tokens with its hidden "
                      "buffer; the round needs %d of %d with query_hidden",
                      fo.max_batch, fo.max_seq, n_seq, S);
  size_t nkv = m3_spec_vectors(&sp) * sp.head_dim, npos = m3_spec_positions(&sp);
  int32_t *toks = calloc((size_t)n_seq * S, sizeof *toks), *lens = calloc((size_t)n_seq, sizeof *lens);
  int32_t *npre = calloc((size_t)n_seq, sizeof *npre);
  uint16_t *pos = malloc((size_t)n_seq * npos * sizeof *pos);
  float *kv = malloc((size_t)n_seq * nkv * sizeof *kv);
  int rc = 0;
  if (!toks || !lens || !npre || !pos || !kv) {
    rc = m3__seterr(M3_ENOMEM, "generate: out of memory");
    goto out;
  }
  for (int s = 0; s < n_seq; s++) {
    int32_t *row = toks + (size_t)s * S;
    int n = np;
    memcpy(row, o->query_prefix, (size_t)np * sizeof *row);
    const int32_t *w = hist + s * hstride + (i + 1 - M3_DECODE_WINDOW);
    for (int j = 0; j < M3_DECODE_WINDOW; j++)
      if (w[j] != bos) row[n++] = w[j];
    lens[s] = n;
    npre[s] = np;
  }
  m3_batch mb = {n_seq, S, toks, lens, npre};
  m3_memories mo = {pos, kv, NULL};
  if ((rc = m3_forward_run(o->query_fwd, &mb, &mo))) goto out;
  memcpy(b->qvec, o->query_hidden, (size_t)n_seq * o->query_dim * sizeof(float));
out:
  free(toks), free(lens), free(npre), free(pos), free(kv);
  return rc;
}

static int round_submit(bufset *b, const m3_generate_opts *o, const int32_t *hist, size_t hstride,
                        int n_seq, int i, char **texts, size_t *caps) {
  int rc;
  m3_client_query q[256];
  m3_attn_round r = {.kv = b->kv, .pos = b->pos, .ids = b->ids, .scores = b->scores};
  if (n_seq > 256) return m3__seterr(M3_EINVAL, "generate: at most 256 sequences");
  double tq = now_ms();
  if (o->query_fwd) {
    if ((rc = hidden_queries(b, o, hist, hstride, n_seq, i))) return rc;
    for (int s = 0; s < n_seq; s++)
      q[s] = (m3_client_query){.vector = b->qvec + (size_t)s * o->query_dim,
                               .dim = (uint32_t)o->query_dim};
  } else {
    for (int s = 0; s < n_seq; s++) {
      if ((rc = window_text(o->tok, hist + s * hstride + (i + 1 - M3_DECODE_WINDOW), &texts[s],
                            &caps[s])))
        return rc;
      q[s] = (m3_client_query){.text = texts[s]};
    }
  }
  b->query_ms = now_ms() - tq;
  if ((rc = m3_attn_begin(b->a, &r))) return rc;
  b->done = 0, b->rc = 0, b->decode_ms = 0, b->window = i / M3_DECODE_WINDOW;
  b->t_submit = now_ms();
  rc = m3_cluster_retrieve_async(o->cl, q, (size_t)n_seq, o->k, 0, mem_fn, done_fn, b, NULL);
  if (rc) {
    m3_attn_finish(b->a, NULL);
    return rc;
  }
  b->pending = 1;
  return 0;
}

static int argmax(const float *v, int n) {
  int best = 0;
  for (int j = 1; j < n; j++)
    if (v[j] > v[best]) best = j;
  return best;
}

int m3_generate(m3_decoder *d, const int32_t *const *prompts, const int *plen, int n_seq,
                const m3_generate_opts *o, m3_generate_result *res) {
  int rc = 0, max_plen = 0;
  memset(res, 0, sizeof *res);
  const m3_decode_opts dopt = m3_decoder_get_opts(d);
  const int rounds = o->memory && o->k > 0;
  bufset bs[2];
  memset(bs, 0, sizeof bs);
  char **texts = NULL;
  size_t *caps = NULL;
  int32_t *hist = NULL, *tok = NULL, *ngen = NULL;
  float *logits = NULL;
  for (int s = 0; s < n_seq; s++) max_plen = plen[s] > max_plen ? plen[s] : max_plen;
  const int T = max_plen + o->n_new - 1;
  if (n_seq < 1 || n_seq > dopt.max_batch || o->n_new < 1 || T > dopt.max_ctx)
    return m3__seterr(M3_EINVAL,
                      "generate: %d sequences (1..%d) of up to %d + %d tokens (context %d)", n_seq,
                      dopt.max_batch, max_plen, o->n_new, dopt.max_ctx);
  for (int s = 0; s < n_seq; s++)
    if (plen[s] < 1) return m3__seterr(M3_EINVAL, "generate: prompt %d is empty", s);
  if (rounds && (!o->cl || !o->codecs || !o->tok))
    return m3__seterr(M3_EINVAL, "generate: rounds need a cluster, a codec set and a tokenizer");
  if (rounds && o->query_fwd && (!o->query_hidden || o->query_dim < 1 || o->n_query_prefix < 0 ||
                                 (o->n_query_prefix && !o->query_prefix)))
    return m3__seterr(M3_EINVAL, "generate: hidden queries need query_hidden, query_dim >= 1 and "
                                 "the prefix ids");
  res->n_seq = n_seq, res->n_new = o->n_new, res->k = rounds ? o->k : 0;
  res->tokens = calloc((size_t)n_seq * o->n_new, sizeof(int32_t));
  res->rounds = calloc((size_t)T / M3_DECODE_WINDOW + 1, sizeof *res->rounds);
  size_t hstride = (size_t)T + 1;
  hist = calloc((size_t)n_seq * hstride, sizeof(int32_t));
  tok = calloc((size_t)n_seq, sizeof(int32_t));
  ngen = calloc((size_t)n_seq, sizeof(int32_t));
  texts = calloc((size_t)n_seq, sizeof(char *));
  caps = calloc((size_t)n_seq, sizeof(size_t));
  if (!res->tokens || !res->rounds || !hist || !tok || !ngen || !texts || !caps) {
    rc = m3__seterr(M3_ENOMEM, "generate: out of memory");
    goto out;
  }
  const int vocab = m3_decoder_vocab(d);
  logits = malloc((size_t)n_seq * vocab * sizeof(float));
  if (!logits) {
    rc = m3__seterr(M3_ENOMEM, "generate: out of memory");
    goto out;
  }
  if (rounds) {
    m3_attn_geom g;
    if ((rc = m3_decoder_mem_geom(d, o->k, &g))) goto out;
    for (int b = 0; b < 2; b++) {
      pthread_mutex_init(&bs[b].mu, NULL);
      pthread_cond_init(&bs[b].cv, NULL);
      bs[b].kv = malloc(m3_attn_kv_elems(&g) * sizeof(float));
      bs[b].pos = malloc(m3_attn_pos_elems(&g) * sizeof(int32_t));
      bs[b].ids = malloc((size_t)g.n_queries * o->k * sizeof(uint64_t));
      bs[b].scores = malloc((size_t)g.n_queries * o->k * sizeof(float));
      if (o->query_fwd) bs[b].qvec = malloc((size_t)n_seq * o->query_dim * sizeof(float));
      if (!bs[b].kv || !bs[b].pos || !bs[b].ids || !bs[b].scores ||
          (o->query_fwd && !bs[b].qvec)) {
        rc = m3__seterr(M3_ENOMEM, "generate: cannot allocate attention buffers");
        goto out;
      }
      if ((rc = m3_attn_create_host(o->codecs, &g, &bs[b].a))) goto out;
    }
  }

  double t_start = now_ms(), t_steps = 0;
  int cur = -1; /* the buffer set the steps attend to; -1: none yet */
  for (int i = 0; i < T; i++) {
    for (int s = 0; s < n_seq; s++) {
      if (i < plen[s]) tok[s] = prompts[s][i];
      hist[s * hstride + i] = tok[s];
    }
    int nxt = cur == 0 ? 1 : 0;
    if (rounds && bs[nxt].pending && i % M3_DECODE_WINDOW == 0) {
      if ((rc = round_wait(&bs[nxt], res, n_seq))) goto out;
      cur = nxt;
      nxt = cur == 0 ? 1 : 0;
    }
    /* The window's last token is known: its round goes out now, unless no
     * step is left to use it. */
    if (rounds && i % M3_DECODE_WINDOW == M3_DECODE_WINDOW - 1 && i + 1 < T)
      if ((rc = round_submit(&bs[nxt], o, hist, hstride, n_seq, i, texts, caps))) goto out;
    m3_decode_step st = {.n_seq = n_seq,
                         .ctx = i,
                         .pos_offset = o->memory ? M3_ATTN_MEM_SPAN : 0,
                         .tokens = tok,
                         .mem_kv = cur >= 0 ? bs[cur].kv : NULL,
                         .mem_pos = cur >= 0 ? bs[cur].pos : NULL,
                         .mem_base = o->mem_base,
                         .mem_version = (uint64_t)res->n_rounds,
                         .logits = logits};
    double t0 = now_ms();
    if ((rc = m3_decoder_step(d, &st))) goto out;
    t_steps += now_ms() - t0;
    res->n_steps++;
    for (int s = 0; s < n_seq; s++) {
      if (i < plen[s] - 1 || ngen[s] >= o->n_new) continue;
      tok[s] = argmax(logits + (size_t)s * vocab, vocab);
      res->tokens[(size_t)s * o->n_new + ngen[s]++] = tok[s];
    }
  }
  res->wall_s = (now_ms() - t_start) / 1e3;
  res->step_s = t_steps / 1e3;
out:
  for (int b = 0; b < 2; b++) {
    if (bs[b].pending) { /* an error left an op in flight: let it end first */
      pthread_mutex_lock(&bs[b].mu);
      while (!bs[b].done) pthread_cond_wait(&bs[b].cv, &bs[b].mu);
      pthread_mutex_unlock(&bs[b].mu);
      m3_attn_finish(bs[b].a, NULL);
    }
    if (rounds) {
      pthread_mutex_destroy(&bs[b].mu);
      pthread_cond_destroy(&bs[b].cv);
    }
    m3_attn_destroy(bs[b].a);
    free(bs[b].kv);
    free(bs[b].pos);
    free(bs[b].ids);
    free(bs[b].scores);
    free(bs[b].qvec);
  }
  for (int s = 0; texts && s < n_seq; s++) free(texts[s]);
  free(texts);
  free(caps);
  free(hist);
  free(tok);
  free(ngen);
  free(logits);
  return rc;
}

void m3_generate_result_free(m3_generate_result *res) {
  if (!res) return;
  for (int r = 0; res->rounds && r < res->n_rounds; r++) free(res->rounds[r].ids);
  free(res->rounds);
  free(res->tokens);
  memset(res, 0, sizeof *res);
}

char *m3_generate_trace_json(const m3_generate_result *res, const int32_t *const *prompts,
                             const int *plen, int memory) {
  json_t *root = json_object(), *seqs = json_array();
  json_object_set_new(root, "format", json_string("m3-decode-trace/1"));
  json_object_set_new(root, "memory", json_boolean(memory));
  json_object_set_new(root, "k", json_integer(res->k));
  json_object_set_new(root, "window", json_integer(M3_DECODE_WINDOW));
  for (int s = 0; s < res->n_seq; s++) {
    json_t *seq = json_object(), *p = json_array(), *t = json_array(), *ws = json_array();
    for (int j = 0; j < plen[s]; j++) json_array_append_new(p, json_integer(prompts[s][j]));
    for (int j = 0; j < res->n_new; j++)
      json_array_append_new(t, json_integer(res->tokens[(size_t)s * res->n_new + j]));
    for (int r = 0; r < res->n_rounds; r++) {
      json_t *w = json_object(), *ids = json_array();
      json_object_set_new(w, "window", json_integer(res->rounds[r].window));
      for (uint32_t q = 0; q < res->k; q++) {
        uint64_t id = res->rounds[r].ids[(size_t)s * res->k + q];
        if (id != UINT64_MAX) json_array_append_new(ids, json_integer((json_int_t)id));
      }
      json_object_set_new(w, "ids", ids);
      json_array_append_new(ws, w);
    }
    json_object_set_new(seq, "prompt", p);
    json_object_set_new(seq, "tokens", t);
    json_object_set_new(seq, "windows", ws);
    json_array_append_new(seqs, seq);
  }
  json_object_set_new(root, "sequences", seqs);
  char *out = json_dumps(root, JSON_COMPACT);
  json_decref(root);
  return out;
}
