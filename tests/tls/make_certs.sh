#!/usr/bin/env bash
# make_certs.sh DIR: the TLS tests' certificates, made at test time with the
# openssl CLI (EC P-256, short-lived):
#   ca.pem/key            the test CA
#   other-ca.pem/key      a CA nobody trusts
#   server.pem/key        CN=m3-server, SAN DNS:localhost, IP:127.0.0.1 (by ca)
#   server2.pem/key       the same names, CN=m3-server-2 (the reload's new one)
#   expired.pem/key       the server's names, expired yesterday (-days -1)
#   wronghost.pem/key     SAN DNS:wrong.example only
#   client.pem/key        CN=worker-1, SAN DNS:worker-1, URI:spiffe://m3/worker-1
#   ops.pem/key           CN=ops,O=m3, SAN URI:spiffe://m3/ops (the admin's)
#   rogue-client.pem/key  CN=worker-1, signed by other-ca
#   expired-client.pem/key  CN=worker-1, expired
set -euo pipefail
d=$1
mkdir -p "$d"
cd "$d"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; }
ca() {
  key "$1"
  openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 30 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
}
# leaf NAME SUBJECT SAN CA DAYS EKU
leaf() {
  key "$1"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=%s\n' "$3" "$6" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$4.pem" -CAkey "$4.key" -CAcreateserial -days "$5" \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
ca ca "m3 test CA"
ca other-ca "m3 rogue CA"
leaf server "/CN=m3-server" "DNS:localhost,IP:127.0.0.1" ca 30 serverAuth
leaf server2 "/CN=m3-server-2" "DNS:localhost,IP:127.0.0.1" ca 30 serverAuth
leaf expired "/CN=m3-server" "DNS:localhost,IP:127.0.0.1" ca -1 serverAuth
leaf wronghost "/CN=wrong.example" "DNS:wrong.example" ca 30 serverAuth
leaf client "/CN=worker-1" "DNS:worker-1,URI:spiffe://m3/worker-1" ca 30 clientAuth
leaf ops "/O=m3/CN=ops" "URI:spiffe://m3/ops" ca 30 clientAuth
leaf rogue-client "/CN=worker-1" "DNS:worker-1" other-ca 30 clientAuth
leaf expired-client "/CN=worker-1" "DNS:worker-1" ca -1 clientAuth
