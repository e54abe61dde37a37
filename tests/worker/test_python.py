"""Checks of the Python binding, run by test_python.sh (see there)."""
import argparse
import json
import os
import struct
import subprocess
import sys

import numpy as np

import m3store

ap = argparse.ArgumentParser()
for a in ("bin", "work", "raw", "pq", "rw", "admin-token"):
    ap.add_argument("--" + a, required=True)
args = ap.parse_args()
L, H, T, D, E, K = 4, 2, 8, 16, 8, 5
fails = 0
checks = 0


def check(name, cond):
    global fails, checks
    checks += 1
    if not cond:
        fails += 1
        print("FAIL:", name, file=sys.stderr)


def cli(*argv):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    return subprocess.run([os.path.join(args.bin, "m3")] + list(argv), check=True,
                          capture_output=True, env=env).stdout


def parse_record(b):
    """header, positions (L, H, T) u16, codes -> vectors (L, 2, H, T, D) f32"""
    assert b[:4] == b"M3MR"
    chunk = struct.unpack_from("<Q", b, 8)[0]
    npos = L * H * T
    pbytes = (2 * npos + 7) // 8 * 8
    pos = np.frombuffer(b, dtype="<u2", count=npos, offset=64).reshape(L, H, T)
    kv = np.frombuffer(b, dtype="<f4", count=L * 2 * H * T * D, offset=64 + pbytes)
    return chunk, pos, kv.reshape(L, 2, H, T, D)


orig_kv = np.fromfile(os.path.join(args.work, "raw", "kv.f32"), dtype=np.float32).reshape(
    -1, L, 2, H, T, D)
rng = np.random.default_rng(7)
queries = rng.standard_normal((3, E)).astype(np.float32)
with open(os.path.join(args.work, "q.vec"), "w") as f:
    for q in queries:
        f.write(" ".join("%.9g" % v for v in q) + "\n")
cq = json.loads(cli("query", "--server", args.raw, "--vector-file",
                    os.path.join(args.work, "q.vec"), "-k", str(K), "--json"))
cli_ids = np.array([[r["chunk_id"] for r in q["results"]] for q in cq["queries"]], dtype=np.uint64)
cli_scores = np.array([[r["score"] for r in q["results"]] for q in cq["queries"]], dtype=np.float32)

