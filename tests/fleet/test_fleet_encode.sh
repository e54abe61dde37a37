#!/usr/bin/env bash
# The knowledge base encoded on a "fleet" and served by a cluster answers as
# one store does. `m3-cluster encode` runs the Kubernetes encode pipeline on
# loopback: 3 `m3-encode --slice auto/3` processes (JOB_COMPLETION_INDEX
# 0..2) with one codec from `m3-encode train-codec`, `m3 store merge
# --shards 2`, then a 2 x 2 cluster on the merged shards. Reference: the same
# input encoded by one m3-encode process into one store, served by one
# m3-server. Every query's answer (ids, scores, texts) and every fetched
# memory's bytes must be equal; the merged shards verify, and together hold
# the reference's records byte for byte (encode_store_digest).
. "$(dirname "$0")/../lib/m3test.sh" fleet-encode
m3t_need_exec "$bin/m3-encode" "$bin/m3" "$bin/m3-server"
cluster=$src/deploy/local/m3-cluster
m3t_at_exit '[ -f "$work/run/servers" ] && "$cluster" down --dir "$work/run" >/dev/null 2>&1'
export M3_BIN_DIR=$bin OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
kb=$src/examples/kb/kb.jsonl

"$bin/m3-encode" test-model --out "$work/model" 2>/dev/null
# The train-codec Job: one codec for every slice.
"$bin/m3-encode" train-codec --model "$work/model" --input "$kb" --out "$work/codec.m3c" \
  --codec "${M3_FLEET_CODEC:-PQ4x8np}" 2>&1 | grep -v '^WARNING clustering' | tail -1

# Reference: one process, one store, one server.
"$bin/m3-encode" --model "$work/model" --input "$kb" --codec "$work/codec.m3c" --store "$work/one" \
  --embed hash:256 2>/dev/null
m3t_server one "$work/one"

# The fleet: 3 slices, merge into 2 shards, 2 x 2 cluster.
"$cluster" encode --model "$work/model" --input "$kb" --codec "$work/codec.m3c" --slices 3 \
  --shards 2 --replicas 2 --dir "$work/run" --embed hash:256
for i in 0 1 2; do
  grep -q '"slice": '$i', "slices": 3' "$work/run/partials/slice-$i/slice.json" || fail "slice $i"
done
for s in 0 1; do "$bin/m3" store verify "$work/run/shards/shard-$s" >/dev/null || fail "verify shard $s"; done
"$bin/encode_store_digest" "$work/one" | sort >"$work/one.d"
cat <("$bin/encode_store_digest" "$work/run/shards/shard-0") \
    <("$bin/encode_store_digest" "$work/run/shards/shard-1") | sort >"$work/merged.d"
cmp -s "$work/one.d" "$work/merged.d" || { diff "$work/one.d" "$work/merged.d" | head; fail "merged shards != one store"; }
while read -r id _; do
  [ $((id % 2)) = 0 ] || fail "chunk $id in shard 0"
done < <("$bin/encode_store_digest" "$work/run/shards/shard-0")

one=(--server "$addr")
map=(--cluster "$work/run/cluster.json")

# Queries: every tenth chunk's text, and a few free ones.
queries=("Saturn bright rings" "the speed of light" "photosynthesis in plants" "a b c")
while IFS= read -r t; do queries+=("$t"); done < <(sed -n '1~10s/.*"text": *"\([^"]*\)".*/\1/p' "$kb" | head -30)
n=0
for q in "${queries[@]}"; do
  "$bin/m3" query "${one[@]}" --text "$q" -k 5 --json | grep -v '"server"' >"$work/q1.json"
  "$bin/m3" query "${map[@]}" --text "$q" -k 5 --json | grep -v '"cluster"' >"$work/q2.json"
  grep -q '"chunk_id"' "$work/q1.json" || fail "query '$q': no results from the reference"
  cmp -s "$work/q1.json" "$work/q2.json" || { diff "$work/q1.json" "$work/q2.json" | head -20; fail "query '$q' answered differently"; }
  ids=()
  while read -r id; do ids+=(--id "$id"); done < <(sed -n 's/.*"chunk_id": *\([0-9]*\).*/\1/p' "$work/q1.json")
  "$bin/m3" fetch "${one[@]}" "${ids[@]}" --out "$work/f1.bin" >/dev/null
  "$bin/m3" fetch "${map[@]}" "${ids[@]}" --out "$work/f2.bin" >/dev/null
  [ -s "$work/f1.bin" ] || fail "fetch: no bytes"
  cmp -s "$work/f1.bin" "$work/f2.bin" || fail "query '$q': fetched bytes differ"
  n=$((n + 1))
done
echo "fleet (3 slices, 2 shards x 2 replicas) == one process: $n queries (ids, scores, texts, bytes), $(wc -l <"$work/one.d") records"
