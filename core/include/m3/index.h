/*
 * The retrieval index: chunk ids by cosine similarity of their retrieval
 * embeddings (m3/store.h keeps one of layout.emb_dim f32 with each memory).
 *
 * A FAISS index (any index_factory string; "IDMap,Flat" is exact search)
 * over the L2-normalized embeddings with the inner-product metric, so that a
 * score is the cosine of query and memory. The server searches it with
 * micro-batches of queries (one FAISS call for all of them), every 64
 * generated tokens of every worker; puts and deletes keep it current.
 *
 * On disk, beside the store it indexes:
 *   DIR/index/index.faiss   the FAISS index (faiss::write_index)
 *   DIR/index/stamp         what the file holds, as "key value" lines:
 *     m3index 1               format version
 *     factory IDMap,Flat      the index_factory string that built it
 *     metric inner_product
 *     dim 32                  embedding dims (the store's emb_dim)
 *     count 1000              vectors in the index
 *     seqno 4242              m3_store_seqno() of the store it reflects
 *     index_bytes 123456      size and CRC32C of index.faiss
 *     index_crc32c 1a2b3c4d
 *     crc32c 89abcdef         CRC32C of the stamp's bytes before this line
 * Both files are written to a temporary name, fsync'ed and renamed; the
 * stamp goes last, and since it carries the index file's checksum a crash
 * between the renames reads as a stale index and is rebuilt.
 *
 * Which memories are indexed: every stored embedding except all-zero ones.
 * A zero embedding is what a put without one stores (m3_record_in.embedding
 * NULL), and means "not retrievable".
 *
 * Ids: chunk ids are FAISS idx_t (int64) bit for bit; UINT64_MAX, FAISS's
 * "no result" (-1), cannot be indexed and pads short result lists.
 *
 * Threads: one m3_index may be searched from any number of threads at once,
 * while another thread adds, removes or saves: a pthread rwlock (writer
 * preferring) lets searches run together and makes add and remove exclusive.
 * Saving holds the read side, so searches go on while the file is written.
 * m3_index_open uses the store handle, which is single-threaded
 * (m3/store.h): call it where nothing else uses the store; afterwards the
 * index no longer touches the store.
 */
#ifndef M3_INDEX_H
#define M3_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "m3/store.h"

#define M3_INDEX_FORMAT_VERSION 1
#define M3_INDEX_DEFAULT_FACTORY "IDMap,Flat"
/* Most results one query may ask for. */
#define M3_INDEX_MAX_K 65536

typedef struct m3_index m3_index;

typedef struct m3_index_options {
  const char *factory;  /* FAISS index_factory string (M3_INDEX_DEFAULT_FACTORY,
                           exact search). It must take ids: "IDMap,Flat",
                           "IVF1024,Flat", "IVF4096,PQ32", "IDMap,HNSW32"
                           (no removal), not a bare "Flat". At most 255
                           bytes; borrowed for the call. */
  const char *params;   /* FAISS ParameterSpace string set after every open,
                           e.g. "nprobe=32" (NULL: FAISS's defaults);
                           borrowed for the call */
  size_t train_sample;  /* a factory that needs training (IVF, PQ, OPQ ...)
                           trains on at most this many stored vectors, a
                           deterministic uniform sample (65536) */
  int read_only;        /* never write DIR/index/: a rebuilt index lives in
                           memory only, m3_index_save fails (0) */
  int force_rebuild;    /* rebuild even when the saved index is current (0) */
  const char *trained;  /* a factory that needs training starts from this
                           file, an empty index trained once for many
                           stores (m3_index_train_file), instead of
                           training on this store's vectors (NULL);
                           borrowed for the call */
} m3_index_options;

/* Defaults as written above. */
void m3_index_options_init(m3_index_options *o);

/*
 * Train once for many stores (the shards of one knowledge base, so that
 * they share one set of centroids): if o->factory needs training, train it
 * on a uniform sample (o->train_sample) of the embeddings of all n stores
 * and write the empty trained index to path (crash-safe: temporary name,
 * fsync, rename), *needed = 1; pass path as m3_index_options.trained to
 * m3_index_open of each store. A factory that needs no training (IDMap,Flat)
 * writes nothing, *needed = 0. The stores are only read. Errors as
 * m3_index_open, M3_ESHAPE for stores of different embedding dims.
 */
int m3_index_train_file(m3_store *const *stores, size_t n, const m3_index_options *o,
                        const char *path, int *needed);

/*
 * Open the retrieval index of store s. Loads DIR/index/ when its stamp is
 * intact and says it was built with the same factory and dims at the store's
 * current m3_store_seqno(), and the index file's size and checksum match;
 * otherwise (no index, another factory, the store changed since, a damaged
 * or missing file) rebuilds it from m3_store_iterate_embeddings, training
 * first when the factory needs it, and saves it (unless o->read_only).
 * o may be NULL (defaults). On success *out owns the index; free it with
 * m3_index_close(). m3_index_info() says whether it was loaded or rebuilt
 * and why.
 * Errors: M3_EUNSUPPORTED (the store keeps no embeddings, emb_dim 0),
 * M3_EINVAL (bad factory string or params, a factory that takes no ids, too
 * few vectors to train it), M3_EIO / M3_ENOSPC (saving), M3_ENOMEM,
 * M3_EINTERNAL (another FAISS failure, its message in m3_errmsg()).
 */
