#!/usr/bin/env bash
# README.md's "A session", run as written: the ```sh block under "## A
# session" is taken from README.md itself (so the README cannot drift from
# what runs) and executed line by line in one bash, from a scratch checkout
# ($work/co: build/bin, examples/ and deploy/ linked to this build and
# source tree). Two changes only: the fixed ports 7600/7601 become free
# ports (tests run in parallel), and after a line that starts a process in
# the background (`... &`) the runner waits until its --listen port accepts,
# as a person typing the next line would. Every line must exit 0, and what
# it prints must be right: the text query finds a Saturn chunk first, the
# fetch writes the memory, store info counts 297 records, the cluster query
# finds a Jupiter chunk first, and nothing the session started is left
# running at its end.
. "$(dirname "$0")/../lib/m3test.sh" readme-session
m3t_need_exec "$bin/m3-encode" "$bin/m3-server" "$bin/m3"

readme=$src/README.md
awk '/^## A session/ {in_s = 1; next} in_s && /^## / {exit}
     in_s && /^```sh/ {in_b = 1; next} in_b && /^```/ {exit} in_b {print}' "$readme" >"$work/block.sh"
[ -s "$work/block.sh" ] || fail "no \`\`\`sh block under '## A session' in $readme"
grep -q "127.0.0.1:7600" "$work/block.sh" || fail "the session no longer listens on 127.0.0.1:7600: update this test"

# two free ports for the session's 7600 and 7601
read -r p1 p2 < <("$py" -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
sed -e "s/127\.0\.0\.1:7600/127.0.0.1:$p1/g" -e "s/127\.0\.0\.1:7601/127.0.0.1:$p2/g" \
  "$work/block.sh" >"$work/block.ports.sh"

# the runner: each line marked in the log ("### N: line"), run in this one
# shell; after "... &", wait for its --listen port; at the end, whatever the
# session left running is reported and stopped
"$py" - "$work/block.ports.sh" >"$work/session.sh" <<'PY'
import re, shlex, sys
lines = open(sys.argv[1]).read().splitlines()
out = ["set -euo pipefail",
       "left() { local i; for i in $(seq 100); do [ -z \"$(jobs -pr)\" ] && return 0; sleep 0.1; done;",
       "  echo '### left running:'; jobs -l; kill $(jobs -pr) 2>/dev/null; return 1; }",
       "trap 'rc=$?; left || rc=1; exit $rc' EXIT"]
for n, line in enumerate(lines, 1):
    code = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
    if not code:
        continue
    out.append("echo %s" % shlex.quote("### %d: %s" % (n, code)))
    out.append(line)
    if code.endswith("&"):
        m = re.search(r"--listen +[0-9.]*:([0-9]+)", code)
        if m:
            out.append("for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/%s) 2>/dev/null && break; "
                       "sleep 0.1; done" % m.group(1))
out.append("echo '### end'")
print("\n".join(out))
PY

mkdir -p "$work/co/build"
ln -s "$bin" "$work/co/build/bin"
ln -s "$src/examples" "$work/co/examples"
ln -s "$src/deploy" "$work/co/deploy"
# a cluster the session failed to take down is stopped at exit
m3t_at_exit "M3_BIN_DIR=$bin $src/deploy/local/m3-cluster down --dir $work/co/out/session/cluster >/dev/null 2>&1"
set +e
(cd "$work/co" && bash "$work/session.sh") >"$work/session.log" 2>&1
rc=$?
set -e
if [ "$rc" != 0 ] || ! grep -q '^### end' "$work/session.log"; then
  sed 's/^/  | /' "$work/session.log" >&2
  fail "the README session stopped (exit $rc) at: $(grep '^### ' "$work/session.log" | tail -n1)"
fi
pass=$((pass + 1))
check "nothing left running" bash -c "! grep -q '^### left running' '$work/session.log'"

# the output of the line that runs COMMAND-PATTERN (its first match)
section() {
  awk -v pat="$1" '/^### / {on = 0} /^### [0-9]+: / && !done && index($0, pat) {on = 1; done = 1; next} on' \
    "$work/session.log"
}
# the first result line of a query's text output (after its "rank" header)
first_hit() { section "$1" | awk 'f {print; exit} $1 == "rank" {f = 1}'; }

check "the query finds a Saturn chunk first" grep -q Saturn <<<"$(first_hit 'm3 query --server')"
check "fetch wrote the memory" test -s "$work/co/out/session/memory.bin"
check "fetch names the id" grep -q '\b9\b' <<<"$(section 'm3 fetch')"
check "store info: 297 records" grep -q '297' <<<"$(section 'm3 store info')"
check "the cluster query finds a Jupiter chunk first" grep -q Jupiter <<<"$(first_hit 'm3 query --cluster')"
check "the store's embedder is words" grep -q "words" "$work/co/out/session/kb/encode.json"
if [ "$fails" != 0 ]; then sed 's/^/  | /' "$work/session.log" >&2; fi
m3t_done
