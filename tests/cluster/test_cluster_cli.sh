#!/usr/bin/env bash
# The cluster from the command line: deploy/local/m3-cluster up/status/down,
# `m3 query --cluster` and `m3 fetch --cluster` printing what --server prints
# against one unsharded server on the original store, `m3 stats --cluster`
# (every replica's counters and the totals, down replicas with their error),
# and `m3-bench rpc --cluster` running without errors.
. "$(dirname "$0")/../lib/m3test.sh" cluster-cli
B=$bin T=$work L=$src/deploy/local/m3-cluster
m3t_need_exec "$B/m3-server"
m3t_at_exit 'bash "$L" down --dir "$T/run" >/dev/null 2>&1'

"$B/m3-bench" gen --store "$T/store" --count 600 --emb-dim 32 >/dev/null
bash "$L" up --store "$T/store" --shards 2 --replicas 2 --dir "$T/run"
[[ -s $T/run/cluster.json ]] || fail "no cluster.json"
grep -q '"codec_fingerprint"' "$T/run/cluster.json" || fail "map without codec_fingerprint"

# status: 4 servers alive with 300 records each.
bash "$L" status --dir "$T/run" | tee "$T/status"
[[ $(grep -c ' alive ' "$T/status") == 4 ]] || fail "status does not show 4 alive servers"
[[ $(awk 'NR > 1 && $6 == 300' "$T/status" | wc -l) == 4 ]] || fail "shards do not hold 300 records each"
bash "$L" status --dir "$T/run" --json | grep '"records": 300' >/dev/null || fail "status --json"

# One unsharded server on the original store.
m3t_server single "$T/store"
P=$port

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

# stats --cluster: every replica up with its half of the records, totals
# that add up, and the memories a fetch serves counted.
M=$T/run/cluster.json
"$B/m3" stats --cluster "$M" --json >"$T/st0.json"
jcheck "$T/st0.json" 'j["shards"] == 2 and len(j["replicas"]) == 4'
jcheck "$T/st0.json" 'all(r["up"] and r["records"] == 300 and r["server_name"] for r in j["replicas"])'
jcheck "$T/st0.json" 'sorted((r["shard"], r["replica"]) for r in j["replicas"]) == [(0, 0), (0, 1), (1, 0), (1, 1)]'
jcheck "$T/st0.json" 'j["totals"]["records"] == 600 and j["totals"]["up"] == 4 and j["totals"]["down"] == 0 and j["totals"]["shards_down"] == 0'
jcheck "$T/st0.json" 'j["totals"]["calls"] == sum(r["calls"] for r in j["replicas"]) > 0'
jcheck "$T/st0.json" 'j["totals"]["memories_served"] == sum(r["memories_served"] for r in j["replicas"]) > 0'
while read -r s r _ port _; do
  jcheck "$T/st0.json" "any(x['shard'] == $s and x['replica'] == $r and x['address'] == '127.0.0.1:$port' for x in j['replicas'])"
done <"$T/run/servers"
"$B/m3" fetch --cluster "$M" --id 10 --id 11 --id 12 --id 13 --id 14 --id 15 --id 16 >/dev/null
"$B/m3" stats --cluster "$M" --json >"$T/st1.json"
served0=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["totals"]["memories_served"])' "$T/st0.json")
jcheck "$T/st1.json" "j['totals']['memories_served'] == $served0 + 7"
"$B/m3" stats --cluster "$M" >"$T/st.txt"
cat "$T/st.txt"
[[ $(grep -c ' up ' "$T/st.txt") == 4 ]] || fail "stats --cluster text: not 4 replicas up"
grep -q '^total .* 600 ' "$T/st.txt" || fail "stats --cluster text: no total of 600 records"

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
read -r _ _ p10 p10x _ < <(awk '$1 == 1 && $2 == 0' "$T/run/servers")
read -r _ _ p11 _ < <(awk '$1 == 1 && $2 == 1' "$T/run/servers")
kill -9 "$p10" "$p11"
sleep 0.5
rc=0; "$B/m3" query --cluster "$T/run/cluster.json" --vector-file "$T/q.txt" 2>"$T/err" >/dev/null || rc=$?
[[ $rc == 1 ]] && grep -q "UNAVAILABLE" "$T/err" && grep -q "shard 1" "$T/err" || fail "shard down: exit $rc, $(cat "$T/err")"
cat "$T/err"
# stats --cluster with shard 1 gone: its replicas listed down with their
# error, the rest counted, exit 0; a map of dead replicas only: exit 2.
rc=0; "$B/m3" stats --cluster "$M" --json >"$T/st2.json" 2>"$T/err" || rc=$?
[[ $rc == 0 ]] || fail "stats --cluster with a shard down exited $rc: $(cat "$T/err")"
jcheck "$T/st2.json" 'j["totals"]["up"] == 2 and j["totals"]["down"] == 2 and j["totals"]["shards_down"] == 1 and j["totals"]["records"] == 300'
jcheck "$T/st2.json" 'all((not r["up"]) == (r["shard"] == 1) for r in j["replicas"])'
jcheck "$T/st2.json" 'all("refused" in r["error"] and "records" not in r for r in j["replicas"] if r["shard"] == 1)'
grep -q "shard 1 replica 127.0.0.1:$p10x down" "$T/err" || fail "stats --cluster: no warning naming the down replica: $(cat "$T/err")"
"$py" -c 'import json,sys; m = json.load(open(sys.argv[1])); m["shards"] = [dict(s, id=0) for s in m["shards"] if s["id"] == 1]; json.dump(m, open(sys.argv[2], "w"))' "$M" "$T/dead.json"
rc=0; "$B/m3" stats --cluster "$T/dead.json" >/dev/null 2>"$T/err" || rc=$?
[[ $rc == 2 ]] && grep -q "no replica of" "$T/err" || fail "stats --cluster, all down: exit $rc, $(cat "$T/err")"

rc=0; bash "$L" status --dir "$T/run" >"$T/status" || rc=$?
[[ $rc == 1 && $(grep -c ' dead ' "$T/status") == 2 ]] || fail "status after kills: exit $rc"

bash "$L" down --dir "$T/run" | tee "$T/down"
grep -q "stopped 2 servers" "$T/down" || fail "down did not report 2 stopped servers"
rc=0; bash "$L" status --dir "$T/run" >/dev/null 2>&1 || rc=$?
[[ $rc == 2 ]] || fail "status after down exited $rc, want 2"
echo "cluster CLI OK"
