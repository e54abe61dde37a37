"""Checks of the binding's library search, run by test_python_lib.sh (see
there). Each case is a fresh interpreter over a fake repository tree."""
import argparse
import json
import os
import shutil
import subprocess
import sys

ap = argparse.ArgumentParser()
for a in ("lib", "src", "work", "addr"):
    ap.add_argument("--" + a, required=True)
args = ap.parse_args()
fails = checks = 0


def check(name, cond, detail=""):
    global fails, checks
    checks += 1
    if not cond:
        fails += 1
        print("FAIL:", name, detail, file=sys.stderr)


CACHE = {
    "release": "CMAKE_BUILD_TYPE:STRING=RelWithDebInfo\nM3_SANITIZE:BOOL=OFF\nM3_FUZZ:BOOL=OFF\n",
    "fuzz": "CMAKE_BUILD_TYPE:STRING=RelWithDebInfo\nM3_SANITIZE:BOOL=OFF\nM3_FUZZ:BOOL=ON\n",
    "asan": "CMAKE_BUILD_TYPE:STRING=RelWithDebInfo\nM3_SANITIZE:BOOL=ON\n",
    "debug": "CMAKE_BUILD_TYPE:STRING=Debug\nM3_SANITIZE:BOOL=OFF\n",
}


def tree(name, builds):
    """work/name: client/python/m3store (a copy of the binding) and one
    build folder per (folder, cache kind or None, sanitizer mark or None),
    newest last in mtime order."""
    root = os.path.join(args.work, name)
    shutil.copytree(os.path.join(args.src, "client", "python", "m3store"),
                    os.path.join(root, "client", "python", "m3store"))
    for i, (folder, cache, mark) in enumerate(builds):
        d = os.path.join(root, folder)
        os.makedirs(os.path.join(d, "lib"))
        if cache:
            with open(os.path.join(d, "CMakeCache.txt"), "w") as f:
                f.write("# This is the CMakeCache file.\n" + CACHE[cache])
        so = os.path.join(d, "lib", "libm3client.so")
        shutil.copyfile(args.lib, so)
        if mark:  # what an ASan build carries (the ELF loader ignores trailing bytes)
            with open(so, "ab") as f:
                f.write(b"\0" + mark + b"\0")
        os.utime(so, (1_000_000 + i, 1_000_000 + i))
    return root


PROBE = r'''
import ctypes.util, json, sys
ctypes.util.find_library = lambda name: None  # no installed libm3client: the tree's builds only
import m3store
try:
    lib = m3store.load_library()
except m3store.M3LibraryError as e:
    print(json.dumps({"error": str(e), "tried": e.tried, "import_error": isinstance(e, ImportError)}))
    sys.exit(0)
with m3store.Client(server=sys.argv[1]) as c:
    print(json.dumps({"loaded": lib._name, "records": c.info["records"]}))
'''


def probe(root, env_lib=None):
    env = dict(os.environ)
    env.pop("M3_LIB", None)
    env.pop("LD_PRELOAD", None)
    if env_lib:
        env["M3_LIB"] = env_lib
    env["PYTHONPATH"] = os.path.join(root, "client", "python")
    p = subprocess.run([sys.executable, "-c", PROBE, args.addr], env=env, capture_output=True,
                       text=True)
    if p.returncode != 0:
        return {"died": p.returncode, "stderr": p.stderr[-2000:]}
    return json.loads(p.stdout)


# 1. a fuzz build (newest) and a release build: the release one, which works.
root = tree("fuzz-and-release", [("build", "release", None), ("build-fuzz", "fuzz", None)])
r = probe(root)
want = os.path.join(root, "build", "lib", "libm3client.so")
check("release build chosen over a newer fuzz build", r.get("loaded") == want, r)
check("the library found serves", r.get("records") == 10, r)

# 2. nothing usable: a clear exception, every path and why, and M3_LIB named.
root = tree("none-usable", [("build-asan", "asan", None), ("build-dbg", "debug", None),
                            ("build-x", None, None), ("build-marked", "release", b"__asan_init")])
r = probe(root)
check("no usable library: M3LibraryError, not a dead interpreter", "error" in r, r)
if "error" in r:
    msg = r["error"]
    check("it is an ImportError", r["import_error"], r)
    check("the message says M3_LIB sets it", "M3_LIB" in msg, msg)
    why = dict(r["tried"])
    for folder, reason in (("build-asan", "M3_SANITIZE=ON"), ("build-dbg", "CMAKE_BUILD_TYPE 'Debug'"),
                           ("build-x", "no CMakeCache.txt"), ("build-marked", "sanitizer build (__asan_init)")):
        p = os.path.join(root, folder, "lib", "libm3client.so")
        check("%s tried and why" % folder, p in why and reason in why[p] and p in msg, why.get(p))
    p = os.path.join(root, "client", "python", "m3store", "libm3client.so")
    check("the copy beside the package tried", why.get(p) == "no such file", why.get(p))

# 3. M3_LIB naming a sanitizer build without its runtime: refused, with the way out.
marked = os.path.join(root, "build-marked", "lib", "libm3client.so")
r = probe(root, env_lib=marked)
check("M3_LIB sanitizer build refused", "error" in r and "LD_PRELOAD" in r["error"] and
      marked in r["error"], r)

# 4. M3_LIB naming the release library: exactly that one.
r = probe(root, env_lib=args.lib)
check("M3_LIB release library loaded", r.get("loaded") == args.lib and r.get("records") == 10, r)

print("%d checks, %d failed" % (checks, fails))
sys.exit(1 if fails else 0)
