"""Reloading the config (SIGHUP and POST /v1/reload) without losing a request or a state change."""
import http.client
import signal
import threading

from harness import Turnout, Upstream, admin_call, free_port, run_cli, wait_for


def served_by(port, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/")
    r = c.getresponse()
    body = r.read()
    return r.status, r.getheader("X-Served-By"), body


def rewrite(t, old, new):
    with open(t.config_path) as f:
        text = f.read()
    assert old in text, text
    with open(t.config_path, "w") as f:
        f.write(text.replace(old, new))


def test_reload_adds_a_pool_and_an_endpoint_and_keeps_runtime_weights(cleanup):
    blue, green, blue2, canary = Upstream("blue"), Upstream("green"), Upstream("blue2"), Upstream("canary")
    cleanup.extend([blue, green, blue2, canary])
    t = Turnout({"blue": [blue.address], "green": [green.address]})
    cleanup.append(t)
    assert admin_call(t, "PUT", "/v1/weights", {"weights": {"blue": 70, "green": 30}})[0] == 200
    rewrite(t, f'  blue: {{ endpoints: ["{blue.address}"] }}',
            f'  blue: {{ endpoints: ["{blue.address}", "{blue2.address}"] }}\n  canary: {{ endpoints: ["{canary.address}"] }}')
    rewrite(t, "health: { interval: 200ms", "timeouts: { upstream_response: 7s }\nhealth: { interval: 200ms")
    status, body, _ = admin_call(t, "POST", "/v1/reload")
    assert status == 200, body
    assert "pool canary added (weight 0)" in body["changes"]
    assert f"endpoint {blue2.address} added to pool blue" in body["changes"]
    assert "timeouts changed" in body["changes"] and body["restart_required"] == []
    _, state, _ = admin_call(t, "GET", "/v1/state")
    assert state["weights"] == {"blue": 70, "green": 30, "canary": 0}
    wait_for(lambda: all(e["healthy"] for p in admin_call(t, "GET", "/v1/state")[1]["pools"].values() for e in p["endpoints"]),
             what="the new endpoints to be probed healthy")
    # The new endpoint takes its share of blue; the new pool takes traffic once given weight.
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    names = {served_by(t.port, c)[1] for _ in range(40)}
    assert {"blue", "blue2", "green"} <= names and "canary" not in names
    assert admin_call(t, "PUT", "/v1/weights", {"weights": {"blue": 0, "green": 0, "canary": 100}})[0] == 200
    assert served_by(t.port, c)[1] == "canary"
    # The state file knows the new pool: a restart comes back the same.
    t.stop()
    t.start()
    _, state, _ = admin_call(t, "GET", "/v1/state")
    assert state["weights"] == {"blue": 0, "green": 0, "canary": 100}


def test_a_broken_config_on_reload_changes_nothing(blue_green):
    t, _, _ = blue_green()
    with open(t.config_path) as f:
        good = f.read()
    with open(t.config_path, "w") as f:
        f.write(good.replace("routing:", "routing:\n  weights: { blue: 60, green: 60 }\n  bogus_key: 1\n#", 1)
                + "timeouts: { connect: forever }\n")
    status, body, _ = admin_call(t, "POST", "/v1/reload")
    assert status == 400 and body["code"] == "invalid_config"
    joined = " ".join(body["problems"])
    assert "timeouts.connect" in joined and "bogus_key" in joined
    assert served_by(t.port)[1] == "blue"
    # SIGHUP with the same broken file: logged, nothing changes, the proxy keeps serving.
    t.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config not reloaded, the running config is kept" in t.read_log(), what="the refusal in the log")
    assert t.proc.poll() is None and served_by(t.port)[1] == "blue"
    with open(t.config_path, "w") as f:
        f.write(good)
    assert admin_call(t, "POST", "/v1/reload")[0] == 200


def test_removing_a_pool_that_carries_traffic_is_refused(blue_green):
    t, blue, green = blue_green(weights={"blue": 90, "green": 10})
    rewrite(t, f'  green: {{ endpoints: ["{green.address}"] }}\n', "")
    rewrite(t, "weights: { blue: 90, green: 10 }", "weights: { blue: 100 }")
    status, body, _ = admin_call(t, "POST", "/v1/reload")
    assert status == 409 and body["code"] == "reload_refused" and "green" in body["error"]
    assert admin_call(t, "PUT", "/v1/weights", {"weights": {"blue": 100, "green": 0}})[0] == 200
    status, body, _ = admin_call(t, "POST", "/v1/reload")
    assert status == 200 and "pool green removed" in body["changes"]
    _, state, _ = admin_call(t, "GET", "/v1/state")
    assert list(state["pools"]) == ["blue"] and state["weights"] == {"blue": 100}


def test_reload_adds_and_removes_listeners_without_dropping_connections(blue_green):
    t, _, _ = blue_green()
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    assert served_by(t.port, c)[1] == "blue"
    rewrite(t, "listeners:\n  - address: 127.0.0.1:0\n", "listeners:\n  - address: 127.0.0.1:0\n  - address: 127.0.0.1:0\n")
    # Two entries with the same address are one listener: nothing to add.
    status, body, _ = admin_call(t, "POST", "/v1/reload")
    assert status == 200
    extra = free_port()
    rewrite(t, "  - address: 127.0.0.1:0\n  - address: 127.0.0.1:0\n", f"  - address: 127.0.0.1:{extra}\n")
    status, body, _ = admin_call(t, "POST", "/v1/reload")
    assert status == 200 and f"listener 127.0.0.1:{extra} added" in body["changes"], body
    assert "listener 127.0.0.1:0 removed" in body["changes"], body
    assert served_by(extra)[1] == "blue"
    # The connection accepted by the removed listener still works.
    assert served_by(t.port, c)[1] == "blue"
    try:
        served_by(t.port)
        assert False, "the removed listener still accepts"
    except ConnectionRefusedError:
        pass


def test_reload_under_load_drops_no_request(cleanup):
    blue, blue2, green = Upstream("blue"), Upstream("blue2"), Upstream("green")
    cleanup.extend([blue, blue2, green])
    t = Turnout({"blue": [blue.address], "green": [green.address]})
    cleanup.append(t)
    failures, done = [], threading.Event()
    count = [0]

    def client():
        c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
        while not done.is_set():
            try:
                status, _, _ = served_by(t.port, c)
                if status != 200:
                    failures.append(status)
                count[0] += 1
            except Exception as e:
                failures.append(repr(e))
                c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for th in threads:
        th.start()
    two = f'  blue: {{ endpoints: ["{blue.address}", "{blue2.address}"] }}'
    one = f'  blue: {{ endpoints: ["{blue.address}"] }}'
    for i in range(20):
        # Traffic between every two reloads (a condition, not a pace): at least 10 requests
        # answered since the last one.
        seen = count[0]
        wait_for(lambda: count[0] >= seen + 10 or failures, what="requests between reloads")
        if i % 2 == 0:
            rewrite(t, one, two)
        else:
            rewrite(t, two, one)
        if i % 4 == 3:
            t.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: t.read_log().count("config reloaded") >= i + 1, what="the SIGHUP reload")
        else:
            status, body, _ = admin_call(t, "POST", "/v1/reload")
            assert status == 200, body
    done.set()
    for th in threads:
        th.join(timeout=30)
    assert failures == [] and count[0] >= 200


