"""Helpers the benchmark scripts share."""
import http.client
import socket


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over the admin API's Unix socket."""

    def __init__(self, path, timeout=10):
        super().__init__("turnout", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        self.sock = s


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
