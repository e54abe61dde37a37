#!/usr/bin/env bash
# scripts/install-deps.sh - put every build/test dependency of m3store on a Debian 12
# (bookworm) machine.
#
#   1. Debian packages (APT_PACKAGES below); `apt-get update` only when something is
#      missing.
#   2. The FAISS C API: Debian's libfaiss-dev ships the c_api headers but no
#      libfaiss_c, so libfaiss_c.so is built from Debian's own faiss source package
#      (same version as the installed libfaiss-dev) and installed to /usr/local/lib,
#      with /usr/local/lib/pkgconfig/faiss_c.pc for pkg_check_modules(FAISS_C faiss_c).
#   3. Verification: every package, pkg-config module and tool is checked, and a tiny C
#      program built with `pkg-config --cflags --libs faiss_c` creates the paper's
#      codec index through the C API.
#   4. CUDA (nvcc) is optional and never installed here; its presence is reported.
#
# Idempotent: a second run only checks (a few seconds). Runs as root, or through sudo.
# Environment: M3_FORCE_FAISS_C=1 rebuilds libfaiss_c even when the stamp matches.
set -euo pipefail

# ---------------------------------------------------------------------------------
# Debian packages. One group per comment; append new packages to the right group.
# ---------------------------------------------------------------------------------
APT_PACKAGES=(
  # Toolchain and build system (dpkg-dev: dpkg-source, used by `apt-get source`)
  build-essential cmake pkg-config git ca-certificates dpkg-dev
  # Event loop, catalog, async I/O, CRC32C/erasure helpers
  libuv1-dev librocksdb-dev liburing-dev libisal-dev
  # Vector search and linear algebra (libfaiss-dev: C++ lib + c_api headers)
  libfaiss-dev libopenblas-dev
  # Protocol: protobuf-c runtime and the protoc-c generator
  libprotobuf-c-dev protobuf-c-compiler
  # JSON
  libjansson-dev
  # TLS 1.3 on the RPC port (OpenSSL 3; the openssl CLI makes the tests' certificates)
  libssl-dev openssl
  # Benchmark figures: m3-bench scale plots each figure against N (PNG, no X)
  gnuplot-nox
  # Peer benchmark: Redis serving the same memories from RAM (m3-bench peer redis)
  redis-server libhiredis-dev
  # Tests: unit framework, Python tooling (ctypes binding + numpy)
  libcmocka-dev python3 python3-numpy
  # The PyTorch reference worker (examples/worker.py), checked against the C decoder
  python3-torch
  # Tokenizer parity: spm_train and spm_encode (SentencePiece reference tools)
  sentencepiece
  # deploy/k8s tests: YAML of rendered manifests. node + npm for the schema
  # validator (npm kubernetes-models, installed by tests/k8s on first use) are
  # NODE_PACKAGES below: installed only when the commands are missing, since a
  # machine may carry another nodejs build (with its own npm) that Debian's npm
  # package conflicts with. kubectl (kustomize >= 4) is not in this list:
  # Debian 12's kubernetes-client is too old for the kustomization fields used;
  # the test skips without kubectl.
  python3-yaml
  # Fuzzing: clang with libFuzzer (libclang-rt-dev holds libclang_rt.fuzzer; it is
  # only a Recommends of clang, and we install without recommends)
  clang libclang-rt-dev
)

