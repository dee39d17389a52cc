#!/usr/bin/env python3
"""Turnout side by side with HAProxy, nginx and nghttpx, one worker/thread each.

An nginx upstream pair (blue, green) serves a tiny answer and a 64 KiB file on loopback. Each
proxy splits blue=90/green=10 with keep-alive to the upstreams. Loads, one after another:

  small    wrk -t1 -c50, keep-alive, tiny responses
  64k      wrk -t1 -c50, keep-alive, 64 KiB responses
  close    wrk -t1 -c50 with "Connection: close" (a new connection per request)
  h2c      h2load -c10 -m10 over h2c (Turnout against nghttpx)

--scaling adds Turnout with workers: 2 to the small load, and a load where the proxy, not the
load generator, is the bottleneck, to compare Turnout's workers: 1 and workers: 2:

  tls-new  four `openssl s_time -new -www /` clients in parallel: every request on a new TLS
           connection without session resumption, so every one costs the proxy an RSA-4096
           signature, several times what the client spends checking it. (wrk would resume TLS
           sessions, and then it costs as much CPU as the proxy: on two cores it is the bottleneck.)

Every measurement is repeated (--repeats) with the proxies in rotating order; the table shows
medians: requests/s, p50 and p99 latency, CPU seconds the proxy used per 100k requests, peak RSS,
and each figure as a ratio to HAProxy's (to nghttpx's for h2c). Run: make bench.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def process_tree(pid):
    """pid and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except OSError:
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / TICKS


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Proc:
    def __init__(self, name, args, port, workdir, env=None):
        self.name = name
        self.log = open(os.path.join(workdir, f"{name}.log"), "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self.port = port
        wait_port(port)
        time.sleep(0.3)  # let health checks settle (every proxy probes or connects lazily)

    def pids(self):
        return process_tree(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def start_upstreams(workdir):
    blue, green = free_port(), free_port()
    static = os.path.join(workdir, "static")
    os.makedirs(static, exist_ok=True)
    with open(os.path.join(static, "64k.bin"), "wb") as f:
        f.write(bytes(range(256)) * 256)
    conf = os.path.join(workdir, "upstreams.conf")
    servers = ""
    for name, port in (("blue", blue), ("green", green)):
        servers += f"""
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location = / {{ default_type text/plain; return 200 "{name}\\n"; }}
        location = /healthz {{ default_type text/plain; return 200 "ok\\n"; }}
        location /static/ {{ alias {static}/; }}
    }}"""
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
pid {workdir}/upstreams.pid;
error_log {workdir}/upstreams.err warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path {workdir}/tmp; proxy_temp_path {workdir}/tmp; fastcgi_temp_path {workdir}/tmp;
    uwsgi_temp_path {workdir}/tmp; scgi_temp_path {workdir}/tmp;
{servers}
}}
""")
    os.makedirs(os.path.join(workdir, "tmp"), exist_ok=True)
    p = Proc("upstreams", ["nginx", "-c", conf, "-p", workdir], blue, workdir)
    wait_port(green)
    return p, blue, green


def make_certificate(workdir):
    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    if not os.path.exists(cert):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:4096", "-nodes", "-subj", "/CN=localhost",
                        "-days", "2", "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def start_turnout(workdir, blue, green, workers=1, tls=False):
    port = free_port()
    name = f"{'tls-' if tls else ''}{workers}"
    conf = os.path.join(workdir, f"turnout-{name}.yaml")
    tls_line = ""
    if tls:
        cert, key = make_certificate(workdir)
        tls_line = f"\n    tls: {{ certificate: {cert}, private_key: {key} }}"
    with open(conf, "w") as f:
        f.write(f"""workers: {workers}
listeners:
  - address: 127.0.0.1:{port}{tls_line}
admin:
  socket: {workdir}/turnout-admin-{name}.sock
pools:
  # Enough idle upstream connections for 100 concurrent requests (h2c: 10 clients x 10 streams);
  # HAProxy and nginx are configured to reuse theirs as well.
  blue: {{ endpoints: ["127.0.0.1:{blue}"], max_idle_connections: 256 }}
  green: {{ endpoints: ["127.0.0.1:{green}"], max_idle_connections: 256 }}
routing:
  weights: {{ blue: 90, green: 10 }}