with m3store.Client(server=args.raw) as c:
    info = c.info
    check("info shape", (info["layers"], info["kv_heads"], info["tokens"], info["head_dim"],
                         info["embedding_dim"], info["codec"]) == (L, H, T, D, E, "raw-f32"))
    r = c.retrieve(queries, k=K)
    check("codes shape", r.codes.shape == (3, K, c.record_bytes))
    check("ids equal m3 query --json", np.array_equal(r.ids, cli_ids))
    check("scores equal m3 query --json", np.allclose(r.scores, cli_scores, rtol=1e-6, atol=1e-6))
    check("status ok", (r.status == 0).all())
    # record bytes equal m3 fetch --out, in the same order
    flat = [int(i) for i in r.ids.reshape(-1)]
    out = os.path.join(args.work, "rec.bin")
    fetch_args = ["fetch", "--server", args.raw, "--out", out]
    for i in flat:
        fetch_args += ["--id", str(i)]
    cli(*fetch_args)
    cli_bytes = open(out, "rb").read()
    check("codes equal m3 fetch --out bytes", r.codes.reshape(-1).tobytes() == cli_bytes)

    # decoded: the attention-buffer layout, from the CLI's bytes by hand
    for name, npdt in (("f32", np.float32), ("f16", np.float16), ("bf16", np.uint16)):
        d = c.retrieve(queries, k=K, decoded=name)
        check(name + " kv shape", d.kv.shape == (3, L, 2, H, K * T, D) and d.kv.dtype == npdt)
        check(name + " positions shape", d.positions.shape == (3, L, H, K * T))
        check(name + " ids", np.array_equal(d.ids, cli_ids))
        check(name + " stats", d.stats["placed"] == 3 * K and d.stats["failed"] == 0)
        want_kv = np.zeros((3, L, 2, H, K * T, D), dtype=np.float32)
        want_pos = np.zeros((3, L, H, K * T), dtype=np.int32)
        rb = c.record_bytes
        for q in range(3):
            for k in range(K):
                chunk, pos, kv = parse_record(cli_bytes[(q * K + k) * rb:(q * K + k + 1) * rb])
                check("chunk order", chunk == int(cli_ids[q, k]))
                check("vectors equal what was stored", np.array_equal(kv, orig_kv[chunk]))
                p = pos.astype(np.int32)
                p[pos == 0xFFFF] = -1
                want_pos[q, :, :, k * T:(k + 1) * T] = p
                v = kv.copy()
                for kvi in range(2):
                    v[:, kvi][pos == 0xFFFF] = 0
                want_kv[q, :, :, :, k * T:(k + 1) * T, :] = v
        check(name + " positions equal the records'", np.array_equal(d.positions, want_pos))
        if name == "f32":
            check("f32 K/V equal the records' vectors exactly", np.array_equal(d.kv, want_kv))
        elif name == "f16":
            check("f16 K/V", np.array_equal(d.kv, want_kv.astype(np.float16)))
        else:
            got = (d.kv.astype(np.uint32) << 16).view(np.float32)
            check("bf16 K/V within bf16 rounding",
                  np.allclose(got, want_kv, rtol=2 ** -8, atol=0))
        check(name + " empty slots are masked zeros",
              (np.abs(d.kv.astype(np.float32)).sum(axis=-1)[:, :, 0][d.positions < 0] == 0).all())
    check("some slots empty (short chunks)", (d.positions < 0).any())

    # text queries, fetch, stats
    # (a generated store names no embedder: text queries are refused, not
    # answered with hash vectors from another embedding space)
    check("info embedder", c.info["embedder"] == "unknown")
    try:
        c.retrieve(["what is memory 12", "another question"], k=2)
        check("text queries refused", False)
    except m3store.M3Error as e:
        check("text queries refused", "send vectors with --vector-file" in str(e))
    fr = c.fetch([int(cli_ids[0, 0]), 999999])
    check("fetch codes", fr.codes[0, 0].tobytes() == cli_bytes[:c.record_bytes])
    check("fetch missing", fr.status[1, 0] == -3 and fr.ids[0, 0] == cli_ids[0, 0])
    fd = c.fetch([int(cli_ids[1, 2])], decoded="f32")
    check("fetch decoded", fd.kv.shape == (1, L, 2, H, T, D) and
          np.array_equal(fd.kv[0], want_kv[1, :, :, :, 2 * T:3 * T, :]))
    s = c.stats()
    check("stats", s["records"] == 60 and s["memories_served"] > 0 and s["embedder"] == "unknown")

    # with_text=True: each memory's text, in both modes, equal the CLI's
    cli_texts = [[r["text"] for r in q["results"]] for q in cq["queries"]]
    check("cli texts are the store's", all(t == "worker memory %d" % i for q, row in
                                           zip(cli_ids, cli_texts) for i, t in zip(q, row)))
    for mode in (False, "f32"):
        tt = c.retrieve(queries, k=K, decoded=mode, with_text=True)
        check("texts (decoded=%s) equal m3 query --json" % mode, tt.texts == cli_texts)
        check("texts (decoded=%s): ids unchanged" % mode, np.array_equal(tt.ids, cli_ids))
        check("no texts unless asked (decoded=%s)" % mode,
              c.retrieve(queries, k=K, decoded=mode).texts is None)
    ft = c.fetch([int(cli_ids[0, 1]), 999999], with_text=True)
    check("fetch texts", ft.texts == [[cli_texts[0][1]], [None]])

    # a missing id: the same report in codes and decoded modes
    good = int(cli_ids[2, 0])
    rounds = {"codes": c.fetch([good, 999999]), "f32": c.fetch([good, 999999], decoded="f32"),
              "bf16": c.fetch([999999, good], decoded="bf16")}
    for mode, fm in rounds.items():
        row = 1 if mode != "bf16" else 0
        check("missing id (%s): status M3_ENOTFOUND" % mode,
              fm.status.shape == (2, 1) and fm.status[row, 0] == -3 and fm.status[1 - row, 0] == 0)
        check("missing id (%s): ids keep the id asked for" % mode,
              int(fm.ids[row, 0]) == 999999 and int(fm.ids[1 - row, 0]) == good)
        check("missing id (%s): errors name it" % mode,
              list(fm.errors) == [(row, 0)] and fm.errors[(row, 0)] != "")
    check("missing id: same status and ids in both modes",
          np.array_equal(rounds["codes"].status, rounds["f32"].status) and
          np.array_equal(rounds["codes"].ids, rounds["f32"].ids) and
          rounds["codes"].errors == rounds["f32"].errors)
    check("missing id (decoded): its slots are empty",
          (rounds["f32"].positions[1] == -1).all() and (rounds["f32"].positions[0] >= -1).all() and
          rounds["f32"].stats["failed"] == 1 and rounds["f32"].stats["placed"] == 1)
    check("missing id (codes): zero bytes", not rounds["codes"].codes[1].any())

    # no queries, no ids: a clear error, before any call
    for what, call in (("retrieve([])", lambda: c.retrieve([])),
                       ("retrieve(0 rows)", lambda: c.retrieve(np.zeros((0, E), np.float32))),
                       ("retrieve([]) decoded", lambda: c.retrieve([], decoded="f32")),
                       ("fetch([])", lambda: c.fetch([]))):
        try:
            call()
            check(what + " raises", False)
        except ValueError as e:
            check(what + " says what is wrong: %s" % e, "at least one" in str(e))
    check("the connection still serves after the refusals",
          np.array_equal(c.retrieve(queries, k=K).ids, cli_ids))

    # errors carry the m3 name and message
    try:
        c.retrieve(np.zeros((1, E + 1), dtype=np.float32))
        check("wrong dim raises", False)
    except ValueError:
        pass
