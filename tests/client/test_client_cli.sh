#!/usr/bin/env bash
# m3 query, m3 fetch and m3 stats as a user runs them against a real
# m3-server on loopback: output (text and JSON), saved record bytes, and
# exit codes (0 ok, 1 the server answered with a failure, 2 usage or
# connection errors).
. "$(dirname "$0")/../lib/m3test.sh" client-cli
m3t_need_exec "$bin/m3-server"

"$bin/m3-bench" gen --store "$work/store" --count 200 --emb-dim 8 --json >/dev/null
m3t_server server "$work/store"

# stats
run 0 "$work/stats" "$bin/m3" stats --server "$addr" --json || true
check "stats records" test "$(json_get "$work/stats" "j['records']")" = 200
check "stats embedding_dim" test "$(json_get "$work/stats" "j['hello']['embedding_dim']")" = 8
run 0 "$work/stats.txt" "$bin/m3" stats --server "$addr" || true
check "stats text" grep -q "^records *200" "$work/stats.txt"
check "stats index_factory" test "$(json_get "$work/stats" "(j['index_factory'], j['index_params'])")" = "('IDMap,Flat', '')"
check "stats index text" grep -q "^index *IDMap,Flat, search params FAISS's defaults" "$work/stats.txt"

# query by vectors: 2 queries x top-3, texts match ids
printf '# two queries\n0.1 0.2 0.3 0.4 -0.5 0.6 0.7 0.8\n\n-1 0 0 0 0 0 0 1\n' >"$work/q.vec"
run 0 "$work/query" "$bin/m3" query --server "$addr" --vector-file "$work/q.vec" -k 3 --json || true
check "query count" test "$(json_get "$work/query" "(len(j['queries']), [len(q['results']) for q in j['queries']])")" = "(2, [3, 3])"
check "query texts" test "$(json_get "$work/query" "all(r['text'] == 'synthetic memory %d' % r['chunk_id'] and r['status'] == 'ok' for q in j['queries'] for r in q['results'])")" = True
check "query scores sorted" test "$(json_get "$work/query" "all(q['results'][i]['score'] >= q['results'][i+1]['score'] for q in j['queries'] for i in range(2))")" = True
run 0 "$work/query.txt" "$bin/m3" query --server "$addr" --vector-file "$work/q.vec" || true
check "query text output" grep -q "synthetic memory" "$work/query.txt"
# --nprobe is for IVF indexes: this server's flat index refuses it, naming the field
run 1 "$work/qnprobe" "$bin/m3" query --server "$addr" --vector-file "$work/q.vec" --nprobe 4 || true
check "nprobe on a flat index refused" grep -q "INVALID_ARGUMENT: params.nprobe = 4: the index 'IDMap,Flat' has no inverted lists" "$work/qnprobe.err"
run 2 "$work/qnprobe0" "$bin/m3" query --server "$addr" --vector-file "$work/q.vec" --nprobe 0 || true
check "nprobe 0 is a usage error" grep -q "nprobe '0' is not a positive integer" "$work/qnprobe0.err"
# a generated store names no embedder (no encode.json): the server does not
# pretend to embed text for it (exit 1, the reason; vectors still work)
check "stats embedder unknown" test "$(json_get "$work/stats" "j['hello']['embedder']")" = unknown
check "query embedder unknown" test "$(json_get "$work/query" "j['embedder']")" = unknown
run 1 "$work/qtext" "$bin/m3" query --server "$addr" --text "what is memory 12" -k 2 --json || true
check "text query refused" grep -q "INVALID_ARGUMENT: query 0: this store's embedder is unknown (no \"embed\" in its encode.json; dimension 8), so the server cannot embed text for it: send vectors with --vector-file" "$work/qtext.err"
check "text query: nothing on stdout" test ! -s "$work/qtext"

# bad vector files: wrong dimension, not floats
echo "1 2 3" >"$work/bad.vec"
run 2 "$work/qbad" "$bin/m3" query --server "$addr" --vector-file "$work/bad.vec" || true
check "dim mismatch named" grep -q "8 dims" "$work/qbad.err"
echo "1 2 x 4 5 6 7 8" >"$work/bad2.vec"
run 2 "$work/qbad2" "$bin/m3" query --server "$addr" --vector-file "$work/bad2.vec" || true
run 2 "$work/qnone" "$bin/m3" query --server "$addr" || true

