"""Cluster mode: several Turnout replicas share one routing truth in real etcd members.

The replicas here use shorter clocks than the defaults (stale_after 2s, heartbeat 500ms, lease_ttl
2s) so that a failure shows within a test's time; the logic is the same at the defaults."""
import http.client
import json
import signal
import threading
import time
import uuid

import pytest

from etcd import EtcdCluster
from harness import Turnout, Upstream, admin_call, run_cli, wait_for
from test_ramps import EventReader


def cluster_block(etcd, rid, name, members=None, stale="2s", lease="2s"):
    return (f"cluster:\n  name: {name}\n  replica_id: {rid}\n"
            f"  etcd: {{ endpoints: {etcd.yaml_endpoints(members)} }}\n"
            f"  stale_after: {stale}\n  heartbeat: 500ms\n  lease_ttl: {lease}\n")


def replica(cleanup, etcd, pools, rid, name, members=None, **kw):
    t = Turnout(pools, root_extra=cluster_block(etcd, rid, name, members), **kw)
    cleanup.append(t)
    t.rid = rid
    return t


def served_by(port, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/")
    r = c.getresponse()
    r.read()
    return r.status, r.getheader("X-Served-By")


def state(t):
    status, body, _ = admin_call(t, "GET", "/v1/state")
    assert status == 200, body
    return body


class Load:
    """Keep-alive clients on each replica, recording when each request was sent, which pool
    answered, and every failure."""

    def __init__(self, replicas, per_replica=2):
        self.records = []  # (sent_at, replica index, pool)
        self.failures = []
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, args=(i, t.port), daemon=True)
                        for i, t in enumerate(replicas) for _ in range(per_replica)]
        for th in self.threads:
            th.start()

    def client(self, index, port):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while not self.done.is_set():
            sent = time.monotonic()
            try:
                status, pool = served_by(port, c)
                with self.lock:
                    if status != 200:
                        self.failures.append((index, status))
                    self.records.append((sent, index, pool))
            except Exception as e:
                with self.lock:
                    self.failures.append((index, repr(e)))
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def count(self):
        with self.lock:
            return len(self.records)

    def stop(self):
        self.done.set()
        for th in self.threads:
            th.join(timeout=30)


@pytest.fixture
def etcd1(cleanup):
    e = EtcdCluster(1)
    cleanup.append(e)
    return e


@pytest.fixture
def upstreams(cleanup):
    blue, green = Upstream("blue"), Upstream("green")
    cleanup.extend([blue, green])
    return {"blue": [blue.address], "green": [green.address]}


def test_a_switch_through_one_replica_routes_every_replica(cleanup, etcd1, upstreams):
    name = uuid.uuid4().hex[:8]
    a = replica(cleanup, etcd1, upstreams, "a", name)
    b = replica(cleanup, etcd1, upstreams, "b", name)
    wait_for(lambda: len(state(a)["cluster"]["replicas"]) == 2, what="both replicas in the registry")
    assert served_by(b.port)[1] == "blue"
    events = EventReader(b)
    status, body, headers = admin_call(a, "POST", "/v1/switch?wait=5s", {"pool": "green"})
    assert status == 200, body
    generation = body["generation"]
    # The generation is the etcd mod_revision of the routing key, the same on every replica.
    doc, mod = etcd1.get(f"/turnout/v1/{name}/routing")
    assert mod == generation and doc["live"] == "green" and doc["change"]["by"] == "a"
    sb = state(b)
    assert sb["generation"] == generation and sb["live"] == "green"
    assert served_by(b.port)[1] == "green"
    # The writer read the registry while it waited; every other replica reads it every fifth heartbeat.
    assert {r["id"]: r["applied_revision"] for r in state(a)["cluster"]["replicas"]} == {"a": generation, "b": generation}
    wait_for(lambda: {r["id"]: r["applied_revision"] for r in state(b)["cluster"]["replicas"]} == {"a": generation, "b": generation},
             what="b's view of the registry")
    # The change reached b's event stream, its log and its state file (the boot cache).
    wait_for(lambda: "switch" in events.kinds(), what="the switch on b's event stream")
    event = [e for e in events.events if e["kind"] == "switch"][0]
    assert event["by"] == "a" and event["generation"] == generation and event["live"] == "green"
    assert "switch to green (by a)" in b.read_log()
    wait_for(lambda: json.load(open(b.state_file))["live"] == "green", what="b's boot cache")
    # The CLI shows the replicas; --wait works from the command line.
    out = run_cli("status", "--admin", b.admin_socket)
    assert out.returncode == 0 and "REPLICA" in out.stdout and "cluster: " + name in out.stdout, out.stdout
    out = run_cli("rollback", "--wait", "5s", "--admin", b.admin_socket)
    assert out.returncode == 0, out.stderr
    assert served_by(a.port)[1] == "blue"
    text = open(a.log_path).read()
    assert "rollback (by b)" in text


