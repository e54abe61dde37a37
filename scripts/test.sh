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
(cd build && ctest --output-on-failure -j"$jobs" --timeout 600 -LE slow)
echo "== soak and stress tests, short form (M3_SOAK_SCALE=$M3_SOAK_SCALE)"
(cd build && ctest --output-on-failure --timeout 900 -L slow)

echo "== build (ASan + UBSan, -Werror)"
bash scripts/build.sh build-asan -DM3_SANITIZE=ON -DM3_CUDA=OFF
echo "== tests under sanitizers"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  LSAN_OPTIONS=suppressions=$root/tests/lsan.supp \
  ctest --output-on-failure -j"$jobs" --timeout 900 -LE slow)

echo "== fuzz (libFuzzer, short run)"
bash scripts/build.sh build-fuzz -DCMAKE_C_COMPILER=clang -DM3_FUZZ=ON -DM3_TESTS=OFF -DM3_CUDA=OFF
# 30 s a target while there are few; 10 s each once there are many, so the
# whole stage stays at a few minutes (a longer run: docs/OPERATIONS.md).
n_fuzz=$(ls -d tests/fuzz/corpus/*/ | wc -l)
fuzz_default=30
if [ "$n_fuzz" -gt 4 ]; then fuzz_default=10; fi
fuzz_secs=${M3_FUZZ_SECONDS:-$fuzz_default}
for corpus in tests/fuzz/corpus/*/; do
  name=$(basename "$corpus")
  scratch=$(mktemp -d)
  echo "fuzz_$name: ${fuzz_secs}s"
  build-fuzz/bin/fuzz_"$name" -max_total_time="$fuzz_secs" -print_final_stats=0 "$scratch" "$corpus" 2>&1 | tail -n 1
  rm -rf "$scratch"
done
