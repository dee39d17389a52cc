import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest
from harness import Turnout, Upstream


@pytest.fixture
def cleanup():
    things = []
    yield things
    for t in reversed(things):
        try:
            if isinstance(t, Turnout):
                t.stop(timeout=10)
            elif isinstance(t, Upstream):
                t.kill()
        except Exception:
            pass


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
