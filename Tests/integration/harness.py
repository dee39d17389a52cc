"""Starts real Turnout processes and upstreams on 127.0.0.1 for the integration tests."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))


def turnout_binary():
    path = os.environ.get("TURNOUT_BIN") or os.path.join(ROOT, ".build", "release", "turnout")
    if not os.path.exists(path):
        raise RuntimeError(f"turnout binary not found at {path}; run `make build` first")
    return path


from ports import free_port  # noqa: E402,F401 (the tests import it from here)


def wait_for(predicate, timeout=10.0, what="condition"):
    """Polls `predicate` until it returns a truthy value; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Upstream:
    """An upstream.py process, or another script of this directory that takes --port, --name and
    --host and prints "ready": h2upstream.py (HTTP/2 only), grpc_upstream.py (a gRPC server)."""

    def __init__(self, name, port=None, unhealthy_file=None, fail_file=None, delay_file=None, extra_args=(), host="127.0.0.1",
                 script="upstream.py"):
        self.script = script
        self.host = host
        self.delay_file = delay_file
        self.extra_args = list(extra_args)
        self.name = name
        self.port = port or free_port()
        self.unhealthy_file = unhealthy_file
        self.fail_file = fail_file
        self.proc = None
        self.start()

    def start(self):
        args = [sys.executable, os.path.join(HERE, self.script), "--port", str(self.port), "--name", self.name,
                "--host", self.host]
        if self.unhealthy_file:
            args += ["--unhealthy-file", self.unhealthy_file]
        if self.fail_file:
            args += ["--fail-file", self.fail_file]
        if self.delay_file:
            args += ["--delay-file", self.delay_file]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"upstream {self.name} did not start: {line!r}")

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stats(self):
        import urllib.request
        with urllib.request.urlopen(f"http://{self.address}/stats", timeout=5) as r:
            return json.loads(r.read())

    def recorded(self):
        """The requests this upstream served: method, path, mirror mark, body length and sha256."""
        import urllib.request
        with urllib.request.urlopen(f"http://{self.address}/recorded", timeout=5) as r:
            return json.loads(r.read())


class Turnout:
    """A `turnout serve` process with a generated config. Listens on a port picked by the kernel."""

    def __init__(self, pools, weights=None, extra="", health="{ interval: 200ms, timeout: 500ms, rise: 1, fall: 1 }",
                 timeouts="", workers=2, args=(), admin_extra="", state_file=True, tls=None, limits="", pool_extra="",
                 root_extra="", pool_text=None, listener=""):
        """`tls`: a `tls:` block (YAML flow text) for a second listener; its port is `tls_port`.
        `pool_extra`: more keys for every pool's flow mapping, e.g. "max_idle_connections: 2".
        `root_extra`: more top-level YAML, e.g. a `cluster:` block.
        `pool_text`: {pool: flow mapping} written as is, e.g. {"blue": "{ endpoints: [], discovery: {...} }"}.
        `listener`: more keys for the first listener, e.g. "protocols: [h2c]"."""
        self.dir = tempfile.mkdtemp(prefix="turnout-test-")
        self.tls = tls
        self.config_path = os.path.join(self.dir, "turnout.yaml")
        pool_text = pool_text or {}
        pool_lines = "\n".join(
            f"  {name}: {pool_text[name]}" if name in pool_text else
            f"  {name}: {{ endpoints: [{', '.join(json.dumps(e) for e in eps)}]{', ' + pool_extra if pool_extra else ''} }}"
            for name, eps in pools.items())
        weight_text = ""
        if weights:
            weight_text = "  weights: { " + ", ".join(f"{k}: {v}" for k, v in weights.items()) + " }\n"
        # TURNOUT_TEST_IO=dispatch runs a test against the other I/O mode (see the Makefile).
        io = os.environ.get("TURNOUT_TEST_IO")
        self.config = (
            f"workers: {workers}\n"
            + (f"io: {io}\n" if io else "")
            +
            "listeners:\n  - address: 127.0.0.1:0\n"
            + (f"    {listener}\n" if listener else "")
            + (f"  - address: 127.0.0.1:0\n    tls: {tls}\n" if tls else "")
            + (f"limits: {limits}\n" if limits else "")
            +
            f"admin:\n  socket: {self.dir}/admin.sock\n{admin_extra}"
            + (f"state_file: {self.dir}/state.json\n" if state_file else "")
            + f"pools:\n{pool_lines}\n"
            f"routing:\n{weight_text}  preview_header: X-Turnout-Pool\n{extra}"
            f"health: {health}\n"
            + (f"timeouts: {timeouts}\n" if timeouts else "")
            + root_extra
        )
        with open(self.config_path, "w") as f:
            f.write(self.config)
        self.args = list(args)
        self.admin_socket = f"{self.dir}/admin.sock"
        self.state_file = f"{self.dir}/state.json"
        self.log_path = os.path.join(self.dir, "turnout.log")
        self.proc = None
        self.port = None
        self.start()

    def start(self):
        self.log = open(self.log_path, "ab")
        self.log_offset = os.path.getsize(self.log_path)
        self.proc = subprocess.Popen([turnout_binary(), "serve", "--config", self.config_path] + self.args,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        ports = wait_for(lambda: self._listening(), timeout=20, what="turnout to listen")
        self.port = int(ports[0])
        self.tls_port = int(ports[1]) if self.tls else None

    def _listening(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"turnout exited with {self.proc.returncode}:\n{self.read_log()}")
        found = re.findall(r"listening on 127\.0\.0\.1:(\d+)", self.read_log()[self.log_offset:])
        wanted = 2 if self.tls else 1
        return found[-wanted:] if len(found) >= wanted else None

    def read_log(self):
        with open(self.log_path, "r", errors="replace") as f:
            return f.read()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self, sig=signal.SIGTERM, timeout=40):
        """Sends `sig` and waits up to `timeout` seconds; a process still running then is killed and
        `hung` is set. Returns the exit status."""
        self.hung = False
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.hung = True
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def shutdown_problem(self, timeout=10):
        """Stops a running Turnout with SIGTERM, as an operator would, and says what went wrong: it
        did not exit within `timeout` seconds, exited with a status other than 0 (a crash at
        shutdown), or had already died of a signal other than SIGKILL (a crash during the test).
        None when it shut down cleanly, or the test ended it."""
        if self.proc.poll() is not None:
            self.log.close()
            rc = self.proc.returncode
            # Ended by the test (SIGKILL, or a signal it sent and Turnout handled: status 0), or by
            # itself with a signal: a crash (a Swift trap is SIGILL or SIGTRAP) the test did not see.
            if rc < 0 and rc != -signal.SIGKILL:
                tail = "\n".join(self.read_log().splitlines()[-40:])
                return f"turnout (pid {self.proc.pid}) died of signal {-rc} during the test; its log ends:\n{tail}"
            return None
        rc = self.stop(timeout=timeout)
        tail = "\n".join(self.read_log().splitlines()[-15:])
        if self.hung:
            return f"turnout (pid {self.proc.pid}) did not exit within {timeout}s of SIGTERM; its log ends:\n{tail}"
        if rc != 0:
            return f"turnout (pid {self.proc.pid}) exited with status {rc} at SIGTERM; its log ends:\n{tail}"
        return None


