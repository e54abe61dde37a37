#!/usr/bin/env python3
"""Which object files call (or take the address of) which: the file-level
call graph of a component, from the symbols nm lists (a file's undefined
symbols that another of the given files defines), and its cycles.

  scripts/objgraph.py [--dot] OBJ...

Prints one "a -> b: sym, ..." line per edge, then every cycle (a strongly
connected set of more than one file), and exits 1 if there is one. Static
functions do not appear in nm, so calls inside a file do not count; a
callback handed over at run time (a function pointer stored in a struct by
a third file) is no edge of the file that calls through it.
"""
import os
import subprocess
import sys


def symbols(obj):
    out = subprocess.run(["nm", "-P", obj], check=True, capture_output=True, text=True).stdout
    defined, undefined = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        name, kind = parts[0], parts[1]
        if kind in ("U", "w", "v"):
            undefined.add(name)
        elif kind.upper() in ("T", "D", "B", "R", "C", "V", "W"):
            defined.add(name)
    return defined, undefined


def name_of(obj):
    base = os.path.basename(obj)
    for ext in (".o", ".obj"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return base


def sccs(nodes, edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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


def main(argv):
    dot = "--dot" in argv
    # CTest passes $<TARGET_OBJECTS:...> as one ;-separated argument.
    objs = [o for a in argv if a != "--dot" for o in a.split(";") if o]
    if not objs:
        print(__doc__, file=sys.stderr)
        return 2
    syms = {name_of(o): symbols(o) for o in objs}
    owner = {}
    for n, (d, _) in syms.items():
        for s in d:
            owner[s] = n
    edges, why = {}, {}
    for n, (_, u) in syms.items():
        for s in u:
            m = owner.get(s)
            if m and m != n:
                edges.setdefault(n, set()).add(m)
                why.setdefault((n, m), []).append(s)
    if dot:
        print("digraph calls {")
        for (a, b) in sorted(why):
            print(f'  "{a}" -> "{b}";')
        print("}")
    else:
        for (a, b) in sorted(why):
            print(f"{a} -> {b}: {', '.join(sorted(why[(a, b)]))}")
    cycles = [c for c in sccs(syms.keys(), edges) if len(c) > 1]
    for c in cycles:
        print("cycle: " + " <-> ".join(c), file=sys.stderr)
    if not cycles:
        print(f"no cycles among {len(syms)} files", file=sys.stderr)
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
