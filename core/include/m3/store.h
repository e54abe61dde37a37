/*
 * The store: one shard of explicit memories on local disk.
 *
 * A store directory holds
 *   catalog/          RocksDB: store metadata, chunk id -> record location,
 *                     chunk texts, the list of live segments
 *   seg-NNNNNN.m3s    append-only segment files of memory records (m3/record.h)
 * Segments are the source of truth: every record is self-describing and
 * checksummed, so m3_store_repair() can rebuild the catalog from them.
 *
 * Writes are group commits: a batch of records is appended to the active
 * segment, the segment is fdatasync'ed, then one RocksDB write batch points the
 * catalog at the new records. A put or delete is acknowledged (returns 0) only
 * after that. Opening a store rolls forward records that reached a segment
 * but not the catalog, and cuts a torn tail; so a crash at any point leaves a
 * store that opens, verifies and resumes, with every acknowledged record
 * intact and no catalog entry pointing at missing bytes.
 *
 * Reads are batched: m3_store_fetch() reads N memories with one io_uring
 * submission (or preads where io_uring is refused) into caller buffers,
 * optionally with O_DIRECT, checks each record's checksums and never returns
 * corrupt bytes as data. A bounded RAM cache keeps hot memories.
 *
 * Threads: fetch, get_text, get_embedding, locate, contains, iterate, stats
 * and verify may run on several threads at once (each fetch uses its own
 * io_uring from a small pool). Put, delete and compact may be called from any
 * thread; they exclude fetches for their duration (a reader-writer lock that
 * prefers writers). Open, close and repair are not concurrent with anything.
 */
#ifndef M3_STORE_H
#define M3_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "m3/record.h"
#include "m3/spec.h"

typedef struct m3_store m3_store;

typedef enum m3_io_backend {
  M3_IO_AUTO = 0,  /* io_uring, or pread when the kernel refuses io_uring */
  M3_IO_URING = 1, /* io_uring only; opening fails if it is unavailable */
  M3_IO_PREAD = 2, /* pread(2), one call per record */
} m3_io_backend;

typedef struct m3_store_options {
  int create;              /* create the store if the directory has none */
  int read_only;           /* no writes, no roll-forward, no truncation */
  m3_layout layout;        /* with create: what the store holds */
  uint32_t align;          /* with create: record alignment in segments (512) */
  uint64_t segment_bytes;  /* roll to a new segment past this size (1 GiB) */
  int direct;              /* read with O_DIRECT (buffers: m3_store_buf_alloc) */
  m3_io_backend io;        /* read backend (M3_IO_AUTO) */
  unsigned queue_depth;    /* io_uring entries (64) */
  size_t cache_bytes;      /* hot-memory cache budget; 0 disables (0) */
  int sync_catalog;        /* fsync the catalog WAL on each commit (0: the
                              segments are synced and roll-forward covers it) */
} m3_store_options;

/* Defaults: open an existing store, buffered reads, M3_IO_AUTO, no cache,
 * and with create, the Memory3 shape with raw bf16 vectors. Also honours
 * $M3_IO (auto|uring|pread) so that tests can run every backend. */
void m3_store_options_init(m3_store_options *o);

/*
 * Open (or with o->create, create) the store in dir. On success *out owns the
 * handle; free it with m3_store_close(). Errors: M3_ENOTFOUND (no store and
 * not create), M3_EBUSY (another process has it open), M3_EBADFORMAT /
 * M3_EVERSION (not a store this build reads), M3_ESHAPE (create with a layout
 * other than the existing store's), M3_EIO / M3_ENOSPC.
 */
int m3_store_open(const char *dir, const m3_store_options *o, m3_store **out);

/* Close and free. m3_store_close(NULL) does nothing. */
void m3_store_close(m3_store *s);

/* What the store holds (shape, codec, fingerprint) and its record alignment. */
const m3_layout *m3_store_layout(const m3_store *s);
uint32_t m3_store_align(const m3_store *s);
/* "io_uring" or "pread". */
const char *m3_store_io_backend(const m3_store *s);

/* ---- writing -------------------------------------------------------- */

