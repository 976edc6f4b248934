"""Encryption findings (NW4xx) for inter-node links. Pure: WireGuard devices, peer nodes
and routes in, findings out.

    NW401  a peer node has no WireGuard peer (its traffic is not encrypted)
    NW402  a WireGuard peer has no live session (latest handshake older than the rekey window)
    NW403  a WireGuard peer's allowed IPs do not cover the node's pod CIDR or address
    NW404  a route to a peer's pod CIDR leaves through a plain (unencrypted) interface
    NW405  a WireGuard peer for a node holds another key than the one the node publishes
    NW410  IPsec: no xfrm policy (with a template) for a peer node in one direction
    NW411  IPsec: a policy template with no matching state (no SA: traffic dropped or clear)
    NW412  IPsec: a state with a null or weak algorithm
    NW413  IPsec: a state past its soft lifetime and no successor (the rekey did not happen)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from ..collect.wireguard import WgDevice, WgPeer
from ..collect.xfrm import XfrmPolicy, XfrmState, XfrmTmpl
from ..model import Finding, Severity

#: REJECT_AFTER_TIME (180 s) in the WireGuard protocol: past it, no session key is valid.
REKEY_WINDOW = 180.0


@dataclass(frozen=True)
class PeerNode:
    """Another node of the cluster, as the cluster view or the config describes it."""

    name: str
    addresses: tuple[str, ...] = ()
    pod_cidrs: tuple[str, ...] = ()
    wireguard_public_key: str = ""  # base64, from Calico's node annotation when known
    wireguard_public_key_v6: str = ""  # Calico's wg-v6.cali key (its own key pair)
    roles: tuple[str, ...] = ()  # node-role.kubernetes.io/<role> labels, e.g. control-plane
    wireguard_interface_addr: str = ""  # Calico's IPv4WireguardInterfaceAddr (tunnel address)

    @property
    def control_plane(self) -> bool:
        return "control-plane" in self.roles or "master" in self.roles


@dataclass(frozen=True)
class Route:
    destination: str  # CIDR
    interface: str
    table: int = 254  # main; Calico's WireGuard routes live in their own table (policy rules)


def _host(endpoint: str) -> str:
    host = endpoint.rsplit(":", 1)[0]
    return host.strip("[]")


def _version(text: str) -> int | None:
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False).version
    except ValueError:
        return None


class _WgIndex:
    """The devices' peers indexed once per check (by key, by endpoint host), each with its
    position, so a node is matched with dict lookups in the order a plain walk over
    every device's peers would meet them (5,000 nodes x 5,000 peers was minutes)."""

    def __init__(self, devices: Sequence[WgDevice]) -> None:
        self.by_key: dict[str, tuple[WgDevice, WgPeer]] = {}
        self.by_key_v6: dict[str, tuple[WgDevice, WgPeer]] = {}  # with an IPv6 allowed IP
        self.by_host: dict[str, list[tuple[int, WgDevice, WgPeer, frozenset, int | None]]] = {}
        i = 0
        for dev in devices:
            for p in dev.peers:
                versions = frozenset(_version(a) for a in p.allowed_ips)
                self.by_key.setdefault(p.public_key, (dev, p))
                if 6 in versions:
                    self.by_key_v6.setdefault(p.public_key, (dev, p))
                if p.endpoint:
                    host = _host(p.endpoint)
                    self.by_host.setdefault(host, []).append(
                        (i, dev, p, versions, _version(host)))
                i += 1

    def match(self, node: PeerNode,
              family: int | None) -> tuple[WgDevice, WgPeer, bool] | None:
        key = node.wireguard_public_key_v6 if family == 6 else node.wireguard_public_key
        if key and key in self.by_key:
            return (*self.by_key[key], True)
        if family == 6 and not key and node.wireguard_public_key:
            # No IPv6 key published: one device for both families (not Calico) is keyed
            # by the IPv4 key, and then carries IPv6 allowed IPs.
            hit = self.by_key_v6.get(node.wireguard_public_key)
            if hit is not None:
                return (*hit, True)
        seen: dict[int, tuple] = {}
        for a in node.addresses:
            for entry in self.by_host.get(a, ()):
                seen.setdefault(entry[0], entry)
        best: tuple[int, WgDevice, WgPeer] | None = None
        for _i, dev, p, versions, host_version in (seen[k] for k in sorted(seen)):
            rank = 2 if family in versions else 1 if host_version == family else 0
            if family is not None and rank == 0:
                continue
            if best is None or rank > best[0]:
                best = (rank, dev, p)
        if best is None:
            return None
        return best[1], best[2], not key


