#!/usr/bin/env bash
# `cmake --install` into a fresh prefix, then a worker program built only with
# `pkg-config --cflags --libs m3client` against the installed libm3client.so
# and headers talks to a real m3-server: the way a worker links m3store.
. "$(dirname "$0")/../lib/m3test.sh" install
build=$(cd "$bin/.." && pwd)

cmake --install "$build" --prefix "$work/prefix" >"$work/install.log"
for f in lib/libm3client.so lib/pkgconfig/m3client.pc include/m3/client.h include/m3/cluster.h \
         include/m3/attn.h include/m3/record.h bin/m3-server bin/m3; do
  [ -e "$work/prefix/$f" ] || fail "$f not installed"
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
m3t_server server "$work/store"
LD_LIBRARY_PATH=$work/prefix/lib "$work/worker" "$addr" >"$work/out"
cat "$work/out"
check "memory 3" grep -q "^memory 3 query 0 rank 0 bytes 42304 status 0$" "$work/out"
check "memory 4" grep -q "^memory 4 query 1 rank 0 bytes 42304 status 0$" "$work/out"
m3t_done