/*
 * Put n memories as one group commit (durable when it returns 0). Each item's
 * positions and codes must have the store's layout; the pointers are borrowed
 * for the call. Putting a chunk id that holds identical content is a no-op;
 * different content replaces it. On failure nothing of the batch is visible
 * and the store stays usable; M3_ENOSPC and M3_EIO name the file.
 * A failed Put may still persist: its segment bytes are cut back, but when
 * that cut fails too (or the process dies before it) the records written
 * whole are rolled forward at the next open, so after a restart such a Put
 * can be there, whole, or absent; never partial. Retrying it is safe (the
 * same content is a no-op).
 */
int m3_store_put(m3_store *s, const m3_record_in *items, size_t n);

/* Delete chunk ids (one group commit). Ids that are absent are ignored.
 * *deleted, when not NULL, receives how many were present. */
int m3_store_delete(m3_store *s, const uint64_t *ids, size_t n, size_t *deleted);

/* ---- bulk ingest ---------------------------------------------------- */

/*
 * Bulk ingest: write many memories (m3-bench gen, m3-encode, a merge of
 * partial stores) at disk speed. Records are appended to segments without
 * a sync per batch; at each checkpoint the segments are fdatasync'ed, the
 * checkpoint's catalog entries are written as sorted RocksDB SST files (one
 * per key prefix) and ingested (IngestExternalFile: all visible at once),
 * then the segments' ends are committed. A put costs a sync and a write batch per call; a
 * checkpoint costs one sync and one file per ~10^5 records.
 *
 *   m3_store_bulk *b;
 *   m3_store_bulk_begin(s, NULL, &b);
 *   while (more) m3_store_bulk_add(b, items, n);   // any batch size
 *   rc = m3_store_bulk_finish(b);                  // last checkpoint, frees b
 *
 * Contract:
 * - What is durable: everything added before a checkpoint that returned 0
 *   (m3_store_bulk_checkpoint, one made automatically inside add every
 *   checkpoint_records, or finish). After a crash (kill -9 at any point) the
 *   store opens, verifies and holds every checkpointed memory intact; records
 *   added after the last checkpoint are either present whole (rolled forward
 *   from the segment at open) or absent, never partial. Resuming is adding
 *   again: re-adding an id with identical content (same checksums and
 *   length) is skipped, so a resumed ingest writes no duplicates.
 * - Visibility: fetches, get_text, iterate ... see a memory from the
 *   checkpoint that made it durable on, never before.
 * - An id added twice in one bulk ends with the content added last; an id
 *   already in the store is replaced (its old record becomes dead bytes for
 *   compaction). Bulk ingest only adds or replaces; delete with
 *   m3_store_delete after finishing.
 * - Threads: one bulk per store at a time, used by one thread. Fetches and
 *   other reads run on other threads meanwhile; m3_store_put, delete and
 *   compact return M3_EBUSY until the bulk is finished or aborted.
 * - Errors: add and checkpoint return M3_EINVAL (an item without the
 *   store's layout, nothing of the call staged), M3_ENOSPC / M3_EIO (naming
 *   the file), M3_ENOMEM. After a failed checkpoint the bulk accepts nothing
 *   more (M3_EIO): abort it; what earlier checkpoints made durable stays.
 */
typedef struct m3_store_bulk m3_store_bulk;

typedef struct m3_store_bulk_options {
  size_t checkpoint_records; /* automatic checkpoint after this many records
                                were staged (262144) */
  size_t checkpoint_bytes;   /* ... or this many bytes of catalog entries
                                (texts, embeddings) were staged (256 MiB):
                                bounds the RAM a bulk holds */
} m3_store_bulk_options;

void m3_store_bulk_options_init(m3_store_bulk_options *o);

/* Start a bulk ingest into s (o NULL: defaults). *out owns it until
 * m3_store_bulk_finish or m3_store_bulk_abort. M3_EBUSY when one is open,
 * M3_EUNSUPPORTED on a read-only store. */
int m3_store_bulk_begin(m3_store *s, const m3_store_bulk_options *o, m3_store_bulk **out);

/* Stage n memories (items borrowed for the call, copied). May run a
 * checkpoint. */
