#!/usr/bin/env bash
# Live updates and one consistent interface, as a user meets them, over real
# processes: m3 put (m3-encode --server: the served store's own model, codec
# and embedder, through admin Put) and m3 delete, with the server's admin
# messages and its log of every admin write; a store that a server holds
# open is named with the holder's pid (m3-encode and a second m3-server);
# long options are not abbreviated; ports are range-checked and localhost
# is accepted; m3 stats text (codec name, limits), ranks from 0 in text,
# several --text queries in one call, m3 store dump of a missing id, m3
# store info's text and embedding bytes; a rerun takes the store's own
# embedder; an empty input warns.
. "$(dirname "$0")/../lib/m3test.sh" cli-admin
m3t_need_exec "$bin/m3-server" "$bin/m3-encode" "$bin/m3"

"$bin/m3-encode" test-model --out "$work/model" 2>"$work/tm.log"
head -n 40 "$src/examples/kb/kb.jsonl" >"$work/kb.jsonl"
store=$work/kb
runx 0 encode "$bin/m3-encode" --model "$work/model" --embed hash:64 --input "$work/kb.jsonl" --store "$store"

# a rerun into the store (more lines, no --embed) takes the store's own
# embedder and model instead of refusing the default hash:256
sed -n 41,44p "$src/examples/kb/kb.jsonl" >"$work/more.jsonl"
runx 0 rerun "$bin/m3-encode" --input "$work/more.jsonl" --store "$store"
check "rerun: the store's own embedder and model" grep -q "the store's own --model $work/model --embed hash:64" "$work/rerun.out"
check "rerun: 4 encoded" grep -q "4 chunks encoded, 0 already in the store" "$work/rerun.out"
# an empty input warns
: >"$work/empty.jsonl"
runx 0 empty "$bin/m3-encode" --input "$work/empty.jsonl" --store "$store"
check "empty input warns" grep -q "warning: $work/empty.jsonl holds no chunks" "$work/empty.out"

# m3 store info: text bytes and embedding bytes apart (44 records x 64 dims x 4)
run 0 "$work/info" "$bin/m3" store info "$store" --json || true
check "info embedding_bytes" test "$(json_get "$work/info" "j['embedding_bytes']")" = $((44 * 64 * 4))
check "info text_bytes is the texts" test "$(json_get "$work/info" "j['text_bytes']")" = \
  "$("$py" -c "import json,sys; print(sum(len(json.loads(l)['text'].encode()) for l in open(sys.argv[1]) if l.strip()))" <(cat "$work/kb.jsonl" "$work/more.jsonl"))"
run 0 "$work/info.txt" "$bin/m3" store info "$store" || true
check "info text: both named" grep -q "bytes of text, $((44 * 64 * 4)) bytes of embeddings" "$work/info.txt"

# m3 store dump of a missing id: named, exit 2 (as store get)
run 2 "$work/dump404" "$bin/m3" store dump "$store" --id 999999 || true
check "dump missing id named" grep -q "chunk 999999: not in the store" "$work/dump404.err"
run 2 "$work/get404" "$bin/m3" store get "$store" --id 999999 || true

# the server, with an admin token
printf 'admin-0123456789abcdef\n' >"$work/admin.tok"
m3t_server server "$store" --admin-token-file "$work/admin.tok"
spid=$srv

# m3 stats text: the codec by name and a limits line
run 0 "$work/stats.txt" "$bin/m3" stats --server "$addr" || true
check "stats: codec by name" grep -Eq "^layout .*codec raw-bf16, " "$work/stats.txt"
check "stats: limits line" grep -Eq "^limits +frame [0-9]+ bytes, 64 calls in flight, 256 queries per call, k 64, 4096 ids per Fetch" "$work/stats.txt"

# several --text queries in one call; ranks from 0 in text as in JSON
run 0 "$work/q2" "$bin/m3" query --server "$addr" --text "Moon satellite" --text "Sun star" -k 2 --json || true
check "two texts: two queries" test "$(json_get "$work/q2" "[q['text'] for q in j['queries']]")" = "['Moon satellite', 'Sun star']"
check "json ranks from 0" test "$(json_get "$work/q2" "[r['rank'] for r in j['queries'][0]['results']]")" = "[0, 1]"
run 0 "$work/q2.txt" "$bin/m3" query --server "$addr" --text "Moon satellite" --text "Sun star" -k 2 || true
check "text: both queries" test "$(grep -c '^query [01] "' "$work/q2.txt")" = 2
check "text ranks from 0" grep -Eq "^  0 +[0-9]+ " "$work/q2.txt"
check "text: no rank 2 at k 2" bash -c "! grep -Eq '^  2 +[0-9]' '$work/q2.txt'"

