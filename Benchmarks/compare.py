#!/usr/bin/env python3
"""Turnout side by side with HAProxy, nginx and nghttpx, one worker/thread each.

An nginx upstream pair (blue, green) serves a tiny answer, a 64 KiB file and an upload sink on
loopback. Each proxy splits blue=90/green=10 with keep-alive to the upstreams. Turnout runs with the
defaults README ships; what its config sets is printed first, with the reason. Loads, one after
another, each preceded by a warm-up of the same load (--warmup seconds, not measured):

  small    wrk -t1 -c50, keep-alive, tiny responses
  c400     wrk -t1 -c400, keep-alive, tiny responses: many concurrent clients
  64k      wrk -t1 -c50, keep-alive, 64 KiB responses
  post64k  wrk -t1 -c50, keep-alive, a 64 KiB request body per request (an upload)
  close    wrk -t1 -c50 with "Connection: close" (a new connection per request)
  https    wrk -t1 -c50 over TLS, keep-alive (HTTP/1.1; one handshake per connection)
  tls-new  four `openssl s_time -new -www /` clients: every request on a new TLS connection with a
           full handshake (no session resumption), RSA-4096 certificate
  h2c      h2load -c10 -m10 over h2c (Turnout against HAProxy `proto h2` and nghttpx)
  h2c100   h2load -c4 -m100 over h2c: 100 concurrent streams per connection
  h2up     h2load -c10 -m10 over h2c to proxies whose upstreams speak HTTP/2 too (nginx h2c
           listeners): Turnout with `protocol: h2c` pools, nghttpx `proto=h2`, HAProxy `proto h2`

--scaling adds Turnout with workers: 2 (`workers: auto` on this 2-core machine) to the small,
tls-new and h2up loads (for h2up: Turnout as shipped against nghttpx as shipped, whose default is one
worker; shown, not judged).

Every measurement is repeated (--repeats) with the proxies in rotating order; the table shows
medians: requests/s, p50 and p99 latency, CPU seconds the proxy used per 100k requests (and, beside
it, those the nginx upstreams used behind it, and the share of the machine left idle), peak RSS,
upstream connections per 1000 requests (accepted by the nginx upstreams, the health checks of every
running proxy included;
for Turnout also its own turnout_upstream_connections_opened_total, probes not counted), and each
figure as a ratio to the reference: HAProxy for HTTP/1.1 loads, the better of HAProxy and nghttpx
(by requests/s) for h2c loads. Run: make bench.
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

# What Turnout's benchmark config sets beyond what every config must name (listeners, admin socket,
# pools and the split), and why. Everything else is README's default.
TURNOUT_SETTINGS = [
    ("workers: 1", "one worker per proxy, as HAProxy (nbthread 1), nginx (worker_processes 1) and nghttpx "
                   "(--workers=1) run here; --scaling adds Turnout with workers: 2, which is the default "
                   "(auto) on this 2-core machine"),
    ("access_log: false", "no proxy in the comparison logs requests (HAProxy without `option httplog`, nginx with "
                          "`access_log off`, nghttpx without --accesslog-file)"),
]


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "integration"))
from ports import free_port  # noqa: E402 (never the same port twice; see Tests/integration/ports.py)


def wait_port(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def http_get(port, path, host="127.0.0.1", unix=None, timeout=5):
    """One HTTP/1.1 GET with Connection: close; returns (status, body)."""
    if unix:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(unix)
    else:
        s = socket.create_connection((host, port), timeout=timeout)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    return status, body


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
    return sum(cpu_split(pids))


def cpu_split(pids):
    """CPU seconds the processes used so far: (user, system)."""
    user = system = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except OSError:
            pass
    return user / TICKS, system / TICKS


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
    """A proxy (or the upstreams) started in its own session. `ports`: "http" (HTTP/1.1), "h2"
    (h2c prior knowledge), "tls" (HTTPS), those it has."""

    def __init__(self, name, args, ports, workdir, env=None, admin=None):
        self.name = name
        self.log = open(os.path.join(workdir, f"{name}.log"), "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self.ports = ports
        self.admin = admin
        for p in ports.values():
            wait_port(p)

    def pids(self):
        return process_tree(self.proc.pid)

    def wait_ready(self, timeout=30):
        """Waits until requests through the proxy reach both pools (its health checks passed)."""
        port = self.ports.get("http")
        if port is None:
            return
        deadline = time.monotonic() + timeout
        seen = set()
        while time.monotonic() < deadline:
            try:
                status, body = http_get(port, "/")
                if status == 200:
                    seen.add(body.strip())
            except OSError:
                pass
            if {b"blue", b"green"} <= seen:
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.name}: requests did not reach both pools within {timeout}s (saw {seen})")

    def upstream_opened(self):
        """Turnout only: turnout_upstream_connections_opened_total summed (probes not counted)."""
        if not self.admin:
            return None
        status, body = http_get(0, "/metrics", unix=self.admin)
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith("turnout_upstream_connections_opened_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

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
    """nginx serving blue and green over HTTP/1.1, and again over h2c (prior knowledge) on the
    ports returned in `h2_ports`."""
    blue, green, status = free_port(), free_port(), free_port()
    blue_h2, green_h2 = free_port(), free_port()
    static = os.path.join(workdir, "static")
    os.makedirs(static, exist_ok=True)
    with open(os.path.join(static, "64k.bin"), "wb") as f:
        f.write(bytes(range(256)) * 256)
    conf = os.path.join(workdir, "upstreams.conf")
    servers = ""
    for name, port, h2 in (("blue", blue, ""), ("green", green, ""), ("blue", blue_h2, " http2"), ("green", green_h2, " http2")):
        servers += f"""
    server {{
        listen 127.0.0.1:{port}{h2} reuseport backlog=4096;
        location = / {{ default_type text/plain; return 200 "{name}\\n"; }}
        location = /healthz {{ default_type text/plain; return 200 "ok\\n"; }}
        location = /upload {{ client_max_body_size 1m; default_type text/plain; return 200 "{name} got it\\n"; }}
        location /static/ {{ alias {static}/; }}
    }}"""
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
pid {workdir}/upstreams.pid;
error_log {workdir}/upstreams.err warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path {workdir}/tmp; proxy_temp_path {workdir}/tmp; fastcgi_temp_path {workdir}/tmp;
    uwsgi_temp_path {workdir}/tmp; scgi_temp_path {workdir}/tmp;
{servers}
    server {{
        listen 127.0.0.1:{status};
        location = /status {{ stub_status; }}
    }}
}}
""")
    os.makedirs(os.path.join(workdir, "tmp"), exist_ok=True)
    p = Proc("upstreams", ["nginx", "-c", conf, "-p", workdir],
             {"blue": blue, "green": green, "blue_h2": blue_h2, "green_h2": green_h2, "status": status}, workdir)
    p.h2_ports = (blue_h2, green_h2)
    return p, blue, green, status


