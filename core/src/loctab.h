/*
 * The location table: chunk id -> record location, in RAM, for the fetch
 * path. Private to core/.
 *
 * Why: at 10^6 memories and more, a RocksDB point lookup per fetched id
 * (index block, filter block, data block, each possibly evicted by texts and
 * embeddings that share the key space) cost more than the disk read it
 * precedes (docs/BENCHMARKS.md, "store at scale"). This table answers in one
 * or two cache misses whatever the store's size.
 *
 * What it is: an open-addressing hash table (linear probing, Fibonacci
 * hashing, backward-shift deletion, grown x2 past 7/8 load) of 28-byte
 * slots: id (u64 as two u32), segment u32, offset / align u32, rec_len u32,
 * mem_crc u32, text_crc u32. mem_len is the same for every memory of a
 * store (m3_record_mem_size of its layout) and is kept once. About 28 / load
 * bytes per memory: 32-64 B (m3_store_info reports it).
 *
 * Truth: the catalog's 'C' entries are the truth; the table is built from
 * them when the store opens and changed after each successful catalog
 * commit (put, delete, compact, roll-forward, bulk ingest), under the
 * store's exclusive lock. m3__loctab_check compares the two.
 *
 * Threads: none of its own; the store's rwlock guards it (lookups shared,
 * changes exclusive).
 */
#ifndef M3_LOCTAB_H
#define M3_LOCTAB_H

#include <stddef.h>
#include <stdint.h>

#include "m3/store.h"

typedef struct m3_loctab m3_loctab;

/* An empty table for records of mem_len bytes at multiples of align, sized
 * for about expect entries. *out is freed with m3__loctab_destroy(). */
int m3__loctab_create(uint32_t mem_len, uint32_t align, size_t expect, m3_loctab **out);
void m3__loctab_destroy(m3_loctab *t);

/* Insert or replace id. M3_ECORRUPT when loc cannot be held (mem_len other
 * than the table's, offset not aligned, offset / align past u32),
 * M3_ENOMEM when growing failed (the table is unchanged). */
int m3__loctab_put(m3_loctab *t, uint64_t id, const m3_location *loc);
/* Remove id; returns 1 when it was present. */
int m3__loctab_del(m3_loctab *t, uint64_t id);
/* 0 and *loc, or M3_ENOTFOUND. */
int m3__loctab_get(const m3_loctab *t, uint64_t id, m3_location *loc);
/* m3__loctab_get of n ids into locs[i], status[i]: the home slots of all
 * of them are prefetched first, so that a fetch of 5 waits for one cache
 * miss, not five in a row. */
void m3__loctab_get_many(const m3_loctab *t, const uint64_t *ids, size_t n, m3_location *locs,
                         int *status);

/* Remove every entry (the capacity stays). */
void m3__loctab_clear(m3_loctab *t);

size_t m3__loctab_count(const m3_loctab *t);
/* Bytes of RAM the table holds (slots and struct). */
size_t m3__loctab_bytes(const m3_loctab *t);

/* Call fn for every entry, in no particular order; non-zero stops and is
 * returned. */
int m3__loctab_each(const m3_loctab *t, int (*fn)(void *ud, uint64_t id, const m3_location *loc),
                    void *ud);

/*
 * Snapshot: the slot array written to a file as it is, so that an open
 * need not rebuild the table from the catalog (10^7 'C' entries). Format
 * (little-endian, as the hosts we build for):
 *   off size field
 *     0    8 magic        "M3LTSNAP"
 *     8    4 version      1
 *    12    4 bits         log2 of the slot count
 *    16    8 n            entries
 *    24    4 mem_len      of the store's memories
 *    28    4 align        of the store's records
 *    32    8 seqno        the catalog's RocksDB sequence number it equals
 *    40   48 identity     the catalog's RocksDB IDENTITY, NUL-padded
 *    88    4 slots_crc    CRC32C of the slots
 *    92    4 header_crc   CRC32C of bytes 0..91
 *    96    .. slots        2^bits x 28 bytes (the slot struct in loctab.c)
 */
/* Write t to path (through path.tmp and a rename; not synced: a file the
 * disk did not get whole fails its CRCs and is not used). */
int m3__loctab_save(const m3_loctab *t, const char *path, uint64_t seqno, const char *identity);
/* Load the snapshot at path when it describes this catalog (seqno and
 * identity equal) and layout; M3_ENOTFOUND when there is none or it does
 * not (damaged, stale: logged), M3_ENOMEM. *out is freed with
 * m3__loctab_destroy(). */
int m3__loctab_load(const char *path, uint32_t mem_len, uint32_t align, uint64_t seqno,
                    const char *identity, m3_loctab **out);

#endif /* M3_LOCTAB_H */
