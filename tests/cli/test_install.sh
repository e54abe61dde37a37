#!/usr/bin/env bash
# `cmake --install` into a fresh prefix, then a worker program built only with
# `pkg-config --cflags --libs m3client` against the installed libm3client.so
# and headers talks to a real m3-server: the way a worker links m3store.
set -euo pipefail
bin=${M3_BIN_DIR:?M3_BIN_DIR must point at the build bin/}
build=$(cd "$bin/.." && pwd)
work=$(mktemp -d /tmp/m3-install.XXXXXX)
srv=
cleanup() {
  if [ -n "$srv" ]; then kill -TERM "$srv" 2>/dev/null || true; wait "$srv" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cmake --install "$build" --prefix "$work/prefix" >"$work/install.log"
for f in lib/libm3client.so lib/pkgconfig/m3client.pc include/m3/client.h include/m3/cluster.h \
         include/m3/attn.h include/m3/record.h bin/m3-server bin/m3; do
  [ -e "$work/prefix/$f" ] || { echo "FAIL: $f not installed"; exit 1; }
done

cat >"$work/worker.c" <<'C'
#include <stdio.h>
#include <m3/client.h>

static int on_memory(void *ud, const m3_client_memory *m) {
  (void)ud;
  printf("memory %llu query %u rank %u bytes %zu status %d\n", (unsigned long long)m->chunk_id,
         m->query, m->rank, m->len, m->status);
  return 0;
}

int main(int argc, char **argv) {
  m3_client_options o;
  m3_client_options_init(&o);
  m3_client *c;
  int rc = m3_client_connect(argv[1], &o, &c);
  if (rc) {
    fprintf(stderr, "connect: %s: %s\n", m3_strerror(rc), m3_errmsg());
    return 1;
  }
  uint64_t ids[2] = {3, 4};
  rc = m3_client_fetch(c, ids, 2, 0, on_memory, NULL);
  m3_client_close(c);
  (void)argc;
  return rc ? 1 : 0;
}
C
export PKG_CONFIG_PATH=$work/prefix/lib/pkgconfig
cc -o "$work/worker" "$work/worker.c" $(pkg-config --cflags --libs m3client)

"$bin/m3-bench" gen --store "$work/store" --count 10 --emb-dim 8 >/dev/null
"$bin/m3-server" --store "$work/store" --listen 127.0.0.1:0 --http off \
  --port-file "$work/port" 2>"$work/server.log" &
srv=$!
for _ in $(seq 200); do [ -s "$work/port" ] && break; sleep 0.05; done
port=$(sed -n 's/^rpc=\([0-9]*\).*/\1/p' "$work/port")
LD_LIBRARY_PATH=$work/prefix/lib "$work/worker" "127.0.0.1:$port" >"$work/out"
cat "$work/out"
grep -q "^memory 3 query 0 rank 0 bytes 42304 status 0$" "$work/out" || { echo "FAIL: memory 3"; exit 1; }
grep -q "^memory 4 query 1 rank 0 bytes 42304 status 0$" "$work/out" || { echo "FAIL: memory 4"; exit 1; }
echo "1 passed, 0 failed"
