#!/usr/bin/env bash
# The HTTP port over TLS (--http-tls, issue 14), against real m3-server
# processes with certificates made by make_certs.sh:
#   - a scraper with only the CA (Python's ssl, as Prometheus' tls_config
#     ca_file) reads /metrics, /healthz and /readyz over TLS 1.3;
#   - a client that does not trust the CA is refused by its own check, and
#     a plain http:// request gets a plain 400 saying to use https://;
#   - with --http-tls-ca a client certificate is required: refused without
#     one, served with one;
#   - SIGHUP reloads the HTTP port's certificate too;
#   - the refusals are counted (m3_http_tls_refused_total), and
#     --http-tls without --tls-cert is refused at start.
. "$(dirname "$0")/../lib/m3test.sh" tls-http
m3t_need_exec "$bin/m3-server" "$bin/m3-bench"
command -v openssl >/dev/null || m3t_skip "no openssl CLI"
c=$work/certs
bash "$src/tests/tls/make_certs.sh" "$c"
"$bin/m3-bench" gen --store "$work/store" --count 20 --emb-dim 16 --json >/dev/null
# The server's certificate files are copies: the reload case swaps them.
cp "$c/server.pem" "$work/live.pem"
cp "$c/server.key" "$work/live.key"

# https GET: get.py URL CA [CERT KEY] prints "STATUS SUBJECT-CN" and the
# body, or "ERROR <what>" (exit 3).
cat >"$work/get.py" <<'PY'
import http.client, ssl, sys, urllib.parse
url, ca = sys.argv[1], sys.argv[2]
u = urllib.parse.urlsplit(url)
try:
    if u.scheme == "https":
        ctx = ssl.create_default_context(cafile=ca if ca != "-" else None)
        if len(sys.argv) > 4:
            ctx.load_cert_chain(sys.argv[3], sys.argv[4])
        conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=10)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.connect()
    cn, version = "-", "-"
    if u.scheme == "https":  # before the answer: Connection: close drops the socket
        cert = conn.sock.getpeercert()
        cn = dict(x[0] for x in cert["subject"])["commonName"]
        version = conn.sock.version()
    conn.request("GET", u.path)
    r = conn.getresponse()
    body = r.read().decode()
    print(r.status, cn, version)
    print(body, end="")
except (ssl.SSLError, OSError) as e:
    print("ERROR", type(e).__name__, e)
    sys.exit(3)
PY
get() { "$py" "$work/get.py" "$@"; }
metric() { get "https://localhost:$hport/metrics" "$c/ca.pem" | sed -n "s/^$1 //p"; }

m3t_server https "$work/store" --http 127.0.0.1:0 --tls-cert "$work/live.pem" \
  --tls-key "$work/live.key" --http-tls
hport=$(sed -n 's/.*http=\([0-9]*\).*/\1/p' "$work/https.port")
https_pid=$srv
[ -n "$hport" ] && [ "$hport" != 0 ] || fail "no http port in $work/https.port"

# A scraper with the CA: TLS 1.3, the server's certificate, the metrics.
run 0 "$work/m.out" get "https://localhost:$hport/metrics" "$c/ca.pem" &&
  check "metrics over TLS 1.3 from CN=m3-server" grep -q '^200 m3-server TLSv1.3$' "$work/m.out" &&
  check "m3_http_tls 1" grep -q '^m3_http_tls 1$' "$work/m.out" &&
  check "m3_tls 1 (the RPC port too)" grep -q '^m3_tls 1$' "$work/m.out"
run 0 "$work/h.out" get "https://127.0.0.1:$hport/healthz" "$c/ca.pem" &&
  check "healthz over TLS (IP SAN)" grep -qx ok "$work/h.out"
run 0 "$work/r.out" get "https://localhost:$hport/readyz" "$c/ca.pem" &&
  check "readyz over TLS" grep -qx ready "$work/r.out"
run 0 "$work/nf.out" get "https://localhost:$hport/nothing" "$c/ca.pem" &&
  check "404 over TLS" grep -q '^404 ' "$work/nf.out"

# Refusals: a CA the client does not know, and plain HTTP on the TLS port.
run 3 "$work/untrusted.out" get "https://localhost:$hport/metrics" "$c/other-ca.pem" &&
  check "an unknown CA fails the client's check" grep -q 'CERTIFICATE_VERIFY_FAILED' "$work/untrusted.out"