def test_reloading_listeners_in_and_out_under_load_drops_no_request(cleanup):
    """Every closed connection tells the listeners (to resume a paused accept) while a reload adds
    and removes listeners: the two meet on every loop at once."""
    blue, green = Upstream("blue"), Upstream("green")
    cleanup.extend([blue, green])
    t = Turnout({"blue": [blue.address], "green": [green.address]})
    cleanup.append(t)
    failures, done = [], threading.Event()
    count = [0]

    def client():
        # A new connection per request: each one closes, and every close reaches the registry.
        while not done.is_set():
            try:
                c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
                c.request("GET", "/", headers={"Connection": "close"})
                r = c.getresponse()
                r.read()
                c.close()
                if r.status != 200:
                    failures.append(r.status)
                count[0] += 1
            except Exception as e:
                failures.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for th in threads:
        th.start()
    base = "listeners:\n  - address: 127.0.0.1:0\n"
    current = base
    for i in range(20):
        seen = count[0]
        wait_for(lambda: count[0] >= seen + 10 or failures, what="requests between reloads")
        if i % 2 == 0:
            extra = free_port()
            new = base + f"  - address: 127.0.0.1:{extra}\n"
        else:
            new = base
        rewrite(t, current, new)
        current = new
        status, body, _ = admin_call(t, "POST", "/v1/reload")
        assert status == 200, body
        if i % 2 == 0:
            assert served_by(extra)[1] == "blue"
    done.set()
    for th in threads:
        th.join(timeout=30)
    assert failures == [] and count[0] >= 200


def test_reload_command_line(blue_green):
    t, _, _ = blue_green()
    r = run_cli("reload", "--admin", t.admin_socket)
    assert r.returncode == 0 and "reloaded" in r.stdout
    with open(t.config_path, "a") as f:
        f.write("nonsense: true\n")
    r = run_cli("reload", "--admin", t.admin_socket)
    assert r.returncode == 1 and "nonsense" in r.stderr
