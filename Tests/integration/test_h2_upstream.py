"""Pools that speak HTTP/2 (protocol: h2c): a python-h2 upstream (h2upstream.py) and real gRPC
servers (grpcio, grpc_upstream.py), from HTTP/1.1 and HTTP/2 clients and gRPC clients."""
import hashlib
import http.client
import json
import os
import socket
import subprocess
import threading

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from harness import Turnout, Upstream, admin_call, check_config_refuses, pattern_sha256, wait_for


def h2_turnout(cleanup, script="h2upstream.py", weights=None, pool_keys="", names=("blue", "green"), upstream_args=None, **kw):
    """A Turnout in front of h2c pools, one upstream each (`script`, with `upstream_args[name]`)."""
    ups = [Upstream(n, script=script, extra_args=(upstream_args or {}).get(n, ())) for n in names]
    cleanup.extend(ups)
    pool_text = {u.name: f'{{ endpoints: ["{u.address}"], protocol: h2c{", " + pool_keys if pool_keys else ""} }}' for u in ups}
    t = Turnout({u.name: [u.address] for u in ups}, weights=weights, pool_text=pool_text, **kw)
    cleanup.append(t)
    return (t, *ups)


def wait_all_healthy(t):
    wait_for(lambda: all(p["endpoints"][0]["healthy"] for p in admin_call(t, "GET", "/v1/state")[1]["pools"].values()),
             what="every pool healthy")


class GrpcLoad:
    """`clients` gRPC clients calling /test.Echo/Unary through Turnout until the block ends:
    answers counted by the pool that gave them (`served`), failures kept (`errors`)."""

    def __init__(self, t, clients):
        self.port = t.port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.errors, self.served = [], {}
        self.threads = [threading.Thread(target=self.run) for _ in range(clients)]

    def run(self):
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            call = ch.unary_unary("/test.Echo/Unary")
            while not self.stop.is_set():
                try:
                    who = call(b"x", timeout=10).split(b":")[0].decode()
                    with self.lock:
                        self.served[who] = self.served.get(who, 0) + 1
                except grpc.RpcError as e:
                    self.errors.append((e.code(), e.details()))

    @property
    def calls(self):
        with self.lock:
            return sum(self.served.values())

    def __enter__(self):
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for th in self.threads:
            th.join()


