/*
 * m3-encode: from a knowledge base of text to explicit memories in a store.
 *
 *   m3-encode --model DIR --input PATH --store DIR [options]   encode
 *   m3-encode train-codec --model DIR --input PATH --out FILE   train a codec set
 *   m3-encode test-model --out DIR                              random model + tokenizer
 *
 * This file holds the dispatcher, the shared helpers and the encode command:
 * a pipeline of one reader (the main thread: input, chunking, tokenizing,
 * batching in input order, skipping batches already in the store), N forward
 * workers (one m3_forward runner each over one shared model: forward and
 * embeddings), N quantize workers (the codec) and one writer that adds the
 * batches to one bulk ingest of the store (m3/store.h) in input order,
 * checkpointed every few seconds and at the end. The stages overlap, with
 * the batch pool bounding every queue, so the pipeline runs at its slowest
 * stage's rate; the summary reports each stage's work, share and rate.
 * Batches are formed from the input alone, so every chunk is always
 * computed in the same batch, and a rerun after kill -9 recomputes exactly
 * the bytes of an uninterrupted run.
 *
 * Why one file of ~1,200 lines: the four stages share one `run` struct and
 * its queues, whose hand-over rules (who frees a batch, when the writer may
 * commit) are written once here; the input, training, slice and helper
 * code live in their own files beside it.
 * docs/ENCODER.md ("m3-encode") is the user-facing description.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <cblas.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "encode_int.h"
#include "m3/client.h"
#include "m3/codec.h"
#include "m3/embed.h"
#include "m3/error.h"
#include "m3/internal/cli.h"
#include "m3/internal/fsutil.h"
#include "m3/forward.h"
#include "m3/index.h"
#include "m3/model.h"
#include "m3/sequence.h"
#include "m3/store.h"
#include "m3/token.h"
#include "m3/tokenizer.h"
#include "m3/version.h"

#define ENC_STR_(x) #x
#define ENC_STR(x) ENC_STR_(x) /* a number macro as a string literal */

#define EXIT_BAD_INPUT 1
#define EXIT_FAIL 2

static int fail_msg(const char *what, int rc) {
  const char *msg = m3_errmsg();
  fprintf(stderr, "m3-encode: %s%s%s\n", what ? what : "", what && *msg ? ": " : "", msg);
  (void)rc;
  return rc == M3_EBADFORMAT ? EXIT_BAD_INPUT : EXIT_FAIL;
}

static int parse_int(const char *opt, const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (!*s || *end || errno || v < lo || v > hi) {
    fprintf(stderr, "m3-encode: %s '%s' is not an integer in %ld..%ld\n", opt, s, lo, hi);
    return -1;
  }
  *out = v;
  return 0;
}

/* ---- the encode command ------------------------------------------------ */

static const char *usage_text =
    "usage: m3-encode --model DIR --input PATH --store DIR [options]\n"
    "       m3-encode --server HOST:PORT --store DIR --input FILE [options]   (m3 put)\n"
    "       m3-encode train-codec --model DIR --input PATH --out FILE [options]\n"
    "       m3-encode test-model --out DIR [options]\n"
    "\n"
    "Encode a knowledge base into explicit memories (Memory3): each chunk is\n"
    "[BOS] + tokenize(prefix) + tokenize(text), run through the memory layers;\n"
    "the keys and values of the selected tokens are coded and stored.\n"
    "\n"
    "  --model DIR            Hugging Face style model folder (config.json,\n"
    "                         safetensors, tokenizer.model or tokenizer.json)\n"
    "  --input PATH           JSONL ({\"id\", \"text\", \"embedding\", \"meta\"} per line)\n"
    "                         or a folder of .txt/.md documents (split by paragraphs)\n"
    "  --store DIR            the store to fill (created if missing). Rerunning into a\n"
    "                         store takes its own --model, --embed, --prefix,\n"
    "                         --max-tokens, --tokens-per-head, --mem-layers (from\n"
    "                         DIR/encode.json) and codec unless given\n"
    "  --server HOST:PORT     send the records to the m3-server that serves DIR through\n"
    "                         its admin Put instead of writing DIR (DIR is only read:\n"
    "                         encode.json, codec.m3c, tokenizer, idf.bin; a copy of\n"
    "                         those files will do). The server's admin token:\n"
    "  --token-file F           --token-file F, M3_TOKEN_FILE or M3_TOKEN\n"
    "  --tls-ca F [--tls-cert F --tls-key F] [--tls-name NAME]\n"
    "                         --server over TLS 1.3: the CA that signed the server's\n"
    "                         certificate, a client certificate where the server\n"
    "                         requires one (its subject may be the admin:\n"
    "                         m3-server --admin-cert-subject), the name the server's\n"
    "                         certificate must carry (default: --server's host)\n"
    "  --timeout-ms MS        deadline of each Put (30000)\n"
    "  --codec C              codec set: a file, a folder with codec.m3c, or raw-f32,\n"
    "                         raw-f16, raw-bf16 (default: the store's DIR/codec.m3c,\n"
    "                         else raw-bf16)\n"
    "  --embed E              retrieval embedding (default: the store's own; for a new\n"
    "                         store words:1024): words[:DIM] (DIM 1024 if omitted:\n"
    "                         words, sub-words, IDF from the input in DIR/idf.bin),\n"
    "                         hash[:DIM] (DIM 256 if omitted), external (the\n"
    "                         lines' \"embedding\"), hidden[:LAYER]\n"
    "  --index STR            FAISS index_factory of the retrieval index (IDMap,Flat)\n"
    "  --threads N            forward workers, and as many quantize workers (1)\n"
    "  --batch B              chunks per forward batch (8)\n"
    "  --max-tokens N         BOS + prefix + chunk tokens at most (" ENC_STR(M3_SEQ_MAX_TOKENS) ")\n"
    "  --long-chunks P        a text over the budget: split (default: pieces that fit,\n"
    "                         each a chunk; pieces of \"id\": N get ids 2^63|N<<16|part),\n"
    "                         truncate (the first piece only) or fail (a bad line)\n"
    "  --prefix S             reference prefix (\"" M3_SEQ_PREFIX "\")\n"
    "  --tokens-per-head T    selected tokens per KV head and layer (8)\n"
    "  --mem-layers N         memory layers (default: half of the model's layers)\n"
    "  --backend B            cpu, cuda or auto (auto)\n"
    "  --on-error fail|skip   a bad input line stops the run (fail, default) or is\n"
    "                         listed in the report and skipped\n"
    "  --report FILE          where skipped lines are listed (default stderr)\n"
    "  --id-base N            chunks without an \"id\" get N, N+1, ... in input order\n"
    "                         (default: a hash of file name, line and part)\n"
    "  --slice I/N            encode only slice I of N (chunks by a hash of their id),\n"
    "                         into a partial store for `m3 store merge`; auto/N takes\n"
    "                         I from $JOB_COMPLETION_INDEX (Kubernetes Indexed Jobs)\n"
    "  --json                 the summary as JSON on stdout (stage rates and shares)\n"
    "  -h, --help\n"
    "  --version              version, git commit and build options\n"
    "\n"
    "Stages overlap: read, forward, quantize and write run in their own threads;\n"
    "the summary gives each one's work, share and rate. Records go into the store\n"
    "by bulk ingest, made durable every 30 s and at the end (M3_ENCODE_CHECKPOINT_S).\n"
    "Rerunning the same command resumes: chunks already in the store are skipped.\n"
    "Exit: 0 done, 1 bad input (FILE:LINE named) or a store of another codec, 2 failure.\n";

typedef enum emb_kind { EMB_HASH, EMB_EXTERNAL, EMB_HIDDEN, EMB_WORDS } emb_kind;

typedef struct enc_opts {
  const char *model, *input, *store, *codec, *embed, *index, *prefix, *report, *backend;
  enc_slice slice; /* --slice (0/1: everything) */
  const char *server, *token_file; /* --server: admin Put to it instead of writing DIR */
  const char *tls_ca, *tls_cert, *tls_key, *tls_name; /* --server over TLS */
  int timeout_ms;
  /* which options the command line gave (the others may come from the
   * store's encode.json: store_defaults) */
  int given_model, given_embed, given_prefix, given_max_tokens, given_tph, given_mem_layers;
  int threads, batch, max_tokens, tokens_per_head, mem_layers, skip_bad, has_id_base, json;
  enc_long_policy long_chunks;
  uint64_t id_base;
} enc_opts;

/* One forward batch: B consecutive chunks of the input. It travels
 * free -> (reader) -> fwd queue -> (forward worker) -> quant queue ->
 * (quantize worker) -> done -> (writer, in seq order) -> free; a batch whose
 * chunks are all in the store goes from the reader straight to done. */
typedef struct batch {
  uint64_t seq;
  int n, skip;
  enc_chunk *c;                 /* (B) */
  int32_t *tokens, *lens, *npre; /* (B, max_seq), (B), (B) */
  uint16_t *pos;                /* (B, L, Hkv, T) */
  float *kv;                    /* (B, L, 2, Hkv, T, D) */
  uint8_t *codes;               /* (B, codes bytes of a memory) */
  float *emb;                   /* (B, emb_dim) */
  struct batch *next;
} batch;

typedef struct bqueue {
  batch *head, *tail;
} bqueue;

static void bq_push(bqueue *q, batch *b) {
  b->next = NULL;
  if (q->tail) q->tail->next = b;
  else q->head = b;
  q->tail = b;
}

