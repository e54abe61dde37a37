#!/usr/bin/env bash
# The cluster from the command line: deploy/local/m3-cluster up/status/down,
# `m3 query --cluster` and `m3 fetch --cluster` printing what --server prints
# against one unsharded server on the original store, and
# `m3-bench rpc --cluster` running without errors.
set -euo pipefail
B=${M3_BIN_DIR:?}
L=${M3_SOURCE_DIR:?}/deploy/local/m3-cluster
[[ -x $B/m3-server ]] || { echo "no m3-server: skipped"; exit 77; }
T=$(mktemp -d /tmp/m3-cluster-cli.XXXXXX)
SINGLE=
cleanup() {
  [[ -n $SINGLE ]] && kill "$SINGLE" 2>/dev/null || true
  bash "$L" down --dir "$T/run" >/dev/null 2>&1 || true
  rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$B/m3-bench" gen --store "$T/store" --count 600 --emb-dim 32 >/dev/null
bash "$L" up --store "$T/store" --shards 2 --replicas 2 --dir "$T/run"
[[ -s $T/run/cluster.json ]] || fail "no cluster.json"
grep -q '"codec_fingerprint"' "$T/run/cluster.json" || fail "map without codec_fingerprint"

# status: 4 servers alive with 300 records each.
bash "$L" status --dir "$T/run" | tee "$T/status"
[[ $(grep -c ' alive ' "$T/status") == 4 ]] || fail "status does not show 4 alive servers"
[[ $(awk 'NR > 1 && $6 == 300' "$T/status" | wc -l) == 4 ]] || fail "shards do not hold 300 records each"
bash "$L" status --dir "$T/run" --json | grep -q '"records": 300' || fail "status --json"

# One unsharded server on the original store.
"$B/m3-server" --store "$T/store" --listen 127.0.0.1:0 --http off --port-file "$T/single.ports" \
  >"$T/single.log" 2>&1 &
SINGLE=$!
for _ in $(seq 200); do [[ -s $T/single.ports ]] && break; sleep 0.05; done
P=$(sed -n 's/rpc=\([0-9]*\).*/\1/p' "$T/single.ports")
[[ -n $P ]] || fail "single server did not start"

# Query vectors: 6 random 32-dim queries.
awk 'BEGIN { srand(11); for (q = 0; q < 6; q++) { l = ""; for (d = 0; d < 32; d++) l = l sprintf("%.6f ", rand() - 0.5); print l } }' >"$T/q.txt"
for k in 1 5 12; do
  "$B/m3" query --server "127.0.0.1:$P" --vector-file "$T/q.txt" -k $k --json | sed 1,2d >"$T/s.json"
  "$B/m3" query --cluster "$T/run/cluster.json" --vector-file "$T/q.txt" -k $k --json | sed 1,2d >"$T/c.json"
  diff "$T/s.json" "$T/c.json" || fail "m3 query -k $k: cluster differs from the single server"
  "$B/m3" query --server "127.0.0.1:$P" --vector-file "$T/q.txt" -k $k | sed 1d >"$T/s.txt"
  "$B/m3" query --cluster "$T/run/cluster.json" --vector-file "$T/q.txt" -k $k | sed 1d >"$T/c.txt"
  diff "$T/s.txt" "$T/c.txt" || fail "m3 query -k $k (text output) differs"
done

ids="--id 5 --id 0 --id 599 --id 42 --id 5"
"$B/m3" fetch --server "127.0.0.1:$P" $ids --out "$T/s.bin" >"$T/s.txt"
"$B/m3" fetch --cluster "$T/run/cluster.json" $ids --out "$T/c.bin" >"$T/c.txt"
cmp "$T/s.bin" "$T/c.bin" || fail "m3 fetch --cluster bytes differ"
diff "$T/s.txt" "$T/c.txt" || fail "m3 fetch --cluster output differs"
rc=0; "$B/m3" fetch --cluster "$T/run/cluster.json" --id 1 --id 100000 >/dev/null 2>&1 || rc=$?
[[ $rc == 1 ]] || fail "m3 fetch --cluster of a missing id exited $rc, want 1"

# Bad maps are usage errors that name the file.
echo '{"shards": [' >"$T/bad.json"
rc=0; "$B/m3" query --cluster "$T/bad.json" --text x 2>"$T/err" || rc=$?
[[ $rc == 2 ]] && grep -q "bad.json" "$T/err" && grep -q "line" "$T/err" || fail "bad map: exit $rc, $(cat "$T/err")"

"$B/m3-bench" rpc --cluster "$T/run/cluster.json" --connections 2 --queries-per-call 8 --duration 2 \
  --warmup 2 --json >"$T/bench.json"
cat "$T/bench.json"
grep -q '"errors": 0,' "$T/bench.json" || fail "m3-bench rpc --cluster had errors"
grep -q '"shards": 2' "$T/bench.json" || fail "m3-bench rpc --cluster: no shards field"
# Hedged searches (1 ms: most searches are hedged) lose nothing either.
"$B/m3-bench" rpc --cluster "$T/run/cluster.json" --connections 2 --queries-per-call 8 --duration 1 \
  --warmup 2 --hedge-ms 1 --json >"$T/bench.json"
grep -q '"errors": 0,' "$T/bench.json" || fail "m3-bench rpc --cluster --hedge-ms had errors"
grep '"hedges"' "$T/bench.json"

# A whole shard down from the CLI: exit 1 and a message naming the shard.
read -r _ _ p10 _ < <(awk '$1 == 1 && $2 == 0' "$T/run/servers")
read -r _ _ p11 _ < <(awk '$1 == 1 && $2 == 1' "$T/run/servers")
kill -9 "$p10" "$p11"
sleep 0.5
rc=0; "$B/m3" query --cluster "$T/run/cluster.json" --vector-file "$T/q.txt" 2>"$T/err" >/dev/null || rc=$?
[[ $rc == 1 ]] && grep -q "UNAVAILABLE" "$T/err" && grep -q "shard 1" "$T/err" || fail "shard down: exit $rc, $(cat "$T/err")"
cat "$T/err"
rc=0; bash "$L" status --dir "$T/run" >"$T/status" || rc=$?
[[ $rc == 1 && $(grep -c ' dead ' "$T/status") == 2 ]] || fail "status after kills: exit $rc"

bash "$L" down --dir "$T/run" | tee "$T/down"
grep -q "stopped 2 servers" "$T/down" || fail "down did not report 2 stopped servers"
rc=0; bash "$L" status --dir "$T/run" >/dev/null 2>&1 || rc=$?
[[ $rc == 2 ]] || fail "status after down exited $rc, want 2"
echo "cluster CLI OK"
