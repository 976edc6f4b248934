"""The indexed cluster checks (routes, IPsec policies, WireGuard peers, NW510 selector
candidates) against plain walks written the obvious quadratic way: same findings for random
inputs. The indexes exist because the plain walks took minutes at 5,000 nodes."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from nodeward.checks.calico import compile_selector, required_pair
from nodeward.checks.encryption import PeerNode, Route, ipsec_findings, route_findings
from nodeward.collect.xfrm import XfrmPolicy, XfrmState, XfrmTmpl


def plain_routes(routes, peers, enc_ifaces):
    """The pre-index implementation: every route compared with every peer CIDR."""
    out = []
    enc = set(enc_ifaces)

    def _in(a, c):
        try:
            return ipaddress.ip_network(a, strict=False).subnet_of(
                ipaddress.ip_network(c, strict=False))
        except (ValueError, TypeError):
            return False

    for node in peers:
        for cidr in node.pod_cidrs:
            net = ipaddress.ip_network(cidr, strict=False)
            if any(r.table != 254 and r.interface in enc and _in(cidr, r.destination)
                   for r in routes):
                continue
            best, inside = None, []
            for r in routes:
                if r.table != 254:
                    continue
                rn = ipaddress.ip_network(r.destination, strict=False)
                if rn.version != net.version:
                    continue
                if net.subnet_of(rn):
                    if best is None or rn.prefixlen > best[0]:
                        best = (rn.prefixlen, r)
                elif rn.subnet_of(net):
                    inside.append(r)
            for r in ([best[1]] if best else []) + inside:
                if r.interface not in enc:
                    out.append((node.name, cidr, r.destination, r.interface))
    return out


nets4 = st.builds(lambda a, p: str(ipaddress.ip_network(f"10.{a >> 8 & 3}.{a & 255}.0/{p}",
                                                        strict=False)),
                  st.integers(0, 1023), st.sampled_from([8, 16, 20, 22, 24, 25, 26, 32]))
route_st = st.builds(Route, nets4, st.sampled_from(["wireguard.cali", "eth0", "vxlan.calico"]),
                     st.sampled_from([254, 254, 1]))


@settings(max_examples=300, deadline=None)
@given(st.lists(route_st, max_size=25), st.lists(nets4, min_size=1, max_size=8))
def test_route_index_equals_plain_walk(routes, cidrs):
    peers = [PeerNode(f"n{i}", (), (c,)) for i, c in enumerate(cidrs)]
    got = [(f.component, f.evidence["pod_cidr"], f.evidence["route"], f.evidence["interface"])
           for f in route_findings(routes, peers, ["wireguard.cali"])]
    assert got == plain_routes(routes, peers, ["wireguard.cali"])


hosts = st.integers(1, 6).map(lambda i: f"10.0.0.{i}")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(hosts, hosts, st.sampled_from(["in", "out"]),
                          st.sampled_from([32, 24, 30])), max_size=12),
       st.lists(st.tuples(hosts, hosts), max_size=8))
def test_ipsec_index_equals_plain_walk(pols, sas):
    policies = [XfrmPolicy(str(ipaddress.ip_network(f"{s}/{p}", strict=False)),
                           str(ipaddress.ip_network(f"{d}/{p}", strict=False)), dir_,
                           tmpls=(XfrmTmpl(s, d, "esp", 0),)) for s, d, dir_, p in pols]
    states = [XfrmState(s, d, "esp", 0x100 + i) for i, (s, d) in enumerate(sas)]
    peers = [PeerNode(f"n{i}", (f"10.0.0.{i}",)) for i in range(2, 7)]
    local = ["10.0.0.1"]

    def _in(a, c):
        return ipaddress.ip_network(a, strict=False).subnet_of(
            ipaddress.ip_network(c, strict=False))

    want = []
    for node in peers:
        for direction in ("out", "in"):
            ok = any(p.dir == direction and _in(src, p.src) and _in(dst, p.dst)
                     for peer_ip in node.addresses for lo in local
                     for src, dst in [((lo, peer_ip) if direction == "out" else (peer_ip, lo))]
                     for p in policies)
            if not ok:
                want.append(("NW410", node.name, direction))
    for p in policies:
        for t in p.tmpls:
            if not any(s.src == t.src and s.dst == t.dst and s.proto == t.proto
                       for s in states):
                want.append(("NW411", t.src, t.dst))
    got = [("NW410", f.component, f.evidence["direction"]) if f.id == "NW410"
           else ("NW411", f.evidence["tmpl"]["src"], f.evidence["tmpl"]["dst"])
           for f in ipsec_findings(states, policies, peers, local)]
    assert got == want


keys = st.sampled_from(["app", "role", "zone"])
vals = st.sampled_from(["a", "b", "c"])
label_sets = st.lists(st.dictionaries(keys, vals, max_size=3), min_size=1, max_size=12)
atoms = st.one_of(st.builds(lambda k, v: f"{k} == '{v}'", keys, vals),
                  st.builds(lambda k: f"has({k})", keys),
                  st.builds(lambda k, v: f"{k} != '{v}'", keys, vals),
                  st.builds(lambda k: f"!has({k})", keys))
selectors = st.lists(atoms, min_size=1, max_size=3).flatmap(
    lambda xs: st.sampled_from([" && ".join(xs), " || ".join(xs),
                                f"({' && '.join(xs)})"]))


@settings(max_examples=400, deadline=None)
@given(selectors, label_sets)
def test_required_pair_never_hides_a_match(sel, labels):
    """Looking only at label sets holding the selector's required pair finds a match
    exactly when looking at all of them does."""
    match = compile_selector(sel)
    pair = required_pair(sel)
    everything = any(match(lab) for lab in labels)
    if pair is not None:
        assert any(match(lab) for lab in labels if pair in lab.items()) == everything


# -- the per-family / rule-aware checks (proven against a real kernel in tests/realkernel)
#    held to their plain walks -------------------------------------------------------------

from nodeward.checks.encryption import RouteRule, _chosen, _match, wireguard_findings  # noqa: E402
from nodeward.collect.wireguard import WgDevice, WgPeer  # noqa: E402


def _version(text):
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False).version
    except ValueError:
        return None


def _host(endpoint):
    return endpoint.rsplit(":", 1)[0].strip("[]")


def plain_match(node, devices, family):
    """The pre-index _match, verbatim."""
    key = node.wireguard_public_key_v6 if family == 6 else node.wireguard_public_key
    for dev in devices:
        for p in dev.peers:
            if key and p.public_key == key:
                return dev, p, True
    if family == 6 and not key and node.wireguard_public_key:
        for dev in devices:
            for p in dev.peers:
                if p.public_key == node.wireguard_public_key and \
                        any(_version(a) == 6 for a in p.allowed_ips):
                    return dev, p, True
    best = None
    for dev in devices:
        for p in dev.peers:
            if not p.endpoint or _host(p.endpoint) not in node.addresses:
                continue
            rank = 2 if any(_version(a) == family for a in p.allowed_ips) else \
                1 if _version(_host(p.endpoint)) == family else 0
            if family is not None and rank == 0:
                continue
            if best is None or rank > best[0]:
                best = (rank, dev, p)
    if best is None:
        return None
    return best[1], best[2], not key


def plain_chosen(net, routes, tables):
    """The pre-index _chosen, verbatim."""
    chosen = []
    for table, suppress in tables:
        best = None
        for r in routes:
            if r.table != table:
                continue
            rn = ipaddress.ip_network(r.destination, strict=False)
            if rn.version != net.version or rn.prefixlen <= suppress:
                continue
            if net.subnet_of(rn):
                if best is None or rn.prefixlen > best[0]:
                    best = (rn.prefixlen, r)
            elif rn.subnet_of(net):
                chosen.append(r)
        if best is not None:
            return [best[1], *chosen]
    return chosen


keys = st.sampled_from(["", "k1", "k2", "k3"])
addrs = st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2"])
allowed = st.lists(st.sampled_from(["10.244.1.0/24", "10.244.0.0/16", "fd00:244::/64",
                                    "0.0.0.0/0"]), max_size=3)
peer_st = st.builds(lambda k, a, al, port: WgPeer(k, f"[{a}]:{port}" if ":" in a
                                                  else f"{a}:{port}", tuple(al)),
                    keys, addrs, allowed, st.sampled_from([51820, 51821]))
dev_st = st.lists(st.builds(lambda name, ps: WgDevice(name, peers=tuple(ps)),
                            st.sampled_from(["wireguard.cali", "wg-v6.cali"]),
                            st.lists(peer_st, max_size=4)), max_size=3)
node_st = st.builds(lambda k, k6, ad: PeerNode("n", tuple(ad), (), k, k6), keys, keys,
                    st.lists(addrs, max_size=3))


@settings(max_examples=400, deadline=None)
@given(dev_st, node_st, st.sampled_from([4, 6, None]))
def test_wireguard_index_equals_plain_match(devices, node, family):
    want = plain_match(node, devices, family)
    got = _match(node, devices, family)
    assert (got and (got[0].name, got[1], got[2])) == (want and (want[0].name, want[1],
                                                                 want[2]))


@settings(max_examples=300, deadline=None)
@given(st.lists(route_st, max_size=25), nets4,
       st.lists(st.tuples(st.sampled_from([254, 1, 7]), st.sampled_from([-1, 0, 16])),
                min_size=1, max_size=3))
def test_rule_aware_route_index_equals_plain_walk(routes, cidr, tables):
    net = ipaddress.ip_network(cidr)
    assert _chosen(net, routes, tables) == plain_chosen(net, routes, tables)


def test_route_rules_order_decides():
    """Calico's WireGuard table behind its rule wins over main; without the rule, main."""
    routes = [Route("10.244.2.0/24", "wireguard.cali", 1), Route("10.244.2.0/24", "tunl0")]
    peers = [PeerNode("n2", ("10.0.0.2",), ("10.244.2.0/24",))]
    with_rule = [RouteRule(4, 99, 1), RouteRule(4, 32766, 254)]
    assert route_findings(routes, peers, ["wireguard.cali"], with_rule) == []
    (f,) = route_findings(routes, peers, ["wireguard.cali"], [RouteRule(4, 32766, 254)])
    assert f.evidence["interface"] == "tunl0"
    assert wireguard_findings([], peers, 0)[0].id == "NW401"
