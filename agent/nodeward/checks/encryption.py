"""Encryption findings (NW4xx) for inter-node links. Pure: WireGuard devices, peer nodes
and routes in, findings out.

    NW401  a peer node has no WireGuard peer (its traffic is not encrypted)
    NW402  a WireGuard peer has no live session (latest handshake older than the rekey window)
    NW403  a WireGuard peer's allowed IPs do not cover the node's pod CIDR or address
    NW404  a route to a peer's pod CIDR leaves through a plain (unencrypted) interface
    NW410  IPsec: no xfrm policy (with a template) for a peer node in one direction
    NW411  IPsec: a policy template with no matching state (no SA: traffic dropped or clear)
    NW412  IPsec: a state with a null or weak algorithm
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from ..collect.wireguard import WgDevice, WgPeer
from ..collect.xfrm import XfrmPolicy, XfrmState
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
    wireguard_public_key_v6: str = ""  # Calico's WireguardPublicKeyV6 (wg-v6.cali)
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


class _PeerIndex:
    """WireGuard peers by public key and by endpoint host, built once per check: matching
    each node by scanning every device's peers is quadratic (5,000 x 5,000 on a big
    cluster)."""

    def __init__(self, devices: Sequence[WgDevice]) -> None:
        self.by_key: dict[str, tuple[WgDevice, WgPeer]] = {}
        self.by_host: dict[str, tuple[WgDevice, WgPeer]] = {}
        for dev in devices:
            for p in dev.peers:
                if p.public_key:
                    self.by_key.setdefault(p.public_key, (dev, p))
                if p.endpoint:
                    self.by_host.setdefault(_host(p.endpoint), (dev, p))

    def match(self, node: PeerNode) -> tuple[WgDevice, WgPeer] | None:
        for key in (node.wireguard_public_key, node.wireguard_public_key_v6):
            if key and key in self.by_key:
                return self.by_key[key]
        for a in node.addresses:
            if a in self.by_host:
                return self.by_host[a]
        return None


def _match(node: PeerNode, devices: Sequence[WgDevice]) -> tuple[WgDevice, WgPeer] | None:
    return _PeerIndex(devices).match(node)


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
    """Check that every peer node has a live WireGuard session covering its pod CIDRs.

    `require_address` also demands the node address itself inside allowed IPs (Calico
    does not route node-to-node traffic through wireguard.cali by default, so off).
    """
    out: list[Finding] = []
    index = _PeerIndex(devices)
    for node in peers:
        hit = index.match(node)
        if hit is None:
            out.append(Finding(
                id="NW401", severity=Severity.HIGH, component=node.name,
                title=f"no WireGuard peer for node {node.name}: its traffic is not encrypted",
                remediation="Add the node as a WireGuard peer (Calico: wireguardEnabled and "
                            "the node's wireguard public key annotation; check calico-node "
                            "logs on both nodes).",
                evidence={"node": node.name, "addresses": list(node.addresses),
                          "devices": [d.name for d in devices]}))
            continue
        dev, p = hit
        ev = {"node": node.name, "device": dev.name, "public_key": p.public_key,
              "endpoint": p.endpoint, "allowed_ips": list(p.allowed_ips)}
        age = now - p.last_handshake if p.last_handshake else None
        if age is None or age > rekey_window:
            out.append(Finding(
                id="NW402", severity=Severity.HIGH, component=node.name,
                title=f"WireGuard peer for node {node.name} has no live session "
                      + ("(never handshaked)" if age is None
                         else f"(last handshake {int(age)}s ago)"),
                remediation="Check UDP reachability of the peer endpoint and that both sides "
                            "hold each other's current public key.",
                evidence={**ev, "last_handshake": p.last_handshake,
                          "handshake_age_s": age, "rekey_window_s": rekey_window,
                          "rx_bytes": p.rx_bytes, "tx_bytes": p.tx_bytes}))
        targets = list(node.pod_cidrs)
        if require_address:
            targets += [a for a in node.addresses if a]
        missing = [t for t in targets if not _covered(t, p.allowed_ips)]
        if missing:
            out.append(Finding(
                id="NW403", severity=Severity.HIGH, component=node.name,
                title=f"WireGuard allowed IPs for node {node.name} do not cover "
                      + ", ".join(missing),
                remediation="Add the node's pod CIDR(s) to the peer's allowed IPs (Calico "
                            "derives them from block affinities; check IPAM).",
                evidence={**ev, "missing": missing}))
    return out


class _RouteIndex:
    """Routes by (family, prefix length, network as an integer), parsed once: a covering
    route is found by masking the CIDR's address per prefix length (at most 129 dict
    lookups) instead of comparing every route per peer CIDR (5,000 peers x 10,000 routes
    was minutes)."""

    def __init__(self, routes: Sequence[Route], encrypted: set[str]) -> None:
        self.main: dict[tuple[int, int, int], Route] = {}
        self.tunnel: set[tuple[int, int, int]] = set()  # encrypted routes in other tables
        self.main_parsed: list[tuple[int, int, int, Route]] = []  # version, int, plen, r
        self.plens: dict[int, set[int]] = {4: set(), 6: set()}
        self._inside: dict[tuple[int, int], dict[int, list[Route]]] = {}
        for r in routes:
            try:
                rn = ipaddress.ip_network(r.destination, strict=False)
            except ValueError:
                continue
            key = (rn.version, rn.prefixlen, int(rn.network_address))
            self.plens[rn.version].add(rn.prefixlen)
            if r.table == 254:
                self.main.setdefault(key, r)
                self.main_parsed.append((rn.version, key[2], rn.prefixlen, r))
            elif r.interface in encrypted:
                self.tunnel.add(key)

    def _covering(self, net: IPNetwork):
        """(version, plen, masked address) for net and each supernet, longest first, of
        the prefix lengths some route has."""
        bits = net.max_prefixlen
        addr = int(net.network_address)
        for plen in sorted((p for p in self.plens[net.version] if p <= net.prefixlen),
                           reverse=True):
            mask = ((1 << plen) - 1) << (bits - plen)
            yield (net.version, plen, addr & mask)

    def tunnelled(self, net: IPNetwork) -> bool:
        return any(k in self.tunnel for k in self._covering(net))

    def best(self, net: IPNetwork) -> Route | None:
        for k in self._covering(net):
            r = self.main.get(k)
            if r is not None:
                return r
        return None

    def inside(self, net: IPNetwork) -> list[Route]:
        """Main-table routes strictly inside `net`, in route order."""
        key = (net.version, net.prefixlen)
        groups = self._inside.get(key)
        if groups is None:
            groups = self._inside[key] = {}
            bits = net.max_prefixlen
            mask = ((1 << net.prefixlen) - 1) << (bits - net.prefixlen)
            for version, addr, plen, r in self.main_parsed:
                if version == net.version and plen > net.prefixlen:
                    groups.setdefault(addr & mask, []).append(r)
        return list(groups.get(int(net.network_address), []))


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def route_findings(routes: Sequence[Route], peers: Sequence[PeerNode],
                   encrypted_interfaces: Sequence[str]) -> list[Finding]:
    """A route to a peer's pod CIDR through a non-encrypted interface sends pod traffic
    in clear even when a tunnel exists (longest match picks the route, not the tunnel)."""
    out: list[Finding] = []
    enc = set(encrypted_interfaces)
    index = _RouteIndex(routes, enc)
    for node in peers:
        for cidr in node.pod_cidrs:
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                continue
            # Calico programs wireguard.cali routes in a separate table selected by ip rules;
            # when such a route covers the CIDR, the main-table route is not the one used.
            if index.tunnelled(net):
                continue
            best = index.best(net)
            # more-specific routes carving part of the CIDR out count too
            chosen = ([best] if best else []) + index.inside(net)
            for r in chosen:
                if r.interface in enc:
                    continue
                out.append(Finding(
                    id="NW404", severity=Severity.HIGH, component=node.name,
                    address=r.destination,
                    title=f"pod CIDR {cidr} of node {node.name} is routed ({r.destination}) "
                          f"through plain interface {r.interface}",
                    remediation="Route peer pod CIDRs through the WireGuard interface (Calico: "
                                "check wireguardEnabled and the routing table Felix programs).",
                    evidence={"node": node.name, "pod_cidr": cidr,
                              "route": r.destination, "interface": r.interface,
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


def ipsec_findings(states: Sequence[XfrmState], policies: Sequence[XfrmPolicy],
                   peers: Sequence[PeerNode], local_addresses: Sequence[str]) -> list[Finding]:
    """Each peer node needs an out and an in policy (allow + template) between a local
    address and its address, every template a state, and no null/weak algorithms."""
    out: list[Finding] = []
    prot = [p for p in policies if p.action == "allow" and p.tmpls]
    # policies by direction, destination and source network, as masked integers per
    # prefix length, built once (peers x policies was quadratic): a (src, dst) pair is
    # looked up by masking both addresses per prefix length present
    index: dict[str, dict[tuple[int, int, int], dict[int, set[int]]]] = {}
    plens: dict[tuple[str, int], set[int]] = {}
    for p in prot:
        try:
            pdst = ipaddress.ip_network(p.dst, strict=False)
            psrc = ipaddress.ip_network(p.src, strict=False)
        except (ValueError, TypeError):
            continue
        if pdst.version != psrc.version:
            continue
        plens.setdefault((p.dir, pdst.version), set()).add(pdst.prefixlen)
        index.setdefault(p.dir, {}).setdefault(
            (pdst.version, pdst.prefixlen, int(pdst.network_address)), {}) \
            .setdefault(psrc.prefixlen, set()).add(int(psrc.network_address))

    def masked(addr: int, plen: int, bits: int) -> int:
        return addr & (((1 << plen) - 1) << (bits - plen))

    def protected(direction: str, src: str, dst: str) -> bool:
        try:
            s_ip = ipaddress.ip_address(src.split("/")[0])
            d_ip = ipaddress.ip_address(dst.split("/")[0])
        except ValueError:
            return False
        if s_ip.version != d_ip.version:
            return False
        bits, s_int, d_int = s_ip.max_prefixlen, int(s_ip), int(d_ip)
        by_dst = index.get(direction, {})
        for dplen in plens.get((direction, d_ip.version), ()):
            srcs = by_dst.get((d_ip.version, dplen, masked(d_int, dplen, bits)))
            if srcs and any(masked(s_int, splen, bits) in nets
                            for splen, nets in srcs.items()):
                return True
        return False

    for node in peers:
        for direction in ("out", "in"):
            ok = any(protected(direction, *((local, peer_ip) if direction == "out"
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
    sa: dict[tuple[str, str, str], set[int]] = {}
    for st in states:
        sa.setdefault((st.src, st.dst, st.proto), set()).add(st.reqid)
    for p in prot:
        for t in p.tmpls:
            reqids = sa.get((t.src, t.dst, t.proto))
            if not reqids or (t.reqid != 0 and t.reqid not in reqids):
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
    return out
