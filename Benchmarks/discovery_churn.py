#!/usr/bin/env python3
"""Endpoint churn by DNS under load.

Pool blue is discovered by DNS (a dnslib server, Tests/integration/dns.py, TTL 1 s) over nginx
upstreams on 127.0.0.2..(1+N); pool green is one nginx endpoint; the split is 50/50. wrk puts
keep-alive load on Turnout while the DNS answer for blue changes every `--period` seconds
between growing and shrinking sets of addresses. Reports:

- failed requests (wrk's non-2xx and socket errors) during the churn, and throughput compared
  with a run of the same length without churn;
- for each change, the time from the DNS change until every new address is routable (healthy
  in /v1/state) and until every vanished address has left the pool.

Turnout runs with the defaults README ships (discovery min_ttl 1s, health interval 2s, rise 2);
only `access_log: false` differs, as in every benchmark here (one log line per request would
measure the logger).

Usage: Benchmarks/discovery_churn.py [--endpoints 8] [--changes 8] [--period 6] [--connections 50]
"""
import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "Tests", "integration"))
from dns import DNSServer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import UnixHTTPConnection, free_port  # noqa: E402


def state(sock):
    c = UnixHTTPConnection(sock)
    c.request("GET", "/v1/state")
    return json.loads(c.getresponse().read())


def wrk_command(port, seconds, connections):
    return ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"]


def parse_wrk(out):
    """(requests/s, requests, non-2xx answers, socket errors) from wrk's report."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errors = 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors = sum(int(x) for x in m.groups())
    return rps, total, non2xx, errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoints", type=int, default=8)
    ap.add_argument("--changes", type=int, default=8)
    ap.add_argument("--period", type=float, default=6.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--binary", default=os.path.join(ROOT, ".build", "release", "turnout"))
    a = ap.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is needed: make bench-deps")
    tmp = tempfile.mkdtemp(prefix="turnout-churn-")
    port = free_port()
    up_port = free_port()
    green_port = free_port()
    servers = "".join(
        f"  server {{ listen 127.0.0.{i}:{up_port}; location / {{ return 200 'blue-{i}\\n'; }} }}\n"
        for i in range(2, 2 + a.endpoints))
    servers += f"  server {{ listen 127.0.0.1:{green_port}; location / {{ return 200 'green\\n'; }} }}\n"
    nginx_conf = os.path.join(tmp, "nginx.conf")
    with open(nginx_conf, "w") as f:
        f.write(f"worker_processes 1;\ndaemon off;\npid {tmp}/nginx.pid;\nerror_log {tmp}/nginx-error.log;\n"
                f"events {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  keepalive_requests 100000;\n{servers}}}\n")
    nginx = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", nginx_conf, "-p", tmp],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dns = DNSServer()
    addresses = [f"127.0.0.{i}" for i in range(2, 2 + a.endpoints)]
    dns.set_a("blue.bench", addresses[:2], ttl=1)
    sock = os.path.join(tmp, "admin.sock")
    config = os.path.join(tmp, "turnout.yaml")
    with open(config, "w") as f:
        f.write(f"""listeners:
  - address: 127.0.0.1:{port}
admin:
  socket: {sock}
access_log: false
resolvers: ["{dns.address}"]
pools:
  blue:
    endpoints: []
    discovery: {{ dns: blue.bench, type: A, port: {up_port} }}
  green:
    endpoints: ["127.0.0.1:{green_port}"]
routing:
  weights: {{ blue: 50, green: 50 }}
""")
    proc = subprocess.Popen([a.binary, "serve", "--config", config, "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "turnout.log"), "w"))
    print("turnout as README ships it, except access_log: false (a log line per request would measure the logger);")
    print(f"blue discovered by DNS (TTL 1s, min_ttl 1s default) over up to {a.endpoints} nginx endpoints, green static, 50/50;")
    print(f"wrk -t2 -c{a.connections}; the DNS answer changes every {a.period}s")
    try:
        deadline = time.time() + 20
        while True:
            try:
                s = state(sock)
                if sum(e["healthy"] for e in s["pools"]["blue"]["endpoints"]) == 2:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                sys.exit("turnout did not come up with 2 healthy blue endpoints")
            time.sleep(0.1)
        seconds = int(a.changes * a.period)
        steady = parse_wrk(subprocess.run(wrk_command(port, seconds, a.connections), capture_output=True, text=True, check=True).stdout)
        # The same load again while the answer changes: grow and shrink in turns.
        sizes = [a.endpoints, 1, a.endpoints // 2, a.endpoints, 2, a.endpoints - 1, 1, a.endpoints]
        load = subprocess.Popen(wrk_command(port, seconds + 4, a.connections), stdout=subprocess.PIPE, text=True)
        joins, leaves = [], []
        current = set(addresses[:2])
        for k in range(a.changes):
            n = sizes[k % len(sizes)]
            start = (k * 3) % a.endpoints
            wanted = {addresses[(start + j) % a.endpoints] for j in range(n)}
            changed_at = time.monotonic()
            dns.set_a("blue.bench", sorted(wanted), ttl=1)
            added, removed = wanted - current, current - wanted
            pending_add, pending_remove = {f"{x}:{up_port}" for x in added}, {f"{x}:{up_port}" for x in removed}
            period_end = changed_at + a.period
            while (pending_add or pending_remove) and time.monotonic() < period_end:
                eps = {e["address"]: e for e in state(sock)["pools"]["blue"]["endpoints"]}
                now = time.monotonic()
                for x in list(pending_add):
                    if x in eps and eps[x]["healthy"] and not eps[x]["leaving"]:
                        joins.append(now - changed_at)
                        pending_add.discard(x)
                for x in list(pending_remove):
                    if x not in eps:
                        leaves.append(now - changed_at)
                        pending_remove.discard(x)
                time.sleep(0.05)  # polling the state every 50 ms is the measurement's resolution
            if pending_add or pending_remove:
                print(f"  change {k + 1}: not settled within {a.period}s: joining {sorted(pending_add)}, leaving {sorted(pending_remove)}")
            current = wanted
            remaining = period_end - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)  # the churn's cadence, not a wait for a condition
        rps, total, non2xx, errs = parse_wrk(load.communicate()[0])
        print(f"steady: {steady[0]:.0f} req/s, {steady[1]} requests, {steady[2]} non-2xx, {steady[3]} socket errors")
        print(f"churn:  {rps:.0f} req/s, {total} requests, {non2xx} non-2xx, {errs} socket errors "
              f"({a.changes} DNS changes, {len(joins)} addresses joined, {len(leaves)} left)")

        def summary(xs):
            if not xs:
                return "none"
            xs = sorted(xs)
            return f"median {statistics.median(xs):.2f}s, max {xs[-1]:.2f}s"
        print(f"DNS change -> new address taking traffic: {summary(joins)} (TTL 1s + 2 probes 2s apart)")
        print(f"DNS change -> vanished address out of the pool: {summary(leaves)}")
        s = state(sock)
        print(f"discovery: {s['pools']['blue']['discovery']['resolutions']} resolutions, {s['pools']['blue']['discovery']['errors']} errors")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=40)
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=10)
        dns.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
