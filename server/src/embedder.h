/*
 * How the served store was embedded (embedder.c): read once at startup from
 * DIR/encode.json's "embed" (written by m3-encode), reported in Hello and
 * Stats, and consulted before a text query is embedded: the server embeds
 * text only where the store's embeddings came from one of its built-in
 * embedders (hash:DIM; words:DIM with the store's DIR/idf.bin).
 */
#ifndef M3_SERVER_EMBEDDER_H
#define M3_SERVER_EMBEDDER_H

#include "call.h"
#include "server.h"

/* Set s->embedder and s->text_dim from s->cfg.store_dir's encode.json
 * ("unknown" and 0 where there is none). s->emb_dim must be set. Returns 0,
 * or a negative m3 code (message set) for an unreadable manifest or one whose
 * embedder disagrees with the store's dimension. */
int server_embedder_load(server *s);

/* Free what server_embedder_load loaded (the IDF table of a words:DIM
 * store); text is refused afterwards. */
void server_embedder_close(server *s);

/* Embed text query i into q (s->emb_dim floats). Returns 0, or -1 after
 * ending cl with INVALID_ARGUMENT: the store's embeddings are not ones the
 * server can compute, or the text has no word to embed. */
int server_embed_text(call *cl, size_t i, const char *text, float *q);

#endif