health: {{ interval: 2s, timeout: 1s, rise: 1, fall: 3 }}
limits: {{ max_client_connections: 8000 }}
access_log: false
""")
    binary = os.environ.get("TURNOUT_BIN", os.path.join(ROOT, ".build", "release", "turnout"))
    return Proc(f"turnout-{'tls-' if tls else ''}w{workers}", [binary, "serve", "--config", conf, "--log-level", "warning"],
                port, workdir)


def start_haproxy(workdir, blue, green):
    port = free_port()
    conf = os.path.join(workdir, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(f"""global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    balance roundrobin
    server blue 127.0.0.1:{blue} weight 90 check inter 2s
    server green 127.0.0.1:{green} weight 10 check inter 2s
""")
    return Proc("haproxy", ["haproxy", "-db", "-f", conf], port, workdir)


def start_nginx(workdir, blue, green):
    port = free_port()
    conf = os.path.join(workdir, "nginx-proxy.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
pid {workdir}/nginx-proxy.pid;
error_log {workdir}/nginx-proxy.err warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 8000; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path {workdir}/tmp; proxy_temp_path {workdir}/tmp; fastcgi_temp_path {workdir}/tmp;
    uwsgi_temp_path {workdir}/tmp; scgi_temp_path {workdir}/tmp;
    upstream be {{
        server 127.0.0.1:{blue} weight=90;
        server 127.0.0.1:{green} weight=10;
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
""")
    return Proc("nginx", ["nginx", "-c", conf, "-p", workdir], port, workdir)


def start_nghttpx(workdir, blue, green):
    port = free_port()
    return Proc("nghttpx", ["nghttpx", "--workers=1", f"--frontend=127.0.0.1,{port};no-tls",
                            f"--backend=127.0.0.1,{blue};;proto=http/1.1;weight=90",
                            f"--backend=127.0.0.1,{green};;proto=http/1.1;weight=10",
                            "--no-ocsp", "--log-level=ERROR", "--accesslog-file=/dev/null",
                            f"--pid-file={workdir}/nghttpx.pid", "--backend-keep-alive-timeout=300s"],
                port, workdir)


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value if unit == "ms" else value * 1000


def run_wrk(port, path, seconds, connections, extra=()):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *extra,
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = (errors.group(1) if errors else "") + (f" non-2xx {non2xx.group(1)}" if non2xx else "")
    return {"rps": rps, "requests": total, "p50": p50, "p99": p99, "errors": bad.strip()}


