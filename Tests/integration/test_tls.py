"""TLS termination: ALPN, protocol versions, SNI, certificate reload, bad files, bad clients.

Real peers: openssl s_client, curl, Python's ssl module.
"""
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile

import pytest

from harness import Turnout, Upstream, make_certificate, recv_until_close, run_cli, wait_for


def s_client(port, *args, servername=None, brief=True):
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *(["-brief"] if brief else []), *args]
    if servername:
        cmd += ["-servername", servername]
    r = subprocess.run(cmd, input=b"", capture_output=True, timeout=20)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def peer_subject(port, servername=None):
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}"]
    if servername:
        cmd += ["-servername", servername]
    r = subprocess.run(cmd, input=b"", capture_output=True, timeout=20)
    out = r.stdout.decode(errors="replace")
    for line in out.splitlines():
        if line.startswith("subject="):
            return line
    raise AssertionError(out + r.stderr.decode(errors="replace"))


@pytest.fixture
def tls_turnout(tls_blue_green):
    return lambda **kw: tls_blue_green(**kw)[0]


def test_alpn_offers_h2_then_http11_and_tls_versions_are_12_and_13(tls_turnout):
    t = tls_turnout()
    rc, out = s_client(t.tls_port, "-alpn", "h2,http/1.1", brief=False)
    assert rc == 0 and "ALPN protocol: h2" in out, out
    rc, out = s_client(t.tls_port, "-alpn", "http/1.1", brief=False)
    assert rc == 0 and "ALPN protocol: http/1.1" in out, out
    rc, out = s_client(t.tls_port, "-tls1_3")
    assert rc == 0 and "Protocol version: TLSv1.3" in out, out
    rc, out = s_client(t.tls_port, "-tls1_2")
    assert rc == 0 and "Protocol version: TLSv1.2" in out, out
    # TLS 1.1 is refused by Turnout, not by this OpenSSL's client: at its default security level
    # the client gives up on TLS 1.1 by itself, so it is told to try (SECLEVEL=0), and the refusal
    # must be the server's protocol_version alert.
    rc, out = s_client(t.tls_port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert rc != 0 and "alert protocol version" in out and "Protocol version: TLSv1.1" not in out, out
    # No ALPN at all: HTTP/1.1.
    r = subprocess.run(["curl", "-sS", "-k", "--no-alpn", "-w", " %{http_version}", f"https://127.0.0.1:{t.tls_port}/"],
                       capture_output=True, text=True, timeout=20)
    assert r.stdout == "blue\n 1.1"


def test_sni_picks_the_certificate_that_covers_the_name(tls_turnout):
    def block(d):
        a_cert, a_key = make_certificate(d, "a", hosts=("a.example",))
        b_cert, b_key = make_certificate(d, "b", hosts=("b.example", "*.b.example"))
        return (f"{{ certificates: [ {{ certificate: {a_cert}, private_key: {a_key} }},"
                f" {{ certificate: {b_cert}, private_key: {b_key} }} ] }}")
    t = tls_turnout(tls_block=block)
    assert "CN = a.example" in peer_subject(t.tls_port)
    assert "CN = a.example" in peer_subject(t.tls_port, "a.example")
    assert "CN = b.example" in peer_subject(t.tls_port, "b.example")
    assert "CN = b.example" in peer_subject(t.tls_port, "api.b.example")
    assert "CN = a.example" in peer_subject(t.tls_port, "unknown.example")


def test_sighup_reloads_certificates_without_dropping_open_connections(tls_turnout):
    t = tls_turnout()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", t.tls_port, context=ctx, timeout=10)
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"blue\n"
    before = peer_subject(t.tls_port)
    assert "CN = localhost" in before
    cert, key = make_certificate(t.certdir, "next", hosts=("renewed.example",))
    shutil.copy(cert, os.path.join(t.certdir, "server.crt"))
    shutil.copy(key, os.path.join(t.certdir, "server.key"))
    t.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "TLS certificates reloaded" in t.read_log(), what="the reload")
    assert "CN = renewed.example" in peer_subject(t.tls_port)
    # The connection opened before the reload keeps working.
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"blue\n"
    conn.close()
    # A broken file on the next reload refuses the reload: the current certificate stays.
    with open(os.path.join(t.certdir, "server.key"), "w") as f:
        f.write("not a key\n")
    t.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config not reloaded, the running config is kept" in t.read_log(), what="the failed reload")
    assert "server.key" in t.read_log().split("config not reloaded")[-1]
    assert "CN = renewed.example" in peer_subject(t.tls_port)
    assert t.proc.poll() is None


