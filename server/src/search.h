/*
 * The search pipeline (search.c), shared by Search and Retrieve: requests
 * queue up while a search job runs on the threadpool, and the next job
 * searches every queued query in one index call (micro-batching: under
 * load, N concurrent calls cost one FAISS search). Calls that set other
 * IndexParams (nprobe, ef_search) go in other jobs: one FAISS search runs
 * with one setting.
 */
#ifndef M3_SERVER_SEARCH_H
#define M3_SERVER_SEARCH_H

#include "call.h"

/* The largest IndexParams.ef_search a call may ask for. */
#define SEARCH_MAX_EF_SEARCH 65536

/* One call's search, in its method's state (arena). */
struct search_req {
  call *cl;
  search_req *qnext;  /* s->search_queue / s->search_batch */
  float *queries;     /* (nq, emb_dim) */
  unsigned nq, k;
  unsigned nprobe, ef_search; /* the call's IndexParams; 0: the server's */
  uint64_t *ids;      /* (nq, k) results, UINT64_MAX past the store's size */
  float *scores;      /* (nq, k) */
  unsigned char *drop_fillers; /* (nq) 1: a text query whose results scoring
                                  <= 0 are cut (UINT64_MAX) */
  unsigned fillers;   /* results drop_fillers cut (metrics) */
  int status;         /* the job's m3 code for this request */
  char errmsg[256];
  /* On the loop once the search succeeded and the call has not ended. */
  void (*done)(search_req *r);
};

/* Check k (1..max_k), the nq queries (vectors of the store's dims, or
 * texts to embed) and params (NULL: none; each field the index takes and
 * in range), and fill r from them (arrays in cl's arena): 0, or the call
 * has ended with the reason (-1). */
int search_load(search_req *r, call *cl, unsigned k, M3__Query **qs, size_t nq,
                const M3__IndexParams *params);

/* Queue r for the next search job; the pipeline holds its call until the
 * job is back, then ends it on failure or runs r->done. */
void search_enqueue(search_req *r);

#endif /* M3_SERVER_SEARCH_H */
