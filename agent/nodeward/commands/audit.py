"""`nodeward audit`: the cluster's network policy, judged cluster-wide (read-only).

Reads Namespaces, Pods, Kubernetes NetworkPolicies, Calico (Global)NetworkPolicies, their
staged forms and HostEndpoints, from the API (the `cluster` section's credentials,
in-cluster by default) or from `--offline DIR`; prints a report (table or JSON) of every
policy with what it selects, each namespace's default-deny, and the NW52x findings.
Exit codes as for `scan`: 0, 1 findings at or above --fail-on, 2 usage/config error.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..config import Config

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("audit", help="audit the cluster's network policies (read-only)")
    a.add_argument("--offline", metavar="DIR", help="read the cluster's objects from YAML or "
                                                    "JSON files in DIR instead of the API")
    a.add_argument("--format", choices=["table", "json"], default="table")
    a.add_argument("--fail-on", default="high",
                   choices=["info", "low", "medium", "high", "critical"])
    a.set_defaults(handler=cmd_audit)


def cmd_audit(args: argparse.Namespace, cfg: Config) -> int:
    from ..checks import split_suppressed
    from ..collect.cluster import (
        ClusterSettings,
        api_config,
        audit_objects_api,
        audit_objects_offline,
    )
    from ..kubeapi import ApiUnavailable, KubeApi
    from ..model import Severity
    from ..policy.audit import run_audit

    pods_known = None  # offline: known when the files hold Pods
    if args.offline:
        objects, unknown = audit_objects_offline(args.offline)
    else:
        settings = cfg.section("cluster") or ClusterSettings()
        try:
            api = KubeApi(api_config(settings))
        except ApiUnavailable as e:
            print(f"nodeward: audit: {e.reason}", file=sys.stderr)
            return EXIT_USAGE
        try:
            objects, unknown = audit_objects_api(api)
        finally:
            api.close()
        pods_known = not any("/api/v1/pods" in u for u in unknown)
    audit = run_audit(objects, unknown, pods_known)
    kept = split_suppressed(list(audit.findings), cfg.suppress)
    doc = audit.document()
    doc["findings"] = [f.to_dict() for f in kept.findings]
    doc["suppressed"] = [{**f.to_dict(), "reason": s.reason} for f, s in kept.suppressed]
    if args.format == "json":
        sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(table(doc))
    threshold = Severity.parse(args.fail_on)
    return EXIT_FINDINGS if any(f.severity >= threshold for f in kept.findings) else EXIT_OK


def table(doc: dict) -> str:
    s = doc["summary"]
    lines = [f"policies {s['policies']} ({s['staged']} staged)  namespaces {s['namespaces']}  "
             f"pods {s['pods']}  host endpoints {s['host_endpoints']}"]
    lines += [f"unknown: {u}" for u in doc["unknown"]]
    lines.append("")
    lines.append(f"{'POLICY':<60} {'ORDER':>6} {'TYPES':<16} {'RULES':>7} {'SELECTS':>14}")
    for p in doc["policies"]:
        order = "-" if p["order"] is None else f"{p['order']:g}"
        rules = f"{p['rules']['ingress']}/{p['rules']['egress']}"
        sel = f"{p['selects']['pods']}p {p['selects']['host_endpoints']}h"
        ref = p["ref"] + (" (staged)" if p["staged"] else "")
        lines.append(f"{ref:<60} {order:>6} {','.join(p['types']):<16} {rules:>7} {sel:>14}")
    lines.append("")
    lines.append(f"{'NAMESPACE':<30} {'PODS':>5}  DEFAULT-DENY INGRESS / EGRESS")
    for n in doc["namespaces"]:
        dd = n["default_deny"]
        lines.append(f"{n['name']:<30} {n['pods']:>5}  {dd['ingress'] or '-'} / "
                     f"{dd['egress'] or '-'}")
    lines.append("")
    for f in doc["findings"]:
        lines.append(f"{f['severity'].upper():<9} {f['id']}  {f['title']}")
    if not doc["findings"]:
        lines.append("no findings")
    return "\n".join(lines) + "\n"
