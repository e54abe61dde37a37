#!/usr/bin/env python3
"""Write the hand-made seed corpora of tests/fuzz/corpus/ (small, real
examples of each format). Seeds made by the project's own tools (codec sets,
trained tokenizer.json) are added beside these; see docs/OPERATIONS.md,
Fuzzing. Run from the repository root: python3 tests/fuzz/make_seeds.py"""
import json, os, struct

root = os.path.dirname(os.path.abspath(__file__))
corpus = os.path.join(root, "corpus")
repo = os.path.dirname(os.path.dirname(root))


def put(target, name, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- protobuf, by hand ----
def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def fld(num, wt, payload):
    key = varint(num << 3 | wt)
    if wt == 0:
        return key + varint(payload)
    if wt == 1:
        return key + struct.pack("<Q", payload)
    if wt == 5:
        return key + struct.pack("<f", payload)
    return key + varint(len(payload)) + payload  # wt 2


# ---- safetensors ----
def safetensors(tensors, meta=None):
    hdr, data = {}, b""
    for name, dtype, shape, raw in tensors:
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if meta:
        hdr["__metadata__"] = meta
    h = json.dumps(hdr).encode()
    return struct.pack("<Q", len(h)) + h + data


f32 = lambda *v: struct.pack("<%df" % len(v), *v)
put("safetensors", "two-f32", safetensors([
    ("model.embed_tokens.weight", "F32", [2, 2], f32(1, 2, 3, 4)),
    ("model.norm.weight", "F32", [2], f32(1, 1))], {"format": "pt"}))
put("safetensors", "f16-bf16-i64", safetensors([
    ("a", "F16", [3], struct.pack("<3H", 0x3C00, 0x7C00, 0x0001)),
    ("b", "BF16", [1, 2], struct.pack("<2H", 0x3F80, 0x7FC0)),
    ("c", "I64", [1], struct.pack("<q", 7))]))
put("safetensors", "scalar-empty", safetensors([("s", "F32", [], f32(5)), ("e", "F32", [0, 3], b"")]))

# ---- config.json ----
llama = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
         "intermediate_size": 128, "vocab_size": 97, "max_position_embeddings": 512,
         "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": [2, 3],
         "tie_word_embeddings": True, "hidden_act": "silu", "rope_scaling": None}
put("model_config", "llama-small", json.dumps(llama, indent=2))
put("model_config", "minimal", json.dumps({"hidden_size": 8, "num_hidden_layers": 1,
    "num_attention_heads": 2, "intermediate_size": 16, "vocab_size": 10}))

# ---- SentencePiece model files ----
def piece(p, score, typ=1):
    return fld(1, 2, fld(1, 2, p.encode()) + fld(2, 5, score) + fld(3, 0, typ))


def spm(pieces, model_type, byte_fallback=False, charsmap=b""):
    out = b"".join(pieces)
    ts = fld(3, 0, model_type) + (fld(35, 0, 1) if byte_fallback else b"")
    out += fld(2, 2, ts)
    ns = fld(1, 2, b"identity") + fld(3, 0, 1) + fld(4, 0, 1) + fld(5, 0, 1)
    if charsmap:
        ns += fld(2, 2, charsmap)
    out += fld(3, 2, ns)
    return out


specials = [piece("<unk>", 0, 2), piece("<s>", 0, 3), piece("</s>", 0, 3)]
words = ["\u2581the", "\u2581a", "\u2581", "t", "h", "e", "a", "he", "\u2581t", "o", "n"]
put("spm", "unigram", spm(specials + [piece(w, -1.0 - i) for i, w in enumerate(words)], 1))
put("spm", "bpe-bytes", spm(specials + [piece(w, -float(i)) for i, w in enumerate(words)] +
                            [piece("<0x%02X>" % b, 0, 6) for b in range(256)], 2, True))

# ---- tokenizer.json (Hugging Face BPE, Llama style) ----
vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
for b in range(256):
    vocab["<0x%02X>" % b] = len(vocab)
for p in ["\u2581", "t", "h", "e", "a", "\u2581t", "he", "\u2581the"]:
    vocab[p] = len(vocab)
