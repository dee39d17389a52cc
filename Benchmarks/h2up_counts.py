#!/usr/bin/env python3
"""Work per request on the h2up load, counted instead of timed.

On a shared 2-core machine the same proxy's requests/s moves by 20% from run to run, so a change
worth 3% cannot be seen in `compare.py`. Counts can: this runs Turnout (`protocol: h2c` pools, as
compare.py's h2up load) and nghttpx in front of the same nginx h2c upstreams, sends a fixed number
of requests with `h2load -c10 -m10`, and counts, per request, what the proxy process did:

  malloc        calls to jemalloc's malloc (uprobe)
  retain        calls to swift_retain (uprobe; Turnout only)
  release       calls to swift_release (uprobe; Turnout only)
  send, recv    socket writes and reads (sendto/writev, recvfrom/read)
  epoll_wait    poller wake-ups

The counts repeat within a fraction of a percent from run to run. No time is measured: each probe
hit traps into the kernel, which makes the process many times slower while it is counted. Needs root and `perf`
(linux-perf): `make bench-h2up-counts`. Turnout runs as compare.py runs it (`workers: 1`,
`access_log: false`, as every proxy compared there).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as C  # noqa: E402

PROBES = [("/opt/swift/usr/lib/swift/linux/libswiftCore.so", "swift_retain"),
          ("/opt/swift/usr/lib/swift/linux/libswiftCore.so", "swift_release")]
EVENTS = ["probe_libjemalloc:malloc", "probe_libswiftCore:swift_retain", "probe_libswiftCore:swift_release",
          "syscalls:sys_enter_sendto", "syscalls:sys_enter_writev", "syscalls:sys_enter_recvfrom",
          "syscalls:sys_enter_read", "syscalls:sys_enter_epoll_wait"]


def jemalloc():
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "libjemalloc.so.2 " in line:
            return line.split("=>")[-1].strip()
    sys.exit("libjemalloc.so.2 not found (Turnout and nghttpx both link it)")


def add_probes():
    """The uprobes the counts need, added once (they stay until `perf probe -d 'probe_lib*'`)."""
    have = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True).stdout
    for lib, fn in [(jemalloc(), "malloc")] + PROBES:
        if f":{fn} " in have:
            continue
        r = subprocess.run(["perf", "probe", "-x", lib, "--add", fn], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"perf probe {fn} in {lib} failed: {r.stderr.strip()}")


def count(pid, port, requests):
    h2load = lambda n: subprocess.run(["h2load", "-c10", "-m10", f"-n{n}", f"http://127.0.0.1:{port}/"],
                                      capture_output=True, text=True, timeout=300).stdout
    h2load(max(2000, requests // 10))  # warm-up: connections open, buffers grown
    stat = subprocess.Popen(["perf", "stat", "-x,", "-e", ",".join(EVENTS), "-p", str(pid)],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    out = h2load(requests)
    stat.send_signal(2)
    err = stat.communicate()[1]
    if f"{requests} succeeded" not in out:
        sys.exit("h2load did not finish every request:\n" + out)
    got = {}
    for line in err.splitlines():
        f = line.split(",")
        if len(f) > 2 and f[0].strip().isdigit():
            got[f[2].split(":")[-1]] = int(f[0])
    per = lambda *names: sum(got.get(n, 0) for n in names) / requests
    return {"malloc": per("malloc"), "retain": per("swift_retain"), "release": per("swift_release"),
            "send": per("sys_enter_sendto", "sys_enter_writev"), "recv": per("sys_enter_recvfrom", "sys_enter_read"),
            "epoll_wait": per("sys_enter_epoll_wait")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=50000)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    for tool in ("perf", "nginx", "nghttpx", "h2load"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is missing: run `make bench-h2up-counts`, which installs it")
    if os.geteuid() != 0:
        sys.exit("uprobes need root")
    os.environ["PATH"] += ":/usr/sbin"
    add_probes()
    print("Turnout runs with the defaults README ships, except:")
    for setting, why in C.TURNOUT_SETTINGS:
        print(f"  {setting:18} {why}")
    print(f"h2load -c10 -m10 -n{a.requests} over h2c; pools `protocol: h2c` to nginx h2c listeners.\n")
    workdir = tempfile.mkdtemp(prefix="turnout-counts-")
    os.chmod(workdir, 0o755)
    upstreams, _, _, _ = C.start_upstreams(workdir)
    blue_h2, green_h2 = upstreams.h2_ports
    rows = []
    try:
        for _ in range(a.repeats):
            t = C.start_turnout(workdir, blue_h2, green_h2, h2_upstream=True)
            try:
                t.wait_ready()
                rows.append(("Turnout", count(t.proc.pid, t.ports["h2"], a.requests)))
            finally:
                t.stop()
            n = C.start_nghttpx(workdir, blue_h2, green_h2, h2_upstream=True)
            try:
                n.wait_ready()
                worker = max(C.process_tree(n.proc.pid))  # the worker, forked after the master
                rows.append(("nghttpx", count(worker, n.ports["h2"], a.requests)))
            finally:
                n.stop()
    finally:
        upstreams.stop()
    print(f"{'proxy':10} {'malloc':>8} {'retain':>8} {'release':>8} {'send':>6} {'recv':>6} {'epoll_wait':>10}")
    for name, r in rows:
        print(f"{name:10} {r['malloc']:8.1f} {r['retain']:8.1f} {r['release']:8.1f} {r['send']:6.2f} {r['recv']:6.2f} "
              f"{r['epoll_wait']:10.2f}")


if __name__ == "__main__":
    main()