# admin calls without the admin token: the server's own message, exit 2 / 1
cat >"$work/new.jsonl" <<'EOF'
{"id": 5000, "text": "Zanzibar quokka marmalade festival is held every spring on the island."}
{"id": 5001, "text": "The quokka marmalade recipe needs oranges and a long afternoon."}
EOF
run 2 "$work/put_noadmin" env -u M3_TOKEN -u M3_TOKEN_FILE "$bin/m3" put --server "$addr" --store "$store" --input "$work/new.jsonl" || true
check "put without the token: named" grep -q "m3-encode: chunks 5000..: m3-server $addr: Put: PERMISSION_DENIED: needs the admin token" "$work/put_noadmin.err"
run 1 "$work/del_noadmin" env -u M3_TOKEN -u M3_TOKEN_FILE "$bin/m3" delete --server "$addr" --id 3 || true
check "delete without the token: named" grep -q "needs the admin token" "$work/del_noadmin.err"
check "refusals logged" grep -q "Delete refused: not the admin token" "$work/server.log"

# m3 put with the token: the server stores and indexes the lines at once
run 0 "$work/put" "$bin/m3" put --server "$addr" --store "$store" --input "$work/new.jsonl" --token-file "$work/admin.tok" || true
check "put: summary" grep -q "2 chunks encoded and sent to m3-server $addr (admin Put: 2 records written)" "$work/put.err"
check "put: logged with the peer" grep -q "127.0.0.1:[0-9]*: Put of 2 records: 2 written" "$work/server.log"
run 0 "$work/qnew" "$bin/m3" query --server "$addr" --text "quokka marmalade" -k 1 --json || true
check "put: served at once" test "$(json_get "$work/qnew" "j['queries'][0]['results'][0]['chunk_id'] in (5000, 5001)")" = True
run 0 "$work/fnew" "$bin/m3" fetch --server "$addr" --id 5000 --json || true
check "put: fetched with its text" test "$(json_get "$work/fnew" "j['memories'][0]['text'][:8]")" = Zanzibar
# the store's own codec was used: the records are the store's layout (a
# mismatch is refused by the client before sending)
run 1 "$work/put_codec" "$bin/m3" put --server "$addr" --store "$store" --input "$work/new.jsonl" \
  --token-file "$work/admin.tok" --codec raw-f32 || true
check "put: another codec refused before sending" grep -q "is --store .* the store it serves" "$work/put_codec.err"

# m3 delete with the token
run 0 "$work/del" "$bin/m3" delete --server "$addr" --id 5000 --id 999999 --token-file "$work/admin.tok" || true
check "delete: counts" grep -q "deleted 1 of 2 ids from $addr (1 not in the store)" "$work/del"
check "delete: logged" grep -q "127.0.0.1:[0-9]*: Delete of 2 ids: 1 deleted" "$work/server.log"
run 1 "$work/fdel" "$bin/m3" fetch --server "$addr" --id 5000 --json || true
check "delete: gone" test "$(json_get "$work/fdel" "j['memories'][0]['status']")" = M3_ENOTFOUND
run 0 "$work/delj" "$bin/m3" delete --server "$addr" --id 5001 --token-file "$work/admin.tok" --json || true
check "delete --json" test "$(json_get "$work/delj" "(j['ids'], j['deleted'])")" = "(1, 1)"

# the store is open by the server: m3-encode and a second server say so
runx 2 busy_enc "$bin/m3-encode" --input "$work/new.jsonl" --store "$store"
check "busy store: m3-encode names the server" grep -q "the store $store is open by m3-server (pid $spid); send updates through it with m3 put, or stop it" "$work/busy_enc.out"
check "busy store: not RocksDB's lock message" bash -c "! grep -q 'While lock file' '$work/busy_enc.out'"
runx 2 busy_srv "$bin/m3-server" --store "$store" --listen 127.0.0.1:0 --http off
check "busy store: a second server names the first" grep -q "open by m3-server (pid $spid)" "$work/busy_srv.out"
kill -TERM "$spid"; wait "$spid" || true

# a server without an admin token: admin methods are off, said so
m3t_server noadmin "$store"
run 1 "$work/del_off" "$bin/m3" delete --server "$addr" --id 3 || true
check "admin off: named" grep -q "admin methods are off (no --admin-token-file, no --admin-cert-subject)" "$work/del_off.err"
kill -TERM "$srv"; wait "$srv" || true

