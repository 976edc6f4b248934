"""`nodeward scan --explain PORT`: the rule path deciding each source class, as text."""

from __future__ import annotations

from collections.abc import Iterable

from ..ruleset.reach import Reach


def explain(reach: Iterable[Reach], port: int) -> str:
    lines = []
    for r in reach:
        if r.socket.port != port:
            continue
        s = r.socket
        host = f"[{s.address}]" if ":" in s.address else s.address
        lines.append(f"{s.protocol} {host}:{s.port}")
        for cls, v in r.verdicts.items():
            dst = r.destinations.get(cls, "")
            sure = "" if v.certain else f"  (uncertain: {'; '.join(v.reasons)})"
            lines.append(f"  from {cls:<8} to {dst}: {v.action}{sure}")
            lines += [f"    {step}" for step in v.trace] or ["    (no rule: no table)"]
    if not lines:
        return f"nothing listens on port {port}\n"
    return "\n".join(lines) + "\n"