int m3_store_bulk_add(m3_store_bulk *b, const m3_record_in *items, size_t n);

/* Make everything staged durable and visible now. */
int m3_store_bulk_checkpoint(m3_store_bulk *b);

/* Counters of a bulk so far. */
typedef struct m3_store_bulk_stats {
  uint64_t added;       /* items given to add */
  uint64_t skipped;     /* of those, already stored with identical content */
  uint64_t durable;     /* records made durable by checkpoints */
  uint64_t checkpoints;
} m3_store_bulk_stats;

void m3_store_bulk_stats_get(const m3_store_bulk *b, m3_store_bulk_stats *st);

/* Checkpoint, then free b (also when the checkpoint failed). Returns the
 * checkpoint's code. NULL: 0. */
int m3_store_bulk_finish(m3_store_bulk *b);

/* Drop what was staged since the last checkpoint (cut from the segments;
 * segments the bulk rolled that end up holding no record are removed) and
 * free b. NULL: no-op. */
void m3_store_bulk_abort(m3_store_bulk *b);

/* ---- reading -------------------------------------------------------- */

/* One memory to fetch. */
typedef struct m3_fetch_item {
  uint64_t chunk_id; /* in */
  void *buf;         /* in: caller's buffer, m3_store_fetch_cap() bytes; with
                        direct I/O aligned as m3_store_buf_alloc() aligns */
  size_t cap;        /* in: bytes at buf */
  const uint8_t *data; /* out: the record (header + positions + codes) inside buf */
  size_t len;          /* out: its length, m3_record_mem_size(layout) */
  int status;          /* out: 0, M3_ENOTFOUND, M3_ECORRUPT or M3_EIO */
} m3_fetch_item;

/* Buffer size one fetch item needs (record plus alignment slack). */
size_t m3_store_fetch_cap(const m3_store *s);

/* An allocation suitable as a fetch buffer (aligned for O_DIRECT); free with
 * free(). NULL when out of memory. */
void *m3_store_buf_alloc(const m3_store *s, size_t size);

/*
 * Fetch n memories into the caller's buffers with one batched read. Each
 * item gets its own status; a record whose checksum fails is M3_ECORRUPT
 * (logged with its file and offset) and its bytes are not returned. Returns
 * 0 when the batch ran (check each status), or a negative code when it could
 * not (bad arguments, catalog failure).
 */
int m3_store_fetch(m3_store *s, m3_fetch_item *items, size_t n);

/* ---- asynchronous reads, for an event loop ---------------------------- */

/*
 * An m3_store_aio reads memories with its own io_uring whose completions
 * signal an eventfd, so an event loop (m3-server's libuv loop) can poll that
 * descriptor and handle each memory as soon as its read completes, with no
 * thread blocked on the disk. It needs the io_uring backend: with pread,
 * open fails with M3_EUNSUPPORTED and the caller uses m3_store_fetch on
 * worker threads instead.
 *
 * One aio is used by one thread (submit and reap on the loop thread); the
 * store's other readers and writers run alongside it. A read in flight
 * keeps the bytes it was planned against: a compaction that drops the
 * segment meanwhile closes its file only after the read completed.
 */
typedef struct m3_store_aio m3_store_aio;

/* Called from m3_store_aio_reap once per submitted item, with status, data
 * and len set as m3_store_fetch sets them. It may submit more items. */
typedef void (*m3_store_aio_fn)(void *ud, m3_fetch_item *it);

/* Make an aio for s with depth reads in the kernel at once (64 when 0).
 * Close it before the store. */
int m3_store_aio_open(m3_store *s, unsigned depth, m3_store_aio **out);

/* The eventfd that becomes readable when m3_store_aio_reap has work. */
int m3_store_aio_fd(const m3_store_aio *a);

/*
 * Start reading n items (buffers as for m3_store_fetch); each is completed
 * through fn(ud, item) from a later m3_store_aio_reap, never from within
 * submit, including items that need no read (cache hits, ids not in the
 * store). The items and their buffers must stay valid until then. Returns
 * 0 when every item was accepted; M3_EBUSY, accepting none, while a writer
 * (put, delete, compact) holds or waits for the store, so that an event
 * loop never blocks behind a commit (try again later, or fetch on a
 * worker); M3_EINVAL for a bad buffer; M3_ENOMEM; a catalog error.
 */
