#!/usr/bin/env python3
"""Cluster convergence: from the etcd commit of a switch to every replica routing by it.

Starts real etcd members (Debian's etcd-server) and N Turnout replicas in cluster mode with the
cluster settings README ships (stale_after 10s, heartbeat 1s, lease_ttl 10s), all idle but for
their health probes, in front of two upstreams. Then issues S switches round-robin through the
replicas, each with `?wait=30s`, and for each one reads every replica's registry entry from etcd:
it records when the replica began routing by the new revision (`applied_at_us`).

Reported per switch and summarised (p50, p99, max):
  convergence  last replica's applied_at - the writing replica's applied_at (the writer applies
               the moment etcd's commit answer reaches it, so this is commit -> all routing)
  wait answer  the client's time for `POST /v1/switch?wait=...` (read, compare-and-swap, commit,
               every replica applying, and their registry entries coming back through the watch)
And etcd's load with the replicas idle: requests per second by type (from etcd's /metrics, over
--idle-seconds) and the CPU share of the etcd processes.

Usage: Benchmarks/cluster_convergence.py [--replicas 3] [--switches 100] [--members 3] [--binary PATH]
"""
import argparse
import base64
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import UnixHTTPConnection, free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))




def percentile(values, p):
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def etcd_call(url, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def b64(s):
    return base64.b64encode(s.encode()).decode()


def prefix_end(p):
    b = bytearray(p.encode())
    b[-1] += 1
    return base64.b64encode(bytes(b)).decode()


def admin(sock, method, path, body=None):
    c = UnixHTTPConnection(sock, timeout=60)
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"} if body is not None else {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data) if data else None


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def etcd_counters(url):
    """grpc_server_handled_total by method, and puts, from etcd's Prometheus /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for m in re.finditer(r'grpc_server_handled_total\{[^}]*grpc_method="(\w+)"[^}]*\} (\S+)', text):
        out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(2))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--switches", type=int, default=100)
    ap.add_argument("--members", type=int, default=3, help="etcd members (3 is what production runs)")
    ap.add_argument("--idle-seconds", type=float, default=10)
    ap.add_argument("--binary", default=os.path.join(ROOT, ".build", "release", "turnout"))
    a = ap.parse_args()
    if not shutil.which("etcd"):
        sys.exit("etcd is needed: apt-get install etcd-server")
    tmp = tempfile.mkdtemp(prefix="turnout-cluster-bench-")
    procs = []
    try:
        # etcd members.
        members = [(f"m{i}", free_port(), free_port()) for i in range(a.members)]
        initial = ",".join(f"{n}=http://127.0.0.1:{pp}" for n, _, pp in members)
        etcd_procs = []
        for n, cp, pp in members:
            log = open(os.path.join(tmp, f"{n}.log"), "wb")
            p = subprocess.Popen(["etcd", "--name", n, "--data-dir", os.path.join(tmp, n),
                                  "--listen-client-urls", f"http://127.0.0.1:{cp}", "--advertise-client-urls", f"http://127.0.0.1:{cp}",
                                  "--listen-peer-urls", f"http://127.0.0.1:{pp}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
                                  "--initial-cluster", initial, "--initial-cluster-token", os.path.basename(tmp)],
                                 stdout=log, stderr=subprocess.STDOUT)
            procs.append(p)
            etcd_procs.append(p)
        urls = [f"http://127.0.0.1:{cp}" for _, cp, _ in members]

        def healthy():
            try:
                return all(json.loads(urllib.request.urlopen(u + "/health", timeout=1).read())["health"] == "true" for u in urls)
            except Exception:
                return False
        wait_for(healthy, 30, "etcd")

        # Two upstreams.
        ups = {}
        for name in ("blue", "green"):
            port = free_port()
            p = subprocess.Popen([sys.executable, os.path.join(ROOT, "Tests", "integration", "upstream.py"), "--port", str(port), "--name", name],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            ups[name] = port
        # Replicas, with README's defaults (nothing but name, replica_id and endpoints set).
        cluster = "bench"
        replicas = []
        print(f"{a.replicas} replicas (one process each), etcd {a.members} member(s); cluster settings as README ships them "
              f"(stale_after 10s, heartbeat 1s, lease_ttl 10s); --log-level warning (the access log is not what is measured)")
        for i in range(a.replicas):
            d = os.path.join(tmp, f"r{i}")
            os.mkdir(d)
            cfg = os.path.join(d, "turnout.yaml")
            with open(cfg, "w") as f:
                f.write(f"listeners: [{{ address: 127.0.0.1:0 }}]\nadmin: {{ socket: {d}/admin.sock }}\nstate_file: {d}/state.json\n"
                        f"pools:\n  blue: {{ endpoints: [\"127.0.0.1:{ups['blue']}\"] }}\n  green: {{ endpoints: [\"127.0.0.1:{ups['green']}\"] }}\n"
                        f"cluster:\n  name: {cluster}\n  replica_id: r{i}\n  etcd: {{ endpoints: [{', '.join(json.dumps(u) for u in urls)}] }}\n")
            log = open(os.path.join(d, "turnout.log"), "wb")
            p = subprocess.Popen([a.binary, "serve", "--config", cfg, "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)
            procs.append(p)
            replicas.append((f"r{i}", os.path.join(d, "admin.sock")))
        prefix = f"/turnout/v1/{cluster}/live-replicas/"

        def registry():
            out = etcd_call(urls[0], "/v3/kv/range", {"key": b64(prefix), "range_end": prefix_end(prefix)})
            return {json.loads(base64.b64decode(kv["value"]))["id"]: json.loads(base64.b64decode(kv["value"])) for kv in out.get("kvs", [])}
        wait_for(lambda: os.path.exists(replicas[-1][1]) and len(registry()) == a.replicas, 120, "every replica in the registry")
        wait_for(lambda: all(all(h["healthy"] > 0 for h in r["health"].values()) for r in registry().values()), 60, "healthy pools everywhere")

        # etcd's load with the replicas idle.
        before = {u: etcd_counters(u) for u in urls}
        ticks0 = sum(cpu_ticks(p.pid) for p in etcd_procs)
        t0 = time.monotonic()
        time.sleep(a.idle_seconds)
        elapsed = time.monotonic() - t0
        ticks1 = sum(cpu_ticks(p.pid) for p in etcd_procs)
        after = {u: etcd_counters(u) for u in urls}
        rates = {}
        for u in urls:
            for k, v in after[u].items():
                rates[k] = rates.get(k, 0) + (v - before[u].get(k, 0)) / elapsed
        cpu = (ticks1 - ticks0) / os.sysconf("SC_CLK_TCK") / elapsed * 100
        busy = {k: v for k, v in sorted(rates.items()) if v >= 0.05}
        print(f"etcd with {a.replicas} idle replicas: {sum(busy.values()):.1f} requests/s "
              f"({', '.join(f'{k} {v:.1f}' for k, v in busy.items())}); etcd CPU {cpu:.1f}% of one core (all members)")

        # Switches.
        convergence, answers = [], []
        for i in range(a.switches):
            target = "green" if i % 2 == 0 else "blue"
            rid, sock = replicas[i % len(replicas)]
            t = time.monotonic()
            status, body = admin(sock, "POST", "/v1/switch?wait=30s", {"pool": target})
            answers.append((time.monotonic() - t) * 1000)
            if status != 200:
                sys.exit(f"switch {i} through {rid}: {status} {body}")
            gen = body["generation"]
            reg = wait_for(lambda: (lambda r: r if all(x["applied_revision"] >= gen for x in r.values()) else None)(registry()),
                           10, "registry entries")
            writer = reg[rid]["applied_at_us"]
            last = max(x["applied_at_us"] for x in reg.values() if x["applied_revision"] == gen)
            convergence.append((last - writer) / 1000)
        def summary(v):
            return f"p50 {percentile(v, 50):.2f} ms, p99 {percentile(v, 99):.2f} ms, max {max(v):.2f} ms"
        print(f"{a.switches} switches round-robin through {a.replicas} replicas:")
        print(f"  convergence (commit -> every replica routing by it): {summary(convergence)}")
        print(f"  switch?wait answer (client's view):                  {summary(answers)}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
