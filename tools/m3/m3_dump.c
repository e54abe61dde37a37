/*
 * m3 store dump DIR --id N [--json] [--codec FILE] [--model DIR]: one
 * explicit memory decoded, for checking an encoder integration by eye or by
 * script: the chunk text, the whole token sequence that was encoded, the
 * selected positions and the decoded keys and values.
 *
 * Tokens are not stored in records; they are recomputed, which is exact
 * because m3-encode tokenizes each chunk's stored text on its own, by the
 * rule both call (m3/sequence.h: m3_seq_tokens):
 *   tokens = [BOS] + tokenize(prefix) + tokenize(text)
 * with the tokenizer m3-encode copied into the store (DIR/tokenizer.model or
 * DIR/tokenizer.json, named in DIR/encode.json along with the prefix), or
 * the one of --model DIR. The record's chunk_len (tokens of the chunk) is
 * checked against the recomputed count, so a different tokenizer is caught
 * rather than shown. Without encode.json and --model, "tokens" is null.
 *
 * The codec set is DIR/codec.m3c (written by m3-encode) unless --codec
 * names another; a record of another codec set is refused (fingerprint).
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "m3/codec.h"
#include "m3/error.h"
#include "m3/internal/cli.h"
#include "m3/sequence.h"
#include "m3/store.h"
#include "m3/tokenizer.h"

#define EXIT_PROBLEMS 1
#define EXIT_FAILURE_ 2
#define POS_NONE 0xFFFFu

static int dump_fail(const char *what, int rc) {
  const char *msg = m3_errmsg();
  fprintf(stderr, "m3 store dump: %s: %s%s%s\n", what, m3_strerror(rc), *msg ? ": " : "", msg);
  return EXIT_FAILURE_;
}

/* The encoded sequence's tokens into a JSON array (NULL when there is no
 * tokenizer to recompute them); *n_prefix gets BOS + prefix tokens.
 * Returns 0, or an exit code after printing why. */
static int recompute_tokens(const char *dir, const char *model, const char *text, size_t len,
                            uint32_t chunk_len, json_t **out, int *n_prefix) {
  *out = NULL;
  *n_prefix = -1;
  char path[4200];
  snprintf(path, sizeof path, "%s/encode.json", dir);
  json_error_t je;
  json_t *man = json_load_file(path, 0, &je);
  if (!man && !model) return 0;
  const char *prefix = man ? json_string_value(json_object_get(man, "prefix")) : NULL;
  const char *tfile = man ? json_string_value(json_object_get(man, "tokenizer")) : NULL;
  if (!prefix) prefix = M3_SEQ_PREFIX;
  if (model) snprintf(path, sizeof path, "%s", model);
  else if (tfile && *tfile) snprintf(path, sizeof path, "%s/%s", dir, tfile);
  else {
    json_decref(man);
    return 0;
  }
  m3_tokenizer *tok;
  int rc = m3_tokenizer_load(path, &tok);
  if (rc) {
    json_decref(man);
    return dump_fail(path, rc);
  }
  size_t cap = len + strlen(prefix) + 16, n = 0, np = 0;
  int32_t *ids = malloc(cap * sizeof *ids);
  int ex = 0;
  if (!ids) {
    ex = dump_fail("tokens", M3_ENOMEM);
    goto done;
  }
  if ((rc = m3_seq_tokens(tok, prefix, text, len, ids, cap, &n, &np)) != 0) {
    ex = dump_fail("tokenize", rc);
    goto done;
  }
  *n_prefix = (int)np;
  if (n - np != chunk_len) {
    fprintf(stderr,
            "m3 store dump: the text tokenizes to %zu tokens with %s, but the record was encoded "
            "from %u: not the tokenizer that encoded this store\n",
            n - np, path, chunk_len);
    ex = EXIT_PROBLEMS;
    goto done;
  }
  *out = json_array();
  for (size_t i = 0; i < n; i++) json_array_append_new(*out, json_integer(ids[i]));
done:
  free(ids);
  m3_tokenizer_free(tok);
  json_decref(man);
  return ex;
}

