"""The pure planner: snapshot + findings + config -> the agent's own rules, and their text.

Semantics, chosen so that the agent only ever *subtracts* from what the host allows:
"allow" means "not ours to block" (iptables RETURN to the caller, nft `accept` in our own
base chain, after which kube-proxy's and Calico's chains still run), and "drop" is final.
So nodeward never opens anything another controller closed, and never bypasses their chains.

Rule order in the input chain (first match wins):

    1. failsafe ports                         -> allow  (always first)
    2. loopback, ct established/related       -> allow
    3. per-component sources from enforce.allow, metadata_allow -> allow (explicit wins)
    4. traffic from a pod interface or pod CIDR -> goto the pod chain, which drops the
       metadata address and every protected port (falling off it leaves our chains)
    5. per-component default sources (control plane, etcd members, node CIDRs) -> allow
    6. every protected port                   -> drop

The forward chain drops pod traffic to the metadata address (it is routed, not local).
In audit mode each drop becomes a rate-limited LOG plus an allow that counts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .. import nfquote
from ..catalog import Catalog, Component
from ..config import Config
from ..model import Finding, NodeSnapshot
from .settings import EnforceSettings

MARKER = "nodeward"
AUDIT_PREFIX = "nodeward-audit: "
IPT_CHAINS = {"input": "NODEWARD-INPUT", "forward": "NODEWARD-FORWARD", "pod": "NODEWARD-POD"}
HOOKED = {"input": "INPUT", "forward": "FORWARD"}  # our chain -> built-in chain jumping to it
#: Where our iptables chains live: mangle INPUT/FORWARD run before filter's (priority -150),
#: DROP is legal there, and neither kube-proxy nor Felix insert into them, so nodeward's
#: jump at position 1 is never in a position fight with Felix's insert mode in filter.
IPT_TABLE = "mangle"
#: Tables earlier versions used; apply and uninstall remove our objects from them too.
IPT_OLD_TABLES = ("filter",)
NFT_TABLE = "nodeward"
NFT_PRIORITY = "filter - 10"
#: Components with these default sources besides enforce.allow (keys: catalog names).
SCOPE_DEFAULT_SOURCES = ("node", "node-private")
MULTIPORT_MAX = 15


class PlanError(ValueError):
    """The config cannot be turned into rules (one line, names the key)."""


@dataclass(frozen=True)
class Match:
    proto: str = ""  # "tcp" | "udp" | "" (any)
    dports: tuple[tuple[int, int], ...] = ()  # inclusive ranges
    saddr: str = ""  # one CIDR
    daddr: str = ""
    iif: str = ""  # interface glob: only a trailing '*' is a wildcard
    ct: tuple[str, ...] = ()  # e.g. ("established", "related")


@dataclass(frozen=True)
class Rule:
    family: int  # 4 | 6
    chain: str  # "input" | "forward" | "pod"
    match: Match
    verdict: str  # "accept" (= not ours to block) | "drop" | "goto-pod"
    comment: str


@dataclass(frozen=True)
class Plan:
    families: tuple[int, ...]
    rules: tuple[Rule, ...]
    protected: tuple[tuple[str, str, tuple[tuple[int, int], ...]], ...] = ()  # name,proto,ports
    notes: tuple[str, ...] = ()
    open_ipv6: tuple[str, ...] = ()  # with enforce.ipv6: false, what stays open over IPv6

    def chain(self, family: int, chain: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.family == family and r.chain == chain)


# -- planning -----------------------------------------------------------------------------


def _fam(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
    return net.version


def _cidr_text(net) -> str:
    """Canonical CIDR text; a /0 becomes "" (no address match: the same rule, and the text
    iptables-save and nft print back, so a /0 plan does not rewrite every cycle)."""
    n = nfquote.cidr(net)
    return "" if n.prefixlen == 0 else str(n)


def protected_components(snapshot: NodeSnapshot, catalog: Catalog,
                         findings: Sequence[Finding] = ()) -> list[tuple[Component, str,
                                                                         tuple[tuple[int, int],
                                                                               ...]]]:
    """Which (component, protocol, ports) to close.

    Strict components that should not be open to everyone (max_scope other than "any") are
    protected whether or not they listen now, so a restart does not change the firewall.
    Non-strict ones (8080, 9100, 2375 ...) share ports with ordinary software, so they are
    protected only where the snapshot identifies them, or a finding names them.
    """
    out: dict[tuple[str, str], set[tuple[int, int]]] = {}
    comps = {c.name: c for c in catalog.components}
    for c in catalog.components:
        if c.strict and c.max_scope != "any":
            for proto in sorted(c.protocols):
                out.setdefault((c.name, proto), set()).update(c.ports)
    for sock in snapshot.sockets:
        ident = snapshot.identity(sock, catalog)
        c = ident.component
        if c is not None and c.max_scope != "any" and not ident.unexpected_process:
            out.setdefault((c.name, sock.protocol), set()).add((sock.port, sock.port))
    for f in findings:
        c = comps.get(f.component)
        if c is not None and c.max_scope != "any" and f.port and f.protocol:
            out.setdefault((c.name, f.protocol), set()).add((f.port, f.port))
    result = []
    for (name, proto), ports in sorted(out.items(), key=lambda kv: (
            min(kv[1]), kv[0])):
        result.append((comps[name], proto, tuple(sorted(ports))))
    return result


def _default_sources(comp: Component, cfg: Config,
                     settings: EnforceSettings) -> tuple[tuple[str, object], ...]:
    """(why, CIDR) pairs a component is reachable from by default, beyond loopback."""
    out: list[tuple[str, object]] = []
    if comp.name == "kubelet":
        out += [("control-plane", n) for n in settings.control_plane]
        if settings.api_server is not None:
            out.append(("api-server", ipaddress.ip_network(settings.api_server[0])))
    elif comp.name in ("etcd-client", "etcd-peer"):
        out += [("etcd-members", n) for n in settings.etcd_sources]
    elif comp.name == "kube-apiserver":
        out += [("node-cidrs", n) for n in cfg.node_cidrs]
        out += [("control-plane", n) for n in settings.control_plane]
    elif comp.max_scope in SCOPE_DEFAULT_SOURCES:
        out += [("node-cidrs", n) for n in cfg.node_cidrs]
    return tuple(out)


def _port_chunks(ports: tuple[tuple[int, int], ...]) -> list[tuple[tuple[int, int], ...]]:
    """Split into groups iptables multiport accepts (15 slots, a range takes two)."""
    chunks, cur, used = [], [], 0
    for lo, hi in ports:
        need = 1 if lo == hi else 2
        if used + need > MULTIPORT_MAX:
            chunks.append(tuple(cur))
            cur, used = [], 0
        cur.append((lo, hi))
        used += need
    if cur:
        chunks.append(tuple(cur))
    return chunks


def serves_ipv6(snapshot: NodeSnapshot) -> bool:
    """The node can be reached over IPv6: an IPv6 socket not bound to loopback, or an
    IPv6 address beyond loopback and link-local on an interface."""
    if any(s.family == 6 and not ipaddress.ip_address(s.address).is_loopback
           for s in snapshot.sockets):
        return True
    for i in snapshot.interfaces:
        for a in i.addresses:
            ip = ipaddress.ip_address(a.address)
            if a.family == 6 and not (ip.is_loopback or ip.is_link_local):
                return True
    return False


def families_for(settings: EnforceSettings, snapshot: NodeSnapshot) -> tuple[int, ...]:
    """Dual-stack by default: IPv6 unless the node does not serve it or the operator said
    `enforce.ipv6: false`."""
    if settings.ipv6 is None:
        return (4, 6) if serves_ipv6(snapshot) else (4,)
    return (4, 6) if settings.ipv6 else (4,)


def open_ipv6_paths(snapshot: NodeSnapshot, protected: Sequence[tuple[Component, str,
                                                                       tuple[tuple[int, int],
                                                                             ...]]]) -> list[str]:
    """Protected components listening on IPv6 beyond loopback: what `ipv6: false` leaves."""
    out = []
    for s in snapshot.sockets:
        if s.family != 6 or ipaddress.ip_address(s.address).is_loopback:
            continue
        for comp, proto, ports in protected:
            if proto == s.protocol and any(lo <= s.port <= hi for lo, hi in ports):
                out.append(f"{comp.name} {s.protocol}/{s.port} on [{s.address}]")
                break
    return sorted(set(out))


def check_glob(glob: str) -> str:
    try:
        return nfquote.check_ifglob(glob, "pod_interfaces")
    except nfquote.UnsafeText as e:
        raise PlanError(str(e)) from None


def _open_to_all(settings: EnforceSettings, cfg: Config) -> list[str]:
    """What a /0 in an allow list does, said in the plan (it is legal, and rarely meant)."""
    notes = []
    for name, nets in sorted(settings.allow.items()):
        for n in nets:
            if n.prefixlen == 0:
                notes.append(f"enforce.allow.{name}: {n} lets every IPv{n.version} source "
                             f"reach {name}: nodeward does not protect it over IPv{n.version}")
    for n in settings.metadata_allow:
        if n.prefixlen == 0:
            notes.append(f"enforce.metadata_allow: {n} lets every IPv{n.version} pod reach "
                         "the metadata service")
    for key in ("node_cidrs",):
        for n in getattr(cfg, key):
            if n.prefixlen == 0:
                notes.append(f"{key}: {n} makes every IPv{n.version} source a node: "
                             "components open to nodes are open to everyone")
    for n in cfg.pod_cidrs:
        if n.prefixlen == 0:
            raise PlanError(f"pod_cidrs: {n} makes every source a pod, the control plane "
                            "included; refusing")
    return notes


def build_plan(snapshot: NodeSnapshot, catalog: Catalog, cfg: Config,
               settings: EnforceSettings, findings: Sequence[Finding] = ()) -> Plan:
    """The desired rules. Pure: same inputs, same plan."""
    families = families_for(settings, snapshot)
    globs = [check_glob(g) for g in cfg.pod_interfaces]
    comps = protected_components(snapshot, catalog, findings)
    known = {c.name for c in catalog.components}
    for name in settings.allow:
        if name not in known:
            raise PlanError(f"enforce.allow: {name!r} is not a catalog component")
    rules: list[Rule] = []
    notes: list[str] = _open_to_all(settings, cfg)
    failsafe = {(p, n) for p, n in cfg.failsafe_ports}
    for comp, proto, ports in comps:
        clash = [f"{proto}/{lo}" for lo, hi in ports for p, n in failsafe
                 if p == proto and lo <= n <= hi]
        if clash:
            notes.append(f"{comp.name}: failsafe {', '.join(clash)} stays open (failsafe wins)")
    for fam in families:
        def add(chain: str, match: Match, verdict: str, comment: str, fam: int = fam) -> None:
            rules.append(Rule(fam, chain, match, verdict,
                              nfquote.comment_text(f"{MARKER}: {comment}")))

        def of_family(nets: Iterable) -> list[str]:
            return [_cidr_text(n) for n in nets if _fam(n) == fam]  # noqa: B023

        def label(net: str) -> str:
            return net or ("0.0.0.0/0" if fam == 4 else "::/0")  # noqa: B023

        md = [str(a) for a in settings.metadata_addresses if a.version == fam]
        for proto, port in cfg.failsafe_ports:
            add("input", Match(proto, ((port, port),)), "accept", f"failsafe {proto}/{port}")
        add("input", Match(iif="lo"), "accept", "loopback")
        add("input", Match(ct=("established", "related")), "accept", "established")
        for comp, proto, ports in comps:
            for net in of_family(settings.allow.get(comp.name, ())):
                for chunk in _port_chunks(ports):
                    add("input", Match(proto, chunk, saddr=net), "accept",
                        f"{comp.name} allow {label(net)}")
        for net in of_family(settings.metadata_allow):
            for addr in md:
                add("input", Match(saddr=net, daddr=addr), "accept",
                    f"metadata allow {label(net)}")
        for g in globs:
            add("input", Match(iif=g), "goto-pod", f"pod interface {g}")
        for net in of_family(cfg.pod_cidrs):
            add("input", Match(saddr=net), "goto-pod", f"pod cidr {net}")
        for comp, proto, ports in comps:
            seen = set()
            for why, net in _default_sources(comp, cfg, settings):
                if _fam(net) != fam or _cidr_text(net) in seen:
                    continue
                seen.add(_cidr_text(net))
                for chunk in _port_chunks(ports):
                    add("input", Match(proto, chunk, saddr=_cidr_text(net)), "accept",
                        f"{comp.name} from {why}")
        for comp, proto, ports in comps:
            for chunk in _port_chunks(ports):
                add("input", Match(proto, chunk), "drop", f"{comp.name} closed")
        # pod chain: reached by goto, so falling off its end leaves our chains entirely
        for addr in md:
            add("pod", Match(daddr=addr), "drop", "pod to metadata")
        for comp, proto, ports in comps:
            for chunk in _port_chunks(ports):
                add("pod", Match(proto, chunk), "drop", f"pod to {comp.name}")
        # forward: pods reach the metadata service through the node's routing
        add("forward", Match(ct=("established", "related")), "accept", "established")
        for net in of_family(settings.metadata_allow):
            for addr in md:
                add("forward", Match(saddr=net, daddr=addr), "accept",
                    f"metadata allow {label(net)}")
        for addr in md:
            for g in globs:
                add("forward", Match(iif=g, daddr=addr), "drop", f"pod {g} to metadata")
            for net in of_family(cfg.pod_cidrs):
                add("forward", Match(saddr=net, daddr=addr), "drop", f"pod {net} to metadata")
    open6 = tuple(open_ipv6_paths(snapshot, comps)) if 6 not in families else ()
    return Plan(families, tuple(rules),
                tuple((c.name, p, ports) for c, p, ports in comps), tuple(notes), open6)


# -- a tiny evaluator over our own rules, for the safety checks ----------------------------


@dataclass(frozen=True)
class Packet:
    family: int
    proto: str
    dport: int
    saddr: str
    daddr: str
    iif: str
    ct: str = "new"


def _matches(m: Match, p: Packet) -> bool:
    if m.proto and m.proto != p.proto:
        return False
    if m.dports and not any(lo <= p.dport <= hi for lo, hi in m.dports):
        return False
    if m.saddr and ipaddress.ip_address(p.saddr) not in ipaddress.ip_network(m.saddr):
        return False
    if m.daddr and ipaddress.ip_address(p.daddr) not in ipaddress.ip_network(m.daddr):
        return False
    if m.iif and not (p.iif.startswith(m.iif[:-1]) if m.iif.endswith("*") else p.iif == m.iif):
        return False
    return not (m.ct and p.ct not in m.ct)


def verdict(plan: Plan, chain: str, packet: Packet) -> str:
    """What our chains do with `packet` ("accept" = left to the rest of the host)."""
    rules = plan.chain(packet.family, chain)
    for r in rules:
        if _matches(r.match, packet):
            if r.verdict == "goto-pod":
                return verdict(plan, "pod", packet)
            return r.verdict
    return "accept"


# -- rendering: iptables-restore ----------------------------------------------------------


def ipt_quote(text: str) -> str:
    """Quote exactly as iptables-save does (through the one quoting layer, nfquote)."""
    return nfquote.ipt_comment(text)


def _ipt_ports(proto: str, ports: tuple[tuple[int, int], ...]) -> str:
    if len(ports) == 1:
        lo, hi = ports[0]
        return f"-m {proto} --dport {lo}" + (f":{hi}" if hi != lo else "")
    items = ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in ports)
    return f"-m multiport --dports {items}"


def _ipt_host(cidr: str, family: int) -> str:
    net = nfquote.cidr(cidr)
    if net.version != family:
        raise PlanError(f"{cidr} is not an IPv{family} network")
    return f"{net.network_address}/{net.prefixlen}"


def _ipt_match(m: Match, family: int) -> list[str]:
    """Options in iptables-save's canonical order."""
    out = []
    if m.saddr:
        out.append(f"-s {_ipt_host(m.saddr, family)}")
    if m.daddr:
        out.append(f"-d {_ipt_host(m.daddr, family)}")
    if m.iif:
        out.append(f"-i {nfquote.ipt_iface(m.iif)}")
    if m.proto:
        out.append(f"-p {m.proto}")
    if m.ct:
        states = ",".join(s.upper() for s in sorted(m.ct, key=["invalid", "new", "related",
                                                               "established"].index))
        out.append(f"-m conntrack --ctstate {states}")
    if m.dports:
        out.append(_ipt_ports(m.proto, m.dports))
    return out


