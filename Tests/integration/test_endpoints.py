"""Run-time endpoint changes (add, remove, drain, maintenance, ready, weight) and drain observation
(`wait-drained`, the `drained` event), through the admin API and the CLI."""
import http.client
import json
import os
import select
import signal
import subprocess
import threading
import time
from collections import Counter

from harness import Turnout, Upstream, admin_call, run_cli, turnout_binary, wait_for
from test_tunnels import WebSocket


def served(t, n, conn=None, path="/"):
    c = conn or http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    out = Counter()
    for _ in range(n):
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
        out[r.getheader("X-Served-By")] += 1
    return out


def endpoint(t, pool, address):
    _, state, _ = admin_call(t, "GET", "/v1/state")
    return next(e for e in state["pools"][pool]["endpoints"] if e["address"] == address)


def cli(t, *args):
    return run_cli(*args, "--admin", t.admin_socket)


def test_endpoints_added_drained_weighted_and_removed_at_run_time(cleanup):
    blue, blue2, green = Upstream("blue"), Upstream("blue2"), Upstream("green")
    cleanup.extend([blue, blue2, green])
    t = Turnout({"blue": [blue.address], "green": [green.address]}, weights={"blue": 75, "green": 25},
                health="{ interval: 100ms, timeout: 500ms, rise: 3, fall: 1 }")
    cleanup.append(t)
    g0 = admin_call(t, "GET", "/v1/state")[1]["generation"]

    status, body, _ = admin_call(t, "POST", "/v1/pools/blue/endpoints", {"address": blue2.address})
    assert status == 201, body
    assert body["address"] == blue2.address and body["state"] == "serving" and body["source"] == "api"
    # A new endpoint waits for `rise` passing probes before it takes traffic.
    assert body["healthy"] is False
    wait_for(lambda: endpoint(t, "blue", blue2.address)["healthy"], what="the added endpoint to pass 3 probes")
    counts = served(t, 400)
    # The split between pools stays exact while blue grows; blue's share is spread over both.
    assert counts["green"] == 100 and counts["blue"] + counts["blue2"] == 300, counts
    assert abs(counts["blue"] - counts["blue2"]) <= 2, counts

    # Weights within a pool: blue2 gets three times blue's share.
    out = cli(t, "endpoints", "weight", "blue", blue2.address, "300")
    assert out.returncode == 0, out.stderr
    assert "weight 300" in out.stdout
    counts = served(t, 400)
    assert counts["green"] == 100 and counts["blue2"] == 225 and counts["blue"] == 75, counts

    # Drain: no new requests; maintenance: none either; ready: back.
    assert cli(t, "endpoints", "drain", "blue", blue.address).returncode == 0
    assert endpoint(t, "blue", blue.address)["state"] == "draining"
    counts = served(t, 200)
    assert counts["blue"] == 0 and counts["green"] == 50, counts
    assert cli(t, "endpoints", "maintenance", "blue", blue.address).returncode == 0
    assert served(t, 100)["blue"] == 0
    assert endpoint(t, "blue", blue.address)["healthy"] is True  # still probed
    assert cli(t, "endpoints", "ready", "blue", blue.address).returncode == 0
    assert served(t, 100)["blue"] > 0

    # Every change got a generation; the CLI's status shows states.
    _, state, _ = admin_call(t, "GET", "/v1/state")
    assert state["generation"] == g0 + 5
    status_text = cli(t, "status").stdout
    assert "LAST REQUEST" in status_text and "w=300 (api)" in status_text

    # Remove: the endpoint drains, then leaves the pool.
    assert cli(t, "endpoints", "remove", "blue", blue2.address).returncode == 0
    wait_for(lambda: all(e["address"] != blue2.address for e in admin_call(t, "GET", "/v1/state")[1]["pools"]["blue"]["endpoints"]),
             what="the removed endpoint to leave the pool")
    counts = served(t, 100)
    assert counts["blue2"] == 0 and counts["blue"] == 75, counts


