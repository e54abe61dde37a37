/*
 * Shared by the libm3client tests: a real store written by `m3-bench gen`,
 * what it holds read straight from disk (records, texts, embeddings) before
 * a real m3-server process is started on it over loopback, and the exact
 * top-k that Retrieve and Search must return.
 */
#ifndef M3_CLIENT_TESTLIB_H
#define M3_CLIENT_TESTLIB_H

#include <stddef.h>
#include <stdint.h>

#include "m3/client.h"
#include "unit/testutil.h"

typedef struct ct_store {
  char *dir;       /* scratch dir; the store is dir/store */
  char store[512];
  m3_layout layout;
  size_t n;        /* memories, chunk ids 0..n-1 */
  uint8_t **mem;   /* (n) each record's memory bytes, as Fetch must return them */
  size_t mem_len;
  float *emb;      /* (n, emb_dim) */
} ct_store;

/* Write n memories with emb_dim-dim embeddings through `m3-bench gen`, then
 * read them back (read-only open, closed before any server starts). */
void ct_store_make(ct_store *s, size_t n, unsigned emb_dim);
void ct_store_free(ct_store *s);

/* The exact top-k of q (cosine) over the store: ids and scores best first. */
void ct_exact_topk(const ct_store *s, const float *q, uint32_t k, uint64_t *ids, float *scores);

typedef struct ct_server {
  tu_child child;
  char addr[64];
  int http_port; /* 0 unless extra turned the HTTP port on ("--http", "127.0.0.1:0") */
} ct_server;

/* Start `m3-server --store DIR --listen 127.0.0.1:0 --http off --port-file F`
 * plus extra args (NULL-terminated, may be NULL) and wait until it listens. */
void ct_server_start(ct_server *srv, const ct_store *s, const char *const *extra);
/* The value of a metric series (the whole line up to its value, e.g.
 * "m3_sendfile_bytes_total") from the server's /metrics (http_port set). */
double ct_metric(const ct_server *srv, const char *series);
/* SIGTERM, wait (drain), return the exit status. */
int ct_server_stop(ct_server *srv);

/* Connect with defaults plus token (may be NULL); fails the test on error. */
m3_client *ct_connect(const ct_server *srv, const char *token);

/* A complete record of chunk id in s's layout (tu_mem_make's content), with
 * a random unit embedding from *rng written to emb (emb_dim floats), ready
 * for m3_client_put: malloc'ed (the caller frees it), *size its length. */
uint8_t *ct_record_make(const ct_store *s, uint64_t id, uint64_t *rng, float *emb, size_t *size);


#endif
