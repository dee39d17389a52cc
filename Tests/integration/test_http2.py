"""HTTP/2 on the client side: h2c with prior knowledge, h2 over TLS, flow control, floods, drain.

Real peers: curl, h2load (nghttp2-client) and python-h2 for frame-level cases.
"""
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time

import h2.config
import h2.errors
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest

from harness import RssPeak, Turnout, admin_call, pattern_sha256, wait_for, write_pattern_file


def curl(*args, timeout=60):
    r = subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=timeout)
    return r


def h2load(*args, timeout=300):
    r = subprocess.run(["h2load", *args], capture_output=True, text=True, timeout=timeout)
    return r.stdout + r.stderr


def h2load_counts(out):
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    assert m, out
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    total, started, done, ok, failed, errored, timeouts = map(int, m.groups())
    return {"total": total, "succeeded": ok, "failed": failed, "errored": errored, "timeout": timeouts,
            "2xx": int(codes.group(1)) if codes else 0}


def served_by_sequence(output):
    return [line for line in output.decode().split("\n") if line]


def test_h2c_prior_knowledge_reaches_both_pools_per_the_weights(blue_green):
    # Many concurrent streams on one connection. (curl 7.88 cannot reuse an h2c prior-knowledge
    # connection, curl/curl#10634, so python-h2 is the client here.)
    t, _, _ = blue_green(weights={"blue": 80, "green": 20})
    c = H2Client(t.port)
    ids = list(range(1, 100, 2))
    for sid in ids:
        c.conn.send_headers(sid, c.request_headers(t.port, "/"), end_stream=True)
    c.flush()
    events = c.events_until(lambda ev: sum(isinstance(e, h2.events.StreamEnded) for e in ev) == len(ids))
    served = [dict(e.headers)["x-served-by"] for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert served.count("blue") == 40 and served.count("green") == 10
    bodies = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert bodies.count(b"blue\n") == 40 and bodies.count(b"green\n") == 10
    c.close()
    r = curl("--http2-prior-knowledge", "-w", "%{http_version}", f"{t.url}/")
    assert r.stdout in (b"blue\n2", b"green\n2")


def test_a_new_http2_client_gets_the_cohort_cookie_and_keeps_its_pool(blue_green):
    # The cookie goes on the HTTP/2 response's fields after Turnout's own `via`.
    t, _, _ = blue_green(weights={"blue": 50, "green": 50}, extra="  sticky: { cookie: turnout_cohort }\n")

    def fields(*args):
        r = curl("--http2-prior-knowledge", "-i", *args, f"{t.url}/")
        assert r.returncode == 0, r.stderr
        head = r.stdout.decode().split("\r\n\r\n", 1)[0].split("\r\n")
        assert head[0].startswith("HTTP/2 200"), head
        return [tuple(line.split(": ", 1)) for line in head[1:]]

    first = fields()
    cookies = [v for n, v in first if n == "set-cookie"]
    assert len(cookies) == 1 and re.fullmatch(
        r"turnout_cohort=[0-9a-f]{16}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax", cookies[0]), first
    assert [v for n, v in first if n == "via"] == ["1.1 turnout"], first
    pool = dict(first)["x-served-by"]
    for _ in range(5):
        again = fields("-H", f"Cookie: {cookies[0].split(';')[0]}")
        assert "set-cookie" not in dict(again) and dict(again)["x-served-by"] == pool, again


def test_tls_negotiates_h2_and_http11_still_works(tls_blue_green):
    t, _, _ = tls_blue_green(weights={"blue": 50, "green": 50})
    url = f"https://127.0.0.1:{t.tls_port}/"
    r = curl("-k", "-w", "%{http_version}\n", *([url] * 20))
    lines = served_by_sequence(r.stdout)
    assert [x for x in lines if x not in ("blue", "green")] == ["2"] * 20
    assert lines.count("blue") == 10 and lines.count("green") == 10
    r = curl("-k", "--http1.1", "-w", "%{http_version}\n", *([url] * 20))
    lines = served_by_sequence(r.stdout)
    assert [x for x in lines if x not in ("blue", "green")] == ["1.1"] * 20
    assert lines.count("blue") == 10 and lines.count("green") == 10


def test_forwarded_request_over_h2_is_http11_with_forwarding_fields(tls_blue_green):
    t, _, _ = tls_blue_green()
    r = curl("-k", "-H", "Cookie: a=1", "-H", "Cookie: b=2", "-d", "hello",
             f"https://127.0.0.1:{t.tls_port}/echo?x=1")
    echo = json.loads(r.stdout)
    headers = {k.lower(): v for k, v in echo["headers"]}
    assert echo["version"] == "HTTP/1.1" and echo["method"] == "POST" and echo["path"] == "/echo?x=1"
    assert headers["host"] == f"127.0.0.1:{t.tls_port}"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["via"] == "2 turnout"
    assert headers["cookie"] == "a=1; b=2"
    assert headers["content-length"] == "5" and echo["body_length"] == 5


def run_h2load_with_split(t, url, extra=()):
    before = {p: pool_requests(t, p) for p in ("blue", "green")}
    out = h2load("-n", "100000", "-c", "10", "-m", "10", *extra, url)
    counts = h2load_counts(out)
    assert counts["succeeded"] == 100000 and counts["failed"] == 0 and counts["errored"] == 0, out
    assert counts["2xx"] == 100000, out
    after = {p: pool_requests(t, p) for p in ("blue", "green")}
    return {p: after[p] - before[p] for p in after}


def pool_requests(t, pool):
    """2xx responses Turnout counted for `pool` (from /metrics)."""
    from harness import UnixHTTPConnection
    c = UnixHTTPConnection(t.admin_socket)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    total = 0
    for line in text.splitlines():
        if line.startswith("turnout_requests_total{") and f'pool="{pool}"' in line and 'class="2xx"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def in_flight(t):
    _, state, _ = admin_call(t, "GET", "/v1/state")
    return sum(e["in_flight"] for p in state["pools"].values() for e in p["endpoints"])


def test_h2load_over_h2c_and_tls_has_no_errors_and_keeps_the_split(tls_blue_green):
    # 100 concurrent streams keep the Python upstreams busy: probes get a patient health config so
    # that no endpoint is marked down (which would fail traffic over and change the split).
    t, _, _ = tls_blue_green(weights={"blue": 90, "green": 10}, health="{ interval: 1s, timeout: 5s, rise: 1, fall: 10 }")
    split = run_h2load_with_split(t, f"{t.url}/")
    assert split == {"blue": 90000, "green": 10000}
    split = run_h2load_with_split(t, f"https://127.0.0.1:{t.tls_port}/")
    assert split == {"blue": 90000, "green": 10000}


def test_switch_during_h2load_fails_no_stream(tls_blue_green):
    t, _, _ = tls_blue_green()
    result = {}

    def load():
        result["out"] = h2load("-n", "30000", "-c", "10", "-m", "10", f"{t.url}/")

    th = threading.Thread(target=load)
    th.start()
    switches = 0
    while th.is_alive() and switches < 40:
        status, _, _ = admin_call(t, "POST", "/v1/switch", {"pool": "green" if switches % 2 == 0 else "blue"})
        assert status == 200
        switches += 1
    th.join(timeout=300)
    counts = h2load_counts(result["out"])
    assert switches >= 5, "the load finished before enough switches happened"
    assert counts["succeeded"] == 30000 and counts["failed"] == 0 and counts["errored"] == 0, result["out"]


def test_gigabyte_upload_and_download_over_h2_with_bounded_memory(tls_blue_green):
    t, _, _ = tls_blue_green()
    size = 1 << 30
    expected = pattern_sha256(size)
    with RssPeak(t) as rss:
        down = subprocess.run(f"curl -sS -k https://127.0.0.1:{t.tls_port}/big?bytes={size} | sha256sum",
                              shell=True, capture_output=True, text=True, timeout=300)
        assert down.stdout.split()[0] == expected
        down = subprocess.run(f"curl -sS --http2-prior-knowledge {t.url}/big?bytes={size}\\&chunked=1 | sha256sum",
                              shell=True, capture_output=True, text=True, timeout=300)
        assert down.stdout.split()[0] == expected
        src = os.path.join(t.dir, "upload.bin")
        write_pattern_file(src, size)
        up = subprocess.run(["curl", "-sS", "-k", "-T", src, f"https://127.0.0.1:{t.tls_port}/echo"],
                            capture_output=True, text=True, timeout=300)
        echo = json.loads(up.stdout)
        assert echo["body_length"] == size and echo["body_sha256"] == expected
        # Without a length up front: the upstream gets a chunked body.
        up = subprocess.run(f"cat {src} | curl -sS --http2-prior-knowledge -T - {t.url}/echo",
                            shell=True, capture_output=True, text=True, timeout=300)
        os.unlink(src)
        echo = json.loads(up.stdout)
        assert echo["body_length"] == size and echo["body_sha256"] == expected
    assert rss.growth_mib < 64


# Frame-level cases with python-h2.

class H2Client:
    """A raw h2c client on a socket, driven by python-h2."""

    def __init__(self, port, validate=True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_outbound_headers=validate, validate_inbound_headers=validate,
                                        normalize_outbound_headers=validate)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request_headers(self, port, path="/"):
        return [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", f"127.0.0.1:{port}")]

    def events_until(self, predicate, timeout=10):
        """Reads until `predicate(events)` is true or the server closes; returns all events."""
        events = []
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                events.append("closed")
                return events
            if not data:
                events.append("closed")
                return events
            try:
                events.extend(self.conn.receive_data(data))
            except Exception as e:  # the server may send what a strict client objects to after a GOAWAY
                events.append(e)
            try:
                self.flush()
            except (ConnectionResetError, BrokenPipeError):
                events.append("closed")
                return events
            if predicate(events):
                return events
        raise AssertionError(f"timed out; events so far: {events[-5:]}")

    def close(self):
        self.sock.close()


def test_streams_get_answers_and_a_reset_stream_cancels_its_upstream_request(blue_green):
    t, _, _ = blue_green()
    c = H2Client(t.port)
    c.conn.send_headers(1, c.request_headers(t.port, "/slow?ms=3000"), end_stream=True)
    c.conn.send_headers(3, c.request_headers(t.port, "/"), end_stream=True)
    c.flush()
    events = c.events_until(lambda ev: any(isinstance(e, h2.events.StreamEnded) and e.stream_id == 3 for e in ev))
    assert any(isinstance(e, h2.events.ResponseReceived) and e.stream_id == 3 for e in events)
    c.conn.reset_stream(1, error_code=h2.errors.ErrorCodes.CANCEL)
    c.flush()
    wait_for(lambda: 'GET /slow?ms=3000 HTTP/2" 499' in t.read_log() and 'error="stream reset (error code 8)"' in t.read_log(),
             what="the reset to cancel the exchange")
    wait_for(lambda: in_flight(t) == 0, what="the upstream request to be let go")
    c.close()


def test_rapid_reset_flood_is_cut_off(blue_green):
    t, _, _ = blue_green()
    base = t.rss_kib()
    c = H2Client(t.port)
    closed_after = None
    stream_id = 1
    try:
        for i in range(20000):
            c.conn.send_headers(stream_id, c.request_headers(t.port, "/slow?ms=1000"), end_stream=True)
            c.conn.reset_stream(stream_id)
            stream_id += 2
            if i % 50 == 0:
                c.flush()
        c.flush()
    except (BrokenPipeError, ConnectionResetError):
        closed_after = stream_id // 2
    events = c.events_until(lambda ev: any(isinstance(e, h2.events.ConnectionTerminated) for e in ev)) \
        if closed_after is None else ["closed"]
    assert any(isinstance(e, h2.events.ConnectionTerminated) or e == "closed" for e in events)
    c.close()
    assert t.rss_kib() - base < 64 * 1024
    # The proxy keeps serving everyone else. The flood's thousands of /slow requests can make the
    # single Python upstream miss a health probe (fall: 1 in these tests), and then the request
    # fails over to green, as it should: what counts is that it is answered.
    r = curl("--http2-prior-knowledge", "-w", " %{http_code}", f"{t.url}/")
    assert r.stdout in (b"blue\n 200", b"green\n 200"), r.stdout + r.stderr


def test_continuation_flood_is_cut_off(blue_green):
    t, _, _ = blue_green()
    c = H2Client(t.port)
    encoder = hpack.Encoder()
    block = encoder.encode(c.request_headers(t.port) + [(f"x-filler-{i}", "v" * 20) for i in range(200)])
    sock = c.sock
    # HEADERS without END_HEADERS, then a stream of tiny CONTINUATION frames.
    def frame(ftype, flags, stream, payload):
        return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload
    pieces = [block[i:i + 8] for i in range(0, len(block), 8)]
    data = frame(0x1, 0x1, 1, pieces[0])  # END_STREAM, no END_HEADERS
    for p in pieces[1:]:
        data += frame(0x9, 0x0, 1, p)
    assert len(pieces) > 50
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    events = c.events_until(lambda ev: any(isinstance(e, h2.events.ConnectionTerminated) for e in ev))
    assert not any(isinstance(e, h2.events.ResponseReceived) for e in events)
    c.close()
    assert curl("--http2-prior-knowledge", f"{t.url}/").stdout == b"blue\n"


def test_oversized_header_list_gets_431(blue_green):
    t, _, _ = blue_green(limits="{ max_request_head_bytes: 8192 }")
    c = H2Client(t.port)
    headers = c.request_headers(t.port) + [(f"x-big-{i}", "v" * 1000) for i in range(12)]
    c.conn.send_headers(1, headers, end_stream=True)
    c.flush()
    events = c.events_until(lambda ev: any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) for e in ev))
    statuses = [dict(e.headers).get(":status") for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert statuses == ["431"]
    c.close()


def test_concurrent_stream_limit_is_announced_and_enforced(blue_green):
    t, _, _ = blue_green(limits="{ h2_max_concurrent_streams: 4 }")
    c = H2Client(t.port)
    events = c.events_until(lambda ev: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in ev))
    changed = next(e for e in events if isinstance(e, h2.events.RemoteSettingsChanged))
    assert changed.changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 4
    c.close()


