"""Real etcd members (Debian's etcd-server) on loopback ports in temporary data directories, for
the cluster-mode tests. No mock: the tests talk to what a user runs."""
import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request

from harness import free_port, wait_for


class EtcdMember:
    def __init__(self, cluster, index):
        self.cluster = cluster
        self.name = f"m{index}"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data_dir = os.path.join(cluster.dir, self.name)
        self.log_path = os.path.join(cluster.dir, f"{self.name}.log")
        self.proc = None

    @property
    def url(self):
        return f"{'https' if self.cluster.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self):
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, state="new"):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([
            "etcd", "--name", self.name, "--data-dir", self.data_dir,
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.cluster.initial_cluster, "--initial-cluster-state", state,
            "--initial-cluster-token", self.cluster.token,
        ] + self.cluster.tls_flags(), stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def healthy(self):
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1, context=self.cluster.ssl_context()) as r:
                return json.loads(r.read()).get("health") == "true"
        except Exception:
            return False

    def stop(self, sig=signal.SIGTERM):
        if self.running():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def status(self):
        """This member's view: its id and the leader's id (etcd's maintenance status)."""
        out = self.cluster.call("/v3/maintenance/status", {}, member=self)
        return out["header"]["member_id"], out.get("leader")


class EtcdCluster:
    """`size` members forming one etcd cluster, started and waited for."""

    def __init__(self, size=1, tls=None):
        """`tls`: {"cert", "key"} of etcd's server certificate and "client_ca", the CA a client
        certificate must be signed by (etcd then requires one)."""
        if shutil.which("etcd") is None:
            raise RuntimeError("etcd is not installed (make test-deps installs Debian's etcd-server)")
        self.tls = tls
        self.dir = tempfile.mkdtemp(prefix="turnout-etcd-")
        self.token = os.path.basename(self.dir)
        self.members = [EtcdMember(self, i + 1) for i in range(size)]
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.start()
        # Done when every member is healthy, or as soon as one has exited (it will not come back).
        try:
            wait_for(lambda: all(m.healthy() for m in self.members) or not all(m.running() for m in self.members),
                     timeout=30, what="etcd to be healthy")
            problem = None if all(m.running() for m in self.members) else "an etcd member exited while starting"
        except AssertionError as e:
            problem = str(e)
        if problem:
            report = self.report()
            self.stop()
            raise AssertionError(f"{problem}\n{report}")

    def report(self):
        """Each member's state and the last lines of its log, for a failure message."""
        lines = []
        for m in self.members:
            state = "running" if m.running() else f"exited with {m.proc.returncode if m.proc else 'no process'}"
            lines.append(f"etcd member {m.name} (client {m.url}, peer {m.peer_url}): {state}, "
                         f"{'healthy' if m.running() and m.healthy() else 'not healthy'}; last log lines:")
            try:
                with open(m.log_path, errors="replace") as f:
                    lines += ["  " + line.rstrip()[:300] for line in f.readlines()[-8:]]
            except OSError as err:
                lines.append(f"  (no log: {err})")
        return "\n".join(lines)

    def tls_flags(self):
        if not self.tls:
            return []
        return ["--cert-file", self.tls["cert"], "--key-file", self.tls["key"],
                "--client-cert-auth", "--trusted-ca-file", self.tls["client_ca"]]

    def ssl_context(self):
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.tls["cert"])
        ctx.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
        return ctx

    @property
    def urls(self):
        return [m.url for m in self.members]

    def yaml_endpoints(self, members=None):
        return "[" + ", ".join(f'"{m.url}"' for m in (members or self.members)) + "]"

    def call(self, path, body, member=None, timeout=3):
        """One JSON-gateway call to a member (the first running and healthy one by default)."""
        targets = [member] if member else [m for m in self.members if m.running()]
        last = None
        for m in targets:
            try:
                req = urllib.request.Request(m.url + path, data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context()) as r:
                    return json.loads(r.read())
            except Exception as e:
                last = e
        raise RuntimeError(f"etcd call {path} failed: {last}")

    def get(self, key):
        out = self.call("/v3/kv/range", {"key": b64(key)})
        kvs = out.get("kvs", [])
        if not kvs:
            return None, 0
        return json.loads(base64.b64decode(kvs[0]["value"])), int(kvs[0].get("mod_revision", "0"))

    def keys(self, prefix):
        out = self.call("/v3/kv/range", {"key": b64(prefix), "range_end": prefix_end(prefix), "keys_only": True})
        return [base64.b64decode(kv["key"]).decode() for kv in out.get("kvs", [])]

    def revision(self):
        return int(self.call("/v3/kv/range", {"key": b64("/")})["header"]["revision"])

    def compact(self, revision):
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    def leader(self):
        """The member that leads now (asked of every running member until one knows)."""
        for m in self.members:
            if not m.running():
                continue
            try:
                _, leader = m.status()
            except Exception:
                continue
            for candidate in self.members:
                if candidate.running():
                    try:
                        mid, _ = candidate.status()
                    except Exception:
                        continue
                    if mid == leader:
                        return candidate
        return None

    def stop(self):
        for m in self.members:
            m.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def b64(s):
    return base64.b64encode(s.encode()).decode()


def prefix_end(prefix):
    b = bytearray(prefix.encode())
    b[-1] += 1
    return base64.b64encode(bytes(b)).decode()
