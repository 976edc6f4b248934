"""Reachability per source class: for each listening socket, what the firewall does with a
connection attempt from loopback, the node network, the pod network and anywhere else.

One representative probe packet per class (documented so a verdict can be reproduced):
  loopback  src 127.0.0.1 (::1), iif "lo", dst the bind address (127.0.0.1 for wildcards;
            from the bind address itself when it is not a loopback one); a local packet
            takes the OUTPUT path first (see evaluate)
  node      src = first address of the first node CIDR + 10 (a peer node), iif the node
            interface, dst each node address the socket answers on
  pod       src = first pod CIDR address + 10, iif the first concrete pod-facing interface
            (a glob like "cali+" becomes "cali0"), dst each node address the socket answers on
  anywhere  src 198.51.100.77 (TEST-NET-2; 2001:db8::77), iif the node interface, dst each
            node address the socket answers on
A wildcard socket answers on every node address of its family (a dual-stack [::] socket
on IPv4 ones too); pods may also aim at the node's pod-facing gateway addresses, and pods
and on-link nodes at its IPv6 link-local addresses (from fe80::10);
loopback-bound sockets are only probed from loopback (the kernel never delivers other
sources to them). A socket bound to a device (SO_BINDTODEVICE) is probed only from the
classes that arrive on it, with that device as the input interface. Each class verdict is
the most permissive of its per-address verdicts (an exposure on one address is an
exposure), and carries that address's trace as evidence.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..model import Socket
from .evaluate import evaluate
from .model import Packet, Ruleset, Verdict

CLASSES = ("loopback", "node", "pod", "anywhere")
_RANK = {"accept": 2, "reject": 1, "drop": 0}


class ReachMemo:
    """Verdicts from the previous scan, reused while the probe parameters are unchanged and
    either the ruleset is (by fingerprint) or every chain the socket's evaluations walked
    is: a kube-proxy endpoint change rewrites a few KUBE-SEP chains, and re-evaluating
    10,000 sockets for it would cost seconds. Each entry keeps the (frontend, family, table,
    chain) keys its walks entered or jumped to; the memo keeps a signature per chain (rule
    texts, policy, hook, priority) of the ruleset it was computed on, the base-chain layout
    and the sets. Holds the entries of the last scan only, so closed sockets drop out."""

    __slots__ = ("chains", "entries", "fingerprint", "hits", "key", "layout", "reevaluated",
                 "sets")

    def __init__(self) -> None:
        self.key: tuple = ()
        self.entries: dict[tuple, tuple[tuple[dict, dict], frozenset, array]] = {}
        self.hits = 0
        self.reevaluated = 0  # sockets evaluated again because a chain they walked changed
        self.fingerprint = ""
        self.chains: dict[tuple, dict[str, int]] = {}
        self.layout: tuple = ()
        self.sets: dict = {}


def _changed_sets(was: dict, now: dict, changed: set) -> set[int]:
    """Add to `changed` ("set", "", name, "*") for every named set that changed in a way
    a lookup cannot pin down; return the lookups (evaluate.set_key) of exact-keyed sets
    whose element changed (kube-proxy: a service's map element, not the other 10,000
    sockets' answers)."""
    from .evaluate import set_key

    keys: set[int] = set()
    for name in was.keys() | now.keys():
        a, b = was.get(name), now.get(name)
        if a is b or a == b:
            continue
        if a is None or b is None or a.exact is None or b.exact is None or \
                (a.type, a.members, a.keyed) != (b.type, b.members, b.keyed):
            changed.add(("set", "", name, "*"))
            continue
        ea, eb = a.exact, b.exact
        for k in ea.keys() | eb.keys():
            ia, ib = ea.get(k), eb.get(k)
            if ia is None or ib is None or a.elements[ia][1] != b.elements[ib][1]:
                keys.add(set_key(name, tuple(lo for lo, _hi in k)))  # (the packet's key)
    return keys


def _changed_chains(was: dict[tuple, dict[str, int]],
                    now: dict[tuple, dict[str, int]]) -> set[tuple]:
    """The (frontend, family, table, chain) keys whose signature differs (or that exist on
    one side only)."""
    out: set[tuple] = set()
    for tk in was.keys() | now.keys():
        a, b = was.get(tk, {}), now.get(tk, {})
        out.update((*tk, n) for n in a.keys() | b.keys() if a.get(n) != b.get(n))
    return out


def chain_signatures(ruleset: Ruleset, prev: dict[tuple, dict[str, int]] | None = None,
                     ) -> tuple[dict[tuple, dict[str, int]], tuple]:
    """((frontend, family, table) -> chain name -> signature, base-chain layout). A rule's
    text is its whole meaning (its line number is not: an earlier insertion shifts it); str
    hashes are cached, so this costs a few ms at 50,000 rules. Per table, by the chain's
    own name: a key tuple per chain was ~2 MB at kube-proxy's 25,000 nft chains."""
    sigs: dict[tuple, dict[str, int]] = {}
    layout = []
    for table in ruleset.tables:
        tk = (table.frontend, table.family, table.name)
        per = sigs.setdefault(tk, {})
        # an unchanged chain keeps the last scan's int: 25,000 new ones a churn cycle, made
        # while the old are alive, left pymalloc's arenas half used (RSS kept growing)
        was = (prev or {}).get(tk, {})
        for name, c in table.chains.items():
            # a packed chain's blob is its texts (equal texts, equal blob: no unpacking)
            v = hash((c.texts or tuple(r.text for r in c.rules), c.policy, c.hook,
                      c.priority))
            w = was.get(name)
            per[name] = w if w == v else v
            if c.hook is not None:
                layout.append((table.frontend, table.family, table.name, name, c.hook,
                               c.priority))
    return sigs, tuple(layout)


@dataclass(frozen=True, slots=True)
class Reach:
    socket: Socket
    #: class -> Verdict (only classes that can reach the bind address at all). Shared
    #: between sockets with identical outcomes (read-only): 10,000 loopback listeners on a
    #: node without rules hold one pair of dicts, not 10,000.
    verdicts: dict
    destinations: dict  # class -> destination address the verdict is for


def _pick(cidrs: Sequence[str], family: int, fallback: str) -> str:
    for c in cidrs:
        net = ipaddress.ip_network(c, strict=False)
        if net.version == family:
            return str(net.network_address + min(10, net.num_addresses - 1))
    return fallback


def _iface(globs: Sequence[str], fallback: str) -> str:
    for g in globs:
        return g[:-1] + "0" if g.endswith(("+", "*")) else g
    return fallback


def _source(cls: str, fam: int, node_cidrs: Sequence[str], pod_cidrs: Sequence[str],
            pod_interfaces: Sequence[str], node_interface: str) -> tuple[str, str]:
    """(source address, input interface) of the representative packet of a class."""
    if cls == "loopback":
        return ("127.0.0.1" if fam == 4 else "::1"), "lo"
    if cls == "node":
        return _pick(node_cidrs, fam, "10.0.0.10" if fam == 4 else "fd00::10"), node_interface
    if cls == "pod":
        return (_pick(pod_cidrs, fam, "10.244.0.10" if fam == 4 else "fd00:244::10"),
                _iface(pod_interfaces, "cali0"))
    return ("198.51.100.77" if fam == 4 else "2001:db8::77"), node_interface


def _bound_classes(device: str, pod_interfaces: Sequence[str]) -> tuple[str, ...]:
    """Source classes whose packets can arrive on a socket bound to `device`
    (SO_BINDTODEVICE: only packets received on that interface are delivered)."""
    if not device:
        return CLASSES
    if device == "lo":
        return ("loopback",)
    # the config's pod_interfaces are fnmatch globs (as the collector matches them); an
    # iptables-style trailing "+" is read as "*"
    if any(fnmatch.fnmatchcase(device, g[:-1] + "*" if g.endswith("+") else g)
           for g in pod_interfaces):
        return ("pod",)
    return ("node", "anywhere")


def reachability(sockets: Iterable[Socket], ruleset: Ruleset, *, node_addresses: Sequence[str],
                 node_cidrs: Sequence[str] = (), pod_cidrs: Sequence[str] = (),
                 pod_interfaces: Sequence[str] = ("cali+",), node_interface: str = "eth0",
                 memo: ReachMemo | None = None,
                 pod_gateways: Sequence[str] = (),
                 link_local: Mapping[str, Sequence[str]] | None = None,
                 interface_addresses: Mapping[str, Sequence[str]] | None = None,
                 interface_networks: Mapping[str, Sequence[str]] | None = None,
                 ) -> list[Reach]:
    """Per socket, per source class, the firewall Verdict for a new connection.
    `pod_gateways` are the node's addresses on pod-facing interfaces: local (addrtype
    LOCAL), and a destination pods can aim a wildcard socket at besides node addresses.
    `link_local` maps "node"/"pod" to the node's fe80:: addresses on the interfaces those
    classes arrive on: on-link neighbours (and pods, over their veth) reach an IPv6
    wildcard socket there even when the node has no other IPv6 address.
    `interface_addresses` (interface -> addresses, `ip addr` order) lets the evaluator
    follow a REDIRECT instead of calling it uncertain; `interface_networks` (interface ->
    "addr/prefixlen") decides reverse path filters for on-link sources."""
    link_local = link_local or {}
    extra = {"node": tuple(link_local.get("node", ())),
             "pod": (*pod_gateways, *link_local.get("pod", ()))}
    # a frozenset once: evaluate() takes it as is instead of building one per packet
    local = frozenset((*node_addresses, *extra["node"], *extra["pod"], "127.0.0.1", "::1",
                       *(a for addrs in (interface_addresses or {}).values() for a in addrs)))
    out = []
    shared: dict[tuple, tuple[dict, dict]] = {}
    #: equal walks share one frozenset: 10,000 listeners behind the same chains would
    #: otherwise hold 30,000 copies (16 MB at 50,000 rules) in the memo
    walks: dict[frozenset, frozenset] = {}
    old: dict[tuple, tuple[tuple[dict, dict], frozenset]] = {}
    new: dict[tuple, tuple[tuple[dict, dict], frozenset]] = {}
    changed: set | None = None  # chain keys that differ from the memo's ruleset
    changed_keys: set[int] = set()  # exact set lookups whose answer changed
    if memo is not None and ruleset.fingerprint:
        key = (tuple(node_addresses), tuple(sorted(extra.items())),
               tuple(sorted((k, tuple(v)) for k, v in (interface_addresses or {}).items())),
               tuple(sorted((k, tuple(v)) for k, v in (interface_networks or {}).items())),
               tuple(node_cidrs),
               tuple(pod_cidrs), tuple(pod_interfaces), node_interface)
        if memo.fingerprint == ruleset.fingerprint:
            sigs, layout = memo.chains, memo.layout
            changed = set()
        else:
            sigs, layout = chain_signatures(ruleset, memo.chains)
            if memo.key == key and layout == memo.layout:
                changed = _changed_chains(memo.chains, sigs)
                changed_keys = _changed_sets(memo.sets, ruleset.sets, changed)
        if memo.key == key and changed is not None:
            old = memo.entries
        memo.key, memo.entries, memo.fingerprint = key, new, ruleset.fingerprint
        memo.chains, memo.layout, memo.sets = sigs, layout, ruleset.sets
    for s in sockets:
        skey = (s.protocol, s.family, s.address, s.port, s.interface, s.v6only)
        hit = new.get(skey)
        if hit is None:
            hit = old.get(skey)
            if hit is not None and ((changed and not hit[1].isdisjoint(changed)) or (
                    changed_keys and any(k in changed_keys for k in hit[2]))):
                hit = None  # a chain or set lookup its walks went through changed
                memo.reevaluated += 1  # type: ignore[union-attr]
        if hit is not None:
            new[skey] = hit
            memo.hits += 1  # type: ignore[union-attr]  # old/new are empty without a memo
            out.append(Reach(s, *hit[0]))
            continue
        walked: set | None = set() if memo is not None and ruleset.fingerprint else None
        ip = ipaddress.ip_address(s.address)
        # A dual-stack [::] socket (v6only off) also takes IPv4 connections, which pass the
        # IPv4 ruleset: both families are asked.
        fams = (6, 4) if s.family == 6 and ip.is_unspecified and not s.v6only else (s.family,)
        classes = _bound_classes(s.interface, pod_interfaces)
        verdicts: dict[str, Verdict] = {}
        where: dict[str, str] = {}
        for cls in classes:
            if cls != "loopback" and ip.is_loopback:
                continue
            best: Verdict | None = None
            for fam in fams:
                src, iif = _source(cls, fam, node_cidrs, pod_cidrs, pod_interfaces,
                                   node_interface)
                if s.interface and s.interface != "lo":
                    iif = s.interface
                if cls == "loopback":
                    cand = [src if ip.is_unspecified else s.address]
                elif ip.is_unspecified:
                    cand = [a for a in (*node_addresses, *extra.get(cls, ()))
                            if ipaddress.ip_address(a).version == fam]
                else:
                    cand = [s.address]
                for dst in cand:
                    # a link-local destination is reached from the neighbour's own fe80::
                    sa = "fe80::10" if dst.startswith("fe80") and cls != "loopback" else src
                    if cls == "loopback" and not ipaddress.ip_address(dst).is_loopback:
                        sa = dst  # a local connect to a node address leaves from it
                    v = evaluate(ruleset, Packet(fam, sa, dst, s.protocol, s.port, iif=iif),
                                 local_addresses=local, path="input",
                                 interface_addresses=interface_addresses,
                                 interface_networks=interface_networks, visited=walked)
                    if best is None or _RANK[v.action] > _RANK[best.action]:
                        best, where[cls] = v, dst
            if best is not None:
                verdicts[cls] = best
        pair = (verdicts, where)
        pair = shared.setdefault(tuple((c, v, where.get(c)) for c, v in verdicts.items()), pair)
        if walked is not None:
            # chains and whole sets (shared between sockets), and apart the exact set
            # lookups (unique per socket: its port is in the key), 8 bytes each
            keys = array("q", sorted(k for k in walked if isinstance(k, int)))
            fw = frozenset(k for k in walked if not isinstance(k, int))
            new[skey] = (pair, walks.setdefault(fw, fw), keys)
        out.append(Reach(s, *pair))
    return out