def test_switch_refuses_a_pool_another_replica_sees_without_a_healthy_endpoint(cleanup, etcd1):
    blue, green = Upstream("blue"), Upstream("green")
    cleanup.extend([blue, green])
    name = uuid.uuid4().hex[:8]
    a = replica(cleanup, etcd1, {"blue": [blue.address], "green": [green.address]}, "a", name)
    # b reaches green at an address where nothing listens.
    b = replica(cleanup, etcd1, {"blue": [blue.address], "green": ["127.0.0.1:9"]}, "b", name)
    wait_for(lambda: len(state(a)["cluster"]["replicas"]) == 2, what="both replicas")
    status, body, _ = admin_call(a, "POST", "/v1/switch", {"pool": "green"})
    assert status == 409 and body["code"] == "pool_unhealthy" and "as seen by b" in body["error"], body
    status, body, _ = admin_call(a, "POST", "/v1/switch", {"pool": "green", "force": True})
    assert status == 200 and body["live"] == "green"


def test_concurrent_writes_with_the_same_if_match_through_two_replicas(cleanup, etcd1, upstreams):
    name = uuid.uuid4().hex[:8]
    a = replica(cleanup, etcd1, upstreams, "a", name)
    b = replica(cleanup, etcd1, upstreams, "b", name)
    wait_for(lambda: state(b)["generation"] == state(a)["generation"], what="the same generation")
    for round_ in range(5):
        generation = state(a)["generation"]
        wait_for(lambda: state(b)["generation"] == generation, what="b to apply")
        target = "green" if round_ % 2 == 0 else "blue"
        results = []
        barrier = threading.Barrier(2)

        def write(t):
            barrier.wait()
            results.append(admin_call(t, "POST", "/v1/switch", {"pool": target}, headers={"If-Match": str(generation)})[:2])

        threads = [threading.Thread(target=write, args=(t,)) for t in (a, b)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=20)
        statuses = sorted(s for s, _ in results)
        assert statuses == [200, 412], results
        loser = [body for s, body in results if s == 412][0]
        assert loser["code"] == "generation_mismatch"