def jump_line(chain: str) -> str:
    return f"-m comment --comment {MARKER} -j {IPT_CHAINS[chain]}"


@dataclass(frozen=True)
class _Verdicts:
    """How one syntax writes a rule's verdict: `{head}` is the rule's match, `{tail}` what
    follows the verdict (nft's comment), `{rate}`/`{burst}` the audit log's limit."""

    accept: str
    goto_pod: str
    drop: str
    audit_log: str  # audit mode's log of what enforce would drop (then accepted)


_IPT_VERDICTS = _Verdicts(
    accept="{head} -j RETURN", goto_pod=f"{{head}} -g {IPT_CHAINS['pod']}",
    drop="{head} -j DROP",
    audit_log="{head} -m limit --limit {rate}/sec --limit-burst {burst} -j LOG "
              f"--log-prefix {ipt_quote(AUDIT_PREFIX)}")
_NFT_VERDICTS = _Verdicts(
    accept="{head} counter accept {tail}", goto_pod="{head} counter goto pod {tail}",
    drop="{head} counter drop {tail}",
    audit_log="{head} limit rate {rate}/second burst {burst} packets log prefix "
              f"{nfquote.nft_string(AUDIT_PREFIX)} {{tail}}")


def _verdict_lines(words: _Verdicts, verdict: str, mode: str, log_rate: int, head: str,
                   tail: str = "") -> list[str]:
    """A planned rule's lines: in audit mode what enforce would drop is logged (rate
    limited) and accepted; the same decisions for every syntax."""
    if verdict == "accept":
        forms = [words.accept]
    elif verdict == "goto-pod":
        forms = [words.goto_pod]
    elif mode == "audit":
        forms = [words.audit_log, words.accept]
    else:
        forms = [words.drop]
    return [f.format(head=head, tail=tail, rate=log_rate, burst=2 * log_rate) for f in forms]


