/*
 * Codecs: how one key or value vector (head_dim floats) becomes a code of
 * code_bytes bytes, and back.
 *
 * A codec set holds one codec for keys and one for values (Memory3 quantizes
 * them separately), or one K/V pair per memory layer. Kinds:
 *   raw-f32, raw-f16, raw-bf16  the vector itself (f32 is for exactness tests);
 *   faiss                       FAISS standalone codes (Index::sa_encode) of any
 *                               index_factory string FAISS can train; default
 *                               M3_CODEC_DEFAULT_FACTORY, the paper's 14 bytes.
 *
 * Decoding needs no FAISS. For factory strings whose decode is a sum of
 * code-selected vectors (PQ, residual / multi-index coarse codes, IVF coarse
 * codes, additive quantizers, SQ8/SQ4, behind OPQ / PCA / random rotations) the
 * set carries decode tables:
 *
 *   decode(code) = bias + sum_f table[row0_f + field_f(code)]
 *
 * where field_f(code) reads nbits_f bits starting at bit bit_off_f of the code,
 * bits numbered little-endian inside each byte and bytes in order (the order
 * of FAISS's BitstringWriter / PQEncoderGeneric). Linear output transforms
 * (OPQ, PCA rotations) are folded into the tables. The tables are built by
 * decoding probe codes through FAISS and checked against FAISS's own sa_decode
 * on random and real codes when the codec is trained; a codec that fails the
 * check gets no tables and table decoding refuses it (M3_EUNSUPPORTED).
 *
 * Libraries:
 *   m3core  (libm3)       reading/writing codec set files, fingerprints, the
 *                         CPU table decoder, training-sample files. No FAISS.
 *   m3codec (libm3codec)  training, encoding, building and checking decode
 *                         tables, reference decoding: FAISS C API.
 *   m3cuda  (libm3cuda)   the CUDA decoder (only where nvcc was found).
 *
 * ---- Codec set file, version 1 (little-endian; offsets in bytes) ----------
 *
 * Header (64 bytes):
 *   off size field
 *     0    8 magic        "M3CODECS"
 *     8    2 version      1
 *    10    2 flags        0 (reserved)
 *    12    2 kind         m3_codec_kind shared by every codec of the set
 *    14    2 head_dim     dims of one vector (1..M3_CODEC_MAX_DIM)
 *    16    2 code_bytes   bytes of one code, the same for every codec
 *    18    2 n_layers     0: one K and one V codec for all layers;
 *                         else one K/V pair per memory layer
 *    20    4 n_codecs     2, or 2 * n_layers
 *    24    8 fingerprint  m3_codec_fingerprint of this file (see below)
 *    32    8 body_bytes   bytes after the header
 *    40    4 body_crc     CRC32C of the body
 *    44   16 reserved     0
 *    60    4 header_crc   CRC32C of bytes 0..59
 *
 * Body: n_codecs codec entries, entry i = codec for (layer i / 2, K if i is
 * even else V) when n_layers > 0, else entry 0 = K, entry 1 = V. Each entry
 * starts 8-byte aligned:
 *     0    4 magic        "M3CE"
 *     4    2 kind         = the header's kind
 *     6    2 dim          = head_dim
 *     8    2 code_bytes   = the header's code_bytes
 *    10    2 flags        bit 0 (M3_CODEC_HAS_TABLES): bias and tables follow
 *    12    4 n_fields     code fields (0 without tables)
 *    16    4 factory_len  bytes of the factory string (no NUL; 0 for raw)
 *    20    4 table_rows   rows of the tables: sum of the fields' counts
 *    24    8 faiss_bytes  bytes of the serialized FAISS index (0 for raw)
 *    32    8 check_abs    f64: max |table decode - FAISS decode| measured when
 *                         the tables were checked (0 without tables)
 *    40    8 entry_bytes  size of the whole entry, a multiple of 8
 *    48      factory      factory_len bytes, zero-padded to 8
 *     .      fields       n_fields x {u32 bit_off, u32 nbits (1..24),
 *                         u32 count (1..2^nbits), u32 row0 (running sum of
 *                         the previous counts)}, fields in increasing,
 *                         non-overlapping bit ranges inside the code
 *     .      bias         f32 (dim)                   } only with
 *     .      tables       f32 (table_rows, dim)       } M3_CODEC_HAS_TABLES
 *     .      faiss        faiss_bytes of faiss::write_index output, zero-padded
 *                         to 8 (what m3codec encodes with)
 *
 * Fingerprint: a 64-bit hash of header bytes 8..23 (version, flags, kind,
 * head_dim, code_bytes, n_layers, n_codecs) followed by the whole body (kinds,
 * factory strings, fields, tables and every byte of every FAISS codebook).
 * The hash processes 8-byte words with a step that is a bijection of its
 * state, so changing any single byte always changes the fingerprint. Never 0.
 *
 * ---- Training sample files ("fvecs", the TEXMEX / FAISS benchmark format) --
 * A sequence of vectors, each stored as a little-endian int32 d followed by d
 * little-endian float32; every vector of a file has the same d. numpy:
 *   np.hstack([np.full((n,1), d, 'int32').view('float32'), x]).tofile(path)
 */
