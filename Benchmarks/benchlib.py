"""Helpers the benchmark scripts share."""
import http.client
import os
import shutil
import socket
import sys
import tempfile


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over the admin API's Unix socket."""

    def __init__(self, path, timeout=10):
        super().__init__("turnout", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        self.sock = s


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "integration"))
from ports import free_port  # noqa: E402,F401 (never the same port twice; see Tests/integration/ports.py)


def prepare(settings, intro="Turnout runs with the defaults README ships, except:", tools=("nginx", "wrk")):
    """The start of a benchmark that runs Turnout beside nginx and wrk: exits when a tool is
    missing, prints every setting that differs from the shipped defaults and why, and returns a
    fresh working directory (readable by nginx's worker)."""
    for tool in tools:
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed: make bench-deps")
    print(intro)
    for setting, why in settings:
        print(f"  {setting:18} {why}")
    print()
    workdir = tempfile.mkdtemp(prefix="turnout-bench-")
    os.chmod(workdir, 0o755)
    return workdir