try:
    m3store.Client(server="127.0.0.1:1")
    check("refused raises", False)
except m3store.M3Error as e:
    check("refused M3Error", e.name == "M3_EIO" and "127.0.0.1:1" in e.message)

# a cluster map over the same server: the same round
cmap = json.dumps({"shards": [{"id": 0, "replicas": [args.raw]}]})
with m3store.Client(cluster=cmap) as cl:
    rc = cl.retrieve(queries, k=K, decoded="f32")
    check("cluster ids", np.array_equal(rc.ids, cli_ids))
    check("cluster kv", np.array_equal(rc.kv, want_kv))
    cs = cl.stats()
    check("cluster stats", cs["calls"] >= 1 and cs["shards"][0][0]["up"])

# a PQ store: decoding needs its codec set; another codec set is refused
with m3store.Client(server=args.pq, codec=os.path.join(args.work, "pq", "codecs.m3c")) as c:
    d = c.retrieve(rng.standard_normal((2, E)).astype(np.float32), k=3, decoded="f16")
    check("pq decoded", d.stats["placed"] == 6 and d.kv.shape == (2, L, 2, H, 3 * T, D))
    check("pq masked", (np.abs(d.kv.astype(np.float32)).sum(axis=-1)[:, :, 0][d.positions < 0] == 0).all())
    check("pq decoded non-zero", np.abs(d.kv.astype(np.float32)).sum() > 0)
with m3store.Client(server=args.pq) as c:
    try:
        c.retrieve(np.ones((1, E), dtype=np.float32), decoded="f32")
        check("faiss without codec raises", False)
    except ValueError:
        pass