def _match(node: PeerNode, devices: Sequence[WgDevice],
           family: int | None) -> tuple[WgDevice, WgPeer, bool] | None:
    """The peer that carries `family` traffic to `node`, and whether its key is the one
    the node publishes. By key first; else by endpoint, but only a peer that carries that
    family (an allowed IP or the endpoint of that version): Calico runs one device per
    family (wireguard.cali, wg-v6.cali), so the IPv6 peer says nothing about IPv4."""
    return _WgIndex(devices).match(node, family)


def _covered(target: str, allowed: Sequence[str]) -> bool:
    net = ipaddress.ip_network(target, strict=False)
    for a in allowed:
        try:
            an = ipaddress.ip_network(a, strict=False)
        except ValueError:
            continue
        if an.version == net.version and net.subnet_of(an):
            return True
    return False


def wireguard_findings(devices: Sequence[WgDevice], peers: Sequence[PeerNode], now: float,
                       *, rekey_window: float = REKEY_WINDOW,
                       require_address: bool = False) -> list[Finding]:
    """Check that every peer node has, per address family of its pod CIDRs, a live
    WireGuard session under the key it publishes, covering those CIDRs.

    `require_address` also demands the node address itself inside allowed IPs (Calico
    does not route node-to-node traffic through wireguard.cali by default, so off).
    A dual-stack node's findings carry the family's first CIDR as address (one per family).
    """
    out: list[Finding] = []
    index = _WgIndex(devices)
    for node in peers:
        targets = list(node.pod_cidrs)
        if require_address:
            targets += [a for a in node.addresses if a]
        families: dict[int | None, list[str]] = {}
        for t in targets:
            families.setdefault(_version(t), []).append(t)
        if not families:
            families[None] = []
        for family, fam_targets in sorted(families.items(), key=lambda kv: kv[0] or 0):
            out += _node_family(node, devices, family, fam_targets, now, rekey_window,
                                dual=len(families) > 1, index=index)
    return out


def _node_family(node: PeerNode, devices: Sequence[WgDevice], family: int | None,
                 targets: list[str], now: float, rekey_window: float,
                 dual: bool, index: _WgIndex | None = None) -> list[Finding]:
    out: list[Finding] = []
    address = targets[0] if dual and targets else ""
    fam = f" (IPv{family})" if dual else ""
    hit = (index or _WgIndex(devices)).match(node, family)
    if hit is None:
        return [Finding(
            id="NW401", severity=Severity.HIGH, component=node.name, address=address,
            title=f"no WireGuard peer for node {node.name}{fam}: its traffic is not "
                  "encrypted",
            remediation="Add the node as a WireGuard peer (Calico: wireguardEnabled and "
                        "the node's wireguard public key annotation; check calico-node "
                        "logs on both nodes).",
            evidence={"node": node.name, "family": family, "addresses": list(node.addresses),
                      "devices": [d.name for d in devices]})]
    dev, p, key_ok = hit
    ev = {"node": node.name, "family": family, "device": dev.name,
          "public_key": p.public_key, "endpoint": p.endpoint,
          "allowed_ips": list(p.allowed_ips)}
    if not key_ok:
        published = node.wireguard_public_key_v6 if family == 6 else \
            node.wireguard_public_key
        out.append(Finding(
            id="NW405", severity=Severity.HIGH, component=node.name, address=address,
            title=f"WireGuard peer for node {node.name}{fam} on {dev.name} holds key "
                  f"{p.public_key[:8]}..., the node publishes {published[:8]}...",
            remediation="The node rotated its key or this peer entry is stale: no new "
                        "session can be made with it. Check calico-node on this node "
                        "reprograms the peer from the node's annotation.",
            evidence={**ev, "published_key": published}))
    age = now - p.last_handshake if p.last_handshake else None
    if age is None or age > rekey_window:
        out.append(Finding(
            id="NW402", severity=Severity.HIGH, component=node.name, address=address,
            title=f"WireGuard peer for node {node.name}{fam} has no live session "
                  + ("(never handshaked)" if age is None
                     else f"(last handshake {int(age)}s ago)"),
            remediation="Check UDP reachability of the peer endpoint and that both sides "
                        "hold each other's current public key.",
            evidence={**ev, "last_handshake": p.last_handshake,
                      "handshake_age_s": age, "rekey_window_s": rekey_window,
                      "rx_bytes": p.rx_bytes, "tx_bytes": p.tx_bytes}))
    missing = [t for t in targets if not _covered(t, p.allowed_ips)]
    if missing:
        out.append(Finding(
            id="NW403", severity=Severity.HIGH, component=node.name, address=address,
            title=f"WireGuard allowed IPs for node {node.name} do not cover "
                  + ", ".join(missing),
            remediation="Add the node's pod CIDR(s) to the peer's allowed IPs (Calico "
                        "derives them from block affinities; check IPAM).",
            evidence={**ev, "missing": missing}))
    return out


