"""Render a scan as a JSON document, JSON lines, or a terminal table (pure)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ..catalog import Catalog
from ..checks import CheckResult
from ..model import Finding, NodeSnapshot, Socket
from ..redact import redact_text, scrub
from . import table
from .table import wrap_text


def socket_dict(s: Socket, catalog: Catalog,
                snapshot: NodeSnapshot | None = None) -> dict[str, Any]:
    ident = snapshot.identity(s, catalog) if snapshot is not None else \
        catalog.identify(s.protocol, s.port, s.process)
    p = s.process
    return {
        "protocol": s.protocol,
        "family": f"ipv{s.family}",
        "address": s.address,
        "port": s.port,
        "scope": str(s.scope),
        "interface": s.scope_interface,
        "bound_device": s.interface,
        "component": ident.component.name if ident.component and
        not ident.unexpected_process else "",
        "identified_by": ident.by if ident.component and not ident.unexpected_process else "",
        "pid": p.pid if p else None,
        "process": p.name if p else "",
        "exe": p.exe if p else "",
        "cmdline": list(p.cmdline) if p else [],
        "container_id": p.container_id if p else "",
        "pod_uid": p.pod_uid if p else "",
        "uid": s.uid,
        "inode": s.inode,
    }


def _reach_index(result: CheckResult) -> dict[Socket, Any]:
    """Reach results by the snapshot socket they are for (the same objects)."""
    return {r.socket: r for r in result.reach}


def firewall_dict(reach: Any) -> dict[str, Any]:
    """Per source class: the verdict, whether it is certain, and the rule that decided."""
    return {cls: {"action": v.action, "certain": v.certain,
                  "destination": reach.destinations.get(cls, ""),
                  "decided_by": str(v.trace[-1]) if v.trace else "no table"}
            for cls, v in reach.verdicts.items()}


SHORT = {"loopback": "lo", "node": "node", "pod": "pod", "anywhere": "any"}


def reach_cell(reach: Any) -> str:
    """Classes that reach the socket through the firewall, e.g. "lo node pod?"."""
    cells = [SHORT[c] + ("" if v.certain else "?") for c, v in reach.verdicts.items()
             if v.reachable]
    return " ".join(cells) or "none"


def document(snapshot: NodeSnapshot, result: CheckResult, catalog: Catalog) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for f in result.findings:
        counts[str(f.severity)] = counts.get(str(f.severity), 0) + 1
    reach = _reach_index(result)
    return scrub({
        "node": snapshot.node,
        "scanned_at": snapshot.scanned_at,
        "socket_source": snapshot.socket_source,
        "notes": list(snapshot.notes),
        "summary": {"sockets": len(snapshot.sockets), "findings": len(result.findings),
                    "by_severity": counts, "suppressed": len(result.suppressed)},
        "firewall_evaluated": snapshot.ruleset is not None,
        "derived": snapshot.derived,
        "sockets": [_with_reach(socket_dict(s, catalog, snapshot), reach.get(s))
                    for s in snapshot.sockets],
        "findings": [f.to_dict() for f in result.findings],
        "suppressed": [{**f.to_dict(), "reason": s.reason} for f, s in result.suppressed],
    })


def _with_reach(d: dict[str, Any], reach: Any) -> dict[str, Any]:
    d["firewall"] = firewall_dict(reach) if reach is not None else None
    return d


def to_json(snapshot: NodeSnapshot, result: CheckResult, catalog: Catalog,
            pretty: bool = True) -> str:
    """The scan document; indented for a human (a terminal), compact for a program: at
    10,000 sockets indenting costs 5x the encoding itself."""
    doc = document(snapshot, result, catalog)
    if pretty:
        return json.dumps(doc, indent=2, default=str) + "\n"
    return json.dumps(doc, default=str, separators=(",", ":")) + "\n"


def to_jsonl(snapshot: NodeSnapshot, result: CheckResult) -> str:
    lines = []
    for f in result.findings:
        d = {"node": snapshot.node, "scanned_at": snapshot.scanned_at, **f.to_dict()}
        lines.append(json.dumps(scrub(d), default=str, separators=(",", ":")))
    return "".join(line + "\n" for line in lines)


def _endpoint(address: str, port: int | None) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}" if port is not None else host


def _derived_value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(value[:4]) + (f" (+{len(value) - 4} more)" if len(value) > 4 else "")
    return str(value)


def _finding_group(f: Finding) -> tuple[str, str, int | None, str]:
    """Findings about one socket (or one non-socket subject) share a row."""
    return (f.protocol, f.address, f.port, f.component)


def group_findings(findings: Iterable[Finding]) -> list[list[Finding]]:
    """Findings grouped per socket/subject, worst group first, each group worst first;
    the order within equal severity is the checks' (stable)."""
    groups: dict[tuple, list[Finding]] = {}
    for f in findings:
        groups.setdefault(_finding_group(f), []).append(f)
    out = [sorted(g, key=lambda f: -f.severity) for g in groups.values()]
    return sorted(out, key=lambda g: -g[0].severity)