def run_s_time(port, seconds, clients=4):
    procs = [subprocess.Popen(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", str(seconds),
                               "-www", "/"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(clients)]
    started = time.monotonic()
    outs = [p.communicate(timeout=seconds + 60)[0] for p in procs]
    elapsed = time.monotonic() - started
    total = 0
    for out in outs:
        m = re.search(r"(\d+) connections in [\d.]+s;", out)
        if not m:
            return {"rps": 0, "requests": 0, "p50": 0, "p99": 0, "errors": "s_time failed: " + out[-200:]}
        total += int(m.group(1))
    # s_time gives no latency distribution.
    return {"rps": total / elapsed, "requests": total, "p50": 0, "p99": 0, "errors": ""}


def run_h2load(port, seconds, workdir):
    log = os.path.join(workdir, "h2load.log")
    out = subprocess.run(["h2load", "-c10", "-m10", "-D", str(seconds), "--log-file", log,
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    times = []
    with open(log) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                times.append(int(parts[2]) / 1000)
    times.sort()
    p = lambda q: times[min(len(times) - 1, int(q * len(times)))] if times else 0
    failed = int(m.group(4)) + int(m.group(5))
    return {"rps": rps, "requests": int(m.group(3)), "p50": p(0.5), "p99": p(0.99),
            "errors": f"{failed} failed" if failed else ""}


def measure(proxy, load, seconds, connections, workdir):
    pids = proxy.pids()
    peak = [rss_kib(pids)]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pids))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    before = cpu_seconds(pids)
    try:
        if load == "small":
            r = run_wrk(proxy.port, "/", seconds, connections)
        elif load == "64k":
            r = run_wrk(proxy.port, "/static/64k.bin", seconds, connections)
        elif load == "close":
            r = run_wrk(proxy.port, "/", seconds, connections, extra=("-H", "Connection: close"))
        elif load == "tls-new":
            r = run_s_time(proxy.port, seconds)
        else:
            r = run_h2load(proxy.port, seconds, workdir)
    finally:
        done.set()
        sampler.join()
    cpu = cpu_seconds(pids) - before
    r["cpu_per_100k"] = cpu / max(1, r["requests"]) * 100_000
    r["rss_mib"] = peak[0] / 1024
    return r


LOADS = {
    "small": ["turnout", "haproxy", "nginx"],
    "64k": ["turnout", "haproxy", "nginx"],
    "close": ["turnout", "haproxy", "nginx"],
    "h2c": ["turnout", "nghttpx"],
    "tls-new": ["turnout-tls-w1", "turnout-tls-w2"],
}
REFERENCE = {"small": "haproxy", "64k": "haproxy", "close": "haproxy", "h2c": "nghttpx", "tls-new": "turnout-tls-w1"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=8, help="length of each measurement")
    ap.add_argument("--repeats", type=int, default=3, help="measurements per proxy and load (medians are shown)")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--loads", default="small,64k,close,h2c")
    ap.add_argument("--scaling", action="store_true",
                    help="also compare Turnout workers: 1 and workers: 2 (small, and the tls-new load)")
    a = ap.parse_args()
    if a.scaling and "tls-new" not in a.loads.split(","):
        a.loads += ",tls-new"
    for tool in ("nginx", "haproxy", "nghttpx", "wrk", "h2load"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is missing: run `make bench`, which installs it")
    os.environ["PATH"] += ":/usr/sbin"
    workdir = tempfile.mkdtemp(prefix="turnout-bench-")
    os.chmod(workdir, 0o755)  # nginx workers run as nobody when started by root
    upstreams, blue, green = start_upstreams(workdir)
    starters = {"turnout": lambda: start_turnout(workdir, blue, green), "haproxy": lambda: start_haproxy(workdir, blue, green),
                "nginx": lambda: start_nginx(workdir, blue, green), "nghttpx": lambda: start_nghttpx(workdir, blue, green),
                "turnout-tls-w1": lambda: start_turnout(workdir, blue, green, workers=1, tls=True),
                "turnout-tls-w2": lambda: start_turnout(workdir, blue, green, workers=2, tls=True)}
    proxies = {}
    results = {}
    try:
        loads = a.loads.split(",")
        needed = sorted({p for l in loads for p in LOADS[l]})
        for name in needed:
            proxies[name] = starters[name]()
        if a.scaling:
            proxies["turnout-w2"] = start_turnout(workdir, blue, green, workers=2)
        for load in loads:
            names = list(LOADS[load]) + (["turnout-w2"] if a.scaling and load == "small" else [])
            for rep in range(a.repeats):
                order = names[rep % len(names):] + names[:rep % len(names)]
                for name in order:
                    r = measure(proxies[name], load, a.seconds, a.connections, workdir)
                    results.setdefault((load, name), []).append(r)
                    print(f"  {load:5} {name:10} run {rep + 1}: {r['rps']:10.0f} req/s  p50 {r['p50']:.2f} ms  "
                          f"p99 {r['p99']:.2f} ms  cpu {r['cpu_per_100k']:.2f} s/100k  rss {r['rss_mib']:.1f} MiB"
                          + (f"  errors: {r['errors']}" if r["errors"] else ""), flush=True)
    finally:
        for p in proxies.values():
            p.stop()
        upstreams.stop()

    print()
    print(f"Medians of {a.repeats} runs of {a.seconds}s each; ratios are to "
          f"{'HAProxy' if 'h2c' not in a.loads or len(a.loads.split(',')) > 1 else 'nghttpx'} (nghttpx for h2c"
          f"{', Turnout workers: 1 for tls-new' if 'tls-new' in a.loads else ''}).")
    header = f"{'load':6} {'proxy':11} {'req/s':>10} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'ratio':>6} {'CPU s/100k':>10} {'ratio':>6} {'peak RSS MiB':>12}"
    print(header)
    print("-" * len(header))
    for load in a.loads.split(","):
        ref = results.get((load, REFERENCE[load]))
        med = lambda rs, k: statistics.median(r[k] for r in rs)
        names = list(LOADS[load]) + (["turnout-w2"] if a.scaling and load == "small" else [])
        for name in names:
            rs = results[(load, name)]
            rps, p50, p99, cpu, rss = (med(rs, k) for k in ("rps", "p50", "p99", "cpu_per_100k", "rss_mib"))
            rr = rps / med(ref, "rps") if ref else 0
            pr = p99 / med(ref, "p99") if ref and med(ref, "p99") else 0
            cr = cpu / med(ref, "cpu_per_100k") if ref and med(ref, "cpu_per_100k") else 0
            errs = sum(1 for r in rs if r["errors"])
            print(f"{load:6} {name:11} {rps:10.0f} {rr:6.2f} {p50:7.2f} {p99:7.2f} {pr:6.2f} {cpu:10.2f} {cr:6.2f} {rss:12.1f}"
                  + (f"  ({errs} run(s) with errors)" if errs else ""))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