@dataclass(frozen=True)
class RouteRule:
    """A policy-routing rule (`ip rule`), as far as the route check needs it."""

    family: int  # 4 | 6
    priority: int
    table: int
    action: int = 1  # FR_ACT_TO_TBL; others (blackhole, unreachable, goto...) end or skip
    fwmark: int = 0
    fwmask: int = 0
    invert: bool = False  # `not`
    suppress_prefixlen: int = -1  # routes this short or shorter are ignored (-1: none)
    selective: bool = False  # a src/dst/iif/oif/port/uid selector this check cannot judge


def _tables(rules: Sequence[RouteRule], family: int) -> list[tuple[int, int]]:
    """(table, suppress_prefixlen) in the order unmarked traffic consults them."""
    out = []
    for r in sorted((r for r in rules if r.family == family), key=lambda r: r.priority):
        if r.selective or r.table == 255:  # local table: the node's own addresses
            continue
        mask = r.fwmask if r.fwmask else (0xFFFFFFFF if r.fwmark else 0)
        match = (0 & mask) == (r.fwmark & mask)
        if r.invert:
            match = not match
        if not match:
            continue
        if r.action != 1:
            break  # blackhole / unreachable / prohibit: the lookup ends here
        out.append((r.table, r.suppress_prefixlen))
    return out


def _key(net) -> tuple[int, int, int]:
    return net.version, net.prefixlen, int(net.network_address)