#ifndef M3_CODEC_H
#define M3_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "m3/record.h"
#include "m3/spec.h"

#ifdef __cplusplus
extern "C" {
#endif

#define M3_CODEC_FILE_MAGIC "M3CODECS"
#define M3_CODEC_FILE_VERSION 1
#define M3_CODEC_HEADER_SIZE 64
#define M3_CODEC_ENTRY_MAGIC "M3CE"
#define M3_CODEC_ENTRY_HEADER_SIZE 48
#define M3_CODEC_HAS_TABLES 0x1u

/* The paper's quantizer ("OPQ20x80-Residual2x14-PQ8x10") as FAISS 1.7.3 spells
 * it: OPQ rotation, 2x14-bit multi-index coarse code, 8x10-bit PQ on the
 * residual; 4 + 10 = 14 bytes per vector. */
#define M3_CODEC_DEFAULT_FACTORY "OPQ20_80,Residual2x14,PQ8x10"

#define M3_CODEC_MAX_DIM 1024      /* head_dim limit */
#define M3_CODEC_MAX_FIELDS 1024   /* code fields per codec */
#define M3_CODEC_MAX_FIELD_BITS 24 /* bits of one field */
/* Decode tables larger than this many floats are not built (256 MiB). */
#define M3_CODEC_MAX_TABLE_FLOATS ((size_t)1 << 26)

/* Element types a decoder writes. */
typedef enum m3_dtype {
  M3_DTYPE_F32 = 1,
  M3_DTYPE_F16 = 2,  /* IEEE binary16, round to nearest even */
  M3_DTYPE_BF16 = 3, /* bfloat16, round to nearest even */
} m3_dtype;

/* Bytes of one element of dtype; 0 for an unknown dtype. */
size_t m3_dtype_size(int dtype);

/* Which vector of a memory: keys or values (the record's K|V axis). */
enum { M3_KV_K = 0, M3_KV_V = 1 };

/* Opaque codec set. Decoding through a set is reentrant (the set is not
 * modified); encoding (m3codec) may load the FAISS index on first use, under
 * the set's own lock, so it is thread-safe too. */
typedef struct m3_codec_set m3_codec_set;

/* What one codec of a set is. Pointers point into the set (valid until it is
 * closed). */
typedef struct m3_codec_info {
  int kind;               /* m3_codec_kind */
  uint16_t dim;           /* head_dim */
  uint16_t code_bytes;
  const char *factory;    /* FAISS factory string, "" for raw kinds */
  int has_tables;         /* 1: table-decodable without FAISS */
  uint32_t n_fields;      /* code fields (0 without tables) */
  uint32_t table_rows;    /* rows of the decode tables */
  size_t faiss_bytes;     /* serialized FAISS index bytes (0 for raw) */
  double check_abs;       /* max |table - FAISS| decode diff at creation */
  const char *no_tables;  /* why there are no tables ("" when there are) */
} m3_codec_info;

/* ---- m3core: sets, files, fingerprints, decoding (no FAISS) --------------- */

/*
 * A raw codec set: kind M3_CODEC_RAW_F32 / _F16 / _BF16, vectors of head_dim.
 * On success *out is a new set the caller frees with m3_codec_set_close.
 * Returns 0 or M3_EINVAL.
 */
int m3_codec_set_create_raw(int kind, uint16_t head_dim, m3_codec_set **out);

/*
 * Read a codec set file. Every header and entry field, both CRCs and the
 * fingerprint are checked; a bad file is refused with M3_EBADFORMAT,
 * M3_EVERSION or M3_ECORRUPT and an m3_errmsg() naming the file and the field.
 * M3_EIO / M3_ENOTFOUND when the file cannot be read. On success *out is a new
 * set the caller frees with m3_codec_set_close.
 */
int m3_codec_set_open(const char *path, m3_codec_set **out);

/*
 * Same as m3_codec_set_open from len bytes at buf (copied; the caller keeps
 * buf). name (may be NULL) labels the bytes in error messages.
 */
int m3_codec_set_load(const void *buf, size_t len, const char *name, m3_codec_set **out);

/* Free a set (and the FAISS indexes m3codec attached). NULL does nothing. */
void m3_codec_set_close(m3_codec_set *cs);

/*
 * Write the set to path durably: path.tmp, fsync, rename over path, fsync
 * of the directory. Returns 0 or an m3 code with the path in the message.
 */
int m3_codec_set_save(const m3_codec_set *cs, const char *path);

/* The set's file bytes: *buf points into the set (valid until it is closed),
 * *len is their size. */
void m3_codec_set_bytes(const m3_codec_set *cs, const void **buf, size_t *len);

/*
 * The fingerprint a codec set file's bytes hash to (the header's fingerprint
 * field is not read; it is what the field must hold). Needs at least the
 * header and body_bytes of body; returns M3_EBADFORMAT otherwise.
 */
int m3_codec_fingerprint(const void *buf, size_t len, uint64_t *fp);

uint64_t m3_codec_set_fingerprint(const m3_codec_set *cs);
int m3_codec_set_kind(const m3_codec_set *cs);          /* m3_codec_kind */
uint16_t m3_codec_set_head_dim(const m3_codec_set *cs);
uint16_t m3_codec_set_code_bytes(const m3_codec_set *cs);
uint16_t m3_codec_set_n_layers(const m3_codec_set *cs); /* 0: shared by layers */
/* Name used in messages (the file path, or "<memory>"). */
const char *m3_codec_set_name(const m3_codec_set *cs);

/* Describe the codec for (layer, kv). Returns 0 or M3_EINVAL (layer out of
 * range for a per-layer set; kv not M3_KV_K/V). */
int m3_codec_set_info(const m3_codec_set *cs, unsigned layer, int kv, m3_codec_info *out);

/*
 * The layout a store of memories of shape spec coded with this set has (kind,
 * code_bytes, fingerprint). Returns 0, M3_ESHAPE when spec's head_dim (or,
 * for per-layer sets, n_layers) differs from the set's.
 */
int m3_codec_set_layout(const m3_codec_set *cs, const m3_spec *spec, m3_layout *out);

/*
 * May codes of layout l be decoded with this set? M3_EFINGERPRINT when the
 * fingerprints differ (codes made by another codec set), M3_ESHAPE when the
 * shape does not fit the set, M3_EBADFORMAT when kind or code_bytes differ.
 */
int m3_codec_set_check_layout(const m3_codec_set *cs, const m3_layout *l);

/*
 * Decode n vectors coded with the codec for (layer, kv): codes (n, code_bytes)
 * into out (n, head_dim) of dtype. The caller owns both buffers. Returns 0;
 * M3_EUNSUPPORTED when a faiss codec has no decode tables; M3_ECORRUPT when a
 * code holds a field value outside its table (names the vector).
 */
int m3_codec_decode_vectors(const m3_codec_set *cs, unsigned layer, int kv,
                            const uint8_t *codes, size_t n, int dtype, void *out);

/*
 * Decode n_mem memories of shape spec:
 *   codes (n_mem, n_layers, 2 [K,V], n_kv_heads, n_tokens, code_bytes), as in
 *   a record, into out (n_mem, n_layers, 2 [K,V], n_kv_heads, n_tokens,
 *   head_dim) of dtype. The caller owns both buffers. Batched and vectorized;
 *   no allocation. Errors as m3_codec_decode_vectors, M3_ESHAPE as
 *   m3_codec_set_layout.
 */
int m3_codec_decode(const m3_codec_set *cs, const m3_spec *spec, const uint8_t *codes,
                    size_t n_mem, int dtype, void *out);

/*
 * Decode a parsed record's memory (m3_record_parse) into out (cap bytes):
 * checks m3_codec_set_check_layout first, so a record made with another codec
 * set is refused with M3_EFINGERPRINT. M3_EINVAL for a tombstone or when cap
 * is smaller than m3_codec_decoded_size.
 */
int m3_codec_decode_record(const m3_codec_set *cs, const m3_record *rec, int dtype,
                           void *out, size_t cap);

/* Bytes one decoded memory of spec takes in dtype. */
size_t m3_codec_decoded_size(const m3_spec *spec, int dtype);

/*
 * Read a training-sample file (fvecs, see the top of this header). On success
 * *x is a malloc'd (n, dim) array the caller frees with free(). want_dim 0
 * accepts any dim. M3_EBADFORMAT naming the file and vector on a bad file.
 */
int m3_codec_vectors_read(const char *path, unsigned want_dim, float **x, size_t *n,
                          unsigned *dim);

/* Write n vectors (n, dim) as an fvecs file. Returns 0 or M3_EIO. */
int m3_codec_vectors_write(const char *path, const float *x, size_t n, unsigned dim);

/* ---- m3codec: training and encoding (FAISS) -------------------------------- */

typedef struct m3_codec_train_opts {
  int kind;              /* m3_codec_kind; 0 means M3_CODEC_FAISS */
  uint16_t head_dim;     /* dims of a vector (required) */
  uint16_t n_layers;     /* 0: one K and one V codec; else one pair per layer */
  const char *factory_k; /* FAISS factory for keys; NULL: the default */
  const char *factory_v; /* for values; NULL: factory_k */
  uint32_t check_codes;  /* random codes of the table check; 0: 4096 */
  double check_tol;      /* max relative table-vs-FAISS error; 0: 1e-5 */
  uint64_t seed;         /* of the random check codes */
  int allow_no_tables;   /* 1: keep a codec whose tables cannot be built or
                            fail the check (it then decodes only through
                            FAISS); 0: refuse to train it */
  int verbose;           /* log progress at info level */
  unsigned threads;      /* FAISS's OpenMP team and OpenBLAS's pool are both
                            sized to this for the training and restored after
                            (0: left as they are; see docs/CODECS.md) */
  const char *checkpoint_dir; /* non-NULL: each codec's trained FAISS index is
                            kept in DIR/codec-<i>-<hash of factory and dim>.faiss
                            as soon as it is trained, and a codec whose file is
                            there is read back instead of trained (a restarted
                            training resumes at the first untrained codec; the
                            sample must be the same) */
} m3_codec_train_opts;

/*
 * How many training vectors a factory string needs: *min, below which FAISS
 * cannot train it (the centroids of its largest k-means), and *want, what
 * FAISS asks for (39 vectors per centroid of that k-means; the paper's
 * 2 x 2^14 multi-index: 638,976). Both 0 for strings without k-means (SQ,
 * raw kinds). m3_codec_set_train refuses fewer than min vectors and warns
 * below want.
 */
void m3_codec_train_sample_size(const char *factory, size_t *min, size_t *want);

/* Training vectors for one codec: x is (n, head_dim), borrowed. */
typedef struct m3_codec_sample {
  const float *x;
  size_t n;
} m3_codec_sample;

/*
 * Train a codec set (in m3codec, like everything below up to m3cuda). samples has one entry per codec, in file entry order
 * (K, V; or per layer: L0 K, L0 V, L1 K, ...); raw kinds ignore it (may be
 * NULL) and n_layers (a raw set is one K/V pair). For faiss codecs: index_factory, train, build decode tables by
 * probing sa_decode, check them against sa_decode on random codes and on the
 * codes of (up to 4096 of) the training vectors. On success *out is a new set
 * the caller frees with m3_codec_set_close. Errors: M3_EINVAL (bad options, a
 * factory string FAISS refuses, too few vectors), M3_EUNSUPPORTED (no decode
 * tables and !allow_no_tables; the message says why), M3_EINTERNAL (FAISS
 * failed; its message is quoted).
 */
int m3_codec_set_train(const m3_codec_train_opts *opts, const m3_codec_sample *samples,
                       m3_codec_set **out);

/*
 * Encode n vectors x (n, head_dim) with the codec for (layer, kv) into codes
 * (n, code_bytes). Buffers are the caller's. FAISS's sa_encode codes for
 * faiss codecs, by the encoder m3_codec_set_encoder chose (below);
 * round-to-nearest-even for raw f16/bf16.
 */
int m3_codec_encode_vectors(m3_codec_set *cs, unsigned layer, int kv, const float *x,
                            size_t n, uint8_t *codes);

/*
 * Encode n_mem memories: kv (n_mem, n_layers, 2, n_kv_heads, n_tokens,
 * head_dim) floats into codes laid out as in a record (n_mem, n_layers, 2,
 * n_kv_heads, n_tokens, code_bytes). Vectors that share a codec are encoded
 * in one batch.
 */
int m3_codec_encode(m3_codec_set *cs, const m3_spec *spec, const float *kv, size_t n_mem,
                    uint8_t *codes);

/*
 * Encoders of faiss codecs (raw kinds ignore the choice):
 *   M3_CODEC_ENC_AUTO   the GEMM encoder for every codec whose FAISS structure
 *                       it reads (docs/CODECS.md), FAISS for the rest; default
 *   M3_CODEC_ENC_FAISS  FAISS's sa_encode
 *   M3_CODEC_ENC_GEMM   the GEMM encoder: vectors in batches, nearest centroids
 *                       as ||x||^2 - 2 x.c + ||c||^2 with OpenBLAS sgemm. Its
 *                       codes are FAISS's except where float rounding settles
 *                       a near-tie between two centroids the other way.
 * m3_codec_set_encoder returns 0, M3_EINVAL for an unknown value, or (GEMM)
 * M3_EUNSUPPORTED naming the codec and why; the set keeps its previous choice
 * then. Not to be called while another thread encodes with the set.
 */
enum { M3_CODEC_ENC_AUTO = 0, M3_CODEC_ENC_FAISS = 1, M3_CODEC_ENC_GEMM = 2 };
int m3_codec_set_encoder(m3_codec_set *cs, int which);

/* How one codec encodes (pointers into the set, valid until it is closed). */
typedef struct m3_codec_enc_info {
  const char *encoder;      /* "gemm", "faiss" or "raw": what the set's choice uses */
  const char *no_gemm;      /* why the GEMM encoder cannot ("" when it can) */
  double flops_per_vector;  /* the GEMM encoder's sgemm flops for one vector */
  /* the shape of its largest sgemm (M vectors x N centroids x K dims) */
  uint32_t gemm_m, gemm_n, gemm_k;
} m3_codec_enc_info;

/* Describe how the codec for (layer, kv) encodes. 0 or M3_EINVAL. */
int m3_codec_encoder_info(m3_codec_set *cs, unsigned layer, int kv, m3_codec_enc_info *out);

/*
 * Reference decode through FAISS's sa_decode (faiss codecs) or the raw
 * conversion: codes (n, code_bytes) into out (n, head_dim) f32.
 */
int m3_codec_decode_vectors_faiss(m3_codec_set *cs, unsigned layer, int kv,
                                  const uint8_t *codes, size_t n, float *out);

/*
 * Re-check every codec's decode tables against FAISS on n_codes random codes
 * (0: 4096). *max_abs / *max_rel (may be NULL) receive the worst differences.
 * Returns 0, or M3_ECORRUPT naming the codec when a difference exceeds tol
 * (0: 1e-5) relative to the vector's largest component.
 */
int m3_codec_set_verify(m3_codec_set *cs, uint32_t n_codes, uint64_t seed, double tol,
                        double *max_abs, double *max_rel);

/* ---- m3cuda: decoding on the GPU (built when nvcc is found) ---------------- */

/* A codec set's decode tables on one CUDA device. */
typedef struct m3_codec_cuda m3_codec_cuda;

/*
 * Upload cs's decode tables to the current CUDA device. cs may be closed
 * afterwards. On success *out is freed with m3_codec_cuda_destroy. Returns
 * M3_EUNSUPPORTED when there is no device or a faiss codec has no tables,
 * M3_ENOMEM / M3_EINTERNAL on CUDA errors (message quotes CUDA).
 */
int m3_codec_cuda_create(const m3_codec_set *cs, m3_codec_cuda **out);
void m3_codec_cuda_destroy(m3_codec_cuda *g);

/*
 * Same contract as m3_codec_decode, on device memory: d_codes and d_out are
 * device pointers, stream a cudaStream_t (NULL: the default stream). Asynchronous:
 * returns after the launch; the result is ready when the stream is. Results
 * are bit-identical to the CPU decoder, except that a field value outside its
 * table (a corrupt code, which the CPU decoder refuses) is clamped.
 */
int m3_codec_cuda_decode(const m3_codec_cuda *g, const m3_spec *spec, const void *d_codes,
                         size_t n_mem, int dtype, void *d_out, void *stream);

/* ---- m3cudaenc: the GEMM encoder on the GPU (built when nvcc is found) ---- */

/* A faiss codec set's GEMM-encoder codebooks on the current CUDA device, with
 * a cuBLAS handle and scratch for one stream. */
typedef struct m3_codec_cuda_enc m3_codec_cuda_enc;

/*
 * Upload the codebooks of every codec of cs (read as m3_codec_set_encoder
 * GEMM reads them). cs must outlive the encoder. *out is freed with
 * m3_codec_cuda_enc_destroy. M3_EUNSUPPORTED without a device or when a codec
 * has no GEMM encoder (the message says why), M3_ENOMEM / M3_EINTERNAL on
 * CUDA or cuBLAS errors.
 */
int m3_codec_cuda_enc_create(m3_codec_set *cs, m3_codec_cuda_enc **out);
void m3_codec_cuda_enc_destroy(m3_codec_cuda_enc *e);

/*
 * m3_codec_encode_vectors on the device: d_x (n, head_dim) floats into
 * d_codes (n, code_bytes), device pointers, on stream (a cudaStream_t; NULL:
 * the default stream); asynchronous, ready when the stream is. One stream at
 * a time per encoder (its scratch is shared). Codes are the CPU GEMM
 * encoder's except where cuBLAS's rounding settles a near-tie the other way.
 */
int m3_codec_cuda_encode_vectors(m3_codec_cuda_enc *e, unsigned layer, int kv, const float *d_x,
                                 size_t n, uint8_t *d_codes, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* M3_CODEC_H */