def upstream_accepts(status_port):
    """Connections the nginx upstreams accepted so far (stub_status), less the one asking."""
    _, body = http_get(status_port, "/status")
    m = re.search(rb"\n\s*(\d+)\s+(\d+)\s+(\d+)", body)
    return int(m.group(1)) - 1


def make_certificate(workdir):
    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    if not os.path.exists(cert):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:4096", "-nodes", "-subj", "/CN=localhost",
                        "-days", "2", "-keyout", key, "-out", cert], check=True, capture_output=True)
        with open(os.path.join(workdir, "combined.pem"), "w") as out:
            out.write(open(cert).read() + open(key).read())
    return cert, key


def start_turnout(workdir, blue, green, workers=1, h2_upstream=False):
    port, tls_port = free_port(), free_port()
    cert, key = make_certificate(workdir)
    name = f"turnout-w{workers}" + ("-h2up" if h2_upstream else "")
    proto = ", protocol: h2c" if h2_upstream else ""
    conf = os.path.join(workdir, f"{name}.yaml")
    admin = f"{workdir}/{name}-admin.sock"
    with open(conf, "w") as f:
        f.write(f"""workers: {workers}
listeners:
  - address: 127.0.0.1:{port}
  - address: 127.0.0.1:{tls_port}
    tls: {{ certificate: {cert}, private_key: {key} }}
admin:
  socket: {admin}
pools:
  blue: {{ endpoints: ["127.0.0.1:{blue}"]{proto} }}
  green: {{ endpoints: ["127.0.0.1:{green}"]{proto} }}
routing:
  weights: {{ blue: 90, green: 10 }}
access_log: false
""")
    binary = os.environ.get("TURNOUT_BIN", os.path.join(ROOT, ".build", "release", "turnout"))
    return Proc(name, [binary, "serve", "--config", conf], {"http": port, "h2": port, "tls": tls_port}, workdir,
                admin=admin)


