"""UAPI parsing and the NW401-NW404 checks on built values (no root)."""

from __future__ import annotations

import base64

import pytest

from nodeward.checks.encryption import (
    PeerNode,
    Route,
    RouteRule,
    route_findings,
    wireguard_findings,
)
from nodeward.collect.wireguard import WgDevice, WgPeer, WireGuardError, parse_uapi

K1 = bytes(range(32))
K2 = bytes(range(32, 64))
PRIV = "e8" * 32


def _reply(extra: str = "", errno: int = 0) -> str:
    return (f"private_key={PRIV}\nlisten_port=51820\nfwmark=0\n"
            f"public_key={K1.hex()}\nendpoint=10.0.0.2:51820\n"
            "last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=500000000\n"
            "tx_bytes=100\nrx_bytes=200\npersistent_keepalive_interval=25\n"
            "allowed_ip=10.244.2.0/24\nallowed_ip=10.0.0.2/32\n"
            f"public_key={K2.hex()}\nallowed_ip=10.244.3.0/24\n"
            f"{extra}errno={errno}\n\n")


def test_parse_full_reply_keeps_no_private_key():
    dev = parse_uapi("wg0", _reply())
    assert dev.listen_port == 51820
    p1, p2 = dev.peers
    assert p1.public_key == base64.b64encode(K1).decode()
    assert p1.endpoint == "10.0.0.2:51820"
    assert p1.allowed_ips == ("10.244.2.0/24", "10.0.0.2/32")
    assert p1.last_handshake == pytest.approx(1700000000.5)
    assert (p1.rx_bytes, p1.tx_bytes, p1.persistent_keepalive) == (200, 100, 25)
    assert p2.last_handshake == 0 and p2.endpoint == ""
    assert PRIV not in repr(dev) and base64.b64encode(bytes.fromhex(PRIV)).decode() not in repr(dev)


@pytest.mark.parametrize("text,msg", [
    (_reply(errno=5), "errno=5"),
    ("listen_port=1\n", "no errno"),
    ("listen_port\nerrno=0\n", "not key=value"),
    ("public_key=abcd\nerrno=0\n", "bytes"),
    ("listen_port=x\nerrno=0\n", "bad value"),
])
def test_parse_errors(text, msg):
    with pytest.raises(WireGuardError, match=msg):
        parse_uapi("wg0", text)


def _dev(*peers: WgPeer) -> WgDevice:
    return WgDevice("wireguard.cali", 51820, peers=peers)


B = PeerNode("b", ("10.0.0.2",), ("10.244.2.0/24",))
NOW = 1_700_000_100.0


def test_checks_clean_and_each_fault():
    good = WgPeer("kb", "10.0.0.2:51820", ("10.244.2.0/24",), last_handshake=NOW - 10)
    assert wireguard_findings([_dev(good)], [B], NOW) == []
    assert [f.id for f in wireguard_findings([_dev()], [B], NOW)] == ["NW401"]
    stale = WgPeer("kb", "10.0.0.2:51820", ("10.244.2.0/24",), last_handshake=NOW - 181)
    assert [f.id for f in wireguard_findings([_dev(stale)], [B], NOW)] == ["NW402"]
    never = WgPeer("kb", "10.0.0.2:51820", ("10.244.2.0/24",))
    assert "never" in wireguard_findings([_dev(never)], [B], NOW)[0].title
    narrow = WgPeer("kb", "10.0.0.2:51820", ("10.244.2.0/25",), last_handshake=NOW)
    f = wireguard_findings([_dev(narrow)], [B], NOW)
    assert [x.id for x in f] == ["NW403"] and f[0].evidence["missing"] == ["10.244.2.0/24"]
    # matched by public key when the endpoint is unknown (roaming peer)
    keyed = PeerNode("b", ("10.0.0.2",), ("10.244.2.0/24",), wireguard_public_key="kb")
    noend = WgPeer("kb", "", ("10.244.0.0/16",), last_handshake=NOW)
    assert wireguard_findings([_dev(noend)], [keyed], NOW) == []
    assert [x.id for x in wireguard_findings([_dev(noend)], [keyed], NOW,
                                             require_address=True)] == ["NW403"]