# fetch: found, saved bytes, missing id
run 0 "$work/fetch" "$bin/m3" fetch --server "$addr" --id 7 --out "$work/rec7" --json || true
check "fetch ok" test "$(json_get "$work/fetch" "(j['memories'][0]['status'], j['memories'][0]['crc'], j['memories'][0]['text'])")" = "('ok', 'ok', 'synthetic memory 7')"
check "fetch --out bytes" test "$(json_get "$work/fetch" "j['memories'][0]['payload_bytes']")" = "$(stat -c %s "$work/rec7")"
check "saved record is chunk 7" test "$("$py" -c "import struct,sys; b=open(sys.argv[1],'rb').read(); print(b[:4]==b'M3MR', struct.unpack_from('<Q', b, 8)[0])" "$work/rec7")" = "True 7"
run 1 "$work/fetch404" "$bin/m3" fetch --server "$addr" --id 7 --id 999999 --json || true
check "fetch missing status" test "$(json_get "$work/fetch404" "[m['status'] for m in j['memories']]")" = "['ok', 'M3_ENOTFOUND']"
run 1 "$work/fetch404.txt" "$bin/m3" fetch --server "$addr" --id 999999 || true
check "fetch missing text" grep -q "M3_ENOTFOUND" "$work/fetch404.txt"
run 2 "$work/fetchnoid" "$bin/m3" fetch --server "$addr" || true
run 2 "$work/fetchbadid" "$bin/m3" fetch --server "$addr" --id abc || true