def test_bad_endpoint_changes_get_a_clear_error_and_change_nothing(blue_green):
    t, blue, green = blue_green()
    _, before, _ = admin_call(t, "GET", "/v1/state")
    cases = [
        ("POST", "/v1/pools/red/endpoints", {"address": "127.0.0.1:9"}, 404, "unknown_pool"),
        ("POST", "/v1/pools/blue/endpoints", {"address": "127.0.0.1:99999"}, 400, "invalid_address"),
        ("POST", "/v1/pools/blue/endpoints", {"address": "nonsense"}, 400, "invalid_address"),
        ("POST", "/v1/pools/blue/endpoints", {"address": blue.address}, 409, "endpoint_exists"),
        ("POST", "/v1/pools/blue/endpoints", {"address": "127.0.0.1:9", "weight": -1}, 400, "invalid_weight"),
        ("POST", "/v1/pools/blue/endpoints", {"address": "127.0.0.1:9", "colour": 1}, 400, "unknown_field"),
        ("DELETE", f"/v1/pools/blue/endpoints/{blue.address}", None, 409, "last_endpoint"),
        ("PUT", f"/v1/pools/blue/endpoints/{blue.address}", {"state": "draining"}, 409, "last_endpoint"),
        ("PUT", f"/v1/pools/blue/endpoints/{blue.address}", {"state": "sleeping"}, 400, "invalid_state"),
        ("PUT", f"/v1/pools/blue/endpoints/{blue.address}", {}, 400, "missing_field"),
        ("PUT", "/v1/pools/blue/endpoints/127.0.0.1:9", {"state": "serving"}, 404, "unknown_endpoint"),
        ("DELETE", "/v1/pools/blue/endpoints/127.0.0.1:9", None, 404, "unknown_endpoint"),
        ("GET", "/v1/pools/blue/nothing", None, 404, "not_found"),
    ]
    for method, path, body, code, name in cases:
        status, answer, _ = admin_call(t, method, path, body)
        assert (status, answer.get("code")) == (code, name), (method, path, body, status, answer)
        assert answer["error"]
    status, answer, _ = admin_call(t, "PUT", f"/v1/pools/blue/endpoints/{blue.address}", {"state": "draining"},
                                   headers={"If-Match": "1234"})
    assert status == 412, answer
    _, after, _ = admin_call(t, "GET", "/v1/state")
    assert after["generation"] == before["generation"] and after["pools"] == before["pools"] | after["pools"]
    assert all(e["state"] == "serving" for p in after["pools"].values() for e in p["endpoints"])
    # The CLI reports the refusal with exit 1 and the reason; bad usage exits 2.
    out = run_cli("endpoints", "remove", "blue", blue.address, "--admin", t.admin_socket)
    assert out.returncode == 1 and "last_endpoint" in out.stderr, out.stderr
    assert run_cli("endpoints", "explode", "blue", blue.address, "--admin", t.admin_socket).returncode == 2
    # Forced, the last endpoint of the live pool can be drained: blue then fails over to green.
    status, answer, _ = admin_call(t, "PUT", f"/v1/pools/blue/endpoints/{blue.address}", {"state": "draining", "force": True})
    assert status == 200, answer
    assert served(t, 10)["green"] == 10


def test_endpoint_changes_survive_kill_9_and_a_reload(cleanup):
    blue, blue2, green = Upstream("blue"), Upstream("blue2"), Upstream("green")
    cleanup.extend([blue, blue2, green])
    t = Turnout({"blue": [blue.address], "green": [green.address]})
    cleanup.append(t)
    assert admin_call(t, "POST", "/v1/pools/blue/endpoints", {"address": blue2.address, "weight": 50})[0] == 201
    assert admin_call(t, "PUT", f"/v1/pools/blue/endpoints/{blue.address}", {"state": "maintenance"})[0] == 200
    assert admin_call(t, "DELETE", f"/v1/pools/green/endpoints/{green.address}")[0] == 200
    with open(t.state_file) as f:
        saved = json.load(f)
    assert saved["endpoints"]["blue"][blue2.address]["added"] is True
    assert saved["endpoints"]["green"][green.address]["removed"] is True

    def check():
        _, state, _ = admin_call(t, "GET", "/v1/state")
        eps = {e["address"]: e for e in state["pools"]["blue"]["endpoints"]}
        assert eps[blue2.address]["weight"] == 50 and eps[blue2.address]["source"] == "api"
        assert eps[blue.address]["state"] == "maintenance"
        assert state["pools"]["green"]["endpoints"] == []
        wait_for(lambda: endpoint(t, "blue", blue2.address)["healthy"], what="blue2 healthy")
        assert served(t, 20) == Counter({"blue2": 20})

    check()
    t.proc.send_signal(signal.SIGKILL)
    t.proc.wait()
    t.start()
    check()
    status, body, _ = admin_call(t, "POST", "/v1/reload")
    assert status == 200, body
    check()


