"""Pools discovered by DNS, against a real DNS server the test changes on the fly (dns.py, dnslib):
growing and shrinking under load, the DNS server going away, empty answers held back, SRV."""
import http.client
import threading
import time
from collections import Counter

from dns import DNSServer
from harness import Turnout, Upstream, admin_call, free_port, wait_for


class Load:
    """Keep-alive clients sending GET / through Turnout until stopped; counts answers by upstream
    name and every failure (a non-200, a broken connection)."""

    def __init__(self, port, clients=4):
        self.port = port
        self.counts = Counter()
        self.failures = []
        self.running = True
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while self.running:
            try:
                c.request("GET", "/")
                r = c.getresponse()
                r.read()
                with self.lock:
                    if r.status == 200:
                        self.counts[r.getheader("X-Served-By")] += 1
                    else:
                        self.failures.append(r.status)
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.failures.append(repr(e))
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def total(self):
        with self.lock:
            return sum(self.counts.values())

    def stop(self):
        self.running = False
        for t in self.threads:
            t.join()


def discovered(t, pool="blue"):
    _, state, _ = admin_call(t, "GET", "/v1/state")
    return state["pools"][pool]


def serving_addresses(t, pool="blue"):
    return sorted(e["address"] for e in discovered(t, pool)["endpoints"] if e["healthy"] and not e["leaving"])


def start_blues(cleanup, port, n, first=2):
    """Upstreams blue-2.. on 127.0.0.2.. (one port, as A records give one port for all)."""
    ups = [Upstream(f"blue-{i}", port=port, host=f"127.0.0.{i}") for i in range(first, first + n)]
    cleanup.extend(ups)
    return ups


def discovery_turnout(cleanup, dns, discovery, weights=None):
    """Turnout with pool blue discovered by `discovery` (flow YAML) and pool green static."""
    green = Upstream("green")
    cleanup.append(green)
    t = Turnout({"blue": [], "green": [green.address]}, weights=weights or {"blue": 50, "green": 50},
                health="{ interval: 100ms, timeout: 500ms, rise: 2, fall: 2 }",
                root_extra=f'resolvers: ["{dns.address}"]\n',
                pool_text={"blue": f"{{ endpoints: [], discovery: {discovery} }}"})
    cleanup.append(t)
    return t, green


def test_a_discovered_pool_grows_from_2_to_5_and_shrinks_to_1_under_load_without_a_failed_request(cleanup):
    dns = DNSServer()
    cleanup.append(dns)
    port = free_port()
    blues = start_blues(cleanup, port, 5)
    dns.set_a("blue.test", [b.host for b in blues[:2]], ttl=1)
    t, _ = discovery_turnout(cleanup, dns, f'{{ dns: blue.test, type: A, port: {port}, min_ttl: 200ms, max_ttl: 1s }}')
    wait_for(lambda: len(serving_addresses(t)) == 2, what="the 2 discovered endpoints to be healthy")
    assert all(e["source"] == "dns" for e in discovered(t)["endpoints"])
    assert discovered(t)["discovery"]["addresses"] == 2
    load = Load(t.port)
    try:
        dns.set_a("blue.test", [b.host for b in blues], ttl=1)
        wait_for(lambda: len(serving_addresses(t)) == 5, timeout=15, what="5 healthy endpoints")
        wait_for(lambda: all(load.counts[f"blue-{i}"] > 0 for i in range(2, 7)), what="every new endpoint to get requests")
        dns.set_a("blue.test", [blues[4].host], ttl=1)
        wait_for(lambda: [e["address"] for e in discovered(t)["endpoints"]] == [blues[4].address], timeout=15,
                 what="the pool to shrink to one endpoint")
        before = load.counts["blue-6"]
        wait_for(lambda: load.counts["blue-6"] > before + 50, what="the last endpoint to keep serving")
    finally:
        load.stop()
    assert load.failures == [], load.failures[:10]
    blue_total = sum(v for k, v in load.counts.items() if k.startswith("blue-"))
    # The split between the pools stays exact while endpoints come and go (4 clients, a few swaps).
    assert abs(blue_total - load.counts["green"]) <= 8, (blue_total, load.counts)


