"""m3store: the Python binding of libm3client (ctypes + numpy).

An inference worker's retrieval rounds from Python: open a client on one
m3-server or on a cluster map, retrieve the top-k memories of a batch of
queries (dense float32 vectors or texts), and get either the record bytes
(codes) or K/V arrays decoded by the C library into the attention-buffer
layout of docs/CLIENT.md:

    kv         (Q, layers, 2 [K, V], kv_heads, k * n_tokens, head_dim)
    positions  (Q, layers, kv_heads, k * n_tokens) int32, -1 = empty slot

Slot s = rank * n_tokens + t. Empty slots (tokens a chunk did not have,
ranks that got no memory) have position -1 and zero K/V: mask them
(logit -inf where positions < 0).

Works with Debian's python3-numpy; no compiled extension. The shared library
is $M3_LIB (a file path) when set; else the first usable of: next to this
package, the repository's release build folders build*/lib/ (CMakeCache.txt
says Release/RelWithDebInfo/MinSizeRel without M3_SANITIZE or M3_FUZZ), the
system loader's (ctypes.util.find_library("m3client")). A library built with
sanitizers is never loaded by accident (it would kill the interpreter);
M3LibraryError (an ImportError) lists every path tried and why.

    import numpy as np, m3store
    with m3store.Client(server="127.0.0.1:7600") as c:
        r = c.retrieve(np.random.rand(32, 8).astype(np.float32), k=5, decoded="bf16")
        r.kv, r.positions, r.ids, r.scores

bf16 arrays are numpy uint16 (numpy has no bfloat16): in PyTorch,
torch.from_numpy(r.kv).view(torch.bfloat16).
"""

import ctypes
import ctypes.util
import glob
import os

import numpy as np

__all__ = ["Client", "Round", "M3Error", "M3LibraryError", "load_library", "DTYPES"]

# ---- the library -------------------------------------------------------------

_lib = None

# Strings only a sanitizer (ASan, UBSan) or libFuzzer build carries. Such a
# library needs its runtime loaded before the interpreter starts: loaded by
# accident, it kills the interpreter ("ASan runtime does not come first").
_SANITIZER_MARKS = (b"__asan_init", b"__ubsan_handle_", b"__sanitizer_cov", b"LLVMFuzzerTestOneInput")
_RELEASE_TYPES = ("Release", "RelWithDebInfo", "MinSizeRel")


class M3LibraryError(ImportError):
    """No usable libm3client.so: .tried lists (path, why) of every candidate."""

    def __init__(self, message, tried=()):
        self.tried = list(tried)
        super().__init__(message)


def _sanitized(path):
    """The sanitizer mark found in the library file, or None."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    for mark in _SANITIZER_MARKS:
        if mark in data:
            return mark.decode()
    return None


def _cmake_cache(build):
    """{name: value} of build/CMakeCache.txt, or None without one."""
    try:
        with open(os.path.join(build, "CMakeCache.txt"), encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    cache = {}
    for line in lines:
        if line and line[0] not in "#/" and "=" in line and ":" in line.split("=", 1)[0]:
            key, value = line.split("=", 1)
            cache[key.split(":", 1)[0]] = value
    return cache


def _not_release(build):
    """Why the build folder is not a release build (None when it is one)."""
    cache = _cmake_cache(build)
    if cache is None:
        return "no CMakeCache.txt: not known to be a release build"
    for opt in ("M3_SANITIZE", "M3_FUZZ"):
        if cache.get(opt, "OFF").upper() in ("ON", "1", "TRUE", "YES"):
            return "%s=ON build (sanitizers)" % opt
    bt = cache.get("CMAKE_BUILD_TYPE", "")
    if bt not in _RELEASE_TYPES:
        return "CMAKE_BUILD_TYPE %r, not one of %s" % (bt, "/".join(_RELEASE_TYPES))
    return None


def _asan_runtime_loaded():
    try:
        with open("/proc/self/maps") as f:
            return "libasan" in f.read()
    except OSError:
        return False


def _candidates():
    """(path, why-not or None) in search order: $M3_LIB alone when set; else
    the copy next to this package, the repository's release build folders
    (newest first), the system loader's."""
    env = os.environ.get("M3_LIB")
    if env:
        mark = _sanitized(env)
        if mark and not _asan_runtime_loaded():
            yield env, ("M3_LIB names a sanitizer build (%s) but the ASan runtime is not loaded: "
                        "run python with LD_PRELOAD=$(gcc -print-file-name=libasan.so)" % mark)
        else:
            yield env, None
        return
    here = os.path.dirname(os.path.abspath(__file__))
    yield os.path.join(here, "libm3client.so"), None
    root = os.path.abspath(os.path.join(here, "..", "..", ".."))
    builds = glob.glob(os.path.join(root, "build*", "lib", "libm3client.so"))
    for p in sorted(builds, key=os.path.getmtime, reverse=True):
        yield p, _not_release(os.path.dirname(os.path.dirname(p)))
    found = ctypes.util.find_library("m3client")
    if found:
        yield found, None


def _open_first():
    tried = []
    for p, why in _candidates():
        if why is None and os.sep in p and not os.path.exists(p):
            why = "no such file"
        if why is None and os.sep in p:
            mark = _sanitized(p)
            if mark and not _asan_runtime_loaded():
                why = "a sanitizer build (%s)" % mark
        if why is not None:
            tried.append((p, why))
            continue
        try:
            return ctypes.CDLL(p), tried
        except OSError as e:
            tried.append((p, str(e)))
    raise M3LibraryError(
        "m3store: no usable libm3client.so (release builds only; sanitizer and fuzz builds "
        "are never loaded by accident). Tried: " +
        "; ".join("%s (%s)" % t for t in tried) +
        ". Set M3_LIB to the path of libm3client.so (e.g. build/lib/libm3client.so after "
        "scripts/build.sh), or install m3store (cmake --install).", tried)


c_u8p = ctypes.POINTER(ctypes.c_uint8)


class _Spec(ctypes.Structure):
    _fields_ = [("n_layers", ctypes.c_uint16), ("n_kv_heads", ctypes.c_uint16),
                ("n_tokens", ctypes.c_uint16), ("head_dim", ctypes.c_uint16)]