static batch *bq_pop(bqueue *q) {
  batch *b = q->head;
  if (b) {
    q->head = b->next;
    if (!q->head) q->tail = NULL;
  }
  return b;
}

typedef struct worker {
  struct run *r;
  pthread_t th;
  m3_forward *fwd; /* forward workers only */
  float *hidden;   /* (B, E) with --embed hidden */
} worker;

/* The stages whose work the summary reports. */
enum { ST_READ, ST_FWD, ST_QUANT, ST_WRITE, ST_N };
static const char *const stage_name[ST_N] = {"read", "forward", "quantize", "write"};

typedef struct run {
  enc_opts o;
  m3_model *model;
  m3_codec_set *cs;
  m3_spec spec;
  m3_layout layout;
  m3_store *store;
  m3_client *client; /* --server: the records go there (the writer's only) */
  int ready;         /* the store is open or the server connected */
  uint8_t *put_buf;  /* --server: a batch's encoded records (writer) */
  size_t put_cap;
  uint64_t put_written; /* records the server stored */
  emb_kind ek;
  unsigned emb_dim;
  m3_idf *idf; /* words: the store's IDF table (setup_idf); read-only */
  int hidden_layer, E;
  size_t npos, ncodes; /* per memory: positions, code bytes */
  /* queues and counters, all under mu */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  batch *free_list, *done;
  bqueue fwd_q, quant_q;
  int input_done, stop;
  int fwd_running;  /* forward workers not yet exited: quantize workers wait for them */
  uint64_t n_made;
  int err;
  char errmsg[1024];
  /* serial mode (M3_ENCODE_SERIAL=1): one stage works at a time, so each
   * stage's seconds are its cost alone (docs/ENCODER.md, "Pipeline") */
  int serial;
  pthread_mutex_t serial_mu;
  double ckpt_s;    /* seconds between bulk checkpoints (M3_ENCODE_CHECKPOINT_S) */
  /* progress (mu) */
  uint64_t chunks_written, chunks_durable, chunks_present, chunks_read, tokens, in_done, in_total;
  uint64_t bytes_written, checkpoints;
  double s_stage[ST_N]; /* seconds of work per stage, all its threads (mu) */
  int n_stage[ST_N];    /* threads per stage */
  double t0, last_bar;
  int tty;
} run;

