"""A scan as SARIF 2.1.0 (pure): one rule per finding ID, one result per finding.

Code-scanning dashboards and CI (GitHub code scanning, GitLab, Azure DevOps, SARIF viewers)
ingest SARIF; kubescape emits it too. A node is no source tree, so a result's location is
logical (node, protocol, endpoint) plus a physical `node/NAME` placeholder, because some
consumers drop results that have no physical location.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import quote

from .. import __version__
from .. import findings as registry
from ..checks import CheckResult
from ..model import Finding, NodeSnapshot, Severity

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFO_URI = "https://github.com/nodeward/nodeward"
LEVEL = {Severity.CRITICAL: "error", Severity.HIGH: "error", Severity.MEDIUM: "warning",
         Severity.LOW: "note", Severity.INFO: "note"}
#: GitHub code scanning ranks by this rule property (CVSS-like, 0.0-10.0).
SECURITY_SEVERITY = {Severity.CRITICAL: "9.5", Severity.HIGH: "8.0", Severity.MEDIUM: "5.5",
                     Severity.LOW: "3.0", Severity.INFO: "0.0"}


def _rule(fid: str, worst: Severity | None) -> dict[str, Any]:
    i = registry.info(fid)
    rule: dict[str, Any] = {
        "id": fid,
        "shortDescription": {"text": i.title},
        "helpUri": i.help_url,
        "properties": {"tags": ["security", "kubernetes", "node"] + ([i.check] if i.check
                                                                      else [])},
    }
    if i.explain:
        rule["fullDescription"] = {"text": i.explain}
    if i.fix or i.explain:
        rule["help"] = {"text": f"{i.explain}\n\nFix: {i.fix}",
                        "markdown": f"{i.explain}\n\n**Fix:** {i.fix}\n\n[More]({i.help_url})"}
    if worst is not None:
        rule["defaultConfiguration"] = {"level": LEVEL[worst]}
        rule["properties"]["security-severity"] = SECURITY_SEVERITY[worst]
    return rule


def _fingerprint(node: str, f: Finding) -> str:
    """Stable across scans (code scanning tracks a result by it): the finding's identity,
    plus the address family, which two NW205s (IPv4, IPv6) differ by alone."""
    key = "\x00".join(str(x) for x in (node, *f.key, f.evidence.get("family", "")))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _where(f: Finding) -> str:
    host = f"[{f.address}]" if ":" in f.address else f.address
    if f.port is not None:
        return f"{f.protocol or 'port'}/{host}:{f.port}" if host else f"{f.protocol}/{f.port}"
    return host or f.component or f.scope or "node"


def _result(node: str, f: Finding, index: int, reason: str | None) -> dict[str, Any]:
    where = _where(f)
    r: dict[str, Any] = {
        "ruleId": f.id,
        "ruleIndex": index,
        "level": LEVEL[f.severity],
        "message": {"text": f"{f.title}. {f.remediation}".strip()},
        "locations": [{
            "physicalLocation": {"artifactLocation": {"uri": f"node/{quote(node, safe='')}"}},
            "logicalLocations": [{"name": where, "fullyQualifiedName": f"{node}/{where}",
                                  "kind": "resource"}],
        }],
        "partialFingerprints": {"nodewardFindingKey/v1": _fingerprint(node, f)},
        "properties": {"severity": str(f.severity), "component": f.component,
                       "scope": f.scope, "process": f.process, "pid": f.pid,
                       "evidence": f.evidence},
    }
    if reason is not None:
        r["suppressions"] = [{"kind": "external", "status": "accepted",
                              "justification": reason}]
    return r


def document(snapshot: NodeSnapshot, result: CheckResult) -> dict[str, Any]:
    everything = [(f, None) for f in result.findings] + \
        [(f, s.reason) for f, s in result.suppressed]
    worst: dict[str, Severity] = {}
    for f, _ in everything:
        worst[f.id] = max(worst.get(f.id, f.severity), f.severity)
    ids = list(registry.registry()) + sorted(set(worst) - set(registry.registry()))
    index = {fid: n for n, fid in enumerate(ids)}
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "nodeward", "version": __version__,
                                "semanticVersion": __version__, "informationUri": INFO_URI,
                                "rules": [_rule(fid, worst.get(fid)) for fid in ids]}},
            "invocations": [{
                "executionSuccessful": True,
                "endTimeUtc": snapshot.scanned_at,
                "toolExecutionNotifications": [{"level": "warning", "message": {"text": n}}
                                               for n in snapshot.notes],
            }],
            "automationDetails": {"id": f"nodeward/{snapshot.node}/"},
            "results": [_result(snapshot.node, f, index[f.id], reason)
                        for f, reason in everything],
            "properties": {"node": snapshot.node, "socket_source": snapshot.socket_source,
                           "sockets": len(snapshot.sockets),
                           "firewall_evaluated": snapshot.ruleset is not None},
        }],
    }


def to_sarif(snapshot: NodeSnapshot, result: CheckResult) -> str:
    return json.dumps(document(snapshot, result), indent=2, default=str) + "\n"
