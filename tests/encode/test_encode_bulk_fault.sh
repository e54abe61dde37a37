#!/usr/bin/env bash
# m3-encode writes by bulk ingest (m3/store.h): a disk failing at each step of
# a checkpoint (segment write, segment sync, catalog SST ingest) stops the run
# with a message naming the failure; the store then verifies and holds only
# whole memories of an uninterrupted run, and a rerun resumes to exactly that
# run's store. kill -9 with a checkpoint after every batch
# (M3_ENCODE_CHECKPOINT_S=0) lands inside checkpoints too. The summary names
# every stage with its work, share and rate (text and --json).
. "$(dirname "$0")/../lib/m3test.sh" encode-bulk-fault
m3t_need_exec "$bin/m3-encode" "$bin/m3"
"$bin/m3-encode" test-model --out "$work/model" 2>/dev/null
args=(--model "$work/model" --input "$src/examples/kb/kb.jsonl" --batch 4 --embed hash:32)
digest() { "$bin/encode_store_digest" "$1"; }

"$bin/m3-encode" "${args[@]}" --store "$work/ref" --json >"$work/ref.json" 2>"$work/ref.log"
digest "$work/ref" >"$work/ref.digest"
[ "$(wc -l <"$work/ref.digest")" = 297 ] || fail "reference has $(wc -l <"$work/ref.digest") records"
grep -q "stages (work s, share, rate alone): read .* forward .* quantize .* write .* checkpoints" \
  "$work/ref.log" || { cat "$work/ref.log"; fail "no stage line in the summary"; }
grep -q "pipeline .* chunks/s .* slowest stage" "$work/ref.log" || fail "no pipeline line"
json_true "$work/ref.json" '(j["chunks_encoded"] == 297 and j["records"] == 297 and
  set(j["stages"]) == {"read", "forward", "quantize", "write"} and
  abs(sum(s["share"] for s in j["stages"].values()) - 1) < 1e-6 and
  all(s["seconds"] > 0 and s["chunks_per_s"] > 0 for s in j["stages"].values()) and
  j["slowest_stage"] in j["stages"] and 0 < j["pipeline_vs_slowest"] <= 1.5 and
  j["stages"]["write"]["checkpoints"] >= 1 and j["stages"]["quantize"]["vectors_per_s"] > 0)' ||
  { cat "$work/ref.json"; fail "--json summary"; }
# One stage at a time (M3_ENCODE_SERIAL): the same bytes.
M3_ENCODE_SERIAL=1 "$bin/m3-encode" "${args[@]}" --store "$work/serial" 2>"$work/serial.log"
grep -q "M3_ENCODE_SERIAL: one stage at a time" "$work/serial.log" || fail "serial mode not reported"
cmp -s <(digest "$work/serial") "$work/ref.digest" || fail "serial run != pipelined run"

# only_whole DIR: every record of DIR is one of the reference's, byte for byte.
only_whole() {
  "$bin/m3" store verify "$1" >"$work/verify.out" 2>&1 || { cat "$work/verify.out"; fail "verify $1"; }
  digest "$1" | sort >"$work/part.digest"
  [ -z "$(comm -23 "$work/part.digest" <(sort "$work/ref.digest"))" ] ||
    fail "$1 holds records that differ from the uninterrupted run's"
}

for f in segment.write=ENOSPC@3 segment.sync=EIO@3 catalog.ingest=EIO@3; do
  d=$work/fault-${f%%=*}
  set +e
  M3_FAULT=$f M3_ENCODE_CHECKPOINT_S=0 "$bin/m3-encode" "${args[@]}" --store "$d" >/dev/null 2>"$d.log"
  rc=$?
  set -e
  [ "$rc" = 2 ] || { cat "$d.log"; fail "$f: exit $rc, expected 2"; }
  grep -q "store bulk ingest: .*\(No space left\|Input/output error\|I/O\|EIO\|ENOSPC\)" "$d.log" ||
    { cat "$d.log"; fail "$f: the message does not name the failure"; }
  grep -q "chunks were stored before the failure; rerun" "$d.log" ||
    { cat "$d.log"; fail "$f: no resume hint after earlier checkpoints"; }
  only_whole "$d"
  have=$(wc -l <"$work/part.digest")
  "$bin/m3-encode" "${args[@]}" --store "$d" 2>"$d.rerun.log"
  cmp -s <(digest "$d") "$work/ref.digest" || fail "$f: resumed store != uninterrupted store"
  echo "$f: failed with $have records durable; resumed to $(wc -l <"$work/ref.digest"), identical"
done

RANDOM=${M3_RESUME_SEED:-$$}
t0=$(date +%s%N)
M3_ENCODE_CHECKPOINT_S=0 "$bin/m3-encode" "${args[@]}" --store "$work/timing" 2>/dev/null
full_ms=$((($(date +%s%N) - t0) / 1000000))
for i in 1 2 3; do
  M3_ENCODE_CHECKPOINT_S=0 "$bin/m3-encode" "${args[@]}" --store "$work/kill" 2>>"$work/kill.log" &
  pid=$!
  for _ in $(seq 200); do [ -d "$work/kill/catalog" ] && break; sleep 0.05; done
  ms=$((RANDOM % (full_ms / 2 + 1)))
  sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [ -d "$work/kill/catalog" ] || fail "kill $i: no store after 10 s"
  only_whole "$work/kill"
  echo "kill $i $ms ms after the store existed: $(wc -l <"$work/part.digest") records, all whole"
done
"$bin/m3-encode" "${args[@]}" --store "$work/kill" 2>"$work/kill.final.log"
cmp -s <(digest "$work/kill") "$work/ref.digest" || fail "resumed after kills != uninterrupted"
echo "bulk-ingest faults and kills: stores verify, hold whole records, resume identical"
