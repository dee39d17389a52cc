#!/usr/bin/env python3
"""A scriptable HTTP/1.1 upstream for Turnout's integration tests.

Run: upstream.py --port PORT --name NAME [--unhealthy-file PATH]

Paths:
  /healthz            200 "ok" (500 while --unhealthy-file exists)
  /echo               JSON: method, path, version, headers, body length and sha256
  /big?bytes=N[&chunked=1]   N bytes of a fixed pattern (Content-Length, or chunked)
  /slow?ms=N          answers after N ms
  /status?code=N      answers with that status (no body for 1xx/204/304)
  /garbage            sends something that is not HTTP, then closes
  /bighead            a response head of 70 KB (over Turnout's 64 KiB limit)
  /ws                 WebSocket echo: each text message comes back as "NAME:message"
  /reset              closes the connection with a TCP reset, no response
  /partial            promises 100 bytes, sends 10, closes
  /overrun[?code=204] a response followed, in the same write, by bytes no response announced
                      ("ok" with Content-Length 2, or a 204); the connection stays open
  /                   with --fail-file: 500 for the fraction of requests written in that file
  /                   with --delay-file: answers after the milliseconds written in that file
  /                   with --drop-keepalive F: after a fraction F of answers the connection is
                      closed a moment later, like an upstream's idle timeout racing a new request
  /stats              JSON: data connections accepted and requests served (probes and /stats excluded)
  /recorded           JSON: the last 10,000 requests served (probes, /stats and /recorded excluded):
                      method, path, X-Turnout-Mirror header, X-Request-Id headers, body length and sha256
  anything else       200 with the server's name as body and X-Served-By header
"""
import argparse
import base64
import hashlib
import json
import os
import random
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PATTERN = bytes(range(256)) * 4096  # 1 MiB


def pattern_bytes(n):
    full, rest = divmod(n, len(PATTERN))
    for _ in range(full):
        yield PATTERN
    if rest:
        yield PATTERN[:rest]


class Stats:
    lock = threading.Lock()
    connections = 0
    requests = 0
    recorded = []


