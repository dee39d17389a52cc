"""Loopback TCP ports for the servers the tests and benchmarks start (Turnout's listeners, upstreams,
etcd members, DNS servers).

A port is chosen, checked and closed here, and bound later by another process, so two races matter:
- binding port 0 twice in a row can return the same port (the kernel hands it out again once it is
  closed), which once gave two etcd members one peer URL ("has duplicate url");
- a port from the kernel's ephemeral range can be taken as the source port of an outgoing connection
  before the server binds it.
So `free_port` never returns a port twice in one process, and picks from below the ephemeral range
(net.ipv4.ip_local_port_range), where the kernel never picks on its own.
"""
import random
import socket

_handed_out = set()


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _candidates():
    """Random ports below the ephemeral range (so two processes rarely try the same one); none when
    that range is too small to use."""
    low, high = 10000, _ephemeral_low() - 1
    if high - low < 1000:
        return
    for _ in range(2000):
        yield random.randint(low, high)


def _bindable(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed out
    before."""
    for port in _candidates():
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    # No room below the ephemeral range: let the kernel choose, still never the same port twice.
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port that was not handed out already")