def test_drain_lets_a_slow_request_and_a_tunnel_finish_and_wait_drained_waits_for_both(cleanup):
    blue, blue2, green = Upstream("blue"), Upstream("blue2"), Upstream("green")
    cleanup.extend([blue, blue2, green])
    t = Turnout({"blue": [blue.address, blue2.address], "green": [green.address]})
    cleanup.append(t)
    events = subprocess.Popen([turnout_binary(), "events", "--json", "--admin", t.admin_socket],
                              stdout=subprocess.PIPE, text=True)
    cleanup.append(type("Stopper", (), {"stop": lambda self: (events.kill(), events.wait())})())
    # One slow request and one WebSocket on blue (preview-pinned to blue, both endpoints busy).
    slow_result = {}

    def slow():
        c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=30)
        c.request("GET", "/slow?ms=5000", headers={"X-Turnout-Pool": "blue"})
        r = c.getresponse()
        slow_result["status"], slow_result["body"] = r.status, r.read()

    th = threading.Thread(target=slow)
    th.start()
    ws = WebSocket(t.port, extra_headers="X-Turnout-Pool: blue\r\n")
    assert ws.status_line.startswith("HTTP/1.1 101"), ws.status_line
    wait_for(lambda: sum(e["in_flight"] for e in admin_call(t, "GET", "/v1/state")[1]["pools"]["blue"]["endpoints"]) == 2,
             what="the slow request and the tunnel to be in flight")
    # Drain the whole pool: switch to green. wait-drained must not return while either is open.
    assert admin_call(t, "POST", "/v1/switch", {"pool": "green"})[0] == 200
    waiter = subprocess.Popen([turnout_binary(), "wait-drained", "blue", "--timeout", "60s", "--admin", t.admin_socket],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert served(t, 20) == Counter({"green": 20})
    assert ws.ask("still here").endswith(":still here")
    th.join(timeout=20)
    assert slow_result["status"] == 200 and b"slow" in slow_result["body"]
    # The request finished; the tunnel is still open: not drained.
    _, report, _ = admin_call(t, "GET", "/v1/drain?pool=blue")
    assert report["drained"] is False and sum(o["tunnels"] for o in report["open"]) == 1, report
    assert waiter.poll() is None
    assert ws.ask("and now") .endswith(":and now")
    ws.close()
    out, err = waiter.communicate(timeout=20)
    assert waiter.returncode == 0, err
    assert "blue drained" in out
    _, report, _ = admin_call(t, "GET", "/v1/drain?pool=blue")
    assert report["drained"] is True and report["open"] == []
    # A pool that still has weight never counts as drained; the CLI says why and exits 1.
    out = run_cli("wait-drained", "green", "--timeout", "300ms", "--admin", t.admin_socket)
    assert out.returncode == 1 and "pool green has weight 100%" in out.stderr, out.stderr
    assert run_cli("wait-drained", "nope", "--timeout", "1s", "--admin", t.admin_socket).returncode == 1
    assert run_cli("wait-drained", "blue", "--admin", "/nonexistent.sock").returncode == 2
    # One endpoint: drain it while idle; it is drained at once.
    assert admin_call(t, "PUT", f"/v1/pools/green/endpoints/{green.address}", {"state": "draining", "force": True})[0] == 200
    assert run_cli("wait-drained", f"green/{green.address}", "--timeout", "10s", "--admin", t.admin_socket).returncode == 0
    # The drained events were published.
    seen = []
    deadline = time.time() + 10
    while time.time() < deadline and not any(e.get("kind") == "drained" and e.get("pool") == "blue" and e.get("endpoint") is None for e in seen):
        ready, _, _ = select.select([events.stdout], [], [], max(0.0, deadline - time.time()))
        if ready:
            seen.append(json.loads(events.stdout.readline()))
    assert any(e.get("kind") == "drained" and e.get("pool") == "blue" and e.get("endpoint") is None for e in seen), seen


def test_draining_one_endpoint_with_a_slow_request_and_a_tunnel_on_it(cleanup):
    blue, blue2, green = Upstream("blue"), Upstream("blue2"), Upstream("green")
    cleanup.extend([blue, blue2, green])
    t = Turnout({"blue": [blue.address, blue2.address], "green": [green.address]})
    cleanup.append(t)
    # Put everything of pool blue on the endpoint `blue`: blue2 in maintenance while the slow
    # request and the WebSocket open.
    assert cli(t, "endpoints", "maintenance", "blue", blue2.address).returncode == 0
    slow_result = {}

    def slow():
        c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=30)
        c.request("GET", "/slow?ms=5000")
        r = c.getresponse()
        slow_result["status"], slow_result["body"] = r.status, r.read()

    th = threading.Thread(target=slow)
    th.start()
    ws = WebSocket(t.port)
    assert ws.status_line.startswith("HTTP/1.1 101") and ws.headers["x-served-by"] == "blue"
    wait_for(lambda: endpoint(t, "blue", blue.address)["in_flight"] == 2, what="the request and the tunnel on blue")
    assert cli(t, "endpoints", "ready", "blue", blue2.address).returncode == 0
    assert cli(t, "endpoints", "drain", "blue", blue.address).returncode == 0
    waiter = subprocess.Popen([turnout_binary(), "wait-drained", f"blue/{blue.address}", "--timeout", "60s",
                               "--admin", t.admin_socket], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # No new request reaches the drained endpoint; the tunnel keeps working.
    assert served(t, 20) == Counter({"blue2": 20})
    assert ws.ask("one").endswith(":one")
    th.join(timeout=20)
    assert slow_result["status"] == 200 and slow_result["body"].startswith(b"blue ")
    assert waiter.poll() is None, "wait-drained returned while the tunnel was open"
    e = endpoint(t, "blue", blue.address)
    assert e["state"] == "draining" and e["tunnels"] == 1 and e["in_flight"] == 1 and e["last_request_ms_ago"] is not None
    ws.close()
    out, err = waiter.communicate(timeout=20)
    assert waiter.returncode == 0, err
    assert endpoint(t, "blue", blue.address)["in_flight"] == 0
