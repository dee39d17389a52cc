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

With --by-type, Turnout's reference counting is broken down instead: each swift_retain and
swift_release is probed with the object it was given and that object's type (its first word, the
Swift type metadata, named from the binary's symbols). A call with no object (nil) or with a
tagged value (small strings and other values with the top bit set), or on one of the runtime's
immortal empty-collection singletons (statically made with an immortal count, which is never
written), does no atomic work and is counted apart as "cheap"; the rest are "real" operations,
listed by type. The list says which objects are counted most per request, which the call counts
above cannot.

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


LIBSWIFT = "/opt/swift/usr/lib/swift/linux/libswiftCore.so"
TYPED = [("turnout_rel", "swift_release"), ("turnout_ret", "swift_retain")]
# The metadata symbols of the runtime's statically made empty collections (immortal counts).
IMMORTAL = {"$ss19__EmptyArrayStorageCN", "$ss26__EmptyDictionarySingletonCN", "$ss19__EmptySetSingletonCN"}


def add_typed_probes():
    have = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True).stdout
    for name, fn in TYPED:
        if f":{name} " in have:
            continue
        r = subprocess.run(["perf", "probe", "-x", LIBSWIFT, "--add", f"{name}={fn} obj=%di:x64 meta=+0(%di):x64"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"perf probe {fn} with its argument failed: {r.stderr.strip()}")


def symbolizer(pid):
    """Maps an address in the process to the name of the symbol at or below it (type metadata)."""
    ranges = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            p = line.split()
            lo, hi = (int(x, 16) for x in p[0].split("-"))
            ranges.append((lo, hi, p[5] if len(p) > 5 else ""))
    tables = {}

    def name(addr):
        path = next((f for lo, hi, f in ranges if lo <= addr < hi), "")
        if not path.startswith("/"):
            return "(heap: a class made at run time)"
        base = min(lo for lo, _, f in ranges if f == path)
        if path not in tables:
            out = subprocess.run(["nm", "-n", "--defined-only", path], capture_output=True, text=True).stdout
            tables[path] = [(int(a, 16), n) for a, _, n in (l.split() for l in out.splitlines() if len(l.split()) == 3)
                            if all(c in "0123456789abcdef" for c in a)]
        best = "?"
        for a, n in tables[path]:
            if a > addr - base:
                break
            best = n
        return best

    return name


def under_load(port, requests, perf):
    """Runs `perf` (stopped with SIGINT) around `requests` requests of h2load, after a warm-up
    (connections open, buffers grown); returns what perf wrote to stderr."""
    h2load = lambda n: subprocess.run(["h2load", "-c10", "-m10", f"-n{n}", f"http://127.0.0.1:{port}/"],
                                      capture_output=True, text=True, timeout=300).stdout
    h2load(max(2000, requests // 10))
    proc = subprocess.Popen(perf, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    out = h2load(requests)
    proc.send_signal(2)
    err = proc.communicate()[1]
    if f"{requests} succeeded" not in out:
        sys.exit("h2load did not finish every request:\n" + out)
    return err


def count_by_type(pid, port, requests, data):
    under_load(port, requests, ["perf", "record", "-q", "-e", "probe_libswiftCore:turnout_rel",
                                "-e", "probe_libswiftCore:turnout_ret", "-o", data, "-p", str(pid)])
    name = symbolizer(pid)
    script = subprocess.run(["perf", "script", "-i", data, "-F", "event,trace"], capture_output=True, text=True).stdout
    cheap, real, by_meta = 0, 0, {}
    for line in script.splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if kv.startswith(("obj=", "meta=")))
        if "obj" not in f:
            continue
        obj = int(f["obj"], 16)
        if obj == 0 or obj >= 1 << 63:
            cheap += 1
            continue
        real += 1
        meta = int(f["meta"], 16)
        by_meta[meta] = by_meta.get(meta, 0) + 1
    names = {}
    for meta, n in by_meta.items():
        key = name(meta)
        if key in IMMORTAL:
            real -= n
            cheap += n
            continue
        names[key] = names.get(key, 0) + n
    demangled = subprocess.run(["swift", "demangle", "--simplified", "--compact"], input="\n".join(names),
                               capture_output=True, text=True).stdout.splitlines()
    rows = sorted(zip(demangled, names.values()), key=lambda r: -r[1])
    return real / requests, cheap / requests, [(t.replace("type metadata for ", "").replace("full ", ""), n / requests)
                                               for t, n in rows]


def count(pid, port, requests):
    err = under_load(port, requests, ["perf", "stat", "-x,", "-e", ",".join(EVENTS), "-p", str(pid)])
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
    ap.add_argument("--by-type", action="store_true",
                    help="Turnout only: real retains and releases per request by the type of the object counted")
    a = ap.parse_args()
    for tool in ("perf", "nginx", "nghttpx", "h2load"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is missing: run `make bench-h2up-counts`, which installs it")
    if os.geteuid() != 0:
        sys.exit("uprobes need root")
    os.environ["PATH"] += ":/usr/sbin"
    if a.by_type:
        return by_type(a)
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


def by_type(a):
    add_typed_probes()
    print(f"Turnout (workers: 1, access_log: false, as compare.py runs it); h2load -c10 -m10 -n{a.requests} over h2c.\n")
    workdir = tempfile.mkdtemp(prefix="turnout-counts-")
    os.chmod(workdir, 0o755)
    upstreams, _, _, _ = C.start_upstreams(workdir)
    blue_h2, green_h2 = upstreams.h2_ports
    try:
        t = C.start_turnout(workdir, blue_h2, green_h2, h2_upstream=True)
        try:
            t.wait_ready()
            real, cheap, rows = count_by_type(t.proc.pid, t.ports["h2"], a.requests, os.path.join(workdir, "arc.data"))
        finally:
            t.stop()
    finally:
        upstreams.stop()
    print(f"per request: {real:.1f} real retains and releases, {cheap:.1f} cheap ones (nil, a tagged value or an immortal singleton)")
    print(f"{'real':>6}  type of the object")
    for t, n in rows:
        if n >= 0.5:
            print(f"{n:6.1f}  {t}")


if __name__ == "__main__":
    main()