def test_drain_sends_goaway_and_lets_open_streams_finish(blue_green):
    # nghttp, not python-h2: h2 treats any GOAWAY as the end of the connection.
    t, _, _ = blue_green()
    client = subprocess.Popen(["nghttp", "-v", f"{t.url}/slow?ms=1500"], stdout=subprocess.PIPE, text=True)
    wait_for(lambda: in_flight(t) == 1, what="the request to reach the upstream")
    t.proc.send_signal(signal.SIGTERM)
    out, _ = client.communicate(timeout=20)
    assert client.returncode == 0, out
    assert "recv GOAWAY frame" in out
    assert "blue slow" in out
    assert t.proc.wait(timeout=15) == 0


def test_upstream_failures_become_statuses_or_stream_resets(blue_green):
    t, _, _ = blue_green(timeouts="{ upstream_response: 1s }")
    c = H2Client(t.port)
    c.conn.send_headers(1, c.request_headers(t.port, "/reset"), end_stream=True)      # no response at all
    c.conn.send_headers(3, c.request_headers(t.port, "/garbage"), end_stream=True)    # not HTTP
    c.conn.send_headers(5, c.request_headers(t.port, "/partial"), end_stream=True)    # cut mid-body
    c.conn.send_headers(7, c.request_headers(t.port, "/slow?ms=3000"), end_stream=True)  # too slow
    c.conn.send_headers(9, c.request_headers(t.port, "/"), end_stream=True)           # fine
    c.flush()

    def finished(ev):
        done = {e.stream_id for e in ev if isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset))}
        return {1, 3, 5, 7, 9} <= done

    events = c.events_until(finished, timeout=15)
    status = {e.stream_id: dict(e.headers)[":status"] for e in events if isinstance(e, h2.events.ResponseReceived)}
    resets = {e.stream_id: e.error_code for e in events if isinstance(e, h2.events.StreamReset)}
    assert status[1] == "502" and status[3] == "502" and status[7] == "504" and status[9] == "200"
    # The cut response is reset, never ended as if complete. (Whether its 200 head reached the
    # client first depends on whether the head was flushed before the upstream's close arrived.)
    ended = {e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)}
    assert resets[5] == h2.errors.ErrorCodes.INTERNAL_ERROR and 5 not in ended
    assert status.get(5, "200") == "200"
    assert set(resets) == {5}
    c.close()


