#!/usr/bin/env bash
# The wire baselines of m3-bench against a real m3-server on loopback:
# `m3-bench rpc` measures the loopback link itself and the server's CPU in
# the same run, and `m3-bench peer redis` starts Debian's redis-server, loads
# the store's memories into it, runs the same rounds on both, checks every
# answer (0 errors on both sides) and stops its Redis again.
. "$(dirname "$0")/../lib/m3test.sh" bench-wire
m3t_need_exec "$bin/m3-server"

"$bin/m3-bench" gen --store "$work/store" --count 300 --shape 2x2x8x16 --emb-dim 16 --json >/dev/null
m3t_server server "$work/store"

"$bin/m3-bench" rpc --server "$addr" --connections 2 --queries-per-call 8 -k 5 --calls 40 \
  --warmup 2 --loopback-seconds 0.5 --json >"$work/rpc.json"
check "rpc: no errors" json_true "$work/rpc.json" "j['errors'] == 0 and j['calls'] == 40"
check "rpc: loopback measured" json_true "$work/rpc.json" "j['loopback_mb_per_s'] > 0"
check "rpc: served/loopback" json_true "$work/rpc.json" \
  "abs(j['served_over_loopback'] - j['payload_mb_per_s'] / j['loopback_mb_per_s']) < 1e-3 * j['served_over_loopback']"
check "rpc: the server process found" json_true "$work/rpc.json" "j['server_processes'] == 1"
check "rpc: server CPU per GB" json_true "$work/rpc.json" "j['server_cpu_s_per_gb'] >= 0"

if command -v redis-server >/dev/null; then
  before=$(pgrep -c -x redis-server || true)
  "$bin/m3-bench" peer redis --server "$addr" --store "$work/store" --connections 2 \
    --ids-per-round 40 --duration 1 --json >"$work/peer.json"
  check "peer: both sides served rounds" json_true "$work/peer.json" \
    "j['m3']['rounds'] > 0 and j['redis']['rounds'] > 0"
  check "peer: no errors" json_true "$work/peer.json" "j['m3']['errors'] == 0 and j['redis']['errors'] == 0"
  check "peer: every memory loaded" json_true "$work/peer.json" "j['memories'] == 300"
  check "peer: ratios" json_true "$work/peer.json" \
    "abs(j['throughput_ratio'] - j['m3']['mb_per_s'] / j['redis']['mb_per_s']) < 1e-3 * j['throughput_ratio']"
  after=$(pgrep -c -x redis-server || true)
  check "peer: its redis-server stopped" test "$before" = "$after"
  # A peer that is not there: a clear error, exit 2.
  set +e
  "$bin/m3-bench" peer redis --server "$addr" --store "$work/store" --redis 127.0.0.1:1 \
    --duration 1 >"$work/peer.bad" 2>&1
  rc=$?
  set -e
  check "peer: unreachable redis exits 2" test "$rc" = 2
  check "peer: unreachable redis named" grep -q "redis 127.0.0.1:1" "$work/peer.bad"
else
  echo "FAIL: redis-server is not installed (scripts/install-deps.sh installs it)" >&2
  fails=$((fails + 1))
fi

m3t_done
