"""Reachability findings (NW2xx): what the live firewall lets the wrong sources reach, and
node-level bypass paths. Pure: reach results and each socket's role in.

    NW201  a component is reachable from the pod network, beyond its catalog max_scope
    NW202  a component is reachable from anywhere (outside node and pod networks), beyond
           its catalog max_scope
    NW203  pods reach an unidentified host service through the node's own stack (the
           bypass NetworkPolicy does not cover); identified components are NW201's
    NW204  pods reach the cloud metadata endpoint through FORWARD
    NW205  INPUT policy ACCEPT and no rule covers the sensitive ports (rules of every
           chain INPUT jumps or goes to, and the port keys of its verdict maps, count)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..model import Finding, Severity, Socket
from ..ruleset.evaluate import evaluate, hook_chains
from ..ruleset.model import Chain, Packet, Rule, Ruleset, Table, Verdict
from ..ruleset.reach import CLASSES, Reach

METADATA = (("169.254.169.254", 4), ("fd00:ec2::254", 6))
#: Source classes a component may be reached from, per catalog max_scope.
ALLOWED = {"loopback": frozenset({"loopback"}),
           "node-private": frozenset({"loopback", "node"}),
           "node": frozenset({"loopback", "node"}),
           "any": frozenset(CLASSES)}


@dataclass(frozen=True)
class Role:
    """What the catalog says about one listening socket."""

    component: str
    severity: Severity
    allowed: frozenset[str]  # source classes that may reach it

    @property
    def sensitive(self) -> bool:
        return self.allowed != ALLOWED["any"]


def evidence(v: Verdict, dst: str) -> dict:
    return {"destination": dst, "certain": v.certain, "reasons": list(v.reasons),
            "rule_path": [str(s) for s in v.trace]}


def findings(reach: Iterable[Reach], ruleset: Ruleset, roles: Mapping[Socket, Role], *,
             pod_cidrs: Sequence[str] = (), pod_interface: str = "cali0",
             node_interface: str = "eth0", pods: bool = True) -> list[Finding]:
    """`roles` maps the sockets the catalog identifies to their Role; a socket without
    one is an unidentified host service. `pods` False (no pod-facing interface
    and no pod CIDR: nothing suggests this node hosts pods) leaves out the pod paths."""
    out: list[Finding] = []
    sensitive_ports: dict[tuple[str, int, int], None] = {}  # (protocol, port, family)
    for r in reach:
        s = r.socket
        role = roles.get(s)
        if role is not None:
            if role.sensitive and not s.address.startswith(("127.", "::1")):
                dual = s.address == "::" and not s.v6only
                for fam in ((4, 6) if dual else (s.family,)):
                    sensitive_ports[(s.protocol, s.port, fam)] = None
            out += _component_findings(r, role, pods)
            continue
        v = r.verdicts.get("pod") if pods else None
        dst = r.destinations.get("pod", "")
        if v is not None and v.reachable:
            proc = s.process.name if s.process else ""
            what = f"{proc} ({s.protocol}/{s.port})" if proc else f"{s.protocol}/{s.port}"
            out.append(Finding(
                "NW203", Severity.MEDIUM, f"pods reach host service {what} on {dst}",
                "Pods reach host ports through the node's own network stack, which "
                "NetworkPolicy does not cover: bind the service to loopback or the node "
                "address it needs, or drop pod sources to it in INPUT.",
                protocol=s.protocol, address=dst, port=s.port, scope="pod",
                pid=s.process.pid if s.process else None, process=proc,
                evidence={**evidence(v, dst), "bind": s.address}))
    if pods:
        out += _metadata_findings(ruleset, pod_cidrs, pod_interface, node_interface)
    out += _policy_findings(ruleset, list(sensitive_ports))
    return out


def _component_findings(r: Reach, role: Role, pods: bool) -> list[Finding]:
    s = r.socket
    out = []
    for cls, fid, title in (("pod", "NW201", "reachable from the pod network"),
                            ("anywhere", "NW202", "reachable from anywhere")):
        v = r.verdicts.get(cls) if pods or cls != "pod" else None
        if v is not None and v.reachable and cls not in role.allowed:
            out.append(Finding(
                fid, role.severity, f"{role.component} {title} through the firewall",
                f"Drop or reject {s.protocol}/{s.port} from {cls} sources in INPUT (or bind "
                f"{role.component} narrower).", component=role.component,
                protocol=s.protocol, address=s.address, port=s.port, scope=cls,
                pid=s.process.pid if s.process else None,
                process=s.process.name if s.process else "",
                evidence=evidence(v, r.destinations.get(cls, ""))))
    return out


def _metadata_findings(ruleset: Ruleset, pod_cidrs: Sequence[str], pod_interface: str,
                       node_interface: str) -> list[Finding]:
    src = "10.244.0.10"
    for c in pod_cidrs:
        if ":" not in c:
            src = c.split("/")[0].rsplit(".", 1)[0] + ".10"
            break
    out = []
    for meta, fam in METADATA:
        psrc = src if fam == 4 else "fd00:244::10"
        v = evaluate(ruleset, Packet(fam, psrc, meta, "tcp", 80, iif=pod_interface,
                                     oif=node_interface), path="forward")
        if v.reachable:
            out.append(Finding(
                "NW204", Severity.HIGH, f"pods reach the metadata endpoint {meta} via FORWARD",
                "Drop pod traffic to the metadata endpoint in FORWARD (or use IMDSv2 hop "
                "limit 1).", protocol="tcp", address=meta, port=80, scope="pod",
                evidence=evidence(v, meta)))
    return out


def _policy_findings(ruleset: Ruleset,
                     sensitive_ports: Sequence[tuple[str, int, int]]) -> list[Finding]:
    """Per family with sensitive sockets beyond loopback: INPUT accepts by default (or
    there is no INPUT chain) and no rule even mentions those ports."""
    out = []
    for fam in (4, 6):
        sensitive = [(p, port) for p, port, f in sensitive_ports if f == fam]
        chains = hook_chains(ruleset, "input", fam)
        if any((c.policy or "ACCEPT") != "ACCEPT" for _, c in chains):
            continue
        rules = [rule for t, c in chains for rule in reachable_rules(t, c, ruleset)]
        ports = [rng for rule in rules for rng in _rule_ports(rule, ruleset)]
        covered = {(p, port) for p, port in sensitive
                   if any(lo <= port <= hi for lo, hi in ports)}
        missing = [f"{p}/{port}" for p, port in sensitive if (p, port) not in covered]
        if missing:
            what = "INPUT policy ACCEPT" if chains else "no INPUT chain at all"
            out.append(Finding(
                "NW205", Severity.MEDIUM, f"{what} (IPv{fam}) and no rule covers the "
                "sensitive ports", "Add INPUT rules for the sensitive ports or set the "
                "policy to DROP with explicit allows.", scope="input",
                evidence={"family": fam, "uncovered": missing,
                          "input_chains": [f"{t.frontend} {t.name} {c.name}"
                                           for t, c in chains]}))
    return out


def reachable_rules(table: Table, chain: Chain, ruleset: Ruleset) -> list[Rule]:
    """Every rule of `chain` and of the chains it jumps or goes to (directly, through an
    nft verdict map, or further down), each chain once: what a packet on that hook can
    meet."""
    out: list[Rule] = []
    seen = {chain.name}
    todo = [chain]
    while todo:
        c = todo.pop()
        for rule in c.rules:
            out.append(rule)
            targets = [rule.arg] if rule.target in ("JUMP", "GOTO") else []
            if rule.target == "VMAP" and rule.vmap:
                m = rule.vmap[1]
                m = ruleset.sets.get(m) if isinstance(m, str) else m
                for _, verdict in (m.elements if m is not None else ()):
                    kind, _, name = verdict.partition(" ")
                    if kind in ("JUMP", "GOTO"):
                        targets.append(name)
            for name in targets:
                nxt = table.chains.get(name)
                if nxt is not None and name not in seen:
                    seen.add(name)
                    todo.append(nxt)
    return out


def _rule_ports(rule: Rule, ruleset: Ruleset) -> list[tuple[int, int]]:
    """Destination port ranges a rule names: its port matches, and the port fields of the
    set or map it looks up by destination port."""
    out = [rng for m in rule.matches if m.op in ("dport", "port") for rng in m.args]
    lookups = [(m.args[0], m.args[1]) for m in rule.matches if m.op == "lookup"]
    if rule.target == "VMAP" and rule.vmap:
        lookups.append(rule.vmap)
    for sels, name in lookups:
        if not any(sel.endswith("dport") for sel in sels):
            continue
        m = ruleset.sets.get(name) if isinstance(name, str) else name
        for key, _ in (m.elements if m is not None else ()):
            for sel, (lo, hi) in zip(sels, key, strict=False):
                if sel.endswith("dport") and isinstance(lo, int):
                    out.append((lo, hi))
    return out