class _RouteIndex:
    """Routes parsed once and indexed per table by (family, prefix length, network as an
    integer): the route covering a CIDR is found by masking its address per prefix length
    present, the carve-outs by one dict per (table, CIDR length); same answers, in the
    same order, as comparing every route with every peer CIDR (which took minutes at
    5,000 nodes)."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.parsed: list[tuple[int, object, Route]] = []
        self.first: dict[tuple[int, tuple[int, int, int]], Route] = {}
        self.plens: dict[tuple[int, int], set[int]] = {}
        self._inside: dict[tuple[int, int, int], dict[int, list[tuple[int, Route]]]] = {}
        self._elsewhere: dict[frozenset[str], set[tuple[int, int, int]]] = {}
        for r in routes:
            try:
                rn = ipaddress.ip_network(r.destination, strict=False)
            except ValueError:
                continue
            self.parsed.append((r.table, rn, r))
            self.first.setdefault((r.table, _key(rn)), r)
            self.plens.setdefault((r.table, rn.version), set()).add(rn.prefixlen)

    def best(self, net, table: int, suppress: int) -> Route | None:
        """The longest route of `table` holding `net` (the first of equals)."""
        addr, bits = int(net.network_address), net.max_prefixlen
        for plen in sorted((p for p in self.plens.get((table, net.version), ())
                            if suppress < p <= net.prefixlen), reverse=True):
            mask = ((1 << plen) - 1) << (bits - plen) if plen else 0
            r = self.first.get((table, (net.version, plen, addr & mask)))
            if r is not None:
                return r
        return None

    def inside(self, net, table: int, suppress: int) -> list[Route]:
        """Routes of `table` strictly inside `net` and longer than `suppress`, in route
        order."""
        k = (table, net.version, net.prefixlen)
        groups = self._inside.get(k)
        if groups is None:
            groups = self._inside[k] = {}
            bits = net.max_prefixlen
            mask = ((1 << net.prefixlen) - 1) << (bits - net.prefixlen) if net.prefixlen \
                else 0
            for t, rn, r in self.parsed:
                if t == table and rn.version == net.version and rn.prefixlen > net.prefixlen:
                    groups.setdefault(int(rn.network_address) & mask, []).append(
                        (rn.prefixlen, r))
        return [r for plen, r in groups.get(int(net.network_address), []) if plen > suppress]

    def covered_elsewhere(self, net, encrypted: set[str]) -> bool:
        """An encrypted route in a table other than main holds `net` (the guess when the
        rules are unknown)."""
        key = frozenset(encrypted)
        cover = self._elsewhere.get(key)
        if cover is None:
            cover = self._elsewhere[key] = {
                _key(rn) for t, rn, r in self.parsed if t != 254 and r.interface in encrypted}
        addr, bits = int(net.network_address), net.max_prefixlen
        return any((net.version, plen, addr & (((1 << plen) - 1) << (bits - plen)
                                               if plen else 0)) in cover
                   for plen in range(net.prefixlen, -1, -1))


def _chosen(net, routes: Sequence[Route] | _RouteIndex,
            tables: list[tuple[int, int]]) -> list[Route]:
    """The routes the kernel would use for `net`: along the tables in rule order, the
    more-specific routes carving parts out, until a table has one covering it all."""
    index = routes if isinstance(routes, _RouteIndex) else _RouteIndex(routes)
    chosen: list[Route] = []
    for table, suppress in tables:
        best = index.best(net, table, suppress)
        chosen += index.inside(net, table, suppress)
        if best is not None:
            return [best, *chosen]
    return chosen


def route_findings(routes: Sequence[Route], peers: Sequence[PeerNode],
                   encrypted_interfaces: Sequence[str],
                   rules: Sequence[RouteRule] | None = None) -> list[Finding]:
    """A route to a peer's pod CIDR through a non-encrypted interface sends pod traffic
    in clear even when a tunnel exists (longest match picks the route, not the tunnel).

    With `rules` (the node's `ip rule` list) the tables are walked as the kernel walks
    them for unmarked traffic: Calico's WireGuard routes live in their own table, used
    only while its rule exists. Without, the main table decides unless another table
    holds an encrypted route covering the CIDR (the old guess; rules unknown)."""
    out: list[Finding] = []
    enc = set(encrypted_interfaces)
    index = _RouteIndex(routes)
    tables = {v: _tables(rules, v) for v in (4, 6)} if rules is not None else {}
    for node in peers:
        for cidr in node.pod_cidrs:
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                continue
            if rules is not None:
                chosen = _chosen(net, index, tables[net.version])
            elif index.covered_elsewhere(net, enc):
                continue
            else:
                chosen = _chosen(net, index, [(254, -1)])
            for r in chosen:
                if r.interface in enc:
                    continue
                out.append(Finding(
                    id="NW404", severity=Severity.HIGH, component=node.name,
                    address=r.destination,
                    title=f"pod CIDR {cidr} of node {node.name} is routed ({r.destination}) "
                          f"through plain interface {r.interface}",
                    remediation="Route peer pod CIDRs through the WireGuard interface (Calico: "
                                "check wireguardEnabled, the routing table Felix programs "
                                "and its ip rule).",
                    evidence={"node": node.name, "pod_cidr": cidr,
                              "route": r.destination, "interface": r.interface,
                              "table": r.table,
                              "encrypted_interfaces": sorted(enc)}))
    return out


NULL_ALGS = ("cipher_null", "digest_null", "ecb(cipher_null)")
WEAK_ALGS = ("des", "des3_ede", "md5", "sha1", "rmd160", "cbc(des)", "cbc(des3_ede)",
             "hmac(md5)", "hmac(sha1)")


def _in(addr: str, cidr: str) -> bool:
    try:
        return ipaddress.ip_network(addr, strict=False).subnet_of(
            ipaddress.ip_network(cidr, strict=False))
    except (ValueError, TypeError):
        return False


def _tmpl_addr(tmpl: str, state: str) -> bool:
    """A template's 0.0.0.0 / :: (or empty) address takes the flow's: any state's fits."""
    if tmpl in ("", "0.0.0.0", "::"):
        return True
    try:
        return ipaddress.ip_address(tmpl) == ipaddress.ip_address(state)
    except ValueError:
        return tmpl == state


def _addr(text: str) -> object:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return text


_WILDCARD = ("", "0.0.0.0", "::")


class _StateIndex:
    """States by (src, dst, proto), by (src, proto), by (dst, proto) and by proto, so a
    template (whose 0.0.0.0 / :: address takes any state's) finds its SA without a walk
    over every state (templates x states was minutes at 5,000 peers)."""

    def __init__(self, states: Sequence[XfrmState]) -> None:
        self.by: dict[tuple, list[int]] = {}
        for st in states:
            src, dst = _addr(st.src), _addr(st.dst)
            for key in ((src, dst, st.proto), (src, None, st.proto), (None, dst, st.proto),
                        (None, None, st.proto)):
                self.by.setdefault(key, []).append(st.reqid)

    def has_state(self, t: XfrmTmpl) -> bool:
        src = None if t.src in _WILDCARD else _addr(t.src)
        dst = None if t.dst in _WILDCARD else _addr(t.dst)
        reqids = self.by.get((src, dst, t.proto), ())
        return bool(reqids) and (t.reqid == 0 or t.reqid in reqids)


class _PolicyIndex:
    """Protecting policies per direction by destination and source networks as masked
    integers: whether (src, dst) is covered is a lookup per prefix length present, not a
    walk over every policy (peers x policies was quadratic)."""

    def __init__(self, policies: Sequence[XfrmPolicy]) -> None:
        self.index: dict[str, dict[tuple[int, int, int], dict[int, set[int]]]] = {}
        self.plens: dict[tuple[str, int], set[int]] = {}
        for p in policies:
            try:
                pdst = ipaddress.ip_network(p.dst, strict=False)
                psrc = ipaddress.ip_network(p.src, strict=False)
            except (ValueError, TypeError):
                continue
            if pdst.version != psrc.version:
                continue
            self.plens.setdefault((p.dir, pdst.version), set()).add(pdst.prefixlen)
            self.index.setdefault(p.dir, {}).setdefault(_key(pdst), {}) \
                .setdefault(psrc.prefixlen, set()).add(int(psrc.network_address))

    @staticmethod
    def _masked(addr: int, plen: int, bits: int) -> int:
        return addr & (((1 << plen) - 1) << (bits - plen)) if plen else 0

    def protected(self, direction: str, src: str, dst: str) -> bool:
        try:
            s_ip = ipaddress.ip_network(src, strict=False)
            d_ip = ipaddress.ip_network(dst, strict=False)
        except (ValueError, TypeError):
            return False
        if s_ip.version != d_ip.version:
            return False
        bits = s_ip.max_prefixlen
        s_int, d_int = int(s_ip.network_address), int(d_ip.network_address)
        by_dst = self.index.get(direction, {})
        for dplen in self.plens.get((direction, d_ip.version), ()):
            if dplen > d_ip.prefixlen:
                continue
            srcs = by_dst.get((d_ip.version, dplen, self._masked(d_int, dplen, bits)))
            if srcs and any(splen <= s_ip.prefixlen and self._masked(s_int, splen, bits) in nets
                            for splen, nets in srcs.items()):
                return True
        return False


def ipsec_findings(states: Sequence[XfrmState], policies: Sequence[XfrmPolicy],
                   peers: Sequence[PeerNode], local_addresses: Sequence[str],
                   now: float | None = None) -> list[Finding]:
    """Each peer node needs an out and an in policy (allow + template) between a local
    address and its address, every template a state, no null/weak algorithms, and no SA
    left past its soft lifetime without a successor (`now` for the time-based limits)."""
    out: list[Finding] = []
    # a policy whose templates are all optional (`level use`) lets clear traffic through
    prot = [p for p in policies if p.action == "allow" and p.tmpls
            and not all(t.optional for t in p.tmpls)]
    policy_index = _PolicyIndex(prot)
    for node in peers:
        for direction in ("out", "in"):
            ok = any(policy_index.protected(direction, *((local, peer_ip)
                                                           if direction == "out"
                                                           else (peer_ip, local)))
                     for peer_ip in node.addresses for local in local_addresses)
            if not ok:
                out.append(Finding(
                    id="NW410", severity=Severity.HIGH, component=node.name,
                    protocol="ipsec",
                    title=f"no IPsec policy {direction} for node {node.name}: traffic "
                          f"{'to' if direction == 'out' else 'from'} it is not required "
                          "to be encrypted",
                    remediation="Install xfrm policies in both directions for every node "
                                "pair (check the IPsec daemon's connection for this peer).",
                    evidence={"node": node.name, "direction": direction,
                              "addresses": list(node.addresses),
                              "local_addresses": list(local_addresses)}))
    sa_index = _StateIndex(states)
    for p in prot:
        for t in p.tmpls:
            if t.optional:
                continue  # `level use`: no SA means clear traffic, not a dropped one
            if not sa_index.has_state(t):
                out.append(Finding(
                    id="NW411", severity=Severity.HIGH, protocol="ipsec",
                    component=f"{t.src}->{t.dst}",
                    title=f"IPsec policy {p.dir} {p.src} -> {p.dst} has no state for "
                          f"{t.proto} {t.src} -> {t.dst} (reqid {t.reqid})",
                    remediation="The SA is missing or expired: check the IKE daemon's logs "
                                "and that it negotiated with this peer.",
                    evidence={"policy": {"src": p.src, "dst": p.dst, "dir": p.dir},
                              "tmpl": {"src": t.src, "dst": t.dst, "proto": t.proto,
                                       "reqid": t.reqid, "mode": t.mode}}))
    for s in states:
        for kind, alg in s.algorithms:
            low = alg.lower()
            null = any(n in low for n in NULL_ALGS)
            weak = low in WEAK_ALGS
            if null or weak:
                out.append(Finding(
                    id="NW412", severity=Severity.HIGH if null else Severity.MEDIUM,
                    protocol="ipsec", component=f"{s.src}->{s.dst}",
                    title=f"IPsec state {s.src} -> {s.dst} spi {s.spi:#x} uses "
                          f"{'null' if null else 'weak'} {kind} algorithm {alg}",
                    remediation="Use AEAD (rfc4106(gcm(aes))) or cbc(aes) with "
                                "hmac(sha256) or better.",
                    evidence={"src": s.src, "dst": s.dst, "spi": s.spi, "kind": kind,
                              "algorithm": alg}))
    return out + _soft_expired(states, now)


def _soft_expired(states: Sequence[XfrmState], now: float | None) -> list[Finding]:
    """The kernel asks the IKE daemon to rekey at the soft limit and drops the SA at the
    hard one; a soft-expired SA with no younger SA for the same flow means the rekey
    failed and traffic stops at the hard limit."""
    out: list[Finding] = []
    t = 0.0 if now is None else now
    for s in states:
        lt = s.lifetime
        reached = lt.soft_expired(t) if lt else []
        if now is None:
            reached = [r for r in reached if not r.startswith(("age", "in use"))]
        if not reached:
            continue
        flow = (s.src, s.dst, s.proto, s.reqid)
        if any((o.src, o.dst, o.proto, o.reqid) == flow and o.lifetime is not None
               and o.lifetime.add_time > lt.add_time and not o.lifetime.soft_expired(t)
               for o in states if o is not s):
            continue  # rekeyed: the old SA is dying as it should
        out.append(Finding(
            id="NW413", severity=Severity.MEDIUM, protocol="ipsec",
            component=f"{s.src}->{s.dst}",
            title=f"IPsec state {s.src} -> {s.dst} spi {s.spi:#x} is past its soft "
                  f"lifetime ({'; '.join(reached)}) and was not rekeyed",
            remediation="The IKE daemon did not rekey this SA: traffic stops at the hard "
                        "limit. Check the daemon's logs and its rekey settings.",
            evidence={"src": s.src, "dst": s.dst, "spi": s.spi, "reqid": s.reqid,
                      "reached": reached,
                      "hard": {"bytes": lt.hard_bytes, "packets": lt.hard_packets,
                               "add_s": lt.hard_add_s, "use_s": lt.hard_use_s}}))
    return out
