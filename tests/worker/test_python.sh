#!/usr/bin/env bash
# The Python binding (client/python/m3store) against the C CLI: a real
# m3-server on a raw-f32 store written by worker_mkstore, a retrieval round
# through Python (codes and decoded K/V), compared with `m3 query --json`
# (ids, scores) and `m3 fetch --out` (record bytes), and with the vectors
# the store was written from; the same round through a cluster map; errors
# as M3Error. Skipped (77) when /usr/bin/python3 has no numpy.
. "$(dirname "$0")/../lib/m3test.sh" worker-py
"$py" -c "import numpy" 2>/dev/null || m3t_skip "no numpy for $py"
m3t_need_exec "$bin/m3-server"
: "${M3_LIB:?M3_LIB must name libm3client.so}" "${M3_MKSTORE:?}"
if [ "${M3_SANITIZE:-OFF}" = ON ]; then
  # the library carries ASan/UBSan: python itself must load their runtimes first
  LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
  export LD_PRELOAD ASAN_OPTIONS=detect_leaks=0
fi

mkdir -p "$work/raw" "$work/pq" "$work/rw"
LD_PRELOAD= "$M3_MKSTORE" "$work/raw" raw-f32 60 >/dev/null
LD_PRELOAD= "$M3_MKSTORE" "$work/pq" pq 20 >/dev/null
LD_PRELOAD= "$M3_MKSTORE" "$work/rw" raw-f32 30 >/dev/null
admin_token=python-admin-token-0123456789abcdef
printf '%s\n' "$admin_token" >"$work/admin.token"
LD_PRELOAD= m3t_server raw "$work/raw/store"
raw=$addr
LD_PRELOAD= m3t_server pq "$work/pq/store"
pq=$addr
LD_PRELOAD= m3t_server rw "$work/rw/store" --admin-token-file "$work/admin.token"
rw=$addr

PYTHONPATH="$src/client/python" "$py" "$(dirname "$0")/test_python.py" \
  --bin "$bin" --work "$work" --raw "$raw" --pq "$pq" --rw "$rw" --admin-token "$admin_token"
