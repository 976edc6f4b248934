"""Checks: pure functions from a NodeSnapshot (plus config) to findings."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config, Suppression
from ..gcpause import paused_gc
from ..model import Finding, NodeSnapshot
from .exposure import exposure_findings


@dataclass(frozen=True)
class CheckResult:
    findings: tuple[Finding, ...]
    suppressed: tuple[tuple[Finding, Suppression], ...]


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
                       result.suppressed + more.suppressed)


def run_checks(snapshot: NodeSnapshot, config: Config) -> CheckResult:
    with paused_gc():
        findings = exposure_findings(snapshot, config.catalog)
    return split_suppressed(sort_findings(findings), config.suppress)
