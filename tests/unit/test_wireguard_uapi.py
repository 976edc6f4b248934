"""UAPI parsing and the NW401-NW404 checks on built values (no root)."""

from __future__ import annotations

import base64

import pytest

from nodeward.checks.encryption import PeerNode, Route, route_findings, wireguard_findings
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