static void set_err(run *r, int rc, const char *msg) {
  pthread_mutex_lock(&r->mu);
  if (!r->err) {
    r->err = rc;
    snprintf(r->errmsg, sizeof r->errmsg, "%s", msg);
  }
  r->stop = 1;
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

static void serial_enter(run *r) {
  if (r->serial) pthread_mutex_lock(&r->serial_mu);
}
static void serial_leave(run *r) {
  if (r->serial) pthread_mutex_unlock(&r->serial_mu);
}

static void batch_free(batch *b, int B) {
  if (!b) return;
  for (int i = 0; i < B; i++) enc_chunk_free(&b->c[i]);
  free(b->c), free(b->tokens), free(b->lens), free(b->npre), free(b->pos), free(b->kv);
  free(b->codes), free(b->emb);
  free(b);
}

static batch *batch_new(const run *r) {
  int B = r->o.batch;
  batch *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  size_t nkv = m3_spec_vectors(&r->spec) * r->spec.head_dim;
  b->c = calloc((size_t)B, sizeof *b->c);
  b->tokens = calloc((size_t)B * r->o.max_tokens, sizeof *b->tokens);
  b->lens = calloc((size_t)B, sizeof *b->lens);
  b->npre = calloc((size_t)B, sizeof *b->npre);
  b->pos = calloc((size_t)B * r->npos, sizeof *b->pos);
  b->kv = calloc((size_t)B * nkv, sizeof *b->kv);
  b->codes = calloc((size_t)B * r->ncodes, 1);
  b->emb = calloc((size_t)B * (r->emb_dim ? r->emb_dim : 1), sizeof *b->emb);
  if (!b->c || !b->tokens || !b->lens || !b->npre || !b->pos || !b->kv || !b->codes || !b->emb) {
    batch_free(b, B);
    return NULL;
  }
  return b;
}

/* Forward and embeddings of one batch (a forward worker). */
static int forward_batch(run *r, worker *w, batch *b) {
  int S = 1;
  for (int i = 0; i < b->n; i++) S = b->c[i].n_tokens > S ? b->c[i].n_tokens : S;
  memset(b->tokens, 0, (size_t)b->n * S * sizeof *b->tokens);
  for (int i = 0; i < b->n; i++) {
    memcpy(b->tokens + (size_t)i * S, b->c[i].tokens, (size_t)b->c[i].n_tokens * sizeof *b->tokens);
    b->lens[i] = b->c[i].n_tokens;
    b->npre[i] = b->c[i].n_prefix;
  }
  m3_batch mb = {b->n, S, b->tokens, b->lens, b->npre};
  m3_memories mo = {b->pos, b->kv, NULL};
  int rc = m3_forward_run(w->fwd, &mb, &mo);
  if (rc) return rc;
  for (int i = 0; i < b->n && r->emb_dim; i++) {
    float *e = b->emb + (size_t)i * r->emb_dim;
    if (r->ek == EMB_HASH) {
      rc = m3_embed_hash(b->c[i].text, b->c[i].text_len, e, r->emb_dim);
      if (rc == M3_EINVAL) rc = 0; /* no words: a zero embedding, not retrievable */
      if (rc) return rc;
    } else if (r->ek == EMB_WORDS) {
      rc = m3_embed_words(b->c[i].text, b->c[i].text_len, r->idf, e, r->emb_dim);
      if (rc == M3_EINVAL) rc = 0; /* only stop words: a zero embedding, not retrievable */
      if (rc) return rc;
    } else if (r->ek == EMB_HIDDEN) {
      memcpy(e, w->hidden + (size_t)i * r->E, (size_t)r->E * sizeof *e);
    } else {
      memcpy(e, b->c[i].emb, r->emb_dim * sizeof *e);
    }
  }
  return 0;
}

static void batch_failed(run *r, batch *b, int rc) {
  char msg[1024];
  snprintf(msg, sizeof msg, "chunks %llu..: %s", (unsigned long long)b->c[0].id, m3_errmsg());
  set_err(r, rc, msg);
}

/* Forward workers: fwd queue -> quant queue. */
static void *forward_main(void *arg) {
  worker *w = arg;
  run *r = w->r;
  for (;;) {
    pthread_mutex_lock(&r->mu);
    while (!r->fwd_q.head && !r->stop && !r->input_done) pthread_cond_wait(&r->cv, &r->mu);
    batch *b = r->stop ? NULL : bq_pop(&r->fwd_q);
    if (!b) {
      r->fwd_running--;
      pthread_cond_broadcast(&r->cv);
      pthread_mutex_unlock(&r->mu);
      return NULL;
    }
    pthread_mutex_unlock(&r->mu);
    serial_enter(r);
    double t0 = enc_now();
    int rc = forward_batch(r, w, b);
    double t = enc_now() - t0;
    serial_leave(r);
    if (rc) batch_failed(r, b, rc);
    pthread_mutex_lock(&r->mu);
    r->s_stage[ST_FWD] += t;
    bq_push(&r->quant_q, b);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
  }
}

/* Quantize workers: quant queue -> done. FAISS's OpenMP team is one thread
 * in each (the pipeline's threads are the parallelism). */
static void *quantize_main(void *arg) {
  worker *w = arg;
  run *r = w->r;
  void (*omp_set)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
  if (omp_set) omp_set(1);
  for (;;) {
    pthread_mutex_lock(&r->mu);
    while (!r->quant_q.head && !r->stop && r->fwd_running > 0) pthread_cond_wait(&r->cv, &r->mu);
    batch *b = r->stop ? NULL : bq_pop(&r->quant_q);
    if (!b) {
      pthread_mutex_unlock(&r->mu);
      return NULL;
    }
    pthread_mutex_unlock(&r->mu);
    serial_enter(r);
    double t0 = enc_now();
    int rc = m3_codec_encode(r->cs, &r->spec, b->kv, (size_t)b->n, b->codes);
    double t = enc_now() - t0;
    serial_leave(r);
    if (rc) batch_failed(r, b, rc);
    pthread_mutex_lock(&r->mu);
    r->s_stage[ST_QUANT] += t;
    b->next = r->done;
    r->done = b;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
  }
}

static void fmt_time(double s, char *buf, size_t cap) {
  if (s < 0 || s > 1e7) {
    snprintf(buf, cap, "--:--");
    return;
  }
  long t = (long)(s + 0.5);
  if (t >= 3600) snprintf(buf, cap, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else snprintf(buf, cap, "%ld:%02ld", t / 60, t % 60);
}

/* The TTY progress bar (caller holds mu). */
static void progress(run *r, int final) {
  if (!r->tty) return;
  double now = enc_now();
  if (!final && now - r->last_bar < 0.2) return;
  r->last_bar = now;
  double el = now - r->t0, frac = r->in_total ? (double)r->in_done / r->in_total : 0;
  if (frac > 1) frac = 1;
  char eta[32], bar[32];
  fmt_time(frac > 0 ? el * (1 - frac) / frac : -1, eta, sizeof eta);
  int fill = (int)(frac * 24);
  for (int i = 0; i < 24; i++) bar[i] = i < fill ? '#' : '.';
  bar[24] = '\0';
  fprintf(stderr, "\r\033[K[%s] %3.0f%% %llu chunks, %.1f chunks/s, %.0f tokens/s, ETA %s%s", bar,
          frac * 100, (unsigned long long)(r->chunks_written + r->chunks_present),
          el > 0 ? r->chunks_written / el : 0, el > 0 ? r->tokens / el : 0, eta,
          final ? "\r\033[K" : "");
  fflush(stderr);
}

/* --server: one batch's records encoded back to back and sent with admin
 * Put, in as many calls as the server's frame limit needs. 0, or an m3 code
 * with the message naming the server and what it answered. */
static int put_remote(run *r, const m3_record_in *items, size_t n) {
  size_t need = 0;
  for (size_t i = 0; i < n; i++) need += m3_record_size(&r->layout, items[i].text_len);
  if (need > r->put_cap) {
    uint8_t *b = realloc(r->put_buf, need);
    if (b == NULL) return m3__seterr(M3_ENOMEM, "Put: out of memory for %zu bytes", need);
    r->put_buf = b, r->put_cap = need;
  }
  uint32_t *sizes = malloc(n * sizeof *sizes);
  if (sizes == NULL) return m3__seterr(M3_ENOMEM, "Put: out of memory");
  size_t off = 0;
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    long len = m3_record_encode(r->put_buf + off, r->put_cap - off, &r->layout, &items[i]);
    if (len < 0) rc = (int)len;
    else sizes[i] = (uint32_t)len, off += (size_t)len;
  }
  /* Calls under the server's frame limit (less room for the message). */
  const m3_client_info *info = m3_client_info_get(r->client);
  size_t limit = info->max_frame_bytes > (1u << 16) ? info->max_frame_bytes - (1u << 16) : 1u << 20;
  for (size_t i = 0, at = 0; i < n && rc == 0;) {
    size_t j = i, bytes = 0;
    while (j < n && (j == i || bytes + sizes[j] <= limit)) bytes += sizes[j++];
    uint32_t written = 0;
    rc = m3_client_put(r->client, r->put_buf + at, sizes + i, j - i, &written);
    if (rc) {
      const char *msg;
      int code = m3_client_last_status(r->client, &msg);
      if (code) /* msg names the server, the method and the status */
        rc = m3__seterr(rc, "chunks %llu..: %s", (unsigned long long)items[i].chunk_id, msg);
      else {
        char why[512];
        snprintf(why, sizeof why, "%s", m3_errmsg());
        rc = m3__seterr(rc, "Put to m3-server %s (chunks %llu..): %s", r->o.server,
                        (unsigned long long)items[i].chunk_id, why);
      }
      break;
    }
    r->put_written += written;
    at += bytes;
    i = j;
  }
  free(sizes);
  return rc;
}

/*
 * The writer: batches in input order into one bulk ingest (m3/store.h), or
 * with --server to the server's admin Put (put_remote: each call durable on
 * its return),
 * checkpointed every ckpt_s seconds and at the end. What a checkpoint
 * covers is durable and visible (m3_store_contains: what a rerun skips);
 * records added after it are, after a kill, rolled forward whole or absent.
 * A failure elsewhere (input, forward) still checkpoints what was added;
 * a failure of the bulk itself aborts it (what earlier checkpoints made
 * durable stays).
 */
static void *writer_main(void *arg) {
  run *r = arg;
  uint64_t next = 0;
  size_t B = (size_t)r->o.batch;
  m3_store_bulk *bulk = NULL;
  m3_record_in *items = calloc(B, sizeof *items);
  if (!items) {
    set_err(r, M3_ENOMEM, "writer: out of memory");
    return NULL;
  }
  int rc = r->client ? 0 : m3_store_bulk_begin(r->store, NULL, &bulk);
  if (rc) {
    char msg[1024];
    snprintf(msg, sizeof msg, "store bulk ingest: %s", m3_errmsg());
    set_err(r, rc, msg);
    free(items);
    return NULL;
  }
  double last_ckpt = enc_now();
  m3_store_bulk_stats bst = {0};
  for (;;) {
    pthread_mutex_lock(&r->mu);
    batch *b = NULL, **pp;
    for (;;) {
      for (pp = &r->done; *pp; pp = &(*pp)->next)
        if ((*pp)->seq == next) break;
      if (*pp || r->stop || (r->input_done && next == r->n_made)) break;
      pthread_cond_wait(&r->cv, &r->mu);
    }
    if (r->stop || !*pp) {
      pthread_mutex_unlock(&r->mu);
      break;
    }
    b = *pp;
    *pp = b->next;
    pthread_mutex_unlock(&r->mu);

    uint64_t toks = 0, bytes = 0;
    double t_write = 0;
    if (!b->skip) {
      for (int i = 0; i < b->n; i++) {
        enc_chunk *c = &b->c[i];
        items[i] = (m3_record_in){.chunk_id = c->id,
                                  .chunk_len = (uint32_t)(c->n_tokens - c->n_prefix),
                                  .positions = b->pos + (size_t)i * r->npos,
                                  .codes = b->codes + (size_t)i * r->ncodes,
                                  .text = c->text,
                                  .text_len = c->text_len,
                                  .embedding = r->emb_dim ? b->emb + (size_t)i * r->emb_dim : NULL};
        toks += (uint64_t)c->n_tokens;
        bytes += m3_record_size(&r->layout, c->text_len);
      }
      serial_enter(r);
      double t0 = enc_now();
      if (r->client) {
        rc = put_remote(r, items, (size_t)b->n);
      } else {
        rc = m3_store_bulk_add(bulk, items, (size_t)b->n);
        if (!rc && t0 - last_ckpt >= r->ckpt_s) {
          rc = m3_store_bulk_checkpoint(bulk);
          last_ckpt = enc_now();
        }
      }
      t_write = enc_now() - t0;
      if (bulk) m3_store_bulk_stats_get(bulk, &bst);
      else if (!rc) bst.durable += (uint64_t)b->n; /* the server stored them */
      serial_leave(r);
      if (rc) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s%s", r->client ? "" : "store bulk ingest: ", m3_errmsg());
        set_err(r, rc, msg);
      }
    }
    pthread_mutex_lock(&r->mu);
    r->s_stage[ST_WRITE] += t_write;
    if (!rc) {
      if (b->skip) r->chunks_present += (uint64_t)b->n;
      else r->chunks_written += (uint64_t)b->n, r->tokens += toks, r->bytes_written += bytes;
      /* durable: made so by a checkpoint, or found already stored */
      r->chunks_durable = bst.durable + bst.skipped, r->checkpoints = bst.checkpoints;
    }
    progress(r, 0);
    for (int i = 0; i < b->n; i++) enc_chunk_free(&b->c[i]);
    b->n = 0;
    b->next = r->free_list;
    r->free_list = b;
    next++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (rc) break;
  }
  free(items);
  if (rc || bulk == NULL) { /* the bulk failed: drop what no checkpoint covers */
    if (bulk) m3_store_bulk_abort(bulk);
    return NULL;
  }
  serial_enter(r);
  double t0 = enc_now();
  m3_store_bulk_stats_get(bulk, &bst);
  uint64_t staged = bst.added - bst.skipped, pending = staged - bst.durable;
  rc = m3_store_bulk_finish(bulk); /* the last checkpoint */
  double t = enc_now() - t0;
  serial_leave(r);
  if (rc) {
    char msg[1024];
    snprintf(msg, sizeof msg, "store bulk ingest: last checkpoint: %s", m3_errmsg());
    set_err(r, rc, msg);
  }
  pthread_mutex_lock(&r->mu);
  r->s_stage[ST_WRITE] += t;
  if (!rc) r->chunks_durable = bst.skipped + staged, r->checkpoints = bst.checkpoints + (pending > 0);
  pthread_mutex_unlock(&r->mu);
  return NULL;
}

/* Hand a filled batch on: skip it when every chunk is in the store (a
 * resumed run: the store holds what its checkpoints made durable), else to
 * the forward workers. */
static int dispatch(run *r, batch *b) {
  int present = r->client == NULL; /* a server's Put replaces: always send */
  for (int i = 0; i < b->n && present; i++) {
    int c = m3_store_contains(r->store, b->c[i].id);
    if (c < 0) return c;
    present = c;
  }
  pthread_mutex_lock(&r->mu);
  b->seq = r->n_made++;
  b->skip = present;
  b->next = NULL;
  if (present) {
    b->next = r->done;
    r->done = b;
  } else {
    bq_push(&r->fwd_q, b);
  }
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
  return 0;
}
/* ---- store setup --------------------------------------------------------- */

static int parse_embed(run *r, const char *s, int n_mem) {
  if (!strncmp(s, "words", 5) && (s[5] == '\0' || s[5] == ':')) {
    r->ek = EMB_WORDS;
    m3_embed_spec sp;
    char buf[64];
    snprintf(buf, sizeof buf, "words:%s", s[5] ? s + 6 : "1024");
    int rc = m3_embed_spec_parse(buf, &sp);
    if (rc) return rc;
    r->emb_dim = sp.dim;
    return 0;
  }
  if (!strncmp(s, "hash", 4) && (s[4] == '\0' || s[4] == ':')) {
    r->ek = EMB_HASH;
    m3_embed_spec sp;
    char buf[64];
    snprintf(buf, sizeof buf, "hash:%s", s[4] ? s + 5 : "256");
    int rc = m3_embed_spec_parse(buf, &sp);
    if (rc) return rc;
    r->emb_dim = sp.dim;
    return 0;
  }
  if (!strcmp(s, "external")) {
    r->ek = EMB_EXTERNAL;
    return 0;
  }
  if (!strncmp(s, "hidden", 6) && (s[6] == '\0' || s[6] == ':')) {
    r->ek = EMB_HIDDEN;
    r->hidden_layer = n_mem - 1;
    if (s[6]) {
      char *end;
      long l = strtol(s + 7, &end, 10);
      if (!s[7] || *end || l < 0 || l >= n_mem)
        return m3__seterr(M3_EINVAL, "--embed %s: LAYER must be a memory layer, 0..%d", s, n_mem - 1);
      r->hidden_layer = (int)l;
    }
    if (r->E > 65535) return m3__seterr(M3_EINVAL, "--embed hidden: hidden size %d > 65535", r->E);
    r->emb_dim = (unsigned)r->E;
    return 0;
  }
  return m3__seterr(M3_EINVAL, "--embed '%s': expected words[:DIM], hash[:DIM], external or "
                    "hidden[:LAYER]", s);
}

