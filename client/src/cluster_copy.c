/*
 * Copies the cluster keeps of what it does not own: a memory copied out of
 * a connection's receive buffer (hedged Fetch buffers the attempts'
 * memories; dispatch mode queues them for the application's thread), and a
 * call's queries with their vectors and texts (async ops and hedged races
 * outlive the caller's arrays).
 *
 * Workload: one malloc and one copy per memory (tens to hundreds of KB);
 * queries of a few KB per call.
 */
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"
#include "m3/error.h"
#include "m3/record.h"

int m3__memcopy_make(m3__memcopy *c, const m3_client_memory *m) {
  size_t tl = m->text ? strlen(m->text) : 0;
  size_t el = m->error ? strlen(m->error) : 0;
  size_t dl = m->data ? m->len : 0;
  /* [m3_record][data][text NUL][error NUL]: the record first keeps it aligned */
  uint8_t *b = malloc(sizeof(m3_record) + dl + tl + 1 + el + 1);
  if (b == NULL) return M3_ENOMEM;
  c->m = *m;
  c->blk = b;
  m3_record *rec = (m3_record *)b;
  uint8_t *data = b + sizeof(m3_record);
  char *text = (char *)data + dl, *err = text + tl + 1;
  if (dl) memcpy(data, m->data, dl);
  memcpy(text, m->text ? m->text : "", tl + 1);
  memcpy(err, m->error ? m->error : "", el + 1);
  c->m.data = m->data ? data : NULL;
  c->m.text = text;
  c->m.text_len = m->text ? m->text_len : 0;
  c->m.error = err;
  c->m.record = NULL;
  if (m->record && m->data) {
    /* The parsed record points into data: point it into the copy. */
    *rec = *m->record;
    const uint8_t *lo = m->data, *hi = m->data + dl;
#define REBASE(f, T)                                                               \
  rec->f = (rec->f && (const uint8_t *)rec->f >= lo && (const uint8_t *)rec->f < hi) \
               ? (T)(data + ((const uint8_t *)rec->f - lo))                          \
               : NULL
    REBASE(positions, const uint16_t *);
    REBASE(codes, const uint8_t *);
    REBASE(text, const char *);
    REBASE(embedding, const uint8_t *);
#undef REBASE
    c->m.record = rec;
  }
  return 0;
}

void m3__memcopy_free(m3__memcopy *c) {
  free(c->blk);
  c->blk = NULL;
}

int m3__queries_copy(const m3_client_query *q, size_t nq, m3_client_query **qo, float **vo,
                     char **to) {
  size_t nv = 0, nt = 0;
  for (size_t i = 0; i < nq; i++) {
    if (q[i].vector) nv += q[i].dim;
    else if (q[i].text) nt += strlen(q[i].text) + 1;
  }
  *qo = calloc(nq, sizeof **qo);
  *vo = malloc((nv ? nv : 1) * sizeof(float));
  *to = malloc(nt ? nt : 1);
  if (*qo == NULL || *vo == NULL || *to == NULL) return M3_ENOMEM;
  float *v = *vo;
  char *t = *to;
  for (size_t i = 0; i < nq; i++) {
    (*qo)[i] = q[i];
    if (q[i].vector) {
      memcpy(v, q[i].vector, q[i].dim * sizeof *v);
      (*qo)[i].vector = v;
      v += q[i].dim;
    } else if (q[i].text) {
      size_t l = strlen(q[i].text) + 1;
      memcpy(t, q[i].text, l);
      (*qo)[i].text = t;
      t += l;
    }
  }
  return 0;
}