int m3__cmd_store_dump(int argc, char **argv) {
  static const struct option opts[] = {{"json", no_argument, NULL, 'j'},
                                       {"id", required_argument, NULL, 'i'},
                                       {"codec", required_argument, NULL, 'c'},
                                       {"model", required_argument, NULL, 'm'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  const char *codec = NULL, *model = NULL;
  int json = 0, has_id = 0, c;
  unsigned long long id = 0;
  if (m3_cli_exact_long(argc, argv, "h", opts, "m3 store dump")) return EXIT_FAILURE_;
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 'j': json = 1; break;
    case 'c': codec = optarg; break;
    case 'm': model = optarg; break;
    case 'i': {
      char *end;
      id = strtoull(optarg, &end, 10);
      if (!*optarg || *end || *optarg == '-') {
        fprintf(stderr, "m3 store dump: --id '%s' is not a chunk id\n", optarg);
        return EXIT_FAILURE_;
      }
      has_id = 1;
      break;
    }
    case 'h':
      puts("usage: m3 store dump DIR --id N [--json] [--codec FILE] [--model DIR]");
      return 0;
    default: return EXIT_FAILURE_;
    }
  }
  if (optind != argc - 1 || !has_id) {
    fprintf(stderr, "usage: m3 store dump DIR --id N [--json] [--codec FILE] [--model DIR]\n");
    return EXIT_FAILURE_;
  }
  const char *dir = argv[optind];
  char cpath[4200];
  if (!codec) snprintf(cpath, sizeof cpath, "%s/codec.m3c", dir), codec = cpath;

  int rc, ex = EXIT_FAILURE_;
  m3_store *s = NULL;
  m3_codec_set *cs = NULL;
  void *buf = NULL;
  float *kv = NULL;
  char *text = NULL;
  size_t tlen = 0;
  json_t *tokens = NULL;
  m3_store_options o;
  m3_store_options_init(&o);
  o.read_only = 1;
  if ((rc = m3_store_open(dir, &o, &s)) != 0) return dump_fail(dir, rc);
  if ((rc = m3_codec_set_open(codec, &cs)) != 0) {
    ex = dump_fail(codec, rc);
    goto out;
  }
  size_t cap = m3_store_fetch_cap(s);
  buf = m3_store_buf_alloc(s, cap);
  m3_fetch_item it = {.chunk_id = id, .buf = buf, .cap = cap};
  if (!buf) {
    ex = dump_fail("fetch", M3_ENOMEM);
    goto out;
  }
  rc = m3_store_fetch(s, &it, 1);
  if (rc == 0) rc = it.status;
  if (rc) {
    /* As `m3 store get`: a missing id is named, exit 2. */
    if (rc == M3_ENOTFOUND)
      m3__seterr(rc, "chunk %llu: not in the store %s", id, dir);
    ex = dump_fail("fetch", rc);
    goto out;
  }
  m3_record r;
  if ((rc = m3_record_parse(it.data, it.len, M3_PARSE_MEM, &r)) != 0) {
    ex = dump_fail("record", rc);
    goto out;
  }
  const m3_spec *sp = &r.layout.spec;
  size_t dsz = m3_codec_decoded_size(sp, M3_DTYPE_F32);
  kv = malloc(dsz);
  if (!kv) {
    ex = dump_fail("decode", M3_ENOMEM);
    goto out;
  }
  if ((rc = m3_codec_decode_record(cs, &r, M3_DTYPE_F32, kv, dsz)) != 0) {
    ex = dump_fail("decode", rc);
    goto out;
  }
  if ((rc = m3_store_get_text(s, id, &text, &tlen)) != 0) {
    ex = dump_fail("text", rc);
    goto out;
  }
  int n_prefix = -1;
  if ((ex = recompute_tokens(dir, model, text, tlen, r.chunk_len, &tokens, &n_prefix)) != 0) goto out;

  const int L = sp->n_layers, K = sp->n_kv_heads, T = sp->n_tokens, D = sp->head_dim;
  if (!json) {
    printf("chunk_id     %llu\n", id);
    printf("text         %s\n", text);
    printf("chunk_len    %u tokens (+ %d of BOS and prefix)\n", r.chunk_len, n_prefix);
    printf("shape        %d layers x %d kv heads x %d tokens x %d dims, codec %s\n", L, K, T, D,
           m3_codec_kind_name(r.layout.codec_kind));
    for (int l = 0; l < L; l++) {
      printf("layer %-3d   ", l);
      for (int g = 0; g < K; g++) {
        printf(g ? " |" : "");
        for (int t = 0; t < T; t++) {
          uint16_t p = r.positions[((size_t)l * K + g) * T + t];
          if (p == POS_NONE) printf(" -");
          else printf(" %u", p);
        }
      }
      printf("\n");
    }
    printf("(keys and values: --json)\n");
    ex = 0;
    goto out;
  }
  json_t *pos = json_array(), *jk = json_array(), *jv = json_array();
  for (int l = 0; l < L; l++) {
    json_t *pl = json_array(), *kl = json_array(), *vl = json_array();
    for (int g = 0; g < K; g++) {
      json_t *pg = json_array(), *kg = json_array(), *vg = json_array();
      for (int t = 0; t < T; t++) {
        json_array_append_new(pg, json_integer(r.positions[((size_t)l * K + g) * T + t]));
        for (int kvi = 0; kvi < 2; kvi++) {
          const float *x = kv + ((((size_t)l * 2 + kvi) * K + g) * T + t) * D;
          json_t *vec = json_array();
          for (int d = 0; d < D; d++) json_array_append_new(vec, json_real(x[d]));
          json_array_append_new(kvi ? vg : kg, vec);
        }
      }
      json_array_append_new(pl, pg), json_array_append_new(kl, kg), json_array_append_new(vl, vg);
    }
    json_array_append_new(pos, pl), json_array_append_new(jk, kl), json_array_append_new(jv, vl);
  }
  json_t *j = json_object();
  json_object_set_new(j, "chunk_id", json_integer((json_int_t)id));
  json_object_set_new(j, "text", json_stringn(text, tlen));
  json_object_set_new(j, "chunk_len", json_integer(r.chunk_len));
  json_object_set_new(j, "tokens", tokens ? tokens : json_null());
  tokens = NULL;
  json_object_set_new(j, "n_prefix_tokens", n_prefix >= 0 ? json_integer(n_prefix) : json_null());
  json_object_set_new(j, "codec", json_string(m3_codec_kind_name(r.layout.codec_kind)));
  char fp[20];
  snprintf(fp, sizeof fp, "%016llx", (unsigned long long)r.layout.codec_fp);
  json_object_set_new(j, "codec_fingerprint", json_string(fp));
  json_object_set_new(j, "positions", pos);
  json_object_set_new(j, "k", jk);
  json_object_set_new(j, "v", jv);
  char *out_s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
  json_decref(j);
  if (!out_s) {
    ex = dump_fail("json", M3_ENOMEM);
    goto out;
  }
  puts(out_s);
  free(out_s);
  ex = 0;
out:
  json_decref(tokens);
  free(text);
  free(kv);
  free(buf);
  m3_codec_set_close(cs);
  m3_store_close(s);
  return ex;
}
