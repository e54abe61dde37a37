/*
 * Where a chunk goes: the two placement rules of a knowledge base beyond one
 * machine, written once for every component (store merge, m3 store split,
 * the cluster client, m3-encode --slice).
 *
 *   shard of chunk c among S shards:  c % S
 *     Serving placement. A shard store holds exactly the chunks with
 *     c % S == s; every client routes by it (m3_cluster_shard_of), and
 *     `m3 store split` and `m3 store merge` cut by it.
 *
 *   slice of chunk c among N slices:  m3_slice_mix(c) % N
 *     Encoding placement: `m3-encode --slice I/N` encodes the chunks of
 *     slice I. The same family (a residue of a function of the id alone,
 *     so a rerun or a retried pod encodes the same chunks), but on the id
 *     passed through the splitmix64 finalizer, a bijection of 64-bit ids:
 *     slices are independent of shards, so every slice holds a near-equal
 *     part of every shard whatever N and S are (with a plain c % N, N == S
 *     would give each slice one shard and N == 2S would leave shard
 *     boundaries inside slices unbalanced for sequential ids).
 *
 * Both are stable: they depend on the chunk id and the count only, never on
 * the input order, the machine or the run.
 */
#ifndef M3_SHARD_H
#define M3_SHARD_H

#include <stdint.h>

static inline uint32_t m3_shard_of(uint64_t chunk_id, uint32_t n_shards) {
  return (uint32_t)(chunk_id % n_shards);
}

/* splitmix64's finalizer (Steele, Lea, Flood 2014): a bijection on uint64. */
static inline uint64_t m3_slice_mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

static inline uint32_t m3_slice_of(uint64_t chunk_id, uint32_t n_slices) {
  return (uint32_t)(m3_slice_mix(chunk_id) % n_slices);
}

#endif /* M3_SHARD_H */
