"""Logs: `log_format: json` (access lines, events and everything else as JSON objects, one per
line) and the request id (`X-Request-Id`) taken from the client or added, passed upstream and
logged. The text format stays as it was."""
import http.client
import json
import re
import socket
import subprocess

from harness import Turnout, Upstream, admin_call, free_port, wait_for
from test_tunnels import WebSocket

# The documented fields of a JSON access line and their types (docs/metrics-and-logs.md).
NUM = (int, float)
OPT_STR = (str, type(None))
OPT_NUM = (int, float, type(None))
ACCESS_FIELDS = {
    "time": str, "log": str, "type": str, "client": str, "method": str, "path": str, "protocol": str,
    "status": int, "pool": str, "endpoint": OPT_STR, "bytes_in": int, "bytes_out": int, "duration_ms": NUM,
    "upstream_connect_ms": OPT_NUM, "upstream_response_ms": OPT_NUM, "request_id": OPT_STR, "retries": int,
    "route": OPT_STR, "error": OPT_STR,
}
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def log_lines(t):
    return [line for line in t.read_log().splitlines() if line.strip()]


def request(t, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


def test_every_line_of_a_json_log_is_an_object_with_the_documented_fields(cleanup):
    blue, green = Upstream("blue"), Upstream("green")
    cleanup.extend([blue, green])
    dead = free_port()  # nothing listens: a 502 with its error
    t = Turnout({"blue": [blue.address], "green": [green.address], "gone": [f"127.0.0.1:{dead}"]},
                weights={"blue": 100}, root_extra="log_format: json\n",
                health="{ interval: 200ms, timeout: 500ms, rise: 1, fall: 1 }")
    cleanup.append(t)
    # Mixed traffic: HTTP/1.1 with and without a body, HTTP/2, a tunnel, errors, and an event.
    assert request(t, "GET", "/plain", headers={"X-Request-Id": "client-id-1"}) == 200
    assert request(t, "POST", "/echo", body=b"x" * 1234) == 200
    assert request(t, "GET", "/bad-id", headers={"X-Request-Id": "has space"}) == 200
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--http2-prior-knowledge",
                          f"http://127.0.0.1:{t.port}/h2"], capture_output=True, text=True, timeout=20)
    assert out.stdout == "200"
    ws = WebSocket(t.port)
    assert ws.ask("hello") == "blue:hello"
    ws.close()
    # A preview of the pool whose endpoint is down (503 once it is found unhealthy, or a 502).
    status = request(t, "GET", "/down", headers={"X-Turnout-Pool": "gone"})
    assert status in (502, 503)
    assert admin_call(t, "POST", "/v1/switch", {"pool": "green"})[0] == 200
    # A line that is not JSON would fail the parse below; wait for the tunnel's line and the
    # switch's event (other events, as the dead endpoint's health, may come before it).
    wait_for(lambda: any('"type":"tunnel"' in line for line in log_lines(t)) and
             any('"log":"event"' in line and '"kind":"switch"' in line for line in log_lines(t)),
             what="tunnel and switch event lines")
    access, events, other = [], [], []
    for line in log_lines(t):
        obj = json.loads(line)  # every line, from start-up on
        assert TIME.match(obj["time"]), line
        {"access": access, "event": events}.get(obj["log"], other).append(obj)
    assert other and all({"level", "logger", "message"} <= set(o) for o in other)
    assert any("listening on" in o["message"] for o in other)
    assert len(access) >= 7
    for a in access:
        assert list(a) == list(ACCESS_FIELDS), a  # every field, in the documented order
        for k, types in ACCESS_FIELDS.items():
            assert isinstance(a[k], types) and not isinstance(a[k], bool), (k, a)
    by_path = {a["path"]: a for a in access}
    plain = by_path["/plain"]
    assert plain["type"] == "request" and plain["method"] == "GET" and plain["protocol"] == "HTTP/1.1"
    assert plain["status"] == 200 and plain["pool"] == "blue" and plain["endpoint"] == blue.address
    assert plain["request_id"] == "client-id-1" and plain["retries"] == 0 and plain["error"] is None
    assert plain["upstream_connect_ms"] is not None and plain["upstream_response_ms"] is not None
    assert 0 <= plain["upstream_connect_ms"] <= plain["duration_ms"] and plain["upstream_response_ms"] <= plain["duration_ms"]
    post = by_path["/echo"]
    assert post["bytes_in"] == 1234 and post["bytes_out"] > 0
    assert re.fullmatch(r"[0-9a-f]{32}", post["request_id"])
    assert by_path["/h2"]["protocol"] == "HTTP/2" and by_path["/h2"]["status"] == 200
    tunnel = by_path["/ws"]
    assert tunnel["type"] == "tunnel" and tunnel["status"] == 101 and tunnel["bytes_in"] > 0 and tunnel["bytes_out"] > 0
    down = by_path["/down"]
    assert down["status"] in (502, 503) and down["pool"] == "gone"
    if down["status"] == 502:
        assert down["error"] and down["endpoint"] == f"127.0.0.1:{dead}" and down["route"] == "preview"
    else:
        assert down["endpoint"] is None and down["upstream_connect_ms"] is None
    # The ids went upstream: the client's as it was, an unusable one replaced, one added otherwise.
    got = {r["path"]: r["request_ids"] for r in blue.recorded()}
    assert got["/plain"] == ["client-id-1"]
    assert got["/echo"] == [post["request_id"]]
    assert len(got["/bad-id"]) == 1 and got["/bad-id"] != ["has space"] and got["/bad-id"] == [by_path["/bad-id"]["request_id"]]
    switch = [e for e in events if e["kind"] == "switch"]
    assert len(switch) == 1 and switch[0]["live"] == "green" and switch[0]["level"] == "info"


def test_the_text_format_is_unchanged(blue_green):
    t, blue, _ = blue_green(weights={"blue": 100})
    assert request(t, "GET", "/text?x=1") == 200
    wait_for(lambda: any("/text?x=1" in line for line in log_lines(t)), what="the access line")
    line = next(line for line in log_lines(t) if "/text?x=1" in line)
    assert re.match(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info turnout: log=access 127\.0\.0\.1 "GET /text\?x=1 HTTP/1\.1" 200 '
                    rf'pool=blue endpoint={re.escape(blue.address)} bytes=\d+ duration_ms=\d+\.\d\d$', line), line
    # The request still got an id upstream.
    assert re.fullmatch(r"[0-9a-f]{32}", blue.recorded()[-1]["request_ids"][0])


def test_log_format_is_checked_and_needs_a_restart(tmp_path, blue_green):
    from harness import check_config_refuses
    check_config_refuses(str(tmp_path), "listeners: [{ address: 127.0.0.1:0 }]\npools: { blue: { endpoints: [\"127.0.0.1:1\"] } }\n"
                         "log_format: yaml\n", 'log_format: expected text or json, got "yaml"')
    t, _, _ = blue_green()
    with open(t.config_path, "a") as f:
        f.write("log_format: json\n")
    status, body, _ = admin_call(t, "POST", "/v1/reload")
    assert status == 200 and "log_format" in body["restart_required"], body