# Where the FAISS C API goes.
FAISS_C_PREFIX=/usr/local
FAISS_C_LIBDIR=$FAISS_C_PREFIX/lib
FAISS_C_LIB=$FAISS_C_LIBDIR/libfaiss_c.so
FAISS_C_PC=$FAISS_C_LIBDIR/pkgconfig/faiss_c.pc
FAISS_C_LOCAL_HDRS=$FAISS_C_PREFIX/include/faiss/c_api
# Revision of how this script builds libfaiss_c (patches, flags). Bump it to force a
# rebuild everywhere; it is stamped into faiss_c.pc next to the libfaiss-dev version.
#   2: patch faiss_Index_sa_code_size, which in faiss 1.7.3 never stores the size
#      (fixed upstream in 2025: facebookresearch/faiss PR #4492)
FAISS_C_BUILD_REV=2
# deb-src entry added when the machine has none.
SRC_SOURCES_FILE=/etc/apt/sources.list.d/m3store-src.sources
SRC_LIST_FILE=/etc/apt/sources.list.d/m3store-src.list
# The paper's codec (DESIGN.md section 1), used by the verification program.
FAISS_TEST_FACTORY="OPQ20_80,Residual2x14,PQ8x10"
FAISS_TEST_D=80
# pkg-config modules that must resolve after installation.
PKGCONFIG_MODULES=(libuv rocksdb liburing libisal libprotobuf-c jansson cmocka openblas faiss_c hiredis)

export DEBIAN_FRONTEND=noninteractive

log() { printf '[install-deps] %s\n' "$*"; }
die() { printf '[install-deps] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo env DEBIAN_FRONTEND=noninteractive)
else
  die "not root and sudo is not installed: run this script as root"
fi
as_root() { "${SUDO[@]}" "$@"; }

[[ -r /etc/debian_version ]] || die "this script supports Debian 12 (bookworm) only"
case "$(cat /etc/debian_version)" in
  12.*|bookworm*) ;;
  *) log "warning: written for Debian 12, found Debian $(cat /etc/debian_version)" ;;
esac

NPROC=$(nproc 2>/dev/null || echo 1)
apt_update() {
  log "apt-get update"
  as_root apt-get update -qq
}

# ---------------------------------------------------------------------------------
# 1. Debian packages
# ---------------------------------------------------------------------------------
missing_packages() {
  # One dpkg-query for all packages; prints the ones not fully installed.
  local installed
  installed=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${APT_PACKAGES[@]}" 2>/dev/null \
              | awk '$2 == "ii" { print $1 }' || true)
  local p
  for p in "${APT_PACKAGES[@]}"; do
    grep -qxF "$p" <<<"$installed" || printf '%s\n' "$p"
  done
}

