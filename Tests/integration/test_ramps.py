"""Progressive delivery: ramps that advance on passing gates and roll back on their own."""
import http.client
import json
import signal
import socket
import threading
import time

import pytest
from harness import Turnout, Upstream, admin_call, run_cli, wait_for


class Load:
    """Keep-alive clients that record which pool answered, tagged with the ramp step current then."""

    def __init__(self, t, clients=3):
        self.t = t
        self.stop = threading.Event()
        self.results = []  # (pool, status)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run) for _ in range(clients)]
        for th in self.threads:
            th.start()

    def run(self):
        c = http.client.HTTPConnection("127.0.0.1", self.t.port, timeout=10)
        while not self.stop.is_set():
            try:
                sent = time.monotonic()
                c.request("GET", "/")
                r = c.getresponse()
                r.read()
                with self.lock:
                    self.results.append((r.getheader("X-Served-By"), r.status, sent))
            except Exception:
                c = http.client.HTTPConnection("127.0.0.1", self.t.port, timeout=10)

    def count(self):
        with self.lock:
            return len(self.results)

    def close(self):
        self.stop.set()
        for th in self.threads:
            th.join()


class EventReader:
    def __init__(self, t):
        self.events = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(t.admin_socket)
        self.sock.sendall(b"GET /v1/events HTTP/1.1\r\nHost: t\r\n\r\n")
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        wait_for(lambda: getattr(self, "ready", False), what="event stream to open")

    def run(self):
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            if b"turnout events" in buf:
                self.ready = True
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                for line in block.split(b"\n"):
                    if line.startswith(b"data: "):
                        self.events.append(json.loads(line[6:]))

    def kinds(self):
        return [e["kind"] for e in self.events]


def test_a_healthy_ramp_ends_live_and_each_step_has_its_split(blue_green):
    t, _, _ = blue_green()
    events = EventReader(t)
    load = Load(t)
    try:
        status, ramp, _ = admin_call(t, "POST", "/v1/ramp", {
            "pool": "green", "steps": [10, 25, 50, 100], "interval": "1s",
            "gates": {"max_error_rate": 0.01, "min_requests": 50}})
        assert status == 201 and ramp["status"] == "running" and ramp["step"] == 1
        wait_for(lambda: admin_call(t, "GET", "/v1/ramp")[1]["status"] != "running", timeout=60, what="ramp to finish")
    finally:
        load.close()
    ramp = admin_call(t, "GET", "/v1/ramp")[1]
    assert ramp["status"] == "completed", ramp
    state = admin_call(t, "GET", "/v1/state")[1]
    assert state["live"] == "green" and state["weights"] == {"blue": 0, "green": 100}
    verdicts = [s["verdict"] for s in ramp["steps_observed"]]
    assert verdicts == ["passed"] * 4
    # Each step's observed canary share matches its weight: the split is exact per request, so the
    # canary requests counted in a step divided by all requests in that step is the weight.
    gates = [e for e in events.events if e["kind"] == "gate" and e["verdict"] == "passed"]
    assert [g["weight"] for g in gates] == [10, 25, 50, 100]
    for g in gates:
        expected = g["total_requests"] * g["weight"] / 100
        assert g["requests"] >= 50 and abs(g["requests"] - expected) <= 2, g
    steps = [e for e in events.events if e["kind"] == "ramp_step"]
    assert [s["weight"] for s in steps] == [25, 50, 100]
    assert "ramp_completed" in events.kinds()


def test_split_at_a_held_step_matches_its_weight(blue_green):
    t, _, _ = blue_green()
    admin_call(t, "POST", "/v1/ramp", {"pool": "green", "steps": [25, 100], "interval": "1m",
                                        "gates": {"min_requests": 1000000}})
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    seen = []
    for _ in range(400):
        c.request("GET", "/")
        r = c.getresponse()
        r.read()
        seen.append(r.getheader("X-Served-By"))
    assert seen.count("green") == 100