run 0 "$work/plain.out" get "http://localhost:$hport/metrics" - &&
  check "plain HTTP gets 400 naming https" grep -q '^400 ' "$work/plain.out" &&
  check "plain HTTP told to use https://" grep -q 'speaks HTTPS (--http-tls): use https://' "$work/plain.out"
# Garbage that is neither TLS nor HTTP: a failed handshake, closed.
printf '\001\002\003garbage\r\n\r\n' | timeout 10 "$py" -c '
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(sys.stdin.buffer.read())
data = s.recv(4096)
while data and len(data) < 1 << 16:
    more = s.recv(4096)
    if not more: break
    data += more
print(len(data))' "$hport" >"$work/garbage.out" 2>&1 ||
  true
openssl s_client -connect "127.0.0.1:$hport" -CAfile "$c/ca.pem" -verify_return_error -brief \
  </dev/null >"$work/s_client.out" 2>&1 || true
check "openssl s_client negotiates TLSv1.3" grep -q 'Protocol version: TLSv1.3' "$work/s_client.out"
check "openssl s_client verifies the server" grep -q 'Verification: OK' "$work/s_client.out"
refused=$(metric m3_http_tls_refused_total)
check "refusals counted ($refused >= 3: unknown CA, plain, garbage)" test "${refused:-0}" -ge 3
handshakes=$(metric m3_http_tls_handshakes_total)
check "handshakes counted ($handshakes >= 5)" test "${handshakes:-0}" -ge 5

# SIGHUP: the HTTP port takes the new certificate (and the RPC port).
cp "$c/server2.pem" "$work/live.pem"
cp "$c/server2.key" "$work/live.key"
kill -HUP "$https_pid"
for _ in $(seq 50); do
  grep -q "reloaded the HTTP port's TLS" "$work/https.log" && break
  sleep 0.1
done
check "SIGHUP logged for the HTTP port" grep -q "reloaded the HTTP port's TLS" "$work/https.log"
run 0 "$work/reloaded.out" get "https://localhost:$hport/healthz" "$c/ca.pem" &&
  check "after SIGHUP the HTTP port shows CN=m3-server-2" grep -q '^200 m3-server-2 ' "$work/reloaded.out"
check "the log names the HTTP port's TLS" grep -q 'TLS 1.3 (--http-tls), no client certificates' "$work/https.log"

# --http-tls-ca: client certificates required on the HTTP port.
cp -a "$work/store" "$work/store2"
m3t_server mtls "$work/store2" --http 127.0.0.1:0 --tls-cert "$c/server.pem" \
  --tls-key "$c/server.key" --http-tls-ca "$c/ca.pem"
mport=$(sed -n 's/.*http=\([0-9]*\).*/\1/p' "$work/mtls.port")
run 3 "$work/nocert.out" get "https://localhost:$mport/metrics" "$c/ca.pem" &&
  check "no client certificate: refused" grep -q '^ERROR' "$work/nocert.out"
run 3 "$work/rogue.out" get "https://localhost:$mport/metrics" "$c/ca.pem" "$c/rogue-client.pem" "$c/rogue-client.key" &&
  check "a client certificate of another CA: refused" grep -q '^ERROR' "$work/rogue.out"
run 0 "$work/withcert.out" get "https://localhost:$mport/metrics" "$c/ca.pem" "$c/client.pem" "$c/client.key" &&
  check "a client certificate of the CA: served" grep -q '^m3_http_tls 1$' "$work/withcert.out"
for _ in $(seq 50); do
  grep -q "the client's certificate" "$work/mtls.log" && break
  sleep 0.1
done
check "the missing certificate is logged" grep -q "peer did not return a certificate" "$work/mtls.log"
check "the other CA's certificate is logged" grep -q "the client's certificate: unable to get local issuer" "$work/mtls.log"

# Start-up refusals.
m3t_refused no-cert "--http-tls needs --tls-cert and --tls-key" \
  "$bin/m3-server" --store "$work/store" --listen 127.0.0.1:0 --http-tls
m3t_refused bad-ca "--http-tls-ca $c/nothing.pem" \
  "$bin/m3-server" --store "$work/store" --listen 127.0.0.1:0 --tls-cert "$c/server.pem" \
  --tls-key "$c/server.key" --http-tls-ca "$c/nothing.pem"
m3t_done
