"""Glue between the scan and the ruleset evaluator: verdicts per socket and source class
through the live firewall, the NW2xx findings, and `--explain PORT` text."""

from __future__ import annotations

from dataclasses import dataclass

from .catalog import Catalog
from .checks.reachability import findings as reach_findings
from .collect.ruleset import collect_ruleset
from .config import Config
from .model import Finding, NodeSnapshot
from .ruleset.errors import RulesetParseError
from .ruleset.reach import Reach, reachability


@dataclass(frozen=True)
class ReachResult:
    reach: tuple[Reach, ...]
    findings: tuple[Finding, ...]
    notes: tuple[str, ...]


def _node_interface(snap: NodeSnapshot) -> str:
    for i in snap.interfaces:
        if i.name != "lo" and not i.pod_facing and i.up and i.addresses:
            return i.name
    return "eth0"


def sensitive(snap: NodeSnapshot, catalog: Catalog) -> list[tuple]:
    """(protocol, port, component, severity) of identified components that should not be
    reachable from everywhere (catalog max_scope other than `any`)."""
    out = {}
    for s in snap.sockets:
        ident = catalog.identify(s.protocol, s.port, s.process)
        c = ident.component
        if c is not None and not ident.unexpected_process and c.max_scope != "any":
            out[(s.protocol, s.port)] = (s.protocol, s.port, c.name, c.severity)
    return list(out.values())


def run(snap: NodeSnapshot, cfg: Config) -> ReachResult:
    try:
        rs = collect_ruleset()
    except RulesetParseError as e:
        return ReachResult((), (), (f"ruleset not evaluated: {e}",))
    node_addrs = [a.address for i in snap.interfaces if i.name != "lo" and not i.pod_facing
                  for a in i.addresses if not a.address.startswith("fe80")]
    pod_ifs = [p for p in cfg.pod_interfaces
               if any(i.pod_facing and i.name.startswith(p.rstrip("*+")) for i in snap.interfaces)]
    pod_ifs = pod_ifs or list(cfg.pod_interfaces[:1])
    node_if = _node_interface(snap)
    reach = reachability(snap.sockets, rs, node_addresses=node_addrs,
                         node_cidrs=[str(n) for n in cfg.node_cidrs],
                         pod_cidrs=[str(n) for n in cfg.pod_cidrs],
                         pod_interfaces=pod_ifs, node_interface=node_if)
    pod_if = next((i.name for i in snap.interfaces if i.pod_facing), "cali0")
    found = reach_findings(reach, rs, sensitive(snap, cfg.catalog),
                           pod_cidrs=[str(n) for n in cfg.pod_cidrs], pod_interface=pod_if,
                           node_interface=node_if)
    return ReachResult(tuple(reach), tuple(found), tuple(rs.notes))


def explain(result: ReachResult, port: int) -> str:
    lines = []
    for r in result.reach:
        if r.socket.port != port:
            continue
        s = r.socket
        lines.append(f"{s.protocol} {s.address}:{s.port}")
        for cls, v in r.verdicts.items():
            dst = r.destinations.get(cls, "")
            sure = "" if v.certain else f"  (uncertain: {'; '.join(v.reasons)})"
            lines.append(f"  from {cls:<8} to {dst}: {v.action}{sure}")
            lines += [f"    {step}" for step in v.trace] or ["    (no rule: no table)"]
    if not lines:
        return f"nothing listens on port {port}\n"
    return "\n".join(lines) + "\n"
