"""Checks: pure functions from a NodeSnapshot (plus config) to findings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import Config, Suppression
from ..gcpause import paused_gc
from ..model import Finding, NodeSnapshot
from ..ruleset.reach import ReachMemo
from .attribution import attribution_findings
from .exposure import exposure_findings, with_auth


@dataclass(frozen=True)
class CheckResult:
    findings: tuple[Finding, ...]
    suppressed: tuple[tuple[Finding, Suppression], ...]
    #: Per-socket firewall verdicts (ruleset.reach.Reach), when the snapshot had a ruleset.
    reach: tuple = ()


def split_suppressed(findings: list[Finding],
                     suppressions: tuple[Suppression, ...]) -> CheckResult:
    kept, muted = [], []
    for f in findings:
        rule = next((s for s in suppressions if s.matches(f.id, f.port, f.component)), None)
        if rule is None:
            kept.append(f)
        else:
            muted.append((f, rule))
    return CheckResult(tuple(kept), tuple(muted))


def sort_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (-f.severity, f.id, f.port or 0, f.address))


def with_findings(result: CheckResult, extra: list[Finding],
                  suppressions: tuple[Suppression, ...]) -> CheckResult:
    """`result` plus findings from another check stage, suppressed and sorted the same way."""
    if not extra:
        return result
    more = split_suppressed(extra, suppressions)
    return CheckResult(tuple(sort_findings([*result.findings, *more.findings])),
                       result.suppressed + more.suppressed, result.reach)


def run_checks(snapshot: NodeSnapshot, config: Config,
               memo: ReachMemo | None = None) -> CheckResult:
    """Bind-scope checks, the firewall stage when the snapshot carries a ruleset, and the
    cluster checks (encryption, Calico) when it carries the cluster's facts. `memo` lets
    a daemon reuse verdicts while the ruleset is unchanged."""
    reach: tuple = ()
    with paused_gc():
        findings = exposure_findings(snapshot, config.catalog)
        findings += attribution_findings(snapshot)
        if snapshot.ruleset is not None:
            from .firewall import analyse, mitigate

            fw = analyse(snapshot, config, snapshot.ruleset, memo)
            findings = (mitigate(findings, fw.reach, config.catalog)
                        + with_auth(list(fw.findings), snapshot, config.catalog))
            reach = fw.reach
        if snapshot.cluster is not None:
            from ..clusterscan import check_cluster_scan

            findings += check_cluster_scan(snapshot.cluster)
        if snapshot.ruleset_unavailable or (snapshot.ruleset is not None
                                            and snapshot.ruleset.problems):
            from .firewall import problem_findings

            findings += problem_findings(snapshot)  # NW206
    result = split_suppressed(sort_findings(findings), config.suppress)
    return dataclasses.replace(result, reach=reach)
