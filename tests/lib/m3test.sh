# The helpers every shell test shares (the C tests' tests/lib/m3test.h).
# Source it first thing:   . "$(dirname "$0")/../lib/m3test.sh" NAME
# It sets -euo pipefail and:
#   bin   $M3_BIN_DIR (required: the build's bin/)
#   src   $M3_SOURCE_DIR (the source tree; from this file's place if unset)
#   py    /usr/bin/python3
#   work  a fresh directory $TMPDIR/m3test-NAME.XXXXXX, removed at exit
#         (kept, and its path printed, when M3_TEST_KEEP is set)
#   pass, fails   counters of check/run/runx; m3t_done reports them.
# Processes started in the background are stopped at exit with m3t_reap PID;
# other clean-up with m3t_at_exit 'COMMAND' (run before $work is removed,
# last registered first).
set -euo pipefail
bin=${M3_BIN_DIR:?M3_BIN_DIR must point at the build bin/}
src=${M3_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
py=/usr/bin/python3
work=$(mktemp -d "${TMPDIR:-/tmp}/m3test-${1:-sh}.XXXXXX")
pass=0
fails=0
m3t_exit_cmds=()

m3t_cleanup() {
  local i
  for ((i = ${#m3t_exit_cmds[@]} - 1; i >= 0; i--)); do eval "${m3t_exit_cmds[$i]}" || true; done
  if [ -n "${M3_TEST_KEEP:-}" ]; then echo "# kept $work" >&2; else rm -rf "$work"; fi
}
trap m3t_cleanup EXIT

m3t_at_exit() { m3t_exit_cmds+=("$1"); }
# m3t_reap PID: SIGTERM and wait for it at exit (if it still runs).
m3t_reap() { m3t_at_exit "kill -TERM $1 2>/dev/null; wait $1 2>/dev/null"; }

# m3t_skip MESSAGE: the test cannot run here (exit 77, which CTest reports
# as skipped).
m3t_skip() { echo "skipped: $*"; exit 77; }
# m3t_need_exec PATH...: skip unless each is an executable.
m3t_need_exec() { local p; for p in "$@"; do [ -x "$p" ] || m3t_skip "no $p"; done; }

# fail MESSAGE: stop the test now.
fail() { echo "FAIL: $*" >&2; exit 1; }

# check NAME COMMAND...: counts a pass when COMMAND succeeds, else a failure
# named NAME (the test goes on; m3t_done fails it).
check() {
  local name=$1
  shift
  if "$@"; then pass=$((pass + 1)); else echo "FAIL: $name" >&2; fails=$((fails + 1)); fi
}

# run EXPECTED_EXIT OUTFILE COMMAND...: stdout into OUTFILE, stderr into
# OUTFILE.err; a failure (both printed) unless it exits EXPECTED_EXIT.
# Returns 1 on a failure, so `run ... && check ...` skips dependent checks.
run() {
  local want=$1 out=$2
  shift 2
  set +e
  "$@" >"$out" 2>"$out.err"
  local got=$?
  set -e
  if [ "$got" != "$want" ]; then
    echo "FAIL: '$*' exited $got, expected $want" >&2
    sed 's/^/  | /' "$out" "$out.err" >&2
    fails=$((fails + 1))
    return 1
  fi
  pass=$((pass + 1))
}

# runx EXPECTED_EXIT NAME COMMAND...: like run, stdout and stderr together
# in $work/NAME.out.
runx() {
  local want=$1 name=$2
  shift 2
  set +e
  "$@" >"$work/$name.out" 2>&1
  local got=$?
  set -e
  if [ "$got" != "$want" ]; then
    echo "FAIL: $name: '$*' exited $got, expected $want" >&2
    sed 's/^/  | /' "$work/$name.out" >&2
    fails=$((fails + 1))
    return 1
  fi
  pass=$((pass + 1))
}

# m3t_refused NAME PATTERN COMMAND...: COMMAND must fail (any non-zero
# exit) with PATTERN (grep) in its output ($work/NAME.out); stops the test
# otherwise.
m3t_refused() {
  local name=$1 pat=$2
  shift 2
  if "$@" >"$work/$name.out" 2>&1; then fail "$name: '$*' was accepted"; fi
  grep -q -- "$pat" "$work/$name.out" || { cat "$work/$name.out" >&2; fail "$name: message lacks '$pat'"; }
  pass=$((pass + 1))
}

# json_get FILE EXPR: print the Python expression EXPR over the JSON in FILE
# (parsed as `j`).
json_get() { "$py" -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"; }

# json_true FILE EXPR: whether EXPR over the JSON in FILE (as j) is true
# (for check: `check NAME json_true FILE EXPR`).
json_true() {
  "$py" -c 'import json, sys; j = json.load(open(sys.argv[1])); sys.exit(0 if eval(sys.argv[2]) else 1)' "$1" "$2"
}

# jcheck FILE EXPR: EXPR over the JSON in FILE (as j) must be true; stops
# the test (printing FILE) otherwise.
jcheck() { json_true "$1" "$2" || { cat "$1" >&2; fail "$1: not true: $2"; }; }

# m3t_wait_file FILE [TRIES]: wait (50 ms steps, 200 by default) until FILE
# is non-empty; 1 when it never is.
m3t_wait_file() {
  local i
  for ((i = 0; i < ${2:-200}; i++)); do [ -s "$1" ] && return 0; sleep 0.05; done
  return 1
}

# m3t_server NAME STORE [ARGS...]: start m3-server on STORE, loopback
# ephemeral port, no HTTP (ARGS may add --http ...), stderr into
# $work/NAME.log; wait until it listens; sets srv (its pid, stopped at exit),
# port and addr (127.0.0.1:PORT). Not in a subshell: the pid must be ours.
m3t_server() {
  local name=$1 store=$2
  shift 2
  "$bin/m3-server" --store "$store" --listen 127.0.0.1:0 --http off --port-file "$work/$name.port" \
    "$@" 2>"$work/$name.log" &
  srv=$!
  m3t_reap "$srv"
  m3t_wait_file "$work/$name.port" || true
  port=$(sed -n 's/^rpc=\([0-9]*\).*/\1/p' "$work/$name.port" 2>/dev/null)
  [ -n "$port" ] || { cat "$work/$name.log" >&2; fail "m3-server on $store did not start"; }
  addr=127.0.0.1:$port
}

# m3t_done: print the counts; the test's exit status (0 only without failures).
m3t_done() {
  echo "$pass checks passed, $fails failed"
  [ "$fails" -eq 0 ]
}