class _Layout(ctypes.Structure):
    _fields_ = [("spec", _Spec), ("codec_kind", ctypes.c_uint16), ("code_bytes", ctypes.c_uint16),
                ("codec_fp", ctypes.c_uint64), ("emb_dim", ctypes.c_uint16)]


class _ClientOptions(ctypes.Structure):
    _fields_ = [("connect_timeout_ms", ctypes.c_int), ("call_timeout_ms", ctypes.c_int),
                ("token", ctypes.c_char_p), ("codec_fingerprint", ctypes.c_uint64),
                ("check_fingerprint", ctypes.c_int), ("client_name", ctypes.c_char_p),
                ("max_frame_bytes", ctypes.c_uint32), ("tls_ca", ctypes.c_char_p),
                ("tls_cert", ctypes.c_char_p), ("tls_key", ctypes.c_char_p),
                ("tls_name", ctypes.c_char_p)]


class _ClientInfo(ctypes.Structure):
    _fields_ = [("protocol_version", ctypes.c_uint32), ("layout", _Layout),
                ("memory_bytes", ctypes.c_uint32), ("max_frame_bytes", ctypes.c_uint32),
                ("max_inflight_calls", ctypes.c_uint32), ("max_queries_per_call", ctypes.c_uint32),
                ("max_k", ctypes.c_uint32), ("max_ids_per_call", ctypes.c_uint32),
                ("idle_timeout_ms", ctypes.c_uint32), ("records", ctypes.c_uint64),
                ("admin", ctypes.c_int), ("shard", ctypes.c_uint32),
                ("server_name", ctypes.c_char * 64), ("embedder", ctypes.c_char * 64)]


class _Query(ctypes.Structure):
    _fields_ = [("vector", ctypes.POINTER(ctypes.c_float)), ("dim", ctypes.c_uint32),
                ("text", ctypes.c_char_p), ("allow_fillers", ctypes.c_int)]


class _MethodStats(ctypes.Structure):
    _fields_ = [("method", ctypes.c_char * 32), ("calls", ctypes.c_uint64),
                ("errors", ctypes.c_uint64)]


class _ClientStats(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "records", "segment_bytes", "connections", "calls", "memories_served",
        "payload_bytes_served", "cache_hits", "cache_misses", "uptime_ms", "index_vectors")] + [
        ("index_factory", ctypes.c_char * 256), ("index_params", ctypes.c_char * 256),
        ("io_backend", ctypes.c_char * 16), ("embedder", ctypes.c_char * 64),
        ("n_methods", ctypes.c_size_t),
        ("methods", _MethodStats * 16)]


class _SearchParams(ctypes.Structure):
    _fields_ = [("nprobe", ctypes.c_uint32), ("ef_search", ctypes.c_uint32)]


class _ClusterOptions(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n in (
        "connect_timeout_ms", "call_timeout_ms", "try_timeout_ms", "hedge_delay_ms",
        "max_conns_per_replica", "backoff_min_ms", "backoff_max_ms", "probe_interval_ms")] + [
        ("token", ctypes.c_char_p), ("codec_fingerprint", ctypes.c_uint64),
        ("check_fingerprint", ctypes.c_int), ("client_name", ctypes.c_char_p),
        ("threads", ctypes.c_int), ("completion", ctypes.c_int),
        ("tls_ca", ctypes.c_char_p), ("tls_cert", ctypes.c_char_p), ("tls_key", ctypes.c_char_p),
        ("tls_name", ctypes.c_char_p)]


class _ClusterCounters(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "calls", "failed", "failovers", "hedges", "connects", "probes", "probes_ok", "bytes_read")]


class _ReplicaInfo(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_char * 256), ("up", ctypes.c_int), ("failures", ctypes.c_uint),
                ("backoff_ms_left", ctypes.c_int), ("open_conns", ctypes.c_uint),
                ("calls", ctypes.c_uint64), ("errors", ctypes.c_uint64),
                ("last_error", ctypes.c_char * 256)]


class _Geom(ctypes.Structure):
    _fields_ = [("spec", _Spec), ("n_queries", ctypes.c_uint32), ("k", ctypes.c_uint32),
                ("dtype", ctypes.c_int)] + [(n, ctypes.c_size_t) for n in (
                    "kv_query_stride", "kv_layer_stride", "kv_kv_stride", "pos_query_stride",
                    "pos_layer_stride")]


class _AttnRound(ctypes.Structure):
    _fields_ = [("kv", ctypes.c_void_p), ("pos", ctypes.POINTER(ctypes.c_int32)),
                ("ids", ctypes.POINTER(ctypes.c_uint64)), ("scores", ctypes.POINTER(ctypes.c_float))]


class _AttnStats(ctypes.Structure):
    _fields_ = [("placed", ctypes.c_uint32), ("empty", ctypes.c_uint32),
                ("failed", ctypes.c_uint32), ("masked_tokens", ctypes.c_uint32),
                ("first_error", ctypes.c_int), ("error", ctypes.c_char * 256)]


class _AttnCodes(ctypes.Structure):
    _fields_ = [("n_queries", ctypes.c_uint32), ("k", ctypes.c_uint32),
                ("rec_bytes", ctypes.c_size_t), ("buf", c_u8p),
                ("ids", ctypes.POINTER(ctypes.c_uint64)), ("scores", ctypes.POINTER(ctypes.c_float)),
                ("status", ctypes.POINTER(ctypes.c_int32)), ("placed", ctypes.c_uint32),
                ("failed", ctypes.c_uint32)]


class _Memory(ctypes.Structure):
    _fields_ = [("chunk_id", ctypes.c_uint64), ("query", ctypes.c_uint32), ("rank", ctypes.c_uint32),
                ("score", ctypes.c_float), ("status", ctypes.c_int), ("grpc_status", ctypes.c_int),
                ("error", ctypes.c_char_p), ("data", c_u8p), ("len", ctypes.c_size_t),
                ("record", ctypes.c_void_p), ("text", ctypes.c_void_p),
                ("text_len", ctypes.c_size_t)]


class _RecordIn(ctypes.Structure):
    _fields_ = [("chunk_id", ctypes.c_uint64), ("chunk_len", ctypes.c_uint32),
                ("positions", ctypes.c_void_p), ("codes", ctypes.c_void_p),
                ("text", ctypes.c_char_p), ("text_len", ctypes.c_size_t),
                ("embedding", ctypes.c_void_p)]


_MEMORY_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(_Memory))

