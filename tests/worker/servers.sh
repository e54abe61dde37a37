# Sourced by the worker test scripts: a mktemp work dir, m3-servers on
# loopback (ephemeral ports) stopped and the dir removed at exit.
#   servers_init PREFIX        sets $work, installs the EXIT trap
#   start_server STORE NAME    starts m3-server on STORE; sets $addr
# Needs $bin (the build's bin/). m3-server runs with LD_PRELOAD cleared (a
# sanitized Python test preloads the runtimes for python only).
servers_init() {
  work=$(mktemp -d "/tmp/$1.XXXXXX")
  pids=()
  trap servers_cleanup EXIT
}

servers_cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}

start_server() { # no subshell: the pid is ours
  local store=$1 name=$2 port
  LD_PRELOAD= "$bin/m3-server" --store "$store" --listen 127.0.0.1:0 --http off \
    --port-file "$work/$name.port" >"$work/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do [ -s "$work/$name.port" ] && break; sleep 0.05; done
  port=$(sed -n 's/^rpc=\([0-9]*\).*/\1/p' "$work/$name.port")
  [ -n "$port" ] || { echo "m3-server did not start" >&2; cat "$work/$name.log" >&2; exit 1; }
  addr="127.0.0.1:$port"
}