int m3_store_aio_submit(m3_store_aio *a, m3_fetch_item *items, size_t n, m3_store_aio_fn fn,
                        void *ud);

/* Complete what is ready: clears the eventfd, checks each finished read,
 * calls fn for it, and starts reads that waited for room in the ring.
 * Never blocks. Returns how many items it completed, or a negative code. */
int m3_store_aio_reap(m3_store_aio *a);

/* Items submitted and not yet completed. */
size_t m3_store_aio_pending(const m3_store_aio *a);

/* Wait for reads in flight (without calling their fn) and free. NULL: no-op. */
void m3_store_aio_close(m3_store_aio *a);

/* ---- spans, for sending memories without reading them ---------------- */

/* A record's bytes in a segment file (fd < 0: none; the item's bytes are in
 * its buffer, or it failed). The descriptor is the store's: never close it. */
typedef struct m3_span {
  int fd;
  uint64_t off;
  uint32_t len;
} m3_span;

/*
 * For a server that sends memories from the page cache with sendfile or
 * splice: for each item (buffers as for m3_store_fetch), look it up and, for
 * a record in a segment file, read and check only its header (into it->buf;
 * it->data = it->buf, it->len = the record's length) and fill spans[i]; a
 * cache hit is read whole into it->buf (spans[i].fd = -1). Item statuses as
 * m3_store_fetch's. The memory bytes after the header are NOT checked: the
 * receiver checks the payload CRC32C. Each span with fd >= 0 keeps its
 * descriptor open (a compaction that drops the segment closes it later)
 * until m3_store_spans_release counts it back. Returns 0; M3_EBUSY (none
 * handed out) while a writer holds the store; M3_EUNSUPPORTED with O_DIRECT;
 * M3_EINVAL for a bad buffer; a catalog error. Blocks on the header reads,
 * unless flags has M3_SPANS_CACHED: then each record's header and last byte
 * are read with RWF_NOWAIT, and when any of them is not in the page cache
 * (or the filesystem cannot say) none is handed out and it returns
 * M3_SPANS_COLD (> 0): read those items instead. The pages between can
 * still have been evicted, so a sendfile of a span may block (rarely).
 */
#define M3_SPANS_CACHED 1u
#define M3_SPANS_COLD 1
int m3_store_spans(m3_store *s, m3_fetch_item *items, size_t n, m3_span *spans, unsigned flags);
/* n spans handed out by m3_store_spans are no longer used. */
void m3_store_spans_release(m3_store *s, size_t n);

/* Chunk text into *text (malloc'ed, NUL-terminated, caller frees) and its
 * length into *len. M3_ENOTFOUND when absent. */
int m3_store_get_text(m3_store *s, uint64_t chunk_id, char **text, size_t *len);

/* The retrieval embedding of chunk_id into out (layout.emb_dim floats).
 * M3_ENOTFOUND when absent (or the store keeps no embeddings). */
int m3_store_get_embedding(m3_store *s, uint64_t chunk_id, float *out);

/* Call fn for every stored embedding in chunk id order (emb: emb_dim floats,
 * valid during the call); fn returning non-zero stops the walk. */
int m3_store_iterate_embeddings(m3_store *s,
                                int (*fn)(void *ud, uint64_t chunk_id, const float *emb),
                                void *ud);

/* A number that grows with every committed change to the catalog; derived
 * state (a retrieval index) records it to know whether it is current. */
uint64_t m3_store_seqno(m3_store *s);

/* The store directory (owned by the store). */
const char *m3_store_dir(const m3_store *s);

/* Whether chunk_id is present: 1, 0, or a negative code. */
int m3_store_contains(m3_store *s, uint64_t chunk_id);

/* Where a record lives: for tools and benchmarks that read the same bytes. */
typedef struct m3_location {
  uint32_t segment; /* segment id (file seg-%06u.m3s) */
  uint64_t offset;  /* record start in the file */
  uint32_t mem_len; /* header + positions + codes */
  uint32_t rec_len; /* the whole record, text included */
  uint32_t mem_crc;
  uint32_t text_crc;
} m3_location;

