#!/usr/bin/env python3
"""Switch latency under proxy load.

Starts `turnout demo` (proxy plus built-in blue/green apps), puts it under keep-alive load with wrk,
then times N `POST /v1/switch` calls over the admin Unix socket (each one validates, writes and
fsyncs the state file before answering). Prints median, p90, p99 and max in milliseconds, and the proxy's throughput meanwhile.

Usage: Benchmarks/switch_latency.py [--switches 500] [--connections 50] [--binary PATH]
"""
import argparse
import http.client
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import UnixHTTPConnection, free_port  # noqa: E402




def percentile(values, p):
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--switches", type=int, default=500)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--binary", default=os.path.join(root, ".build", "release", "turnout"))
    a = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    tmp = tempfile.mkdtemp(prefix="turnout-bench-")
    sock = os.path.join(tmp, "admin.sock")
    port = free_port()
    state = os.path.join(tmp, "state.json")
    print("turnout demo as README ships it, except --log-level warning: the demo logs every request at info "
          "(access_log on), and one log line per request is not what is measured")
    proxy = subprocess.Popen([a.binary, "demo", "--port", str(port), "--admin-socket", sock, "--state-file", state,
                              "--log-level", "warning"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock):
            if time.monotonic() > deadline or proxy.poll() is not None:
                sys.exit("turnout demo did not start")
            time.sleep(0.05)
        duration = max(5, a.switches // 50 + 5)
        wrk = subprocess.Popen(["wrk", "-t1", f"-c{a.connections}", f"-d{duration}s", f"http://127.0.0.1:{port}/"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.0)  # let the load ramp up before measuring
        latencies = []
        conn = UnixHTTPConnection(sock)
        pool = "blue"
        for _ in range(a.switches):
            pool = "green" if pool == "blue" else "blue"
            body = ('{"pool":"%s"}' % pool).encode()
            t0 = time.perf_counter()
            conn.request("POST", "/v1/switch", body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            latencies.append((time.perf_counter() - t0) * 1000)
            if r.status != 200:
                sys.exit(f"switch failed: {r.status}")
            time.sleep(0.005)
        out, _ = wrk.communicate(timeout=duration + 30)
        rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
        print(f"switch latency under load ({a.switches} switches, wrk -t1 -c{a.connections}):")
        print(f"  median {statistics.median(latencies):.3f} ms   p90 {percentile(latencies, 90):.3f} ms   "
              f"p99 {percentile(latencies, 99):.3f} ms   max {max(latencies):.3f} ms")
        print(f"  proxy throughput meanwhile: {rps.group(1) if rps else '?'} requests/s"
              + (f"   errors: {errors.group(0)}" if errors else "   errors: none"))
    finally:
        proxy.send_signal(signal.SIGTERM)
        try:
            proxy.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proxy.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