int m3_index_open(m3_store *s, const m3_index_options *o, m3_index **out);

/* Free the index (in memory only: call m3_index_save first to persist
 * changes). m3_index_close(NULL) does nothing. No call may be running on it. */
void m3_index_close(m3_index *ix);

/*
 * Check a batch as m3_index_add would, without an index: no id UINT64_MAX
 * (M3_ERANGE), no id twice, no non-finite value (M3_EINVAL); the message
 * names the item (its position in the batch) and its chunk id. Writers call
 * it before they make the batch durable anywhere else.
 */
int m3_index_check(unsigned dim, const uint64_t *ids, const float *vecs, size_t n);

/*
 * Add n vectors (n * dim floats, row-major, any norm) under chunk ids. An id
 * already in the index is replaced; an all-zero vector only removes its id.
 * ids and vecs are borrowed for the call. Exclusive (write lock).
 * Errors: M3_EINVAL (an id repeated within the batch, a non-finite value),
 * M3_ERANGE (id UINT64_MAX), M3_EUNSUPPORTED (the factory cannot remove,
 * needed to replace), M3_EINTERNAL. On error the index may hold part of the
 * batch: retry it, or rebuild.
 */
int m3_index_add(m3_index *ix, const uint64_t *ids, const float *vecs, size_t n);

/* Remove ids (absent ones are ignored); *removed (may be NULL) receives how
 * many were present. Exclusive. M3_EUNSUPPORTED when the factory's index
 * cannot remove (HNSW). */
int m3_index_remove(m3_index *ix, const uint64_t *ids, size_t n, size_t *removed);

/*
 * Search nq queries (nq * dim floats, any norm) with one FAISS call. Row q of
 * ids and scores (nq * k each, caller's buffers; scores may be NULL) gets the
 * k best chunk ids by cosine, ordered by score descending then id ascending;
 * rows with fewer than k results are padded with UINT64_MAX and score
 * -INFINITY. The order is deterministic, ties at the k-th place included
 * (the search looks past k, and then once more, at most
 * max(8 * (k + 8), 256) deep, until the tie ends; past that FAISS's order
 * decides: one extra scan at most, whatever the data). An all-zero query
 * scores 0 against everything. Shared: runs concurrently with other searches
 * and saves. Errors: M3_EINVAL (non-finite query value), M3_ERANGE (k >
 * M3_INDEX_MAX_K), M3_ENOMEM, M3_EINTERNAL.
 */
int m3_index_search(m3_index *ix, const float *queries, size_t nq, size_t k, uint64_t *ids,
                    float *scores);

/*
 * m3_index_search with FAISS search parameters for this call only, e.g.
 * "nprobe=64" (IVF) or "efSearch=128" (HNSW) (NULL or "": the open's
 * params, as m3_index_search). FAISS keeps them in the index, so an
 * override takes the write lock: it runs alone, then restores the open's
 * params (or FAISS's defaults nprobe=1, efSearch=16 when the open set
 * none). Errors as m3_index_search, and M3_EINVAL for params the factory
 * does not take.
 */
int m3_index_search_params(m3_index *ix, const float *queries, size_t nq, size_t k,
                           uint64_t *ids, float *scores, const char *params);

/*
 * Write the index to DIR/index/ stamped with seqno: the m3_store_seqno() of
 * the store state it now reflects (the caller knows, having applied the
 * store's changes with add/remove). Crash-safe (temporary names, fsync,
 * rename). Shared with searches; two saves run one after the other.
 * Errors: M3_EUNSUPPORTED (opened read_only), M3_EIO, M3_ENOSPC,
 * M3_EINTERNAL (FAISS could not write it).
 */
int m3_index_save(m3_index *ix, uint64_t seqno);

/* Vectors in the index. */
size_t m3_index_count(m3_index *ix);

/* Dims of the vectors (the store's emb_dim). */
unsigned m3_index_dim(const m3_index *ix);

/* What an index is and how it came to be. */
typedef struct m3_index_info {
  const char *factory;   /* owned by the index */
  unsigned dim;
  size_t count;
  uint64_t seqno;        /* store seqno it was loaded, built or last saved at */
  uint64_t unsaved;      /* add/remove calls since then */
  int loaded;            /* 1: opened from DIR/index/ without a rebuild */
  int trained;           /* 1: the rebuild trained the factory */
  const char *reason;    /* why it was rebuilt ("" when loaded), owned by the
                            index: "no saved index", "store changed (seqno
                            7 != 9)", "index file damaged" ... */
  const char *path;      /* DIR/index, owned by the index */
  uint64_t skipped;      /* store vectors the last rebuild could not index and
                            left out (a non-finite value, id UINT64_MAX) */
  uint64_t tie_scans;    /* extra single-query searches made to settle ties
                            at the k-th place, since the index was opened */
  size_t nlist;          /* IVF: inverted lists, the most "nprobe=" can take;
                            0: the index takes no nprobe */
  int takes_ef_search;   /* 1: an HNSW graph index, which takes "efSearch=" */
} m3_index_info;

void m3_index_info_get(m3_index *ix, m3_index_info *out);

#endif /* M3_INDEX_H */
