/*
 * Training sample sizes of FAISS factory strings (m3codec): the largest
 * k-means a string trains, read off its components. FAISS k-means needs at
 * least k vectors and warns below 39 per centroid (Clustering's
 * min_points_per_centroid); it subsamples above 256 per centroid.
 *   PQ<M>[x<b>]           k = 2^b (b = 8 when absent), M k-means
 *   OPQ<M>[_<d>]          trains a PQ<M>x8 inside: k = 256
 *   Residual<M>x<b>, IMI  the multi-index halves: k = 2^b
 *   Residual<n>, IVF<n>   the coarse quantizer: k = n
 *   RQ<M>x<b>[_..], LSQ   k = 2^b per codebook
 *   SQ, PCA, RR, ...      no k-means
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "m3/codec.h"

/* k of one component, 0 without k-means. */
static size_t component_k(const char *t, size_t len) {
  char tok[64];
  if (len >= sizeof tok)
    return 0;
  memcpy(tok, t, len);
  tok[len] = 0;
  const char *p = NULL;
  if (!strncmp(tok, "OPQ", 3))
    return isdigit((unsigned char)tok[3]) ? 256 : 0;
  if (!strncmp(tok, "PQ", 2))
    p = tok + 2;
  else if (!strncmp(tok, "RQ", 2))
    p = tok + 2;
  else if (!strncmp(tok, "LSQ", 3))
    p = tok + 3;
  else if (!strncmp(tok, "IMI", 3))
    p = tok + 3;
  else if (!strncmp(tok, "Residual", 8))
    p = tok + 8;
  else if (!strncmp(tok, "IVF", 3))
    p = tok + 3;
  if (!p || !isdigit((unsigned char)*p))
    return 0;
  char *e;
  unsigned long a = strtoul(p, &e, 10);
  size_t k = 0;
  if (*e == 'x') { /* <M>x<b>[_<M>x<b>...]: the widest codebook */
    while (*e == 'x') {
      unsigned long b = strtoul(e + 1, &e, 10);
      if (b >= 1 && b <= 30 && ((size_t)1 << b) > k)
        k = (size_t)1 << b;
      if (*e == '_' && isdigit((unsigned char)e[1]))
        (void)strtoul(e + 1, &e, 10);
    }
    return k;
  }
  if (!strncmp(tok, "PQ", 2))
    return 256; /* PQ<M>: 8 bits */
  if (!strncmp(tok, "Residual", 8) || !strncmp(tok, "IVF", 3))
    return a;
  return 0;
}

void m3_codec_train_sample_size(const char *factory, size_t *min, size_t *want) {
  size_t k = 0;
  for (const char *s = factory ? factory : ""; *s;) {
    const char *e = strchr(s, ',');
    size_t len = e ? (size_t)(e - s) : strlen(s);
    size_t c = component_k(s, len);
    if (c > k)
      k = c;
    s += len + (e ? 1 : 0);
  }
  *min = k;
  *want = 39 * k;
}
