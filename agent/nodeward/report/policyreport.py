"""A ClusterPolicyReport (wgpolicyk8s.io/v1alpha2) per node, built from findings (pure).

Policy-report consumers (Policy Reporter, Kyverno's UI) show these next to admission
policy results, so node exposure shows up where cluster operators already look.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ..model import Finding, Severity
from ..redact import scrub

API_VERSION = "wgpolicyk8s.io/v1alpha2"
#: The CRD allows only these severities.
SEVERITY = {Severity.CRITICAL: "critical", Severity.HIGH: "high", Severity.MEDIUM: "medium",
            Severity.LOW: "low", Severity.INFO: "info"}


def report_name(node: str) -> str:
    return f"nodeward-{node}"[:253]


def _timestamp(rfc3339: str) -> dict[str, int]:
    dt = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return {"seconds": int(dt.timestamp()), "nanos": 0}


def build(node: str, scanned_at: str, findings: Iterable[Finding]) -> dict[str, Any]:
    results = []
    for f in findings:
        props = {k: str(v) for k, v in (("component", f.component), ("protocol", f.protocol),
                                         ("address", f.address), ("port", f.port),
                                         ("scope", f.scope), ("process", f.process),
                                         ("pid", f.pid)) if v not in ("", None)}
        auth = f.evidence.get("authentication")
        if isinstance(auth, dict) and auth.get("state"):  # what decided "unauthenticated"
            props["authentication"] = str(auth["state"])
            if auth.get("decided_by"):
                props["authentication_decided_by"] = str(auth["decided_by"])[:512]
        results.append({
            "policy": "nodeward",
            "rule": f.id,
            "result": "fail",
            "severity": SEVERITY[f.severity],
            "category": "node exposure",
            "source": "nodeward",
            "message": f.title,
            "properties": {**props, "remediation": f.remediation[:1024]},
            "resources": [{"apiVersion": "v1", "kind": "Node", "name": node}],
            "timestamp": _timestamp(scanned_at),
        })
    return scrub({
        "apiVersion": API_VERSION,
        "kind": "ClusterPolicyReport",
        "metadata": {"name": report_name(node),
                     "labels": {"app.kubernetes.io/managed-by": "nodeward",
                                "nodeward.io/node": node[:63]}},
        "scope": {"apiVersion": "v1", "kind": "Node", "name": node},
        "summary": {"pass": 0, "fail": len(results), "warn": 0, "error": 0, "skip": 0},
        "results": results,
    })