def test_bad_wait_and_writes_when_etcd_is_gone(cleanup, upstreams):
    etcd = EtcdCluster(1)
    cleanup.append(etcd)
    name = uuid.uuid4().hex[:8]
    a = replica(cleanup, etcd, upstreams, "a", name)
    b = replica(cleanup, etcd, upstreams, "b", name)
    status, body, _ = admin_call(a, "POST", "/v1/switch?wait=soon", {"pool": "green"})
    assert status == 400 and body["code"] == "invalid_wait"
    status, body, _ = admin_call(a, "POST", "/v1/switch?wait=5s", {"pool": "green"})
    assert status == 200
    load = Load([a, b])
    try:
        wait_for(lambda: load.count() > 50, what="load")
        etcd.members[0].stop()
        # Writes are refused with a cause, never applied locally.
        status, body, _ = admin_call(a, "PUT", "/v1/weights", {"weights": {"blue": 50, "green": 50}})
        assert status == 503 and body["code"] == "cluster_unavailable", body
        wait_for(lambda: state(a)["cluster"]["stale"] and state(b)["cluster"]["stale"], timeout=10, what="stale")
        assert b"turnout_cluster_connected 0" in admin_call(a, "GET", "/metrics")[1]
        status, body, _ = admin_call(b, "POST", "/v1/rollback")
        assert status == 503 and body["code"] == "cluster_unavailable"
        assert state(a)["weights"] == {"blue": 0, "green": 100}
        load.stop()
        assert load.failures == [], load.failures[:5]
        # A replica restarted while etcd is down comes up with the last known truth.
        b.stop()
        b.start()
        assert state(b)["live"] == "green" and served_by(b.port)[1] == "green"
        assert state(b)["cluster"]["stale"] is True
        load = Load([a, b])
        seen = load.count()
        wait_for(lambda: load.count() > seen + 50, what="load after the restart")
        # etcd back: both catch up without a restart, and changes work again.
        etcd.members[0].start(state="existing")
        wait_for(lambda: not state(a)["cluster"]["stale"] and not state(b)["cluster"]["stale"], timeout=20, what="reconnect")
        status, body, _ = admin_call(a, "POST", "/v1/switch?wait=5s", {"pool": "blue"})
        assert status == 200, body
        assert state(b)["live"] == "blue"
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    events = a.read_log()
    assert "stale:" in events and "etcd answers again" in events


def test_a_watch_cut_off_and_compacted_past_catches_up(cleanup, upstreams):
    """Replica c talks only to member 3. Member 3 is stopped, the state changes several times
    through a, the history is compacted past c's revision, member 3 comes back: c must read the
    cluster again whole and route by the newest state."""
    etcd = EtcdCluster(3)
    cleanup.append(etcd)
    name = uuid.uuid4().hex[:8]
    a = replica(cleanup, etcd, upstreams, "a", name, members=etcd.members[:2])
    c = replica(cleanup, etcd, upstreams, "c", name, members=etcd.members[2:])
    wait_for(lambda: state(c)["generation"] == state(a)["generation"], what="c in step")
    etcd.members[2].stop()
    for target in ["green", "blue", "green"]:
        status, body, _ = admin_call(a, "POST", "/v1/switch", {"pool": target})
        assert status == 200, body
    final = state(a)["generation"]
    assert state(c)["live"] == "blue"
    etcd.compact(etcd.revision())
    etcd.members[2].start(state="existing")
    wait_for(lambda: state(c)["generation"] == final, timeout=30, what="c to catch up")
    assert state(c)["live"] == "green" and served_by(c.port)[1] == "green"
    # And it keeps following: the watch is open again.
    status, body, _ = admin_call(a, "POST", "/v1/switch?wait=10s", {"pool": "blue"})
    assert status == 200, body
    assert served_by(c.port)[1] == "blue"


def test_killing_the_etcd_leader_under_load(cleanup, upstreams):
    etcd = EtcdCluster(3)
    cleanup.append(etcd)
    name = uuid.uuid4().hex[:8]
    a = replica(cleanup, etcd, upstreams, "a", name)
    b = replica(cleanup, etcd, upstreams, "b", name)
    load = Load([a, b])
    try:
        wait_for(lambda: load.count() > 50, what="load")
        leader = wait_for(etcd.leader, what="an etcd leader")
        leader.stop(signal.SIGKILL)
        # Switches work again once a new leader is elected (some may be refused meanwhile).
        def switched():
            status, body, _ = admin_call(b, "POST", "/v1/switch?wait=5s", {"pool": "green"})
            return status == 200
        wait_for(switched, timeout=30, what="a switch after the leader died")
        assert served_by(a.port)[1] == "green"
        seen = load.count()
        wait_for(lambda: load.count() > seen + 50, what="load after the election")
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]


