#!/usr/bin/env python3
"""The file-level call graph of built libraries, and its cycles.

    python3 scripts/callgraph.py build/encoder/CMakeFiles/m3encoder.dir \
        build/encoder/CMakeFiles/m3model.dir build/worker/CMakeFiles/m3decode.dir

Reads every object file (.o) under the given CMake target folders with nm:
a file calls another when it has an undefined symbol the other defines.
Prints each file's callees, then the cycles ("none" when calls flow one
way). Static functions are invisible to nm, so this sees calls between
files only, which is what the layering rule is about.
"""
import subprocess, sys, glob, os, collections
objs = [o for d in sys.argv[1:] for o in glob.glob(d + '/**/*.o', recursive=True)]
defs, uses = {}, collections.defaultdict(set)
for o in objs:
    out = subprocess.run(['nm', o], capture_output=True, text=True).stdout
    name = os.path.basename(o).replace('.c.o', '').replace('.cu.o', '')
    for line in out.splitlines():
        p = line.split()
        if len(p) == 3 and p[1] in 'TDRB': defs[p[2]] = name
        elif len(p) == 2 and p[0] == 'U': uses[name].add(p[1])
edges = collections.defaultdict(set)
for f, us in uses.items():
    for u in us:
        g = defs.get(u)
        if g and g != f: edges[f].add(g)
# cycles via DFS
color, cyc = {}, []
def dfs(n, path):
    color[n] = 1
    for m in edges[n]:
        if color.get(m) == 1: cyc.append(path[path.index(m):] + [m])
        elif not color.get(m): dfs(m, path + [m])
    color[n] = 2
for n in list(edges):
    if not color.get(n): dfs(n, [n])
for f in sorted(edges): print(f, '->', ' '.join(sorted(edges[f])))
print('cycles:', cyc or 'none')
