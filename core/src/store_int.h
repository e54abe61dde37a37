/* The store handle, shared by store.c (open, write, read) and store_ops.c
 * (verify, compact, repair, stats). Private to core/. */
#ifndef M3_STORE_INT_H
#define M3_STORE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "cache.h"
#include "catalog.h"
#include "io.h"
#include "loctab.h"
#include "m3/store.h"
#include "segment.h"

/* The catalog set aside by a repair while it swaps the rebuilt one in
 * (store_ops.c); m3_store_open puts it back when no catalog is there. */
#define M3__CATALOG_ASIDE "catalog.old"

struct m3_store {
  char *dir;
  m3_store_options opts;
  m3_ident ident;     /* uuid, layout, alignment */
  size_t mem_size;    /* m3_record_mem_size of the layout, set at open (the
                         fetch path checks every buffer against it) */
  m3_catalog cat;
  /* id -> location for fetches (loctab.h), built at open and changed after
   * each catalog commit under the exclusive lock; NULL after it could not
   * follow a commit (out of memory), and lookups go to the catalog. */
  m3_loctab *loc;
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
  m3_store_bulk *bulk; /* the open bulk ingest, or NULL; set and cleared
                         under the exclusive lock */
  uint8_t *wbuf;      /* write staging, grown as batches need */
  size_t wcap;
  /* Asynchronous reads (store_aio.c) run without the lock, so whatever they
   * use must outlive a writer: compaction hands the descriptors of dropped
   * segments to `retired` while reads are in flight, and the last read to
   * complete closes them. `gen` counts commits (under the exclusive lock) so
   * that a read that started before a put or delete does not cache what
   * that commit replaced. */
  atomic_size_t aio_reads;
  _Atomic uint64_t gen;
  pthread_mutex_t retire_lock;
  int *retired;
  size_t nretired, capretired;
};

/* A read backend for this thread's batch; give it back with m3__store_io_put. */
int m3__store_io_get(m3_store *s, m3_io **io);
void m3__store_io_put(m3_store *s, m3_io *io);

/* Locations of n ids (status[i] 0, M3_ENOTFOUND or M3_ECORRUPT) from the
 * location table, or the catalog when there is none. Caller holds the lock
 * (either side). */
int m3__store_locs(m3_store *s, const uint64_t *ids, size_t n, m3_location *locs, int *status);

/* After a committed catalog change: record (or, loc NULL, forget) id in the
 * location table. On failure the table is dropped, with an error logged,
 * and lookups fall back to the catalog. Caller holds the exclusive lock. */
void m3__store_loc_set(m3_store *s, uint64_t id, const m3_location *loc);

/* Build the location table from the catalog's 'C' entries. */
int m3__store_loc_build(m3_store *s);

/* The location table's snapshot beside the catalog (loctab.h). */
#define M3__LOC_SNAPSHOT "loctab.snap"
/* At open, before anything writes to the catalog: the snapshot's table if
 * it equals the catalog now (else NULL), with the catalog's seqno in
 * *seqno; a writing open removes the file (it would be stale after the
 * first commit). */
m3_loctab *m3__store_loc_snap_take(m3_store *s, uint64_t *seqno);
/* At close of a writable store: write the snapshot (failures logged). */
void m3__store_loc_snap_save(m3_store *s);

/* Segment by id, or NULL. */
m3_segment *m3__store_seg(m3_store *s, uint32_t id);

/* Close seg's descriptors now, or once the asynchronous reads in flight
 * have completed. */
void m3__store_retire(m3_store *s, m3_segment *seg);
/* Close retired descriptors if no asynchronous read is in flight. */
void m3__store_retire_sweep(m3_store *s);

/* The steps of a fetch, shared by m3_store_fetch and store_aio.c:
 * item_init checks item i's buffer (M3_EINVAL) and fills it from the cache
 * (1) or not (0); plan fills r for the read of the record at loc (1) or
 * sets it->status (0); finish checks the bytes r read and sets it->status,
 * data and len, caching good bytes when `cache`. */
int m3__fetch_item_init(m3_store *s, m3_fetch_item *it, size_t i);
int m3__fetch_plan(m3_store *s, m3_fetch_item *it, const m3_location *loc, m3_read *r);
void m3__fetch_finish(m3_store *s, m3_fetch_item *it, const m3_location *loc, const m3_read *r,
                      int cache);

/* Create the next segment and make it the active one (the catalog lists
 * it, header only). Caller holds the exclusive lock. */
int m3__store_roll_segment(m3_store *s);

/* Remove the segments with id >= min_id that hold no record (header
 * only): from the catalog (one synced commit), the segment array and the
 * directory. Caller holds the exclusive lock (or is opening the store). */
int m3__store_drop_empty(m3_store *s, uint32_t min_id);

/* Records a repair stages per SST ingest (262144; tests lower it to cross
 * batch boundaries on small stores). */
extern size_t m3__repair_batch;

/* M3_EBUSY naming the open bulk ingest: puts, deletes and compaction wait
 * for it to finish. */
int m3__store_bulk_busy(m3_store *s);

/* Verify every live record by reading it at the catalog's location and
 * comparing with the catalog's text and embedding (point lookups): names
 * each problem. The streaming verify (store_verify.c) falls back to it when
 * its counts disagree. Caller holds the shared lock. */
int m3__store_verify_entries(m3_store *s, m3_io *io, m3_problem_fn fn, void *ud,
                             uint64_t *checked);

/* m3_store_check_locations without taking the lock (caller holds it). */
int m3__store_loc_check(m3_store *s, uint64_t *checked);

/* Report progress of a long walk to the hook m3_store_set_progress set
 * (when done is a multiple of 2^16, or done == total). */
void m3__progress(const char *what, uint64_t done, uint64_t total);

/* Monotonic seconds, for the timings logged at debug level. */
static inline double m3__now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Make sure wbuf holds size bytes. */
int m3__store_wbuf(m3_store *s, size_t size);

#endif /* M3_STORE_INT_H */