try:
    m3store.Client(server=args.pq, codec=os.path.join(args.work, "raw", "codecs.m3c"))
    check("wrong codec raises", False)
except m3store.M3Error as e:
    check("wrong codec M3Error %s" % e.name, e.name in ("M3_EFINGERPRINT", "M3_EBADFORMAT"))

# admin put / delete on the rw store (30 memories, ids 0..29, started with
# --admin-token-file): records built by Client.record from the store's own
# codes and from float K/V, read back by fetch, retrieve and the CLI.
RW_N = 30
rw_kv = np.fromfile(os.path.join(args.work, "rw", "kv.f32"), dtype=np.float32).reshape(
    RW_N, L, 2, H, T, D)
rw_pos = np.fromfile(os.path.join(args.work, "rw", "pos.u16"), dtype=np.uint16).reshape(
    RW_N, L, H, T)


def expect_error(name, call, exc, needle):
    try:
        call()
        check(name + " raises", False)
        return None
    except exc as e:
        check(name + " says why: %s" % e, needle in str(e))
        return e


with m3store.Client(server=args.rw) as c:
    check("no token: not admin", c.info["admin"] is False)
    rec = c.record(100, rw_pos[3], kv=rw_kv[3], text="added without a token")
    e = expect_error("put without the admin token", lambda: c.put(rec), m3store.M3Error, "")
    check("put without the admin token: PERMISSION_DENIED", e is not None and e.grpc_status == 7)
    e = expect_error("delete without the admin token", lambda: c.delete([1]), m3store.M3Error, "")
    check("delete without the admin token: PERMISSION_DENIED", e is not None and e.grpc_status == 7)
    check("nothing written without the token", c.stats()["records"] == RW_N)

