#!/usr/bin/env python3
"""Turnout's memory per idle keep-alive client connection.

Starts `turnout serve` (workers: 1) in front of a Python upstream, opens N client connections,
sends one request on each and reads the answer (so every connection has been used and is now an
idle keep-alive connection), then reports Turnout's RSS growth divided by N. Run: make bench-idle.
"""
import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "integration"))
from ports import free_port  # noqa: E402 (never the same port twice; see Tests/integration/ports.py)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--connections", type=int, default=10000)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.connections + 1000), hard))
    work = tempfile.mkdtemp(prefix="turnout-idle-")
    up_port, port = free_port(), free_port()
    upstream = subprocess.Popen([sys.executable, os.path.join(ROOT, "Tests", "integration", "upstream.py"),
                                 "--port", str(up_port), "--name", "blue"], stdout=subprocess.PIPE, text=True)
    upstream.stdout.readline()
    conf = os.path.join(work, "t.yaml")
    with open(conf, "w") as f:
        f.write(f"""workers: 1
listeners:
  - address: 127.0.0.1:{port}
admin:
  socket: {work}/admin.sock
pools:
  blue: {{ endpoints: ["127.0.0.1:{up_port}"] }}
limits: {{ max_client_connections: {a.connections + 100} }}
timeouts: {{ idle: 10m }}
access_log: false
""")
    print("Turnout runs with README's defaults, except:")
    print("  workers: 1                  the memory of one loop's connections, without a second loop's share")
    print(f"  max_client_connections: {a.connections + 100}  `auto` follows the open-files limit, which may be below "
          f"{a.connections} here; the benchmark needs them all open at once")
    print("  timeouts.idle: 10m          the connections must stay open until RSS is read (the default 60s could "
          "close the first ones on a slow machine)")
    print("  access_log: false           one line per request is not what is measured")
    binary = os.environ.get("TURNOUT_BIN", os.path.join(ROOT, ".build", "release", "turnout"))
    log = open(os.path.join(work, "turnout.log"), "wb")
    t = subprocess.Popen([binary, "serve", "--config", conf], stdout=log, stderr=subprocess.STDOUT)
    socks = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        # Warm up: the first requests allocate buffers, pools and caches that do not grow with N.
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while s.recv(65536):
                pass
            s.close()
        time.sleep(0.5)
        base = rss_kib(t.pid)
        request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        batch = 500
        for start in range(0, a.connections, batch):
            group = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(min(batch, a.connections - start))]
            for s in group:
                s.sendall(request)
            for s in group:
                data = b""
                while not data.endswith(b"blue\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        raise RuntimeError("connection closed early")
                    data += chunk
            socks.extend(group)
        time.sleep(1.0)
        after = rss_kib(t.pid)
        per = (after - base) * 1024 / a.connections
        print(f"{a.connections} idle keep-alive connections: Turnout RSS {base} KiB -> {after} KiB, "
              f"{per / 1024:.2f} KiB ({per:.0f} bytes) per connection")
    finally:
        for s in socks:
            s.close()
        t.terminate()
        t.wait(timeout=30)
        upstream.terminate()
        log.close()


if __name__ == "__main__":
    main()
