#!/usr/bin/env bash
# Which libm3client.so the Python binding loads without M3_LIB: only a
# release build folder's (or the installed one), never a sanitizer or fuzz
# build's, which would kill the interpreter; with none usable, a Python
# exception that lists every path tried, why, and says that M3_LIB sets it.
# Fake repository trees under $work hold copies of the binding and of the
# release library; the library found is used against a real m3-server.
# Skipped (77) without numpy, and in sanitizer builds (the copies must be
# release libraries).
. "$(dirname "$0")/../lib/m3test.sh" worker-py-lib
"$py" -c "import numpy" 2>/dev/null || m3t_skip "no numpy for $py"
m3t_need_exec "$bin/m3-server"
: "${M3_LIB:?M3_LIB must name the release libm3client.so}" "${M3_MKSTORE:?}"
[ "${M3_SANITIZE:-OFF}" = ON ] && m3t_skip "a sanitizer build: this test needs a release libm3client.so"

mkdir -p "$work/raw"
"$M3_MKSTORE" "$work/raw" raw-f32 10 >/dev/null
m3t_server raw "$work/raw/store"
"$py" "$(dirname "$0")/test_python_lib.py" --lib "$M3_LIB" --src "$src" --work "$work" --addr "$addr"
