#!/usr/bin/env bash
# The main job on the bundled example, from a fresh machine:
#   install what is needed and build; make a small Llama-family model (random
#   weights, a BPE tokenizer learned from the bundled corpus); train a codec
#   on its memory-layer keys and values; encode the bundled knowledge base
#   (examples/kb/kb.jsonl, 297 chunks) into explicit memories in a store;
#   serve it with m3-server; retrieve memories for a text query with m3.
# Then it shows the store's integrity machinery: verify, a damaged record
# caught by its checksum, and the catalog rebuilt from the segments.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/install-deps.sh
bash scripts/build.sh build
bin=$root/build/bin
work=${M3_EXAMPLE_DIR:-$root/out/example}
rm -rf "$work"
mkdir -p "$work"
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "a test model: 4 layers (2 memory layers), 2 KV heads, head dim 16, BPE tokenizer from the corpus"
"$bin/m3-encode" test-model --out "$work/model"

step "train the codec on the model's keys and values: OPQ + 4x8-bit PQ, 4 bytes a vector"
OMP_NUM_THREADS=1 "$bin/m3-encode" train-codec --model "$work/model" --input examples/kb/kb.jsonl \
  --out "$work/codec.m3c" --codec "OPQ4_16,PQ4x8np" 2>&1 | grep -v '^WARNING clustering'

step "encode the knowledge base: forward of the memory layers, top-8 tokens per head, quantized; words:1024 embeddings"
"$bin/m3-encode" --model "$work/model" --input examples/kb/kb.jsonl --store "$work/store" \
  --codec "$work/codec.m3c"

step "m3 store info"
"$bin/m3" store info "$work/store"

step "start m3-server on the store (loopback, a free port)"
"$bin/m3-server" --store "$work/store" --listen 127.0.0.1:0 --http 127.0.0.1:0 \
  --port-file "$work/ports" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 100); do [ -s "$work/ports" ] && break; sleep 0.1; done
rpc=$(sed -n 's/^rpc=\([0-9]*\).*/\1/p' "$work/ports")
http=$(sed -n 's/.* http=\([0-9]*\).*/\1/p' "$work/ports")
[ -n "$rpc" ] || { cat "$work/server.log"; echo "m3-server did not start" >&2; exit 1; }
echo "m3-server: rpc port $rpc, http port $http"

step "retrieve: the top-3 memories for a text query"
"$bin/m3" query --server "127.0.0.1:$rpc" --text "Saturn bright rings" -k 3

step "fetch one memory by id (its record bytes are CRC-checked on arrival)"
id=$("$bin/m3" query --server "127.0.0.1:$rpc" --text "Saturn bright rings" -k 1 --json |
  sed -n 's/.*"chunk_id": *\([0-9]*\).*/\1/p' | head -n1)
"$bin/m3" fetch --server "127.0.0.1:$rpc" --id "$id"

step "the server's metrics (excerpt)"
curl -s "http://127.0.0.1:$http/metrics" 2>/dev/null | grep -E '^m3_(calls_total|memories_served_total|store_records)' ||
  echo "(curl not installed: see http://127.0.0.1:$http/metrics)"

step "stop the server (SIGTERM drains in-flight calls, exit 0)"
kill -TERM "$server_pid"
wait "$server_pid"
server_pid=

step "verify: every record read back and checksummed"
"$bin/m3" store verify "$work/store"

step "flip one byte inside chunk $id's memory; verify names it (exit 1 expected)"
seg=$("$bin/m3" store get "$work/store" --id "$id" | awk '$1 == "segment" {print $2}')
off=$("$bin/m3" store get "$work/store" --id "$id" | awk '$1 == "offset" {print $2 + 100}')
printf '\xff' | dd of="$seg" bs=1 seek="$off" conv=notrunc status=none
if "$bin/m3" store verify "$work/store"; then
  echo "verify missed the damage" >&2
  exit 1
fi

step "rebuild the catalog from the segments (the damaged record is reported and dropped)"
rm -rf "$work/store/catalog"
"$bin/m3" store repair "$work/store" || true
"$bin/m3" store verify "$work/store"

step "decode with memories: the reference worker retrieves 5 memories every 64 tokens"
"$bin/m3-server" --store "$work/store" --listen 127.0.0.1:0 --http off \
  --port-file "$work/ports2" 2>"$work/server2.log" &
server_pid=$!
for _ in $(seq 100); do [ -s "$work/ports2" ] && break; sleep 0.1; done
rpc=$(sed -n 's/^rpc=\([0-9]*\).*/\1/p' "$work/ports2")
[ -n "$rpc" ] || { cat "$work/server2.log"; echo "m3-server did not start" >&2; exit 1; }
head -n 2 examples/prompts.txt >"$work/prompts.txt"
"$bin/m3-bench" decode --model "$work/model" --server "127.0.0.1:$rpc" --codec "$work/codec.m3c" \
  --prompts "$work/prompts.txt" --batch 2 --new-tokens 140 --trace "$work/trace.json"
python3 - "$work/trace.json" examples/kb/kb.jsonl <<'PY'
import json, sys
trace = json.load(open(sys.argv[1]))
texts = {}
for line in open(sys.argv[2]):
    c = json.loads(line)
    texts[c["id"]] = c["text"]
for s, seq in enumerate(trace["sequences"]):
    print("sequence %d: %d prompt tokens, %d generated" % (s, len(seq["prompt"]), len(seq["tokens"])))
    for w in seq["windows"]:
        print("  window %d retrieved (used by window %d):" % (w["window"], w["window"] + 1))
        for i in w["ids"]:
            print("    %4d  %s" % (i, texts.get(i, "?")[:70]))
PY
kill -TERM "$server_pid"
wait "$server_pid"
server_pid=

printf '\nDone. Model, codec and store are in %s\n' "$work"