def test_a_hundred_switches_round_robin_through_three_replicas(cleanup, etcd1, upstreams):
    name = uuid.uuid4().hex[:8]
    reps = [replica(cleanup, etcd1, upstreams, rid, name) for rid in ("a", "b", "c")]
    wait_for(lambda: len(state(reps[0])["cluster"]["replicas"]) == 3, what="three replicas")
    load = Load(reps, per_replica=1)
    switches = []  # (issued_at, answered_at, pool)
    try:
        for i in range(100):
            target = "green" if i % 2 == 0 else "blue"
            seen = load.count()
            wait_for(lambda: load.count() >= seen + 3, what="requests between switches")
            issued = time.monotonic()
            status, body, _ = admin_call(reps[i % 3], "POST", "/v1/switch?wait=5s", {"pool": target})
            assert status == 200, body
            switches.append((issued, time.monotonic(), target))
        seen = load.count()
        wait_for(lambda: load.count() >= seen + 3, what="requests after the last switch")
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    # Every request sent after a --wait answer, and before the next switch was issued, went to
    # the new pool, whichever replica it was sent to.
    checked = 0
    for sent, index, pool in load.records:
        for i, (_, answered, target) in enumerate(switches):
            next_issued = switches[i + 1][0] if i + 1 < len(switches) else float("inf")
            if answered <= sent < next_issued:
                assert pool == target, f"request to replica {index} sent after the switch to {target} returned went to {pool}"
                checked += 1
    assert checked >= 200


def test_a_ramp_judged_on_every_replicas_traffic_and_continued_by_another_driver(cleanup, etcd1):
    """Replica b's green endpoint fails half its requests; a's is fine. A ramp started through a
    must roll back on b's errors (the driver adds every replica's window). Then a second ramp,
    with a healthy green everywhere: the driver is killed mid-ramp and the other replica
    continues it from the step etcd records."""
    name = uuid.uuid4().hex[:8]
    import os
    import tempfile
    fail_file = os.path.join(tempfile.mkdtemp(), "fail")
    with open(fail_file, "w") as f:
        f.write("0.5")
    blue, green, bad_green = Upstream("blue"), Upstream("green"), Upstream("green", fail_file=fail_file)
    cleanup.extend([blue, green, bad_green])
    a = replica(cleanup, etcd1, {"blue": [blue.address], "green": [green.address]}, "a", name)
    b = replica(cleanup, etcd1, {"blue": [blue.address], "green": [bad_green.address]}, "b", name)
    wait_for(lambda: len(state(a)["cluster"]["replicas"]) == 2, what="two replicas")
    # Phase 1: b's green answers 500 to half its requests (errors are the point here).
    load = Load([a, b], per_replica=2)
    try:
        ramp = {"pool": "green", "steps": [20, 50, 100], "interval": "30s",
                "gates": {"max_error_rate": 0.05, "min_requests": 20}}
        status, body, _ = admin_call(a, "POST", "/v1/ramp", ramp)
        assert status == 201, body
        # Whichever replica drives the ramp, both see the rollback once etcd's watch delivers it
        # (the other one a moment later: reading it at once raced with that).
        def rolled_back(rep):
            r = state(rep)["ramp"]
            return r and r["status"] == "rolled_back"
        wait_for(lambda: rolled_back(a) and rolled_back(b), timeout=20, what="the rollback on both replicas")
        for rep in (a, b):
            s = state(rep)
            assert "error rate" in (s["ramp"]["reason"] or ""), s["ramp"]
            assert s["weights"] == {"blue": 100, "green": 0}, s["weights"]
    finally:
        load.stop()
    # Phase 2: green healthy behind both replicas; the driver dies mid-ramp.
    os.unlink(fail_file)
    load = Load([a, b], per_replica=2)
    try:
        ramp = {"pool": "green", "steps": [10, 20, 30, 100], "interval": "1500ms",
                "gates": {"max_error_rate": 0.05, "min_requests": 5}}
        status, body, _ = admin_call(b, "POST", "/v1/ramp", ramp)
        assert status == 201, body
        driver = wait_for(lambda: state(a)["cluster"]["ramp_driver"], what="a ramp driver")
        victim, survivor = (a, b) if driver == "a" else (b, a)
        wait_for(lambda: state(survivor)["ramp"]["step"] >= 2, timeout=20, what="step 2")
        step = state(survivor)["ramp"]["step"]
        victim.stop(signal.SIGKILL)
        wait_for(lambda: state(survivor)["cluster"]["ramp_driver"] == survivor.rid, timeout=15, what="the survivor to drive")
        wait_for(lambda: state(survivor)["ramp"]["status"] == "completed", timeout=30, what="the ramp to complete")
        r = state(survivor)["ramp"]
        assert r["step"] == 4 and r["step"] > step and state(survivor)["live"] == "green"
    finally:
        load.stop()
    survivor_index = 0 if survivor is a else 1
    assert [f for f in load.failures if f[0] == survivor_index] == [], load.failures[:5]