_MIRRORS = {
    "m3_layout": _Layout, "m3_client_options": _ClientOptions, "m3_client_info": _ClientInfo,
    "m3_client_query": _Query, "m3_client_stats": _ClientStats, "m3_search_params": _SearchParams,
    "m3_cluster_options": _ClusterOptions, "m3_cluster_counters": _ClusterCounters,
    "m3_cluster_replica_info": _ReplicaInfo, "m3_attn_geom": _Geom, "m3_attn_round": _AttnRound,
    "m3_attn_stats": _AttnStats, "m3_attn_codes": _AttnCodes, "m3_client_memory": _Memory,
    "m3_record_in": _RecordIn,
}

_P = ctypes.c_void_p
_SIGS = {
    # name: (restype, argtypes)
    "m3_err_name": (ctypes.c_char_p, [ctypes.c_int]),
    "m3_strerror": (ctypes.c_char_p, [ctypes.c_int]),
    "m3_errmsg": (ctypes.c_char_p, []),
    "m3_attn_abi_sizeof": (ctypes.c_size_t, [ctypes.c_char_p]),
    "m3_client_options_init": (None, [_P]),
    "m3_client_connect": (ctypes.c_int, [ctypes.c_char_p, _P, ctypes.POINTER(_P)]),
    "m3_client_close": (None, [_P]),
    "m3_client_info_get": (ctypes.POINTER(_ClientInfo), [_P]),
    "m3_client_last_status": (ctypes.c_int, [_P, ctypes.POINTER(ctypes.c_char_p)]),
    "m3_client_search": (ctypes.c_int, [_P, _P, ctypes.c_size_t, ctypes.c_uint32, _P, _P, _P]),
    "m3_client_retrieve": (ctypes.c_int, [_P, _P, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_int,
                                          _P, _P]),
    "m3_client_fetch": (ctypes.c_int, [_P, _P, ctypes.c_size_t, ctypes.c_int, _P, _P]),
    "m3_client_stats_get": (ctypes.c_int, [_P, _P]),
    "m3_client_put": (ctypes.c_int, [_P, _P, _P, ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint32)]),
    "m3_client_delete": (ctypes.c_int, [_P, _P, ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint32)]),
    "m3_record_encode": (ctypes.c_long, [_P, ctypes.c_size_t, _P, _P]),
    "m3_record_size": (ctypes.c_size_t, [_P, ctypes.c_size_t]),
    "m3_layout_codes_bytes": (ctypes.c_size_t, [_P]),
    "m3_client_set_search_params": (None, [_P, _P]),
    "m3_cluster_set_search_params": (None, [_P, _P]),
    "m3_cluster_map_load": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(_P)]),
    "m3_cluster_map_parse": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(_P)]),
    "m3_cluster_map_free": (None, [_P]),
    "m3_cluster_options_init": (None, [_P]),
    "m3_cluster_open": (ctypes.c_int, [_P, _P, ctypes.POINTER(_P)]),
    "m3_cluster_close": (None, [_P]),
    "m3_cluster_shards": (ctypes.c_uint32, [_P]),
    "m3_cluster_info": (ctypes.c_int, [_P, _P]),
    "m3_cluster_last_status": (ctypes.c_int, [ctypes.POINTER(ctypes.c_int),
                                              ctypes.POINTER(ctypes.c_char_p)]),
    "m3_cluster_search": (ctypes.c_int, [_P, _P, ctypes.c_size_t, ctypes.c_uint32, _P, _P, _P]),
    "m3_cluster_retrieve": (ctypes.c_int, [_P, _P, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_int,
                                           _P, _P]),
    "m3_cluster_fetch": (ctypes.c_int, [_P, _P, ctypes.c_size_t, ctypes.c_int, _P, _P]),
    "m3_cluster_counters_get": (None, [_P, _P]),
    "m3_cluster_map_replicas": (ctypes.c_uint32, [_P, ctypes.c_uint32]),
    "m3_cluster_replica_get": (ctypes.c_int, [_P, ctypes.c_uint32, ctypes.c_uint32, _P]),
    "m3_codec_set_open": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(_P)]),
    "m3_codec_set_create_raw": (ctypes.c_int, [ctypes.c_int, ctypes.c_uint16, ctypes.POINTER(_P)]),
    "m3_codec_set_close": (None, [_P]),
    "m3_codec_set_fingerprint": (ctypes.c_uint64, [_P]),
    "m3_codec_set_check_layout": (ctypes.c_int, [_P, _P]),
    "m3_record_mem_size": (ctypes.c_size_t, [_P]),
    "m3_attn_geom_init": (ctypes.c_int, [_P, _P, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int]),
    "m3_attn_kv_elems": (ctypes.c_size_t, [_P]),
    "m3_attn_pos_elems": (ctypes.c_size_t, [_P]),
    "m3_attn_create_host": (ctypes.c_int, [_P, _P, ctypes.POINTER(_P)]),
    "m3_attn_destroy": (None, [_P]),
    "m3_attn_begin": (ctypes.c_int, [_P, _P]),
    "m3_attn_finish": (ctypes.c_int, [_P, _P]),
    "m3_attn_codes_init": (None, [_P, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_size_t, _P, _P,
                                  _P, _P]),
    "m3_attn_codes_fn": (ctypes.c_int, [_P, _P]),
    "m3_attn_place": (ctypes.c_int, [_P, ctypes.c_uint32, ctypes.c_uint32, _P]),
    "m3_attn_memory_fn": (ctypes.c_int, [_P, _P]),
}


def load_library(path=None):
    """Load (once) and return libm3client.so; checks the struct mirrors.
    path: load exactly that file. Raises M3LibraryError when none loads."""
    global _lib
    if _lib is not None and path is None:
        return _lib
    if path:
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise M3LibraryError("m3store: cannot load %s: %s" % (path, e), [(path, str(e))])
    else:
        lib, _ = _open_first()
    for name, (res, args) in _SIGS.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
    for name, cls in _MIRRORS.items():
        want = lib.m3_attn_abi_sizeof(name.encode())
        if want != ctypes.sizeof(cls):
            raise M3LibraryError("m3store: struct %s is %d bytes in %s but %d in this binding" %
                                 (name, want, getattr(lib, "_name", "?"), ctypes.sizeof(cls)))
    _lib = lib
    return lib


