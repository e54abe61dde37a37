#!/usr/bin/env bash
# The reference worker end to end on the bundled example: a test model, the
# knowledge base encoded with it (raw-f32) and an empty store, each served
# by a real m3-server on loopback; worker_decode_check (plain vs memory
# path, rounds, memory attention vs m3_attn_ref); m3-bench decode's JSON
# keys and trace; and the PyTorch worker (examples/worker.py) writing the
# same trace (tokens and retrieved chunk ids) as the C loop.
. "$(dirname "$0")/../lib/m3test.sh" worker-decode
: "${M3_DECODE_CHECK:?}" "${M3_LIB:?}"
m3t_need_exec "$bin/m3-server"

"$bin/m3-encode" test-model --out "$work/model" >/dev/null
"$bin/m3-encode" --model "$work/model" --input "$src/examples/kb/kb.jsonl" --store "$work/store" \
  --codec raw-f32 >/dev/null 2>&1
: >"$work/empty.jsonl"
"$bin/m3-encode" --model "$work/model" --input "$work/empty.jsonl" --store "$work/empty" \
  --codec raw-f32 >/dev/null 2>&1
m3t_server store "$work/store"
store=$addr
m3t_server empty "$work/empty"
empty=$addr

"$M3_DECODE_CHECK" "$work/model" "$store" "$empty" "$src/examples/prompts.txt"

# m3-bench decode: the keys the issue names, and its trace.
"$bin/m3-bench" decode --model "$work/model" --server "$store" --prompts "$src/examples/prompts.txt" \
  --batch 4 --new-tokens 140 --backend cpu --trace "$work/c.trace" --json >"$work/bench.json"
"$py" - "$work/bench.json" "$work/c.trace" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
for key in ("tokens_per_s_with", "tokens_per_s_without", "slowdown", "stall_p50_ms",
            "stall_p99_ms", "paper_equivalent", "retrieve_p50_ms", "decode_into_buffers_p50_ms"):
    assert key in b, "m3-bench decode --json lacks %s" % key
assert b["rounds"] >= 1 and b["memories_placed"] == b["rounds"] * 4 * 5, b
assert b["tokens_per_s_with"] > 0 and b["tokens_per_s_without"] > 0
t = json.load(open(sys.argv[2]))
assert t["format"] == "m3-decode-trace/1" and t["memory"] is True and t["k"] == 5
assert len(t["sequences"]) == 4
for s in t["sequences"]:
    assert len(s["tokens"]) == 140 and s["prompt"][0] == 1
    assert len(s["windows"]) == b["rounds"] and all(len(w["ids"]) == 5 for w in s["windows"])
print("m3-bench decode: %d rounds, slowdown %.3f, trace ok" % (b["rounds"], b["slowdown"]))
PY

# --repeat 2: each pair's slowdown from that pair's own two runs, and their median.
"$bin/m3-bench" decode --model "$work/model" --server "$store" --prompts "$src/examples/prompts.txt" \
  --batch 2 --new-tokens 70 --backend cpu --repeat 2 --json >"$work/bench2.json"
"$py" - "$work/bench2.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
w, wo, p = b["tokens_per_s_with_runs"], b["tokens_per_s_without_runs"], b["slowdown_pairs"]
assert b["repeat"] == 2 and len(w) == len(wo) == len(p) == 2, b
for r in range(2):
    assert abs(p[r] - (1 - w[r] / wo[r])) < 1e-4, (r, p, w, wo)
assert abs(b["slowdown_pair_median"] - (p[0] + p[1]) / 2) < 1e-6, b
assert b["tokens_per_s_with"] in w and b["tokens_per_s_without"] in wo, b
print("m3-bench decode --repeat 2: pairs %s" % p)
PY

# The PyTorch worker: the same trace.
if "$py" -c "import torch" 2>/dev/null; then
  preload=
  if [ "${M3_SANITIZE:-OFF}" = ON ]; then
    # the library carries ASan/UBSan: python must load their runtimes first
    preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
  fi
  LD_PRELOAD=$preload ASAN_OPTIONS=detect_leaks=0 \
    M3_LIB=$M3_LIB PYTHONPATH="$src/client/python" "$py" "$src/examples/worker.py" \
    --model "$work/model" --server "$store" --prompts "$src/examples/prompts.txt" --batch 4 \
    --new-tokens 140 --trace "$work/py.trace"
  "$py" - "$work/c.trace" "$work/py.trace" <<'PY'