def test_route_through_plain_interface():
    routes = [Route("0.0.0.0/0", "eth0"), Route("10.244.0.0/16", "wireguard.cali"),
              Route("10.244.2.0/26", "vxlan.calico")]
    f = route_findings(routes, [B], ["wireguard.cali"])
    assert [(x.id, x.evidence["interface"]) for x in f] == [("NW404", "vxlan.calico")]
    assert route_findings(routes[:2], [B], ["wireguard.cali"]) == []
    assert [x.id for x in route_findings(routes[:1], [B], ["wireguard.cali"])] == ["NW404"]


def test_route_in_calico_wireguard_table_wins():
    routes = [Route("10.244.2.0/24", "vxlan.calico"),
              Route("10.244.2.0/24", "wireguard.cali", table=1)]
    assert route_findings(routes, [B], ["wireguard.cali"]) == []
    routes[1] = Route("10.244.2.0/24", "eth1", table=1)
    assert [x.id for x in route_findings(routes, [B], ["wireguard.cali"])] == ["NW404"]


def test_rules_decide_which_table_routes_pod_traffic():
    routes = [Route("10.244.2.0/24", "tunl0"), Route("10.244.2.0/24", "wireguard.cali", 1),
              Route("0.0.0.0/0", "eth0"), Route("0.0.0.0/0", "wg0", 51820)]
    main = [RouteRule(4, 0, 255), RouteRule(4, 32766, 254), RouteRule(4, 32767, 253)]
    calico = [*main, RouteRule(4, 99, 1, fwmark=0x100000, fwmask=0x100000, invert=True)]
    enc = ["wireguard.cali", "wg0"]
    assert route_findings(routes, [B], enc, calico) == []
    f = route_findings(routes, [B], enc, main)  # Calico's rule missing: table 1 unused
    assert [(x.id, x.evidence["interface"], x.evidence["table"]) for x in f] == [
        ("NW404", "tunl0", 254)]
    # a rule for marked traffic only does not apply to pod traffic
    marked = [*main, RouteRule(4, 99, 1, fwmark=0x100000, fwmask=0x100000)]
    assert [x.evidence["interface"] for x in route_findings(routes, [B], enc, marked)] == [
        "tunl0"]
    # wg-quick: main without its default route, then the tunnel table
    wgq = [*main, RouteRule(4, 32764, 254, suppress_prefixlen=0),
           RouteRule(4, 32765, 51820, fwmark=0xCA6C, invert=True)]
    only_default = [Route("0.0.0.0/0", "eth0"), Route("0.0.0.0/0", "wg0", 51820)]
    assert route_findings(only_default, [B], enc, wgq) == []
    assert [x.evidence["interface"] for x in route_findings(only_default, [B], enc, main)] \
        == ["eth0"]
    # a selector (iif, ports, uid...) this check cannot judge: the rule is not assumed
    sel = [*main, RouteRule(4, 99, 1, selective=True)]
    assert len(route_findings(routes, [B], enc, sel)) == 1


def test_dual_stack_calico_peers_match_per_family():
    n = PeerNode("b", ("10.0.0.2", "fd00::2"), ("10.244.2.0/24", "fd00:244:2::/64"),
                 wireguard_public_key="k4", wireguard_public_key_v6="k6")
    p4 = WgPeer("k4", "10.0.0.2:51820", ("10.244.2.0/24",), last_handshake=NOW)
    p6 = WgPeer("k6", "[fd00::2]:51821", ("fd00:244:2::/64",), last_handshake=NOW)
    devs = [_dev(p4), WgDevice("wg-v6.cali", 51821, peers=(p6,))]
    assert wireguard_findings(devs, [n], NOW) == []
    # the IPv4 peer gone: the IPv6 one does not stand in for it
    f = wireguard_findings([WgDevice("wg-v6.cali", 51821, peers=(p6,))], [n], NOW)
    assert [(x.id, x.address) for x in f] == [("NW401", "10.244.2.0/24")]
    # b published a new IPv4 key; the device still holds the old one (found by endpoint)
    rotated = PeerNode("b", n.addresses, n.pod_cidrs, "k4-new", "k6")
    f = wireguard_findings(devs, [rotated], NOW)
    assert [(x.id, x.address, x.evidence["published_key"]) for x in f] == [
        ("NW405", "10.244.2.0/24", "k4-new")]
    # single-stack nodes keep their findings' identity (no address)
    assert [x.address for x in wireguard_findings([_dev()], [B], NOW)] == [""]