int m3_store_locate(m3_store *s, uint64_t chunk_id, m3_location *loc);

/* Path of segment id into buf. */
char *m3_store_segment_path(const m3_store *s, uint32_t segment, char *buf, size_t cap);

/* Call fn for every live chunk id in increasing order; fn returning non-zero
 * stops the walk and is returned. */
int m3_store_iterate(m3_store *s, int (*fn)(void *ud, uint64_t chunk_id, const m3_location *loc),
                     void *ud);

/* ---- operations ----------------------------------------------------- */

typedef struct m3_store_stats {
  uint64_t records;        /* live memories */
  uint64_t segments;
  uint64_t segment_bytes;  /* bytes of all segment files */
  uint64_t payload_bytes;  /* positions + codes of live memories */
  uint64_t record_bytes;   /* whole live records (header, text included) */
  uint64_t text_bytes;     /* chunk text of live memories (embeddings not included) */
  uint64_t dead_bytes;     /* segment bytes not held by live records */
  double overhead;         /* segment_bytes / (payload_bytes + text_bytes +
                              embedding_bytes) - 1 */
  uint64_t catalog_bytes;  /* RocksDB files */
  uint64_t loc_table_bytes;   /* RAM of the id -> location table */
  uint64_t catalog_ram_bytes; /* RAM RocksDB holds: block cache in use,
                                 memtables, index/filter readers */
  uint64_t cache_hits, cache_misses;
  uint64_t embedding_bytes; /* retrieval embeddings of live memories (4 * dims each) */
} m3_store_stats;

/* Walks the catalog: O(records). For a cheap look, see m3_store_cache_counters. */
int m3_store_stats_get(m3_store *s, m3_store_stats *st);

/* RAM the store holds to serve fetches: the location table and RocksDB's
 * block cache, memtables and table readers (not the hot-memory cache).
 * Constant time, for metrics. */
size_t m3_store_ram_bytes(m3_store *s);

/*
 * Check that the in-RAM location table (what fetches use) equals the
 * catalog's locations (the truth): same ids, same locations. Walks the
 * catalog: O(records). 0 when equal, M3_ECORRUPT (details logged) when not.
 * *checked (may be NULL) receives how many catalog entries were compared.
 */
int m3_store_check_locations(m3_store *s, uint64_t *checked);

/* Bytes of all live segment files; constant time per segment, for metrics. */
uint64_t m3_store_segment_bytes(m3_store *s);

/* The hot-memory cache's hits, misses and bytes held (zeros when disabled);
 * constant time, for metrics. */
void m3_store_cache_counters(m3_store *s, uint64_t *hits, uint64_t *misses, uint64_t *bytes);

/* Progress of a long walk: open's location table, verify, repair. what
 * names the phase ("locations", "verify bytes", "verify texts", "repair
 * bytes"); done of total, in that phase's unit. */
typedef void (*m3_progress_fn)(void *ud, const char *what, uint64_t done, uint64_t total);

/* Process-wide hook for progress (NULL: none), for command-line tools; it
 * is called from the thread doing the walk, every 65536 units. */
void m3_store_set_progress(m3_progress_fn fn, void *ud);

/* One failure found by verify or repair. */
typedef struct m3_problem {
  uint64_t chunk_id;  /* UINT64_MAX when the record's header is unreadable */
  uint32_t segment;
  uint64_t offset;
  int err;            /* M3_ECORRUPT, M3_EBADFORMAT, M3_ENOTFOUND, M3_EIO */
  const char *detail; /* valid during the callback */
} m3_problem;

typedef void (*m3_problem_fn)(void *ud, const m3_problem *p);

/*
 * Scrub: read every live record, check every checksum and that the record is
 * the one the catalog points at; also check that every segment the catalog
 * names exists, and that the location table equals the catalog. Streams
 * each segment once in file order (disk speed); only when something is
 * wrong does it re-check record by record to name each problem. fn (may be NULL) is called once per problem. Returns 0 when
 * all is well, M3_ECORRUPT when any problem was found, or another code when
 * verify itself could not run. *checked receives how many records were read.
 */