import json, sys
c, p = (json.load(open(f)) for f in sys.argv[1:3])
for i, (a, b) in enumerate(zip(c["sequences"], p["sequences"])):
    assert a["prompt"] == b["prompt"], "sequence %d: prompts differ" % i
    for w, (x, y) in enumerate(zip(a["windows"], b["windows"])):
        assert x == y, "sequence %d window %d: C retrieved %s, Python %s" % (i, w, x, y)
    for j, (x, y) in enumerate(zip(a["tokens"], b["tokens"])):
        assert x == y, "sequence %d token %d: C %d, Python %d" % (i, j, x, y)
assert c == p, "traces differ outside tokens and windows"
print("C and PyTorch traces equal: %d sequences" % len(c["sequences"]))
PY
else
  echo "python3-torch missing (scripts/install-deps.sh installs it)" >&2
  exit 1
fi

# Hidden-state queries (--embed hidden): windows made of a chunk's text.
# Lines of exactly 63 tokens after BOS (window 0 = BOS + the line), each a
# chunk of its own store next to the knowledge base; the query of window 0
# is then the very embedding m3-encode stored for that chunk, so it must
# retrieve it first. The C and PyTorch traces must equal here too (query
# kind from the server's embedder: auto).
PYTHONPATH="$src/examples:$src/client/python" M3_LIB=$M3_LIB "$py" - "$work/model" \
  "$src/examples/kb/kb.jsonl" "$work/h.jsonl" "$work/h.prompts" <<'PY'
import json, sys
from worker import Tokenizer
tok = Tokenizer(sys.argv[1])
kb = [json.loads(l) for l in open(sys.argv[2])]
words = " ".join(c["text"] for c in kb).split()
out, lines, start, cid = [], [], 0, 100000
while len(lines) < 4:
    text = ""
    for w in words[start:]:
        t = (text + " " + w).strip()
        if len(tok.encode(t)) > 64:
            break
        text = t
    start += 7
    if len(tok.encode(text)) == 64 and text not in lines:
        lines.append(text)
        out.append({"id": cid + len(lines), "text": text})
with open(sys.argv[3], "w") as f:
    for c in kb + out:
        f.write(json.dumps(c) + "\n")
open(sys.argv[4], "w").write("\n".join(lines) + "\n")
print("hidden test: %d lines of 63 tokens" % len(lines))
PY
"$bin/m3-encode" --model "$work/model" --input "$work/h.jsonl" --store "$work/hstore" \
  --codec raw-f32 --embed hidden >/dev/null 2>&1
m3t_server hstore "$work/hstore"
hstore=$addr
"$bin/m3-bench" decode --model "$work/model" --server "$hstore" --prompts "$work/h.prompts" \
  --batch 4 --new-tokens 80 --backend cpu --trace "$work/ch.trace" --json >"$work/hbench.json"
LD_PRELOAD=$preload ASAN_OPTIONS=detect_leaks=0 \
  M3_LIB=$M3_LIB PYTHONPATH="$src/client/python" "$py" "$src/examples/worker.py" \
  --model "$work/model" --server "$hstore" --prompts "$work/h.prompts" --batch 4 \
  --new-tokens 80 --trace "$work/pyh.trace"
"$py" - "$work/hbench.json" "$work/ch.trace" "$work/pyh.trace" <<'PY'
import json, sys
b, c, p = (json.load(open(f)) for f in sys.argv[1:4])
assert b["query"] == "hidden:1", b["query"]
for i, s in enumerate(c["sequences"]):
    assert len(s["prompt"]) == 64, (i, len(s["prompt"]))
    assert s["windows"][0]["ids"][0] == 100001 + i, \
        "sequence %d: window 0 retrieved %s, not its own chunk %d" % (i, s["windows"][0]["ids"],
                                                                     100001 + i)
for i, (x, y) in enumerate(zip(c["sequences"], p["sequences"])):
    assert x["windows"] == y["windows"], "sequence %d: C %s, Python %s" % (i, x["windows"],
                                                                           y["windows"])
    assert x["tokens"] == y["tokens"], "sequence %d: tokens differ" % i
assert c == p
print("hidden queries: each window of a chunk's text retrieves it first; C == PyTorch")
PY
