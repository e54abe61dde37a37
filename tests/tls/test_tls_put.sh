#!/usr/bin/env bash
# m3 put (m3-encode --server) over TLS, against a real m3-server with mutual
# TLS whose admin is a client certificate (--admin-cert-subject): the admin
# certificate's Put is stored and served at once, and its m3 delete takes; a reader's certificate is
# refused Put with the server's message; a client without TLS, or without a
# client certificate, is refused naming why; the TLS options are checked
# before anything runs.
. "$(dirname "$0")/../lib/m3test.sh" tls-put
m3t_need_exec "$bin/m3-server" "$bin/m3-encode" "$bin/m3"
command -v openssl >/dev/null || m3t_skip "no openssl CLI"
c=$work/certs
bash "$src/tests/tls/make_certs.sh" "$c"
"$bin/m3-encode" test-model --out "$work/model" 2>"$work/tm.log"
head -n 20 "$src/examples/kb/kb.jsonl" >"$work/kb.jsonl"
store=$work/kb
runx 0 encode "$bin/m3-encode" --model "$work/model" --embed hash:64 --input "$work/kb.jsonl" --store "$store"
m3t_server tls "$store" --tls-cert "$c/server.pem" --tls-key "$c/server.key" --tls-ca "$c/ca.pem" \
  --admin-cert-subject CN=ops,O=m3
# The certificate names localhost (and 127.0.0.1): connect by name.
a=localhost:$port
ca=(--tls-ca "$c/ca.pem")
ops=("${ca[@]}" --tls-cert "$c/ops.pem" --tls-key "$c/ops.key")
reader=("${ca[@]}" --tls-cert "$c/client.pem" --tls-key "$c/client.key")
cat >"$work/new.jsonl" <<'J'
{"id": 7000, "text": "Zanzibar quokka marmalade festival is held every spring on the island."}
{"id": 7001, "text": "The quokka marmalade recipe needs oranges and a long afternoon."}
J

# The admin certificate: stored, logged with its identity, served at once.
run 0 "$work/put" env -u M3_TOKEN -u M3_TOKEN_FILE "$bin/m3" put --server "$a" --store "$store" \
  --input "$work/new.jsonl" "${ops[@]}" || true
check "put over TLS: summary" grep -q "2 chunks encoded and sent to m3-server $a (admin Put: 2 records written)" "$work/put.err"
check "put over TLS: the admin certificate logged" grep -q "client certificate CN=ops,O=m3" "$work/tls.log"
check "put over TLS: the write logged" grep -q "Put of 2 records: 2 written" "$work/tls.log"
run 0 "$work/q" "$bin/m3" query --server "$a" --text "quokka marmalade" -k 1 --json "${reader[@]}" || true
check "put over TLS: served at once" test "$(json_get "$work/q" "j['queries'][0]['results'][0]['chunk_id'] in (7000, 7001)")" = True
run 0 "$work/f" "$bin/m3" fetch --server "$a" --id 7001 --json "${reader[@]}" || true
check "put over TLS: fetched" test "$(json_get "$work/f" "j['memories'][0]['status']")" = ok

# m3 delete by the admin certificate too.
run 0 "$work/del" env -u M3_TOKEN -u M3_TOKEN_FILE "$bin/m3" delete --server "$a" --id 7000 "${ops[@]}" || true
check "delete over TLS by the admin certificate" grep -q "deleted 1 of 1 ids" "$work/del"

# A reader's certificate: the server refuses Put, and says why.
run 2 "$work/put_reader" env -u M3_TOKEN -u M3_TOKEN_FILE "$bin/m3" put --server "$a" --store "$store" \
  --input "$work/new.jsonl" "${reader[@]}" || true
check "reader certificate: Put refused by the server" grep -q "Put: PERMISSION_DENIED: needs the admin client certificate (--admin-cert-subject)" "$work/put_reader.err"
check "reader certificate: refusal logged" grep -q "Put refused: not the admin certificate" "$work/tls.log"
# No client certificate (the server requires one), and no TLS at all.
run 2 "$work/put_nocert" "$bin/m3-encode" --server "$a" --store "$store" --input "$work/new.jsonl" \
  "${ca[@]}" || true
check "no client certificate: named" grep -q "requires a client certificate" "$work/put_nocert.err"
run 2 "$work/put_plain" "$bin/m3-encode" --server "$a" --store "$store" --input "$work/new.jsonl" || true
check "plain client on the TLS port: told" grep -q "speaks TLS" "$work/put_plain.err"

# The options are checked before anything is encoded.
m3t_refused cert-no-ca "need --tls-ca F" "$bin/m3-encode" --server "$a" --store "$store" \
  --input "$work/new.jsonl" --tls-cert "$c/ops.pem" --tls-key "$c/ops.key"
m3t_refused cert-no-key "--tls-cert without --tls-key" "$bin/m3-encode" --server "$a" --store "$store" \
  --input "$work/new.jsonl" "${ca[@]}" --tls-cert "$c/ops.pem"
m3t_refused tls-no-server "are for --server" "$bin/m3-encode" --store "$work/other" \
  --model "$work/model" --input "$work/new.jsonl" "${ca[@]}"
check "the refused runs made no store" test ! -e "$work/other"
m3t_done
