#!/usr/bin/env python3
"""Check rendered m3store manifests (kubectl kustomize output, as YAML) for
what the local launcher and docs promise:
  - the pods run exactly the commands `deploy/local/m3-cluster commands`
    prints for the manifests' counts (the commands m3-cluster encode/up and
    the local tests run);
  - the cluster map ConfigMap is what `m3-cluster map` writes for the
    shard and replica counts, with the pods' stable DNS names;
  - the alert rules ConfigMap is deploy/prometheus/m3store-alerts.yml;
  - serving pods: probes on /readyz and /healthz, drain inside the grace
    period, PodDisruptionBudget, per-pod volumes, token from a Secret,
    Prometheus annotations; every pod: non-root, read-only root filesystem,
    no privilege escalation, resource requests.
Usage: check_manifests.py RENDERED.yaml M3_CLUSTER ALERTS.yml
Prints what it checked; exits 1 with every failure listed."""
import json
import re
import subprocess
import sys

import yaml

rendered, launcher, alerts = sys.argv[1:4]
objs = [o for o in yaml.safe_load_all(open(rendered)) if o]
fails = []
checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        fails.append(what)


def by_kind(kind):
    return [o for o in objs if o["kind"] == kind]


def named(kind, name):
    m = [o for o in by_kind(kind) if o["metadata"]["name"] == name]
    return m[0] if m else None


def run(*args):
    return subprocess.run([launcher, *args], check=True, capture_output=True, text=True).stdout


sts = sorted(by_kind("StatefulSet"), key=lambda o: o["metadata"]["name"])
S = len(sts)
check(S >= 1, "no StatefulSet")
check([o["metadata"]["name"] for o in sts] == [f"m3-shard-{s}" for s in range(S)],
      f"StatefulSets are not m3-shard-0..{S - 1}: {[o['metadata']['name'] for o in sts]}")
R = sts[0]["spec"]["replicas"]
check(all(o["spec"]["replicas"] == R for o in sts), "shards have different replica counts")
enc = named("Job", "m3-encode")
N = enc["spec"]["completions"]
check(enc["spec"].get("completionMode") == "Indexed", "m3-encode is not an Indexed Job")
check(enc["spec"].get("parallelism") == N, "m3-encode does not run its N pods at once")

# The commands.
server = sts[0]["spec"]["template"]["spec"]["containers"][0]["command"]
token_file = server[server.index("--token-file") + 1] if "--token-file" in server else None
want = json.loads(run("commands", "--slices", str(N), "--shards", str(S),
                      *(["--token-file", token_file] if token_file else [])))


def cmd_of(obj, container=0):
    c = obj["spec"]["template"]["spec"]["containers"][container]
    return c.get("command", []) + c.get("args", [])


for job, key in (("m3-train-codec", "train-codec"), ("m3-encode", "encode"), ("m3-merge", "merge")):
    got = cmd_of(named("Job", job))
    check(got == want[key], f"Job {job} runs {got}, m3-cluster runs {want[key]}")
for s, o in enumerate(sts):
    got = cmd_of(o)
    check(got == want[f"serve-{s}"], f"StatefulSet m3-shard-{s} runs {got}, m3-cluster runs {want[f'serve-{s}']}")

# The cluster map.
cms = [o for o in by_kind("ConfigMap") if o["metadata"]["name"].startswith("m3-cluster-map")]
check(len(cms) == 1, "no single m3-cluster-map ConfigMap")
expect = run("map", "--shards", str(S), "--replicas", str(R), "--address", "m3-shard-{s}-{r}.m3-shard-{s}:7600")
check(cms[0]["data"]["cluster.json"] == expect,
      f"cluster.json differs from `m3-cluster map --shards {S} --replicas {R}`:\n{cms[0]['data']['cluster.json']}\nvs\n{expect}")
amap = json.loads(cms[0]["data"]["cluster.json"])
for s, o in enumerate(sts):
    svc = named("Service", o["spec"]["serviceName"])
    check(svc is not None and svc["spec"].get("clusterIP") == "None",
          f"m3-shard-{s}: no headless Service {o['spec']['serviceName']}")
    for r, addr in enumerate(amap["shards"][s]["replicas"]):
        host = f"{o['metadata']['name']}-{r}.{o['spec']['serviceName']}"
        check(addr.startswith(host + ":"), f"map address {addr} is not pod {host}")
        port = int(addr.rsplit(":", 1)[1])
        check(any(p["port"] == port for p in svc["spec"]["ports"]), f"{addr}: Service has no port {port}")

# Alert rules.
ams = [o for o in by_kind("ConfigMap") if o["metadata"]["name"].startswith("m3store-alerts")]
check(len(ams) == 1 and ams[0]["data"].get("m3store-alerts.yml") == open(alerts).read(),
      "m3store-alerts ConfigMap differs from deploy/prometheus/m3store-alerts.yml")

# Serving pods.
for s, o in enumerate(sts):
    name = o["metadata"]["name"]
    t = o["spec"]["template"]
    spec = t["spec"]
    c = spec["containers"][0]
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{name}: readiness is not /readyz")
    check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{name}: liveness is not /healthz")
    http_port = [p["containerPort"] for p in c["ports"] if p["name"] == "http"]
    check(http_port and c["command"][c["command"].index("--http") + 1].endswith(f":{http_port[0]}"),
          f"{name}: --http is not the http port")
    drain = int(c["command"][c["command"].index("--drain-timeout-ms") + 1])
    check(spec["terminationGracePeriodSeconds"] * 1000 > drain + 5000,
          f"{name}: drain {drain} ms does not fit terminationGracePeriodSeconds")
    ann = t["metadata"].get("annotations", {})
    check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(http_port[0]),
          f"{name}: no Prometheus scrape annotations")
    pdbs = [p for p in by_kind("PodDisruptionBudget")
            if all(t["metadata"]["labels"].get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())]
    check(len(pdbs) == 1, f"{name}: {len(pdbs)} PodDisruptionBudgets select its pods")
    if pdbs:
        p = pdbs[0]["spec"]
        check(("maxUnavailable" in p and p["maxUnavailable"] < R) or p.get("minAvailable", 0) >= 1,
              f"{name}: the PodDisruptionBudget lets all {R} replicas go")
    check(o["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in [m["name"] for m in c["volumeMounts"]],
          f"{name}: the per-pod volume is not mounted")
    store = c["command"][c["command"].index("--store") + 1]
    check(any(store.startswith(m["mountPath"]) for m in c["volumeMounts"]), f"{name}: --store is not on a volume")
    if token_file:
        vols = {v["name"]: v for v in spec["volumes"]}
        mnt = [m for m in c["volumeMounts"] if token_file.startswith(m["mountPath"] + "/")]
        check(mnt and "secret" in vols.get(mnt[0]["name"], {}), f"{name}: --token-file is not from a Secret")

# Every pod: security context and resources.
for o in objs:
    if o["kind"] not in ("StatefulSet", "Job"):
        continue
    spec = o["spec"]["template"]["spec"]
    name = f"{o['kind']} {o['metadata']['name']}"
    check(spec.get("securityContext", {}).get("runAsNonRoot") is True, f"{name}: runAsNonRoot")
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext", {})
        check(sc.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']}: readOnlyRootFilesystem")
        check(sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}: allowPrivilegeEscalation")
        check(bool(c.get("resources", {}).get("requests")), f"{name}/{c['name']}: no resource requests")

for f in fails:
    print("FAIL:", f)
print(f"{rendered}: {len(objs)} objects, {S} shards x {R} replicas, {N} slices; {checks} checks, {len(fails)} failed")
sys.exit(1 if fails else 0)
