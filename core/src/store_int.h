/* The store handle, shared by store.c (open, write, read) and store_ops.c
 * (verify, compact, repair, stats). Private to core/. */
#ifndef M3_STORE_INT_H
#define M3_STORE_INT_H

#include <pthread.h>

#include "cache.h"
#include "catalog.h"
#include "io.h"
#include "m3/store.h"
#include "segment.h"

struct m3_store {
  char *dir;
  m3_store_options opts;
  m3_ident ident;     /* uuid, layout, alignment */
  m3_catalog cat;
  m3_segment *segs;   /* live segments, sorted by id; the last is active */
  size_t nsegs, capsegs;
  uint32_t next_seg;  /* id of the next segment to create */
  m3_io *io;          /* the first backend; more are made for concurrent fetches */
  m3_io *iopool[16];  /* idle backends, guarded by iolock */
  int niopool;
  pthread_mutex_t iolock;
  /* Fetches and scans take it shared; put, delete and compact exclusive:
   * they change the segment array that readers walk. */
  pthread_rwlock_t rw;
  m3_cache *cache;    /* NULL when disabled; locks itself */
  uint8_t *wbuf;      /* write staging, grown as batches need */
  size_t wcap;
};

/* A read backend for this thread's batch; give it back with m3__store_io_put. */
int m3__store_io_get(m3_store *s, m3_io **io);
void m3__store_io_put(m3_store *s, m3_io *io);

/* Segment by id, or NULL. */
m3_segment *m3__store_seg(m3_store *s, uint32_t id);

/* Make sure wbuf holds size bytes. */
int m3__store_wbuf(m3_store *s, size_t size);

#endif /* M3_STORE_INT_H */