# ---------------------------------------------------------------------------------
# 2. FAISS C API helpers
# ---------------------------------------------------------------------------------
# Versions of the installed libfaiss-dev: binary (stamp) and source (what to fetch).
faiss_bin_version() { dpkg-query -W -f='${Version}' libfaiss-dev 2>/dev/null || true; }
faiss_src_version() { dpkg-query -W -f='${source:Version}' libfaiss-dev 2>/dev/null || true; }
upstream_version() { local v=${1#*:}; printf '%s\n' "${v%-*}"; }   # 1.7.3-2 -> 1.7.3

# True when libfaiss_c.so and its .pc exist and were built for this libfaiss-dev.
faiss_c_up_to_date() {
  local binver=$1
  [[ -n $binver && -e $FAISS_C_LIB && -r $FAISS_C_PC ]] || return 1
  grep -qxF "# libfaiss-dev: $binver" "$FAISS_C_PC" || return 1
  grep -qxF "# m3store-build: $FAISS_C_BUILD_REV" "$FAISS_C_PC" || return 1
  [[ -r /usr/include/faiss/c_api/index_factory_c.h || -r $FAISS_C_LOCAL_HDRS/index_factory_c.h ]]
}

have_deb_src_entry() {
  grep -qsE '^[[:space:]]*deb-src[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list && return 0
  grep -qsE '^[[:space:]]*Types:.*[[:space:]]deb-src([[:space:]]|$)' /etc/apt/sources.list.d/*.sources && return 0
  return 1
}

# Add deb-src entries mirroring the machine's Debian deb entries.
add_deb_src_entry() {
  local tmpf
  tmpf=$(mktemp)
  if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
    # deb822: same stanzas (URIs, Suites, Components, Signed-By), Types: deb-src.
    { echo "# Added by m3store scripts/install-deps.sh (source of faiss, for libfaiss_c)."
      sed -E 's/^Types:[[:space:]]*deb[[:space:]]*$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources
    } >"$tmpf"
    grep -q '^Types: deb-src' "$tmpf" || { rm -f "$tmpf"; die "no 'Types: deb' stanza in /etc/apt/sources.list.d/debian.sources"; }
    as_root install -m 0644 "$tmpf" "$SRC_SOURCES_FILE"
    log "added deb-src entries: $SRC_SOURCES_FILE"
  elif grep -qsE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list; then
    # one-line format: every active deb line of sources.list as a deb-src line.
    { echo "# Added by m3store scripts/install-deps.sh (source of faiss, for libfaiss_c)."
      sed -nE 's/^[[:space:]]*deb[[:space:]]+/deb-src /p' /etc/apt/sources.list
    } >"$tmpf"
    as_root install -m 0644 "$tmpf" "$SRC_LIST_FILE"
    log "added deb-src entries: $SRC_LIST_FILE"
  else
    rm -f "$tmpf"
    die "found no Debian apt source to mirror as deb-src (/etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list)"
  fi
  rm -f "$tmpf"
}

have_faiss_source() {  # $1: source version
  apt-cache showsrc faiss 2>/dev/null | grep -xF "Version: $1" >/dev/null
}

build_faiss_c() {
  local binver=$1 srcver=$2
  local upver
  upver=$(upstream_version "$srcver")
  log "building libfaiss_c $upver from Debian source package faiss $srcver (libfaiss-dev $binver)"

  if ! have_faiss_source "$srcver"; then
    have_deb_src_entry || add_deb_src_entry
    apt_update
    have_faiss_source "$srcver" || die "apt has no source package faiss=$srcver (deb-src entries present, after apt-get update). Is the installed libfaiss-dev ($binver) still the archive's version?"
  fi

  local work
  work=$(mktemp -d /tmp/m3store-faiss-c.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  # apt's sandbox user downloads into the directory; let it write there.
  if [[ $(id -u) -eq 0 ]] && id _apt >/dev/null 2>&1; then chown _apt "$work"; fi

  ( cd "$work" && apt-get source -qq "faiss=$srcver" ) >"$work/apt-source.log" 2>&1 \
    || { cat "$work/apt-source.log" >&2; die "apt-get source faiss=$srcver failed"; }
  local src
  src=$(find "$work" -mindepth 2 -maxdepth 2 -type d -name c_api -path "$work/faiss-*/c_api" | head -n1)
  [[ -n $src ]] || { cat "$work/apt-source.log" >&2; die "no faiss-*/c_api directory in the unpacked source"; }
  log "source unpacked: ${src%/c_api}"

  # Patch: faiss_Index_sa_code_size computes sa_code_size() but never stores it in
  # *size (faiss 1.7.3; fixed upstream in 2025). Store it. Fails loudly if the code looks different.
  if grep -qE '^[[:space:]]*reinterpret_cast<const faiss::Index\*>\(index\)->sa_code_size\(\);' "$src/Index_c.cpp"; then
    sed -i -E 's/^([[:space:]]*)(reinterpret_cast<const faiss::Index\*>\(index\)->sa_code_size\(\);)/\1*size = \2/' "$src/Index_c.cpp"
    log "patched c_api/Index_c.cpp: faiss_Index_sa_code_size now stores *size"
  elif ! grep -qE '\*size = .*sa_code_size\(\)' "$src/Index_c.cpp"; then
    die "c_api/Index_c.cpp: cannot find faiss_Index_sa_code_size's body to check/patch"
  fi

  # Upstream's c_api/CMakeLists.txt builds *.cpp, impl/*.cpp and utils/*.cpp; gpu/ is
  # left out (Debian's libfaiss is CPU-only). The sources include their own headers
  # relatively and <faiss/...> from the installed /usr/include, i.e. they compile
  # against the Debian-patched headers that match libfaiss.
  local objdir=$work/obj
  mkdir -p "$objdir"
  local -a srcs
  mapfile -t srcs < <(cd "$src" && find . -maxdepth 2 -name '*.cpp' -not -path './gpu/*' | sort)
  [[ ${#srcs[@]} -gt 0 ]] || die "no c_api sources found in $src"
  log "compiling ${#srcs[@]} c_api sources with g++ -j$NPROC"
  export M3_SRC=$src M3_OBJ=$objdir
  # shellcheck disable=SC2016
  printf '%s\n' "${srcs[@]}" | xargs -P "$NPROC" -I{} sh -c '
      f=${1#./}; o=$M3_OBJ/$(printf %s "$f" | tr / _).o
      g++ -O2 -fPIC -std=c++17 -fopenmp -w -c "$M3_SRC/$f" -o "$o" || { echo "compile failed: $f" >&2; exit 255; }
    ' sh {} || die "compiling the FAISS C API failed"

  # Link. Debian ships libfaiss only as a static archive (built position-independent);
  # it goes into libfaiss_c.so whole, so the process holds exactly one copy of faiss and
  # C code needs no C++/OpenMP/BLAS flags. If a shared libfaiss.so is ever shipped,
  # link against it instead.
  local -a faisslink
  local faiss_so faiss_a
  faiss_so=$(dpkg -L libfaiss-dev | grep -E '/libfaiss\.so$' | head -n1 || true)
  faiss_a=$(dpkg -L libfaiss-dev | grep -E '/libfaiss\.a$' | head -n1 || true)
  if [[ -n $faiss_so ]]; then
    faisslink=(-lfaiss)
  elif [[ -n $faiss_a ]]; then
    # shellcheck disable=SC2054
    faisslink=(-Wl,--whole-archive "$faiss_a" -Wl,--no-whole-archive)
  else
    die "libfaiss-dev ships neither libfaiss.so nor libfaiss.a"
  fi
  g++ -shared -o "$work/libfaiss_c.so" -Wl,-soname,libfaiss_c.so -Wl,--no-undefined \
      "$objdir"/*.o "${faisslink[@]}" -fopenmp -llapack -lblas \
    || die "linking libfaiss_c.so failed"

  # Headers: use Debian's /usr/include/faiss/c_api unless the source's differ.
  local -a hdrs
  local h hdr_differ=0
  mapfile -t hdrs < <(cd "$src" && find . -name '*.h' -not -path './gpu/*' | sed 's|^\./||' | sort)
  for h in "${hdrs[@]}"; do
    cmp -s "$src/$h" "/usr/include/faiss/c_api/$h" || { hdr_differ=1; log "header differs from Debian's: c_api/$h"; }
  done
  local includedir=/usr/include
  if [[ $hdr_differ -eq 1 ]]; then
    log "installing the source's c_api headers to $FAISS_C_LOCAL_HDRS"
    as_root rm -rf "$FAISS_C_LOCAL_HDRS"
    for h in "${hdrs[@]}"; do
      as_root install -D -m 0644 "$src/$h" "$FAISS_C_LOCAL_HDRS/$h"
    done
    as_root touch "$FAISS_C_LOCAL_HDRS/.m3store-installed"
    includedir=$FAISS_C_PREFIX/include
  else
    log "Debian's /usr/include/faiss/c_api headers match the source: using them"
    # Drop a copy this script installed earlier (it would shadow /usr/include).
    if [[ -e $FAISS_C_LOCAL_HDRS/.m3store-installed ]]; then as_root rm -rf "$FAISS_C_LOCAL_HDRS"; fi
  fi

  # pkg-config file; its comment line "# libfaiss-dev: <version>" is the stamp.
  cat >"$work/faiss_c.pc" <<EOF
# Generated by m3store scripts/install-deps.sh from Debian source package faiss $srcver.
# libfaiss-dev: $binver
# m3store-build: $FAISS_C_BUILD_REV
prefix=$FAISS_C_PREFIX
libdir=\${prefix}/lib
includedir=$includedir

Name: faiss_c
Description: FAISS C API (libfaiss_c, built from Debian's faiss $srcver source; contains libfaiss)
Version: $upver
Libs: -L\${libdir} -lfaiss_c -lfaiss
Libs.private: -fopenmp -llapack -lblas -lstdc++ -lm
Cflags: -I\${includedir}
EOF

  as_root install -d -m 0755 "$FAISS_C_LIBDIR" "$FAISS_C_LIBDIR/pkgconfig"
  as_root rm -f "$FAISS_C_LIBDIR"/libfaiss_c.so*
  as_root install -m 0755 "$work/libfaiss_c.so" "$FAISS_C_LIB"
  as_root install -m 0644 "$work/faiss_c.pc" "$FAISS_C_PC"
  as_root ldconfig
  log "installed $FAISS_C_LIB and $FAISS_C_PC"

  rm -rf "$work"
  trap - EXIT
}

# ---------------------------------------------------------------------------------
# 3. Verification
# ---------------------------------------------------------------------------------
verify_faiss_c() {
  local work
  work=$(mktemp -d /tmp/m3store-faiss-check.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  cat >"$work/check.c" <<'EOF'
/* m3store install-deps: FAISS C API smoke test. */
#include <stdio.h>
#include <stdlib.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>

static int fail(const char *what) {
    const char *e = faiss_get_last_error();
    fprintf(stderr, "faiss_c check: %s failed: %s\n", what, e ? e : "(no message)");
    return 1;
}

int main(int argc, char **argv) {
    const char *desc = argc > 1 ? argv[1] : "OPQ20_80,Residual2x14,PQ8x10";
    int d = argc > 2 ? atoi(argv[2]) : 80;
    FaissIndex *idx = NULL;
    if (faiss_index_factory(&idx, d, desc, METRIC_L2) != 0 || idx == NULL)
        return fail("faiss_index_factory");
    /* Sentinel: faiss 1.7.3's unpatched faiss_Index_sa_code_size never writes *size. */
    size_t code_size = (size_t)-1;
    if (faiss_Index_sa_code_size(idx, &code_size) != 0) {
        faiss_Index_free(idx);
        return fail("faiss_Index_sa_code_size");
    }
    if (code_size == (size_t)-1 || code_size == 0) {
        fprintf(stderr, "faiss_c check: faiss_Index_sa_code_size did not store a size "
                        "(unpatched faiss 1.7.3 C API?)\n");
        faiss_Index_free(idx);
        return 1;
    }
    printf("faiss_index_factory(d=%d, \"%s\", METRIC_L2): ok, d=%d is_trained=%d sa_code_size=%zu bytes\n",
           d, desc, (int)faiss_Index_d(idx), faiss_Index_is_trained(idx), code_size);
    fflush(stdout);
    faiss_Index_free(idx);

    /* Small end-to-end round trip: train, sa_encode, sa_decode. */
    /* PCA training runs LAPACK (eigen decomposition) and BLAS; 2000 >= 39 * 16 points
       keep FAISS from warning about too few training points for 4-bit PQ. "np": no
       polysemous training, which IndexPQ otherwise does by default and which is slow
       in Debian's generic (no popcnt instruction) build. */
    enum { TD = 16, TN = 2000 };
    float *x = malloc(sizeof(float) * TD * TN), *y = malloc(sizeof(float) * TD * TN);
    unsigned char *codes = NULL;
    if (!x || !y) return 1;
    unsigned s = 12345u;
    for (size_t i = 0; i < (size_t)TD * TN; i++) {
        s = s * 1103515245u + 12345u;
        x[i] = (float)((s >> 8) & 0xffff) / 65536.0f;
    }
    FaissIndex *small = NULL;
    size_t cs = (size_t)-1;
    int rc = 1;
    if (faiss_index_factory(&small, TD, "PCAR16,PQ4x4np", METRIC_L2) != 0) { fail("factory PCAR16,PQ4x4np"); goto out; }
    if (faiss_Index_train(small, TN, x) != 0) { fail("faiss_Index_train"); goto out; }
    if (faiss_Index_sa_code_size(small, &cs) != 0) { fail("faiss_Index_sa_code_size"); goto out; }
    if (cs == 0 || cs > TD * sizeof(float)) { fprintf(stderr, "faiss_c check: bad sa_code_size %zu\n", cs); goto out; }
    codes = malloc(cs * TN);
    if (!codes) goto out;
    if (faiss_Index_sa_encode(small, TN, x, codes) != 0) { fail("faiss_Index_sa_encode"); goto out; }
    if (faiss_Index_sa_decode(small, TN, codes, y) != 0) { fail("faiss_Index_sa_decode"); goto out; }
    double err = 0, nrm = 0;
    for (size_t i = 0; i < (size_t)TD * TN; i++) {
        err += (double)(x[i] - y[i]) * (x[i] - y[i]);
        nrm += (double)x[i] * x[i];
    }
    printf("train/sa_encode/sa_decode round trip (PCAR16,PQ4x4np, d=%d, n=%d): code %zu B, relative error %.3f\n",
           TD, TN, cs, err / nrm);
    rc = (err / nrm < 0.5) ? 0 : 1;
    if (rc) fprintf(stderr, "faiss_c check: reconstruction error too large\n");
out:
    if (small) faiss_Index_free(small);
    free(codes); free(x); free(y);
    return rc;
}
EOF
  local cflags libs
  cflags=$(pkg-config --cflags faiss_c) || { echo "pkg-config --cflags faiss_c failed" >&2; return 1; }
  libs=$(pkg-config --libs faiss_c) || { echo "pkg-config --libs faiss_c failed" >&2; return 1; }
  # shellcheck disable=SC2086
  cc -std=c11 -O1 -Wall -Werror -o "$work/check" "$work/check.c" $cflags $libs \
    || { echo "compiling the faiss_c check program failed" >&2; return 1; }
  OMP_NUM_THREADS=1 timeout 120 "$work/check" "$FAISS_TEST_FACTORY" "$FAISS_TEST_D" \
    | sed 's/^/[install-deps]   /' || return 1
  rm -rf "$work"
  trap - EXIT
}

verify_all() {
  local errors=0 p m
  local still_missing
  still_missing=$(missing_packages)
  if [[ -n $still_missing ]]; then
    log "MISSING Debian packages: $(tr '\n' ' ' <<<"$still_missing")"
    errors=$((errors + 1))
  fi
  for m in "${PKGCONFIG_MODULES[@]}"; do
    if ! pkg-config --exists "$m"; then log "MISSING pkg-config module: $m"; errors=$((errors + 1)); fi
  done
  for p in cc c++ cmake make pkg-config git protoc-c clang dpkg-source redis-server node npm; do
    if ! command -v "$p" >/dev/null 2>&1; then log "MISSING command: $p"; errors=$((errors + 1)); fi
  done
  # Debian's python3 (a pyenv or venv python earlier in PATH may lack numpy).
  if ! /usr/bin/python3 -c 'import numpy' >/dev/null 2>&1; then
    log "MISSING: /usr/bin/python3 cannot import numpy"; errors=$((errors + 1))
  fi
  if ! /usr/bin/python3 -c 'import torch' >/dev/null 2>&1; then
    log "MISSING: /usr/bin/python3 cannot import torch (python3-torch)"; errors=$((errors + 1))
  fi
  # libFuzzer: link a trivial fuzz target.
  local fz
  fz=$(mktemp -d /tmp/m3store-fuzz-check.XXXXXX)
  printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' >"$fz/f.c"
  if ! clang -fsanitize=fuzzer -o "$fz/f" "$fz/f.c" >"$fz/log" 2>&1; then
    log "MISSING: clang -fsanitize=fuzzer does not link (libFuzzer runtime, package libclang-rt-dev)"
    sed 's/^/[install-deps]   /' "$fz/log" >&2
    errors=$((errors + 1))
  fi
  rm -rf "$fz"
  if [[ ! -e $FAISS_C_LIB ]]; then
    log "MISSING: $FAISS_C_LIB"; errors=$((errors + 1))
  elif ! ldconfig -p | grep 'libfaiss_c\.so ' >/dev/null; then
    # The library is there but the cache is stale (e.g. rebuilt by hand): mend it.
    as_root ldconfig
    if ! ldconfig -p | grep 'libfaiss_c\.so ' >/dev/null; then
      log "MISSING: libfaiss_c.so is not in the ld.so cache even after ldconfig"; errors=$((errors + 1))
    fi
  fi
  if pkg-config --exists faiss_c; then
    log "faiss_c $(pkg-config --modversion faiss_c): $(pkg-config --cflags --libs faiss_c)"
    if ! verify_faiss_c; then
      log "FAILED: the FAISS C API check program"; errors=$((errors + 1))
    fi
  fi
  [[ $errors -eq 0 ]]
}

# ---------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------
log "checking ${#APT_PACKAGES[@]} Debian packages"
mapfile -t MISSING < <(missing_packages)
# node and npm: any build that provides both commands will do (see above).
NODE_PACKAGES=(nodejs npm)
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  MISSING+=("${NODE_PACKAGES[@]}")
fi

# Decide early whether libfaiss_c must be built, so that a needed deb-src entry goes
# in before the (single) apt-get update.
NEED_FAISS_C=0
if [[ ${M3_FORCE_FAISS_C:-0} == 1 ]] || ! faiss_c_up_to_date "$(faiss_bin_version)"; then
  NEED_FAISS_C=1
fi

if [[ ${#MISSING[@]} -gt 0 ]]; then
  log "missing Debian packages: ${MISSING[*]}"
  if [[ $NEED_FAISS_C -eq 1 ]] && ! have_deb_src_entry; then add_deb_src_entry; fi
  apt_update
  log "apt-get install ${MISSING[*]}"
  as_root apt-get install -y -qq --no-install-recommends "${MISSING[@]}"
else
  log "all Debian packages present"
fi

FAISS_BIN_VER=$(faiss_bin_version)
FAISS_SRC_VER=$(faiss_src_version)
[[ -n $FAISS_BIN_VER && -n $FAISS_SRC_VER ]] || die "libfaiss-dev is not installed"
if [[ ${M3_FORCE_FAISS_C:-0} != 1 ]] && faiss_c_up_to_date "$FAISS_BIN_VER"; then
  log "libfaiss_c up to date (libfaiss-dev $FAISS_BIN_VER): $FAISS_C_LIB"
else
  build_faiss_c "$FAISS_BIN_VER" "$FAISS_SRC_VER"
fi

# CUDA: optional, never installed here.
NVCC=$(command -v nvcc 2>/dev/null || true)
[[ -z $NVCC && -x /usr/local/cuda/bin/nvcc ]] && NVCC=/usr/local/cuda/bin/nvcc
if [[ -n $NVCC ]]; then
  log "CUDA (optional): nvcc found at $NVCC ($("$NVCC" --version 2>/dev/null | grep -o 'release [0-9.]*' | head -n1))"
else
  log "CUDA (optional): nvcc not found; GPU code paths will not be built (not installed by this script)"
fi

log "verifying"
if verify_all; then
  log "OK: all dependencies in place (${SECONDS}s)"
else
  die "some dependencies are missing or broken (see above)"
fi
