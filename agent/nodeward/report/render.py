"""Render a scan as a JSON document, JSON lines, or a terminal table (pure)."""

from __future__ import annotations

import json
import shutil
from typing import Any

from ..catalog import Catalog
from ..checks import CheckResult
from ..model import NodeSnapshot, Socket


def socket_dict(s: Socket, catalog: Catalog) -> dict[str, Any]:
    ident = catalog.identify(s.protocol, s.port, s.process)
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
    return {
        "node": snapshot.node,
        "scanned_at": snapshot.scanned_at,
        "socket_source": snapshot.socket_source,
        "notes": list(snapshot.notes),
        "summary": {"sockets": len(snapshot.sockets), "findings": len(result.findings),
                    "by_severity": counts, "suppressed": len(result.suppressed)},
        "firewall_evaluated": snapshot.ruleset is not None,
        "sockets": [_with_reach(socket_dict(s, catalog), reach.get(s))
                    for s in snapshot.sockets],
        "findings": [f.to_dict() for f in result.findings],
        "suppressed": [{**f.to_dict(), "reason": s.reason} for f, s in result.suppressed],
    }


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
        lines.append(json.dumps(d, default=str, separators=(",", ":")))
    return "".join(line + "\n" for line in lines)


def _table(headers: list[str], rows: list[list[str]], width: int) -> list[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    # Let the last column take what is left of the terminal and truncate it there.
    fixed = sum(widths[:-1]) + 2 * (len(widths) - 1)
    last = max(20, width - fixed)
    widths[-1] = min(widths[-1], last)

    def fmt(cells: list[str]) -> str:
        out = []
        for i, c in enumerate(cells):
            if i == len(cells) - 1:
                out.append(c if len(c) <= widths[i] else c[: widths[i] - 1] + "…")
            else:
                out.append(c.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return [fmt(headers)] + [fmt(r) for r in rows]


def _endpoint(address: str, port: int | None) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}" if port is not None else host


def to_table(snapshot: NodeSnapshot, result: CheckResult, catalog: Catalog,
             width: int | None = None) -> str:
    width = width or shutil.get_terminal_size((120, 24)).columns
    lines = [f"node {snapshot.node}  scanned {snapshot.scanned_at}  "
             f"sockets {len(snapshot.sockets)} (via {snapshot.socket_source})"]
    lines += [f"note: {n}" for n in snapshot.notes]
    lines.append("")
    rows = []
    reach = _reach_index(result)
    fw = snapshot.ruleset is not None
    for s in snapshot.sockets:
        d = socket_dict(s, catalog)
        proc = f"{d['process']}({d['pid']})" if d["pid"] else "-"
        r = reach.get(s)
        rows.append([s.protocol, _endpoint(s.address, s.port), d["scope"] +
                     (f"({d['interface']})" if d["interface"] else ""),
                     *([reach_cell(r) if r is not None else "-"] if fw else []),
                     d["component"] or "-", proc])
    lines += _table(["PROTO", "LISTEN", "SCOPE", *(["REACHABLE FROM"] if fw else []),
                     "COMPONENT", "PROCESS"], rows, width)
    lines.append("")
    if result.findings:
        rows = [[str(f.severity).upper(), f.id, f.component or "-",
                 _endpoint(f.address, f.port), f.title] for f in result.findings]
        lines += _table(["SEVERITY", "ID", "COMPONENT", "WHERE", "FINDING"], rows, width)
    else:
        lines.append("no findings")
    if result.suppressed:
        lines.append(f"{len(result.suppressed)} finding(s) suppressed by config "
                     "(see --format json)")
    return "\n".join(lines) + "\n"
