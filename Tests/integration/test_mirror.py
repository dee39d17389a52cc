"""Traffic mirroring: routing.mirror, PUT/GET/DELETE /v1/mirror, turnout mirror.

Copies go to the mirror pool fire and forget: the client's answer never waits for a copy, a slow
or dead mirror pool costs the live path nothing, and the copies are counted apart."""
import hashlib
import http.client
import json
import os
import socket
import threading

import h2.config
import h2.connection
import h2.events
from harness import Turnout, Upstream, admin_call, check_config_refuses, run_cli, wait_for
from test_ramps import EventReader


def metric(t, name, **labels):
    """The value of one sample of /metrics (0 when absent)."""
    status, body, _ = admin_call(t, "GET", "/metrics")
    assert status == 200
    text = body.decode() if isinstance(body, bytes) else str(body)
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def copies(t, pool="green"):
    return sum(metric(t, "turnout_mirror_requests_total", pool=pool, **{"class": c}) for c in ("1xx", "2xx", "3xx", "4xx", "5xx"))


def dropped(t, reason, pool="green"):
    return metric(t, "turnout_mirror_dropped_total", pool=pool, reason=reason)


def get(t, path, headers=None, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    if conn is None:
        c.close()
    return r.status, r.getheader("X-Served-By"), body


def mirrored(upstream):
    return [r for r in upstream.recorded() if r["mirror"] == "1"]


def h2_post(port, path, body):
    """One POST over h2c with prior knowledge; returns the status."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":path", path), (":scheme", "http"), (":authority", "t")])
    conn.send_data(1, body, end_stream=True)
    s.sendall(conn.data_to_send())
    status = None
    while True:
        data = s.recv(65536)
        assert data, "the connection closed before the stream ended"
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status = int(dict(ev.headers)[b":status"])
            if isinstance(ev, h2.events.StreamEnded):
                s.close()
                return status
        s.sendall(conn.data_to_send())


def test_copies_reach_the_mirror_pool_whole_and_marked(blue_green):
    t, blue, green = blue_green(weights={"blue": 100},
                                extra="  mirror: { pool: green, percent: 100, methods: [GET, POST] }\n")
    assert get(t, "/a")[:2] == (200, "blue")
    body = os.urandom(3000)
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    c.request("POST", "/echo?cl", body=body)
    assert json.loads(c.getresponse().read())["name"] == "blue"
    # A chunked body, in pieces.
    c.putrequest("POST", "/echo?chunked")
    c.putheader("Transfer-Encoding", "chunked")
    c.endheaders()
    for piece in (body[:1000], body[1000:]):
        c.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
    c.send(b"0\r\n\r\n")
    assert json.loads(c.getresponse().read())["body_sha256"] == hashlib.sha256(body).hexdigest()
    # A PUT is not in the methods: not copied.
    c.request("PUT", "/echo?put", body=b"x")
    c.getresponse().read()
    assert h2_post(t.port, "/echo?h2", body) == 200

    wait_for(lambda: copies(t) == 4, what="4 copies answered")
    got = {r["path"]: r for r in mirrored(green)}
    assert set(got) == {"/a", "/echo?cl", "/echo?chunked", "/echo?h2"}
    sha = hashlib.sha256(body).hexdigest()
    for path in ("/echo?cl", "/echo?chunked", "/echo?h2"):
        assert got[path]["method"] == "POST" and got[path]["body_length"] == 3000 and got[path]["body_sha256"] == sha, path
    # The live requests carry no mark; the mirror pool served nothing but copies.
    assert all(r["mirror"] is None for r in blue.recorded())
    assert all(r["mirror"] == "1" for r in green.recorded())
    assert metric(t, "turnout_mirror_requests_total", pool="green", **{"class": "2xx"}) == 4
    # The copies are not green's live traffic.
    assert metric(t, "turnout_requests_total", pool="green", endpoint=green.address, **{"class": "2xx"}) == 0
    status, m, _ = admin_call(t, "GET", "/v1/mirror")
    assert status == 200 and m["mirror"]["pool"] == "green" and m["mirror"]["percent"] == 100
    assert m["observed"]["green"]["requests"] == 4 and m["observed"]["green"]["responses"]["2xx"] == 4


def test_the_share_is_exact_and_only_for_requests_other_pools_serve(blue_green):
    t, blue, green = blue_green(weights={"blue": 100}, extra="  mirror: { pool: green, percent: 10 }\n")
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    for i in range(200):
        assert get(t, f"/n{i}", conn=c)[0] == 200
    # Served by green itself (preview): never copied to green.
    for i in range(20):
        assert get(t, f"/p{i}", headers={"X-Turnout-Pool": "green"}, conn=c)[1] == "green"
    wait_for(lambda: copies(t) == 20, what="20 copies answered")
    assert len(mirrored(green)) == 20
    assert all(r["path"].startswith("/n") for r in mirrored(green))


def test_a_mirror_that_never_answers_costs_the_live_path_nothing(cleanup):
    blue = Upstream("blue")
    delay = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"mirror-delay-{os.getpid()}")
    with open(delay, "w") as f:
        f.write("120000")  # longer than the test: the copies are never answered while it runs
    green = Upstream("green", delay_file=delay)
    cleanup.extend([blue, green])
    t = Turnout({"blue": [blue.address], "green": [green.address]}, weights={"blue": 100}, workers=1,
                extra="  mirror: { pool: green, percent: 100, max_in_flight: 20 }\n")
    cleanup.append(t)
    try:
        c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
        answers = [get(t, "/", conn=c)[:2] for _ in range(50)]
        # Every live answer came, from blue, while its copy was still waiting on green: 20 copies
        # are in flight (the cap), the other 30 were not made.
        assert answers == [(200, "blue")] * 50
        assert metric(t, "turnout_in_flight_requests", pool="green", endpoint=green.address) == 20
        assert dropped(t, "busy") == 30 and copies(t) == 0
        assert metric(t, "turnout_requests_total", pool="blue", endpoint=blue.address, **{"class": "5xx"}) == 0
        assert metric(t, "turnout_proxy_errors_total", pool="blue") == 0
        status, m, _ = admin_call(t, "GET", "/v1/mirror")
        assert m["observed"]["green"]["dropped"]["busy"] == 30
    finally:
        os.unlink(delay)


def test_a_dead_mirror_pool_costs_the_live_path_nothing(blue_green):
    t, blue, green = blue_green(weights={"blue": 100}, extra="  mirror: { pool: green, percent: 100 }\n")
    green.kill()
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    for _ in range(30):
        assert get(t, "/", conn=c)[:2] == (200, "blue")
    # Each copy either failed to connect (before the probes noticed), or was not made: copying
    # pauses after 3 failures in a row, and stops while the pool has no healthy endpoint.
    wait_for(lambda: copies(t) + dropped(t, "unavailable") + dropped(t, "failing") == 30, what="every copy accounted for")
    assert metric(t, "turnout_mirror_errors_total", pool="green") == copies(t)
    wait_for(lambda: metric(t, "turnout_endpoint_healthy", pool="green", endpoint=green.address) == 0, what="green unhealthy")
    before = dropped(t, "unavailable")
    for _ in range(10):
        assert get(t, "/", conn=c)[:2] == (200, "blue")
    assert dropped(t, "unavailable") == before + 10


def test_copying_pauses_while_a_mirror_still_counted_healthy_refuses_connections(blue_green):
    # Probes an hour apart: the pool stays healthy after its endpoint died, as it does for the
    # seconds before probes notice. Without the pause each request would cost a failed connect.
    t, blue, green = blue_green(weights={"blue": 100}, health="{ interval: 1h, timeout: 500ms, rise: 1, fall: 1 }",
                                extra="  mirror: { pool: green, percent: 100 }\n")
    wait_for(lambda: admin_call(t, "GET", "/v1/state")[1]["pools"]["green"]["endpoints"][0]["healthy"], what="green probed once")
    green.kill()
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    for _ in range(100):
        assert get(t, "/", conn=c)[:2] == (200, "blue")
    wait_for(lambda: copies(t) + dropped(t, "failing") == 100, what="every copy accounted for")
    # Three copies in a row without an answer pause copying (1 s, then longer each time).
    assert 3 <= copies(t) < 50 and dropped(t, "failing") > 50
    assert metric(t, "turnout_mirror_errors_total", pool="green") == copies(t)
    assert metric(t, "turnout_proxy_errors_total", pool="blue") == 0


def test_a_body_longer_than_max_body_bytes_is_not_copied(blue_green):
    t, blue, green = blue_green(weights={"blue": 100},
                                extra="  mirror: { pool: green, percent: 100, methods: [POST], max_body_bytes: 100 }\n")
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    c.request("POST", "/echo?small", body=b"s" * 100)
    c.getresponse().read()
    c.request("POST", "/echo?large", body=b"l" * 101)  # refused before it is read: Content-Length
    c.getresponse().read()
    c.putrequest("POST", "/echo?chunked")  # found too large while it streams
    c.putheader("Transfer-Encoding", "chunked")
    c.endheaders()
    c.send(b"40\r\n" + b"c" * 64 + b"\r\n40\r\n" + b"c" * 64 + b"\r\n0\r\n\r\n")
    assert json.loads(c.getresponse().read())["body_length"] == 128
    wait_for(lambda: copies(t) == 1 and dropped(t, "body_too_large") == 2, what="one copy, two not made")
    assert [r["path"] for r in mirrored(green)] == ["/echo?small"]


def test_mirror_through_the_api_persists_and_is_an_event(blue_green):
    t, blue, green = blue_green(weights={"blue": 100})
    events = EventReader(t)
    status, m, r = admin_call(t, "PUT", "/v1/mirror", {"pool": "green", "percent": 25, "methods": ["get"]})
    assert status == 200 and m["mirror"] == {"pool": "green", "percent": 25, "methods": ["GET"],
                                             "max_body_bytes": 65536, "max_in_flight": 256}
    generation = int(r.getheader("ETag").strip('"'))
    wait_for(lambda: "mirror" in events.kinds(), what="a mirror event")
    ev = [e for e in events.events if e["kind"] == "mirror"][0]
    assert ev["mirror"]["pool"] == "green" and ev["generation"] == generation
    # The same again changes nothing.
    assert admin_call(t, "PUT", "/v1/mirror", {"pool": "green", "percent": 25, "methods": ["GET"]})[2].getheader("ETag") == f'"{generation}"'
    state = admin_call(t, "GET", "/v1/state")[1]
    assert state["mirror"]["mirror"]["percent"] == 25
    t.stop()
    t.start()
    assert admin_call(t, "GET", "/v1/mirror")[1]["mirror"]["percent"] == 25
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    for _ in range(8):
        get(t, "/", conn=c)
    wait_for(lambda: copies(t) == 2, what="2 copies of 8 at 25%")
    status, m, _ = admin_call(t, "DELETE", "/v1/mirror")
    assert status == 200 and m["mirror"] is None and m["observed"]["green"]["requests"] == 2
    t.stop()
    t.start()
    assert admin_call(t, "GET", "/v1/mirror")[1]["mirror"] is None
    assert admin_call(t, "PUT", "/v1/mirror", raw_body=b"null", headers={"Content-Type": "application/json"})[0] == 200


def test_a_mirror_turned_off_stays_off_over_the_config_after_a_restart(blue_green):
    t, blue, green = blue_green(weights={"blue": 100}, extra="  mirror: { pool: green, percent: 50 }\n")
    assert admin_call(t, "GET", "/v1/mirror")[1]["mirror"]["percent"] == 50
    assert admin_call(t, "DELETE", "/v1/mirror")[0] == 200
    t.stop()
    t.start()
    assert admin_call(t, "GET", "/v1/mirror")[1]["mirror"] is None


def test_bad_mirror_requests_are_refused_and_change_nothing(blue_green):
    t, blue, green = blue_green(weights={"blue": 100})
    generation = admin_call(t, "GET", "/v1/state")[1]["generation"]
    cases = [
        ({"pool": "purple", "percent": 10}, 404, "unknown_pool"),
        ({"pool": "green", "percent": 0}, 400, "invalid_mirror"),
        ({"pool": "green", "percent": 101}, 400, "invalid_mirror"),
        ({"pool": "green", "percent": 1.234}, 400, "invalid_mirror"),
        ({"pool": "green", "percent": "10"}, 400, "wrong_type"),
        ({"pool": "green"}, 400, "missing_field"),
        ({"percent": 10}, 400, "missing_field"),
        ({"pool": "green", "percent": 10, "methods": ["CONNECT"]}, 400, "invalid_mirror"),
        ({"pool": "green", "percent": 10, "methods": []}, 400, "invalid_mirror"),
        ({"pool": "green", "percent": 10, "methods": ["GET", "GET"]}, 400, "invalid_mirror"),
        ({"pool": "green", "percent": 10, "methods": ["G T"]}, 400, "invalid_mirror"),
        ({"pool": "green", "percent": 10, "methods": "GET"}, 400, "wrong_type"),
        ({"pool": "green", "percent": 10, "max_in_flight": 0}, 400, "wrong_type"),
        ({"pool": "green", "percent": 10, "max_body_bytes": -1}, 400, "wrong_type"),
        ({"pool": "green", "percent": 10, "colour": "red"}, 400, "unknown_field"),
    ]
    for body, status, code in cases:
        got, answer, _ = admin_call(t, "PUT", "/v1/mirror", body)
        assert (got, answer["code"]) == (status, code), body
    assert admin_call(t, "PUT", "/v1/mirror", raw_body=b"{", headers={"Content-Type": "application/json"})[1]["code"] == "invalid_json"
    assert admin_call(t, "POST", "/v1/mirror", {"pool": "green", "percent": 10})[0] == 405
    assert admin_call(t, "GET", "/v1/state")[1]["generation"] == generation
    assert admin_call(t, "GET", "/v1/mirror")[1]["mirror"] is None


def test_the_cli(blue_green):
    t, blue, green = blue_green(weights={"blue": 100})
    admin = ["--admin", t.admin_socket]
    r = run_cli("mirror", "green", "12.5", "--methods", "get,head,options", *admin)
    assert r.returncode == 0, r.stderr
    assert "mirror: green 12.5% of GET,HEAD,OPTIONS" in r.stdout
    r = run_cli("mirror", *admin)
    assert r.returncode == 0 and "mirror: green 12.5%" in r.stdout
    r = run_cli("status", *admin)
    assert r.returncode == 0 and "mirror: green 12.5%" in r.stdout
    r = run_cli("mirror", "purple", "10", *admin)
    assert r.returncode == 1 and "unknown_pool" in r.stderr
    r = run_cli("mirror", "green", "0", *admin)
    assert r.returncode == 2 and "above 0" in r.stderr
    r = run_cli("mirror", "green", *admin)
    assert r.returncode == 2
    r = run_cli("mirror", "off", *admin)
    assert r.returncode == 0 and "mirror: off" in r.stdout
    r = run_cli("status", *admin)
    assert "mirror:" not in r.stdout


def test_config_errors_and_a_reload_that_would_remove_the_mirror_pool(blue_green, tmp_path):
    for text, message in [
        ("mirror: { pool: purple, percent: 10 }", 'routing.mirror.pool: no pool named "purple"'),
        ("mirror: { pool: green }", "routing.mirror.percent: required"),
        ("mirror: { pool: green, percent: 0 }", "routing.mirror.percent: must be above 0"),
        ("mirror: { pool: green, percent: 10, methods: [CONNECT] }", "CONNECT cannot be mirrored"),
        ("mirror: { pool: green, percent: 10, max_in_flight: 0 }", "routing.mirror.max_in_flight: must be between 1"),
        ("mirror: { pool: green, percent: 10, shadow: true }", "routing.mirror.shadow: unknown key"),
    ]:
        check_config_refuses(tmp_path, "listeners: [{ address: 127.0.0.1:0 }]\npools:\n  blue: { endpoints: [\"127.0.0.1:1\"] }\n"
                                       f"  green: {{ endpoints: [\"127.0.0.1:2\"] }}\nrouting:\n  {text}\n", message)

    t, blue, green = blue_green(weights={"blue": 100}, extra="  mirror: { pool: green, percent: 10 }\n")
    with open(t.config_path) as f:
        config = f.read()
    with open(t.config_path, "w") as f:
        f.write(config.replace(f'  green: {{ endpoints: ["{green.address}"] }}\n', "")
                .replace("  mirror: { pool: green, percent: 10 }\n", ""))
    status, answer, _ = admin_call(t, "POST", "/v1/reload")
    assert status == 409 and "receives mirrored traffic" in answer["error"]
    assert admin_call(t, "GET", "/v1/mirror")[1]["mirror"]["pool"] == "green"


def test_a_ramp_mirrors_first_and_only_then_sends_live_traffic(blue_green):
    from test_ramps import Load
    t, blue, green = blue_green(weights={"blue": 100})
    events = EventReader(t)
    load = Load(t)
    try:
        status, ramp, _ = admin_call(t, "POST", "/v1/ramp", {
            "pool": "green", "steps": [50, 100], "interval": "1s",
            "gates": {"max_error_rate": 0.01, "min_requests": 30},
            "mirror": {"percent": 100, "duration": "1s"}})
        assert status == 201, ramp
        assert ramp["phase"] == "mirror" and ramp["step"] == 0 and ramp["weight"] == 0, ramp
        assert ramp["mirror"] == {"percent": 100, "duration": "1s", "methods": ["GET", "HEAD"]}
        assert ramp["steps_observed"] == [] and ramp["pre_ramp"]["mirror"] is None
        state = admin_call(t, "GET", "/v1/state")[1]
        assert state["weights"] == {"blue": 100, "green": 0} and state["mirror"]["mirror"]["pool"] == "green"
        wait_for(lambda: admin_call(t, "GET", "/v1/ramp")[1]["status"] != "running", timeout=60, what="ramp to finish")
    finally:
        load.close()
    ramp = admin_call(t, "GET", "/v1/ramp")[1]
    assert ramp["status"] == "completed", ramp
    assert ramp["mirror_observed"]["verdict"] == "passed" and ramp["mirror_observed"]["requests"] >= 30
    assert [s["verdict"] for s in ramp["steps_observed"]] == ["passed", "passed"]
    state = admin_call(t, "GET", "/v1/state")[1]
    assert state["live"] == "green" and state["mirror"]["mirror"] is None
    # Green met copies first: at least the step's min_requests of them before any live request.
    seen = [r["mirror"] for r in green.recorded()]
    first_live = seen.index(None)
    assert first_live >= 30 and all(m == "1" for m in seen[:first_live])
    # No client request was answered by green during the mirroring step.
    gates = [e for e in events.events if e["kind"] == "gate"]
    assert gates[0]["phase"] == "mirror" and gates[0]["step"] == 0 and gates[0]["verdict"] == "passed", gates
    assert [g["weight"] for g in gates[1:]] == [50, 100]
    assert [e["weight"] for e in events.events if e["kind"] == "ramp_step"] == [50, 100]


def test_a_failing_canary_is_rolled_back_in_the_mirroring_step(cleanup, tmp_path):
    from test_ramps import Load
    fail = tmp_path / "fail"
    fail.write_text("1")
    blue, green = Upstream("blue"), Upstream("green", fail_file=str(fail))
    cleanup.extend([blue, green])
    t = Turnout({"blue": [blue.address], "green": [green.address]}, weights={"blue": 100, "green": 0})
    cleanup.append(t)
    load = Load(t)
    try:
        out = run_cli("ramp", "green", "--steps", "50,100", "--interval", "1m", "--mirror", "100", "--mirror-for", "1m",
                      "--max-error-rate", "5%", "--min-requests", "20", "--admin", t.admin_socket)
        assert out.returncode == 0 and "mirroring step" in out.stdout, out.stdout + out.stderr
        wait_for(lambda: admin_call(t, "GET", "/v1/ramp")[1]["status"] != "running", timeout=30, what="rollback")
    finally:
        load.close()
    ramp = admin_call(t, "GET", "/v1/ramp")[1]
    assert ramp["status"] == "rolled_back" and "mirrored" in ramp["reason"], ramp
    assert ramp["mirror_observed"]["verdict"] == "breached" and ramp["steps_observed"] == []
    # Not one live request went to green; its failures were all on copies.
    assert {pool for pool, _, _ in load.results} == {"blue"}
    assert green.recorded() and all(r["mirror"] == "1" for r in green.recorded())
    state = admin_call(t, "GET", "/v1/state")[1]
    assert state["weights"] == {"blue": 100, "green": 0} and state["mirror"]["mirror"] is None
    out = run_cli("ramp", "status", "--admin", t.admin_socket)
    assert "mirror" in out.stdout and "breached" in out.stdout, out.stdout


def test_the_mirroring_step_owns_the_mirror_until_it_ends(blue_green):
    t, _, _ = blue_green(weights={"blue": 100}, extra="  mirror: { pool: green, percent: 5 }\n")
    status, ramp, _ = admin_call(t, "POST", "/v1/ramp", {"pool": "green", "steps": [100], "interval": "1m",
                                                        "mirror": {"percent": 50, "methods": ["GET", "POST"]}})
    assert status == 201 and ramp["mirror"]["duration"] == "1m" and ramp["pre_ramp"]["mirror"]["percent"] == 5
    assert admin_call(t, "GET", "/v1/mirror")[1]["mirror"]["percent"] == 50
    status, err, _ = admin_call(t, "DELETE", "/v1/mirror")
    assert status == 409 and err["code"] == "ramp_mirroring", err
    out = run_cli("status", "--admin", t.admin_socket)
    assert "mirroring step" in out.stdout, out.stdout
    # A restart keeps the step (and the mirror it owns).
    t.stop()
    t.start()
    ramp = admin_call(t, "GET", "/v1/ramp")[1]
    assert ramp["phase"] == "mirror" and admin_call(t, "GET", "/v1/mirror")[1]["mirror"]["percent"] == 50
    assert admin_call(t, "DELETE", "/v1/ramp")[0] == 200
    ramp = admin_call(t, "GET", "/v1/ramp")[1]
    assert ramp["status"] == "aborted" and ramp["mirror_observed"]["verdict"] == "aborted"
    # The mirror from before the ramp is back, and the operator's again.
    assert admin_call(t, "GET", "/v1/mirror")[1]["mirror"]["percent"] == 5
    assert admin_call(t, "DELETE", "/v1/mirror")[0] == 200
    # Bad mirroring steps get a clear error.
    for bad, code in ((0, "invalid_ramp"), (101, "invalid_ramp"), ("x", "wrong_type")):
        status, err, _ = admin_call(t, "POST", "/v1/ramp", {"pool": "green", "steps": [100], "mirror": {"percent": bad}})
        assert status == 400, (bad, err)
    status, err, _ = admin_call(t, "POST", "/v1/ramp", {"pool": "green", "steps": [100], "mirror": {"percent": 10, "for": "1m"}})
    assert status == 400 and err["code"] == "unknown_field", err
    status, err, _ = admin_call(t, "POST", "/v1/ramp", {"pool": "green", "steps": [100], "mirror": {"percent": 10, "duration": "soon"}})
    assert status == 400 and "duration" in err["error"], err
    out = run_cli("ramp", "green", "--steps", "100", "--mirror-for", "1m", "--admin", t.admin_socket)
    assert out.returncode != 0 and "--mirror" in out.stderr