with m3store.Client(server=args.rw, token=args.admin_token) as c:
    check("admin token: admin", c.info["admin"] is True)
    # 1. a record from an existing memory's codes: positions and codes from
    # its fetched bytes, a new id, text and embedding
    src = c.fetch([4]).codes[0, 0].tobytes()
    _, spos, skv = parse_record(src)
    emb = np.zeros(E, dtype=np.float32)
    emb[0] = 1.0
    npos = L * H * T
    off = 64 + (2 * npos + 7) // 8 * 8
    r1 = c.record(1000, spos, codes=np.frombuffer(src, dtype=np.uint8)[off:], text="a new memory",
                  embedding=emb)
    check("record: its size", len(r1) == c.record_bytes + len("a new memory") + 4 * E)
    # 2. a record from float K/V (raw-f32: the vectors are the codes),
    # empty slots as -1
    p2 = rw_pos[7].astype(np.int32)
    p2[p2 == 0xFFFF] = -1
    emb2 = np.zeros(E, dtype=np.float32)
    emb2[1] = 1.0
    r2 = c.record(1001, p2, kv=rw_kv[7], text="from floats", embedding=emb2)
    check("put of 2 records: 2 written", c.put([r1, r2]) == 2)
    check("records after put", c.stats()["records"] == RW_N + 2)
    f = c.fetch([1000, 1001], with_text=True)
    check("fetch of the put ids: ok", (f.status == 0).all())
    _, gpos, gkv = parse_record(f.codes[0, 0].tobytes())
    check("put from codes: positions and codes as given",
          np.array_equal(gpos, spos) and np.array_equal(gkv, skv))
    _, gpos2, gkv2 = parse_record(f.codes[1, 0].tobytes())
    check("put from floats: positions as given (-1: empty)", np.array_equal(gpos2, rw_pos[7]))
    check("put from floats: the vectors as given", np.array_equal(gkv2, rw_kv[7]))
    check("put: texts", f.texts == [["a new memory"], ["from floats"]])
    s = c.retrieve(np.stack([emb, emb2]), k=1, with_text=True)
    check("retrieve finds the put memories by their embeddings",
          [int(i) for i in s.ids[:, 0]] == [1000, 1001] and np.allclose(s.scores[:, 0], 1, atol=1e-5))
    check("retrieve of a put memory: its text", s.texts == [["a new memory"], ["from floats"]])
    cq = json.loads(cli("fetch", "--server", args.rw, "--id", "1001", "--json"))
    check("the CLI sees the put memory", "1001" in json.dumps(cq) and "from floats" in json.dumps(cq))
    # 3. a put of an existing id replaces it
    r1b = c.record(1000, spos, codes=np.frombuffer(src, dtype=np.uint8)[off:], text="replaced",
                   embedding=emb)
    check("put of an existing id: 1 written", c.put(r1b) == 1)
    check("replacing keeps the count", c.stats()["records"] == RW_N + 2)
    check("the replacement's text", c.fetch([1000], with_text=True).texts == [["replaced"]])
    # 4. refusals: a damaged record (server), bad arguments (before any call)
    bad = bytearray(r2)
    bad[-1] ^= 0x40  # in the embedding: the tail CRC fails
    e = expect_error("put of a damaged record", lambda: c.put([r1b, bytes(bad)]), m3store.M3Error,
                     "record 1")
    check("a refused put writes nothing", c.stats()["records"] == RW_N + 2 and e is not None and
          e.written == 0)
    expect_error("put([])", lambda: c.put([]), ValueError, "at least one")
    expect_error("put of junk", lambda: c.put([r1, b"not a record"]), ValueError, "records[1]")
    expect_error("record: positions shape", lambda: c.record(5, np.zeros((L, H)), kv=rw_kv[0]),
                 ValueError, "positions")
    expect_error("record: a bad position", lambda: c.record(5, np.full((L, H, T), -7), kv=rw_kv[0]),
                 ValueError, "-1 for an empty slot")
    expect_error("record: codes and kv", lambda: c.record(5, rw_pos[0]), ValueError, "exactly one")
    expect_error("record: codes size", lambda: c.record(5, rw_pos[0], codes=b"x" * 10), ValueError,
                 "takes")
    expect_error("record: kv shape", lambda: c.record(5, rw_pos[0], kv=np.zeros((L, 2, H, T))),
                 ValueError, "kv")
    expect_error("record: embedding size", lambda: c.record(5, rw_pos[0], kv=rw_kv[0],
                                                            embedding=np.ones(E + 1)),
                 ValueError, "embedding")
    expect_error("record: id 2**64-1", lambda: c.record(2 ** 64 - 1, rw_pos[0], kv=rw_kv[0]),
                 ValueError, "chunk_id")
    expect_error("delete([])", lambda: c.delete([]), ValueError, "at least one")
    # 5. delete: counts what was there; the memory is gone from fetch and search
    check("delete of 1000 and a missing id: 1 deleted", c.delete([1000, 424242]) == 1)
    check("records after delete", c.stats()["records"] == RW_N + 1)
    g = c.fetch([1000, 1001])
    check("deleted id: M3_ENOTFOUND, the other still there",
          g.status[0, 0] == -3 and g.status[1, 0] == 0)
    s = c.retrieve(emb, k=3)
    check("deleted id: search no longer finds it", 1000 not in [int(i) for i in s.ids[0]])
    check("delete of an int", c.delete(1001) == 1 and c.stats()["records"] == RW_N)

cmap = json.dumps({"shards": [{"id": 0, "replicas": [args.rw]}]})
with m3store.Client(cluster=cmap) as cl:
    expect_error("cluster put", lambda: cl.put([b"x" * 64]), ValueError, "server=")
    expect_error("cluster delete", lambda: cl.delete([1]), ValueError, "server=")

with m3store.Client(server=args.pq) as c:
    expect_error("record kv= on a PQ store", lambda: c.record(1, np.zeros((L, H, T), np.int32),
                                                            kv=np.zeros((L, 2, H, T, D))),
                 ValueError, "codes=")

print("%d checks, %d failed" % (checks, fails))
sys.exit(1 if fails else 0)
