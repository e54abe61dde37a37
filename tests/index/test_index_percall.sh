#!/usr/bin/env bash
# Per-call index search parameters (Query nprobe / efSearch on the wire,
# `m3 query --nprobe N`): on a trained IVF64,Flat index, nprobe 64 (every
# list) gives exactly the flat index's answers on a copy of the same store,
# and nprobe 1 gives different ones; both through one server.
. "$(dirname "$0")/../lib/m3test.sh" index-percall
m3t_need_exec "$bin/m3-server"

"$bin/m3-bench" gen --store "$work/ivf" --count 4000 --emb-dim 16 --json >/dev/null
cp -r "$work/ivf" "$work/flat"
"$py" -c "
import random; random.seed(1)
for i in range(20): print(' '.join('%.4f' % random.gauss(0, 1) for _ in range(16)))" >"$work/q.vec"

m3t_server flat "$work/flat"
flat=$addr
m3t_server ivf "$work/ivf" --index "IVF64,Flat"
run 0 "$work/flat.json" "$bin/m3" query --server "$flat" --vector-file "$work/q.vec" -k 5 --json || true
for np in 1 64; do
  run 0 "$work/np$np.json" "$bin/m3" query --server "$addr" --vector-file "$work/q.vec" -k 5 \
    --nprobe "$np" --json || true
done
ids='[[r["chunk_id"] for r in q["results"]] for q in j["queries"]]'
check "nprobe 64 == flat" test "$(json_get "$work/np64.json" "$ids")" = "$(json_get "$work/flat.json" "$ids")"
check "nprobe 1 != flat" test "$(json_get "$work/np1.json" "$ids")" != "$(json_get "$work/flat.json" "$ids")"
m3t_done
