"""Upgrade tunnels (WebSocket) through Turnout: routing, switches, accounting, drain, timeouts."""
import base64
import os
import signal
import socket
import ssl
import tempfile
import time

from harness import Turnout, Upstream, admin_call, make_certificate, run_cli, wait_for
from upstream import ws_frame, ws_read_frame


class WebSocket:
    """A minimal RFC 6455 client over a (possibly TLS) socket."""

    def __init__(self, port, path="/ws", tls=False, extra_headers=""):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            sock = ctx.wrap_socket(sock)
        self.sock = sock
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n").encode())
        self.f = sock.makefile("rb")
        self.status_line = self.f.readline().decode()
        self.headers = {}
        while True:
            line = self.f.readline().decode()
            if line in ("\r\n", ""):
                break
            k, v = line.split(":", 1)
            self.headers[k.strip().lower()] = v.strip()

    def ask(self, text):
        self.sock.sendall(ws_frame(0x1, text.encode(), mask=os.urandom(4)))
        opcode, payload = ws_read_frame(self.f)
        assert opcode == 0x1, (opcode, payload)
        return payload.decode()

    def close(self):
        try:
            self.sock.sendall(ws_frame(0x8, b"", mask=os.urandom(4)))
            ws_read_frame(self.f)
        except OSError:
            pass
        self.sock.close()


def tunnels(t):
    _, state, _ = admin_call(t, "GET", "/v1/state")
    return {p: sum(e["tunnels"] for e in v["endpoints"]) for p, v in state["pools"].items()}


def test_websocket_echo_survives_a_switch_and_new_tunnels_go_to_the_new_pool(blue_green):
    t, _, _ = blue_green()
    ws = WebSocket(t.port)
    assert ws.status_line.startswith("HTTP/1.1 101")
    assert ws.headers["upgrade"] == "websocket" and ws.headers["connection"].lower() == "upgrade"
    assert "sec-websocket-accept" in ws.headers and ws.headers["x-served-by"] == "blue"
    assert ws.ask("one") == "blue:one"
    assert tunnels(t) == {"blue": 1, "green": 0}
    status, _, _ = admin_call(t, "POST", "/v1/switch", {"pool": "green"})
    assert status == 200
    assert ws.ask("two") == "blue:two"  # the open tunnel stays where it started
    ws2 = WebSocket(t.port)
    assert ws2.ask("three") == "green:three"
    assert tunnels(t) == {"blue": 1, "green": 1}
    r = run_cli("status", "--admin", t.admin_socket)
    assert "TUNNELS" in r.stdout, r.stdout
    big = "x" * 3_000_000
    assert ws.ask(big) == "blue:" + big  # large messages both ways, with backpressure
    ws.close()
    ws2.close()
    wait_for(lambda: tunnels(t) == {"blue": 0, "green": 0}, what="tunnels to be counted closed")
    wait_for(lambda: "tunnel /ws closed pool=blue" in t.read_log(), what="the tunnel's access log line")
    _, state, _ = admin_call(t, "GET", "/v1/state")
    assert all(e["in_flight"] == 0 for p in state["pools"].values() for e in p["endpoints"])


def test_websocket_over_tls(cleanup):
    blue = Upstream("blue")
    cleanup.append(blue)
    d = tempfile.mkdtemp(prefix="turnout-cert-")
    cert, key = make_certificate(d, "server")
    t = Turnout({"blue": [blue.address]}, tls=f"{{ certificate: {cert}, private_key: {key} }}")
    cleanup.append(t)
    ws = WebSocket(t.tls_port, tls=True)
    assert ws.status_line.startswith("HTTP/1.1 101")
    assert ws.ask("secure") == "blue:secure"
    ws.close()


def test_a_declined_upgrade_is_an_ordinary_response_and_h2c_upgrade_is_not_forwarded(blue_green):
    t, _, _ = blue_green()
    s = socket.create_connection(("127.0.0.1", t.port), timeout=5)
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
              b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
    data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 200")
    assert b"Upgrade" not in data.split(b"\r\n\r\n", 1)[1]  # the upstream saw no Upgrade field
    s.close()
    ws = WebSocket(t.port, path="/status?code=404")
    assert ws.status_line.startswith("HTTP/1.1 404")
    ws.sock.close()


def test_idle_tunnels_are_closed_after_the_tunnel_timeout(blue_green):
    t, _, _ = blue_green(timeouts="{ tunnel: 300ms }")
    ws = WebSocket(t.port)
    assert ws.ask("hi") == "blue:hi"
    wait_for(lambda: 'error="tunnel idle for 300ms"' in t.read_log(), what="the idle tunnel to be closed")
    ws.sock.settimeout(5)
    assert ws.sock.recv(10) == b""
    wait_for(lambda: tunnels(t) == {"blue": 0, "green": 0}, what="the tunnel count to drop")


def test_drain_gives_open_tunnels_the_drain_window_then_exits(blue_green):
    t, _, _ = blue_green(timeouts="{ drain: 1s }")
    ws = WebSocket(t.port)
    assert ws.ask("before") == "blue:before"
    t.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "draining" in t.read_log(), what="the drain to start")
    assert ws.ask("during") == "blue:during"
    assert t.proc.wait(timeout=15) == 0
    ws.sock.settimeout(5)
    try:
        assert ws.sock.recv(10) == b""
    except ConnectionResetError:
        pass
