"""The raw rtnetlink interface reader against pyroute2 (the oracle) in a namespace with the
kinds of links a node has: veth pairs, a bridge, a veth with IPv4 and IPv6 addresses, a
point-to-point address with a peer (IFA_LOCAL vs IFA_ADDRESS), an interface that is down."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from nodeward.collect.addresses import collect_interfaces
from tests.lab import setns


def _pyroute2_view():
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.get_links()
        addrs = ipr.get_addr()
    out = {}
    for link in links:
        out[link["index"]] = [link.get_attr("IFLA_IFNAME"),
                              link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "",
                              bool(link["flags"] & 1), []]
    for a in addrs:
        fam = 6 if a["family"] == 10 else 4
        text = (a.get_attr("IFA_LOCAL") if fam == 4 else None) or a.get_attr("IFA_ADDRESS")
        out[a["index"]][3].append((fam, text, a["prefixlen"]))
    return out


def test_matches_pyroute2(lab) -> None:
    ns = lab.netns("addr")
    for cmd in (["ip", "link", "add", "vethA", "type", "veth", "peer", "name", "cali1"],
                ["ip", "link", "add", "br0", "type", "bridge"],
                ["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"],
                ["ip", "link", "set", "vethA", "up"], ["ip", "link", "set", "d0", "up"],
                ["ip", "addr", "add", "10.9.0.1/24", "dev", "d0"],
                ["ip", "addr", "add", "fd00:9::1/64", "dev", "d0", "nodad"],
                ["ip", "addr", "add", "10.9.1.1", "peer", "10.9.1.2/32", "dev", "vethA"],
                ["ip", "addr", "add", "10.9.2.1/16", "dev", "br0"]):
        lab.sh(*cmd, ns=ns)
    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        mine = pool.submit(collect_interfaces, ["cali*"]).result(timeout=30)
        theirs = pool.submit(_pyroute2_view).result(timeout=30)
    got = {i.index: [i.name, i.kind, i.up, [(a.family, a.address, a.prefixlen)
                                            for a in i.addresses]] for i in mine}
    assert got == theirs
    by_name = {i.name: i for i in mine}
    assert by_name["cali1"].pod_facing and not by_name["d0"].pod_facing
    assert by_name["vethA"].kind == "veth" and by_name["br0"].kind == "bridge"
    assert not by_name["br0"].up and by_name["d0"].up
    assert [a.address for a in by_name["vethA"].addresses] == ["10.9.1.1"]  # this end
    assert {a.address for a in by_name["d0"].addresses} >= {"10.9.0.1", "fd00:9::1"}
