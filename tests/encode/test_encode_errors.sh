#!/usr/bin/env bash
# Bad input to m3-encode: --on-error fail stops at the first bad line with
# FILE:LINE and what is wrong (exit 1); --on-error skip lists every bad line
# in the --report file (or stderr) and stores the good ones; external
# embeddings of the wrong dimension name file:line; a store made with
# another codec (fingerprint) or prefix is refused with a clear message.
. "$(dirname "$0")/../lib/m3test.sh" encode-errors
m3t_need_exec "$bin/m3-encode"
count() { "$bin/encode_store_digest" "$1" | wc -l; }
"$bin/m3-encode" test-model --out "$work/model" 2>/dev/null
enc() { "$bin/m3-encode" --model "$work/model" --embed hash:32 "$@"; }

cat >"$work/bad.jsonl" <<'JSONL'
{"id": 1, "text": "The Sun is a star."}
{"id": 2, "text": "unterminated
{"id": 3}
{"id": -4, "text": "negative id"}

{"id": 5, "text": "Mars is the red planet.", "meta": {"k": 1}}
{"id": 6, "text": "   "}
{"id": 1, "text": "a duplicate id"}
[1, 2, 3]
{"id": 9, "text": "Saturn has rings.", "meta": "not an object"}
{"id": 10, "text": "Jupiter is the largest planet."}
JSONL

runx 1 fail enc --input "$work/bad.jsonl" --store "$work/s_fail"
check "fail names file:line" grep -q "bad.jsonl:2: not valid JSON" "$work/fail.out"

runx 0 skip enc --input "$work/bad.jsonl" --store "$work/s_skip" --on-error skip --report "$work/report"
check "report lists the bad lines" test "$(cut -d: -f2 "$work/report" | tr '\n' ' ')" = "2 3 4 7 8 9 10 "
check "report: missing text" grep -q 'bad.jsonl:3: "text" is missing' "$work/report"
check "report: negative id" grep -q 'bad.jsonl:4: "id" must be a non-negative integer' "$work/report"
check "report: empty text" grep -q 'bad.jsonl:7: the text is empty' "$work/report"
check "report: duplicate id, both lines named" grep -q 'bad.jsonl:8: chunk id 1 (part 0) is already used by bad.jsonl:1$' "$work/report"
check "report: not an object" grep -q 'bad.jsonl:9: a JSON object' "$work/report"
check "report: meta" grep -q 'bad.jsonl:10: "meta" must be an object' "$work/report"
check "good lines stored" test "$("$bin/encode_store_digest" "$work/s_skip" | awk '{print $1}' | tr '\n' ' ')" = "1 5 10 "
check "summary counts skipped" grep -q "7 bad lines skipped" "$work/skip.out"
runx 0 skip_stderr enc --input "$work/bad.jsonl" --store "$work/s_skip2" --on-error skip
check "no report: listed on stderr" grep -q "bad.jsonl:8: chunk id 1" "$work/skip_stderr.out"

# external embeddings: dimension errors name file:line
cat >"$work/ext.jsonl" <<'JSONL'
{"id": 1, "text": "one", "embedding": [1, 0, 0, 0]}
{"id": 2, "text": "two", "embedding": [0, 1, 0, 0]}
{"id": 3, "text": "three", "embedding": [0, 0, 1]}
{"id": 4, "text": "four"}
{"id": 5, "text": "five", "embedding": [0, 0, "x", 1]}
{"id": 6, "text": "six", "embedding": [0, 0, 0, 1]}
JSONL
runx 1 ext_fail "$bin/m3-encode" --model "$work/model" --embed external --input "$work/ext.jsonl" --store "$work/e1"
check "ext dims named" grep -q 'ext.jsonl:3: "embedding" has 3 values, expected 4' "$work/ext_fail.out"
runx 0 ext_skip "$bin/m3-encode" --model "$work/model" --embed external --input "$work/ext.jsonl" \
  --store "$work/e2" --on-error skip --report "$work/ext.report"
check "ext report" test "$(cut -d: -f2 "$work/ext.report" | tr '\n' ' ')" = "3 4 5 "
check "ext missing" grep -q 'ext.jsonl:4: "embedding" is missing' "$work/ext.report"
check "ext not a number" grep -q 'ext.jsonl:5: "embedding"\[2\] is not a finite number' "$work/ext.report"
check "ext stored" test "$(count "$work/e2")" = 3
# an existing store fixes the dims
printf '{"id": 7, "text": "seven", "embedding": [1, 2, 3, 4, 5]}\n' >"$work/ext2.jsonl"
runx 1 ext_store "$bin/m3-encode" --model "$work/model" --embed external --input "$work/ext2.jsonl" --store "$work/e2"
check "ext store dims" grep -q 'ext2.jsonl:1: "embedding" has 5 values, expected 4' "$work/ext_store.out"

# another codec or prefix on an existing store: refused
printf '{"id": 1, "text": "The Sun is a star."}\n' >"$work/one.jsonl"
runx 0 mk enc --input "$work/one.jsonl" --store "$work/s_codec"
runx 1 codec enc --input "$work/one.jsonl" --store "$work/s_codec" --codec raw-f16
check "codec refused" grep -q "fingerprint.*use another --store" "$work/codec.out"
runx 1 prefix enc --input "$work/one.jsonl" --store "$work/s_codec" --prefix "Ref:"
check "prefix refused" grep -q "was encoded with --prefix 'Reference:'" "$work/prefix.out"
# usage errors
runx 2 usage "$bin/m3-encode" --model "$work/model"
runx 2 badembed enc --input "$work/one.jsonl" --store "$work/x" --embed nope
runx 2 nomodel "$bin/m3-encode" --model "$work/none" --input "$work/one.jsonl" --store "$work/x"

m3t_done