def iptables_rule_lines(plan: Plan, family: int, mode: str, log_rate: int = 10) -> list[str]:
    """The `-A NODEWARD-*` lines, exactly as iptables-save prints them."""
    lines = []
    for chain in ("input", "pod", "forward"):
        name = IPT_CHAINS[chain]
        for r in plan.chain(family, chain):
            head = " ".join([f"-A {name}", *_ipt_match(r.match, family),
                             f"-m comment --comment {ipt_quote(r.comment)}"])
            lines += _verdict_lines(_IPT_VERDICTS, r.verdict, mode, log_rate, head)
    return lines


def render_iptables(plan: Plan, family: int, mode: str, log_rate: int = 10,
                    delete_jumps: Mapping[str, int] | None = None) -> str:
    """An `iptables-restore --noflush` payload: declaring our chains flushes them, the rules
    refill them, and the jumps are deleted (`delete_jumps`: how many exist now, per built-in
    chain) and re-inserted at position 1. Nothing else in the table is named."""
    delete_jumps = delete_jumps or {}
    out = [f"*{IPT_TABLE}"]
    out += [f":{name} - [0:0]" for name in IPT_CHAINS.values()]
    out += iptables_rule_lines(plan, family, mode, log_rate)
    for chain, builtin in HOOKED.items():
        out += [f"-D {builtin} {jump_line(chain)}"] * delete_jumps.get(builtin, 0)
        out.append(f"-I {builtin} 1 {jump_line(chain)}")
    out.append("COMMIT")
    return "\n".join(out) + "\n"