def start_haproxy(workdir, blue, green, h2_upstream=False):
    port, h2_port, tls_port = free_port(), free_port(), free_port()
    make_certificate(workdir)
    conf = os.path.join(workdir, "haproxy-h2up.cfg" if h2_upstream else "haproxy.cfg")
    proto = " proto h2" if h2_upstream else ""
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
frontend fe_h2
    bind 127.0.0.1:{h2_port} proto h2
    default_backend be
frontend fe_tls
    bind 127.0.0.1:{tls_port} ssl crt {workdir}/combined.pem
    default_backend be
backend be
    balance roundrobin
    server blue 127.0.0.1:{blue} weight 90 check inter 2s{proto}
    server green 127.0.0.1:{green} weight 10 check inter 2s{proto}
""")
    return Proc("haproxy-h2up" if h2_upstream else "haproxy", ["haproxy", "-db", "-f", conf],
                {"http": port, "h2": h2_port, "tls": tls_port}, workdir)


def start_nginx(workdir, blue, green):
    port, tls_port = free_port(), free_port()
    cert, key = make_certificate(workdir)
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
        keepalive 1024;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        listen 127.0.0.1:{tls_port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        client_max_body_size 1m;
        location / {{
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
""")
    return Proc("nginx", ["nginx", "-c", conf, "-p", workdir], {"http": port, "tls": tls_port}, workdir)


def start_nghttpx(workdir, blue, green, h2_upstream=False):
    port, tls_port = free_port(), free_port()
    cert, key = make_certificate(workdir)
    proto = "h2" if h2_upstream else "http/1.1"
    name = "nghttpx-h2up" if h2_upstream else "nghttpx"
    # --conf=/dev/null: without it nghttpx also reads Debian's /etc/nghttpx/nghttpx.conf, whose
    # frontend (127.0.0.1:3000) is added to ours, so that a second nghttpx cannot start.
    return Proc(name, ["nghttpx", "--conf=/dev/null", "--workers=1", f"--frontend=127.0.0.1,{port};no-tls",
                       f"--frontend=127.0.0.1,{tls_port}",
                       f"--backend=127.0.0.1,{blue};;proto={proto};weight=90",
                       f"--backend=127.0.0.1,{green};;proto={proto};weight=10",
                       "--no-ocsp", "--log-level=ERROR", f"--pid-file={workdir}/{name}.pid", key, cert],
                {"http": port, "h2": port, "tls": tls_port}, workdir)


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value if unit == "ms" else value * 1000


def run_wrk(url, seconds, connections, extra=()):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
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