def test_websocket_over_http2_extended_connect(blue_green):
    # RFC 8441: CONNECT with :protocol websocket on an HTTP/2 stream, bridged to the HTTP/1.1
    # upstream's WebSocket. python-h2 without header validation speaks it.
    from upstream import ws_frame
    t, _, _ = blue_green()
    c = H2Client(t.port, validate=False)
    events = c.events_until(lambda ev: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in ev))
    changed = next(e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)).changed_settings
    assert changed[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL].new_value == 1
    c.conn.send_headers(1, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                            (":path", "/ws"), (":authority", f"127.0.0.1:{t.port}"), ("sec-websocket-version", "13")])
    c.flush()
    events = c.events_until(lambda ev: any(isinstance(e, h2.events.ResponseReceived) for e in ev))
    head = dict(next(e for e in events if isinstance(e, h2.events.ResponseReceived)).headers)
    assert head[":status"] == "200" and head["x-served-by"] == "blue" and "sec-websocket-accept" not in head

    received = bytearray()

    def pump(predicate):
        """Reads events until `predicate()`, collecting stream 1's DATA and returning its window."""
        def seen(evs):
            for e in evs[pump.done:]:
                if isinstance(e, h2.events.DataReceived):
                    received.extend(e.data)
                    c.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            pump.done = len(evs)
            c.flush()
            return predicate()
        pump.done = 0
        c.events_until(seen)

    def send(data):
        while data:
            n = min(len(data), c.conn.local_flow_control_window(1), c.conn.max_outbound_frame_size)
            if n == 0:
                before = c.conn.local_flow_control_window(1)
                pump(lambda: c.conn.local_flow_control_window(1) > before)
                continue
            c.conn.send_data(1, data[:n])
            c.flush()
            data = data[n:]

    def message():
        if len(received) < 2:
            return None
        n = received[1] & 0x7F
        start = 2 if n < 126 else 4 if n == 126 else 10
        if n >= 126:
            n = int.from_bytes(received[2:start], "big")
        if len(received) < start + n:
            return None
        text = bytes(received[start:start + n]).decode()
        del received[:start + n]
        return text

    def ask(text):
        send(ws_frame(0x1, text.encode(), mask=os.urandom(4)))
        result = []
        pump(lambda: result.append(message()) or result[-1] is not None)
        return result[-1]

    assert ask("one") == "blue:one"
    assert admin_call(t, "POST", "/v1/switch", {"pool": "green"})[0] == 200
    assert ask("two") == "blue:two"  # the open tunnel stays where it started
    _, state, _ = admin_call(t, "GET", "/v1/state")
    assert sum(e["tunnels"] for e in state["pools"]["blue"]["endpoints"]) == 1
    big = "x" * 300_000
    assert ask(big) == "blue:" + big  # larger than the stream window: flow control both ways
    c.conn.send_data(1, ws_frame(0x8, b"", mask=os.urandom(4)), end_stream=True)
    c.flush()
    c.events_until(lambda ev: any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) for e in ev))
    wait_for(lambda: in_flight(t) == 0, what="the tunnel to be counted closed")
    wait_for(lambda: "protocol=h2" in t.read_log(), what="the tunnel's access log line")
    c.close()