def h2_request(port, method, path, body=b"", headers=()):
    """One request over h2c with prior knowledge: (status, headers, body, trailers)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", method), (":path", path), (":scheme", "http"), (":authority", "t")] + list(headers),
                      end_stream=not body)
    left = body

    def send_body():
        # As much of the body as the flow-control windows allow.
        nonlocal left
        while left:
            n = min(len(left), conn.local_flow_control_window(1), conn.max_outbound_frame_size)
            if n <= 0:
                return
            conn.send_data(1, left[:n], end_stream=n == len(left))
            left = left[n:]

    send_body()
    s.sendall(conn.data_to_send())
    status, hdrs, data, trailers = None, {}, b"", {}
    while True:
        send_body()
        s.sendall(conn.data_to_send())
        chunk = s.recv(1 << 20)
        assert chunk, "the connection closed before the stream ended"
        for ev in conn.receive_data(chunk):
            if isinstance(ev, h2.events.ResponseReceived):
                hdrs = dict(ev.headers)
                status = int(hdrs[":status"])
            elif isinstance(ev, h2.events.DataReceived):
                data += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, 1)
            elif isinstance(ev, h2.events.TrailersReceived):
                trailers = dict(ev.headers)
            elif isinstance(ev, h2.events.StreamReset):
                s.close()
                return "reset", hdrs, data, trailers
            if isinstance(ev, h2.events.StreamEnded):
                s.close()
                return status, hdrs, data, trailers
        s.sendall(conn.data_to_send())


def h2_stats(upstream):
    """/stats of an h2upstream.py, asked over HTTP/2 (it speaks nothing else)."""
    status, _, data, _ = h2_request(upstream.port, "GET", "/stats")
    assert status == 200
    return json.loads(data)


def test_requests_reach_an_h2c_pool_from_both_client_protocols(cleanup):
    t, blue, green = h2_turnout(cleanup, weights={"blue": 100})
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    c.request("GET", "/hello", headers={"Host": "app.example"})
    r = c.getresponse()
    assert (r.status, r.read(), r.getheader("X-Served-By")) == (200, b"blue\n", "blue")
    body = os.urandom(100_000)
    sha = hashlib.sha256(body).hexdigest()
    c.request("POST", "/echo", body=body, headers={"Host": "app.example", "Connection": "keep-alive"})
    echo = json.loads(c.getresponse().read())
    assert echo["method"] == "POST" and echo["body_length"] == len(body) and echo["body_sha256"] == sha
    assert echo["authority"] == "app.example"
    names = [k for k, _ in echo["headers"]]
    assert "x-forwarded-for" in names and "connection" not in names and "host" not in names
    # The request id is new on every request: it goes without indexing, so that HPACK's table
    # keeps the fields that repeat; those stay indexable.
    assert echo["unindexed"] == ["x-request-id"]
    # A chunked body from an HTTP/1.1 client arrives as DATA, without chunk framing.
    c.putrequest("POST", "/echo")
    c.putheader("Transfer-Encoding", "chunked")
    c.endheaders()
    for piece in (body[:30_000], body[30_000:]):
        c.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
    c.send(b"0\r\n\r\n")
    echo = json.loads(c.getresponse().read())
    assert echo["body_length"] == len(body) and echo["body_sha256"] == sha
    # From an HTTP/2 client.
    status, hdrs, data, _ = h2_request(t.port, "POST", "/echo", body)
    assert status == 200 and json.loads(data)["body_sha256"] == sha
    # A large answer, with the pattern's checksum, through both.
    c.request("GET", "/big?bytes=8388608")
    r = c.getresponse()
    assert hashlib.sha256(r.read()).hexdigest() == pattern_sha256(8 << 20)
    status, _, data, _ = h2_request(t.port, "GET", "/big?bytes=5242880")
    assert status == 200 and hashlib.sha256(data).hexdigest() == pattern_sha256(5 << 20)


def test_concurrent_requests_share_a_few_connections(cleanup):
    t, blue, green = h2_turnout(cleanup, weights={"blue": 100})
    errors = []

    def worker():
        try:
            c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=20)
            for _ in range(20):
                c.request("GET", "/slow?ms=50")
                r = c.getresponse()
                if r.status != 200:
                    errors.append(r.status)
                r.read()
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=worker) for _ in range(40)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    stats = h2_stats(blue)
    assert stats["streams"] == 800
    # 40 requests in flight at a time, over at most max_connections (4) per worker (2).
    assert stats["connections"] <= 8 and stats["max_open"] > 1


def test_trailers_reach_an_http2_client(cleanup):
    t, blue, green = h2_turnout(cleanup, weights={"blue": 100})
    status, hdrs, data, trailers = h2_request(t.port, "POST", "/trailers", b"abc")
    assert status == 200 and data == b"blue\n"
    assert trailers == {"x-name": "blue", "x-body-sha256": hashlib.sha256(b"abc").hexdigest()}
    # An HTTP/1.1 client gets the body (chunked); the trailers are not sent to it.
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    c.request("GET", "/trailers")
    assert c.getresponse().read() == b"blue\n"


def test_finished_streams_are_not_reset_and_abandoned_ones_are(cleanup):
    t, blue, green = h2_turnout(cleanup, weights={"blue": 100})
    # Whole responses (known length, and chunked from /big's pattern) from both client protocols:
    # the upstream ended each stream itself, so it gets no RST_STREAM for any of them.
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    for i in range(100):
        c.request("GET", "/" if i % 2 else "/big?bytes=70000")
        r = c.getresponse()
        assert r.status == 200
        r.read()
    for _ in range(20):
        status, _, _, _ = h2_request(t.port, "GET", "/")
        assert status == 200
    stats = h2_stats(blue)
    assert stats["streams"] == 120 and stats["resets"] == 0
    # A client that resets its stream before the answer: the upstream's stream is reset (CANCEL).
    s = socket.create_connection(("127.0.0.1", t.port), timeout=10)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/slow?ms=5000"), (":scheme", "http"), (":authority", "t")],
                      end_stream=True)
    s.sendall(conn.data_to_send())
    wait_for(lambda: h2_stats(blue)["streams"] == 121, what="the slow request upstream")
    conn.reset_stream(1)
    s.sendall(conn.data_to_send())
    wait_for(lambda: h2_stats(blue)["resets"] == 1, what="the abandoned stream's reset")
    s.close()


def test_an_upstream_reset_is_a_502_or_a_broken_transfer(cleanup):
    t, blue, green = h2_turnout(cleanup, weights={"blue": 100})
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    c.request("GET", "/reset")
    r = c.getresponse()
    assert r.status == 502 and b"reset" in r.read()
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    c.request("GET", "/reset-mid")
    r = c.getresponse()
    assert r.status == 200
    with pytest.raises(http.client.IncompleteRead):
        r.read()
    status, _, _, _ = h2_request(t.port, "GET", "/reset-mid")
    assert status == "reset"
    # The connection to the upstream survived its streams' resets.
    assert get_ok(t)


def get_ok(t):
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    c.request("GET", "/")
    r = c.getresponse()
    return r.status == 200 and r.read() in (b"blue\n", b"green\n")


def test_goaway_under_load_fails_no_request(cleanup):
    t, blue, green = h2_turnout(cleanup, weights={"blue": 100})
    stop = threading.Event()
    errors, done = [], []

    def worker():
        c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=20)
        while not stop.is_set():
            try:
                c.request("GET", "/")
                r = c.getresponse()
                body = r.read()
                if r.status != 200:
                    errors.append((r.status, body))
                done.append(1)
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
                c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=20)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    try:
        for i in range(20):
            before = len(done)
            # Each /goaway makes the upstream send GOAWAY on the connection that carried it and
            # close it once its streams are done; the load's own streams keep coming meanwhile.
            assert get_ok_path(t, "/goaway")
            wait_for(lambda: len(done) >= before + 50, timeout=30, what="traffic after a GOAWAY")
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert errors == []
    assert h2_stats(blue)["connections"] > 10


def get_ok_path(t, path):
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    return r.status == 200 and r.read() == b"blue\n"


def test_health_is_probed_over_http2_and_a_dead_pool_is_avoided(cleanup, tmp_path):
    flag = str(tmp_path / "unhealthy")
    blue = Upstream("blue", script="h2upstream.py", unhealthy_file=flag)
    green = Upstream("green", script="h2upstream.py")
    cleanup.extend([blue, green])
    t = Turnout({"blue": [blue.address], "green": [green.address]}, weights={"blue": 100},
                pool_text={"blue": f'{{ endpoints: ["{blue.address}"], protocol: h2c }}',
                           "green": f'{{ endpoints: ["{green.address}"], protocol: h2c }}'})
    cleanup.append(t)
    wait_for(lambda: all(e["healthy"] for p in admin_call(t, "GET", "/v1/state")[1]["pools"].values() for e in p["endpoints"]),
             what="both pools healthy over h2c")
    open(flag, "w").close()
    wait_for(lambda: not admin_call(t, "GET", "/v1/state")[1]["pools"]["blue"]["endpoints"][0]["healthy"], what="blue unhealthy")
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    c.request("GET", "/")
    r = c.getresponse()
    assert r.status == 200 and r.read() == b"green\n"  # failover


# MARK: gRPC

def grpc_call(port, method, request, stub="unary_unary", timeout=10):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        answer = getattr(ch, stub)(method)(request, timeout=timeout)
        return list(answer) if stub == "unary_stream" else answer


def test_grpc_unary_streaming_and_errors_through_turnout(cleanup):
    t, blue, green = h2_turnout(cleanup, script="grpc_upstream.py", weights={"blue": 100}, pool_keys="health: { grpc_service: test.Echo }")
    wait_for(lambda: admin_call(t, "GET", "/v1/state")[1]["pools"]["blue"]["endpoints"][0]["healthy"], what="blue healthy by gRPC health")
    assert grpc_call(t.port, "/test.Echo/Unary", b"hi") == b"blue:hi"
    assert list(grpc_call(t.port, "/test.Echo/Stream", b"5", stub="unary_stream")) == [b"blue:%d" % i for i in range(5)]
    with pytest.raises(grpc.RpcError) as e:
        grpc_call(t.port, "/test.Echo/Fail", b"x")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and e.value.details() == "no such thing: x"
    with pytest.raises(grpc.RpcError) as e:
        grpc_call(t.port, "/test.Echo/Nope", b"x")
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_grpc_over_tls_from_the_client(cleanup, tmp_path):
    from harness import make_certificate
    cert, key = make_certificate(str(tmp_path), "server", hosts=("localhost", "127.0.0.1"))
    ups = [Upstream(n, script="grpc_upstream.py") for n in ("blue", "green")]
    cleanup.extend(ups)
    t = Turnout({u.name: [u.address] for u in ups}, weights={"blue": 100},
                pool_text={u.name: f'{{ endpoints: ["{u.address}"], protocol: h2c }}' for u in ups},
                health="{ interval: 200ms, timeout: 500ms, rise: 1, fall: 1, grpc: true }",
                tls=f"{{ certificate: {cert}, private_key: {key} }}")
    cleanup.append(t)
    wait_for(lambda: admin_call(t, "GET", "/v1/state")[1]["pools"]["blue"]["endpoints"][0]["healthy"], what="blue healthy")
    creds = grpc.ssl_channel_credentials(root_certificates=open(cert, "rb").read())
    with grpc.secure_channel(f"localhost:{t.tls_port}", creds) as ch:
        assert ch.unary_unary("/test.Echo/Unary")(b"tls", timeout=10) == b"blue:tls"
        assert list(ch.unary_stream("/test.Echo/Stream")(b"3", timeout=10)) == [b"blue:0", b"blue:1", b"blue:2"]


def test_a_switch_under_grpc_load_fails_no_call(cleanup):
    t, blue, green = h2_turnout(cleanup, script="grpc_upstream.py", weights={"blue": 100},
                                pool_keys="health: { grpc_service: \"\" }")
    wait_all_healthy(t)
    with GrpcLoad(t, 6) as load:
        for i in range(10):
            before = load.calls
            pool = "green" if i % 2 == 0 else "blue"
            assert admin_call(t, "POST", "/v1/switch", {"pool": pool})[0] == 200
            wait_for(lambda: load.calls >= before + 100, timeout=30, what="calls after a switch")
    assert load.errors == []
    assert load.served.get("blue", 0) > 0 and load.served.get("green", 0) > 0


def test_grpc_servers_that_send_goaway_every_half_second_fail_no_call(cleanup):
    # grpc.max_connection_age_ms: the server sends GOAWAY on each connection 0.5 s after it opened
    # (as gRPC servers behind load balancers are told to), while calls keep coming.
    age = ["--max-connection-age-ms", "500"]
    t, blue, green = h2_turnout(cleanup, script="grpc_upstream.py", weights={"blue": 50, "green": 50},
                                pool_keys='health: { grpc_service: "" }', upstream_args={"blue": age, "green": age})
    wait_all_healthy(t)
    opened = lambda: sum(float(line.rsplit(" ", 1)[1]) for line in admin_call(t, "GET", "/metrics")[1].decode().splitlines()
                         if line.startswith("turnout_upstream_connections_opened_total{"))
    with GrpcLoad(t, 6) as load:
        # Every connection lives half a second: wait until Turnout had to open 10 new ones.
        wait_for(lambda: opened() >= 10, timeout=60, what="connections replaced after GOAWAYs")
    assert load.errors == [] and load.calls > 100


def test_a_ramp_rolls_back_on_grpc_statuses_that_count_as_errors(cleanup):
    # Green answers every call with INTERNAL (13): HTTP 200, so only the grpc-status says it failed.
    t, blue, green = h2_turnout(cleanup, script="grpc_upstream.py", weights={"blue": 100},
                                pool_keys='health: { grpc_service: "" }', upstream_args={"green": ["--fail-code", "13"]})
    wait_all_healthy(t)
    with GrpcLoad(t, 4):
        status, _, _ = admin_call(t, "POST", "/v1/ramp", {"pool": "green", "steps": [20, 50, 100], "interval": "1m",
                                                          "gates": {"max_error_rate": 0.05, "min_requests": 20}})
        assert status == 201
        wait_for(lambda: admin_call(t, "GET", "/v1/ramp")[1]["status"] != "running", timeout=30, what="the ramp to end")
    ramp = admin_call(t, "GET", "/v1/ramp")[1]
    assert ramp["status"] == "rolled_back" and ramp["steps_observed"][0]["errors"] > 0, ramp
    metrics = admin_call(t, "GET", "/metrics")[1].decode()
    assert 'turnout_grpc_errors_total{pool="green"} 0' not in metrics and 'turnout_grpc_errors_total{pool="blue"} 0' in metrics


def test_a_grpc_pool_not_serving_is_taken_out(cleanup):
    t, blue, green = h2_turnout(cleanup, script="grpc_upstream.py", weights={"blue": 100},
                                pool_keys="health: { grpc_service: test.Echo }")
    wait_all_healthy(t)
    with grpc.insecure_channel(blue.address) as ch:
        ch.unary_unary("/test.Control/SetServing")(b"0", timeout=5)
    wait_for(lambda: not admin_call(t, "GET", "/v1/state")[1]["pools"]["blue"]["endpoints"][0]["healthy"],
             what="blue out of rotation")
    probes = admin_call(t, "GET", "/v1/stats")[1]["probes"]["blue"]
    assert "NOT_SERVING" in probes[blue.address]["detail"], probes
    assert grpc_call(t.port, "/test.Echo/Unary", b"x") == b"green:x"  # failover
    # With no pool serving, a gRPC client gets UNAVAILABLE as a gRPC status, not an HTML page.
    with grpc.insecure_channel(green.address) as ch:
        ch.unary_unary("/test.Control/SetServing")(b"0", timeout=5)
    wait_for(lambda: not admin_call(t, "GET", "/v1/state")[1]["pools"]["green"]["endpoints"][0]["healthy"],
             what="green out of rotation")
    with pytest.raises(grpc.RpcError) as e:
        grpc_call(t.port, "/test.Echo/Unary", b"x")
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "no healthy endpoint" in e.value.details()
    with grpc.insecure_channel(blue.address) as ch:
        ch.unary_unary("/test.Control/SetServing")(b"1", timeout=5)
    wait_for(lambda: admin_call(t, "GET", "/v1/state")[1]["pools"]["blue"]["endpoints"][0]["healthy"], what="blue back")
    assert grpc_call(t.port, "/test.Echo/Unary", b"x") == b"blue:x"


def blue_pool_config(keys):
    """A config whose pool blue has `keys` beside its endpoint (and a plain pool green)."""
    return ("listeners: [{ address: 127.0.0.1:0 }]\npools:\n"
            f"  blue: {{ endpoints: [\"127.0.0.1:1\"], {keys} }}\n  green: {{ endpoints: [\"127.0.0.1:2\"] }}\n")


def test_config_errors(tmp_path):
    for text, message in [
        ("protocol: h3", "pools.blue.protocol: expected http1 or h2c"),
        ("max_connections: 2", "pools.blue.max_connections: applies to HTTP/2 upstreams only"),
        ("protocol: h2c, max_idle_connections: 2", "pools.blue.max_idle_connections: applies to HTTP/1.1 upstreams only"),
        ("health: { grpc_service: x }", "pools.blue.health.grpc_service: gRPC health checks need an HTTP/2 pool"),
        ("protocol: h2c, max_connections: 0", "pools.blue.max_connections: must be between 1"),
        ("protocol: h2c, health: { path: /x }", "pools.blue.health.path: unknown key"),
    ]:
        check_config_refuses(tmp_path, blue_pool_config(text), message)


# MARK: HTTP/2 over TLS to the pool (protocol: h2)

def tls_grpc_turnout(cleanup, tmp_path, tls_block, names=("blue", "green"), hosts=("localhost", "127.0.0.1")):
    from harness import make_certificate
    cert, key = make_certificate(str(tmp_path), "upstream", hosts=hosts)
    ups = [Upstream(n, script="grpc_upstream.py", extra_args=["--tls-cert", cert, "--tls-key", key]) for n in names]
    cleanup.extend(ups)
    block = tls_block(cert)
    t = Turnout({u.name: [u.address] for u in ups}, weights={names[0]: 100},
                pool_text={u.name: f'{{ endpoints: ["{u.address}"], protocol: h2, tls: {block}, health: {{ grpc_service: "" }} }}'
                           for u in ups})
    cleanup.append(t)
    return t, ups, cert


def pool_health(t, pool):
    return admin_call(t, "GET", "/v1/state")[1]["pools"][pool]["endpoints"][0]["healthy"]


def test_grpc_to_a_pool_over_tls(cleanup, tmp_path):
    t, (blue, green), cert = tls_grpc_turnout(cleanup, tmp_path, lambda cert: f"{{ ca: {cert} }}")
    wait_for(lambda: pool_health(t, "blue") and pool_health(t, "green"), what="both pools healthy over TLS")
    assert grpc_call(t.port, "/test.Echo/Unary", b"tls") == b"blue:tls"
    assert grpc_call(t.port, "/test.Echo/Stream", b"4", stub="unary_stream") == [b"blue:%d" % i for i in range(4)]
    with pytest.raises(grpc.RpcError) as e:
        grpc_call(t.port, "/test.Echo/Fail", b"y")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_upstream_certificate_not_signed_by_the_ca_is_refused(cleanup, tmp_path):
    from harness import make_certificate
    other, _ = make_certificate(str(tmp_path), "other")
    t, (blue, green), cert = tls_grpc_turnout(cleanup, tmp_path, lambda cert: f"{{ ca: {other} }}")
    wait_for(lambda: "certificate not trusted" in json.dumps(admin_call(t, "GET", "/v1/stats")[1]["probes"]), what="the probe's verdict")
    assert not pool_health(t, "blue")
    with pytest.raises(grpc.RpcError) as e:
        grpc_call(t.port, "/test.Echo/Unary", b"x")
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_server_name_and_verify(cleanup, tmp_path):
    # The certificate names "localhost" and 127.0.0.1: another server_name is refused...
    t, (blue,), cert = tls_grpc_turnout(cleanup, tmp_path, lambda cert: f"{{ ca: {cert}, server_name: other.example }}", names=("blue",))
    wait_for(lambda: "certificate not trusted" in json.dumps(admin_call(t, "GET", "/v1/stats")[1]["probes"]), what="a name mismatch")
    # ... and with verify: false anything goes (the certificate is not checked at all).
    t2, (b2,), _ = tls_grpc_turnout(cleanup, tmp_path, lambda cert: "{ verify: false }", names=("blue",))
    wait_for(lambda: pool_health(t2, "blue"), what="healthy without verification")
    assert grpc_call(t2.port, "/test.Echo/Unary", b"v") == b"blue:v"


def test_tls_config_errors(tmp_path):
    for text, message in [
        ("protocol: h2c, tls: { verify: false }", "pools.blue.tls: TLS to the endpoints needs protocol: h2"),
        ("protocol: h2, tls: { ca: /nonexistent/ca.pem }", "pools.blue.tls.ca"),
        ("protocol: h2, tls: { certificate: /etc/hostname }", "certificate and private_key go together"),
        ("protocol: h2, tls: { sni: x }", "pools.blue.tls.sni: unknown key"),
    ]:
        check_config_refuses(tmp_path, blue_pool_config(text), message)
    # A CA file that is not a certificate passes the loader but not OpenSSL: check-config says so.
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    check_config_refuses(tmp_path, blue_pool_config(f"protocol: h2, tls: {{ ca: {bad} }}"), "pools.blue.tls.ca: cannot load")


def test_an_upstream_that_stops_answering_is_found_out_by_ping(cleanup):
    # Probes an hour apart, and a response timeout of 2 minutes: only the connection's PING can
    # notice, within the client's patience of 40 s, that the upstream froze (SIGSTOP).
    import signal
    t, blue, green = h2_turnout(cleanup, weights={"blue": 100}, health="{ interval: 1h, timeout: 500ms, rise: 1, fall: 1 }",
                                timeouts="{ upstream_response: 2m }")
    wait_for(lambda: pool_health(t, "blue"), what="blue healthy")
    assert get_ok(t)
    os.kill(blue.proc.pid, signal.SIGSTOP)
    try:
        c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=40)
        c.request("GET", "/")
        r = c.getresponse()
        body = r.read()
        assert r.status == 502 and b"no answer to PING" in body, body
    finally:
        os.kill(blue.proc.pid, signal.SIGCONT)
    assert get_ok(t)
