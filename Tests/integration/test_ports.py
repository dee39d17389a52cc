"""The harness's port allocator: servers started by the tests must never be given one port twice
(two etcd members once got the same peer URL that way, and etcd refused to start)."""
import socket

from ports import _ephemeral_low, free_port


def test_free_port_never_repeats_and_stays_below_the_ephemeral_range():
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports), "a port was handed out twice"
    low = _ephemeral_low()
    if low - 10000 >= 1000:
        assert all(10000 <= p < low for p in ports), "a port from the kernel's ephemeral range"


def test_a_port_handed_out_is_bindable():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
