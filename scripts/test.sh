#!/usr/bin/env bash
# The whole test suite, from a fresh machine: install what is needed, build
# twice (optimized, and with AddressSanitizer + UndefinedBehaviorSanitizer),
# and run every test in both. Long soak variants (label `slow`) run in a short
# form here; set M3_SOAK_SCALE=10 (or more) for the long form.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/install-deps.sh
jobs=$(nproc)
export M3_SOAK_SCALE=${M3_SOAK_SCALE:-1}

echo "== build (RelWithDebInfo, -Werror)"
bash scripts/build.sh build
echo "== tests"
(cd build && ctest --output-on-failure -j"$jobs" --timeout 600)

echo "== build (ASan + UBSan, -Werror)"
bash scripts/build.sh build-asan -DM3_SANITIZE=ON -DM3_CUDA=OFF
echo "== tests under sanitizers"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --output-on-failure -j"$jobs" --timeout 900 -LE slow)