def recv_until_close(sock):
    """Everything `sock` receives until the peer closes its side."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def raw_exchange(port, data, timeout=5.0, read_until_close=True):
    """Sends raw bytes and returns everything received until the server closes (or timeout)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
            if not read_until_close:
                break
        return out
    finally:
        s.close()


class UnixHTTPConnection(__import__("http.client").client.HTTPConnection):
    """http.client over a Unix socket (for the admin API)."""

    def __init__(self, path, timeout=10):
        super().__init__("turnout", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


def admin_call(turnout, method, path, body=None, headers=None, raw_body=None):
    """One admin request over the Unix socket. Returns (status, parsed JSON or text, headers)."""
    c = UnixHTTPConnection(turnout.admin_socket)
    h = dict(headers or {})
    data = raw_body
    if body is not None:
        data = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    text = r.read()
    c.close()
    try:
        return r.status, json.loads(text), r
    except ValueError:
        return r.status, text, r


def run_cli(*args, env=None, timeout=20):
    full_env = dict(os.environ)
    full_env.pop("TURNOUT_ADMIN", None)
    if env:
        full_env.update(env)
    return subprocess.run([turnout_binary(), *args], capture_output=True, text=True, timeout=timeout, env=full_env)


def check_config_refuses(directory, text, message):
    """Writes `text` as a config file in `directory` and asserts that `turnout check-config`
    refuses it with `message` among what it prints."""
    path = os.path.join(str(directory), "check.yaml")
    with open(path, "w") as f:
        f.write(text)
    r = run_cli("check-config", path)
    assert r.returncode != 0 and message in r.stdout + r.stderr, (text, r.stdout + r.stderr)


def make_certificate(directory, name, hosts=("localhost", "127.0.0.1")):
    """A self-signed EC certificate for `hosts` (DNS names or IPs). Returns (cert_path, key_path)."""
    cert = os.path.join(directory, f"{name}.crt")
    key = os.path.join(directory, f"{name}.key")
    san = ",".join(("IP:" if re.match(r"^[0-9.]+$", h) else "DNS:") + h for h in hosts)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={hosts[0]}", "-addext",
                    f"subjectAltName={san}"], check=True, capture_output=True)
    return cert, key


PATTERN_BLOCK = bytes(range(256)) * 4096  # what upstream.py's /big sends, repeated


def pattern_sha256(size):
    """The sha256 of `size` bytes of the /big pattern (size a multiple of 1 MiB)."""
    import hashlib
    h = hashlib.sha256()
    for _ in range(size // len(PATTERN_BLOCK)):
        h.update(PATTERN_BLOCK)
    return h.hexdigest()


def write_pattern_file(path, size):
    with open(path, "wb") as f:
        for _ in range(size // len(PATTERN_BLOCK)):
            f.write(PATTERN_BLOCK)


class RssPeak:
    """Samples a Turnout's RSS while the `with` block runs; `growth_mib` is peak minus start."""

    def __init__(self, turnout):
        import threading
        self.turnout = turnout
        self.base = turnout.rss_kib()
        self.peak = self.base
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample)

    def _sample(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self.turnout.rss_kib())
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        print(f"RSS base {self.base} KiB, peak {self.peak} KiB, growth {self.growth_mib:.1f} MiB")
        return False

    @property
    def growth_mib(self):
        return (self.peak - self.base) / 1024