# -- rendering: nftables ------------------------------------------------------------------


def _nft_addr(cidr: str) -> str:
    net = nfquote.cidr(cidr)
    full = net.prefixlen == net.max_prefixlen
    return str(net.network_address) if full else str(net)


def _nft_match(m: Match, family: int) -> list[str]:
    ipk = "ip" if family == 4 else "ip6"
    out = []
    if m.iif:
        out.append(f"iifname {nfquote.nft_iface(m.iif)}")
    if not (m.saddr or m.daddr) and m.iif != "lo":
        out.append(f"meta nfproto ipv{family}")
    if m.saddr:
        out.append(f"{ipk} saddr {_nft_addr(m.saddr)}")
    if m.daddr:
        out.append(f"{ipk} daddr {_nft_addr(m.daddr)}")
    if m.ct:
        out.append("ct state " + ",".join(sorted(m.ct, key=["invalid", "established",
                                                           "related", "new"].index)))
    if m.dports:
        items = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in sorted(m.dports)]
        out.append(f"{m.proto} dport " + (items[0] if len(items) == 1
                                          else "{ " + ", ".join(items) + " }"))
    elif m.proto:
        out.append(f"meta l4proto {m.proto}")
    return out


def nft_rule_lines(plan: Plan, chain: str, mode: str, log_rate: int = 10) -> list[str]:
    lines = []
    families = plan.families
    seen_lo = False
    for fam in families:
        for r in plan.chain(fam, chain):
            if r.match.iif == "lo":  # family-independent: emit once
                if seen_lo:
                    continue
                seen_lo = True
            lines += _verdict_lines(_NFT_VERDICTS, r.verdict, mode, log_rate,
                                    " ".join(_nft_match(r.match, fam)),
                                    f"comment {nfquote.nft_string(r.comment)}")
    return lines


def nft_table_text(plan: Plan, mode: str, log_rate: int = 10) -> str:
    """`table inet nodeward` as `nft list table` prints it (counters as bare `counter`)."""
    out = [f"table inet {NFT_TABLE} {{"]
    chains = [("input", "input"), ("pod", None), ("forward", "forward")]
    for i, (chain, hook) in enumerate(chains):
        if i:
            out.append("")
        out.append(f"\tchain {chain} {{")
        if hook:
            out.append(f"\t\ttype filter hook {hook} priority {NFT_PRIORITY}; policy accept;")
        out += [f"\t\t{line}" for line in nft_rule_lines(plan, chain, mode, log_rate)]
        out.append("\t}")
    out.append("}")
    return "\n".join(out) + "\n"


def render_nft(plan: Plan, mode: str, log_rate: int = 10) -> str:
    """One `nft -f` transaction: create-if-missing, delete, redefine. The kernel applies the
    batch atomically, and only `table inet nodeward` is named."""
    return (f"table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n"
            + nft_table_text(plan, mode, log_rate))