tj = {"version": "1.0", "added_tokens": [
        {"id": 0, "content": "<unk>", "special": True}, {"id": 1, "content": "<s>", "special": True},
        {"id": 2, "content": "</s>", "special": True}],
      "normalizer": {"type": "Sequence", "normalizers": [
          {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
      "pre_tokenizer": None,
      "model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": True, "fuse_unk": True,
                "vocab": vocab, "merges": ["\u2581 t", "h e", "\u2581t he"]}}
put("tokenizer_json", "llama-bpe", json.dumps(tj))
tj2 = dict(tj)
tj2["model"] = dict(tj["model"], merges=[["\u2581", "t"], ["h", "e"]])
tj2["normalizer"] = None
tj2["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": True}
put("tokenizer_json", "pair-merges-metaspace", json.dumps(tj2))

# ---- JSONL input lines (first byte: the reader's options) ----
kb = open(os.path.join(repo, "examples/kb/kb.jsonl")).read().splitlines()
put("jsonl", "kb-head", b"\x00" + "\n".join(kb[:4]).encode() + b"\n")
put("jsonl", "external-emb", b"\x81" + b'{"id": 7, "text": "one two three", "embedding": [0.1, 0.2, 0.3, 0.4]}\n'
    b'{"text": "no id here", "embedding": [1, 2, 3, 4], "meta": {"k": 1}}\n')
put("jsonl", "long-split", b"\x10" + json.dumps({"id": 3, "text": " ".join(["word%d" % i for i in range(80)])}).encode() + b"\n")
put("jsonl", "bad-lines", b"\x08" + b'{"text": 5}\n\n{"id": -1, "text": "x"}\nnot json\n{"id": 1, "text": "a"}\n{"id": 1, "text": "dup"}\n')

# ---- index stamp (the fuzzer rewrites the crc32c line) ----
put("index_stamp", "flat", "m3index 1\nfactory IDMap,Flat\nmetric ip\ndim 8\ncount 64\nseqno 65\n"
    "index_bytes 2661\nindex_crc32c 1a2b3c4d\ncrc32c 00000000\n")
put("index_stamp", "ivf", "m3index 1\nfactory IVF16,Flat\nmetric ip\ndim 1024\ncount 1000000\n"
    "seqno 1000001\nindex_bytes 4100000000\nindex_crc32c deadbeef\ncrc32c 00000000\n")

# ---- cluster maps ----
for name in ["deploy/k8s/base/cluster.json", "deploy/k8s/overlays/example/cluster.json"]:
    put("cluster_map", name.split("/")[-2], open(os.path.join(repo, name), "rb").read())
put("cluster_map", "two-by-two", json.dumps({"shards": [["127.0.0.1:7600", "127.0.0.1:7602"],
    ["[::1]:7604", "host.example:7606"]], "token": "t" * 32, "codec_fingerprint": "0123456789abcdef"}))

# ---- m3-server config files ----
put("server_config", "deploy", open(os.path.join(repo, "deploy/m3-server.conf"), "rb").read())
put("server_config", "limits", "max-frame-mb = 4095\nwrite-high-water-mb=16\n  max-queries = 64 # c\n"
    "search-budget = 1024\nmax-http-connections = 8\nsendfile = false\nmin-drain-kb-per-s = 0\n"
    "listen = [::1]:0\nindex-params = nprobe=4\n")

# ---- HTTP requests ----
put("http", "metrics", "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n")
put("http", "healthz", "GET /healthz HTTP/1.0\n\n")
put("http", "readyz-query", "GET /readyz?verbose=1 HTTP/1.1\r\n\r\n")
put("http", "post", "POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
put("http", "m3-hello", b"M3\x01\x01" + bytes(28))

# ---- RPC calls (fuzz_rpc.c's input format) ----
M = {"hello": 1, "search": 2, "retrieve": 3, "fetch": 4, "stats": 5, "health": 6, "put": 7, "delete": 8}


def call(method, msg=b"", att=b"", ctl=1):
    return bytes([M[method], ctl]) + struct.pack("<HH", len(msg), len(att)) + msg + att


def query(vec=None, text=None):
    q = b""
    if vec:
        q += fld(1, 2, b"".join(struct.pack("<f", x) for x in vec))  # packed
    if text:
        q += fld(2, 2, text.encode())
    return q


vec = [0.5, -0.25, 0.125, 0.0, 1.0, 0.75, -0.5, 0.3]
search = fld(1, 2, query(vec)) + fld(1, 2, query(vec[::-1])) + fld(2, 0, 5)
put("rpc", "search", call("search", search))
put("rpc", "search-params", call("search", fld(1, 2, query(vec)) + fld(2, 0, 3) + fld(3, 2, fld(1, 0, 4) + fld(2, 0, 16))))
put("rpc", "search-nan", call("search", fld(1, 2, query([float("nan")] * 8)) + fld(1, 2, query([0.0] * 8)) + fld(2, 0, 4)))
put("rpc", "retrieve", call("retrieve", fld(1, 2, query(vec)) + fld(2, 0, 3) + fld(3, 0, 1)))
put("rpc", "retrieve-text", call("retrieve", fld(1, 2, query(text="the sun")) + fld(2, 0, 2)))
fetch = fld(1, 2, b"".join(struct.pack("<Q", i) for i in [0, 5, 63, 64, 2**64 - 1])) + fld(2, 0, 1)
put("rpc", "fetch", call("fetch", fetch))
put("rpc", "stats-health", call("stats") + call("health") + call("hello", fld(1, 0, 1) + fld(2, 2, b"wrong")))
put("rpc", "delete", call("delete", fld(1, 2, struct.pack("<QQ", 3, 1000))))
put("rpc", "put-bad", call("put", fld(1, 2, varint(64) + varint(8)), b"M3RC" + bytes(68)))
put("rpc", "cancel-reuse", call("fetch", fetch, ctl=1 | 4) + call("fetch", b"", ctl=2) +
    call("search", search, ctl=1 | 8) + call("stats", ctl=3 | (2 << 4)))
