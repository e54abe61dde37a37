/*
 * The memories of a Retrieve or Fetch (fetch.c): one store read per id,
 * through the read pump (readbuf.h), each memory streamed out as a
 * RESPONSE (a Memory with its record as attachment) as soon as it is read,
 * then END.
 */
#ifndef M3_SERVER_FETCH_H
#define M3_SERVER_FETCH_H

#include "readbuf.h"

/* One call's fetch, in its method's state (arena). */
typedef struct fetch_req {
  rb_reads r;
  size_t *slot;         /* (nitems) item j answers ids[slot[j]] */
  char **texts;         /* (nitems) with_text: chunk texts (the store's
                           malloc; freed here once sent) */
  unsigned k;           /* Retrieve: results per query (slot = query * k +
                           rank); 0: Fetch (slot = the id's index) */
  const float *scores;  /* Retrieve: (nq, k) */
  size_t sent;          /* items whose frames are queued */
  size_t job_first, job_n;
  int status;           /* the threadpool job's m3 code */
  char errmsg[256];
  uv_work_t work;
} fetch_req;

/* Read and stream the memories of ids[0, nids) (UINT64_MAX entries: none,
 * a Retrieve's empty ranks) for cl, in cl's arena: k and scores as above;
 * with_text: with chunk texts (reads on the threadpool). Ends the call when
 * the last memory is queued, or on failure. */
void fetch_start(fetch_req *fr, call *cl, const uint64_t *ids, size_t nids, unsigned k,
                 const float *scores, int with_text);

/* Free the send arrays (after rb_close). */
void fetch_close(server *s);

#endif /* M3_SERVER_FETCH_H */
