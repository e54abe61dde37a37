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
for a in ("bin", "work", "raw", "pq"):
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

print("%d checks, %d failed" % (checks, fails))
sys.exit(1 if fails else 0)