def _where(f: Finding) -> str:
    where = _endpoint(f.address, f.port) if f.address else (
        f"port {f.port}" if f.port is not None else "-")
    return f"{where}/{f.protocol}" if f.protocol and f.port is not None else where


def _subject(f: Finding) -> list[str]:
    """WHERE and COMPONENT of a finding row, stacked in one column to leave the width to
    the titles."""
    return [x for x in (_where(f), f.component) if x and x != "-"] or ["node"]


def _remediation_section(groups: list[list[Finding]], width: int | None) -> list[str]:
    """Per finding row, its distinct remediation texts with the IDs each one fixes."""
    lines = ["REMEDIATION"]
    for g in groups:
        by_text: dict[str, list[str]] = {}
        for f in g:
            if f.remediation:
                ids = by_text.setdefault(" ".join(f.remediation.split()), [])
                if f.id not in ids:
                    ids.append(f.id)
        if not by_text:
            continue
        lines.append("  " + " ".join(_subject(g[0])))
        for text, ids in by_text.items():
            lines += wrap_text(f"- {text} [{', '.join(ids)}]", width, "    ", "      ")
    return lines if len(lines) > 1 else []


def to_table(snapshot: NodeSnapshot, result: CheckResult, catalog: Catalog,
             width: int | None = None, *, color: bool = False,
             remediation: bool = True) -> str:
    """The scan for people. `width` None (not a terminal): nothing wraps, every finding is
    one whole line a log search finds; a width wraps cells to fit it, words whole. Nothing
    is ever cut. `color` marks severities (the caller decides: a TTY and no NO_COLOR)."""
    lines = [f"node {snapshot.node}  scanned {snapshot.scanned_at}  "
             f"sockets {len(snapshot.sockets)} (via {snapshot.socket_source})"]
    lines += [f"note: {n}" for n in snapshot.notes]
    lines += [f"derived: {k} {_derived_value(d['value'])} (from {d['source']})"
              for k, d in snapshot.derived.items()]
    lines.append("")
    rows = []
    reach = _reach_index(result)
    fw = snapshot.ruleset is not None
    for s in snapshot.sockets:
        d = socket_dict(s, catalog, snapshot)
        proc = f"{d['process']} ({d['pid']})" if d["pid"] else "-"
        r = reach.get(s)
        rows.append([f"{_endpoint(s.address, s.port)}/{s.protocol}", d["scope"] +
                     (f" ({d['interface']})" if d["interface"] else ""),
                     *([reach_cell(r) if r is not None else "-"] if fw else []),
                     d["component"] or "-", proc])
    lines += table.render(["LISTEN", "SCOPE", *(["REACHABLE FROM"] if fw else []),
                           "COMPONENT", "PROCESS"], [[[c] for c in r] for r in rows], width)
    lines.append("")
    paint = table.paint if color else table.no_paint
    if result.findings:
        counts = Counter(f.severity for f in result.findings)
        lines.append(f"FINDINGS {len(result.findings)}: " + ", ".join(
            paint(f"{counts[sev]} {sev}", sev) for sev in sorted(counts, reverse=True)))
        groups = group_findings(result.findings)
        frows = [[[table.Styled(str(g[0].severity).upper(), g[0].severity)], _subject(g[0]),
                  [f"{f.id} {f.severity}: {f.title}" for f in g]] for g in groups]
        lines += table.render(["SEVERITY", "WHERE", "FINDINGS"], frows, width, paint=paint)
        if remediation:
            lines.append("")
            lines += _remediation_section(groups, width)
    else:
        lines.append("no findings")
    if result.suppressed:
        lines.append(f"{len(result.suppressed)} finding(s) suppressed by config "
                     "(see --format json)")
    return redact_text("\n".join(lines)) + "\n"
