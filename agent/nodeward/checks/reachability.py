"""Reachability findings (NW2xx): sensitive ports the live firewall lets the wrong sources
reach, and node-level bypass paths. Pure: reach results and a sensitive-port list in.

    NW201  a sensitive component is reachable from the pod network
    NW202  a sensitive component is reachable from anywhere (outside node and pod networks)
    NW203  pods reach a host service on the node's own (non-pod-facing) address
    NW204  pods reach the cloud metadata endpoint through FORWARD
    NW205  INPUT policy ACCEPT and no rule covers the sensitive ports
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..model import Finding, Severity
from ..ruleset.evaluate import evaluate, hook_chains
from ..ruleset.model import Packet, Ruleset, Verdict
from ..ruleset.reach import Reach

Sensitive = tuple[str, int, str, Severity]  # (protocol, port, component, severity)
METADATA = (("169.254.169.254", 4), ("fd00:ec2::254", 6))


def _ev(v: Verdict, dst: str) -> dict:
    return {"destination": dst, "certain": v.certain, "reasons": list(v.reasons),
            "rule_path": [str(s) for s in v.trace]}


def findings(reach: Iterable[Reach], ruleset: Ruleset, sensitive: Sequence[Sensitive], *,
             pod_cidrs: Sequence[str] = (), pod_interface: str = "cali0",
             node_interface: str = "eth0") -> list[Finding]:
    index = {(p, port): (comp, sev) for p, port, comp, sev in sensitive}
    out: list[Finding] = []
    for r in reach:
        s = r.socket
        hit = index.get((s.protocol, s.port))
        if hit is None:
            continue
        comp, sev = hit
        for cls, fid, title in (("pod", "NW201", "reachable from the pod network"),
                                ("anywhere", "NW202", "reachable from anywhere")):
            v = r.verdicts.get(cls)
            if v is not None and v.reachable:
                out.append(Finding(
                    fid, sev, f"{comp} {title} through the firewall",
                    f"Drop or reject {s.protocol}/{s.port} from {cls} sources in INPUT.",
                    component=comp, protocol=s.protocol, address=s.address, port=s.port,
                    scope=cls, evidence=_ev(v, r.destinations.get(cls, ""))))
        v = r.verdicts.get("pod")
        dst = r.destinations.get("pod", "")
        if v is not None and v.reachable and dst:
            out.append(Finding(
                "NW203", Severity.MEDIUM if sev < Severity.HIGH else sev,
                f"pods reach host service {comp} on node address {dst}",
                "Pods should not reach host ports on node addresses; add an INPUT rule for "
                "pod-facing interfaces.", component=comp, protocol=s.protocol, address=dst,
                port=s.port, scope="pod", evidence=_ev(v, dst)))
    src = "10.244.0.10"
    for c in pod_cidrs:
        if ":" not in c:
            src = c.split("/")[0].rsplit(".", 1)[0] + ".10"
            break
    for meta, fam in METADATA:
        psrc = src if fam == 4 else "fd00:244::10"
        v = evaluate(ruleset, Packet(fam, psrc, meta, "tcp", 80, iif=pod_interface,
                                     oif=node_interface), path="forward")
        if v.reachable:
            out.append(Finding(
                "NW204", Severity.HIGH, f"pods reach the metadata endpoint {meta} via FORWARD",
                "Drop pod traffic to the metadata endpoint in FORWARD (or use IMDSv2 hop "
                "limit 1).", protocol="tcp", address=meta, port=80, scope="pod",
                evidence=_ev(v, meta)))
    for fam in (4, 6):
        chains = hook_chains(ruleset, "input", fam)
        if not chains or any((c.policy or "ACCEPT") != "ACCEPT" for _, c in chains):
            continue
        covered = {(p, port) for p, port, _, _ in sensitive
                   if any(m.op in ("dport", "port") and any(lo <= port <= hi for lo, hi in m.args)
                          for _, c in chains for rule in c.rules for m in rule.matches)}
        missing = [f"{p}/{port}" for p, port, _, _ in sensitive if (p, port) not in covered]
        if missing:
            out.append(Finding(
                "NW205", Severity.MEDIUM, f"INPUT policy ACCEPT (IPv{fam}) and no rule covers "
                "the sensitive ports", "Add INPUT rules for the sensitive ports or set the "
                "policy to DROP with explicit allows.", scope="input",
                evidence={"family": fam, "uncovered": missing}))
    return out
