#!/usr/bin/env python3
"""What mirroring costs the live path, with a mirror pool that is slow or dead, in one run.

An nginx upstream (blue) serves a tiny answer; the mirror pool (green) is a Python server whose
health check answers at once and whose every other answer takes --mirror-delay seconds (5 s).
Turnout runs with README's defaults (printed below with the one exception), blue live at 100%, and
wrk -t1 -c50 --latency measures the live path in turn, --seconds each, after a warm-up:

  off       no mirroring
  slow      100% of GET copied to green, whose copies wait 5 s (max_in_flight fills up, the rest
            are not copied: counted as busy)
  dead      the same with green's server killed (copies fail, then are not made once the probes
            mark green unhealthy: counted as unavailable)
  off again no mirroring, to show how much the machine drifted over the run

For each: requests/s, p50 and p99 of the live requests, their errors (socket errors and non-2xx),
and the mirror's own counts over the phase (copies answered, with no answer, not copied).

Run: make bench-mirror (or Benchmarks/mirror_overhead.py [--seconds 10] [--repeats 3]).
"""
import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchlib import UnixHTTPConnection, free_port, prepare  # noqa: E402
from compare import Proc, ROOT, run_wrk, start_upstreams, wait_port  # noqa: E402

SETTINGS = [
    ("access_log: false", "one log line per request is not what is measured (the other benchmarks do the same)"),
]


def slow_server(port, delay):
    """An HTTP/1.1 keep-alive server: /healthz at once, anything else after `delay` seconds."""
    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if not head.startswith(b"GET /healthz "):
                    await asyncio.sleep(delay)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ngreen\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def admin(sock, method, path, body=None):
    c = UnixHTTPConnection(sock)
    c.request(method, path, body=json.dumps(body).encode() if body is not None else None,
              headers={"Content-Type": "application/json"} if body is not None else {})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        raise RuntimeError(f"{method} {path}: {r.status} {data!r}")
    return json.loads(data)


def mirror_counts(sock):
    o = admin(sock, "GET", "/v1/mirror")["observed"].get("green", {})
    dropped = o.get("dropped", {})
    return {"answered": o.get("requests", 0) - o.get("errors", 0), "no_answer": o.get("errors", 0),
            "not_copied": sum(dropped.values()), "busy": dropped.get("busy", 0), "unavailable": dropped.get("unavailable", 0)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="runs of the whole sequence; medians are shown")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--mirror-delay", type=float, default=5.0)
    a = ap.parse_args()
    workdir = prepare(SETTINGS)
    results = {}
    upstreams = None
    try:
        upstreams, blue, _, _ = start_upstreams(workdir)
        for rep in range(a.repeats):
            green = free_port()
            # The slow mirror runs in a child process, so that killing it is a real "dead" upstream.
            child = subprocess.Popen([sys.executable, "-c",
                                      f"import sys; sys.path.insert(0, {HERE!r}); import mirror_overhead as m; "
                                      f"m.slow_server({green}, {a.mirror_delay})"],
                                     start_new_session=True)
            wait_port(green)
            port = free_port()
            sock = os.path.join(workdir, f"admin-{rep}.sock")
            conf = os.path.join(workdir, f"turnout-{rep}.yaml")
            with open(conf, "w") as f:
                f.write(f"""listeners:
  - address: 127.0.0.1:{port}
admin:
  socket: {sock}
pools:
  blue: {{ endpoints: ["127.0.0.1:{blue}"] }}
  green: {{ endpoints: ["127.0.0.1:{green}"] }}
routing:
  weights: {{ blue: 100 }}
access_log: false
""")
            binary = os.environ.get("TURNOUT_BIN", os.path.join(ROOT, ".build", "release", "turnout"))
            proxy = Proc(f"turnout-{rep}", [binary, "serve", "--config", conf], {"http": port}, workdir)
            try:
                url = f"http://127.0.0.1:{port}/"
                deadline = time.monotonic() + 20
                while not any(e["healthy"] for e in admin(sock, "GET", "/v1/state")["pools"]["green"]["endpoints"]):
                    if time.monotonic() > deadline:
                        raise RuntimeError("green never became healthy")
                    time.sleep(0.05)

                def phase(name, setup):
                    setup()
                    run_wrk(url, a.warmup, a.connections)
                    before = mirror_counts(sock)
                    r = run_wrk(url, a.seconds, a.connections)
                    after = mirror_counts(sock)
                    r["mirror"] = {k: after[k] - before[k] for k in after}
                    results.setdefault(name, []).append(r)
                    m = r["mirror"]
                    print(f"  run {rep + 1} {name:9} {r['rps']:9.0f} req/s  p50 {r['p50']:.2f} ms  p99 {r['p99']:.2f} ms  "
                          f"errors: {r['errors'] or 'none'}   copies answered {m['answered']}, no answer {m['no_answer']}, "
                          f"not copied {m['not_copied']} (busy {m['busy']}, unavailable {m['unavailable']})", flush=True)

                def kill_green():
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()

                phase("off", lambda: admin(sock, "DELETE", "/v1/mirror"))
                phase("slow", lambda: admin(sock, "PUT", "/v1/mirror", {"pool": "green", "percent": 100}))
                phase("dead", kill_green)
                phase("off again", lambda: admin(sock, "DELETE", "/v1/mirror"))
            finally:
                proxy.stop()
                if child.poll() is None:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
    finally:
        if upstreams:
            upstreams.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    base = statistics.median(r["rps"] for r in results["off"])
    base_p99 = statistics.median(r["p99"] for r in results["off"])
    print()
    print(f"Medians of {a.repeats} runs of {a.seconds}s (wrk -t1 -c{a.connections}, keep-alive, tiny answers; "
          f"mirror copies wait {a.mirror_delay:g} s or the mirror is dead). Ratios to mirroring off:")
    header = f"{'phase':10} {'req/s':>9} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'ratio':>6}  live errors"
    print(header)
    print("-" * len(header))
    for name in ("off", "slow", "dead", "off again"):
        rs = results[name]
        rps = statistics.median(r["rps"] for r in rs)
        p50 = statistics.median(r["p50"] for r in rs)
        p99 = statistics.median(r["p99"] for r in rs)
        errors = "; ".join(sorted({r["errors"] for r in rs if r["errors"]})) or "none"
        print(f"{name:10} {rps:9.0f} {rps / base:6.2f} {p50:7.2f} {p99:7.2f} {p99 / base_p99:6.2f}  {errors}")


if __name__ == "__main__":
    main()