# Raw frames, for what an HTTP/2 library will not send: the h2spec cases http2/5.1.1/2,
# http2/5.1/8 and 11, http2/6.3/1, http2/5.3.1/2 and http2/3.5/2, reproduced.

def raw_frame(ftype, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload


END_STREAM, END_HEADERS = 0x1, 0x4


def read_frames(sock, stop, timeout=10):
    """Frames from `sock` (type, flags, stream, payload) until `stop(frames)` or the connection
    closes; returns them and whether the connection closed."""
    sock.settimeout(timeout)
    buf, frames = b"", []
    while True:
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            n = int.from_bytes(buf[:3], "big")
            frames.append((buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff, buf[9:9 + n]))
            buf = buf[9 + n:]
        if stop(frames):
            return frames, False
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return frames, True
        if not chunk:
            return frames, True
        buf += chunk


def goaway_code(frames):
    codes = [int.from_bytes(p[4:8], "big") for t, _, _, p in frames if t == 0x7]
    return codes[0] if codes else None


def request_block(encoder, port, method="GET", path="/"):
    return encoder.encode([(":method", method), (":path", path), (":scheme", "http"), (":authority", f"127.0.0.1:{port}")])


def ends_with_goaway(t, frames_out, code, words=None, sock=None):
    """Sends `frames_out` on `sock`, or on a new connection after the preface and a SETTINGS, and
    expects the connection to end with a GOAWAY of error `code`, and `words` in Turnout's log."""
    s = sock or socket.create_connection(("127.0.0.1", t.port))
    s.sendall(frames_out if sock else HTTP2_PREFACE + raw_frame(0x4, 0, 0) + frames_out)
    frames, closed = read_frames(s, lambda f: False)
    s.close()
    assert goaway_code(frames) == code, frames
    assert closed
    if words:
        wait_for(lambda: words in t.read_log(), what=words)


def test_headers_on_a_lower_stream_id_never_opened_is_a_protocol_error(blue_green):
    """h2spec http2/5.1.1/2: HEADERS on stream 5, then on stream 3 (skipped, so closed)."""
    t, _, _ = blue_green()
    e = hpack.Encoder()
    ends_with_goaway(t, raw_frame(0x1, END_STREAM | END_HEADERS, 5, request_block(e, t.port))
                     + raw_frame(0x1, END_STREAM | END_HEADERS, 3, request_block(e, t.port)),
                     1, "HEADERS on stream 3, below stream 5")  # PROTOCOL_ERROR


def test_trailers_on_an_open_lower_stream_are_still_fine(blue_green):
    """The check above must not catch HEADERS that end a stream still open below the newest one."""
    t, _, _ = blue_green()
    s = socket.create_connection(("127.0.0.1", t.port))
    e = hpack.Encoder()
    s.sendall(HTTP2_PREFACE + raw_frame(0x4, 0, 0)
              + raw_frame(0x1, END_HEADERS, 1, request_block(e, t.port, "POST", "/"))
              + raw_frame(0x1, END_STREAM | END_HEADERS, 3, request_block(e, t.port))
              + raw_frame(0x0, 0, 1, b"abc")
              + raw_frame(0x1, END_STREAM | END_HEADERS, 1, e.encode([("x-trailer", "1")])))

    def both_ended(frames):
        return {st for ty, fl, st, _ in frames if ty in (0x0, 0x1) and fl & END_STREAM} >= {1, 3}
    frames, closed = read_frames(s, both_ended)
    s.close()
    assert not closed and goaway_code(frames) is None, frames
    assert {st for ty, _, st, _ in frames if ty == 0x1} >= {1, 3}


def test_data_after_the_client_reset_its_stream_is_stream_closed(blue_green):
    """h2spec http2/5.1/8: RST_STREAM from the client, then DATA on the same stream."""
    t, _, _ = blue_green()
    e = hpack.Encoder()
    ends_with_goaway(t, raw_frame(0x1, END_HEADERS, 1, request_block(e, t.port, "POST", "/"))
                     + raw_frame(0x3, 0, 1, (8).to_bytes(4, "big"))  # RST_STREAM CANCEL
                     + raw_frame(0x0, 0, 1, b"late"),
                     5, "DATA on stream 1 after the client ended or reset it")  # STREAM_CLOSED


def test_data_on_a_stream_the_client_ended_and_turnout_answered_is_stream_closed(blue_green):
    """h2spec http2/5.1/11: the stream is closed both ways (the answer came) when DATA arrives;
    libnghttp2 has forgotten it, Turnout has not."""
    t, _, _ = blue_green()
    s = socket.create_connection(("127.0.0.1", t.port))
    e = hpack.Encoder()
    s.sendall(HTTP2_PREFACE + raw_frame(0x4, 0, 0)
              + raw_frame(0x1, END_STREAM | END_HEADERS, 1, request_block(e, t.port)))
    frames, closed = read_frames(s, lambda f: any(ty in (0x0, 0x1) and fl & END_STREAM and st == 1 for ty, fl, st, _ in f))
    assert not closed
    ends_with_goaway(t, raw_frame(0x0, END_STREAM, 1, b"late"), 5, sock=s)


def test_priority_on_stream_zero_or_on_itself_is_a_protocol_error(blue_green):
    """h2spec http2/6.3/1 and http2/5.3.1/2 (libnghttp2 skips PRIORITY frames when, as here, no
    RFC 7540 priorities are announced)."""
    t, _, _ = blue_green()
    for stream, dependency, words in ((0, 1, "PRIORITY on stream 0"), (3, 3, "PRIORITY making stream 3 depend on itself")):
        ends_with_goaway(t, raw_frame(0x2, 0, stream, dependency.to_bytes(4, "big") + b"\x0f"), 1, words)  # PROTOCOL_ERROR


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def test_an_h2c_only_listener_refuses_an_invalid_preface_as_http2(blue_green):
    """h2spec http2/3.5/2. On a listener serving HTTP/1.1 too, the same bytes are an HTTP/1.1
    request (answered 400); with protocols: [h2c] they are a broken HTTP/2 connection."""
    t, _, _ = blue_green(listener="protocols: [h2c]")
    s = socket.create_connection(("127.0.0.1", t.port))
    s.sendall(b"INVALID CONNECTION PREFACE\r\n\r\n")
    s.settimeout(10)
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    s.close()
    assert not data.startswith(b"HTTP/1.1"), data
    # The listener serves HTTP/2 with prior knowledge, and HTTP/1.1 is not read as such.
    assert curl("--http2-prior-knowledge", f"{t.url}/").stdout == b"blue\n"
    r = curl("--http1.1", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{t.url}/")
    assert r.stdout == b"000"

    mixed, _, _ = blue_green()
    s = socket.create_connection(("127.0.0.1", mixed.port))
    s.sendall(b"INVALID CONNECTION PREFACE\r\n\r\n")
    s.settimeout(10)
    assert s.recv(65536).startswith(b"HTTP/1.1 400")
    s.close()


def test_an_http1_only_listener_does_not_take_the_h2_preface(blue_green):
    t, _, _ = blue_green(listener="protocols: [http1]")
    assert curl("--http1.1", f"{t.url}/").stdout == b"blue\n"
    r = curl("--http2-prior-knowledge", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{t.url}/")
    assert r.stdout != b"200"