# ---- errors ------------------------------------------------------------------

class M3Error(Exception):
    """An m3 call failed: .code (negative m3 code), .name ("M3_EFINGERPRINT"),
    .message (what failed and where), .grpc_status (for calls; None else)."""

    def __init__(self, code, name, message, grpc_status=None):
        self.code, self.name, self.message, self.grpc_status = code, name, message, grpc_status
        super().__init__("%s: %s" % (name, message))


def _err(code, message=None, grpc_status=None):
    lib = load_library()
    if message is None:
        message = (lib.m3_errmsg() or b"").decode(errors="replace")
    if not message:
        message = lib.m3_strerror(code).decode()
    return M3Error(code, lib.m3_err_name(code).decode(), message, grpc_status)


def _check(rc):
    if rc != 0:
        raise _err(rc)


# ---- rounds ------------------------------------------------------------------

DTYPES = {"f32": (1, np.float32), "f16": (2, np.float16), "bf16": (3, np.uint16)}
_KINDS = {1: "raw-f32", 2: "raw-f16", 3: "raw-bf16", 16: "faiss", 255: "synthetic"}


class Round:
    """A retrieval round (or a fetch, with k = 1 and one row per id).

    ids (Q, k) uint64 (2**64-1: nothing arrived), scores (Q, k) float32,
    status (Q, k) int32: 0, or the item's m3 code (M3_ENOTFOUND, -3, for an
    id the store lacks or a rank that got nothing; M3_ECORRUPT, ...; a
    record that does not place or fit: M3_ESHAPE, M3_EFINGERPRINT, ...),
    errors {(query, rank): message} for every status that is not 0, the
    same in both modes, and a failed item keeps the id it came with; texts
    (with_text=True) Q lists of k str (None where no memory). Then either
    codes (Q, k, record_bytes) uint8 (zeros where status is not 0), or kv
    (Q, layers, 2, kv_heads, k * n_tokens, head_dim) and positions
    (Q, layers, kv_heads, k * n_tokens) int32, with stats (placed, empty,
    failed, masked_tokens, first_error, error)."""

    def __init__(self, **kw):
        self.ids = self.scores = self.codes = self.status = self.errors = self.texts = None
        self.kv = self.positions = self.stats = None
        self.__dict__.update(kw)

    def __repr__(self):
        parts = ["%s=%s" % (k, getattr(v, "shape", v)) for k, v in self.__dict__.items()
                 if v is not None]
        return "Round(%s)" % ", ".join(parts)


EMPTY_ID = np.uint64(0xFFFFFFFFFFFFFFFF)


def _ptr(a):
    return ctypes.c_void_p(a.ctypes.data)


M3_ENOTFOUND, M3_ENOMEM, M3_EINTERNAL, M3_ECANCELED = -3, -2, -15, -16


class _Tap:
    """A Python m3_client_memory_fn for the rounds that need to see each
    item: notes its id, score, status, error and text by (query, rank), then
    places it: into the codes sink (codes_sink: m3_attn_codes_fn, which keeps
    its own status), or into the attention round attn with m3_attn_place,
    whose code becomes the item's status (as m3_attn_codes_fn's M3_ESHAPE
    does in codes mode), failed items going to m3_attn_memory_fn for the
    round's stats. An exception inside stops the call and is raised after it."""

    def __init__(self, lib, n, k, texts, codes_sink=None, attn=None, ids=None, scores=None):
        self.lib, self.n, self.k = lib, n, k
        self.codes_sink, self.attn = codes_sink, attn
        self.out_ids, self.out_scores = ids, scores
        self.ids = np.full((n, k), EMPTY_ID, dtype=np.uint64)
        self.scores = np.zeros((n, k), dtype=np.float32)
        self.status = np.full((n, k), M3_ENOTFOUND, dtype=np.int32)
        self.errors = {}
        self.texts = [[None] * k for _ in range(n)] if texts else None
        self.exc = None
        self.fn = _MEMORY_FN(self._on)

    def _on(self, ud, mp):
        try:
            return self._take(mp)
        except BaseException as e:  # noqa: B902 -- raised again after the call
            self.exc = e
            return M3_ECANCELED

    def _take(self, mp):
        m, lib = mp.contents, self.lib
        q, r = m.query, m.rank
        if q >= self.n or r >= self.k:  # the sinks count it as failed
            if self.codes_sink is not None:
                return lib.m3_attn_codes_fn(self.codes_sink, mp)
            return lib.m3_attn_memory_fn(self.attn, mp)
        self.ids[q, r], self.scores[q, r], st = m.chunk_id, m.score, m.status
        if st == 0 and self.texts is not None:
            self.texts[q][r] = (ctypes.string_at(m.text, m.text_len).decode("utf-8", "replace")
                                if m.text else "")
        if st != 0:
            self.errors[(q, r)] = (m.error or b"").decode(errors="replace")
        if self.codes_sink is not None:
            rc = lib.m3_attn_codes_fn(self.codes_sink, mp)
        elif st != 0:
            rc = lib.m3_attn_memory_fn(self.attn, mp)
        else:
            st = lib.m3_attn_place(self.attn, q, r, m.record)
            if st == 0:
                self.out_ids[q, r], self.out_scores[q, r] = m.chunk_id, m.score
            else:
                self.errors[(q, r)] = (lib.m3_errmsg() or b"").decode(errors="replace")
            rc = st if st in (M3_EINTERNAL, M3_ENOMEM) else 0
        self.status[q, r] = st
        return rc

    def errors_of(self, status):
        """{(query, rank): message} of the items whose status is not 0."""
        out = {}
        for q, r in zip(*np.nonzero(status)):
            q, r = int(q), int(r)
            if (q, r) in self.errors and self.errors[(q, r)]:
                out[(q, r)] = self.errors[(q, r)]
            elif self.ids[q, r] == EMPTY_ID:
                out[(q, r)] = "no memory arrived for this rank"
            else:
                out[(q, r)] = self.lib.m3_strerror(int(status[q, r])).decode()
        return out


