#!/usr/bin/env python3
"""Calls between source files, from the object files, and the cycles in them.

  scripts/file_cycles.py OBJ...        e.g. build/client/CMakeFiles/m3client.dir/src/*.o

An edge A -> B means A.o references a symbol that B.o defines (nm: U in A,
T/D/B/R in B): a call, or taking a function's address. Symbols defined by no
file given (libc, other libraries) are left out. Prints every edge, then each
cycle (a strongly connected component of more than one file); exits 1 when
there is one. Static functions never appear, so only calls between files
count, which is what "calls flow one way" is about. Inline functions in
headers are expanded in their callers and make no edge.
"""
import os
import subprocess
import sys


def symbols(obj):
    out = subprocess.run(["nm", "--defined-only", obj], capture_output=True, text=True,
                         check=True).stdout
    defs = {l.split()[-1] for l in out.splitlines() if len(l.split()) == 3 and l.split()[1] in "TDBR"}
    out = subprocess.run(["nm", "--undefined-only", obj], capture_output=True, text=True,
                         check=True).stdout
    undefs = {l.split()[-1] for l in out.splitlines() if l.strip()}
    return defs, undefs


def name(obj):
    base = os.path.basename(obj)
    return base[:-2] if base.endswith(".o") else base


def sccs(nodes, edges):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main(objs):
    if not objs:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    sym = {name(o): symbols(o) for o in objs}
    owner = {}
    for f, (defs, _) in sym.items():
        for s in defs:
            owner[s] = f
    edges = {}
    for f, (_, undefs) in sym.items():
        for s in undefs:
            g = owner.get(s)
            if g and g != f:
                edges.setdefault(f, {}).setdefault(g, set()).add(s)
    for f in sorted(edges):
        for g in sorted(edges[f]):
            print(f"{f} -> {g}: {', '.join(sorted(edges[f][g]))}")
    cycles = [c for c in sccs(sym.keys(), edges) if len(c) > 1]
    for c in cycles:
        print("CYCLE: " + " <-> ".join(c))
    if not cycles:
        print(f"no cycle among {len(sym)} files")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
