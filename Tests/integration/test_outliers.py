"""Passive outlier ejection: endpoints that fail requests in a row leave the rotation for a time
that grows with each ejection, never more than max_ejected_percent of a pool at once."""
import http.client
import os
import re
import tempfile
import time
from collections import Counter

from harness import Turnout, Upstream, admin_call, wait_for


def get(t, conn):
    conn.request("GET", "/")
    r = conn.getresponse()
    r.read()
    return r.status, r.getheader("X-Served-By")


def ejected(t, pool="blue"):
    _, state, _ = admin_call(t, "GET", "/v1/state")
    return sorted(e["address"] for e in state["pools"][pool]["endpoints"] if e["ejected"])


def metrics(t):
    _, text, _ = admin_call(t, "GET", "/metrics")
    return text.decode() if isinstance(text, bytes) else str(text)


def failing_upstream(cleanup, name):
    f = os.path.join(tempfile.mkdtemp(prefix="turnout-fail-"), "fail")
    with open(f, "w") as fh:
        fh.write("1")  # every / request answers 500; /healthz stays 200
    u = Upstream(name, fail_file=f)
    cleanup.append(u)
    return u, f


def test_an_endpoint_answering_5xx_is_ejected_and_readmitted_after_its_base_time(cleanup):
    good = Upstream("good")
    cleanup.append(good)
    bad, fail_file = failing_upstream(cleanup, "bad")
    t = Turnout({"blue": [good.address, bad.address]},
                pool_extra="outlier_detection: { consecutive_5xx: 3, base_ejection: 2s }")
    cleanup.append(t)
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    statuses = Counter(get(t, c) for _ in range(10))
    # Round robin: the bad endpoint answered 500 three times in a row, then left the rotation.
    assert statuses[(500, None)] + statuses[(500, "bad")] == 3, statuses
    assert ejected(t) == [bad.address]
    ejected_at = time.time()
    assert Counter(get(t, c) for _ in range(20)) == Counter({(200, "good"): 20})
    assert 'turnout_endpoint_ejected{pool="blue",endpoint="%s"} 1' % bad.address in metrics(t)
    assert 'turnout_outlier_ejections_total{pool="blue",endpoint="%s",trigger="consecutive_5xx"} 1' % bad.address in metrics(t)
    # A passing probe does not end a 5xx ejection (its /healthz was fine all along): time does.
    wait_for(lambda: ejected(t) == [], timeout=10, what="the ejection to end")
    assert time.time() - ejected_at >= 1.8
    assert "readmitted: its ejection time is over" in t.read_log()
    # Still failing: ejected again after 3 more 500s, now for twice the base time.
    for _ in range(10):
        get(t, c)
    assert ejected(t) == [bad.address]
    assert re.search(r"ejected for 4s after 3 5xx answers in a row \(ejection 2 in a row\)", t.read_log()), t.read_log()
    # Fixed: once readmitted, it serves.
    os.remove(fail_file)
    wait_for(lambda: ejected(t) == [], timeout=10, what="the second ejection to end")
    assert Counter(get(t, c)[1] for _ in range(10)) == Counter({"good": 5, "bad": 5})


def test_never_more_than_max_ejected_percent_of_a_pool_is_ejected(cleanup):
    bad1, _ = failing_upstream(cleanup, "bad1")
    bad2, _ = failing_upstream(cleanup, "bad2")
    t = Turnout({"blue": [bad1.address, bad2.address]},
                pool_extra="outlier_detection: { consecutive_5xx: 2, base_ejection: 30s, max_ejected_percent: 50 }")
    cleanup.append(t)
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    for _ in range(20):
        get(t, c)
    assert len(ejected(t)) == 1
    assert re.search(r'turnout_outlier_ejections_refused_total\{pool="blue"\} [1-9]', metrics(t)), metrics(t)
    assert "already has 1 of 2 endpoint(s) ejected" in t.read_log()


def test_connect_failures_eject_and_a_passing_probe_readmits(cleanup):
    good, flaky = Upstream("good"), Upstream("flaky")
    cleanup.extend([good, flaky])
    # Slow probes, so that the ejection (not the health check) is what keeps requests away.
    t = Turnout({"blue": [good.address, flaky.address]}, health="{ interval: 1s, timeout: 500ms, rise: 1, fall: 5 }",
                pool_extra="outlier_detection: { consecutive_failures: 2, base_ejection: 60s }")
    cleanup.append(t)
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    flaky.kill()
    # Every request still succeeds: a refused connection is retried on the good endpoint.
    assert all(get(t, c) == (200, "good") for _ in range(10))
    assert ejected(t) == [flaky.address]
    flaky.start()
    wait_for(lambda: ejected(t) == [], timeout=10, what="a passing probe to readmit the endpoint")
    assert "readmitted: a health probe passed" in t.read_log()
    wait_for(lambda: Counter(get(t, c)[1] for _ in range(10))["flaky"] == 5, what="flaky to take its share again")
