/*
 * The served store's embedder (embedder.h): DIR/encode.json's "embed" ->
 * s->embedder / s->text_dim, and the check that refuses text queries the
 * server cannot embed (an external or hidden-state store would otherwise be
 * searched with hash vectors: meaningless results with no warning).
 */
#include "embedder.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "m3/embed.h"
#include "m3/error.h"

int server_embedder_load(server *s) {
  char path[4200];
  snprintf(path, sizeof path, "%s/encode.json", s->cfg.store_dir);
  snprintf(s->embedder, sizeof s->embedder, "unknown");
  s->text_dim = 0;
  FILE *f = fopen(path, "r");
  if (!f) {
    if (errno == ENOENT) return 0;
    return m3__seterr(M3_EIO, "%s: %s", path, strerror(errno));
  }
  json_error_t je;
  json_t *m = json_loadf(f, 0, &je);
  fclose(f);
  if (!m) return m3__seterr(M3_EBADFORMAT, "%s:%d:%d: %s", path, je.line, je.column, je.text);
  int rc = 0;
  json_t *e = json_object_get(m, "embed");
  if (e == NULL) goto out;
  const char *emb = json_string_value(e);
  if (emb == NULL || !*emb || strlen(emb) >= sizeof s->embedder) {
    rc = m3__seterr(M3_EBADFORMAT, "%s: field \"embed\": not an embedder name", path);
    goto out;
  }
  snprintf(s->embedder, sizeof s->embedder, "%s", emb);
  if (strncmp(emb, "hash:", 5) == 0 || strncmp(emb, "words:", 6) == 0) {
    m3_embed_spec sp;
    if (m3_embed_spec_parse(emb, &sp) != 0 || sp.dim != s->emb_dim) {
      rc = m3__seterr(M3_EBADFORMAT,
                      "%s: field \"embed\" is \"%s\", but the store's embeddings have %u dims",
                      path, emb, s->emb_dim);
      goto out;
    }
    if (sp.kind == M3_EMBED_WORDS) {
      /* Queries must be weighted as the chunks were: the store's own table. */
      char ipath[4200];
      snprintf(ipath, sizeof ipath, "%s/" M3_IDF_FILE, s->cfg.store_dir);
      if ((rc = m3_idf_load(ipath, &s->text_idf)) != 0) {
        rc = m3__seterr(rc, "store embedded with %s: %s", emb, m3_errmsg());
        goto out;
      }
      const char *want = json_string_value(json_object_get(m, "idf_crc32c"));
      char have[16];
      snprintf(have, sizeof have, "%08x", m3_idf_crc(s->text_idf));
      if (want && strcmp(want, have) != 0) {
        rc = m3__seterr(M3_ECORRUPT, "%s: crc32c %s, but %s says the store's table is %s (another "
                        "store's idf.bin?)", ipath, have, path, want);
        goto out;
      }
      sp.idf = s->text_idf;
    }
    s->text_embed = sp;
    s->text_dim = sp.dim;
  }
out:
  if (rc) server_embedder_close(s);
  json_decref(m);
  return rc;
}

int server_embed_text(call *cl, size_t i, const char *text, float *q) {
  server *s = cl->c->s;
  if (s->text_dim == 0) {
    const char *e = s->embedder;
    if (strcmp(e, "external") == 0)
      call_end(cl, M3_STATUS_INVALID_ARGUMENT,
               "query %zu: this store's embeddings are external (dimension %u): send vectors "
               "with --vector-file", i, s->emb_dim);
    else if (strncmp(e, "hidden:", 7) == 0)
      call_end(cl, M3_STATUS_INVALID_ARGUMENT,
               "query %zu: this store's embeddings are the model's hidden states (%s, dimension "
               "%u), which the server cannot compute: send vectors with --vector-file", i, e,
               s->emb_dim);
    else
      call_end(cl, M3_STATUS_INVALID_ARGUMENT,
               "query %zu: this store's embedder is %s (no \"embed\" in its encode.json; dimension "
               "%u), so the server cannot embed text for it: send vectors with --vector-file",
               i, e, s->emb_dim);
    return -1;
  }
  if (m3_embed(&s->text_embed, text, strlen(text), q) != 0) {
    call_end(cl, M3_STATUS_INVALID_ARGUMENT, "query %zu: %s", i, m3_errmsg());
    return -1;
  }
  return 0;
}

void server_embedder_close(server *s) {
  m3_idf_free(s->text_idf);
  s->text_idf = NULL;
  s->text_embed.idf = NULL;
  s->text_dim = 0;
}