def test_errors_on_the_canary_roll_back_before_the_step_ends(cleanup, tmp_path):
    fail = tmp_path / "fail"
    blue = Upstream("blue")
    green = Upstream("green", fail_file=str(fail))
    cleanup.extend([blue, green])
    t = Turnout({"blue": [blue.address], "green": [green.address]}, weights={"blue": 100, "green": 0})
    cleanup.append(t)
    events = EventReader(t)
    load = Load(t)
    try:
        # Steps of a minute, and a canary that fails one request in five: the rollback must come
        # from the breach, long before the step would end (the wait below gives up after 30 s).
        # How fast it comes is measured by `make bench-rollback`.
        fail.write_text("0.2")
        admin_call(t, "POST", "/v1/ramp", {"pool": "green", "steps": [25, 50, 100], "interval": "1m",
                                            "gates": {"max_error_rate": 0.05, "min_requests": 40}})
        wait_for(lambda: admin_call(t, "GET", "/v1/ramp")[1]["status"] != "running", timeout=30, what="rollback")
        seen_rolled_back = time.monotonic()
        n = load.count()
        wait_for(lambda: load.count() >= n + 200, what="more requests after the rollback")
    finally:
        load.close()
    ramp = admin_call(t, "GET", "/v1/ramp")[1]
    assert ramp["status"] == "rolled_back" and ramp["reason"].startswith("error rate")
    after = [pool for pool, _, sent in load.results if sent > seen_rolled_back]
    assert len(after) >= 200 and set(after) == {"blue"}, "a request reached green after the rollback was in force"
    state = admin_call(t, "GET", "/v1/state")[1]
    assert state["weights"] == {"blue": 100, "green": 0} and state["live"] == "blue"
    breach = [e for e in events.events if e["kind"] == "gate" and e["verdict"] == "breached"]
    assert len(breach) == 1
    assert breach[0]["weight"] == 25 and breach[0]["error_rate"] > 0.05 and breach[0]["requests"] >= 40
    assert breach[0]["max_error_rate"] == 0.05
    assert "rollback" in events.kinds()
    out = run_cli("status", "--admin", t.admin_socket)
    assert "rolled_back" in out.stdout and "breached" in out.stdout


def test_canary_losing_health_rolls_back(cleanup, tmp_path):
    down = tmp_path / "down"
    blue = Upstream("blue")
    green = Upstream("green", unhealthy_file=str(down))
    cleanup.extend([blue, green])
    t = Turnout({"blue": [blue.address], "green": [green.address]})
    cleanup.append(t)
    admin_call(t, "POST", "/v1/ramp", {"pool": "green", "steps": [10, 100], "interval": "1m"})
    down.write_text("x")
    wait_for(lambda: admin_call(t, "GET", "/v1/ramp")[1]["status"] == "rolled_back", timeout=20, what="health rollback")
    ramp = admin_call(t, "GET", "/v1/ramp")[1]
    assert "healthy" in ramp["reason"] and ramp["steps_observed"][0]["verdict"] == "health"
    assert admin_call(t, "GET", "/v1/state")[1]["weights"] == {"blue": 100, "green": 0}


def test_routing_changes_during_a_ramp_need_abort_or_force(blue_green):
    t, _, _ = blue_green()
    assert admin_call(t, "POST", "/v1/ramp", {"pool": "green", "steps": [5, 100], "interval": "1m"})[0] == 201
    assert admin_call(t, "POST", "/v1/ramp", {"pool": "green", "steps": [5, 100], "interval": "1m"})[0] == 409
    status, err, _ = admin_call(t, "POST", "/v1/switch", {"pool": "green"})
    assert status == 409 and err["code"] == "ramp_running"
    assert admin_call(t, "PUT", "/v1/weights", {"weights": {"blue": 50, "green": 50}})[0] == 409
    assert admin_call(t, "POST", "/v1/ramp/pause")[1]["status"] == "paused"
    assert admin_call(t, "POST", "/v1/ramp/pause")[0] == 409
    assert admin_call(t, "POST", "/v1/ramp/resume")[1]["status"] == "running"
    status, ramp, _ = admin_call(t, "DELETE", "/v1/ramp")
    assert status == 200 and ramp["status"] == "aborted"
    assert admin_call(t, "GET", "/v1/state")[1]["weights"] == {"blue": 100, "green": 0}
    admin_call(t, "POST", "/v1/ramp", {"pool": "green", "steps": [5, 100], "interval": "1m"})
    status, state, _ = admin_call(t, "POST", "/v1/switch", {"pool": "green", "force": True})
    assert status == 200 and state["live"] == "green" and state["ramp"]["status"] == "aborted"


@pytest.mark.parametrize("body,code", [
    ({"pool": "green", "steps": [], "interval": "1s"}, "invalid_ramp"),
    ({"pool": "green", "steps": [50, 25], "interval": "1s"}, "invalid_ramp"),
    ({"pool": "green", "steps": [10, 120], "interval": "1s"}, "invalid_weights"),
    ({"pool": "green", "steps": [10, 100], "interval": "soon"}, "invalid_ramp"),
    ({"pool": "green", "steps": "10,100"}, "wrong_type"),
    ({"pool": "green", "steps": [10], "gates": {"max_error_rate": 5}}, "invalid_ramp"),
    ({"pool": "green", "steps": [10], "gates": {"max_p99": 500}}, "wrong_type"),
    ({"pool": "green", "steps": [10], "gates": {"speed": 1}}, "unknown_field"),
    ({"pool": "purple", "steps": [10]}, "unknown_pool"),
    ({"pool": "blue", "steps": [10]}, "already_live"),
])
def test_bad_ramps_are_refused(blue_green, body, code):
    t, _, _ = blue_green()
    status, err, _ = admin_call(t, "POST", "/v1/ramp", body)
    assert status in (400, 404, 409) and err["code"] == code, err
    assert admin_call(t, "GET", "/v1/state")[1]["ramp"] is None


