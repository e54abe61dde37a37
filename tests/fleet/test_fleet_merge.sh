#!/usr/bin/env bash
# m3 store merge under faults and bad inputs:
#  - kill -9 at random points (M3_MERGE_KILLS, 5), then a rerun of the same
#    command: the shards verify and equal an uninterrupted merge's, record
#    for record (encode_store_digest), and the inputs are unchanged (every
#    file's checksum);
#  - the same partial twice: identical duplicates are taken once;
#  - a partial of another codec, and a chunk id held by two partials with
#    different content, are refused (exit 1) naming the store and the id;
#  - a rerun with another shard count is refused;
#  - a trained index factory is trained once on a sample of all inputs.
. "$(dirname "$0")/../lib/m3test.sh" fleet-merge
m3t_need_exec "$bin/m3-encode" "$bin/m3"
export OPENBLAS_NUM_THREADS=1
kb=$src/examples/kb/kb.jsonl
"$bin/m3-encode" test-model --out "$work/model" 2>/dev/null
enc() { "$bin/m3-encode" --model "$work/model" --input "$kb" --embed hash:64 "$@" 2>/dev/null; }
for i in 0 1 2; do JOB_COMPLETION_INDEX=$i enc --store "$work/p/slice-$i" --slice auto/3; done
parts=("$work"/p/slice-0 "$work"/p/slice-1 "$work"/p/slice-2)
sums() { (cd "$work/p" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
sums >"$work/inputs.before"
digest() { for s in 0 1; do "$bin/encode_store_digest" "$1/shard-$s"; done; }

t0=$(date +%s%N)
"$bin/m3" store merge --shards 2 --out "$work/ref" "${parts[@]}" >/dev/null 2>&1
full_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
digest "$work/ref" >"$work/ref.d"
[ "$(wc -l <"$work/ref.d")" = 297 ] || fail "uninterrupted merge holds $(wc -l <"$work/ref.d") records"
echo "uninterrupted merge: ${full_ms} ms"

RANDOM=${M3_MERGE_SEED:-$$}
for k in $(seq "${M3_MERGE_KILLS:-5}"); do
  out=$work/out-$k
  "$bin/m3" store merge --shards 2 --out "$out" "${parts[@]}" >/dev/null 2>&1 &
  pid=$!
  ms=$((RANDOM % (full_ms + 1)))
  sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "kill $k after ${ms} ms: $(ls "$out" 2>/dev/null | tr '\n' ' ')"
  "$bin/m3" store merge --shards 2 --out "$out" "${parts[@]}" >"$work/final.log" 2>&1 ||
    { cat "$work/final.log"; fail "rerun after kill -9 $k"; }
  for s in 0 1; do "$bin/m3" store verify "$out/shard-$s" >/dev/null || fail "verify shard $s after kill $k"; done
  [ ! -e "$out/shard-0.tmp" ] && [ ! -e "$out/shard-1.tmp" ] || fail "a .tmp shard is left"
  digest "$out" >"$work/out.d"
  cmp -s "$work/ref.d" "$work/out.d" || { diff "$work/ref.d" "$work/out.d" | head; fail "merge after kill $k != uninterrupted merge"; }
  keep=$out
done
sums >"$work/inputs.after"
cmp -s "$work/inputs.before" "$work/inputs.after" || { diff "$work/inputs.before" "$work/inputs.after" | head; fail "an input changed"; }

# Identical duplicates: slice 1 given twice.
"$bin/m3" store merge --shards 2 --out "$work/dup" --json "${parts[@]}" "$work/p/slice-1" >"$work/dup.json" 2>/dev/null
grep -q '"duplicates": 9[0-9]' "$work/dup.json" || fail "duplicates: $(cat "$work/dup.json")"
digest "$work/dup" | cmp -s - "$work/ref.d" || fail "merge with duplicates != merge without"

# A factory that trains: trained once on a sample of all three slices (297
# vectors seen), each shard adds its vectors to that, no shard trains.
M3_LOG_LEVEL=info "$bin/m3" store merge --shards 2 --out "$work/ivf" --index IVF4,Flat "${parts[@]}" \
  >"$work/ivf.out" 2>"$work/ivf.log" || { cat "$work/ivf.log"; fail "merge --index IVF4,Flat"; }
[ -s "$work/ivf/index-trained.faiss" ] || fail "no shared trained index"
[ "$(grep -c "training 'IVF4,Flat'" "$work/ivf.log")" = 1 ] || { cat "$work/ivf.log"; fail "trained other than once"; }
grep -q "index-trained.faiss: training 'IVF4,Flat' on 297 of 297 vectors" "$work/ivf.log" ||
  { cat "$work/ivf.log"; fail "not trained on all slices"; }
grep -q "shard 0: .*149 records, index IVF4,Flat: 149 vectors" "$work/ivf.out" || { cat "$work/ivf.out"; fail "shard 0 index"; }
grep -q "shard 1: .*148 records, index IVF4,Flat: 148 vectors" "$work/ivf.out" || { cat "$work/ivf.out"; fail "shard 1 index"; }

refuse() { # refuse NAME PATTERN cmd...: exit 1 (inputs refused) naming PATTERN
  local name=$1 pat=$2
  shift 2
  runx 1 "$name" "$@" || fail "$name"
  grep -q -- "$pat" "$work/$name.out" || { cat "$work/$name.out"; fail "$name: message lacks '$pat'"; }
}
# Another codec.
"$bin/m3-encode" --model "$work/model" --input "$kb" --embed hash:64 --codec raw-f16 --store "$work/f16" 2>/dev/null
refuse codec "store $work/f16 holds" "$bin/m3" store merge --shards 2 --out "$work/x1" "${parts[@]}" "$work/f16"
# The same id with other content (another text for chunk 4).
sed -n '/"id": 4,/p' "$kb" | sed 's/"text": "/"text": "Changed: /' >"$work/one.jsonl"
"$bin/m3-encode" --model "$work/model" --input "$work/one.jsonl" --embed hash:64 --store "$work/other" 2>/dev/null
refuse conflict "chunk 4: store .* and store $work/other hold different content" \
  "$bin/m3" store merge --shards 2 --out "$work/x2" "${parts[@]}" "$work/other"
# Another shard count on the same output.
refuse shards "merged into 2 shards" "$bin/m3" store merge --shards 3 --out "$keep" "${parts[@]}"
echo "merge: $k kills + rerun == uninterrupted; inputs unchanged; duplicates once; refusals named"