def test_the_dns_server_down_for_30_seconds_keeps_the_last_endpoints(cleanup):
    dns = DNSServer()
    cleanup.append(dns)
    port = free_port()
    blues = start_blues(cleanup, port, 2)
    dns.set_a("blue.test", [b.host for b in blues], ttl=1)
    t, _ = discovery_turnout(cleanup, dns, f'{{ dns: blue.test, type: A, port: {port}, min_ttl: 200ms, max_ttl: 1s }}', weights={"blue": 100, "green": 0})
    wait_for(lambda: len(serving_addresses(t)) == 2, what="the 2 discovered endpoints to be healthy")
    load = Load(t.port)
    try:
        dns.stop()
        wait_for(lambda: discovered(t)["discovery"]["last_error"] is not None, what="a resolver error to show")
        deadline = time.time() + 30
        while time.time() < deadline:
            assert serving_addresses(t) == sorted(b.address for b in blues)
            time.sleep(1)  # sampling the state once a second for the 30 s the server is down
        info = discovered(t)["discovery"]
        assert info["errors"] >= 3 and ("timed out" in info["last_error"] or "refused" in info["last_error"]), info
        dns.start()
        wait_for(lambda: discovered(t)["discovery"]["last_error"] is None, what="resolution to recover")
    finally:
        load.stop()
    assert load.failures == [], load.failures[:10]
    assert load.counts["blue-2"] > 0 and load.counts["blue-3"] > 0 and load.counts["green"] == 0


def test_an_empty_answer_for_a_pool_carrying_traffic_waits_for_the_confirmation_period(cleanup):
    dns = DNSServer()
    cleanup.append(dns)
    port = free_port()
    blues = start_blues(cleanup, port, 2)
    dns.set_a("blue.test", [b.host for b in blues], ttl=1)
    t, _ = discovery_turnout(cleanup, dns, f'{{ dns: blue.test, type: A, port: {port}, min_ttl: 200ms, max_ttl: 1s, confirm_empty: 6s }}', weights={"blue": 100, "green": 0})
    wait_for(lambda: len(serving_addresses(t)) == 2, what="the 2 discovered endpoints to be healthy")
    load = Load(t.port)
    try:
        dns.set_a("blue.test", [], ttl=1)
        wait_for(lambda: discovered(t)["discovery"]["empty_answer_held_since"] is not None, what="the empty answer to be held")
        held_at = time.time()
        # Within the confirmation period the pool keeps both endpoints, and blue serves everything.
        while time.time() < held_at + 3:
            assert serving_addresses(t) == sorted(b.address for b in blues)
            time.sleep(0.5)  # sampling the state while the hold lasts
        assert "answered with no address" in t.read_log()
        # A non-empty answer ends the hold; the next empty one starts it again and, confirmed, is applied.
        dns.set_a("blue.test", [blues[0].host], ttl=1)
        wait_for(lambda: serving_addresses(t) == [blues[0].address], what="the answer with one address to apply")
        dns.set_a("blue.test", [], ttl=1)
        wait_for(lambda: discovered(t)["endpoints"] == [], timeout=20, what="the confirmed empty answer to apply")
        assert "has had no address for 6s" in t.read_log()
    finally:
        load.stop()
    # Until then blue served; after it, failover sent requests to green. No request failed.
    assert load.failures == [], load.failures[:10]
    assert load.counts["blue-2"] > 0 and load.counts["green"] > 0


def test_srv_records_give_ports_and_weights_and_the_lowest_priority_wins(cleanup):
    dns = DNSServer()
    cleanup.append(dns)
    a, b, backup = Upstream("blue-a"), Upstream("blue-b"), Upstream("blue-backup")
    cleanup.extend([a, b, backup])
    dns.set("_http._tcp.blue.test", "SRV", [(10, 1, a.port, "a.blue.test", 1), (10, 3, b.port, "b.blue.test", 1),
                                           (20, 1, backup.port, "backup.blue.test", 1)])
    for name in ("a", "b", "backup"):
        dns.set_a(f"{name}.blue.test", ["127.0.0.1"], ttl=1)
    t, _ = discovery_turnout(cleanup, dns, "{ dns: _http._tcp.blue.test, type: SRV, min_ttl: 200ms, max_ttl: 1s }", weights={"blue": 100, "green": 0})
    wait_for(lambda: len(serving_addresses(t)) == 2, what="the 2 priority-10 targets to be healthy")
    eps = {e["address"]: e for e in discovered(t)["endpoints"]}
    assert set(eps) == {a.address, b.address} and eps[b.address]["weight"] == 3
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    counts = Counter()
    for _ in range(400):
        c.request("GET", "/")
        r = c.getresponse()
        r.read()
        counts[r.getheader("X-Served-By")] += 1
    assert counts == Counter({"blue-a": 100, "blue-b": 300}), counts