int m3_store_verify(m3_store *s, m3_problem_fn fn, void *ud, uint64_t *checked);

/*
 * Rewrite the segments without deleted or replaced records, then drop the old
 * ones. Crash-safe: until the new catalog is committed the old segments stay
 * authoritative. *reclaimed receives the bytes freed.
 */
int m3_store_compact(m3_store *s, uint64_t *reclaimed);

typedef struct m3_repair_report {
  uint64_t segments;       /* segment files scanned */
  uint64_t records;        /* live memories in the rebuilt catalog */
  uint64_t tombstones;     /* delete records applied */
  uint64_t damaged;        /* records skipped because they failed checks */
  uint64_t truncated_bytes;/* torn tails cut off */
} m3_repair_report;

/*
 * Rebuild the catalog of the store in dir from its segments alone (the store
 * must not be open), streaming them once and ingesting the entries as sorted
 * SSTs (progress: "repair bytes", m3_store_set_progress). The old catalog,
 * if any, is replaced. Records that fail their checks are skipped and
 * reported through fn; what follows the last complete record is truncated:
 * silently when it is a torn write (zeros, or a record whose header is valid
 * and that the file ends inside or whose end is zeros), reported as damage
 * when it is garbage. Returns 0, or M3_ECORRUPT when records were lost or
 * damaged (the store is still usable), or another code.
 */
int m3_store_repair(const char *dir, m3_problem_fn fn, void *ud, m3_repair_report *rep);

/* ---- merge: partial stores into shard stores (store_merge.c) ----------- */

typedef struct m3_merge_options {
  uint32_t shards;        /* S, 1..4096: OUTDIR/shard-0 .. shard-<S-1> */
  int copy;               /* 1: plain read/write copies; 0: copy_file_range,
                             which the kernel turns into shared extents
                             (reflinks) where the filesystem can (0) */
  uint64_t segment_bytes; /* roll output segments past this size (1 GiB) */
} m3_merge_options;

typedef struct m3_merge_report {
  uint64_t records;      /* live records in the shard stores */
  uint64_t duplicates;   /* identical records held by more than one input */
  uint64_t bytes;        /* record bytes placed into shards by this run */
  uint32_t built;        /* shards built by this run */
  uint32_t present;      /* shards a previous run had finished */
} m3_merge_report;

/*
 * Build S shard stores in outdir from n partial stores (e.g. the slices of
 * `m3-encode --slice I/N`): shard s = OUTDIR/shard-<s> holds every chunk c
 * of every input with m3_shard_of(c, S) == s (m3/shard.h), with its record
 * bytes as stored (never decoded or re-encoded: the same memory, text and
 * embedding bytes and CRCs), its text and its embedding. Record bytes are
 * copied with copy_file_range (shared extents where the filesystem clones;
 * a segment's header names its store, so segments themselves cannot be
 * linked into another store); catalog entries are written as one sorted
 * SST file per shard and ingested. The top-level files of the first input
 * beside its store (codec.m3c, encode.json, the tokenizer) are copied too.
 *
 * Refuses inputs of different layouts or record alignment before building
 * anything (M3_ESHAPE, naming both stores), and a chunk id held by two
 * inputs with different content (M3_EEXIST, naming the id and both stores;
 * its shard is not built, shards finished before stay); identical copies
 * count as duplicates and are taken once.
 *
 * Crash-safe and resumable: a shard is built in OUTDIR/shard-<s>.tmp and
 * renamed when complete and synced; a rerun after an interruption at any
 * point removes a leftover .tmp, keeps the finished shards and builds the
 * rest, giving the same records. OUTDIR/merge.json fixes S: a rerun with
 * another S is refused (M3_EINVAL). Inputs are opened read-only and never
 * changed. shard_records (S entries, may be NULL) receives each shard's
 * record count; rep (may be NULL) the totals. The retrieval indexes are
 * not built here (m3/index.h: m3_index_open on each shard).
 */
int m3_store_merge(const char *const *inputs, size_t n, const char *outdir,
                   const m3_merge_options *o, uint64_t *shard_records, m3_merge_report *rep);

#endif /* M3_STORE_H */
