"""Malformed and ambiguous requests (request smuggling and friends) against a permissive upstream.

For every case the table records Turnout's answer and what the upstream received: nothing,
exactly one well-formed request (checked with h11, a strict HTTP/1.1 parser), or, for a chunked
body that turns out malformed after its head was forwarded, a head whose body never ends followed
by a closed connection: never a message whose end Turnout and the upstream could disagree about,
never a second request. Run with -s to see the table.
"""
import socket
import threading
import time

import h11
import pytest

from harness import Turnout, wait_for

H = b"Host: example.test\r\n"


def req(head, body=b""):
    return head + body


# (name, raw request, expected status from Turnout)
CASES = [
    # CL.TE, TE.CL and TE.TE obfuscations
    ("CL and TE together", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX", 400),
    ("TE and CL together", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
    ("TE chunked, identity", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    ("TE identity", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n", 400),
    ("TE gzip, chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE xchunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    ("TE chunked twice in one field", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE in two fields", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE chunked then identity field", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n", 400),
    ("TE with space before colon", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE folded onto a new line", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE with vertical tab", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n", 400),
    ("TE with NUL", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\x00\r\n\r\n0\r\n\r\n", 400),
    ("TE quoted", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n", 400),
    ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("leading whitespace header line", b"POST / HTTP/1.1\r\n" + H + b" Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE upper case (valid)", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: CHUNKED\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 200),
    ("TE with tab OWS (valid)", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\tchunked \r\nConnection: close\r\n\r\n0\r\n\r\n", 200),
    # Content-Length
    ("CL duplicated, same value", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("CL duplicated, different", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("CL comma-joined same", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\nabc", 400),
    ("CL comma-joined different", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3, 4\r\n\r\nabcd", 400),
    ("CL with plus sign", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc", 400),
    ("CL negative", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("CL hex", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x3\r\n\r\nabc", 400),
    ("CL two numbers", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3 3\r\n\r\nabc", 400),
    ("CL overflow", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
    ("CL empty", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: \r\n\r\n", 400),
    ("CL exponent", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1e3\r\n\r\n", 400),
    ("CL with space before colon", b"POST / HTTP/1.1\r\n" + H + b"Content-Length : 3\r\n\r\nabc", 400),
    ("CL leading zeros (valid)", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 003\r\nConnection: close\r\n\r\nabc", 200),
    ("CL body then smuggled request", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nConnection: close\r\n\r\nabcGET /smuggled HTTP/1.1\r\n" + H + b"\r\n", 200),
    # chunked framing
    ("chunk size overflow", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk size with 0x", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk size negative", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk size with leading space", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n 3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk size 0_2e", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0_2e\r\n\r\n", 400),
    ("chunk size -0x0", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-0x0\r\n\r\n", 400),
    ("bare CR after chunk size", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n1\rX\r\n0\r\n\r\n", 400),
    ("chunk size then text", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n1these-bytes-never-get-validated\r\n\r\n", 400),
    ("chunk size empty", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk line bare LF", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", 400),
    ("chunk data longer than size", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n", 400),
    ("chunk data not followed by CRLF", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n", 400),
    ("chunk extension with bare CR", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3;a=\rb\r\nabc\r\n0\r\n\r\n", 400),
    ("trailer field without colon", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n", 400),
    ("trailer field with space before colon", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T : 1\r\n\r\n", 400),
    ("chunk extension (valid)", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3;name=value\r\nabc\r\n0\r\n\r\n", 200),
    ("trailer field (valid, dropped)", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n", 200),
    # field syntax
    ("obs-fold in a value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n", 400),
    ("NUL in a value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    ("bare CR in a value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n", 400),
    ("bare LF line endings", b"GET / HTTP/1.1\n" + b"Host: example.test\n\n", 400),
    ("space in a field name", b"GET / HTTP/1.1\r\n" + H + b"X A: b\r\n\r\n", 400),
    ("empty field name", b"GET / HTTP/1.1\r\n" + H + b": b\r\n\r\n", 400),
    ("line without colon", b"GET / HTTP/1.1\r\n" + H + b"Foo\r\n\r\n", 400),
    ("non-ASCII in a field name", b"GET / HTTP/1.1\r\n" + H + b"X-\xc3\xa9: b\r\n\r\n", 400),
    # request line and target
    ("two spaces in request line", b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("invalid method character", b"G@T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("lower-case version", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    ("HTTP/2.0 request line", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("target without slash", b"GET foo HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("space inside target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("control character in target", b"GET /a\x01b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("absolute form with userinfo", b"GET http://user@example.test/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("absolute form unknown scheme", b"GET ftp://example.test/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("asterisk form with GET", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("CONNECT", b"CONNECT example.test:443 HTTP/1.1\r\n" + H + b"\r\n", 405),
    ("absolute form (valid)", b"GET http://example.test/x HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n", 200),
    # Host
    ("missing Host", b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
    ("two Host fields", b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", 400),
    ("Host with a space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: user@example.test\r\n\r\n", 400),
    ("Host with a slash", b"GET / HTTP/1.1\r\nHost: example.test/x\r\n\r\n", 400),
    # limits
    ("header line over the head limit", b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    ("too many header fields", b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(120)) + b"\r\n", 431),
    ("target over 8 KiB", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    ("binary garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400),
    # valid requests that must arrive as exactly one request
    ("plain GET (valid)", b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n", 200),
    ("HTTP/1.0 GET without Host (valid)", b"GET / HTTP/1.0\r\n\r\n", 200),
    ("Expect 100-continue with body (valid)", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nabc", 200),
    ("hop-by-hop named in Connection (valid)", b"GET / HTTP/1.1\r\n" + H + b"Connection: close, X-Secret\r\nX-Secret: 1\r\n\r\n", 200),
]


# Every rejected case must reach the upstream not at all: a chunked body whose bad bytes arrive
# with its head is checked before anything is forwarded (test_a_body_that_turns_bad_later covers
# bad bytes that arrive after the head went upstream).


class Connection:
    """One connection the upstream accepted: its bytes, and whether the upstream is done with it."""

    def __init__(self):
        self.data = b""
        self.done = threading.Event()


class RecordingUpstream:
    """Accepts anything, records every connection's bytes, answers each head it sees with a small
    200 and closes (so every request Turnout sends arrives on a connection of its own).

    A connection is recorded the moment it is accepted, in accept order, so that nothing a case
    caused can be missed: after each case the test sends a fence request through Turnout and waits
    until the upstream accepted it, then until every connection accepted before it is done."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.connections = []  # Connection, in accept order
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            record = Connection()
            with self.lock:
                self.connections.append(record)
            threading.Thread(target=self.handle, args=(c, record), daemon=True).start()

    def handle(self, c, record):
        data = b""
        c.settimeout(2)
        try:
            while b"\r\n\r\n" not in data:
                chunk = c.recv(65536)
                if not chunk:
                    break
                data += chunk
                record.data = data
            if data.startswith(b"GET /healthz"):
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
                return
            # Read whatever body follows for a moment, then answer.
            deadline = time.monotonic() + 0.3
            c.settimeout(0.05)
            while time.monotonic() < deadline:
                try:
                    chunk = c.recv(65536)
                except socket.timeout:
                    if is_complete(data):
                        break
                    continue
                if not chunk:
                    break
                data += chunk
                record.data = data
            if data:
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nup\n")
        except OSError:
            pass
        finally:
            record.data = data
            c.close()
            record.done.set()

    def take_until_fence(self, fence):
        """Waits until the upstream accepted the fence request and is done with every connection
        accepted before it; returns the bytes of those connections (probes left out) and forgets
        them."""
        def fence_index():
            with self.lock:
                for i, r in enumerate(self.connections):
                    if r.data.startswith(fence):
                        return i + 1
            return None
        n = wait_for(fence_index, what=f"the fence {fence!r} to reach the upstream") - 1
        with self.lock:
            earlier, self.connections = self.connections[:n], self.connections[n + 1:]
        for r in earlier:
            assert r.done.wait(10), "the upstream never finished with a connection"
        return [r.data for r in earlier if r.data and not r.data.startswith(b"GET /healthz")]


def is_complete(data):
    return parse_requests(data)[0] == "complete"


def parse_requests(data):
    """What a strict parser (h11) makes of `data`: ("complete", requests) when it holds whole
    requests and nothing else, ("truncated", requests) when the last message never ended, or
    ("malformed", requests)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    requests = []
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return "malformed", requests
        if isinstance(event, h11.Request):
            requests.append(event)
        elif isinstance(event, h11.EndOfMessage):
            if conn.trailing_data[0]:
                return "malformed", requests  # bytes after the message: a second, smuggled request
            return "complete", requests
        elif event is h11.NEED_DATA or event is h11.PAUSED:
            return "truncated", requests


def status_of(answer):
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer[9:12])


def exchange(port, data):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(data)
    except OSError:
        pass
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and status_of(out) != 100:
                head, _, rest = out.partition(b"\r\n\r\n")
                length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
                if length and len(rest) >= length[0]:
                    break
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    # Skip interim responses.
    while out.startswith(b"HTTP/1.1 100"):
        out = out.partition(b"\r\n\r\n")[2]
    return out


@pytest.fixture(scope="module")
def smuggling_proxy():
    up = RecordingUpstream()
    t = Turnout({"blue": [f"127.0.0.1:{up.port}"]}, timeouts="{ client_header: 1s, idle: 2s }")
    wait_for(lambda: "is healthy" in t.read_log(), what="the upstream to be healthy")
    yield t, up
    problem = t.shutdown_problem()
    assert problem is None, problem


def test_the_smuggling_table(smuggling_proxy):
    t, up = smuggling_proxy
    assert len(CASES) >= 60
    rows, problems = [], []
    for i, (name, data, expected) in enumerate(CASES):
        answer = exchange(t.port, data)
        status = status_of(answer)
        # Whatever this case made Turnout send upstream was sent before the fence request, which
        # goes out on a later connection.
        fence = b"GET /fence/%d " % i
        assert status_of(exchange(t.port, fence + b"HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")) == 200
        received = up.take_until_fence(fence)
        outcomes = [parse_requests(r) for r in received]
        if not received:
            seen = "nothing"
        elif len(received) == 1 and outcomes[0][0] == "complete" and len(outcomes[0][1]) == 1:
            r = outcomes[0][1][0]
            seen = f"one request: {r.method.decode()} {r.target.decode()[:30]}"
        elif len(received) == 1 and outcomes[0][0] == "truncated":
            # Turnout streams bodies: the head went upstream before the bad chunk arrived, then the
            # upstream connection was closed. The message never ends, so nothing is processed.
            seen = "a head whose body never ended, then closed"
        else:
            seen = f"UNEXPECTED: {received!r}"[:200]
        rows.append((name, status, seen))
        if status != expected:
            problems.append(f"{name}: Turnout answered {status}, expected {expected}")
        if expected >= 400 and seen != "nothing":
            problems.append(f"{name}: rejected, yet the upstream received {received!r}"[:300])
        if expected < 400 and not seen.startswith("one request"):
            problems.append(f"{name}: the upstream saw {seen}")
    width = max(len(r[0]) for r in rows)
    print()
    for name, status, seen in rows:
        print(f"  {name:{width}}  {status}  upstream: {seen}")
    assert problems == []
    assert t.proc.poll() is None


class HoldingUpstream(RecordingUpstream):
    """Answers /healthz; holds every other connection open, recording what arrives, until the peer
    closes it."""

    def handle(self, c, record):
        data = b""
        c.settimeout(30)
        try:
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                data += chunk
                record.data = data
                if data.startswith(b"GET /healthz") and b"\r\n\r\n" in data:
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
                    break
        except OSError:
            pass
        finally:
            record.data = data
            c.close()
            record.done.set()

    def request_connection(self):
        with self.lock:
            for r in self.connections:
                if r.data.startswith(b"POST"):
                    return r
        return None


def test_a_body_that_turns_bad_later_never_looks_complete_upstream():
    """A chunk's CRLF goes upstream only after the client's own arrived, so a body that turns bad
    after its head was forwarded leaves the upstream with a message that never ends."""
    up = HoldingUpstream()
    t = Turnout({"blue": [f"127.0.0.1:{up.port}"]})
    try:
        wait_for(lambda: "is healthy" in t.read_log(), what="the upstream to be healthy")
        c = socket.create_connection(("127.0.0.1", t.port), timeout=10)
        c.sendall(b"POST /upload HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello")
        record = wait_for(lambda: (r := up.request_connection()) and b"hello" in r.data and r,
                          what="the first chunk's bytes to reach the upstream")
        assert record.data.endswith(b"\r\n\r\n5\r\nhello"), record.data
        c.sendall(b"\r\n")
        wait_for(lambda: record.data.endswith(b"hello\r\n"), what="the chunk's CRLF to follow the client's")
        c.sendall(b"3\r\nabcX")
        answer = c.recv(65536)
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert record.done.wait(10), "the upstream connection was left open"
        assert record.data.endswith(b"hello\r\n3\r\nabc"), record.data
        assert parse_requests(record.data)[0] == "truncated"
        c.close()
    finally:
        t.stop()
