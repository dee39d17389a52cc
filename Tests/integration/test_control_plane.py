"""The admin API and the CLI against a real turnout process (issue: the control plane)."""
import http.client
import json
import os
import signal
import stat
import threading
import time

import pytest
from harness import Turnout, Upstream, admin_call, free_port, run_cli, wait_for


def served_by(port, conn=None, headers=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/", headers=headers or {})
    r = c.getresponse()
    r.read()
    return r.status, r.getheader("X-Served-By")


def test_state_reports_live_weights_and_endpoints(blue_green):
    t, blue, green = blue_green(weights={"blue": 90, "green": 10})
    status, state, r = admin_call(t, "GET", "/v1/state")
    assert status == 200
    assert state["generation"] == 1 and state["live"] == "blue"
    assert state["weights"] == {"blue": 90, "green": 10}
    assert state["previous"] is None and state["ramp"] is None
    assert state["pools"]["blue"]["endpoints"] == [
        {"address": blue.address, "healthy": True, "health": "healthy", "state": "serving", "weight": 100,
         "source": "config", "leaving": False, "ejected": False, "in_flight": 0, "tunnels": 0,
         "last_request_ms_ago": None}]
    assert r.getheader("ETag") == '"1"'
    assert stat.S_IMODE(os.stat(t.admin_socket).st_mode) == 0o600
    assert admin_call(t, "GET", "/healthz")[0] == 200


def test_switch_is_atomic_and_takes_effect_for_the_next_request(blue_green):
    t, _, _ = blue_green()
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    assert served_by(t.port, c) == (200, "blue")
    status, state, _ = admin_call(t, "POST", "/v1/switch", {"pool": "green"})
    assert status == 200 and state["live"] == "green" and state["weights"] == {"blue": 0, "green": 100}
    assert state["generation"] == 2 and state["previous"] == {"blue": 100, "green": 0}
    # The same keep-alive connection: the very next request goes to green.
    assert served_by(t.port, c) == (200, "green")


def test_switch_to_an_unhealthy_pool_needs_force(cleanup):
    blue = Upstream("blue")
    cleanup.append(blue)
    t = Turnout({"blue": [blue.address], "green": [f"127.0.0.1:{free_port()}"]})
    cleanup.append(t)
    status, err, _ = admin_call(t, "POST", "/v1/switch", {"pool": "green"})
    assert status == 409 and err["code"] == "pool_unhealthy"
    assert admin_call(t, "GET", "/v1/state")[1]["live"] == "blue"
    status, state, _ = admin_call(t, "POST", "/v1/switch", {"pool": "green", "force": True})
    assert status == 200 and state["live"] == "green"


def test_rollback_restores_the_previous_weights(blue_green):
    t, _, _ = blue_green()
    assert admin_call(t, "POST", "/v1/rollback")[0] == 409
    admin_call(t, "PUT", "/v1/weights", {"weights": {"blue": 75, "green": 25}})
    status, state, _ = admin_call(t, "POST", "/v1/rollback")
    assert status == 200 and state["weights"] == {"blue": 100, "green": 0} and state["generation"] == 3
    status, state, _ = admin_call(t, "POST", "/v1/rollback")
    assert state["weights"] == {"blue": 75, "green": 25}, "a second rollback undoes the first"


def test_weights_change_the_split_exactly(blue_green):
    t, _, _ = blue_green()
    status, state, _ = admin_call(t, "PUT", "/v1/weights", {"weights": {"blue": 80, "green": 20}})
    assert status == 200 and state["weights"] == {"blue": 80, "green": 20} and state["live"] == "blue"
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    seen = [served_by(t.port, c)[1] for _ in range(100)]
    assert seen.count("green") == 20
    # A pool given 100 becomes live.
    assert admin_call(t, "PUT", "/v1/weights", {"weights": {"green": 100}})[1]["live"] == "green"


BAD_INPUTS = [
    # (method, path, body bytes, headers, status, code)
    ("POST", "/v1/switch", b"{not json", {}, 400, "invalid_json"),
    ("POST", "/v1/switch", b"[1,2]", {}, 400, "invalid_json"),
    ("POST", "/v1/switch", b"", {}, 400, "invalid_json"),
    ("POST", "/v1/switch", b'{"pool": 7}', {}, 400, "wrong_type"),
    ("POST", "/v1/switch", b'{"pool": "green", "force": "yes"}', {}, 400, "wrong_type"),
    ("POST", "/v1/switch", b'{"pool": "green", "forse": true}', {}, 400, "unknown_field"),
    ("POST", "/v1/switch", b'{"force": true}', {}, 400, "missing_field"),
    ("POST", "/v1/switch", b'{"pool": "purple"}', {}, 404, "unknown_pool"),
    ("PUT", "/v1/weights", b'{"weights": {"blue": 101, "green": -1}}', {}, 400, "invalid_weights"),
    ("PUT", "/v1/weights", b'{"weights": {"blue": -10, "green": 110}}', {}, 400, "invalid_weights"),
    ("PUT", "/v1/weights", b'{"weights": {"blue": 90, "green": 5}}', {}, 400, "invalid_weights"),
    ("PUT", "/v1/weights", b'{"weights": {"blue": 90.125, "green": 9.875}}', {}, 400, "invalid_weights"),
    ("PUT", "/v1/weights", b'{"weights": {"blue": 90, "purple": 10}}', {}, 400, "unknown_pool"),
    ("PUT", "/v1/weights", b'{"weights": {"blue": "90", "green": 10}}', {}, 400, "wrong_type"),
    ("PUT", "/v1/weights", b'{"weights": {"blue": true, "green": 10}}', {}, 400, "wrong_type"),
    ("PUT", "/v1/weights", b'{"weights": [90, 10]}', {}, 400, "wrong_type"),
    ("PUT", "/v1/weights", b'{"weights": {}}', {}, 400, "invalid_weights"),
    ("PUT", "/v1/weights", b'{"weights": {"blue": 100}}' + b" " * (70 * 1024), {}, 413, "body_too_large"),
    ("POST", "/v1/weights", b'{"weights": {"blue": 100}}', {}, 405, "method_not_allowed"),
    ("GET", "/v1/switch", b"", {}, 405, "method_not_allowed"),
    ("DELETE", "/v1/state", b"", {}, 405, "method_not_allowed"),
    ("GET", "/v1/nothing", b"", {}, 404, "not_found"),
    ("POST", "/v1/switch", b'{"pool": "green"}', {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    ("POST", "/v1/switch", b'{"pool": "green"}', {"If-Match": "abc"}, 400, "invalid_if_match"),
    ("POST", "/v1/switch", b'{"pool": "green"}', {"If-Match": "99"}, 412, "generation_mismatch"),
]


@pytest.mark.parametrize("method,path,body,headers,status,code", BAD_INPUTS,
                         ids=[f"{m} {p} -> {s} {c}" for m, p, _, _, s, c in BAD_INPUTS])
def test_bad_admin_input_gets_a_json_error_and_changes_nothing(blue_green, method, path, body, headers, status, code):
    t, _, _ = blue_green()
    h = {"Content-Type": "application/json", **headers} if body else dict(headers)
    got, err, _ = admin_call(t, method, path, raw_body=body, headers=h)
    assert got == status, err
    assert err["code"] == code and isinstance(err["error"], str) and err["error"]
    state = admin_call(t, "GET", "/v1/state")[1]
    assert state["generation"] == 1 and state["weights"] == {"blue": 100, "green": 0}
    assert not os.path.exists(t.state_file), "a refused mutation must not write the state file"
    assert served_by(t.port) == (200, "blue"), "the proxy keeps serving"


def test_tcp_admin_requires_the_bearer_token(cleanup, tmp_path):
    blue = Upstream("blue")
    cleanup.append(blue)
    token = "s3cret-token-0123456789"
    tf = tmp_path / "token"
    tf.write_text(token + "\n")
    port = free_port()
    t = Turnout({"blue": [blue.address]}, admin_extra=f"  address: 127.0.0.1:{port}\n  token_file: {tf}\n")
    cleanup.append(t)

    def call(auth, path="/v1/state", method="GET"):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request(method, path, headers={"Authorization": auth} if auth else {})
        r = c.getresponse()
        return r.status, json.loads(r.read())

    # Only GET /healthz (for load balancers and Kubernetes probes) answers without the token.
    assert call(None, "/healthz") == (200, {"status": "serving"})
    assert call(None, "/healthz?x=1")[0] == 401 and call(None, "/healthz", "POST")[0] == 401
    assert call(None)[0] == 401 and call(None)[1]["code"] == "unauthorized"
    assert call("Bearer wrong-token-0123456789")[0] == 401
    assert call("Bearer " + token[:-1])[0] == 401
    assert call("Basic " + token)[0] == 401
    assert call("Bearer " + token)[0] == 200
    out = run_cli("status", "--admin", f"http://127.0.0.1:{port}", "--token-file", str(tf))
    assert out.returncode == 0 and "blue" in out.stdout
    out = run_cli("status", "--admin", f"http://127.0.0.1:{port}")
    assert out.returncode == 2 and "token-file" in out.stderr
    assert served_by(t.port) == (200, "blue")


def test_tcp_admin_without_token_file_is_refused_at_startup(cleanup):
    blue = Upstream("blue")
    cleanup.append(blue)
    with pytest.raises(RuntimeError) as e:
        Turnout({"blue": [blue.address]}, admin_extra=f"  address: 127.0.0.1:{free_port()}\n")
    assert "admin.token_file" in str(e.value)


def test_concurrent_puts_with_the_same_if_match_exactly_one_wins(blue_green):
    t, _, _ = blue_green()
    for round_ in range(20):
        gen = admin_call(t, "GET", "/v1/state")[1]["generation"]
        barrier = threading.Barrier(2)
        results = []

        def put(w):
            barrier.wait()
            results.append(admin_call(t, "PUT", "/v1/weights", {"weights": {"blue": 100 - w, "green": w}},
                                      headers={"If-Match": str(gen)})[0])

        threads = [threading.Thread(target=put, args=(w,)) for w in (10 + round_, 50 + round_)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert sorted(results) == [200, 412], results
        assert admin_call(t, "GET", "/v1/state")[1]["generation"] == gen + 1


def test_state_survives_kill_9(blue_green):
    t, _, _ = blue_green()
    admin_call(t, "PUT", "/v1/weights", {"weights": {"blue": 70, "green": 30}})
    admin_call(t, "POST", "/v1/switch", {"pool": "green"})
    before = admin_call(t, "GET", "/v1/state")[1]
    t.proc.send_signal(signal.SIGKILL)
    t.proc.wait()
    t.start()
    after = admin_call(t, "GET", "/v1/state")[1]
    for k in ("generation", "live", "weights", "previous"):
        assert after[k] == before[k], k
    assert served_by(t.port) == (200, "green")
    out = run_cli("rollback", "--admin", t.admin_socket)
    assert out.returncode == 0, out.stderr
    assert admin_call(t, "GET", "/v1/state")[1]["weights"] == {"blue": 70, "green": 30}


def test_a_stopped_proxy_leaves_only_its_state_file(blue_green):
    t, _, _ = blue_green()
    for pool in ("green", "blue", "green"):
        assert admin_call(t, "POST", "/v1/switch", {"pool": pool})[0] == 200
    t.stop()
    base = os.path.basename(t.state_file)
    assert [n for n in os.listdir(os.path.dirname(t.state_file)) if n.startswith(base)] == [base]
    with open(t.state_file) as f:
        assert json.load(f)["live"] == "green"


def test_corrupt_state_file_stops_startup_unless_reset(blue_green):
    t, _, _ = blue_green()
    admin_call(t, "POST", "/v1/switch", {"pool": "green"})
    t.stop()
    with open(t.state_file, "w") as f:
        f.write("{ torn")
    with pytest.raises(RuntimeError) as e:
        t.start()
    assert t.state_file in str(e.value) and "--reset-state" in str(e.value)
    t.args = ["--reset-state"]
    t.start()
    state = admin_call(t, "GET", "/v1/state")[1]
    assert state["live"] == "blue" and state["generation"] == 1
    assert json.load(open(t.state_file))["live"] == "blue"


def test_state_file_naming_unknown_pools_is_a_startup_error(blue_green):
    t, _, _ = blue_green()
    admin_call(t, "PUT", "/v1/weights", {"weights": {"blue": 50, "green": 50}})
    t.stop()
    doc = json.load(open(t.state_file))
    doc["weights_bp"] = {"blue": 5000, "purple": 5000}
    json.dump(doc, open(t.state_file, "w"))
    with pytest.raises(RuntimeError) as e:
        t.start()
    assert "purple" in str(e.value) and t.state_file in str(e.value)


def test_stale_admin_socket_is_replaced_but_a_live_one_is_not(blue_green, cleanup):
    t, blue, _ = blue_green()
    # A second turnout on the same admin socket must refuse to start.
    other = Turnout({"blue": [blue.address]})
    cleanup.append(other)
    other.stop()
    with open(other.config_path) as f:
        cfg = f.read().replace(other.admin_socket, t.admin_socket)
    with open(other.config_path, "w") as f:
        f.write(cfg)
    with pytest.raises(RuntimeError) as e:
        other.start()
    assert "in use" in str(e.value)
    # After kill -9 the socket file stays behind; a restart replaces it.
    t.proc.send_signal(signal.SIGKILL)
    t.proc.wait()
    assert os.path.exists(t.admin_socket)
    t.start()
    assert admin_call(t, "GET", "/v1/state")[0] == 200


def test_cli_discovery_exit_codes_and_output(blue_green):
    t, _, _ = blue_green()
    out = run_cli("status", "--config", t.config_path)
    assert out.returncode == 0 and "live: blue" in out.stdout and "healthy" in out.stdout
    out = run_cli("status", "--json", env={"TURNOUT_ADMIN": t.admin_socket})
    assert out.returncode == 0 and json.loads(out.stdout)["live"] == "blue"
    out = run_cli("switch", "green", "--admin", f"unix:{t.admin_socket}")
    assert out.returncode == 0 and "switched to green" in out.stdout
    out = run_cli("weights", "blue=90", "green=10", "--admin", t.admin_socket)
    assert out.returncode == 0 and "blue=90 green=10" in out.stdout
    out = run_cli("weights", "blue=90", "green=20", "--admin", t.admin_socket)
    assert out.returncode == 1 and "sum to 100" in out.stderr
    out = run_cli("switch", "purple", "--admin", t.admin_socket)
    assert out.returncode == 1 and "purple" in out.stderr
    out = run_cli("switch", "blue", "--if-match", "1", "--admin", t.admin_socket)
    assert out.returncode == 1 and "412" in out.stderr
    out = run_cli("status", "--admin", t.admin_socket + ".missing")
    assert out.returncode == 2 and "cannot reach" in out.stderr
    out = run_cli("weights", "blue=abc", "--admin", t.admin_socket)
    assert out.returncode == 2
    out = run_cli("frobnicate")
    assert out.returncode == 2


def test_fifty_switches_under_load_fail_no_request_and_are_obeyed(blue_green):
    t, _, _ = blue_green()
    stop = threading.Event()
    records = []  # (sent, received, pool)
    failures = []
    count = [0]
    lock = threading.Lock()

    def client():
        c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
        local = []
        while not stop.is_set():
            sent = time.monotonic()
            try:
                status, pool = served_by(t.port, c)
            except Exception as e:
                failures.append(repr(e))
                c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
                continue
            received = time.monotonic()
            if status != 200:
                failures.append(status)
            local.append((sent, received, pool))
            with lock:
                count[0] += 1
        with lock:
            records.extend(local)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for th in threads:
        th.start()
    switches = []  # (started, returned, pool)
    pool = "blue"
    for i in range(50):
        pool = "green" if pool == "blue" else "blue"
        started = time.monotonic()
        status, state, _ = admin_call(t, "POST", "/v1/switch", {"pool": pool})
        returned = time.monotonic()
        assert status == 200 and state["live"] == pool
        switches.append((started, returned, pool))
        # Let requests land between switches: wait until some more were answered.
        target = count[0] + 300
        wait_for(lambda: count[0] >= target, timeout=30, what="requests between switches")
    wait_for(lambda: count[0] >= 20000, timeout=120, what="20,000 requests in all")
    stop.set()
    for th in threads:
        th.join()
    assert failures == []
    assert len(records) >= 20000, len(records)
    checked = 0
    for i, (started, returned, pool) in enumerate(switches):
        next_start = switches[i + 1][0] if i + 1 < len(switches) else float("inf")
        for sent, received, got in records:
            if sent > returned and received < next_start:
                checked += 1
                assert got == pool, f"request sent after switch {i} to {pool} returned went to {got}"
    assert checked > 5000, checked


def test_state_file_is_never_torn_by_kill_9_during_mutations(blue_green):
    """kill -9 at arbitrary moments of a tight loop of mutations: the file always holds a whole
    state, at least as new as the last acknowledged one, and the proxy restarts from it."""
    import random
    t, _, _ = blue_green()
    rng = random.Random(7)
    for round_ in range(8):
        acknowledged = [0]
        stop = threading.Event()

        def mutate():
            i = 0
            while not stop.is_set():
                i += 1
                g = 1 + (i % 99)
                try:
                    status, state, _ = admin_call(t, "PUT", "/v1/weights", {"weights": {"blue": 100 - g, "green": g}})
                except Exception:
                    return  # the proxy is gone
                if status == 200:
                    acknowledged[0] = state["generation"]

        th = threading.Thread(target=mutate)
        th.start()
        wait_for(lambda: acknowledged[0] > 0, what="mutations to start")
        # Let a random number of mutations happen, then kill at whatever moment that is.
        target = acknowledged[0] + rng.randint(3, 40)
        wait_for(lambda: acknowledged[0] >= target, what="more mutations")
        t.proc.send_signal(signal.SIGKILL)
        t.proc.wait()
        stop.set()
        th.join(timeout=30)
        with open(t.state_file) as f:
            doc = json.load(f)  # never torn: always valid JSON with a whole state
        assert doc["format"] == 1
        assert acknowledged[0] <= doc["generation"] <= acknowledged[0] + 1, (round_, acknowledged[0], doc["generation"])
        assert sum(doc["weights_bp"].values()) == 10000
        t.log.close()
        t.start()
        _, state, _ = admin_call(t, "GET", "/v1/state")
        assert state["generation"] == doc["generation"]
        # Temporary files of the killed process are gone; only the new process's own remain.
        base = os.path.basename(t.state_file)
        for name in os.listdir(os.path.dirname(t.state_file)):
            if name.startswith(base + ".next.") or name.startswith(base + ".tmp."):
                assert int(name[len(base) + 1:].split(".")[1]) == t.proc.pid, name