def test_a_ramp_killed_during_step_2_continues_from_step_2_and_finishes(blue_green):
    t, _, _ = blue_green()
    load = Load(t)
    try:
        admin_call(t, "POST", "/v1/ramp", {"pool": "green", "steps": [20, 60, 100], "interval": "1500ms",
                                            "gates": {"min_requests": 20}})
        wait_for(lambda: admin_call(t, "GET", "/v1/ramp")[1]["step"] == 2, timeout=30, what="step 2")
        t.proc.send_signal(signal.SIGKILL)
        t.proc.wait()
        t.start()
        ramp = admin_call(t, "GET", "/v1/ramp")[1]
        assert ramp["status"] == "running" and ramp["step"] == 2 and ramp["weight"] == 60
        assert admin_call(t, "GET", "/v1/state")[1]["weights"] == {"blue": 40, "green": 60}
        wait_for(lambda: admin_call(t, "GET", "/v1/ramp")[1]["status"] != "running", timeout=30, what="the ramp to finish")
    finally:
        load.close()
    ramp = admin_call(t, "GET", "/v1/ramp")[1]
    assert ramp["status"] == "completed" and [s["verdict"] for s in ramp["steps_observed"]] == ["passed"] * 3
    assert admin_call(t, "GET", "/v1/state")[1]["live"] == "green"


def test_a_slow_canary_rolls_back_with_reason_latency(cleanup, tmp_path):
    slow = tmp_path / "slow"
    slow.write_text("300")
    blue = Upstream("blue")
    green = Upstream("green", delay_file=str(slow))
    cleanup.extend([blue, green])
    t = Turnout({"blue": [blue.address], "green": [green.address]})
    cleanup.append(t)
    events = EventReader(t)
    load = Load(t, clients=4)
    try:
        admin_call(t, "POST", "/v1/ramp", {"pool": "green", "steps": [50, 100], "interval": "1m",
                                            "gates": {"max_p99": "100ms", "min_requests": 5}})
        wait_for(lambda: admin_call(t, "GET", "/v1/ramp")[1]["status"] != "running", timeout=30, what="rollback")
    finally:
        load.close()
    ramp = admin_call(t, "GET", "/v1/ramp")[1]
    assert ramp["status"] == "rolled_back" and ramp["reason"].startswith("latency"), ramp
    breach = [e for e in events.events if e["kind"] == "gate" and e["verdict"] == "breached"]
    assert breach and breach[0]["p99_ms"] > 100 and breach[0]["max_p99_ms"] == 100


def test_cli_ramp_commands(blue_green):
    t, _, _ = blue_green()
    out = run_cli("ramp", "green", "--steps", "5,50,100", "--interval", "1m", "--max-error-rate", "2%",
                  "--max-p99", "800ms", "--min-requests", "10", "--admin", t.admin_socket)
    assert out.returncode == 0, out.stderr
    assert "ramp green: running, step 1 of 3 at 5%" in out.stdout
    ramp = admin_call(t, "GET", "/v1/ramp")[1]
    assert ramp["gates"] == {"max_error_rate": 0.02, "max_p99": "800ms", "min_requests": 10}
    assert run_cli("ramp", "pause", "--admin", t.admin_socket).returncode == 0
    assert run_cli("ramp", "resume", "--admin", t.admin_socket).returncode == 0
    out = run_cli("ramp", "abort", "--admin", t.admin_socket)
    assert out.returncode == 0 and "aborted" in out.stdout
    assert run_cli("ramp", "abort", "--admin", t.admin_socket).returncode == 1
    assert run_cli("ramp", "green", "--admin", t.admin_socket).returncode == 2


def test_a_reader_that_falls_behind_is_dropped_and_the_proxy_keeps_going(cleanup):
    from harness import UnixHTTPConnection
    blue, green = Upstream("blue"), Upstream("green")
    cleanup.extend([blue, green])
    t = Turnout({"blue": [blue.address], "green": [green.address]}, state_file=False)
    cleanup.append(t)
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(t.admin_socket)
    stalled.sendall(b"GET /v1/events HTTP/1.1\r\nHost: t\r\n\r\n")
    live = EventReader(t)
    admin = UnixHTTPConnection(t.admin_socket)
    proxy = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    for i in range(6000):
        w = 1 + i % 98
        admin.request("PUT", "/v1/weights", body=json.dumps({"weights": {"blue": 100 - w, "green": w}}),
                      headers={"Content-Type": "application/json"})
        r = admin.getresponse()
        r.read()
        assert r.status == 200
        if i % 500 == 0:
            proxy.request("GET", "/")
            pr = proxy.getresponse()
            pr.read()
            assert pr.status == 200
    # The stalled reader was told and dropped: reading what is buffered ends with the overflow notice.
    stalled.settimeout(10)
    data = b""
    while True:
        chunk = stalled.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    assert b"event: overflow" in data
    # A reader that keeps up saw every change.
    wait_for(lambda: sum(1 for e in live.events if e["kind"] == "weights") == 6000, timeout=20, what="all events")
