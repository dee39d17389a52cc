"""GET /metrics in the Prometheus text format, checked by promtool."""
import http.client
import shutil
import subprocess

import pytest
from harness import admin_call


def scrape(t):
    status, body, r = admin_call(t, "GET", "/metrics")
    assert status == 200 and r.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    return body.decode() if isinstance(body, bytes) else str(body)


def value(text, prefix):
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return float(line[len(prefix):].strip())
    raise AssertionError(f"{prefix} not in metrics")


def test_metrics_count_traffic_health_and_routing(blue_green):
    t, blue, green = blue_green(weights={"blue": 75, "green": 25})
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    for _ in range(100):
        c.request("GET", "/")
        c.getresponse().read()
    c.request("GET", "/status?code=500")
    c.getresponse().read()
    text = scrape(t)
    assert value(text, f'turnout_requests_total{{pool="blue",endpoint="{blue.address}",class="2xx"}}') >= 75
    assert value(text, f'turnout_requests_total{{pool="green",endpoint="{green.address}",class="2xx"}}') >= 24
    five = (value(text, f'turnout_requests_total{{pool="blue",endpoint="{blue.address}",class="5xx"}}')
            + value(text, f'turnout_requests_total{{pool="green",endpoint="{green.address}",class="5xx"}}'))
    assert five == 1
    assert value(text, 'turnout_pool_weight_percent{pool="green"}') == 25
    assert value(text, 'turnout_pool_live{pool="blue"}') == 1
    assert value(text, f'turnout_endpoint_healthy{{pool="blue",endpoint="{blue.address}"}}') == 1
    assert value(text, 'turnout_generation') == 1
    assert value(text, 'turnout_request_duration_seconds_count{pool="blue"}') >= 75
    assert value(text, f'turnout_upstream_connections{{pool="blue",endpoint="{blue.address}",state="open"}}') >= 1
    assert value(text, f'turnout_health_probes_total{{pool="blue",endpoint="{blue.address}",result="pass"}}') >= 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed")
def test_metrics_pass_promtool_on_a_scrape_under_load(blue_green):
    import threading
    t, _, _ = blue_green()
    admin_call(t, "POST", "/v1/ramp", {"pool": "green", "steps": [10, 100], "interval": "1m"})
    stop = threading.Event()

    def load():
        c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
        while not stop.is_set():
            c.request("GET", "/")
            c.getresponse().read()

    threads = [threading.Thread(target=load) for _ in range(4)]
    for th in threads:
        th.start()
    try:
        for _ in range(5):
            text = scrape(t)
            out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stdout + out.stderr
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert 'turnout_ramp_status{status="running"} 1' in text
