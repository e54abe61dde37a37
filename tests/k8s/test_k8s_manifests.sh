#!/usr/bin/env bash
# deploy/k8s without a cluster: the base and the example overlay render with
# `kubectl kustomize`; every object validates against the Kubernetes OpenAPI
# schemas (the npm package kubernetes-models, installed here on first use
# into $M3_K8S_VALIDATOR_DIR, default ~/.cache/m3store/k8s-validate); the
# pods run the commands deploy/local/m3-cluster runs and the cluster map is
# what it writes (check_manifests.py); a broken object and a changed command
# are caught (so the checks can fail); the Containerfile's runtime stage
# installs the packages of every library the built binaries load.
. "$(dirname "$0")/../lib/m3test.sh" k8s
here=$src/tests/k8s
command -v kubectl >/dev/null || m3t_skip "no kubectl (kustomize >= 4)"
command -v node >/dev/null && command -v npm >/dev/null || m3t_skip "no node/npm"
"$py" -c 'import yaml' 2>/dev/null || m3t_skip "no python3-yaml"

vdir=${M3_K8S_VALIDATOR_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/m3store/k8s-validate}
if [ ! -f "$vdir/node_modules/kubernetes-models/package.json" ]; then
  mkdir -p "$vdir"
  echo "installing the validator: npm install kubernetes-models@5.1.0 into $vdir"
  (cd "$vdir" && npm install --no-audit --no-fund --loglevel=error kubernetes-models@5.1.0 >"$work/npm.log" 2>&1) ||
    { cat "$work/npm.log"; m3t_skip "npm could not install kubernetes-models (no registry?)"; }
fi
validate() { node "$here/validate.mjs" "$1" "$vdir/node_modules"; }
to_json() { python3 -c 'import json,sys,yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], open(sys.argv[2], "w"))' "$1" "$2"; }

cluster=$src/deploy/local/m3-cluster
alerts=$src/deploy/prometheus/m3store-alerts.yml
cmp -s "$alerts" "$src/deploy/k8s/base/m3store-alerts.yml" ||
  fail "deploy/k8s/base/m3store-alerts.yml is not a copy of deploy/prometheus/m3store-alerts.yml"
for k in base overlays/example; do
  name=${k//\//-}
  kubectl kustomize "$src/deploy/k8s/$k" >"$work/$name.yaml" || fail "kubectl kustomize deploy/k8s/$k"
  to_json "$work/$name.yaml" "$work/$name.json"
  validate "$work/$name.json" >"$work/$name.valid" || { cat "$work/$name.valid"; fail "deploy/k8s/$k: invalid objects"; }
  echo "deploy/k8s/$k: $(grep -c '^ok' "$work/$name.valid") objects valid"
  python3 "$here/check_manifests.py" "$work/$name.yaml" "$cluster" "$alerts" || fail "deploy/k8s/$k: checks"
done

# The checks can fail: a broken StatefulSet, a changed command, a stale map.
python3 - "$work/base.json" "$work/broken.json" <<'PY'
import json, sys
objs = json.load(open(sys.argv[1]))
for o in objs:
    if o["kind"] == "StatefulSet":
        o["spec"]["replicas"] = "two"
        del o["spec"]["template"]["spec"]["containers"][0]["name"]
json.dump(objs, open(sys.argv[2], "w"))
PY
if validate "$work/broken.json" >"$work/broken.valid"; then fail "the validator accepted a broken StatefulSet"; fi
grep -q "INVALID StatefulSet m3-shard-0" "$work/broken.valid" || fail "broken StatefulSet not named"
sed 's|- auto/3|- auto/4|' "$work/base.yaml" >"$work/cmd.yaml"
if python3 "$here/check_manifests.py" "$work/cmd.yaml" "$cluster" "$alerts" >"$work/cmd.out"; then
  fail "a changed encode command passed"; fi
grep -q "Job m3-encode runs" "$work/cmd.out" || { cat "$work/cmd.out"; fail "changed command not named"; }
sed 's|m3-shard-1-1.m3-shard-1:7600|m3-shard-1-1.m3-shard-1:7700|' "$work/base.yaml" >"$work/map.yaml"
if python3 "$here/check_manifests.py" "$work/map.yaml" "$cluster" "$alerts" >"$work/map.out"; then
  fail "a changed cluster map passed"; fi

# Containerfile: Debian 12, two stages, the runtime installs every package
# whose libraries m3-server, m3-encode and m3 load (libc6 is in the base).
cf=$src/deploy/k8s/Containerfile
[ "$(grep -c '^FROM docker.io/library/debian:12' "$cf")" = 2 ] || fail "Containerfile: not two Debian 12 stages"
runtime=$(sed -n '/^FROM docker.io\/library\/debian:12-slim/,$p' "$cf")
grep -q 'COPY --from=build /out/ /' <<<"$runtime" || fail "Containerfile: runtime copies more than /out"
grep -q -- '-DM3_CUDA=OFF' "$cf" || fail "Containerfile: not a CPU build (-DM3_CUDA=OFF)"
need=$(for b in m3-server m3-encode m3; do ldd "$bin/$b" | awk '/=>/{print $3}'; done | sort -u |
  while read -r f; do
    p=$(dpkg -S "$f" 2>/dev/null | head -1 | cut -d: -f1)
    [ -n "$p" ] || p=$(dpkg -S "*/$(basename "$f")" 2>/dev/null | head -1 | cut -d: -f1)
    echo "${p:-$f}"
  done | sort -u)
for p in $need; do
  case $p in
    libc6) ;;
    # sanitizer runtimes: in the ASan/UBSan test build only, never in the image
    libasan*|libubsan*) ;;
    # the CUDA toolkit's libraries (cuBLAS, cudart) where this build has CUDA:
    # the image is a CPU build (-DM3_CUDA=OFF, checked below)
    /usr/local/cuda*) ;;
    /usr/local/lib/libfaiss_c.so) grep -q "/out/usr/local/lib/libfaiss_c.so" "$cf" || fail "Containerfile: libfaiss_c.so not in /out" ;;
    *) grep -qw -- "$p" <<<"$(grep -A4 'apt-get install' <<<"$runtime")" || fail "Containerfile: runtime lacks $p" ;;
  esac
done
echo "Containerfile: runtime packages cover $(wc -w <<<"$need") libraries' packages"
echo "k8s manifests: render, validate, run m3-cluster's commands, map equal"
