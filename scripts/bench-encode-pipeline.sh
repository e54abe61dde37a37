#!/usr/bin/env bash
# m3-encode's pipeline against its stages alone (docs/BENCHMARKS.md,
# "Encode pipeline"): the bundled example's test model and codec
# (scripts/example.sh), the bundled knowledge base repeated REPS times with
# fresh ids and shuffled words (a larger synthetic input), encoded
#   1. pipelined (the default: read, forward, quantize, write overlapped), and
#   2. with M3_ENCODE_SERIAL=1 (one stage at a time: each stage's cost alone),
# each into a fresh store, ROUNDS times interleaved; prints both summaries'
# JSON and the pipeline's rate against the slowest stage's rate alone.
#   scripts/bench-encode-pipeline.sh [BUILD_DIR] [REPS (20)] [THREADS (1)] [ROUNDS (2)]
# Environment: CODEC (default the example's "OPQ4_16,PQ4x8np"), EMBED (hash:256).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
reps=${2:-20}
threads=${3:-1}
rounds=${4:-2}
bin=$build/bin
work=${M3_BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/m3-encode-pipe.XXXXXX")}
mkdir -p "$work"
codec=${CODEC:-OPQ4_16,PQ4x8np}
embed=${EMBED:-hash:256}

[ -d "$work/model" ] || "$bin/m3-encode" test-model --out "$work/model" 2>/dev/null
if [ ! -f "$work/codec.m3c" ]; then
  OMP_NUM_THREADS=1 "$bin/m3-encode" train-codec --model "$work/model" --input "$root/examples/kb/kb.jsonl" \
    --out "$work/codec.m3c" --codec "$codec" 2>&1 | grep -v '^WARNING clustering' | tail -1
fi
python3 - "$root/examples/kb/kb.jsonl" "$work/in.jsonl" "$reps" <<'PY'
import json, random, sys
src, out, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = [json.loads(l) for l in open(src) if l.strip()]
rng = random.Random(1)
with open(out, "w") as f:
    n = 0
    for r in range(reps):
        for o in lines:
            words = o["text"].split()
            if r:
                rng.shuffle(words)
            f.write(json.dumps({"id": n, "text": " ".join(words)}) + "\n")
            n += 1
PY
echo "input: $(wc -l <"$work/in.jsonl") chunks; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$rounds"); do
  for mode in pipelined serial; do
    rm -rf "$work/store-$mode"
    env $([ "$mode" = serial ] && echo M3_ENCODE_SERIAL=1) "$bin/m3-encode" --model "$work/model" \
      --input "$work/in.jsonl" --store "$work/store-$mode" --codec "$work/codec.m3c" --embed "$embed" \
      --threads "$threads" --json >"$work/$mode-$round.json" 2>"$work/$mode-$round.log"
    grep '^m3-encode: \(stages\|pipeline\)' "$work/$mode-$round.log"
  done
done
python3 - "$work" "$rounds" <<'PY'
import json, sys
work, rounds = sys.argv[1], int(sys.argv[2])
for r in range(1, rounds + 1):
    p = json.load(open(f"{work}/pipelined-{r}.json"))
    s = json.load(open(f"{work}/serial-{r}.json"))
    st = s["stages"]
    slow = max(st, key=lambda k: st[k]["alone_seconds"])
    alone = {k: round(v["chunks_per_s"], 1) for k, v in st.items()}
    print(f"round {r}: pipelined {p['chunks_per_s']:.1f} chunks/s ({p['seconds']:.2f} s); "
          f"serial {s['chunks_per_s']:.1f} chunks/s ({s['seconds']:.2f} s); stages alone "
          f"(chunks/s) {alone}; slowest {slow} {st[slow]['chunks_per_s']:.1f}; "
          f"pipelined / slowest alone = {p['chunks_per_s'] / st[slow]['chunks_per_s']:.3f}; "
          f"shares alone {dict((k, round(v['share'], 3)) for k, v in st.items())}; "
          f"load {p['load_avg']:.2f} / {s['load_avg']:.2f}")
PY
