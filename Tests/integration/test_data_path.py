"""The data path end to end: a real turnout process, real upstreams, real clients (curl, sockets)."""
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
from harness import RssPeak, Turnout, Upstream, free_port, pattern_sha256, raw_exchange, recv_until_close, turnout_binary, wait_for, write_pattern_file


def get(port, path="/", headers=None, method="GET", body=None, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    return r, data


def test_demo_answers_with_the_blue_app(cleanup):
    port = free_port()
    proc = subprocess.Popen([turnout_binary(), "demo", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        wait_for(lambda: "Turnout demo" in proc.stdout.readline(), what="demo banner")
        out = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=10)
        assert out.stdout == "blue\n"
        out = subprocess.run(["curl", "-sS", "-H", "X-Turnout-Pool: green", f"http://127.0.0.1:{port}/"],
                             capture_output=True, text=True, timeout=10)
        assert out.stdout == "green\n"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0


def test_forwarded_headers_and_body_are_exactly_as_spec_says(blue_green):
    t, blue, green = blue_green()
    body = b"x" * 1000
    r, data = get(t.port, "/echo?q=1", method="POST", body=body, headers={
        "Host": "shop.example", "Connection": "keep-alive, X-Hop", "X-Hop": "secret", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Proxy-Connection": "keep-alive", "X-Forwarded-For": "10.1.1.1", "Via": "1.0 edge",
        "X-Forwarded-Proto": "https-spoofed", "X-Custom": "kept", "Content-Type": "text/plain",
    })
    assert r.status == 200
    echo = json.loads(data)
    headers = {k.lower(): v for k, v in echo["headers"]}
    names = [k.lower() for k, _ in echo["headers"]]
    assert echo["method"] == "POST" and echo["path"] == "/echo?q=1" and echo["version"] == "HTTP/1.1"
    assert echo["body_length"] == 1000 and echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    for hop in ["connection", "x-hop", "keep-alive", "te", "proxy-connection", "upgrade", "transfer-encoding"]:
        assert hop not in names, f"{hop} was forwarded"
    assert headers["host"] == "shop.example"
    assert headers["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "shop.example"
    assert headers["via"] == "1.0 edge, 1.1 turnout"
    assert headers["x-custom"] == "kept"
    assert headers["content-length"] == "1000"
    assert names.count("x-forwarded-for") == 1
    # The response is re-framed for the client and carries Via.
    assert r.getheader("Via") == "1.1 turnout"


def test_chunked_request_bodies_are_reframed(blue_green):
    t, _, _ = blue_green()
    req = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    resp = raw_exchange(t.port, req)
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    echo = json.loads(body)
    assert echo["body_length"] == 11
    assert echo["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()


def test_chunked_and_close_delimited_responses_reach_the_client_intact(blue_green):
    t, _, _ = blue_green()
    for q in ["bytes=300000&chunked=1", "bytes=300000"]:
        out = subprocess.run(["curl", "-sS", f"{t.url}/big?{q}"], capture_output=True, timeout=30)
        expected = (bytes(range(256)) * 4096)[:300000]
        assert out.stdout == expected


def test_head_204_and_304_are_framed_right_on_one_connection(blue_green):
    t, _, _ = blue_green()
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    r, data = get(t.port, "/status?code=200", method="HEAD", conn=c)
    assert r.status == 200 and data == b"" and r.getheader("Content-Length") == "3"
    r, data = get(t.port, "/status?code=204", conn=c)
    assert r.status == 204 and data == b""
    r, data = get(t.port, "/status?code=304", conn=c)
    assert r.status == 304 and data == b""
    r, data = get(t.port, "/status?code=200", conn=c)
    assert r.status == 200 and data == b"abc"


def test_expect_100_continue_is_honoured(blue_green):
    t, _, _ = blue_green()
    s = socket.create_connection(("127.0.0.1", t.port), timeout=10)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    interim = s.recv(65536)
    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
    s.sendall(b"abcd")
    data = b""
    while b"body_sha256" not in data:
        chunk = s.recv(65536)
        assert chunk
        data += chunk
    assert b"HTTP/1.1 200" in data and b'"body_length": 4' in data
    s.close()


def test_pipelined_requests_are_answered_in_order(blue_green):
    t, _, _ = blue_green()
    reqs = b"".join(f"GET /echo?n={i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(10))
    reqs += b"GET /echo?n=last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    resp = raw_exchange(t.port, reqs, timeout=10)
    order = [int(x) for x in __import__("re").findall(rb'"path": "/echo\?n=(\d+)"', resp)]
    assert order == list(range(10))
    assert resp.count(b"HTTP/1.1 200") == 11
    assert resp.rstrip().endswith(b"}")


def test_split_is_exact_over_every_window_of_100(blue_green):
    t, _, _ = blue_green(weights={"blue": 90, "green": 10})
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    served = []
    for _ in range(1000):
        r, data = get(t.port, "/", conn=c)
        served.append(r.getheader("X-Served-By"))
    for start in range(0, len(served) - 99):
        window = served[start:start + 100]
        assert window.count("green") == 10 and window.count("blue") == 90, f"window at {start}"


def test_sticky_cohorts_stay_put_and_only_move_onto_the_canary(cleanup):
    blue, green = Upstream("blue"), Upstream("green")
    cleanup.extend([blue, green])
    sticky = "  sticky: { cookie: turnout_cohort }\n"

    def assignments(weights, cookies):
        t = Turnout({"blue": [blue.address], "green": [green.address]}, weights=weights, extra=sticky)
        try:
            c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
            out = {}
            for key in cookies:
                seen = set()
                for _ in range(3):
                    r, _ = get(t.port, "/", headers={"Cookie": f"a=b; turnout_cohort={key}"}, conn=c)
                    assert r.getheader("Set-Cookie") is None
                    seen.add(r.getheader("X-Served-By"))
                assert len(seen) == 1, f"cohort {key} was split: {seen}"
                out[key] = seen.pop()
            # A request without the cookie gets one, and keeps its pool when it sends it back.
            r, _ = get(t.port, "/", conn=c)
            cookie = r.getheader("Set-Cookie")
            assert cookie and cookie.startswith("turnout_cohort=")
            first = r.getheader("X-Served-By")
            for _ in range(5):
                r2, _ = get(t.port, "/", headers={"Cookie": cookie.split(";")[0]}, conn=c)
                assert r2.getheader("X-Served-By") == first
            return out
        finally:
            t.stop()

    keys = [f"user{i}" for i in range(400)]
    at10 = assignments({"blue": 90, "green": 10}, keys)
    at50 = assignments({"blue": 50, "green": 50}, keys)
    moved_back = [k for k in keys if at10[k] == "green" and at50[k] == "blue"]
    assert moved_back == []
    assert 15 <= list(at10.values()).count("green") <= 70
    assert 150 <= list(at50.values()).count("green") <= 250


def test_sequential_requests_reuse_upstream_connections(blue_green):
    t, blue, _ = blue_green()
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    for _ in range(10_000):
        r, _ = get(t.port, "/", conn=c)
        assert r.status == 200
    stats = blue.stats()
    assert stats["requests"] >= 10_000
    assert stats["connections"] <= 4, stats


def test_a_client_that_asked_to_close_is_closed_without_waiting_for_its_fin(blue_green):
    """After answering `Connection: close` the proxy closes its socket at once (the client will send
    nothing more) instead of lingering until the client's FIN: a byte the client sends afterwards
    meets a closed socket and comes back as a reset. A client that keeps the connection open is
    not affected."""
    import errno
    t, _, _ = blue_green()
    s = socket.create_connection(("127.0.0.1", t.port), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = recv_until_close(s)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"blue\n"), data
    assert b"connection: close" in data.lower()
    # The first byte draws the reset; a send after it fails (recv would only repeat the EOF).
    def reset():
        try:
            s.send(b"X")
        except OSError as e:
            return e.errno in (errno.ECONNRESET, errno.EPIPE)
        return False

    # A lingering proxy would hold the socket for its 2 s linger time and discard the bytes: the
    # reset must come well before that.
    wait_for(reset, timeout=1.5, what="a reset for a byte sent after close (the proxy lingered instead)")
    s.close()
    r, body = get(t.port, "/")
    assert r.status == 200 and body == b"blue\n"


def test_gigabyte_upload_and_download_pass_intact_with_bounded_memory(blue_green):
    t, _, _ = blue_green()
    size = 1 << 30
    expected = pattern_sha256(size)
    with RssPeak(t) as rss:
        down = subprocess.run(f"curl -sS {t.url}/big?bytes={size} | sha256sum", shell=True, capture_output=True,
                              text=True, timeout=300)
        assert down.stdout.split()[0] == expected
        src = os.path.join(t.dir, "upload.bin")
        write_pattern_file(src, size)
        up = subprocess.run(["curl", "-sS", "-T", src, "-H", "Content-Type: application/octet-stream", f"{t.url}/echo"],
                            capture_output=True, text=True, timeout=300)
        os.unlink(src)
        echo = json.loads(up.stdout)
        assert echo["body_length"] == size and echo["body_sha256"] == expected
    assert rss.growth_mib < 64


def test_killing_an_endpoint_under_load_fails_no_request(cleanup):
    b1, b2 = Upstream("blue1"), Upstream("blue2")
    cleanup.extend([b1, b2])
    t = Turnout({"blue": [b1.address, b2.address]}, health="{ interval: 200ms, timeout: 300ms, rise: 2, fall: 2 }")
    cleanup.append(t)
    failures = []
    counts = {"blue1": 0, "blue2": 0}
    lock = threading.Lock()
    total = 3000
    sent = [0]

    def client():
        c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
        while True:
            with lock:
                if sent[0] >= total:
                    return
                sent[0] += 1
            try:
                r, data = get(t.port, "/", conn=c)
                if r.status != 200:
                    failures.append((r.status, data))
                else:
                    with lock:
                        counts[r.getheader("X-Served-By")] += 1
            except Exception as e:
                failures.append(repr(e))
                c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for th in threads:
        th.start()
    wait_for(lambda: sent[0] > total // 4, what="load to start")
    b2.kill()
    for th in threads:
        th.join(timeout=120)
    assert failures == []
    assert counts["blue2"] > 0 and counts["blue1"] > counts["blue2"]
    wait_for(lambda: "blue unhealthy" in t.read_log() or "of pool blue is unhealthy" in t.read_log(), what="endpoint down")
    # Bring it back: after `rise` passing probes it serves again.
    b2.start()
    wait_for(lambda: t.read_log().count(f"endpoint {b2.address} of pool blue is healthy") >= 2, what="endpoint back")
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    seen = {get(t.port, "/", conn=c)[0].getheader("X-Served-By") for _ in range(20)}
    assert seen == {"blue1", "blue2"}


def test_sigterm_lets_an_in_flight_request_finish_then_exits_zero(blue_green):
    t, blue, _ = blue_green()
    result = {}

    def slow():
        r, data = get(t.port, "/slow?ms=3000")
        result["status"], result["body"] = r.status, data

    th = threading.Thread(target=slow)
    th.start()
    wait_for(lambda: blue.stats()["requests"] >= 1, what="the slow request to reach the upstream", timeout=5)
    t.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "draining" in t.read_log(), what="the drain to start")
    # New connections are refused while the drain is in progress: the process still runs and the
    # slow request has not been answered yet.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", t.port), timeout=2)
    assert t.proc.poll() is None and result == {}, "the check above must run during the drain"
    th.join(timeout=20)
    assert result == {"status": 200, "body": b"blue slow\n"}
    assert t.proc.wait(timeout=20) == 0


def test_sighup_does_not_stop_the_proxy(blue_green):
    t, _, _ = blue_green()
    t.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "received SIGHUP" in t.read_log(), what="the SIGHUP to be logged")
    assert t.proc.poll() is None
    assert get(t.port, "/")[1] == b"blue\n"


def test_accepting_pauses_at_max_client_connections_and_resumes_when_one_closes(blue_green):
    t, _, _ = blue_green(limits="{ max_client_connections: 3 }")
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

    def ask(sock):
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"blue\n"):
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        return data

    held = [socket.create_connection(("127.0.0.1", t.port), timeout=10) for _ in range(3)]
    for s in held:
        assert ask(s).startswith(b"HTTP/1.1 200")
    # The kernel completes the fourth handshake, but Turnout does not take the connection.
    waiting = socket.create_connection(("127.0.0.1", t.port), timeout=10)
    waiting.sendall(request)
    waiting.settimeout(0.5)
    with pytest.raises(socket.timeout):
        waiting.recv(4096)
    assert ask(held[0]).startswith(b"HTTP/1.1 200")  # the open ones are served meanwhile
    held.pop().close()
    waiting.settimeout(10)
    data = b""
    while not data.endswith(b"blue\n"):
        chunk = waiting.recv(4096)
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    for s in held + [waiting]:
        s.close()