# long options are not abbreviated anywhere
runx 2 abbr_m3 "$bin/m3" stats --serv "$addr"
check "m3: abbreviation refused" grep -q "option '--serv' is not spelled in full (long options are not abbreviated): --server" "$work/abbr_m3.out"
runx 2 abbr_tok "$bin/m3" query --server "$addr" --text x --token "$work/admin.tok"
check "m3: --token is not --token-file" grep -q "'--token' is not spelled in full.*--token-file" "$work/abbr_tok.out"
runx 2 abbr_store "$bin/m3" store info --js "$store"
check "m3 store: abbreviation refused" grep -q "m3 store info: option '--js'" "$work/abbr_store.out"
runx 2 abbr_srv "$bin/m3-server" --stor "$store"
check "m3-server: abbreviation refused" grep -q "m3-server: option '--stor' is not spelled in full" "$work/abbr_srv.out"
runx 2 abbr_enc "$bin/m3-encode" --inp "$work/new.jsonl" --store "$store"
check "m3-encode: abbreviation refused" grep -q "m3-encode: option '--inp' is not spelled in full" "$work/abbr_enc.out"
runx 2 abbr_bench "$bin/m3-bench" rpc --serv "$addr"
check "m3-bench: abbreviation refused" grep -q "m3-bench: option '--serv' is not spelled in full" "$work/abbr_bench.out"
# a value that looks like an option is a value, not an option
runx 2 val_dash "$bin/m3" query --server 127.0.0.1:1 --text --serv --timeout-ms 500
check "a value starting with -- is not checked as an option" bash -c "! grep -q 'not spelled in full' '$work/val_dash.out'"

# ports: range-checked with the option and value named; localhost accepted
runx 2 port_listen "$bin/m3-server" --store "$store" --listen 127.0.0.1:99999 --http off
check "server --listen out of range" grep -q -- "--listen '127.0.0.1:99999': port 99999 is out of range (0 to 65535)" "$work/port_listen.out"
runx 2 port_http "$bin/m3-server" --store "$store" --listen 127.0.0.1:0 --http 127.0.0.1:65537
check "server --http out of range" grep -q -- "--http '127.0.0.1:65537': port 65537 is out of range (0 to 65535)" "$work/port_http.out"
runx 2 port_client "$bin/m3" stats --server 127.0.0.1:99999
check "client --server out of range" grep -q -- "--server '127.0.0.1:99999': port 99999 is out of range (1 to 65535)" "$work/port_client.out"
runx 2 port_bench "$bin/m3-bench" rpc --server 127.0.0.1:70000 --calls 1 --loopback-seconds 0
check "m3-bench: out of range (the library's check)" grep -q "port 70000 is out of range (1 to 65535)" "$work/port_bench.out"
"$bin/m3-server" --store "$store" --listen localhost:0 --http off --port-file "$work/lh.port" 2>"$work/lh.log" &
lh=$!
m3t_reap "$lh"
m3t_wait_file "$work/lh.port" || { cat "$work/lh.log" >&2; fail "m3-server --listen localhost:0 did not start"; }
lport=$(sed -n 's/^rpc=\([0-9]*\).*/\1/p' "$work/lh.port")
run 0 "$work/lhstats" "$bin/m3" stats --server "localhost:$lport" --json || true
check "localhost: server and client" test "$(json_get "$work/lhstats" "j['records']")" = 44
kill -TERM "$lh"; wait "$lh" || true
runx 2 badhost "$bin/m3-server" --store "$store" --listen no-such-host.invalid:0 --http off
check "server: unknown host named" grep -q -- "--listen 'no-such-host.invalid:0': not an IP address or a known host name" "$work/badhost.out"

# --help of the new commands
for c in put delete; do
  run 0 "$work/help" "$bin/m3" $c --help || continue
  check "m3 $c --help" grep -q "^usage: m3 $c " "$work/help"
done
for c in gen storage rpc scale peer codec encode decode; do
  run 0 "$work/help" "$bin/m3-bench" $c --help || continue
  check "m3-bench $c --help" grep -q "^usage: m3-bench $c" "$work/help"
done
for c in train-codec test-model; do
  run 0 "$work/help" "$bin/m3-encode" $c --help || continue
  check "m3-encode $c --help" grep -q "^usage: m3-encode $c " "$work/help"
done

m3t_done
