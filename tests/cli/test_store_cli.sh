#!/usr/bin/env bash
# The m3 store commands as a user runs them: exit codes, text and JSON output,
# on a real store written by m3-bench gen. Damages a record on disk and checks
# that every command tells the truth about it.
. "$(dirname "$0")/../lib/m3test.sh" store-cli
store=$work/store

run 0 "$work/gen" "$bin/m3-bench" gen --store "$store" --count 300 --emb-dim 16 --json
check "gen wrote 300" test "$(json_get "$work/gen" "j['records']")" = 300

run 0 "$work/info" "$bin/m3" store info "$store" --json
check "info records" test "$(json_get "$work/info" "j['records']")" = 300
check "info overhead <= 3%" test "$(json_get "$work/info" "j['overhead'] <= 0.03")" = True
check "info layout" test "$(json_get "$work/info" "(j['layout']['n_layers'], j['layout']['code_bytes'], j['layout']['embedding_dim'])")" = "(22, 14, 16)"

run 0 "$work/verify" "$bin/m3" store verify "$store"
check "verify says OK" grep -q "verified 300 records: OK" "$work/verify"

run 0 "$work/get" "$bin/m3" store get "$store" --id 5 --json
check "get status ok" test "$(json_get "$work/get" "j['status']")" = ok
check "get text" test "$(json_get "$work/get" "j['text']")" = "synthetic memory 5"

run 2 "$work/get404" "$bin/m3" store get "$store" --id 12345
check "get of a missing id names it" grep -q "chunk 12345: not in the store" "$work/get404.err"

# Damage chunk 5's codes on disk.
seg=$(json_get "$work/get" "j['segment']")
off=$(json_get "$work/get" "j['offset'] + 5000")
printf '\x5a' | dd of="$seg" bs=1 seek="$off" conv=notrunc status=none

run 1 "$work/verify2" "$bin/m3" store verify "$store" --json
check "verify JSON not ok" test "$(json_get "$work/verify2" "j['ok']")" = False
check "verify names chunk 5" test "$(json_get "$work/verify2" "[p['chunk_id'] for p in j['problems']]")" = "[5]"
check "verify says corrupt" test "$(json_get "$work/verify2" "j['problems'][0]['error']")" = M3_ECORRUPT
run 1 "$work/verify3" "$bin/m3" store verify "$store"
check "verify text names chunk 5" grep -q "^chunk 5: .*mem_crc mismatch" "$work/verify3"

run 1 "$work/get2" "$bin/m3" store get "$store" --id 5
check "get reports corrupt" grep -q "status       M3_ECORRUPT" "$work/get2"

# Lose the catalog: open refuses with advice, repair rebuilds without chunk 5.
rm -rf "$store/catalog"
run 2 "$work/info2" "$bin/m3" store info "$store"
check "info advises repair" grep -q "m3 store repair" "$work/info2.err"
run 1 "$work/repair" "$bin/m3" store repair "$store" --json
check "repair counts" test "$(json_get "$work/repair" "(j['records'], j['damaged'])")" = "(299, 1)"
run 0 "$work/verify4" "$bin/m3" store verify "$store"
check "verify after repair" grep -q "verified 299 records: OK" "$work/verify4"

run 0 "$work/compact" "$bin/m3" store compact "$store" --json
check "compact reclaimed the damaged record" test "$(json_get "$work/compact" "j['reclaimed_bytes'] > 0")" = True
run 0 "$work/verify5" "$bin/m3" store verify "$store"

run 0 "$work/bench" "$bin/m3-bench" storage --store "$store" --ops 50 --warmup 5 --json
check "bench fields" test "$(json_get "$work/bench" "all(k in j for k in ('raw_p50_us','raw_p99_us','store_p50_us','store_p99_us','ratio_p50','ratio_p99','ops','bytes_per_op','io_backend'))")" = True
check "bench ops" test "$(json_get "$work/bench" "j['ops']")" = 50

# Usage errors exit 2 with a message.
run 2 "$work/u1" "$bin/m3" store verify
run 2 "$work/u2" "$bin/m3" store frobnicate "$store"
check "unknown command named" grep -q "unknown command 'frobnicate'" "$work/u2.err"
run 2 "$work/u3" "$bin/m3" store get "$store" --id abc
run 2 "$work/u4" "$bin/m3" store info "$work/nonexistent"
check "missing store named" grep -q "no store at $work/nonexistent" "$work/u4.err"

m3t_done