/* The IDF table of a words:DIM run (r->idf). An existing store's own
 * (DIR/idf.bin), so a resumed or later run embeds as the first one did;
 * for a new store, counted over every chunk of the input (every slice's
 * too: all --slice I/N runs count the same table) in a first pass, before
 * anything is stored; setup_store_open saves it with the store. */
static int setup_idf(run *r, const enc_input_opts *io) {
  char path[4200];
  snprintf(path, sizeof path, "%s/" M3_IDF_FILE, r->o.store);
  if (r->o.server) { /* the served store's own table, never a new one */
    int rc = m3_idf_load(path, &r->idf);
    if (rc == M3_ENOTFOUND)
      rc = m3__seterr(rc, "%s is missing: --server with --embed words needs the served store's "
                      "IDF table in --store DIR", path);
    return rc;
  }
  m3_store_options so;
  m3_store_options_init(&so);
  so.read_only = 1;
  m3_store *s;
  if (m3_store_open(r->o.store, &so, &s) == 0) {
    m3_store_close(s);
    int rc = m3_idf_load(path, &r->idf);
    if (rc != M3_ENOTFOUND) return rc;
    /* A store of another embedder: setup_store_open names the difference. */
    char man[4200];
    snprintf(man, sizeof man, "%s/encode.json", r->o.store);
    json_t *m = json_load_file(man, 0, NULL);
    const char *emb = m ? json_string_value(json_object_get(m, "embed")) : NULL;
    int words = emb && !strncmp(emb, "words:", 6);
    json_decref(m);
    if (words)
      return m3__seterr(M3_EBADFORMAT, "store %s was embedded with words:DIM but its IDF table %s "
                        "is missing: restore it, or encode into a new store", r->o.store, path);
    return m3_idf_create(&r->idf);
  }
  enc_input_opts o = *io;
  o.sample_only = 1; /* no id checks: counting only */
  o.skip_bad = 1;    /* the encode pass reports bad lines (or stops at them) */
  o.report = NULL;
  enc_input *in = NULL;
  enc_chunk c;
  double t0 = enc_now();
  int rc = m3_idf_create(&r->idf);
  if (rc == 0) rc = enc_input_open(&o, &in);
  while (rc == 0) {
    memset(&c, 0, sizeof c);
    int got = enc_input_next(in, &c);
    if (got <= 0) {
      rc = got;
      break;
    }
    rc = m3_idf_add(r->idf, c.text, c.text_len);
    enc_chunk_free(&c);
  }
  enc_input_close(in);
  if (rc == 0)
    fprintf(stderr, "m3-encode: IDF table of %llu chunks counted in %.2f s (%s)\n",
            (unsigned long long)m3_idf_docs(r->idf), enc_now() - t0, path);
  return rc;
}

static int open_codec(const char *c, uint16_t head_dim, m3_codec_set **out) {
  static const struct { const char *name; int kind; } raw[] = {
      {"raw-f32", M3_CODEC_RAW_F32}, {"raw-f16", M3_CODEC_RAW_F16}, {"raw-bf16", M3_CODEC_RAW_BF16}};
  for (size_t i = 0; i < 3; i++)
    if (!strcmp(c, raw[i].name)) return m3_codec_set_create_raw(raw[i].kind, head_dim, out);
  struct stat st;
  char path[4200];
  int dir = stat(c, &st) == 0 && S_ISDIR(st.st_mode);
  if (snprintf(path, sizeof path, dir ? "%s/codec.m3c" : "%s", c) >= (int)sizeof path)
    return m3__seterr(M3_EINVAL, "--codec %s: path too long", c);
  return m3_codec_set_open(path, out);
}

static int file_exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0;
}

/* The manifest DIR/encode.json: how the store's chunks were encoded, for
 * m3 store dump (re-tokenizing) and for refusing a rerun that would encode
 * differently. */
static json_t *manifest(const run *r, const char *tok_file, const int32_t *pre, int npre) {
  json_t *ids = json_array();
  for (int i = 0; i < npre; i++) json_array_append_new(ids, json_integer(pre[i]));
  char fp[20];
  snprintf(fp, sizeof fp, "%016llx", (unsigned long long)r->layout.codec_fp);
  char emb[64];
  if (r->ek == EMB_HASH) snprintf(emb, sizeof emb, "hash:%u", r->emb_dim);
  else if (r->ek == EMB_WORDS) snprintf(emb, sizeof emb, "words:%u", r->emb_dim);
  else if (r->ek == EMB_HIDDEN) snprintf(emb, sizeof emb, "hidden:%d", r->hidden_layer);
  else snprintf(emb, sizeof emb, "external");
  json_t *m = json_pack("{s:i,s:s,s:s,s:o,s:i,s:i,s:i,s:s,s:s,s:s}", "m3_encode", 1, "prefix",
                         r->o.prefix, "tokenizer", tok_file, "prefix_ids", ids, "max_tokens",
                         r->o.max_tokens, "tokens_per_head", r->spec.n_tokens, "mem_layers",
                         r->spec.n_layers, "embed", emb, "codec_fingerprint", fp, "model", r->o.model);
  if (m && r->ek == EMB_WORDS && r->idf) { /* words: the IDF table beside it (m3/embed.h) */
    char crc[16];
    snprintf(crc, sizeof crc, "%08x", m3_idf_crc(r->idf));
    json_object_set_new(m, "idf", json_string(M3_IDF_FILE));
    json_object_set_new(m, "idf_crc32c", json_string(crc));
    json_object_set_new(m, "idf_docs", json_integer((json_int_t)m3_idf_docs(r->idf)));
  }
  return m;
}

/* Which tokenizer file of the model folder m3_tokenizer_load uses. */
static const char *model_tokenizer_file(const char *dir, char *path, size_t cap) {
  snprintf(path, cap, "%s/tokenizer.model", dir);
  if (file_exists(path)) return "tokenizer.model";
  snprintf(path, cap, "%s/tokenizer.json", dir);
  if (file_exists(path)) return "tokenizer.json";
  return NULL;
}

/* Open the store, or create it with the codec file, tokenizer and manifest
 * beside it. An existing store must hold what this run produces. */
static int setup_store_open(run *r, const int32_t *pre, int npre);

/* The store, bound to its slice with --slice (slice.json). */
static int setup_store(run *r, const int32_t *pre, int npre) {
  int rc = setup_store_open(r, pre, npre);
  if (rc == 0 && r->o.slice.n > 1) rc = enc_slice_claim(r->o.store, &r->o.slice, r->layout.codec_fp);
  return rc;
}