def run_h2load(port, seconds, workdir, clients, streams):
    log = os.path.join(workdir, "h2load.log")
    out = subprocess.run(["h2load", f"-c{clients}", f"-m{streams}", "-D", str(seconds), "--log-file", log,
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


def post_script(workdir):
    path = os.path.join(workdir, "post64k.lua")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write('wrk.method = "POST"\nwrk.body = string.rep("x", 65536)\n'
                    'wrk.headers["Content-Type"] = "application/octet-stream"\n')
    return path


def run_load(proxy, load, seconds, connections, workdir):
    http, tls = proxy.ports.get("http"), proxy.ports.get("tls")
    if load == "small":
        return run_wrk(f"http://127.0.0.1:{http}/", seconds, connections)
    if load == "c400":
        return run_wrk(f"http://127.0.0.1:{http}/", seconds, 400)
    if load == "64k":
        return run_wrk(f"http://127.0.0.1:{http}/static/64k.bin", seconds, connections)
    if load == "post64k":
        return run_wrk(f"http://127.0.0.1:{http}/upload", seconds, connections, extra=("-s", post_script(workdir)))
    if load == "close":
        return run_wrk(f"http://127.0.0.1:{http}/", seconds, connections, extra=("-H", "Connection: close"))
    if load == "https":
        return run_wrk(f"https://127.0.0.1:{tls}/", seconds, connections)
    if load == "tls-new":
        return run_s_time(tls, seconds)
    if load == "h2c":
        return run_h2load(proxy.ports["h2"], seconds, workdir, 10, 10)
    if load == "h2c100":
        return run_h2load(proxy.ports["h2"], seconds, workdir, 4, 100)
    if load == "h2up":
        return run_h2load(proxy.ports["h2"], seconds, workdir, 10, 10)
    raise ValueError(load)


def machine_ticks():
    """The whole machine's CPU time so far from /proc/stat, in clock ticks summed over the CPUs:
    (all, idle), idle counting iowait too."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]


def measure(proxy, load, seconds, warmup, connections, workdir, status_port, upstream_pids):
    if warmup > 0 and load != "tls-new":
        run_load(proxy, load, warmup, connections, workdir)
    pids = proxy.pids()
    peak = [rss_kib(pids)]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pids))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    accepts_before = upstream_accepts(status_port)
    opened_before = proxy.upstream_opened()
    user_before, system_before = cpu_split(pids)
    upstream_before = cpu_seconds(upstream_pids)
    all_before, idle_before = machine_ticks()
    try:
        r = run_load(proxy, load, seconds, connections, workdir)
    finally:
        done.set()
        sampler.join()
    user_after, system_after = cpu_split(pids)
    upstream_after = cpu_seconds(upstream_pids)
    all_after, idle_after = machine_ticks()
    n = max(1, r["requests"])
    # What the proxy costs the upstream (the fields it adds are parsed there too), and how much of
    # the machine stayed idle: the load's clients, the proxy and the upstreams share its cores.
    r["upstream_per_100k"] = (upstream_after - upstream_before) / n * 100_000
    r["idle_pct"] = (idle_after - idle_before) / max(1, all_after - all_before) * 100
    r["user_per_100k"] = (user_after - user_before) / n * 100_000
    r["system_per_100k"] = (system_after - system_before) / n * 100_000
    r["cpu_per_100k"] = r["user_per_100k"] + r["system_per_100k"]
    r["rss_mib"] = peak[0] / 1024
    r["up_per_1k"] = (upstream_accepts(status_port) - accepts_before) / n * 1000
    opened_after = proxy.upstream_opened()
    r["opened_per_1k"] = (opened_after - opened_before) / n * 1000 if opened_before is not None else None
    return r


HTTP1 = ["turnout", "haproxy", "nginx", "nghttpx"]
H2 = ["turnout", "haproxy", "nghttpx"]
H2UP = ["turnout-h2up", "haproxy-h2up", "nghttpx-h2up"]
LOADS = {
    "small": HTTP1, "c400": HTTP1, "64k": HTTP1, "post64k": HTTP1, "close": HTTP1,
    "https": HTTP1, "tls-new": HTTP1, "h2c": H2, "h2c100": H2, "h2up": H2UP,
}
# Targets from issue 14: requests/s ratio at least `rps`, p99 ratio at most `p99` (None: not judged).
TARGETS = {"small": (1.0, 1.25)}
DEFAULT_TARGET = (1.0, None)
NAMES = {"turnout": "Turnout", "haproxy": "HAProxy", "nginx": "nginx", "nghttpx": "nghttpx",
         "turnout-w2": "Turnout workers: 2", "turnout-w2-h2up": "Turnout workers: 2", "turnout-h2up": "Turnout", "haproxy-h2up": "HAProxy", "nghttpx-h2up": "nghttpx"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=8, help="length of each measurement")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of the same load before each measurement")
    ap.add_argument("--repeats", type=int, default=3, help="measurements per proxy and load (medians are shown)")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--loads", default=",".join(LOADS))
    ap.add_argument("--proxies", default="turnout,haproxy,nginx,nghttpx", help="which proxies to run")
    ap.add_argument("--scaling", action="store_true", help="also run Turnout with workers: 2 on small, tls-new and h2up")
    a = ap.parse_args()
    loads = a.loads.split(",")
    for load in loads:
        if load not in LOADS:
            sys.exit(f"unknown load {load!r}; loads: {', '.join(LOADS)}")
    wanted = set(a.proxies.split(","))
    for tool in ("nginx", "haproxy", "nghttpx", "wrk", "h2load", "openssl"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is missing: run `make bench`, which installs it")
    os.environ["PATH"] += ":/usr/sbin"

    print("Turnout runs with the defaults README ships, except:")
    for setting, why in TURNOUT_SETTINGS:
        print(f"  {setting:18} {why}")
    print("Its config names only what every config must: two listeners (plain and TLS), the admin socket, the two "
          "pools and the 90/10 split. Health checks, timeouts, limits and idle upstream connections are the defaults.")
    print()

    workdir = tempfile.mkdtemp(prefix="turnout-bench-")
    os.chmod(workdir, 0o755)  # nginx workers run as nobody when started by root
    upstreams, blue, green, status_port = start_upstreams(workdir)
    starters = {"turnout": lambda: start_turnout(workdir, blue, green), "haproxy": lambda: start_haproxy(workdir, blue, green),
                "nginx": lambda: start_nginx(workdir, blue, green), "nghttpx": lambda: start_nghttpx(workdir, blue, green),
                "turnout-w2": lambda: start_turnout(workdir, blue, green, workers=2)}
    blue_h2, green_h2 = upstreams.h2_ports
    for n, start in (("turnout", start_turnout), ("haproxy", start_haproxy), ("nghttpx", start_nghttpx)):
        starters[f"{n}-h2up"] = (lambda start: lambda: start(workdir, blue_h2, green_h2, h2_upstream=True))(start)
    starters["turnout-w2-h2up"] = lambda: start_turnout(workdir, blue_h2, green_h2, workers=2, h2_upstream=True)
    proxies = {}
    results = {}

    def names_for(load):
        names = [n for n in LOADS[load] if n.split("-")[0] in wanted]
        if a.scaling and load in ("small", "tls-new"):
            names.append("turnout-w2")
        if a.scaling and load == "h2up" and "turnout" in wanted:
            names.append("turnout-w2-h2up")
        return names

    try:
        for name in sorted({n for l in loads for n in names_for(l)}):
            proxies[name] = starters[name]()
        for p in proxies.values():
            p.wait_ready()
        upstream_pids = upstreams.pids()  # nginx's master and worker, for the whole run
        for load in loads:
            names = names_for(load)
            for rep in range(a.repeats):
                order = names[rep % len(names):] + names[:rep % len(names)]
                for name in order:
                    r = measure(proxies[name], load, a.seconds, a.warmup, a.connections, workdir, status_port,
                                upstream_pids)
                    results.setdefault((load, name), []).append(r)
                    opened = f"  opened/1k {r['opened_per_1k']:.2f}" if r["opened_per_1k"] is not None else ""
                    print(f"  {load:7} {name:10} run {rep + 1}: {r['rps']:10.0f} req/s  p50 {r['p50']:.2f} ms  "
                          f"p99 {r['p99']:.2f} ms  cpu {r['cpu_per_100k']:.2f} s/100k (user {r['user_per_100k']:.2f}, "
                          f"system {r['system_per_100k']:.2f}; upstream {r['upstream_per_100k']:.2f})  idle {r['idle_pct']:.1f}%  rss {r['rss_mib']:.1f} MiB  "
                          f"upstream conns/1k {r['up_per_1k']:.2f}{opened}"
                          + (f"  errors: {r['errors']}" if r["errors"] else ""), flush=True)
    finally:
        for p in proxies.values():
            p.stop()
        upstreams.stop()

    med = lambda rs, k: statistics.median(r[k] for r in rs)
    print()
    print(f"Medians of {a.repeats} runs of {a.seconds}s each (after {a.warmup}s of warm-up). Reference (ratio 1.00): "
          "HAProxy for HTTP/1.1 loads; for h2c loads the better of HAProxy and nghttpx by req/s. "
          "up/1k: connections the nginx upstreams accepted per 1000 requests (the health checks of every proxy "
          "running, about 3 connections a second, included); "
          "opened/1k: Turnout's turnout_upstream_connections_opened_total per 1000 requests (probes not counted); "
          "user, system: the CPU s/100k split into user space and kernel (system calls, the network stack); "
          "upstream CPU: what the nginx upstreams used per 100k requests behind this proxy; idle: the share of the "
          "machine's CPU time no process used during the measurement. "
          "Verdicts judge the ratio of medians; 'run by run' adds each repeat's ratio, Turnout's run against the "
          "reference's run in the same round of runs (close to it in time).")
    header = (f"{'load':8} {'proxy':19} {'req/s':>9} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'ratio':>6} "
              f"{'CPU s/100k':>10} {'ratio':>6} {'user':>6} {'system':>6} {'upstream CPU':>12} {'idle %':>6} {'RSS MiB':>8} {'up/1k':>7} {'opened/1k':>9}")
    print(header)
    print("-" * len(header))
    verdicts = []
    for load in loads:
        names = names_for(load)
        refs = {"h2up": ["haproxy-h2up", "nghttpx-h2up"]}.get(load, ["haproxy", "nghttpx"] if load.startswith("h2c") else ["haproxy"])
        candidates = [n for n in refs if (load, n) in results]
        ref_name = max(candidates, key=lambda n: med(results[(load, n)], "rps")) if candidates else None
        ref = results.get((load, ref_name))
        for name in names:
            rs = results[(load, name)]
            rps, p50, p99, cpu, user, system, upcpu, idle, rss, up = (
                med(rs, k) for k in ("rps", "p50", "p99", "cpu_per_100k", "user_per_100k", "system_per_100k",
                                     "upstream_per_100k", "idle_pct", "rss_mib", "up_per_1k"))
            opened = med(rs, "opened_per_1k") if rs[0]["opened_per_1k"] is not None else None
            rr = rps / med(ref, "rps") if ref else 0
            pr = p99 / med(ref, "p99") if ref and med(ref, "p99") else 0
            cr = cpu / med(ref, "cpu_per_100k") if ref and med(ref, "cpu_per_100k") else 0
            errs = sum(1 for r in rs if r["errors"])
            print(f"{load:8} {NAMES.get(name, name):19} {rps:9.0f} {rr:6.2f} {p50:7.2f} {p99:7.2f} {pr:6.2f} {cpu:10.2f} "
                  f"{cr:6.2f} {user:6.2f} {system:6.2f} {upcpu:12.2f} {idle:6.1f} {rss:8.1f} {up:7.2f} {opened if opened is not None else float('nan'):9.2f}"
                  + (f"  ({errs} run(s) with errors)" if errs else ""))
            if name in ("turnout", "turnout-h2up") and ref:
                want_rps, want_p99 = TARGETS.get(load, DEFAULT_TARGET)
                met = rr >= want_rps and (want_p99 is None or not pr or pr <= want_p99)
                # Each repeat's Turnout run against the reference's run in the same round, close to
                # it in time: the machine's speed drifts over a minute, and a pair shares most of it.
                paired = [t["rps"] / r["rps"] for t, r in zip(rs, ref) if r["rps"]]
                verdicts.append(f"{load}: Turnout {rr:.2f}x {NAMES[ref_name]}'s req/s"
                                + (f", p99 {pr:.2f}x (target <= {want_p99})" if want_p99 else f", p99 {pr:.2f}x" if pr else "")
                                + f" -> {'met' if met else 'NOT met'} (target >= {want_rps}x)"
                                + (f"; run by run {', '.join(f'{x:.2f}' for x in paired)}x, median {statistics.median(paired):.2f}x"
                                   if len(paired) > 1 else ""))
    print()
    for v in verdicts:
        print(v)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
