import ipaddress

import pytest

from nodeward.model import Address, BindScope, Interface
from nodeward.scope import classify


def iface(name, *addrs, pod=False):
    return Interface(name=name, index=hash(name) % 1000, pod_facing=pod, addresses=tuple(
        Address(name, 6 if ":" in a else 4, a, 24) for a in addrs))


IFACES = [
    iface("lo", "127.0.0.1", "::1"),
    iface("eth0", "10.0.0.5", "fd00::5", "fe80::1"),
    iface("eth1", "203.0.113.7"),
    iface("cali12345", "169.254.1.1", "fe80::ecee:eeff:feee:eeee", pod=True),
    iface("cni0", "10.244.0.1", pod=True),
]


@pytest.mark.parametrize(("addr", "cidrs", "expected"), [
    ("0.0.0.0", (), (BindScope.WILDCARD, "")),
    ("::", (), (BindScope.WILDCARD, "")),
    ("127.0.0.1", (), (BindScope.LOOPBACK, "")),
    ("127.0.0.53", (), (BindScope.LOOPBACK, "")),
    ("::1", (), (BindScope.LOOPBACK, "")),
    ("::ffff:127.0.0.1", (), (BindScope.LOOPBACK, "")),
    ("10.0.0.5", (), (BindScope.NODE_PRIVATE, "eth0")),
    ("fd00::5", (), (BindScope.NODE_PRIVATE, "eth0")),
    ("203.0.113.7", (), (BindScope.NODE, "eth1")),
    # node_cidrs replace the private-range guess
    ("10.0.0.5", ("192.168.0.0/16",), (BindScope.NODE, "eth0")),
    ("203.0.113.7", ("203.0.113.0/24",), (BindScope.NODE_PRIVATE, "eth1")),
    ("fe80::1", (), (BindScope.LINK_LOCAL, "eth0")),
    # pod-facing interface decides before link-local
    ("169.254.1.1", (), (BindScope.POD, "cali12345")),
    ("fe80::ecee:eeff:feee:eeee", (), (BindScope.POD, "cali12345")),
    ("10.244.0.1", (), (BindScope.POD, "cni0")),
    ("::ffff:10.244.0.1", (), (BindScope.POD, "cni0")),
    ("192.0.2.99", (), (BindScope.UNKNOWN, "")),
])
def test_classify(addr, cidrs, expected):
    nets = tuple(ipaddress.ip_network(c) for c in cidrs)
    assert classify(addr, IFACES, nets) == expected


def test_bound_device_decides():
    by = {i.name: i for i in IFACES}
    assert classify("0.0.0.0", IFACES, (), by["lo"]) == (BindScope.LOOPBACK, "lo")
    assert classify("0.0.0.0", IFACES, (), by["cni0"]) == (BindScope.POD, "cni0")
    assert classify("::", IFACES, (), by["eth1"]) == (BindScope.NODE, "eth1")
    assert classify("0.0.0.0", IFACES, (), by["eth0"]) == (BindScope.NODE_PRIVATE, "eth0")
    assert classify("127.0.0.1", IFACES, (), by["eth0"]) == (BindScope.LOOPBACK, "")