static int setup_store_open(run *r, const int32_t *pre, int npre) {
  char path[4200];
  const char *dir = r->o.store;
  m3_store_options so;
  m3_store_options_init(&so);
  int rc = m3_store_open(dir, &so, &r->store);
  if (rc == 0) {
    const m3_layout *have = m3_store_layout(r->store);
    if (!m3_layout_equal(have, &r->layout)) {
      char a[32], b[32];
      m3_spec_format(&have->spec, a, sizeof a);
      m3_spec_format(&r->layout.spec, b, sizeof b);
      rc = m3__seterr(M3_EBADFORMAT,
                      "store %s holds %s memories coded %s (%u bytes, codec fingerprint %016llx, "
                      "embeddings %u dims); this run makes %s coded %s (%u bytes, fingerprint "
                      "%016llx, embeddings %u dims): use another --store, or the store's own "
                      "codec (%s/codec.m3c) and options",
                      dir, a, m3_codec_kind_name(have->codec_kind), have->code_bytes,
                      (unsigned long long)have->codec_fp, have->emb_dim, b,
                      m3_codec_kind_name(r->layout.codec_kind), r->layout.code_bytes,
                      (unsigned long long)r->layout.codec_fp, r->layout.emb_dim, dir);
      return rc;
    }
    snprintf(path, sizeof path, "%s/encode.json", dir);
    json_error_t je;
    json_t *m = json_load_file(path, 0, &je);
    if (m) {
      const char *pfx = json_string_value(json_object_get(m, "prefix"));
      json_int_t mt = json_integer_value(json_object_get(m, "max_tokens"));
      const char *emb = json_string_value(json_object_get(m, "embed"));
      json_t *mine = manifest(r, "", pre, npre);
      const char *myemb = json_string_value(json_object_get(mine, "embed"));
      if ((pfx && strcmp(pfx, r->o.prefix)) || mt != r->o.max_tokens || (emb && strcmp(emb, myemb)))
        rc = m3__seterr(M3_EBADFORMAT,
                        "store %s was encoded with --prefix '%s' --max-tokens %lld --embed %s; this "
                        "run asks --prefix '%s' --max-tokens %d --embed %s (see %s)",
                        dir, pfx ? pfx : "?", (long long)mt, emb ? emb : "?", r->o.prefix,
                        r->o.max_tokens, myemb, path);
      json_decref(mine);
      json_decref(m);
    }
    return rc;
  }
  if (rc != M3_ENOTFOUND) return rc;
  /* A new store: the files tools need to read it first, then the store. */
  if ((rc = enc_mkdirs(dir)) != 0) return rc;
  if (r->idf) {
    snprintf(path, sizeof path, "%s/" M3_IDF_FILE, dir);
    if ((rc = m3_idf_save(r->idf, path)) != 0) return rc;
  }
  snprintf(path, sizeof path, "%s/codec.m3c", dir);
  if ((rc = m3_codec_set_save(r->cs, path)) != 0) return rc;
  char src[4200];
  const char *tok_file = model_tokenizer_file(r->o.model, src, sizeof src);
  if (tok_file) {
    char *buf;
    size_t len;
    if ((rc = enc_read_file(src, &buf, &len)) != 0) return rc;
    snprintf(path, sizeof path, "%s/%s", dir, tok_file);
    rc = m3__fs_replace(path, buf, len);
    free(buf);
    if (rc) return rc;
  }
  json_t *m = manifest(r, tok_file ? tok_file : "", pre, npre);
  char *s = json_dumps(m, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  json_decref(m);
  if (!s) return m3__seterr(M3_ENOMEM, "manifest: out of memory");
  snprintf(path, sizeof path, "%s/encode.json", dir);
  rc = m3__fs_replace(path, s, strlen(s));
  free(s);
  if (rc) return rc;
  so.create = 1;
  so.layout = r->layout;
  return m3_store_open(dir, &so, &r->store);
}

/*
 * --server: connect with the admin token and check that the server serves
 * what this run makes (shape, codec and its fingerprint, embedding dims,
 * embedder), so that nothing is sent that it would refuse or store
 * unsearchable. External embeddings take the server's dims.
 */
static int setup_remote(run *r) {
  char token[512];
  if (m3_token_resolve(r->o.token_file, token, sizeof token, NULL) != 0) return M3_EINVAL;
  m3_client_options co;
  m3_client_options_init(&co);
  co.token = token[0] ? token : NULL;
  co.call_timeout_ms = r->o.timeout_ms;
  co.client_name = "m3-encode";
  co.tls_ca = r->o.tls_ca;
  co.tls_cert = r->o.tls_cert;
  co.tls_key = r->o.tls_key;
  co.tls_name = r->o.tls_name;
  int rc = m3_client_connect(r->o.server, &co, &r->client);
  if (rc) return rc;
  const m3_client_info *in = m3_client_info_get(r->client);
  if (r->ek == EMB_EXTERNAL) r->emb_dim = in->layout.emb_dim;
  r->layout.emb_dim = (uint16_t)r->emb_dim;
  if (!m3_layout_equal(&in->layout, &r->layout)) {
    char a[32], b[32];
    m3_spec_format(&in->layout.spec, a, sizeof a);
    m3_spec_format(&r->layout.spec, b, sizeof b);
    return m3__seterr(M3_EBADFORMAT,
                      "m3-server %s serves %s memories coded %s (fingerprint %016llx, embeddings "
                      "%u dims); this run makes %s coded %s (fingerprint %016llx, embeddings %u "
                      "dims): is --store %s the store it serves?",
                      r->o.server, a, m3_codec_kind_name(in->layout.codec_kind),
                      (unsigned long long)in->layout.codec_fp, in->layout.emb_dim, b,
                      m3_codec_kind_name(r->layout.codec_kind),
                      (unsigned long long)r->layout.codec_fp, r->layout.emb_dim, r->o.store);
  }
  char mine[64];
  if (r->ek == EMB_HASH) snprintf(mine, sizeof mine, "hash:%u", r->emb_dim);
  else if (r->ek == EMB_WORDS) snprintf(mine, sizeof mine, "words:%u", r->emb_dim);
  else if (r->ek == EMB_HIDDEN) snprintf(mine, sizeof mine, "hidden:%d", r->hidden_layer);
  else snprintf(mine, sizeof mine, "external");
  if (in->embedder[0] && strcmp(in->embedder, "unknown") && strcmp(in->embedder, mine))
    return m3__seterr(M3_EBADFORMAT, "m3-server %s serves a store embedded with %s; this run "
                      "embeds with %s (leave --embed out to take the store's own)",
                      r->o.server, in->embedder, mine);
  r->ready = 1;
  return 0;
}

/* The store's encode.json, kept until the command ends: enc_opts points
 * into it (store_defaults). */
static json_t *store_manifest;

/*
 * A rerun into an existing store (or --server: the store it serves) encodes
 * as the store was encoded unless told otherwise: --model, --embed,
 * --prefix, --max-tokens, --tokens-per-head and --mem-layers not on the
 * command line come from DIR/encode.json (the codec already came from
 * DIR/codec.m3c). Says on stderr which it took. 0 or an exit code.
 */
static int store_defaults(enc_opts *o) {
  char path[4200];
  snprintf(path, sizeof path, "%s/encode.json", o->store);
  if (!file_exists(path)) {
    if (o->server) {
      fprintf(stderr, "m3-encode: --server: %s is missing: --store DIR must be the folder of the "
              "store the server serves, or a copy of its encode.json, codec.m3c, tokenizer and "
              "idf.bin\n", path);
      return EXIT_FAIL;
    }
    return 0;
  }
  json_error_t je;
  json_t *m = json_load_file(path, 0, &je);
  if (m == NULL) {
    fprintf(stderr, "m3-encode: %s:%d:%d: %s\n", path, je.line, je.column, je.text);
    return EXIT_BAD_INPUT;
  }
  store_manifest = m;
  char took[1024] = "";
  size_t n = 0;
  const char *sv;
  json_t *jv;
#define TOOK(...) n += (size_t)snprintf(took + n, n < sizeof took ? sizeof took - n : 0, __VA_ARGS__)
  if (!o->given_model && (sv = json_string_value(json_object_get(m, "model"))) && *sv)
    o->model = sv, TOOK(" --model %s", sv);
  if (!o->given_embed && (sv = json_string_value(json_object_get(m, "embed"))) && *sv)
    o->embed = sv, TOOK(" --embed %s", sv);
  if (!o->given_prefix && (sv = json_string_value(json_object_get(m, "prefix"))))
    o->prefix = sv;
  if (!o->given_max_tokens && json_is_integer(jv = json_object_get(m, "max_tokens")))
    o->max_tokens = (int)json_integer_value(jv);
  if (!o->given_tph && json_is_integer(jv = json_object_get(m, "tokens_per_head")))
    o->tokens_per_head = (int)json_integer_value(jv);
  if (!o->given_mem_layers && json_is_integer(jv = json_object_get(m, "mem_layers")))
    o->mem_layers = (int)json_integer_value(jv);
#undef TOOK
  if (n && n < sizeof took)
    fprintf(stderr, "m3-encode: the store's own%s (from %s)\n", took, path);
  return 0;
}

/* ---- the summary ----------------------------------------------------- */

/*
 * Each stage's work: seconds (summed over its threads), the seconds it
 * would take alone with its threads (seconds / threads), its rate alone,
 * and its share of all the work. The pipeline's rate is chunks / wall
 * seconds; with the stages overlapped it is bounded by the slowest stage's
 * rate alone, and pipeline_vs_slowest says how close it came (1.0: the
 * slowest stage's rate). In a pipelined run the stages share the machine,
 * so their seconds include waiting for a core; M3_ENCODE_SERIAL=1 runs one
 * stage at a time and gives each stage's cost alone (docs/ENCODER.md).
 */
typedef struct stage_fig {
  double secs, alone_s, share, chunks_per_s;
} stage_fig;

static int stage_figs(const run *r, stage_fig *f) {
  double busy = 0;
  int slow = ST_FWD;
  for (int i = 0; i < ST_N; i++) busy += r->s_stage[i];
  for (int i = 0; i < ST_N; i++) {
    uint64_t n = i == ST_READ ? r->chunks_read : r->chunks_written;
    f[i].secs = r->s_stage[i];
    f[i].alone_s = r->s_stage[i] / (r->n_stage[i] > 0 ? r->n_stage[i] : 1);
    f[i].share = busy > 0 ? r->s_stage[i] / busy : 0;
    f[i].chunks_per_s = f[i].alone_s > 0 ? n / f[i].alone_s : 0;
  }
  for (int i = 0; i < ST_N; i++)
    if (f[i].alone_s > f[slow].alone_s) slow = i;
  return slow;
}

static double load_avg(void) {
  double la[1];
  return getloadavg(la, 1) == 1 ? la[0] : -1;
}

static void report_stages(const run *r, double secs) {
  stage_fig f[ST_N];
  int slow = stage_figs(r, f);
  double vec = (double)r->chunks_written * m3_spec_vectors(&r->spec);
  fprintf(stderr,
          "m3-encode: stages (work s, share, rate alone): read %.2f s %.0f%% %.1f chunks/s; "
          "forward %.2f s %.0f%% %.1f chunks/s %.0f tokens/s; quantize %.2f s %.0f%% %.0f "
          "vectors/s; write %.2f s %.0f%% %.1f chunks/s %.1f MB/s (%llu checkpoints)\n",
          f[ST_READ].secs, 100 * f[ST_READ].share, f[ST_READ].chunks_per_s, f[ST_FWD].secs,
          100 * f[ST_FWD].share, f[ST_FWD].chunks_per_s,
          f[ST_FWD].alone_s > 0 ? r->tokens / f[ST_FWD].alone_s : 0, f[ST_QUANT].secs,
          100 * f[ST_QUANT].share, f[ST_QUANT].alone_s > 0 ? vec / f[ST_QUANT].alone_s : 0,
          f[ST_WRITE].secs, 100 * f[ST_WRITE].share, f[ST_WRITE].chunks_per_s,
          f[ST_WRITE].alone_s > 0 ? r->bytes_written / f[ST_WRITE].alone_s / 1e6 : 0,
          (unsigned long long)r->checkpoints);
  if (r->chunks_written && secs > 0)
    fprintf(stderr, "m3-encode: pipeline%s %.1f chunks/s in %.2f s; slowest stage %s alone %.1f "
            "chunks/s (pipeline at %.0f%% of it); %d forward + %d quantize threads; load average %.2f\n",
            r->serial ? " (M3_ENCODE_SERIAL: one stage at a time)" : "",
            r->chunks_written / secs, secs, stage_name[slow], f[slow].chunks_per_s,
            100 * f[slow].alone_s / secs, r->n_stage[ST_FWD], r->n_stage[ST_QUANT], load_avg());
}

static json_t *summary_json(const run *r, double secs, const m3_store_stats *st, uint64_t bad,
                            size_t indexed, const char *why, double t_index) {
  stage_fig f[ST_N];
  int slow = stage_figs(r, f);
  double vec = (double)r->chunks_written * m3_spec_vectors(&r->spec);
  json_t *stages = json_object();
  for (int i = 0; i < ST_N && stages; i++) {
    json_t *s = json_pack("{s:f,s:f,s:f,s:i,s:f}", "seconds", f[i].secs, "alone_seconds",
                          f[i].alone_s, "share", f[i].share, "threads", r->n_stage[i],
                          "chunks_per_s", f[i].chunks_per_s);
    if (s && i == ST_FWD)
      json_object_set_new(s, "tokens_per_s",
                          json_real(f[i].alone_s > 0 ? r->tokens / f[i].alone_s : 0));
    if (s && i == ST_QUANT)
      json_object_set_new(s, "vectors_per_s", json_real(f[i].alone_s > 0 ? vec / f[i].alone_s : 0));
    if (s && i == ST_WRITE) {
      json_object_set_new(s, "mb_per_s",
                          json_real(f[i].alone_s > 0 ? r->bytes_written / f[i].alone_s / 1e6 : 0));
      json_object_set_new(s, "bytes", json_integer((json_int_t)r->bytes_written));
      json_object_set_new(s, "checkpoints", json_integer((json_int_t)r->checkpoints));
    }
    json_object_set_new(stages, stage_name[i], s);
  }
  return json_pack("{s:I,s:I,s:I,s:I,s:f,s:f,s:f,s:s,s:I,s:s,s:I,s:s,s:f,s:o,s:s,s:f,s:b,s:f}",
                   "chunks_encoded", (json_int_t)r->chunks_written, "chunks_present",
                   (json_int_t)r->chunks_present, "bad_lines_skipped", (json_int_t)bad, "tokens",
                   (json_int_t)r->tokens, "seconds", secs, "chunks_per_s",
                   secs > 0 ? r->chunks_written / secs : 0.0, "tokens_per_s",
                   secs > 0 ? r->tokens / secs : 0.0, "store", r->o.store, "records",
                   (json_int_t)st->records, "index", r->emb_dim ? r->o.index : "none",
                   "indexed", (json_int_t)indexed, "index_state", why, "index_seconds", t_index,
                   "stages", stages, "slowest_stage", stage_name[slow], "pipeline_vs_slowest",
                   secs > 0 ? f[slow].alone_s / secs : 0.0, "serial", r->serial, "load_avg",
                   load_avg());
}

static int parse_encode_args(int argc, char **argv, enc_opts *o) {
  static const struct option opts[] = {
      {"model", required_argument, NULL, 'm'},     {"input", required_argument, NULL, 'i'},
      {"store", required_argument, NULL, 's'},     {"codec", required_argument, NULL, 'c'},
      {"embed", required_argument, NULL, 'e'},     {"index", required_argument, NULL, 'x'},
      {"threads", required_argument, NULL, 't'},   {"batch", required_argument, NULL, 'b'},
      {"max-tokens", required_argument, NULL, 'M'}, {"prefix", required_argument, NULL, 'p'},
      {"tokens-per-head", required_argument, NULL, 'T'}, {"slice", required_argument, NULL, 'S'},
      {"mem-layers", required_argument, NULL, 'L'}, {"on-error", required_argument, NULL, 'E'},
      {"report", required_argument, NULL, 'r'},    {"id-base", required_argument, NULL, 'I'},
      {"backend", required_argument, NULL, 'B'},   {"help", no_argument, NULL, 'h'},
      {"long-chunks", required_argument, NULL, 'G'}, {"json", no_argument, NULL, 'j'},
      {"server", required_argument, NULL, 'R'},   {"token-file", required_argument, NULL, 'K'},
      {"timeout-ms", required_argument, NULL, 'D'},
      {"tls-ca", required_argument, NULL, 1},      {"tls-cert", required_argument, NULL, 2},
      {"tls-key", required_argument, NULL, 3},     {"tls-name", required_argument, NULL, 4},
      {NULL, 0, NULL, 0}};
  int ex;
  memset(o, 0, sizeof *o);
  o->embed = "words"; /* words:1024: recall and size measured in docs/INDEX.md */
  o->index = M3_INDEX_DEFAULT_FACTORY;
  o->prefix = M3_SEQ_PREFIX;
  o->threads = 1, o->batch = 8, o->max_tokens = M3_SEQ_MAX_TOKENS, o->tokens_per_head = 8;
  o->backend = "auto";
  o->slice = (enc_slice){0, 1};
  o->timeout_ms = 30000;
  if (m3_cli_exact_long(argc, argv, "h", opts, "m3-encode")) return EXIT_FAIL;
  optind = 1;
  int c;
  long v;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 'm': o->model = optarg, o->given_model = 1; break;
    case 'i': o->input = optarg; break;
    case 's': o->store = optarg; break;
    case 'c': o->codec = optarg; break;
    case 'e': o->embed = optarg, o->given_embed = 1; break;
    case 'x': o->index = optarg; break;
    case 'p': o->prefix = optarg, o->given_prefix = 1; break;
    case 'R':
      if (m3_cli_check_addr("m3-encode", "--server", optarg, 1) != 0) return EXIT_FAIL;
      o->server = optarg;
      break;
    case 'K': o->token_file = optarg; break;
    case 1: o->tls_ca = optarg; break;
    case 2: o->tls_cert = optarg; break;
    case 3: o->tls_key = optarg; break;
    case 4: o->tls_name = optarg; break;
    case 'D': if (parse_int("--timeout-ms", optarg, 0, 86400000, &v)) return EXIT_FAIL; o->timeout_ms = (int)v; break;
    case 'r': o->report = optarg; break;
    case 'B': o->backend = optarg; break;
    case 'j': o->json = 1; break;
    case 'S':
      if (enc_slice_parse(optarg, &o->slice)) {
        fprintf(stderr, "m3-encode: %s\n", m3_errmsg());
        return EXIT_FAIL;
      }
      break;
    case 't': if (parse_int("--threads", optarg, 1, 256, &v)) return EXIT_FAIL; o->threads = (int)v; break;
    case 'b': if (parse_int("--batch", optarg, 1, 4096, &v)) return EXIT_FAIL; o->batch = (int)v; break;
    case 'M': if (parse_int("--max-tokens", optarg, 16, M3_SELECT_MAX_LEN, &v)) return EXIT_FAIL; o->max_tokens = (int)v, o->given_max_tokens = 1; break;
    case 'T': if (parse_int("--tokens-per-head", optarg, 1, 1024, &v)) return EXIT_FAIL; o->tokens_per_head = (int)v, o->given_tph = 1; break;
    case 'L': if (parse_int("--mem-layers", optarg, 1, 65535, &v)) return EXIT_FAIL; o->mem_layers = (int)v, o->given_mem_layers = 1; break;
    case 'E':
      if (!strcmp(optarg, "skip")) o->skip_bad = 1;
      else if (strcmp(optarg, "fail")) {
        fprintf(stderr, "m3-encode: --on-error '%s': fail or skip\n", optarg);
        return EXIT_FAIL;
      }
      break;
    case 'G':
      if (!strcmp(optarg, "split")) o->long_chunks = ENC_LONG_SPLIT;
      else if (!strcmp(optarg, "truncate")) o->long_chunks = ENC_LONG_TRUNCATE;
      else if (!strcmp(optarg, "fail")) o->long_chunks = ENC_LONG_FAIL;
      else {
        fprintf(stderr, "m3-encode: --long-chunks '%s': split, truncate or fail\n", optarg);
        return EXIT_FAIL;
      }
      break;
    case 'I': {
      char *end;
      errno = 0;
      o->id_base = strtoull(optarg, &end, 10);
      if (!*optarg || *end || errno || *optarg == '-') {
        fprintf(stderr, "m3-encode: --id-base '%s' is not a chunk id\n", optarg);
        return EXIT_FAIL;
      }
      o->has_id_base = 1;
      break;
    }
    case 'h': fputs(usage_text, stdout); exit(0);
    default: fputs(usage_text, stderr); return EXIT_FAIL;
    }
  }
  if (optind != argc || !o->input || !o->store) {
    fprintf(stderr, "m3-encode: --input and --store are required\n%s", usage_text);
    return EXIT_FAIL;
  }
  if ((ex = store_defaults(o)) != 0) return ex;
  if (!o->model) {
    fprintf(stderr, "m3-encode: --model DIR is required (%s/encode.json names none)\n%s",
            o->store, usage_text);
    return EXIT_FAIL;
  }
  if ((o->tls_ca || o->tls_cert || o->tls_key || o->tls_name) && !o->server) {
    fprintf(stderr, "m3-encode: --tls-ca, --tls-cert, --tls-key and --tls-name are for --server "
                    "(without it the records go to --store on this machine)\n");
    return EXIT_FAIL;
  }
  if ((o->tls_cert || o->tls_key || o->tls_name) && !o->tls_ca) {
    fprintf(stderr, "m3-encode: --tls-cert, --tls-key and --tls-name need --tls-ca F (the CA that "
                    "signed the server's certificate)\n");
    return EXIT_FAIL;
  }
  if ((o->tls_cert == NULL) != (o->tls_key == NULL)) {
    fprintf(stderr, "m3-encode: %s without %s: a client certificate needs both\n",
            o->tls_cert ? "--tls-cert" : "--tls-key", o->tls_cert ? "--tls-key" : "--tls-cert");
    return EXIT_FAIL;
  }
  if (o->server && o->slice.n > 1) {
    fprintf(stderr, "m3-encode: --slice makes a partial store; with --server the records go to "
                    "the server's store: use one or the other\n");
    return EXIT_FAIL;
  }
  return 0;
}