def ws_frame(opcode, payload, mask=None):
    """One WebSocket frame (FIN set); clients pass a 4-byte mask."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack(">H", n)
    else:
        head += bytes([m | 127]) + struct.pack(">Q", n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def ws_read_frame(f):
    """Reads one frame from a file-like object; returns (opcode, payload) or (None, None) at EOF."""
    def exact(n):
        data = b""
        while len(data) < n:
            chunk = f.read(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data
    h = exact(2)
    if h is None:
        return None, None
    opcode, n = h[0] & 0x0F, h[1] & 0x7F
    masked = h[1] & 0x80
    if n == 126:
        n = struct.unpack(">H", exact(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", exact(8))[0]
    mask = exact(4) if masked else None
    payload = exact(n) if n else b""
    if payload is None:
        return None, None
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return opcode, payload


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "upstream"
    name = "upstream"
    unhealthy_file = None
    fail_file = None
    drop_keepalive = 0.0
    fail_counter = 0
    delay_file = None

    def setup(self):
        super().setup()
        self.counted = False

    def log_message(self, fmt, *args):
        pass

    def read_body(self):
        h = hashlib.sha256()
        n = 0
        te = self.headers.get("Transfer-Encoding", "")
        if te.lower() == "chunked":
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                n += self.consume(size, h)
                self.rfile.readline(3)
        else:
            n = self.consume(int(self.headers.get("Content-Length", "0") or 0), h)
        return n, h.hexdigest()

    def record(self, n, digest):
        entry = {"method": self.command, "path": self.path, "mirror": self.headers.get("X-Turnout-Mirror"),
                 "request_ids": self.headers.get_all("X-Request-Id") or [],
                 "body_length": n, "body_sha256": digest}
        with Stats.lock:
            Stats.recorded.append(entry)
            del Stats.recorded[:-10000]

    def consume(self, left, h):
        """Reads exactly `left` body bytes into hash `h`; returns how many."""
        total = left
        while left:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                raise ConnectionError("eof in body")
            h.update(chunk)
            left -= len(chunk)
        return total

    def send_plain(self, code, body, extra=()):
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("X-Served-By", self.name)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        # Head and body leave in one write, as real servers send small answers. A response split
        # over two writes can be cut between them when a test kills this process, and no proxy
        # can repair a response whose head it has already forwarded.
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(body)
        self.flush_headers()

    def websocket_echo(self):
        """RFC 6455 handshake, then every text frame comes back as "NAME:payload"; a close frame ends it."""
        key = self.headers.get("Sec-WebSocket-Key")
        if (self.headers.get("Upgrade", "").lower() != "websocket" or not key
                or "upgrade" not in self.headers.get("Connection", "").lower()):
            self.send_plain(400, b"not a websocket handshake\n")
            return
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"X-Served-By: " + self.name.encode() + b"\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        self.close_connection = True
        while True:
            opcode, payload = ws_read_frame(self.rfile)
            if opcode is None or opcode == 0x8:
                try:
                    self.wfile.write(ws_frame(0x8, b""))
                except OSError:
                    pass
                return
            if opcode == 0x9:
                self.wfile.write(ws_frame(0xA, payload))
                continue
            self.wfile.write(ws_frame(0x1, self.name.encode() + b":" + payload))

    def handle_any(self):
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        # Probes and the test's own /stats calls are not counted: they did not come through the proxy.
        counted = url.path not in ("/healthz", "/stats", "/recorded")
        if counted and not self.counted:
            self.counted = True
            with Stats.lock:
                Stats.connections += 1
        if counted:
            with Stats.lock:
                Stats.requests += 1
        if url.path == "/healthz":
            self.read_body()
            if self.unhealthy_file and os.path.exists(self.unhealthy_file):
                self.send_plain(500, b"unhealthy\n")
            else:
                self.send_plain(200, b"ok\n")
            return
        if url.path == "/recorded":
            self.read_body()
            with Stats.lock:
                body = json.dumps(Stats.recorded).encode()
            self.send_plain(200, body, [("Content-Type", "application/json")])
            return
        if url.path == "/echo":
            n, digest = self.read_body()
            self.record(n, digest)
            body = json.dumps({
                "name": self.name, "method": self.command, "path": self.path,
                "version": self.request_version, "headers": [[k, v] for k, v in self.headers.items()],
                "body_length": n, "body_sha256": digest,
            }).encode()
            self.send_plain(200, body, [("Content-Type", "application/json")])
            return
        n, digest = self.read_body()
        self.record(n, digest)
        if self.delay_file and url.path == "/" and os.path.exists(self.delay_file):
            time.sleep(float(open(self.delay_file).read().strip() or "0") / 1000)
        if self.fail_file and url.path == "/" and os.path.exists(self.fail_file):
            # Answer 500 to every k-th request, k = 1 / the fraction in the file.
            every = max(1, round(1 / float(open(self.fail_file).read().strip() or "1")))
            with Stats.lock:
                Handler.fail_counter += 1
                failing = Handler.fail_counter % every == 0
            if failing:
                self.send_plain(500, b"injected failure\n")
                return
        if url.path == "/big":
            total = int(q.get("bytes", "0"))
            self.send_response(200)
            self.send_header("X-Served-By", self.name)
            chunked = q.get("chunked") == "1"
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(total))
            self.end_headers()
            for block in pattern_bytes(total):
                if chunked:
                    self.wfile.write(b"%x\r\n" % len(block) + block + b"\r\n")
                else:
                    self.wfile.write(block)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
            return
        if url.path == "/slow":
            time.sleep(int(q.get("ms", "1000")) / 1000)
            self.send_plain(200, f"{self.name} slow\n".encode())
            return
        if url.path == "/status":
            code = int(q.get("code", "200"))
            self.send_response(code)
            self.send_header("X-Served-By", self.name)
            if code in (204, 304) or code < 200:
                self.end_headers()
            else:
                self.send_header("Content-Length", "3")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(b"abc")
            return
        if url.path == "/ws":
            self.websocket_echo()
            return
        if url.path == "/bighead":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\nContent-Length: 2\r\n\r\nok")
            self.close_connection = True
            return
        if url.path == "/garbage":
            self.wfile.write(b"THIS IS NOT HTTP\r\n\r\n")
            self.close_connection = True
            return
        if url.path == "/reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if url.path == "/partial":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if url.path == "/overrun":
            if q.get("code") == "204":
                self.wfile.write(b"HTTP/1.1 204 No Content\r\nX-Served-By: " + self.name.encode() + b"\r\n\r\nEXTRA")
            else:
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Served-By: " + self.name.encode() + b"\r\nContent-Length: 2\r\n\r\nokEXTRA")
            return
        if url.path == "/stats":
            with Stats.lock:
                body = json.dumps({"connections": Stats.connections, "requests": Stats.requests}).encode()
            self.send_plain(200, body, [("Content-Type", "application/json")])
            return
        self.send_plain(200, f"{self.name}\n".encode())
        if self.drop_keepalive and random.random() < self.drop_keepalive:
            # Close this keep-alive connection a moment later, as an idle timeout would: a request
            # Turnout sends on it meanwhile is lost without an answer.
            conn = self.connection
            threading.Timer(random.uniform(0, 0.003), lambda: _shutdown(conn)).start()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = handle_any


def _shutdown(conn):
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1", help="the loopback address to listen on (127.0.0.2... for DNS tests)")
    p.add_argument("--name", required=True)
    p.add_argument("--unhealthy-file")
    p.add_argument("--fail-file", help="while it exists, answer 500 to this fraction of / requests")
    p.add_argument("--delay-file", help="while it exists, delay / by the milliseconds written in it")
    p.add_argument("--drop-keepalive", type=float, default=0.0,
                   help="after this fraction of / answers, close the keep-alive connection a moment later")
    a = p.parse_args()
    Handler.drop_keepalive = a.drop_keepalive
    Handler.delay_file = a.delay_file
    Handler.name = a.name
    Handler.unhealthy_file = a.unhealthy_file
    Handler.fail_file = a.fail_file
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.request_queue_size = 512
    srv = ThreadingHTTPServer((a.host, a.port), Handler)
    print(f"ready {a.port}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