@pytest.mark.parametrize("problem", ["missing-cert", "missing-key", "mismatch", "garbage"])
def test_bad_certificate_or_key_is_a_clear_startup_error(problem, cleanup):
    d = tempfile.mkdtemp(prefix="turnout-cert-")
    cert, key = make_certificate(d, "good")
    other_cert, other_key = make_certificate(d, "other")
    if problem == "missing-cert":
        cert = os.path.join(d, "nope.crt")
        named = cert
    elif problem == "missing-key":
        key = os.path.join(d, "nope.key")
        named = key
    elif problem == "mismatch":
        key = other_key
        named = "does not match"
    else:
        with open(cert, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        named = cert
    blue = Upstream("blue")
    cleanup.append(blue)
    with pytest.raises(RuntimeError) as err:
        Turnout({"blue": [blue.address]}, tls=f"{{ certificate: {cert}, private_key: {key} }}")
    assert "listeners[1].tls" in str(err.value) and named in str(err.value)
    # check-config finds the same problem without starting anything.
    cfg = os.path.join(d, "t.yaml")
    with open(cfg, "w") as f:
        f.write(f"listeners:\n  - address: 127.0.0.1:0\n    tls: {{ certificate: {cert}, private_key: {key} }}\n"
                f"pools:\n  blue: {{ endpoints: [\"{blue.address}\"] }}\n")
    r = run_cli("check-config", cfg)
    assert r.returncode == 1 and "listeners[0].tls" in r.stderr and named in r.stderr


def test_plain_http_and_silence_on_the_tls_port_are_closed_without_harm(tls_turnout):
    t = tls_turnout(timeouts="{ client_header: 500ms }")
    s = socket.create_connection(("127.0.0.1", t.tls_port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    s.close()
    assert b"HTTP/1.1" not in data  # at most a TLS alert
    # A client that connects and says nothing is dropped after client_header.
    s = socket.create_connection(("127.0.0.1", t.tls_port), timeout=5)
    s.settimeout(5)
    assert s.recv(10) == b""
    s.close()
    r = subprocess.run(["curl", "-sS", "-k", f"https://127.0.0.1:{t.tls_port}/"], capture_output=True, timeout=20)
    assert r.stdout == b"blue\n"


def test_tls_http11_keep_alive_pipelining_and_large_bodies(tls_turnout):
    t = tls_turnout()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", t.tls_port, context=ctx, timeout=30)
    for _ in range(200):
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"blue\n"
    conn.request("GET", "/big?bytes=5000000&chunked=1")
    r = conn.getresponse()
    assert len(r.read()) == 5_000_000
    body = os.urandom(3_000_000)
    conn.request("POST", "/echo", body=body)
    import hashlib
    import json
    echo = json.loads(conn.getresponse().read())
    assert echo["body_length"] == len(body) and echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    headers = {k.lower(): v for k, v in echo["headers"]}
    assert headers["x-forwarded-proto"] == "https"
    conn.close()
    raw = ctx.wrap_socket(socket.create_connection(("127.0.0.1", t.tls_port), timeout=10))
    raw.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = recv_until_close(raw)
    raw.close()
    assert data.count(b"HTTP/1.1 200") == 2


def test_memory_stays_flat_over_thousands_of_tls_connections(tls_turnout):
    # Every request a new TLS connection, closed by the client's Connection: close. A session
    # kept alive after its socket closed (about 25 KiB of OpenSSL state each) would show here.
    t = tls_turnout()
    url = f"https://127.0.0.1:{t.tls_port}/"

    def round_of_connections():
        out = subprocess.run(["wrk", "-t1", "-c20", "-d3s", "-H", "Connection: close", url],
                             capture_output=True, text=True, timeout=60).stdout
        return int(re.search(r"(\d+) requests in", out).group(1))

    round_of_connections()  # warm-up: allocator arenas, pooled upstream connections
    base_rss = t.rss_kib()
    total = 0
    rounds = 0
    while total < 4000 and rounds < 10:
        total += round_of_connections()
        rounds += 1
    assert total >= 4000, f"only {total} TLS connections in {rounds} rounds"
    growth = t.rss_kib() - base_rss
    assert growth < 24 * 1024, f"RSS grew {growth} KiB over {total} TLS connections"
