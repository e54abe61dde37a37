#!/usr/bin/env bash
# Resume after kill -9: the encoder is killed at random points (several
# times, on the same store), then the same command runs to the end; the
# store must equal an uninterrupted run's: same chunk ids, same memory
# bytes, same texts and embeddings (encode_store_digest), and verify.
# M3_RESUME_KILLS sets the number of kills (4).
. "$(dirname "$0")/../lib/m3test.sh" encode-resume
m3t_need_exec "$bin/m3-encode"
kills=${M3_RESUME_KILLS:-4}
# A model big enough that a run takes a while: 4 memory layers, hidden 256.
"$bin/m3-encode" test-model --out "$work/model" --layers 8 --hidden 256 --heads 8 --kv-heads 4 \
  --head-dim 32 2>/dev/null
cat "$src/examples/kb/kb.jsonl" >"$work/in.jsonl"
# and a part without ids (hash ids)
sed -e '1,100!d' -e 's/"id": [0-9]*, //' "$src/examples/kb/kb.jsonl" >>"$work/in.jsonl"
args=(--model "$work/model" --input "$work/in.jsonl" --batch 4 --threads 2 --embed hash:64)

t0=$(date +%s.%N)
"$bin/m3-encode" "${args[@]}" --store "$work/ref" 2>"$work/ref.log"
t1=$(date +%s.%N)
full_ms=$(echo "($t1 - $t0) * 1000 / 1" | bc)
echo "uninterrupted run: ${full_ms} ms; $(tail -1 "$work/ref.log")"
"$bin/encode_store_digest" "$work/ref" >"$work/ref.digest"
[ "$(wc -l <"$work/ref.digest")" = 397 ] || fail "reference has $(wc -l <"$work/ref.digest") records"

RANDOM=${M3_RESUME_SEED:-$$}
for i in $(seq "$kills"); do
  "$bin/m3-encode" "${args[@]}" --store "$work/res" 2>>"$work/res.log" &
  pid=$!
  ms=$((20 + RANDOM % (full_ms / 2 + 1)))
  sleep "$(printf '0.%03d' "$ms")" 2>/dev/null || sleep "$(echo "$ms / 1000" | bc -l)"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  have=$([ -d "$work/res/catalog" ] && "$bin/encode_store_digest" "$work/res" 2>/dev/null | wc -l || echo 0)
  echo "kill $i after ${ms} ms: $have records stored"
done
"$bin/m3-encode" "${args[@]}" --store "$work/res" 2>"$work/final.log"
tail -1 "$work/final.log"
"$bin/m3" store verify "$work/res"
"$bin/encode_store_digest" "$work/res" >"$work/res.digest"
if ! cmp -s "$work/ref.digest" "$work/res.digest"; then
  diff "$work/ref.digest" "$work/res.digest" | head -20
  fail "the resumed store differs from the uninterrupted one"
fi
echo "resumed store == uninterrupted store ($(wc -l <"$work/res.digest") records)"