int enc_cmd_encode(int argc, char **argv) {
  run R, *r = &R;
  memset(r, 0, sizeof *r);
  int ex = parse_encode_args(argc, argv, &r->o);
  if (ex) return ex;
  const enc_opts *o = &r->o;
  m3_tokenizer *tok = NULL;
  enc_input *in = NULL;
  worker *ws = NULL, *qs = NULL;
  batch **pool = NULL;
  int npool = 0, nstarted = 0, nqstarted = 0, writer_started = 0;
  pthread_t wt;
  FILE *report = NULL;
  int32_t *pre = NULL;
  int rc, npre = 0;
  size_t nseq = 0, nseq_prefix = 0;
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->cv, NULL);
  pthread_mutex_init(&r->serial_mu, NULL);
  const char *env = getenv("M3_ENCODE_SERIAL");
  r->serial = env && *env && strcmp(env, "0");
  r->ckpt_s = 30;
  if ((env = getenv("M3_ENCODE_CHECKPOINT_S")) != NULL) {
    char *end;
    r->ckpt_s = strtod(env, &end);
    if (!*env || *end || !(r->ckpt_s >= 0)) {
      fprintf(stderr, "m3-encode: M3_ENCODE_CHECKPOINT_S '%s' is not a number of seconds >= 0\n", env);
      ex = EXIT_FAIL;
      goto out;
    }
  }

  if ((rc = m3_tokenizer_load(o->model, &tok)) != 0) { ex = fail_msg("tokenizer", rc); goto out; }
  m3_model_opts mopts = {.n_mem_layers = o->mem_layers};
  if ((rc = m3_model_open(o->model, &mopts, &r->model)) != 0) { ex = fail_msg("model", rc); goto out; }
  const m3_model_config *cfg = m3_model_get_config(r->model);
  if (m3_tokenizer_vocab_size(tok) > (size_t)cfg->vocab_size) {
    fprintf(stderr, "m3-encode: the tokenizer has %zu ids, the model's vocabulary %d\n",
            m3_tokenizer_vocab_size(tok), cfg->vocab_size);
    ex = EXIT_FAIL;
    goto out;
  }
  r->E = cfg->hidden_size;
  int n_mem = m3_model_mem_layers(r->model);
  r->spec = (m3_spec){(uint16_t)n_mem, (uint16_t)cfg->n_kv_heads, (uint16_t)o->tokens_per_head,
                      (uint16_t)cfg->head_dim};
  if (o->tokens_per_head > o->max_tokens) {
    fprintf(stderr, "m3-encode: --tokens-per-head %d > --max-tokens %d\n", o->tokens_per_head, o->max_tokens);
    ex = EXIT_FAIL;
    goto out;
  }
  if ((rc = parse_embed(r, o->embed, n_mem)) != 0) { ex = fail_msg(NULL, rc), ex = EXIT_FAIL; goto out; }

  /* The codec: --codec, else the store's own, else raw-bf16. */
  char cpath[4200];
  snprintf(cpath, sizeof cpath, "%s/codec.m3c", o->store);
  const char *codec = o->codec ? o->codec : file_exists(cpath) ? cpath : "raw-bf16";
  if ((rc = open_codec(codec, r->spec.head_dim, &r->cs)) != 0) { ex = fail_msg("codec", rc); goto out; }
  if ((rc = m3_codec_set_layout(r->cs, &r->spec, &r->layout)) != 0) { ex = fail_msg("codec", rc); goto out; }
  r->npos = m3_spec_positions(&r->spec);
  r->ncodes = m3_layout_codes_bytes(&r->layout);

  pre = malloc((size_t)o->max_tokens * sizeof *pre);
  rc = pre ? m3_seq_tokens(tok, o->prefix, NULL, 0, pre, (size_t)o->max_tokens, &nseq, &nseq_prefix)
           : M3_ENOMEM;
  if (rc) {
    ex = fail_msg("--prefix", rc);
    goto out;
  }
  npre = (int)nseq_prefix;
  if (o->report) {
    report = fopen(o->report, "w");
    if (!report) {
      fprintf(stderr, "m3-encode: --report %s: %s\n", o->report, strerror(errno));
      ex = EXIT_FAIL;
      goto out;
    }
  }
  enc_input_opts io = {.path = o->input, .tok = tok, .prefix = o->prefix,
                       .max_tokens = o->max_tokens, .external_emb = r->ek == EMB_EXTERNAL,
                       .ids = o->has_id_base ? ENC_ID_SEQUENTIAL : ENC_ID_HASH,
                       .id_base = o->id_base, .skip_bad = o->skip_bad,
                       .long_chunks = o->long_chunks,
                       .report = report ? report : stderr};

  /* External embeddings: an existing store fixes the dims; else the first
   * line does, and the store is created once it is known. */
  if (o->server) {
    if ((rc = setup_remote(r)) != 0) { ex = fail_msg(o->server, rc); goto out; }
    io.emb_dim = r->emb_dim;
  } else if (r->ek == EMB_EXTERNAL) {
    m3_store_options so;
    m3_store_options_init(&so);
    so.read_only = 1;
    m3_store *s;
    if (m3_store_open(o->store, &so, &s) == 0) {
      io.emb_dim = r->emb_dim = m3_store_layout(s)->emb_dim;
      m3_store_close(s);
    }
  }
  r->layout.emb_dim = (uint16_t)r->emb_dim;
  if (r->ek == EMB_WORDS && (rc = setup_idf(r, &io)) != 0) { ex = fail_msg("IDF table", rc); goto out; }
  if ((rc = enc_input_open(&io, &in)) != 0) { ex = fail_msg("input", rc); goto out; }
  if (!r->ready && (r->emb_dim || r->ek != EMB_EXTERNAL)) {
    if ((rc = setup_store(r, pre, npre)) != 0) { ex = fail_msg(NULL, rc); goto out; }
    r->ready = 1;
  }

  /* The stages: --threads forward workers (one forward runner each) and as
   * many quantize workers, one writer, the reader here. They overlap, so
   * each BLAS call runs on one thread (the stages' threads are the
   * parallelism; an explicit OPENBLAS_NUM_THREADS is kept). The batch pool
   * bounds the queues: enough batches for every worker to hold one and one
   * waiting for each. */
  if (!getenv("OPENBLAS_NUM_THREADS")) openblas_set_num_threads(1);
  ws = calloc((size_t)o->threads, sizeof *ws);
  qs = calloc((size_t)o->threads, sizeof *qs);
  npool = 4 * o->threads + 3;
  pool = calloc((size_t)npool, sizeof *pool);
  if (!ws || !qs || !pool) { ex = fail_msg("out of memory", M3_ENOMEM); goto out; }
  r->n_stage[ST_READ] = 1, r->n_stage[ST_FWD] = r->n_stage[ST_QUANT] = o->threads;
  r->n_stage[ST_WRITE] = 1;
  for (int i = 0; i < o->threads; i++) {
    ws[i].r = r;
    m3_forward_opts fo = {.backend = r->ek == EMB_HIDDEN ? "cpu" : o->backend,
                          .max_batch = o->batch, .max_seq = o->max_tokens,
                          .n_tokens = o->tokens_per_head};
    if (r->ek == EMB_HIDDEN) {
      ws[i].hidden = malloc((size_t)o->batch * r->E * sizeof(float));
      if (!ws[i].hidden) { ex = fail_msg("out of memory", M3_ENOMEM); goto out; }
      fo.hidden = ws[i].hidden;
      fo.hidden_layer = r->hidden_layer;
    }
    if ((rc = m3_forward_create(r->model, &fo, &ws[i].fwd)) != 0) { ex = fail_msg("forward", rc); goto out; }
  }
  for (int i = 0; i < npool; i++) {
    if (!(pool[i] = batch_new(r))) { ex = fail_msg("out of memory for batches", M3_ENOMEM); goto out; }
    pool[i]->next = r->free_list;
    r->free_list = pool[i];
  }
  r->tty = isatty(2);
  r->t0 = enc_now();

  /* The reader: batches of consecutive chunks, in input order. */
  batch *cur = NULL;
  int end = 0;
  while (!end) {
    if (!cur) {
      pthread_mutex_lock(&r->mu);
      while (!r->free_list && !r->stop) pthread_cond_wait(&r->cv, &r->mu);
      if (r->stop) { pthread_mutex_unlock(&r->mu); break; }
      cur = r->free_list;
      r->free_list = cur->next;
      pthread_mutex_unlock(&r->mu);
      cur->n = 0;
    }
    serial_enter(r);
    double t_read = enc_now();
    int got = enc_input_next(in, &cur->c[cur->n]);
    t_read = enc_now() - t_read;
    serial_leave(r);
    pthread_mutex_lock(&r->mu);
    r->s_stage[ST_READ] += t_read;
    if (got == 1) r->chunks_read++;
    pthread_mutex_unlock(&r->mu);
    if (got < 0) {
      char msg[1024];
      snprintf(msg, sizeof msg, "%s", m3_errmsg());
      set_err(r, got, msg);
      break;
    }
    if (got == 1 && !enc_slice_has(&o->slice, cur->c[cur->n].id)) {
      enc_chunk_free(&cur->c[cur->n]); /* another slice's chunk */
      continue;
    }
    if (got == 1) cur->n++;
    else end = 1;
    pthread_mutex_lock(&r->mu);
    enc_input_progress(in, &r->in_done, &r->in_total);
    pthread_mutex_unlock(&r->mu);
    if (!r->ready && got == 1) { /* external embeddings: dims now known */
      r->emb_dim = r->layout.emb_dim = (uint16_t)enc_input_emb_dim(in);
      if ((rc = setup_store(r, pre, npre)) != 0) {
        set_err(r, rc, m3_errmsg());
        break;
      }
      r->ready = 1;
    }
    if (!writer_started && r->ready) {
      /* emb_dim is known now (external embeddings: from the first line) */
      for (int i = 0; i < npool; i++) {
        float *e = realloc(pool[i]->emb, (size_t)o->batch * (r->emb_dim ? r->emb_dim : 1) * sizeof *e);
        if (!e) {
          set_err(r, M3_ENOMEM, "out of memory for embeddings");
          break;
        }
        pool[i]->emb = e;
      }
      if (r->err) break;
      pthread_mutex_lock(&r->mu);
      r->fwd_running = o->threads; /* lowered by each forward worker as it exits */
      pthread_mutex_unlock(&r->mu);
      for (; nstarted < o->threads; nstarted++)
        if (pthread_create(&ws[nstarted].th, NULL, forward_main, &ws[nstarted]) != 0) break;
      pthread_mutex_lock(&r->mu);
      r->fwd_running -= o->threads - nstarted; /* the ones that did not start */
      pthread_mutex_unlock(&r->mu);
      for (; nstarted && nqstarted < o->threads; nqstarted++) {
        qs[nqstarted].r = r;
        if (pthread_create(&qs[nqstarted].th, NULL, quantize_main, &qs[nqstarted]) != 0) break;
      }
      if (nstarted == 0 || nqstarted == 0 || pthread_create(&wt, NULL, writer_main, r) != 0) {
        set_err(r, M3_ENOMEM, "cannot start threads");
        break;
      }
      writer_started = 1;
    }
    if (cur->n == o->batch || (end && cur->n)) {
      serial_enter(r);
      double t_disp = enc_now();
      rc = dispatch(r, cur); /* the resume check: part of the read stage */
      t_disp = enc_now() - t_disp;
      serial_leave(r);
      pthread_mutex_lock(&r->mu);
      r->s_stage[ST_READ] += t_disp;
      pthread_mutex_unlock(&r->mu);
      if (rc != 0) {
        set_err(r, rc, m3_errmsg());
        break;
      }
      cur = NULL;
    }
  }
  if (cur) { /* not dispatched: back to the pool for freeing */
    for (int i = 0; i < cur->n; i++) enc_chunk_free(&cur->c[i]);
    cur->n = 0;
  }
  pthread_mutex_lock(&r->mu);
  r->input_done = 1;
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
  for (int i = 0; i < nstarted; i++) pthread_join(ws[i].th, NULL);
  for (int i = 0; i < nqstarted; i++) pthread_join(qs[i].th, NULL);
  if (writer_started) pthread_join(wt, NULL);
  pthread_mutex_lock(&r->mu);
  progress(r, 1);
  pthread_mutex_unlock(&r->mu);
  double secs = enc_now() - r->t0;

  if (r->err) {
    fprintf(stderr, "m3-encode: %s\n", r->errmsg);
    if (r->chunks_durable)
      fprintf(stderr, "m3-encode: %llu chunks were stored before the failure; rerun the same command to resume\n",
              (unsigned long long)r->chunks_durable);
    ex = r->err == M3_EBADFORMAT ? EXIT_BAD_INPUT : EXIT_FAIL;
    goto out;
  }
  if (!r->ready) { /* external embeddings and no chunk at all */
    fprintf(stderr, "m3-encode: %s: no chunks in the input; nothing stored\n", o->input);
    ex = EXIT_BAD_INPUT;
    goto out;
  }

  if (r->chunks_written + r->chunks_present == 0 && enc_input_skipped(in) == 0)
    fprintf(stderr, "m3-encode: warning: %s holds no chunks (an empty input?); nothing was %s\n",
            o->input, o->server ? "sent" : "stored");
  if (r->client) {
    fprintf(stderr, "m3-encode: %llu chunks encoded and sent to m3-server %s (admin Put: %llu "
            "records written), %llu bad lines skipped; %llu tokens in %.2f s (%.1f chunks/s)\n",
            (unsigned long long)r->chunks_written, o->server,
            (unsigned long long)r->put_written, (unsigned long long)enc_input_skipped(in),
            (unsigned long long)r->tokens, secs, secs > 0 ? r->chunks_written / secs : 0);
    ex = 0;
    goto out;
  }
  /* The retrieval index, so that m3-server can serve the store at once. */
  double t_index = enc_now();
  size_t indexed = 0;
  const char *why = "";
  if (r->emb_dim) {
    m3_index_options xo;
    m3_index_options_init(&xo);
    xo.factory = o->index;
    m3_index *ix;
    if ((rc = m3_index_open(r->store, &xo, &ix)) != 0) { ex = fail_msg("retrieval index", rc); goto out; }
    m3_index_info info;
    m3_index_info_get(ix, &info);
    indexed = info.count;
    why = info.loaded ? "current" : "rebuilt";
    m3_index_close(ix);
  }
  t_index = enc_now() - t_index;
  m3_store_stats st;
  if ((rc = m3_store_stats_get(r->store, &st)) != 0) { ex = fail_msg("store stats", rc); goto out; }
  uint64_t n_split, n_pieces, n_trunc;
  enc_input_long_counts(in, &n_split, &n_pieces, &n_trunc);
  if (n_split || n_trunc)
    fprintf(stderr, "m3-encode: %llu texts over %d tokens split into %llu chunks, %llu truncated "
            "(--long-chunks)\n", (unsigned long long)n_split, o->max_tokens,
            (unsigned long long)n_pieces, (unsigned long long)n_trunc);
  fprintf(stderr,
          "m3-encode: %llu chunks encoded, %llu already in the store, %llu bad lines skipped; "
          "%llu tokens in %.2f s (%.1f chunks/s, %.0f tokens/s); store %s: %llu records; "
          "index %s: %zu vectors (%s)\n",
          (unsigned long long)r->chunks_written, (unsigned long long)r->chunks_present,
          (unsigned long long)enc_input_skipped(in), (unsigned long long)r->tokens, secs,
          secs > 0 ? r->chunks_written / secs : 0, secs > 0 ? r->tokens / secs : 0, o->store,
          (unsigned long long)st.records, r->emb_dim ? o->index : "none", indexed, why);
  report_stages(r, secs);
  if (o->json) {
    json_t *j = summary_json(r, secs, &st, enc_input_skipped(in), indexed, why, t_index);
    if (!j || json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0) {
      json_decref(j);
      ex = fail_msg("--json: out of memory", M3_ENOMEM);
      goto out;
    }
    fputc('\n', stdout);
    json_decref(j);
  }
  ex = 0;