# connection errors name the address; usage errors exit 2
free_port=$("$py" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
run 2 "$work/refused" "$bin/m3" stats --server "127.0.0.1:$free_port" || true
check "refused names address" grep -q "127.0.0.1:$free_port" "$work/refused.err"
run 2 "$work/noserver" "$bin/m3" stats || true
run 2 "$work/badaddr" "$bin/m3" stats --server nonsense || true

# the wrong port: m3-server's HTTP port, and a port that speaks another
# protocol first (a text banner). Both are named at once, well before the
# 20 s deadline.
kill -TERM "$srv"; wait "$srv" || true
m3t_server web "$work/store" --http 127.0.0.1:0
hport=$(sed -n 's/.*http=\([0-9]*\).*/\1/p' "$work/web.port")
t0=$(date +%s%N)
run 2 "$work/http" "$bin/m3" stats --server "127.0.0.1:$hport" --timeout-ms 20000 || true
t1=$(date +%s%N)
check "http port: named" grep -q "this port speaks HTTP, not the m3 protocol" "$work/http.err"
check "http port: no bad magic" bash -c "! grep -q 'bad magic' '$work/http.err'"
check "http port: at once, not at the deadline" test $(((t1 - t0) / 1000000)) -lt 10000
"$py" -c "
import socket, sys
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(4)
open(sys.argv[1] + '.tmp', 'w').write(str(s.getsockname()[1])); __import__('os').rename(sys.argv[1] + '.tmp', sys.argv[1])
while True:
    c, _ = s.accept(); c.sendall(b'220 mail.example ESMTP ready\r\n')
" "$work/banner.port" &
m3t_reap $!
m3t_wait_file "$work/banner.port" || fail "banner listener did not start"
run 2 "$work/banner" "$bin/m3" query --server "127.0.0.1:$(cat "$work/banner.port")" --text x --timeout-ms 20000 || true
check "banner port: named" grep -q 'this port answered "220 mail.example ESMTP ready", not the m3 protocol' "$work/banner.err"

# --version on every program: project()'s version, the commit, the options
ver=$(sed -n 's/^project(m3store VERSION \([0-9.]*\).*/\1/p' "$src/CMakeLists.txt")
for p in m3 m3-server m3-encode m3-bench; do
  run 0 "$work/ver" "$bin/$p" --version || continue
  check "$p --version" grep -Eq "^$p $ver \(commit ([0-9a-f]{12}|unknown), build [A-Za-z]*, cuda (ON|OFF), sanitize (ON|OFF)" "$work/ver"
done

# --help on every subcommand: that subcommand's usage on stdout, exit 0
for c in query fetch stats "store info" "store verify" "store repair" "store compact" \
  "store get" "store dump" "store split" "store merge"; do
  run 0 "$work/help" "$bin/m3" $c --help || continue
  check "m3 $c --help" grep -q "^usage: m3 $c " "$work/help"
done
run 0 "$work/help" "$bin/m3" store --help || true
check "m3 store --help: the store commands" test "$(grep -c '^  m3 store ' "$work/help")" = 8
check "m3 store --help: not the server commands" bash -c "! grep -q 'm3 query' '$work/help'"

# tokens: read the same way by server and client (first line, blanks
# trimmed at both ends), from --token-file, M3_TOKEN or M3_TOKEN_FILE; no
# token and a wrong token have their own messages, neither an i/o error
printf '  0123456789abcdef-token \t\nsecond line\n' >"$work/tok.srv"
printf '0123456789abcdef-token\n' >"$work/tok.ok"
printf 'not-the-token-at-all\n' >"$work/tok.bad"
"$bin/m3-bench" gen --store "$work/store2" --count 200 --emb-dim 8 --json >/dev/null
m3t_server authsrv "$work/store2" --token-file "$work/tok.srv"
check "startup line: auth on" grep -q 'read auth on' "$work/authsrv.log"
run 2 "$work/tnone" env -u M3_TOKEN -u M3_TOKEN_FILE "$bin/m3" stats --server "$addr" || true
check "no token: its own message" grep -q "this server requires a token" "$work/tnone.err"
check "no token: not an i/o error" bash -c "! grep -q 'i/o error' '$work/tnone.err'"
run 2 "$work/tbad" "$bin/m3" stats --server "$addr" --token-file "$work/tok.bad" || true
check "wrong token: its own message" grep -q "the server refused the token" "$work/tbad.err"
check "wrong token: not an i/o error" bash -c "! grep -q 'i/o error' '$work/tbad.err'"
run 0 "$work/tfile" "$bin/m3" stats --server "$addr" --token-file "$work/tok.ok" --json || true
check "token file (server's has blanks around it)" test "$(json_get "$work/tfile" "j['records']")" = 200
run 0 "$work/tenv" env M3_TOKEN=0123456789abcdef-token "$bin/m3" stats --server "$addr" --json || true
check "M3_TOKEN" test "$(json_get "$work/tenv" "j['records']")" = 200
run 0 "$work/tenvf" env M3_TOKEN_FILE="$work/tok.ok" "$bin/m3" stats --server "$addr" --json || true
check "M3_TOKEN_FILE" test "$(json_get "$work/tenvf" "j['records']")" = 200
run 0 "$work/tbench" env M3_TOKEN_FILE="$work/tok.ok" "$bin/m3-bench" rpc --server "$addr" --calls 3 \
  --queries-per-call 2 -k 2 --loopback-seconds 0 --json || true
check "m3-bench takes M3_TOKEN_FILE" test "$(json_get "$work/tbench" "j['errors']")" = 0
run 2 "$work/tmissing" "$bin/m3" stats --server "$addr" --token-file "$work/no-such-file" || true
check "missing token file named" grep -q "no-such-file" "$work/tmissing.err"

# TLS on one side only: an m3 client at a TLS port that answers its plain
# Hello with a TLS alert record (as many TLS servers do; OpenSSL's s_server
# just closes) is told so, and m3-server says in its log when a TLS
# ClientHello reaches its plain port, and closes.
"$py" -c "
import socket, sys, os
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(4)
open(sys.argv[1] + '.tmp', 'w').write(str(s.getsockname()[1])); os.rename(sys.argv[1] + '.tmp', sys.argv[1])
while True:
    c, _ = s.accept(); c.recv(4096); c.sendall(bytes([0x15, 3, 3, 0, 2, 2, 70])); c.close()
" "$work/tls.port" &
m3t_reap $!
m3t_wait_file "$work/tls.port" || true
run 2 "$work/tlsport" "$bin/m3" stats --server "127.0.0.1:$(cat "$work/tls.port")" --timeout-ms 20000 || true
check "TLS port: named" grep -q "this port speaks TLS" "$work/tlsport.err"
openssl s_client -connect "$addr" -tls1_3 </dev/null >"$work/sclient.out" 2>&1 || true
sleep 0.2
check "plain port: a TLS ClientHello is logged" grep -q "TLS ClientHello" "$work/authsrv.log"

m3t_done
