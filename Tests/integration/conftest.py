import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest
from harness import Turnout, Upstream, make_certificate


@pytest.fixture
def cleanup():
    """Things a test started, stopped after it. A Turnout still running is stopped with SIGTERM and
    must exit 0 within 10 seconds: a crash or a hang at shutdown fails the test."""
    things = []
    yield things
    problems = []
    for t in reversed(things):
        if isinstance(t, Turnout):
            problem = t.shutdown_problem(timeout=10)
            if problem:
                problems.append(problem)
        elif isinstance(t, Upstream):
            t.kill()
        else:
            t.stop()  # an etcd cluster, or anything else with stop()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def blue_green(cleanup):
    """Two upstreams (blue, green) and a Turnout in front of them with the given weights."""
    def make(weights=None, **kw):
        blue = Upstream("blue")
        green = Upstream("green")
        cleanup.extend([blue, green])
        t = Turnout({"blue": [blue.address], "green": [green.address]}, weights=weights, **kw)
        cleanup.append(t)
        return t, blue, green
    return make


@pytest.fixture
def tls_blue_green(cleanup):
    """Like blue_green, with a TLS listener: a fresh self-signed certificate for localhost and
    127.0.0.1 in `t.certdir`, or the `tls:` block `tls_block(certdir)` returns."""
    def make(weights=None, tls_block=None, **kw):
        blue, green = Upstream("blue"), Upstream("green")
        cleanup.extend([blue, green])
        certdir = tempfile.mkdtemp(prefix="turnout-cert-")
        cert, key = make_certificate(certdir, "server")
        tls = tls_block(certdir) if tls_block else f"{{ certificate: {cert}, private_key: {key} }}"
        t = Turnout({"blue": [blue.address], "green": [green.address]}, weights=weights, tls=tls, **kw)
        cleanup.append(t)
        t.certdir = certdir
        return t, blue, green
    return make
