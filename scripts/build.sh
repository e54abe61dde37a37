#!/usr/bin/env bash
# Configure and build m3store into a build directory.
#   scripts/build.sh [BUILD_DIR] [extra cmake args...]
# BUILD_DIR defaults to build/. -Werror is on: warnings are bugs here.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/build}
shift || true
cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DM3_WERROR=ON "$@" >/dev/null
cmake --build "$dir" -j"$(nproc)"
