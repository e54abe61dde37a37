#!/usr/bin/env bash
# m3-encode train-codec refuses a sample too small for the codec's k-means
# before FAISS runs (FAISS would warn per codebook, then fail "nx >= k"),
# exits 1 and says what to do: the paper's codec (the default) on the
# bundled example with a test model (at most 9,504 vectors per codec, a
# 16,384-centroid k-means); a --sample smaller than the input names
# --sample; a --max-vectors cap names it; short chunks that select fewer
# tokens than the bound are caught after the forward; a codec that fits
# trains (the README's).
. "$(dirname "$0")/../lib/m3test.sh" train-sample
m3t_need_exec "$bin/m3-encode"
"$bin/m3-encode" test-model --out "$work/model" >/dev/null 2>&1
kb=$src/examples/kb/kb.jsonl
tc() { "$bin/m3-encode" train-codec --model "$work/model" --out "$work/c.m3c" "$@"; }
no_faiss() { ! grep -qi "WARNING clustering\|nx >= k\|training on" "$work/$1.out"; }

# 1. the paper's codec, given and by default: all 297 chunks sampled
for how in paper default; do
  if [ $how = paper ]; then args=(--codec "OPQ20_80,Residual2x14,PQ8x10"); else args=(); fi
  runx 1 $how tc --input "$kb" "${args[@]}" || continue
  check "$how: names the codebook" grep -q "'OPQ20_80,Residual2x14,PQ8x10' cannot be trained on this sample: its largest codebook is a k-means of 16384 centroids" "$work/$how.out"
  check "$how: what the sample gives" grep -q "the sample gives 9504 per codec (297 chunks sampled of 297 in the input, up to 2 layers x 2 heads x 8 selected tokens each)" "$work/$how.out"
  check "$how: what to do" grep -q "What to do: a codec with smaller codebooks" "$work/$how.out"
  check "$how: more chunks (all were sampled)" grep -q "or more chunks in --input (at least 512; it has 297, all sampled)" "$work/$how.out"
  check "$how: before FAISS" no_faiss $how
  check "$how: nothing written" test ! -e "$work/c.m3c"
done

# 2. a sample smaller than the input: raise --sample (5 x 32 = 160 < 256)
runx 1 small tc --input "$kb" --codec PQ4x8np --sample 5 &&
  check "small: names --sample" grep -q "or a larger --sample (at least 8 chunks; the input has 297)" "$work/small.out"
check "small: before FAISS" no_faiss small

# 3. capped by --max-vectors
runx 1 maxv tc --input "$kb" --codec PQ4x8np --max-vectors 100 &&
  check "maxv: names the cap" grep -q "capped by --max-vectors).*" "$work/maxv.out" &&
  check "maxv: raise it" grep -q "or a larger --max-vectors" "$work/maxv.out"

# 4. 8 chunks of one word: at most 256 vectors by the bound (passes), far
# fewer selected (a chunk of n tokens gives n per head): caught after the
# forward, before FAISS
for i in 0 1 2 3 4 5 6 7; do printf '{"id": %d, "text": "planet%d"}\n' $i $i; done >"$work/short.jsonl"
runx 1 short tc --input "$work/short.jsonl" --codec PQ4x8np &&
  check "short: the gathered count" grep -Eq "the sample gives [0-9]+ per codec \(8 chunks sampled of 8" "$work/short.out"
check "short: before FAISS" no_faiss short
check "short: fewer than the bound" test "$(sed -n 's/.*the sample gives \([0-9]*\) per codec.*/\1/p' "$work/short.out")" -lt 256

# 5. the README's codec trains on the example
runx 0 fits env OMP_NUM_THREADS=1 "$bin/m3-encode" train-codec --model "$work/model" --input "$kb" \
  --out "$work/c.m3c" --codec "OPQ4_16,PQ4x8np" &&
  check "fits: written" test -s "$work/c.m3c"
m3t_done