def test_etcd_over_tls_with_a_client_certificate(cleanup, upstreams, tmp_path):
    from harness import make_certificate
    server_cert, server_key = make_certificate(str(tmp_path), "etcd-server")
    client_cert, client_key = make_certificate(str(tmp_path), "turnout-client")
    # etcd's JSON gateway reaches its own gRPC server with the server certificate as a client
    # certificate, so etcd must trust both.
    trusted = tmp_path / "trusted.pem"
    trusted.write_text(open(server_cert).read() + open(client_cert).read())
    etcd = EtcdCluster(1, tls={"cert": server_cert, "key": server_key, "client_ca": str(trusted),
                               "client_cert": client_cert, "client_key": client_key})
    cleanup.append(etcd)
    name = uuid.uuid4().hex[:8]
    tls = f"    tls: {{ ca: {server_cert}, certificate: {client_cert}, private_key: {client_key} }}\n"
    block = (f"cluster:\n  name: {name}\n  replica_id: a\n  etcd:\n    endpoints: {etcd.yaml_endpoints()}\n{tls}")
    a = Turnout(upstreams, root_extra=block)
    cleanup.append(a)
    status, body, _ = admin_call(a, "POST", "/v1/switch?wait=5s", {"pool": "green"})
    assert status == 200, body
    doc, mod = etcd.get(f"/turnout/v1/{name}/routing")
    assert doc["live"] == "green" and mod == body["generation"]
    # Without the client certificate etcd refuses the handshake: the replica says why, and stays stale.
    block_no_cert = (f"cluster:\n  name: {name}\n  replica_id: b\n  etcd:\n    endpoints: {etcd.yaml_endpoints()}\n"
                     f"    tls: {{ ca: {server_cert} }}\n")
    b = Turnout(upstreams, root_extra=block_no_cert)
    cleanup.append(b)
    c = state(b)["cluster"]
    assert c["stale"] is True and c["last_error"], c
    # And a CA that did not sign etcd's certificate is not trusted.
    block_bad_ca = (f"cluster:\n  name: {name}\n  replica_id: c\n  etcd:\n    endpoints: {etcd.yaml_endpoints()}\n"
                    f"    tls: {{ ca: {client_cert}, certificate: {client_cert}, private_key: {client_key} }}\n")
    c3 = Turnout(upstreams, root_extra=block_bad_ca)
    cleanup.append(c3)
    assert "not trusted" in (state(c3)["cluster"]["last_error"] or ""), state(c3)["cluster"]


def test_etcd_user_and_password(cleanup, etcd1, upstreams, tmp_path):
    import subprocess
    ep = etcd1.urls[0]
    for args in (["user", "add", "root:rootpw"], ["role", "add", "root"], ["user", "grant-role", "root", "root"],
                 ["user", "add", "turnout:s3cret"], ["role", "add", "turnout"],
                 ["role", "grant-permission", "turnout", "--prefix=true", "readwrite", "/turnout/v1/"],
                 ["user", "grant-role", "turnout", "turnout"], ["auth", "enable"]):
        subprocess.run(["etcdctl", "--endpoints", ep] + args, check=True, capture_output=True)
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    name = uuid.uuid4().hex[:8]
    block = (f"cluster:\n  name: {name}\n  replica_id: a\n"
             f"  etcd: {{ endpoints: {etcd1.yaml_endpoints()}, username: turnout, password_file: {pw} }}\n")
    a = Turnout(upstreams, root_extra=block)
    cleanup.append(a)
    status, body, _ = admin_call(a, "POST", "/v1/switch", {"pool": "green"})
    assert status == 200, body
    assert "s3cret" not in a.read_log()
    # A wrong password: refused by etcd, reported, never applied locally.
    bad = tmp_path / "bad"
    bad.write_text("nope\n")
    b = Turnout(upstreams, root_extra=block.replace("replica_id: a", "replica_id: b").replace(str(pw), str(bad)))
    cleanup.append(b)
    c = state(b)["cluster"]
    assert c["stale"] is True and "authentication failed" in (c["last_error"] or ""), c
    status, body, _ = admin_call(b, "POST", "/v1/switch", {"pool": "blue"})
    assert status == 503 and body["code"] == "cluster_unavailable"