class Client:
    """One m3-server (server="host:port") or a cluster (cluster=path of a
    cluster map, or its JSON text). token: read token (default: none, or the
    map's). tls_ca: CA file: speak TLS 1.3 and refuse servers whose
    certificate it did not sign (with a cluster, instead of the map's "tls"
    object); tls_cert / tls_key: client certificate and key (mutual TLS);
    tls_name: the name the servers' certificates must carry (default: the
    address's host). codec: path of the codec set file to decode with (raw codecs
    need none); its fingerprint must be the servers'. timeout_ms: deadline
    of each call. nprobe / ef_search: how hard the servers' trained index
    searches (IVF / HNSW), for every search and retrieve (0: the servers'
    setting); search() and retrieve() take them per call too. A Client is
    not thread-safe for server=; cluster= handles are (the C cluster is),
    except for per-call nprobe / ef_search, which set the handle's params
    for the call. record(), put() and delete() write to a server= Client's
    store (token: the server's admin token)."""

    def __init__(self, server=None, cluster=None, token=None, codec=None, timeout_ms=10000,
                 check_fingerprint=False, nprobe=0, ef_search=0, tls_ca=None, tls_cert=None,
                 tls_key=None, tls_name=None):
        if (server is None) == (cluster is None):
            raise ValueError("give exactly one of server= or cluster=")
        self._lib = lib = load_library()
        self._c = self._cl = self._cs = None
        self._params = self._check_params(nprobe, ef_search)
        self._params_set = None
        self._token = token.encode() if isinstance(token, str) else token
        # TLS (docs/CLIENT.md): CA file, client certificate and key (mutual
        # TLS), the name the servers' certificates must carry.
        self._tls = {n: (os.fsencode(v) if n != "tls_name" else v.encode()) if v is not None
                     else None for n, v in (("tls_ca", tls_ca), ("tls_cert", tls_cert),
                                            ("tls_key", tls_key), ("tls_name", tls_name))}
        info = _ClientInfo()
        fp = 0
        if codec is not None:
            cs = ctypes.c_void_p()
            _check(lib.m3_codec_set_open(os.fsencode(codec), ctypes.byref(cs)))
            self._cs = cs
            fp = lib.m3_codec_set_fingerprint(cs)
        if server is not None:
            o = _ClientOptions()
            lib.m3_client_options_init(ctypes.byref(o))
            o.call_timeout_ms = timeout_ms
            o.token = self._token
            o.client_name = b"m3store-python"
            for n, v in self._tls.items():
                setattr(o, n, v)
            if check_fingerprint and fp:
                o.codec_fingerprint, o.check_fingerprint = fp, 1
            c = ctypes.c_void_p()
            _check(lib.m3_client_connect(server.encode(), ctypes.byref(o), ctypes.byref(c)))
            self._c = c
            info = lib.m3_client_info_get(c).contents
            self.address = server
        else:
            m = ctypes.c_void_p()
            if cluster.lstrip().startswith("{"):
                _check(lib.m3_cluster_map_parse(cluster.encode(), b"<python>", ctypes.byref(m)))
            else:
                _check(lib.m3_cluster_map_load(os.fsencode(cluster), ctypes.byref(m)))
            self._map_shards = None
            try:
                o = _ClusterOptions()
                lib.m3_cluster_options_init(ctypes.byref(o))
                o.call_timeout_ms = timeout_ms
                o.token = self._token
                o.client_name = b"m3store-python"
                for n, v in self._tls.items():
                    setattr(o, n, v)
                if check_fingerprint and fp:
                    o.codec_fingerprint, o.check_fingerprint = fp, 1
                cl = ctypes.c_void_p()
                _check(lib.m3_cluster_open(m, ctypes.byref(o), ctypes.byref(cl)))
                self._cl = cl
                self._map_shards = [lib.m3_cluster_map_replicas(m, s)
                                    for s in range(lib.m3_cluster_shards(cl))]
            finally:
                lib.m3_cluster_map_free(m)
            rc = lib.m3_cluster_info(self._cl, ctypes.byref(info))
            if rc:
                self.close()
                raise _err(rc)
            self.address = cluster
        self._info = _ClientInfo()
        ctypes.memmove(ctypes.byref(self._info), ctypes.byref(info), ctypes.sizeof(info))
        lay = self._info.layout
        if self._cs is not None:
            rc = lib.m3_codec_set_check_layout(self._cs, ctypes.byref(lay))
            if rc:
                err = _err(rc)
                self.close()
                raise err
        self.record_bytes = lib.m3_record_mem_size(ctypes.byref(lay))

    # -- info ------------------------------------------------------------

    @property
    def info(self):
        """The server's Hello: layout and limits, as a dict."""
        i, lay = self._info, self._info.layout
        return {
            "protocol_version": i.protocol_version, "records": i.records,
            "server_name": i.server_name.decode(errors="replace"), "shard": i.shard,
            "admin": bool(i.admin),
            "embedder": i.embedder.decode(errors="replace"),
            "layers": lay.spec.n_layers, "kv_heads": lay.spec.n_kv_heads,
            "tokens": lay.spec.n_tokens, "head_dim": lay.spec.head_dim,
            "codec": _KINDS.get(lay.codec_kind, str(lay.codec_kind)),
            "code_bytes": lay.code_bytes, "codec_fingerprint": "%016x" % lay.codec_fp,
            "embedding_dim": lay.emb_dim, "record_bytes": self.record_bytes,
            "max_k": i.max_k, "max_queries_per_call": i.max_queries_per_call,
        }

    # -- calls -----------------------------------------------------------

    def _queries(self, queries):
        """(array of _Query, keep-alive objects)"""
        dim = self._info.layout.emb_dim
        if isinstance(queries, str):
            queries = [queries]
        if len(queries) == 0:
            raise ValueError("queries: none given: want at least one query, as a float32 array "
                             "(Q, %d) with Q >= 1 or a non-empty list of texts" % dim)
        if isinstance(queries, (list, tuple)) and queries and all(isinstance(q, str) for q in queries):
            texts = [q.encode() for q in queries]
            arr = (_Query * len(texts))()
            for i, t in enumerate(texts):
                arr[i].text = t
            return arr, len(texts), texts
        x = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != dim or x.shape[0] == 0:
            raise ValueError("queries: want a float32 array (Q, %d) or a list of texts, got %s"
                             % (dim, x.shape))
        arr = (_Query * x.shape[0])()
        fp = ctypes.POINTER(ctypes.c_float)
        for i in range(x.shape[0]):
            arr[i].vector = ctypes.cast(x.ctypes.data + 4 * dim * i, fp)
            arr[i].dim = dim
        return arr, x.shape[0], x

    def _call_failed(self, rc):
        lib = self._lib
        msg = ctypes.c_char_p()
        if self._c is not None:
            st = lib.m3_client_last_status(self._c, ctypes.byref(msg))
        else:
            shard = ctypes.c_int()
            st = lib.m3_cluster_last_status(ctypes.byref(shard), ctypes.byref(msg))
        text = (msg.value or b"").decode(errors="replace") or None
        return _err(rc, text, st)

    def _stream(self, method, args, tap):
        """Run retrieve/fetch into the tap (the GIL is released between
        items)."""
        lib = self._lib
        fnp = ctypes.cast(tap.fn, ctypes.c_void_p)
        if self._c is not None:
            rc = getattr(lib, "m3_client_" + method)(self._c, *args, fnp, None)
        else:
            rc = getattr(lib, "m3_cluster_" + method)(self._cl, *args, fnp, None)
        if tap.exc is not None:
            raise tap.exc
        if rc != 0:
            raise self._call_failed(rc)

    def _codec(self):
        if self._cs is None:
            lay = self._info.layout
            if lay.codec_kind not in (1, 2, 3):
                raise ValueError("decoding %s codes needs the codec set: Client(..., codec=PATH)"
                                 % _KINDS.get(lay.codec_kind, lay.codec_kind))
            cs = ctypes.c_void_p()
            _check(self._lib.m3_codec_set_create_raw(lay.codec_kind, lay.spec.head_dim,
                                                     ctypes.byref(cs)))
            self._cs = cs
        return self._cs

    def _run(self, method, args, n, k, decoded, with_text):
        lib = self._lib
        ids = np.full((n, k), EMPTY_ID, dtype=np.uint64)
        scores = np.zeros((n, k), dtype=np.float32)
        if not decoded:
            codes = np.zeros((n, k, self.record_bytes), dtype=np.uint8)
            status = np.zeros((n, k), dtype=np.int32)
            sink = _AttnCodes()
            lib.m3_attn_codes_init(ctypes.byref(sink), n, k, self.record_bytes, _ptr(codes),
                                   _ptr(ids), _ptr(scores), _ptr(status))
            tap = _Tap(lib, n, k, with_text, codes_sink=ctypes.addressof(sink))
            self._stream(method, args, tap)
            return Round(ids=ids, scores=scores, codes=codes, status=status,
                         errors=tap.errors_of(status), texts=tap.texts)
        if decoded is True:
            decoded = "f32"
        if decoded not in DTYPES:
            raise ValueError("decoded: False, 'f32', 'f16' or 'bf16', not %r" % (decoded,))
        code, npdt = DTYPES[decoded]
        cs = self._codec()
        lay = self._info.layout
        sp = lay.spec
        g = _Geom()
        _check(lib.m3_attn_geom_init(ctypes.byref(g), ctypes.byref(sp), n, k, code))
        S = k * sp.n_tokens
        kv = np.empty((n, sp.n_layers, 2, sp.n_kv_heads, S, sp.head_dim), dtype=npdt)
        pos = np.empty((n, sp.n_layers, sp.n_kv_heads, S), dtype=np.int32)
        assert kv.size == lib.m3_attn_kv_elems(ctypes.byref(g))
        assert pos.size == lib.m3_attn_pos_elems(ctypes.byref(g))
        a = ctypes.c_void_p()
        _check(lib.m3_attn_create_host(cs, ctypes.byref(g), ctypes.byref(a)))
        try:
            r = _AttnRound(kv=kv.ctypes.data,
                           pos=ctypes.cast(pos.ctypes.data, ctypes.POINTER(ctypes.c_int32)),
                           ids=ctypes.cast(ids.ctypes.data, ctypes.POINTER(ctypes.c_uint64)),
                           scores=ctypes.cast(scores.ctypes.data, ctypes.POINTER(ctypes.c_float)))
            _check(lib.m3_attn_begin(a, ctypes.byref(r)))
            st = _AttnStats()
            tap = _Tap(lib, n, k, with_text, attn=a, ids=ids, scores=scores)
            try:
                self._stream(method, args, tap)
            finally:
                rc = lib.m3_attn_finish(a, ctypes.byref(st))
            _check(rc)
        finally:
            lib.m3_attn_destroy(a)
        # As in codes mode: a failed item keeps the id and score it came with.
        failed = tap.status != 0
        ids[failed] = tap.ids[failed]
        scores[failed] = tap.scores[failed]
        stats = {"placed": st.placed, "empty": st.empty, "failed": st.failed,
                 "masked_tokens": st.masked_tokens, "first_error": st.first_error,
                 "error": st.error.decode(errors="replace")}
        return Round(ids=ids, scores=scores, kv=kv, positions=pos, stats=stats, status=tap.status,
                     errors=tap.errors_of(tap.status), texts=tap.texts)

    @staticmethod
    def _check_params(nprobe, ef_search):
        for name, v in (("nprobe", nprobe), ("ef_search", ef_search)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > 0xFFFFFFFF:
                raise ValueError("%s: an integer 0..2^32-1 (0: the server's), not %r" % (name, v))
        return (nprobe, ef_search)

    def _use_params(self, nprobe, ef_search):
        """Set the search params of the next call (the Client's unless given)."""
        p = self._params
        if nprobe is not None or ef_search is not None:
            p = self._check_params(p[0] if nprobe is None else nprobe,
                                   p[1] if ef_search is None else ef_search)
        if p == self._params_set:
            return
        sp = _SearchParams(nprobe=p[0], ef_search=p[1])
        if self._c is not None:
            self._lib.m3_client_set_search_params(self._c, ctypes.byref(sp))
        else:
            self._lib.m3_cluster_set_search_params(self._cl, ctypes.byref(sp))
        self._params_set = p

    def retrieve(self, queries, k=5, decoded=False, with_text=False, nprobe=None, ef_search=None):
        """One retrieval round: queries as a float32 array (Q, embedding_dim)
        or a list of texts (at least one query). decoded=False: Round.codes
        (Q, k, record_bytes); 'f32' / 'f16' / 'bf16' (or True: f32):
        Round.kv and Round.positions in the attention-buffer layout. Either
        way Round.status (Q, k) holds each item's m3 code (0; M3_ENOTFOUND
        when the store lacks it or nothing arrived) and Round.errors the
        message of each failed item; with_text=True: Round.texts (Q lists
        of k str, None where no memory). nprobe / ef_search: this call's
        index params (None: the Client's). Raises M3Error when the call fails
        (a whole shard down, the deadline, a refused query)."""
        arr, n, keep = self._queries(queries)
        self._use_params(nprobe, ef_search)
        r = self._run("retrieve", (ctypes.byref(arr), n, k, 1 if with_text else 0), n, k,
                      decoded, with_text)
        del keep
        return r

    def search(self, queries, k=5, nprobe=None, ef_search=None):
        """Search only: (ids (Q, k) uint64, scores (Q, k) float32).
        nprobe / ef_search: this call's index params (None: the Client's)."""
        arr, n, keep = self._queries(queries)
        self._use_params(nprobe, ef_search)
        ids = np.full((n, k), EMPTY_ID, dtype=np.uint64)
        scores = np.zeros((n, k), dtype=np.float32)
        counts = np.zeros(n, dtype=np.uint32)
        f = self._lib.m3_client_search if self._c is not None else self._lib.m3_cluster_search
        rc = f(self._c if self._c is not None else self._cl, ctypes.byref(arr), n, k, _ptr(ids),
               _ptr(scores), _ptr(counts))
        del keep
        if rc:
            raise self._call_failed(rc)
        return ids, scores

    def fetch(self, ids, decoded=False, with_text=False):
        """Memories of chunk ids, as a Round with k = 1: codes (n, 1,
        record_bytes), or kv (n, layers, 2, kv_heads, n_tokens, head_dim)
        and positions; status and errors as retrieve's (a missing id:
        ids[i, 0] is that id, status[i, 0] M3_ENOTFOUND, in both modes)."""
        x = np.ascontiguousarray(np.asarray(ids, dtype=np.uint64).reshape(-1))
        if x.size == 0:
            raise ValueError("fetch: no ids (give at least one chunk id)")
        return self._run("fetch", (_ptr(x), x.size, 1 if with_text else 0), x.size, 1, decoded,
                         with_text)

    # -- admin writes (server= only) -------------------------------------

    def _writer(self, what):
        if self._c is None:
            raise ValueError("%s: a cluster= Client does not write; open Client(server=...) on "
                             "the shard's server with its admin token" % what)

    def record(self, chunk_id, positions, codes=None, kv=None, text="", embedding=None,
               chunk_len=None):
        """One complete m3 record (bytes) in the server's layout, for put().
        positions (layers, kv_heads, n_tokens) integers: each selected
        token's position in the chunk, -1 (or 0xFFFF) for an empty slot.
        Exactly one of codes (the coded vectors, layers x 2 [K, V] x
        kv_heads x n_tokens x code_bytes bytes in that order, as the store's
        codec makes them) or kv ((layers, 2, kv_heads, n_tokens, head_dim)
        floats; raw-f32/f16/bf16 stores only: stored in the store's dtype,
        bf16 rounded to nearest even). text: the chunk's text (str or UTF-8
        bytes). embedding: embedding_dim floats, the vector searches match
        (None: zeros, a memory that fetch returns but search never finds).
        chunk_len: tokens in the chunk (default: the largest position + 1).
        Raises ValueError naming what does not fit the layout."""
        lib, lay = self._lib, self._info.layout
        sp = lay.spec
        L, H, T, D = sp.n_layers, sp.n_kv_heads, sp.n_tokens, sp.head_dim
        if isinstance(chunk_id, bool) or not isinstance(chunk_id, (int, np.integer)):
            raise ValueError("record: chunk_id %r is not an integer" % (chunk_id,))
        cid = int(chunk_id)
        if not 0 <= cid < 2 ** 64 - 1:
            raise ValueError("record: chunk_id %d is out of range (0 to 2**64-2)" % cid)
        p = np.asarray(positions)
        if p.shape != (L, H, T) or not np.issubdtype(p.dtype, np.integer):
            raise ValueError("record: positions: want integers of shape (%d, %d, %d) (layers, "
                             "kv_heads, n_tokens), got %s %s" % (L, H, T, p.dtype, p.shape))
        p = p.astype(np.int64)
        empty = (p == -1) | (p == 0xFFFF)
        bad = ~empty & ((p < 0) | (p > 0xFFFE))
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError("record: positions%s = %d: a position is 0 to 65534, or -1 for an "
                             "empty slot" % (list(at), int(p[at])))
        pos = np.ascontiguousarray(np.where(empty, 0xFFFF, p).astype("<u2"))
        if (codes is None) == (kv is None):
            raise ValueError("record: give exactly one of codes= (coded vectors) or kv= (floats, "
                             "raw codecs)")
        want = lib.m3_layout_codes_bytes(ctypes.byref(lay))
        kind = _KINDS.get(lay.codec_kind, str(lay.codec_kind))
        if kv is not None:
            if lay.codec_kind not in (1, 2, 3):
                raise ValueError("record: kv= needs a raw-f32/f16/bf16 store; this store's codec is "
                                 "%s: give codes= as its codec makes them" % kind)
            x = np.asarray(kv, dtype=np.float32)
            if x.shape != (L, 2, H, T, D):
                raise ValueError("record: kv: want shape (%d, 2, %d, %d, %d) (layers, K/V, "
                                 "kv_heads, n_tokens, head_dim), got %s" % (L, H, T, D, x.shape))
            x = np.ascontiguousarray(x)
            if lay.codec_kind == 1:
                c = x.astype("<f4")
            elif lay.codec_kind == 2:
                with np.errstate(over="ignore"):
                    c = x.astype("<f2")
            else:
                u = x.view(np.uint32)
                c = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
                     >> np.uint32(16)).astype("<u2")
            if not np.isfinite(x).all() or (lay.codec_kind == 2 and not np.isfinite(c).all()):
                raise ValueError("record: kv holds values that are not finite in %s" % kind)
            cb = np.ascontiguousarray(c).view(np.uint8).reshape(-1)
        else:
            if isinstance(codes, np.ndarray):
                if codes.dtype != np.uint8:
                    raise ValueError("record: codes: want uint8, got %s" % codes.dtype)
                cb = np.ascontiguousarray(codes).reshape(-1)
            else:
                cb = np.frombuffer(bytes(codes), dtype=np.uint8)
        if cb.size != want:
            raise ValueError("record: codes: %d bytes, the store's layout (%s, %d bytes a vector) "
                             "takes %d" % (cb.size, kind, lay.code_bytes, want))
        tb = text.encode("utf-8") if isinstance(text, str) else bytes(text or b"")
        emb = None
        if embedding is not None:
            if lay.emb_dim == 0:
                raise ValueError("record: embedding given, but the store keeps none (embedding_dim 0)")
            emb = np.ascontiguousarray(np.asarray(embedding, dtype=np.float32).reshape(-1))
            if emb.size != lay.emb_dim or not np.isfinite(emb).all():
                raise ValueError("record: embedding: want %d finite floats, got %d%s" % (
                    lay.emb_dim, emb.size, "" if np.isfinite(emb).all() else " (not all finite)"))
        if chunk_len is None:
            chunk_len = int(p[~empty].max()) + 1 if (~empty).any() else 0
        if not 0 <= int(chunk_len) <= 0xFFFFFFFF:
            raise ValueError("record: chunk_len %r out of range" % (chunk_len,))
        rin = _RecordIn(chunk_id=cid, chunk_len=int(chunk_len), positions=pos.ctypes.data,
                        codes=cb.ctypes.data, text=tb, text_len=len(tb),
                        embedding=emb.ctypes.data if emb is not None else None)
        size = lib.m3_record_size(ctypes.byref(lay), len(tb))
        buf = ctypes.create_string_buffer(size)
        n = lib.m3_record_encode(buf, size, ctypes.byref(lay), ctypes.byref(rin))
        if n < 0:
            raise _err(n)
        return buf.raw[:n]

    def put(self, records):
        """Admin Put: complete records (record() makes them; one bytes-like
        or a list of them) into the server's store and index; a record whose
        chunk id is in the store replaces it. Returns how many were written.
        Sent in batches that fit the server's frame limit, each one atomic
        store write. Needs the server's admin token (Client(token=...)):
        else M3Error (grpc_status 7, PERMISSION_DENIED). A refused batch
        (a record of another layout, a bad checksum) raises M3Error naming
        the record by its index in records; .written says how many records
        of earlier batches were written."""
        self._writer("put")
        if isinstance(records, (bytes, bytearray, memoryview)):
            records = [records]
        recs = [bytes(r) for r in records]
        if not recs:
            raise ValueError("put: no records (give at least one, e.g. from Client.record())")
        for i, r in enumerate(recs):
            if len(r) < 64 or r[:4] != b"M3MR":
                raise ValueError("put: records[%d] (%d bytes) is not an m3 record (Client.record() "
                                 "makes them)" % (i, len(r)))
        limit = (self._info.max_frame_bytes or (64 << 20)) - (64 << 10)
        written, i = 0, 0
        while i < len(recs):
            j, total = i, 0
            while j < len(recs) and j - i < 65536 and (j == i or total + len(recs[j]) + 8 * (j - i + 1) <= limit):
                total += len(recs[j])
                j += 1
            if total > limit:
                raise ValueError("put: records[%d] is %d bytes; the server takes frames of at most %d"
                                 % (i, total, limit + (64 << 10)))
            buf = b"".join(recs[i:j])
            sizes = np.array([len(r) for r in recs[i:j]], dtype=np.uint32)
            got = ctypes.c_uint32()
            rc = self._lib.m3_client_put(self._c, buf, _ptr(sizes), j - i, ctypes.byref(got))
            if rc:
                e = self._call_failed(rc)
                if i:
                    e.message = "records[%d:%d] (after %d written): %s" % (i, j, written, e.message)
                    e.args = ("%s: %s" % (e.name, e.message),)
                e.written = written
                raise e
            written += got.value
            i = j
        return written

    def delete(self, ids):
        """Admin Delete of chunk ids (an int or a list); returns how many
        were in the store (deleting a missing id is not an error). Needs the
        server's admin token, as put()."""
        self._writer("delete")
        x = np.ascontiguousarray(np.asarray(ids, dtype=np.uint64).reshape(-1))
        if x.size == 0:
            raise ValueError("delete: no ids (give at least one chunk id)")
        deleted = 0
        for i in range(0, x.size, 65536):
            part = x[i:i + 65536]
            got = ctypes.c_uint32()
            rc = self._lib.m3_client_delete(self._c, _ptr(part), part.size, ctypes.byref(got))
            if rc:
                raise self._call_failed(rc)
            deleted += got.value
        return deleted

    def stats(self):
        """Server counters (server=), or the cluster's counters and each
        replica's state (cluster=), as a dict."""
        lib = self._lib
        if self._c is not None:
            s = _ClientStats()
            rc = lib.m3_client_stats_get(self._c, ctypes.byref(s))
            if rc:
                raise self._call_failed(rc)
            d = {n: getattr(s, n) for n, _ in _ClientStats._fields_[:10]}
            d["index_factory"] = s.index_factory.decode(errors="replace")
            d["index_params"] = s.index_params.decode(errors="replace")
            d["io_backend"] = s.io_backend.decode()
            d["embedder"] = s.embedder.decode(errors="replace")
            d["methods"] = {s.methods[i].method.decode(): {"calls": s.methods[i].calls,
                                                           "errors": s.methods[i].errors}
                            for i in range(min(s.n_methods, 16))}
            return d
        c = _ClusterCounters()
        lib.m3_cluster_counters_get(self._cl, ctypes.byref(c))
        d = {n: getattr(c, n) for n, _ in _ClusterCounters._fields_}
        shards = []
        for s, nrep in enumerate(self._map_shards):
            reps = []
            for r in range(nrep):
                ri = _ReplicaInfo()
                _check(lib.m3_cluster_replica_get(self._cl, s, r, ctypes.byref(ri)))
                reps.append({"addr": ri.addr.decode(), "up": bool(ri.up), "failures": ri.failures,
                             "calls": ri.calls, "errors": ri.errors,
                             "last_error": ri.last_error.decode(errors="replace")})
            shards.append(reps)
        d["shards"] = shards
        return d

    def close(self):
        lib = self._lib
        if self._c is not None:
            lib.m3_client_close(self._c)
            self._c = None
        if self._cl is not None:
            lib.m3_cluster_close(self._cl)
            self._cl = None
        if self._cs is not None:
            lib.m3_codec_set_close(self._cs)
            self._cs = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
