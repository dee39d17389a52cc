#!/usr/bin/env python3
"""Time from a ramp gate breach becoming measurable to the rollback being in force.

Runs Turnout in front of two test upstreams (Tests/integration/upstream.py), starts a ramp of green
at 50% with max_error_rate 5% and min_requests 20, puts it under keep-alive load, then makes green
fail every request. "Measurable" is the moment the client has seen enough failed canary responses
in the step for the gate to be breached (>= min_requests canary responses and > 5% of them 5xx);
"in force" is the time of the `rollback` event (published right after the new routing snapshot).
Repeats --runs times and prints median, p90 and max in milliseconds.

Usage: Benchmarks/ramp_rollback_latency.py [--runs 10]
"""
import argparse
import datetime
import http.client
import json
import os
import socket
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "Tests", "integration"))
from harness import Turnout, Upstream, admin_call, wait_for  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"turnout-rollback-{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    fail = os.path.join(tmp, "fail")
    blue, green = Upstream("blue"), Upstream("green", fail_file=fail)
    print("Turnout as the integration tests start it: health probes every 200ms with rise 1 and fall 1 (so a run "
          "does not wait seconds for probes; the rollback measured here is the gate's, not health's), --log-level notice "
          "(no access lines)")
    t = Turnout({"blue": [blue.address], "green": [green.address]}, args=["--log-level", "notice"])
    results = []  # (completed wall time, pool, status)
    lock = threading.Lock()
    stop = threading.Event()

    def client():
        c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
        while not stop.is_set():
            c.request("GET", "/")
            r = c.getresponse()
            r.read()
            with lock:
                results.append((time.time(), r.getheader("X-Served-By"), r.status))

    events = []
    es = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    es.connect(t.admin_socket)
    es.sendall(b"GET /v1/events HTTP/1.1\r\nHost: t\r\n\r\n")

    def read_events():
        buf = b""
        while True:
            d = es.recv(65536)
            if not d:
                return
            buf += d
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                for line in block.split(b"\n"):
                    if line.startswith(b"data: "):
                        events.append(json.loads(line[6:]))

    threading.Thread(target=read_events, daemon=True).start()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for th in threads:
        th.start()
    latencies = []
    try:
        for run in range(a.runs):
            if os.path.exists(fail):
                os.unlink(fail)
            status, ramp, _ = admin_call(t, "POST", "/v1/ramp", {"pool": "green", "steps": [50, 100], "interval": "10m",
                                                                  "gates": {"max_error_rate": 0.05, "min_requests": 20}})
            assert status == 201, ramp
            step_start = time.time()
            time.sleep(0.3)  # healthy canary traffic first
            with open(fail, "w") as f:
                f.write("1")
            wait_for(lambda: any(e["kind"] == "rollback" and e["time"] and _ts(e["time"]) > step_start for e in events),
                     timeout=30, what="rollback event")
            in_force = max(_ts(e["time"]) for e in events if e["kind"] == "rollback")
            with lock:
                canary = [(ts, st) for ts, pool, st in results if pool == "green" and ts > step_start]
            n = errors = 0
            measurable = None
            for ts, st in sorted(canary):
                n += 1
                errors += st >= 500
                if n >= 20 and errors / n > 0.05:
                    measurable = ts
                    break
            if measurable is not None:
                latencies.append((in_force - measurable) * 1000)
            time.sleep(0.2)
    finally:
        stop.set()
        t.stop()
        blue.kill()
        green.kill()
    latencies.sort()
    print(f"gate breach measurable -> rollback in force ({len(latencies)} runs): median {statistics.median(latencies):.1f} ms   "
          f"p90 {latencies[int(0.9 * (len(latencies) - 1))]:.1f} ms   max {latencies[-1]:.1f} ms")


def _ts(iso):
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    main()
