#!/usr/bin/env python3
"""What the JSON access log costs against the text one, in the same run.

Turnout runs with README's defaults (the access log on, every request one line) in front of an
nginx upstream, with `log_format: text` and then `log_format: json` (the order alternates from
run to run), its log going to a file as a log shipper would read it. wrk -t1 -c50 --latency
measures each for --seconds after a warm-up; the table shows the medians of requests/s, p50, p99,
the CPU seconds Turnout used per 100k requests and the bytes it logged per request, with the
JSON figures as ratios to the text ones. The lines are checked too: every request has its line,
and every JSON line parses.

Run: make bench-logs (or Benchmarks/log_overhead.py [--seconds 10] [--repeats 3]).
"""
import argparse
import json
import os
import shutil
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchlib import free_port, prepare  # noqa: E402
from compare import Proc, ROOT, cpu_seconds, run_wrk, start_upstreams  # noqa: E402

SETTINGS = [
    ("log_format: json", "in the json phase only: what is measured (text is the default)"),
    ("pool green", "the second pool the upstream set starts has weight 0 (blue serves every request)"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--connections", type=int, default=50)
    a = ap.parse_args()
    workdir = prepare(SETTINGS, intro="Turnout runs with the defaults README ships (the access log on), except:")
    results = {"text": [], "json": []}
    upstreams = None
    binary = os.environ.get("TURNOUT_BIN", os.path.join(ROOT, ".build", "release", "turnout"))
    try:
        upstreams, blue, green, _ = start_upstreams(workdir)
        for rep in range(a.repeats):
            for fmt in (("text", "json") if rep % 2 == 0 else ("json", "text")):
                port = free_port()
                name = f"turnout-{fmt}-{rep}"
                conf = os.path.join(workdir, f"{name}.yaml")
                with open(conf, "w") as f:
                    f.write(f"""listeners:
  - address: 127.0.0.1:{port}
admin:
  socket: {workdir}/{name}.sock
pools:
  blue: {{ endpoints: ["127.0.0.1:{blue}"] }}
  green: {{ endpoints: ["127.0.0.1:{green}"] }}
routing:
  weights: {{ blue: 100 }}
log_format: {fmt}
""")
                proxy = Proc(name, [binary, "serve", "--config", conf], {"http": port}, workdir)
                log_path = os.path.join(workdir, f"{name}.log")
                try:
                    url = f"http://127.0.0.1:{port}/"
                    run_wrk(url, a.warmup, a.connections)
                    size_before = os.path.getsize(log_path)
                    before = cpu_seconds(proxy.pids())
                    r = run_wrk(url, a.seconds, a.connections)
                    cpu = cpu_seconds(proxy.pids()) - before
                finally:
                    proxy.stop()
                n = r["requests"]
                with open(log_path, "rb") as f:
                    f.seek(size_before)
                    tail = f.read()
                lines = [line for line in tail.split(b"\n") if b"GET / HTTP/1.1" in line or b'"log":"access"' in line]
                if fmt == "json":
                    for line in tail.split(b"\n"):
                        if line.strip():
                            json.loads(line)
                r["cpu_per_100k"] = cpu / n * 100_000
                r["bytes_per_request"] = len(tail) / max(n, 1)
                r["lines"] = len(lines)
                results[fmt].append(r)
                print(f"  run {rep + 1} {fmt:4} {r['rps']:9.0f} req/s  p50 {r['p50']:.2f} ms  p99 {r['p99']:.2f} ms  "
                      f"cpu {r['cpu_per_100k']:.2f} s/100k  {r['bytes_per_request']:.0f} log bytes/request  "
                      f"access lines {len(lines)} for {n} requests  errors: {r['errors'] or 'none'}", flush=True)
    finally:
        if upstreams:
            upstreams.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def med(fmt, key):
        return statistics.median(r[key] for r in results[fmt])

    print()
    print(f"Medians of {a.repeats} runs of {a.seconds}s each (wrk -t1 -c{a.connections}, keep-alive, tiny answers, "
          "one access line per request written to a file):")
    header = f"{'format':7} {'req/s':>9} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'cpu s/100k':>11} {'ratio':>6} {'bytes/req':>10}"
    print(header)
    print("-" * len(header))
    for fmt in ("text", "json"):
        print(f"{fmt:7} {med(fmt, 'rps'):9.0f} {med(fmt, 'rps') / med('text', 'rps'):6.2f} {med(fmt, 'p50'):7.2f} "
              f"{med(fmt, 'p99'):7.2f} {med(fmt, 'cpu_per_100k'):11.2f} {med(fmt, 'cpu_per_100k') / med('text', 'cpu_per_100k'):6.2f} "
              f"{med(fmt, 'bytes_per_request'):10.0f}")


if __name__ == "__main__":
    main()
