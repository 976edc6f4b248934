"""Real userspace WireGuard (wireguard-go over TUN) between lab node namespaces, read over
UAPI and checked: a full mesh gives no finding; a removed peer, a wrong allowed IP and a
peer that never handshakes each give their own finding."""

from __future__ import annotations

import json
import sys
import time

import pytest

from nodeward.checks.encryption import PeerNode, Route, route_findings, wireguard_findings
from nodeward.collect.wireguard import collect_uapi, read_uapi
from tests.lab.wireguard import WgLab, genkey, have_wireguard_go

pytestmark = pytest.mark.lab

_REASON = have_wireguard_go()


def _poke(lab, ns, ip: str) -> str:
    """A few UDP datagrams into the tunnel: traffic is what makes wireguard-go handshake."""
    code = ("import socket,time\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"for _ in range(3): s.sendto(b'x',({ip!r},9)); time.sleep(0.1)\n")
    r = lab.run(ns, [sys.executable, "-c", code], check=False)
    return r.stdout + r.stderr


def _routes(lab, ns) -> list[Route]:
    code = ("import json;from nodeward.clusterscan import collect_routes;"
            "r,e=collect_routes();assert not e,e;"
            "print(json.dumps([[x.destination,x.interface,x.table] for x in r]))")
    out = lab.run(ns, [sys.executable, "-c", code]).stdout
    return [Route(*x) for x in json.loads(out)]


def _wait_handshakes(sock, keys: set[str], timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        dev = read_uapi(sock)
        done = {p.public_key for p in dev.peers if p.last_handshake > 0}
        if keys <= done or time.monotonic() > deadline:
            return dev
        time.sleep(0.1)


def test_mesh_then_three_faults(lab):
    if _REASON:
        pytest.skip(f"userspace WireGuard unavailable: {_REASON}")
    names = ("a", "b", "c")
    nodes = {n: lab.node(n, f"10.77.0.{i}/24") for i, n in enumerate(names, 1)}
    d_ns = lab.node("d", "10.77.0.4/24")  # a node with no WireGuard at all
    with WgLab(lab) as wl:
        wg = {n: wl.device(nodes[n], f"10.244.{i}.1/32") for i, n in enumerate(names, 1)}
        for n in names:
            for j, m in enumerate(names, 1):
                if n != m:
                    wl.peer(wg[n], wg[m].public_key, [f"10.244.{j}.0/24"],
                            f"10.77.0.{j}:51820")
                    lab.run(nodes[n], ["ip", "route", "replace", f"10.244.{j}.0/24",
                                       "dev", wg[n].ifname])
        pokes = [_poke(lab, nodes["a"], f"10.244.{j}.1") for j in (2, 3)]
        _wait_handshakes(wg["a"].sock, {wg["b"].public_key, wg["c"].public_key})
        peers = [PeerNode(m, (f"10.77.0.{j}",), (f"10.244.{j}.0/24",))
                 for j, m in enumerate(names, 1) if m != "a"]
        devices, errors = collect_uapi(names={wg["a"].ifname})
        assert errors == ()
        assert [d.name for d in devices] == [wg["a"].ifname]
        dev = devices[0]
        assert dev.listen_port == 51820
        assert {p.public_key for p in dev.peers} == {wg["b"].public_key, wg["c"].public_key}
        assert all(p.last_handshake > 0 and p.rx_bytes > 0 for p in dev.peers), (dev, pokes)
        assert wireguard_findings(devices, peers, now=time.time()) == []
        # Routes read by the collector inside node a: pod CIDRs leave through the tunnel...
        enc = [wg["a"].ifname]
        assert route_findings(_routes(lab, nodes["a"]), peers, enc) == []
        # ...until a more specific plain route carves part of c's pod CIDR out to eth0.
        lab.run(nodes["a"], ["ip", "route", "add", "10.244.3.128/25", "dev", "eth0"])
        f = route_findings(_routes(lab, nodes["a"]), peers, enc)
        assert [(x.id, x.component, x.evidence["interface"]) for x in f] == [
            ("NW404", "c", "eth0")]

        # Faults, one per peer: c removed, b's allowed IPs wrong, d configured but dead.
        wl.remove_peer(wg["a"], wg["c"].public_key)
        wl.peer(wg["a"], wg["b"].public_key, ["10.245.2.0/24"])
        _, d_pub = genkey()
        wl.peer(wg["a"], d_pub, ["10.244.4.0/24"], "10.77.0.4:51820")
        lab.run(nodes["a"], ["ip", "route", "replace", "10.244.4.0/24", "dev", wg["a"].ifname])
        _poke(lab, nodes["a"], "10.244.4.1")
        peers.append(PeerNode("d", ("10.77.0.4",), ("10.244.4.0/24",)))
        assert d_ns.ip == "10.77.0.4"

        dev = read_uapi(wg["a"].sock)
        got = sorted((f.id, f.component) for f in
                     wireguard_findings([dev], peers, now=time.time()))
        assert got == [("NW401", "c"), ("NW402", "d"), ("NW403", "b")]
