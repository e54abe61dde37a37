#!/usr/bin/env bash
# The Python binding over TLS: Client(server=..., tls_ca=, tls_cert=,
# tls_key=) against a real m3-server with mutual TLS fetches the same bytes
# as Client over plain from the same store; a missing client certificate and
# an unknown CA raise M3Error with their own messages; the cluster form takes
# the same options. Skipped (77) without numpy.
. "$(dirname "$0")/../lib/m3test.sh" tls-py
"$py" -c "import numpy" 2>/dev/null || m3t_skip "no numpy for $py"
m3t_need_exec "$bin/m3-server" "$bin/m3-bench"
: "${M3_LIB:?M3_LIB must name libm3client.so}"
if [ "${M3_SANITIZE:-OFF}" = ON ]; then
  LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
  export LD_PRELOAD ASAN_OPTIONS=detect_leaks=0
fi
LD_PRELOAD= bash "$src/tests/tls/make_certs.sh" "$work/certs"
LD_PRELOAD= "$bin/m3-bench" gen --store "$work/store" --count 40 --emb-dim 16 --json >/dev/null
LD_PRELOAD= m3t_server plain "$work/store"
plain=$addr
# One store per process: the TLS server serves a copy.
cp -a "$work/store" "$work/store2"
LD_PRELOAD= m3t_server tls "$work/store2" --tls-cert "$work/certs/server.pem" \
  --tls-key "$work/certs/server.key" --tls-ca "$work/certs/ca.pem"
tls=$addr
PYTHONPATH="$src/client/python" "$py" - "$plain" "$tls" "$work/certs" <<'PY'
import json, sys
import numpy as np
import m3store
plain, tls, certs = sys.argv[1:4]
ca, crt, key = f"{certs}/ca.pem", f"{certs}/client.pem", f"{certs}/client.key"
ids = list(range(0, 40, 3))
p = m3store.Client(server=plain)
t = m3store.Client(server=tls, tls_ca=ca, tls_cert=crt, tls_key=key)
a, b = p.fetch(ids), t.fetch(ids)
assert np.array_equal(a.ids, b.ids) and np.array_equal(a.status, b.status), "ids/status differ"
assert not a.status.any(), a.status
assert np.array_equal(a.codes, b.codes), "TLS fetch bytes differ from plain"
assert p.info["records"] == t.info["records"] == 40, (p.info, t.info)
for kw, want in (({"tls_ca": ca}, "requires a client certificate"),
                 ({"tls_ca": f"{certs}/other-ca.pem", "tls_cert": crt, "tls_key": key},
                  "unknown CA")):
    try:
        m3store.Client(server=tls, **kw)
    except m3store.M3Error as e:
        assert want in str(e), (want, str(e))
    else:
        raise AssertionError(f"connected without refusal: {kw}")
m = json.dumps({"shards": [{"id": 0, "replicas": [tls]}]})
c = m3store.Client(cluster=m, tls_ca=ca, tls_cert=crt, tls_key=key)
assert c.info["records"] == 40, c.info
print("python TLS: fetch equal, refusals named, cluster ok")
PY
