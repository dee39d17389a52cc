"""Rollback undoes the last change as a user sees it: checked through the proxy, not only the state.

A ramp counts as one change: after it completed, `turnout rollback` restores the weights from before
its first step; a ramp that rolled back (gate, health, abort) already restored them and leaves nothing
to roll back to. `live` never names a pool that the weights give no traffic."""
import http.client
import json

from harness import Turnout, Upstream, admin_call, run_cli, wait_for
from test_ramps import Load


def served(t, n=100):
    """How many of `n` requests on one keep-alive connection each pool answered (the split without a
    sticky key is exact per request, so n requests at weight w% give exactly n*w/100)."""
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    counts = {}
    for _ in range(n):
        c.request("GET", "/")
        r = c.getresponse()
        r.read()
        assert r.status == 200
        pool = r.getheader("X-Served-By")
        counts[pool] = counts.get(pool, 0) + 1
    c.close()
    return counts


def state(t):
    return admin_call(t, "GET", "/v1/state")[1]


def cli(t, *args):
    return run_cli(*args, "--admin", t.admin_socket)


def assert_live_takes_traffic(s):
    assert s["weights"][s["live"]] > 0, f"live {s['live']} has no weight: {s['weights']}"


def ramp_under_load(t, start, what="the ramp to finish"):
    """Calls `start` (which starts a ramp) while two keep-alive clients send requests, and waits
    until the ramp is no longer running."""
    load = Load(t, clients=2)
    try:
        start()
        wait_for(lambda: admin_call(t, "GET", "/v1/ramp")[1]["status"] != "running", timeout=30, what=what)
    finally:
        load.close()


def test_rollback_after_a_completed_ramp_restores_the_weights_from_before_it(blue_green):
    t, _, _ = blue_green()

    def start():
        out = cli(t, "ramp", "green", "--steps", "50,100", "--interval", "300ms", "--min-requests", "5")
        assert out.returncode == 0, out.stderr
    ramp_under_load(t, start)
    assert admin_call(t, "GET", "/v1/ramp")[1]["status"] == "completed"
    s = state(t)
    assert s["live"] == "green" and s["weights"] == {"blue": 0, "green": 100}
    assert s["previous"] == {"blue": 100, "green": 0}, "the weights from before the ramp are what rollback restores"
    assert served(t) == {"green": 100}

    out = cli(t, "rollback")
    assert out.returncode == 0, out.stderr
    assert "live blue" in out.stdout and "blue=100 green=0" in out.stdout, out.stdout
    s = state(t)
    assert s["live"] == "blue" and s["weights"] == {"blue": 100, "green": 0}
    assert served(t) == {"blue": 100}

    # A second rollback undoes the first: the release is promoted again.
    assert cli(t, "rollback").returncode == 0
    assert served(t) == {"green": 100}


def test_rollback_after_an_aborted_ramp_says_it_was_already_rolled_back(blue_green):
    t, _, _ = blue_green()
    assert cli(t, "ramp", "green", "--steps", "10,100", "--interval", "1m").returncode == 0
    assert served(t) == {"blue": 90, "green": 10}
    out = cli(t, "ramp", "abort")
    assert out.returncode == 0, out.stderr
    assert served(t) == {"blue": 100}
    before = state(t)
    assert before["previous"] is None and before["weights"] == {"blue": 100, "green": 0}

    out = cli(t, "rollback")
    assert out.returncode == 1
    assert "already rolled back" in out.stderr and "blue=100 green=0" in out.stderr, out.stderr
    assert state(t)["generation"] == before["generation"], "a refused rollback changes nothing"
    assert served(t) == {"blue": 100}


def test_rollback_after_a_ramp_rolled_back_by_a_gate_sends_nothing_back_to_the_canary(cleanup, tmp_path):
    fail = tmp_path / "fail"
    fail.write_text("1")
    blue, green = Upstream("blue"), Upstream("green", fail_file=str(fail))
    cleanup.extend([blue, green])
    t = Turnout({"blue": [blue.address], "green": [green.address]})
    cleanup.append(t)

    def start():
        status, _, _ = admin_call(t, "POST", "/v1/ramp", {"pool": "green", "steps": [20, 100], "interval": "1m",
                                                           "gates": {"max_error_rate": 0.05, "min_requests": 5}})
        assert status == 201
    ramp_under_load(t, start, what="the gate's rollback")
    assert admin_call(t, "GET", "/v1/ramp")[1]["status"] == "rolled_back"
    fail.unlink()
    assert served(t) == {"blue": 100}
    status, err, _ = admin_call(t, "POST", "/v1/rollback")
    assert status == 409 and err["code"] == "nothing_to_roll_back" and "already rolled back" in err["error"], err
    assert served(t) == {"blue": 100}


def test_rollback_undoes_a_switch_and_a_second_rollback_undoes_the_first(blue_green):
    t, _, _ = blue_green()
    assert cli(t, "switch", "green").returncode == 0
    assert served(t) == {"green": 100}
    out = cli(t, "rollback")
    assert out.returncode == 0 and "live blue" in out.stdout, out.stdout
    s = state(t)
    assert s["live"] == "blue" and s["previous"] == {"blue": 0, "green": 100}
    assert served(t) == {"blue": 100}
    assert cli(t, "rollback").returncode == 0
    assert served(t) == {"green": 100}


def test_rollback_undoes_a_weights_change(blue_green):
    t, _, _ = blue_green()
    assert cli(t, "weights", "blue=70", "green=30").returncode == 0
    assert served(t) == {"blue": 70, "green": 30}
    assert cli(t, "rollback").returncode == 0
    assert served(t) == {"blue": 100}
    # Weights that leave the live pool at 0% move `live` to the pool with the most weight.
    assert cli(t, "switch", "green").returncode == 0
    status, s, _ = admin_call(t, "PUT", "/v1/weights", {"weights": {"blue": 40, "green": 60}})
    assert status == 200 and s["live"] == "green"
    assert cli(t, "weights", "blue=100").returncode == 0
    s = state(t)
    assert s["live"] == "blue"
    assert_live_takes_traffic(s)


def test_rollback_of_a_restarted_proxy_uses_the_persisted_previous_state(blue_green):
    t, _, _ = blue_green()
    ramp_under_load(t, lambda: admin_call(t, "POST", "/v1/ramp", {"pool": "green", "steps": [50, 100], "interval": "300ms",
                                                                  "gates": {"min_requests": 5}}))
    t.stop()
    t.start()
    assert state(t)["previous"] == {"blue": 100, "green": 0}
    assert admin_call(t, "POST", "/v1/rollback")[0] == 200
    assert served(t) == {"blue": 100}
    with open(t.state_file) as f:
        assert json.load(f)["live"] == "blue"