out:
  if (ws) {
    for (int i = 0; i < o->threads; i++) {
      m3_forward_destroy(ws[i].fwd);
      free(ws[i].hidden);
    }
    free(ws);
  }
  free(qs);
  if (pool) {
    for (int i = 0; i < npool; i++) batch_free(pool[i], o->batch);
    free(pool);
  }
  enc_input_close(in);
  if (report) fclose(report);
  m3_store_close(r->store);
  m3_client_close(r->client);
  free(r->put_buf);
  m3_codec_set_close(r->cs);
  m3_idf_free(r->idf);
  m3_model_close(r->model);
  m3_tokenizer_free(tok);
  free(pre);
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
  json_decref(store_manifest); /* r->o's defaults pointed into it */
  store_manifest = NULL;
  pthread_mutex_destroy(&r->serial_mu);
  return ex;
}

int main(int argc, char **argv) {
  if (m3_version_asked(argc, argv, "m3-encode")) return 0;
  if (argc >= 2 && !strcmp(argv[1], "train-codec")) return enc_cmd_train_codec(argc - 1, argv + 1);
  if (argc >= 2 && !strcmp(argv[1], "test-model")) return enc_cmd_test_model(argc - 1, argv + 1);
  if (argc >= 2 && !strcmp(argv[1], "encode")) return enc_cmd_encode(argc - 1, argv + 1);
  if (argc < 2) {
    fputs(usage_text, stderr);
    return EXIT_FAIL;
  }
  return enc_cmd_encode(argc, argv);
}