def test_check_config_reports_cluster_mistakes(tmp_path):
    config = tmp_path / "t.yaml"
    config.write_text(
        "listeners: [{ address: 127.0.0.1:0 }]\n"
        "pools: { blue: { endpoints: [\"127.0.0.1:9\"] } }\n"
        "cluster:\n  name: a/b\n  replica_id: \"\"\n"
        "  etcd: { endpoints: [\"ftp://x:1\", \"http://127.0.0.1:2379/v3\"], username: u, tls: { ca: /nonexistent } }\n"
        "  stale_after: 500ms\n")
    out = run_cli("check-config", str(config))
    assert out.returncode == 1
    for expected in ["cluster.name:", "cluster.replica_id:", "cluster.etcd.endpoints[0]:", "cluster.etcd.endpoints[1]:",
                     "cluster.etcd: username and password_file go together", "cluster.etcd.tls.ca: cannot read /nonexistent",
                     "cluster.stale_after: must be at least 1s"]:
        assert expected in out.stdout + out.stderr, out.stdout + out.stderr


def test_endpoint_changes_reach_every_replica_and_wait_drained_waits_for_all_of_them(cleanup, etcd1, upstreams):
    from test_tunnels import WebSocket
    import subprocess
    from harness import turnout_binary
    blue2 = Upstream("blue2")
    cleanup.append(blue2)
    name = uuid.uuid4().hex[:8]
    a = replica(cleanup, etcd1, upstreams, "a", name)
    b = replica(cleanup, etcd1, upstreams, "b", name)
    wait_for(lambda: len(state(a)["cluster"]["replicas"]) == 2, what="both replicas in the registry")
    # An endpoint added through a is in the routing document and on b.
    status, body, _ = admin_call(a, "POST", "/v1/pools/blue/endpoints?wait=5s", {"address": blue2.address})
    assert status == 201, body
    doc, _ = etcd1.get(f"/turnout/v1/{name}/routing")
    assert doc["endpoints"]["blue"][blue2.address]["added"] is True
    wait_for(lambda: any(e["address"] == blue2.address and e["healthy"] for e in state(b)["pools"]["blue"]["endpoints"]),
             what="the new endpoint healthy on b")
    c = http.client.HTTPConnection("127.0.0.1", b.port, timeout=10)
    assert {served_by(b.port, c)[1] for _ in range(10)} == {"blue", "blue2"}
    # A WebSocket on b to blue; blue drained through a (a switch): wait-drained, asked of a,
    # waits for b's tunnel.
    ws = WebSocket(b.port, extra_headers="X-Turnout-Pool: blue\r\n")
    assert ws.status_line.startswith("HTTP/1.1 101"), ws.status_line
    assert admin_call(a, "POST", "/v1/switch?wait=5s", {"pool": "green"})[0] == 200
    waiter = subprocess.Popen([turnout_binary(), "wait-drained", "blue", "--timeout", "60s", "--admin", a.admin_socket],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(o["replica"] == "b" and o["tunnels"] == 1 for o in admin_call(a, "GET", "/v1/drain?pool=blue")[1]["open"]),
             what="a to see b's open tunnel")
    assert waiter.poll() is None
    assert ws.ask("hello").endswith(":hello")
    ws.close()
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert "blue drained" in out
