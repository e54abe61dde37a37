#!/usr/bin/env bash
# m3-encode --slice I/N: the N slices of the bundled knowledge base are
# disjoint and together hold exactly the chunks (and the very bytes) of an
# encode in one process; auto/N takes I from JOB_COMPLETION_INDEX as a
# Kubernetes Indexed Job sets it; a rerun of a slice stores nothing twice;
# a store of another slice, a sibling slice with another codec, and a bad
# --slice are refused with a message naming what is wrong.
. "$(dirname "$0")/../lib/m3test.sh" encode-slice
m3t_need_exec "$bin/m3-encode"
"$bin/m3-encode" test-model --out "$work/model" 2>/dev/null
enc() { "$bin/m3-encode" --model "$work/model" --input "$src/examples/kb/kb.jsonl" --embed hash:32 "$@"; }

enc --store "$work/one" 2>/dev/null
"$bin/encode_store_digest" "$work/one" | sort >"$work/one.d"
for i in 0 1 2; do
  JOB_COMPLETION_INDEX=$i enc --store "$work/parts/slice-$i" --slice auto/3 2>"$work/s$i.log"
  "$bin/encode_store_digest" "$work/parts/slice-$i" >"$work/s$i.d"
  n=$(wc -l <"$work/s$i.d")
  echo "slice $i/3: $n chunks"
  [ "$n" -gt 60 ] || fail "slice $i holds $n of 297 chunks (unbalanced)"
  grep -q "\"slice\": $i, \"slices\": 3" "$work/parts/slice-$i/slice.json" || fail "slice.json of $i"
done
# Disjoint, and together the one-process store, byte for byte.
cut -d' ' -f1 "$work"/s?.d | sort | uniq -d >"$work/dups"
[ ! -s "$work/dups" ] || fail "chunks in two slices: $(head -3 "$work/dups")"
sort "$work"/s?.d >"$work/all.d"
cmp -s "$work/one.d" "$work/all.d" || { diff "$work/one.d" "$work/all.d" | head; fail "slices != one store"; }
# The explicit form names the same slice.
enc --store "$work/explicit-1" --slice 1/3 2>/dev/null
cmp -s <("$bin/encode_store_digest" "$work/explicit-1") "$work/s1.d" || fail "--slice 1/3 != auto/3 with index 1"
# Rerun: everything present, nothing written.
JOB_COMPLETION_INDEX=1 enc --store "$work/parts/slice-1" --slice auto/3 2>"$work/rerun.log"
grep -q "0 chunks encoded, 95 already in the store\|0 chunks encoded, [0-9]* already" "$work/rerun.log" ||
  fail "rerun encoded again: $(tail -1 "$work/rerun.log")"

refuse() { m3t_refused "$@"; }
refuse other-slice "holds slice 1/3" enc --store "$work/parts/slice-1" --slice 2/3
refuse no-index "JOB_COMPLETION_INDEX is not set" env -u JOB_COMPLETION_INDEX "$bin/m3-encode" \
  --model "$work/model" --input "$src/examples/kb/kb.jsonl" --store "$work/x" --slice auto/3
refuse bad-index "JOB_COMPLETION_INDEX is 'x'" env JOB_COMPLETION_INDEX=x "$bin/m3-encode" \
  --model "$work/model" --input "$src/examples/kb/kb.jsonl" --store "$work/x" --slice auto/3
refuse range "slice 3 is not below 3" enc --store "$work/x" --slice 3/3
refuse syntax "expected I/N or auto/N" enc --store "$work/x" --slice 1
# A sibling slice with another codec (raw-f16 instead of the others' raw-bf16).
refuse codec "every slice must use the one codec" enc --store "$work/parts/slice-9" --slice 0/3 --codec raw-f16
echo "slices: disjoint, complete, byte-identical to one process; refusals named"
