"""The firewall stage of the checks: every socket of the snapshot through the snapshot's
ruleset (verdict per source class), the NW2xx findings, and what the firewall changes about
the bind-scope findings.

Pure over the snapshot (the ruleset was read by the collector). A bind-scope finding stays
a finding when the firewall closes the path (the bind is still wider than it should be, and
one flushed ruleset away from exposure) but drops to low, with the blocking rules as
evidence; when the firewall leaves the path open, the evidence says which rules let it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..catalog import Catalog
from ..config import Config
from ..model import Finding, NodeSnapshot, Severity, Socket
from ..ruleset.model import Problem, Ruleset
from ..ruleset.reach import Reach, ReachMemo, reachability
from ..scope import has_pod_interfaces
from .reachability import ALLOWED, Role, evidence, findings


@dataclass(frozen=True)
class ReachResult:
    reach: tuple[Reach, ...]
    findings: tuple[Finding, ...]


def node_interface(snap: NodeSnapshot) -> str:
    for i in snap.interfaces:
        if i.name != "lo" and not i.pod_facing and i.up and i.addresses:
            return i.name
    return "eth0"


def roles(snap: NodeSnapshot, catalog: Catalog) -> dict[Socket, Role]:
    """Role of every socket the catalog identifies as its component (a squatter on a
    component's port has none: it is an unidentified host service, and NW104's)."""
    out = {}
    for s in snap.sockets:
        ident = catalog.identify(s.protocol, s.port, s.process)
        c = ident.component
        if c is not None and not ident.unexpected_process:
            out[s] = Role(
                c.name, c.severity, ALLOWED.get(c.max_scope, ALLOWED["node"]))
    return out


def analyse(snap: NodeSnapshot, cfg: Config, ruleset: Ruleset,
            memo: ReachMemo | None = None) -> ReachResult:
    node_addrs = [a.address for i in snap.interfaces if i.name != "lo" and not i.pod_facing
                  for a in i.addresses if not a.address.startswith("fe80")]
    gateways = [a.address for i in snap.interfaces if i.pod_facing
                for a in i.addresses if not a.address.startswith("fe80")]
    link_local = {"node": [a.address for i in snap.interfaces
                           if i.name != "lo" and not i.pod_facing and i.up
                           for a in i.addresses if a.address.startswith("fe80")],
                  "pod": [a.address for i in snap.interfaces if i.pod_facing and i.up
                          for a in i.addresses if a.address.startswith("fe80")]}
    pod_ifs = [p for p in cfg.pod_interfaces
               if any(i.pod_facing and i.name.startswith(p.rstrip("*+")) for i in snap.interfaces)]
    pod_ifs = pod_ifs or list(cfg.pod_interfaces[:1])
    node_if = node_interface(snap)
    pod_if = next((i.name for i in snap.interfaces if i.pod_facing), "cali0")
    # the pod class arrives on a real pod-facing interface when there is one
    concrete = [pod_if] if any(i.pod_facing for i in snap.interfaces) else []
    reach = reachability(snap.sockets, ruleset, node_addresses=node_addrs,
                         node_cidrs=[str(n) for n in cfg.node_cidrs],
                         pod_cidrs=[str(n) for n in cfg.pod_cidrs],
                         pod_interfaces=[*concrete, *pod_ifs], node_interface=node_if,
                         memo=memo, pod_gateways=gateways, link_local=link_local,
                         interface_addresses={i.name: [a.address for a in i.addresses]
                                              for i in snap.interfaces},
                         interface_networks={i.name: [f"{a.address}/{a.prefixlen}"
                                                      for a in i.addresses]
                                             for i in snap.interfaces})
    found = findings(reach, ruleset, roles(snap, cfg.catalog),
                     pod_cidrs=[str(n) for n in cfg.pod_cidrs], pod_interface=pod_if,
                     node_interface=node_if,
                     pods=bool(cfg.pod_cidrs) or has_pod_interfaces(snap.interfaces))
    return ReachResult(tuple(reach), tuple(found))


#: Findings the firewall stage produces: while it cannot run (or runs on part of the
#: ruleset) the daemon keeps their last state, marked stale, instead of resolving them.
STAGE_IDS = frozenset({"NW201", "NW202", "NW203", "NW204", "NW205"})


def stage_problems(snap: NodeSnapshot) -> tuple[Problem, ...]:
    """Why the firewall stage could not run (no ruleset) or ran on part of the ruleset."""
    if snap.ruleset is not None:
        return tuple(snap.ruleset.problems)
    return tuple(snap.ruleset_unavailable)


def problem_findings(snap: NodeSnapshot) -> list[Finding]:
    """NW206 per failed read: an operator must see that the NW2xx verdicts are missing
    (or built on part of the ruleset), never a silent note. One per source (command or
    file), the source as its component so a suppression can name it."""
    partial = snap.ruleset is not None
    by_source: dict[str, list[Problem]] = {}
    for p in stage_problems(snap):
        by_source.setdefault(p.source, []).append(p)
    out = []
    for source, probs in by_source.items():
        first = probs[0]
        what = "only partly evaluated" if partial else "could not be evaluated"
        out.append(Finding(
            "NW206", Severity.MEDIUM, f"the firewall {what}: {source}: {first.reason}",
            "Make the ruleset readable by nodeward (root or CAP_NET_ADMIN, the iptables/nft "
            "tools installed) or fix the rule named in the evidence; until then the NW2xx "
            "findings are missing or stale.", component=source, scope="firewall",
            evidence={"source": source, "partial": partial,
                      "problems": [{"reason": p.reason, "line": p.line} for p in probs]}))
    return out


def stale_findings(previous: Iterable[Finding], current: Iterable[Finding],
                   problems: Sequence[Problem]) -> list[Finding]:
    """The firewall-stage findings of the last cycle that this cycle lacks, when this
    cycle's stage failed or ran partially (`problems`): kept, marked stale, rather than
    resolved (a ruleset nobody could read closed nothing). Empty when the stage ran."""
    if not problems:
        return []
    now = {f.key for f in current}
    why = "; ".join(str(p) for p in problems)
    return [dataclasses.replace(f, evidence={**f.evidence, "stale": why})
            for f in previous if f.id in STAGE_IDS and f.key not in now]


#: Bind-scope findings and the source classes whose path they are about (None: every
#: class the component's max_scope does not allow).
MITIGABLE = {"NW102": None, "NW103": frozenset({"pod"})}


def mitigate(found: list[Finding], reach: tuple[Reach, ...], catalog: Catalog) -> list[Finding]:
    """Bind-scope findings (NW102, NW103) annotated with what the firewall does on their
    path; dropped to low when it certainly closes it for every class concerned."""
    by_socket = {(r.socket.protocol, r.socket.address, r.socket.port): r for r in reach}
    out = []
    for f in found:
        r = by_socket.get((f.protocol, f.address, f.port))
        if f.id not in MITIGABLE or r is None:
            out.append(f)
            continue
        classes = MITIGABLE[f.id]
        if classes is None:
            comp = catalog.get(f.component)
            allowed = ALLOWED.get(comp.max_scope if comp else "node", ALLOWED["node"])
            classes = frozenset(r.verdicts) - allowed
        concerned = {c: r.verdicts[c] for c in classes if c in r.verdicts}
        if not concerned:
            out.append(f)
            continue
        fw = {c: {"action": v.action, **evidence(v, r.destinations.get(c, ""))}
              for c, v in sorted(concerned.items())}
        closed = all(not v.reachable and v.certain for v in concerned.values())
        if closed:
            out.append(dataclasses.replace(
                f, severity=Severity.LOW,
                title=f"{f.title}; the firewall closes it from {', '.join(sorted(concerned))}",
                evidence={**f.evidence, "firewall": fw,
                          "severity_without_firewall": str(f.severity)}))
        else:
            out.append(dataclasses.replace(f, evidence={**f.evidence, "firewall": fw}))
    return out
