/*
 * What the built-in embedders (embed_hash.c, embed_words.c) share inside
 * core: the machine-independent natural log their weights use.
 */
#ifndef M3_EMBED_INT_H
#define M3_EMBED_INT_H

/* ln(x) for x >= 1 by a fixed sequence of IEEE double operations (the same
 * bits on every machine; embed_hash.c). */
double m3__ln_fixed(double x);

#endif
