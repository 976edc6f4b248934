"""`nodeward audit`: the cluster's own network policy, judged cluster-wide. Pure.

Without a default-deny baseline NetworkPolicy adds nothing; a permissive Allow at a lower
Calico order shadows a Deny; an egress allow that does not except 169.254.169.254 leaves
cloud credentials reachable; an egress default-deny without a DNS allow breaks name
resolution; a selector typo protects nothing. Each of those is a finding (stable ID,
severity, evidence, remediation), suppressible like the node's:

    NW520  a namespace has no default-deny for ingress
    NW521  a namespace has no default-deny for egress
    NW522  a Deny is shadowed by an Allow of a lower order that selects the same endpoints
    NW523  a policy allows egress to the metadata endpoint 169.254.169.254
    NW524  a namespace's egress is denied by default and nothing allows DNS (port 53)
    NW525  a policy's selector matches no pod and no host endpoint
    NW526  a policy has rules for a direction its types leave out (they are ignored)
    NW527  a selector could not be parsed (the policy's effect is unknown)

Staged policies are listed but judged as enforcing nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..model import Finding, Severity
from .model import Endpoint, Policy, endpoints, from_object

SAMPLE = 5  # endpoints named per policy in the report
DIRECTIONS = ("Ingress", "Egress")


@dataclass(frozen=True)
class Audit:
    policies: tuple[dict[str, Any], ...]
    namespaces: tuple[dict[str, Any], ...]
    findings: tuple[Finding, ...]
    unknown: tuple[str, ...] = ()  # parts of the cluster that could not be read
    summary: Mapping[str, int] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        return {"summary": dict(self.summary), "unknown": list(self.unknown),
                "policies": list(self.policies), "namespaces": list(self.namespaces),
                "findings": [f.to_dict() for f in self.findings]}


def _finding(id_: str, sev: Severity, component: str, title: str, fix: str,
             **evidence: Any) -> Finding:
    return Finding(id=id_, severity=sev, component=component, title=title, remediation=fix,
                   evidence=evidence)


def _default_deny(pols: Sequence[Policy], ns: str, direction: str,
                  ns_labels: Mapping[str, Mapping[str, str]]) -> Policy | None:
    """A non-staged policy of this direction's type selecting every pod of `ns` by
    construction whose own rules for it admit nothing unconditionally: the baseline."""
    for p in pols:
        if p.staged or direction not in p.types or not p.selects_all_of(ns, ns_labels):
            continue
        rules = p.rules(direction)
        if not rules or not any(r.action == "Allow" and r.any_peer and not r.ports
                                for r in rules):
            return p
    return None


def _selects_all(p: Policy) -> bool:
    """Selects every endpoint in its scope by construction (a baseline: empty today is
    fine, the next pod lands under it)."""
    if p.kubernetes:
        ps = p.pod_selector or {}
        return not ps.get("matchLabels") and not ps.get("matchExpressions")
    return not p.errors and p.selector.strip() in ("", "all()")


def run_audit(objects: Iterable[Mapping[str, Any]], unknown: Sequence[str] = (),
              pods_known: bool | None = None) -> Audit:
    """`pods_known`: the pods were read (the API's pod list answered); by default, when
    the objects hold at least one Pod. Without pods, NW525 is not judged: a selector that
    matches no host endpoint may select pods nobody listed."""
    objects = list(objects)
    if pods_known is None:
        pods_known = any(o.get("kind") == "Pod" for o in objects)
    eps, ns_labels = endpoints(objects)
    pols: list[Policy] = []
    for o in objects:
        p = from_object(o)
        if p is not None:
            pols.append(p)
            if p.namespace:
                ns_labels.setdefault(p.namespace,
                                     {"kubernetes.io/metadata.name": p.namespace})
    pols.sort(key=lambda p: (p.order, p.ref))
    active = [p for p in pols if not p.staged]
    selected: dict[str, list[Endpoint]] = {
        p.ref: [e for e in eps if p.selects(e, ns_labels)] for p in pols}
    pods = [e for e in eps if e.kind == "pod"]
    findings: list[Finding] = []

    for p in pols:
        for err in p.errors:
            findings.append(_finding(
                "NW527", Severity.MEDIUM, p.ref, f"{p.ref}: selector cannot be parsed ({err})",
                "Fix the selector: Calico rejects what it cannot parse, and an unreadable "
                "selector says nothing about what the policy protects.",
                policy=p.ref, error=err))
        if pods_known and not p.errors and not selected[p.ref] and not _selects_all(p):
            findings.append(_finding(
                "NW525", Severity.LOW, p.ref, f"{p.ref} selects no pod and no host endpoint",
                "Fix the selector (a label key or value typo?) or delete the policy: it "
                "protects nothing.", policy=p.ref,
                selector=p.selector if not p.kubernetes else p.pod_selector,
                namespace_selector=p.namespace_selector, pods=len(pods),
                host_endpoints=len(eps) - len(pods)))
        if p.types_explicit:
            for d in DIRECTIONS:
                if p.rules(d) and d not in p.types:
                    findings.append(_finding(
                        "NW526", Severity.LOW, p.ref,
                        f"{p.ref} has {d.lower()} rules but its types are "
                        f"{', '.join(p.types)}: they are ignored",
                        f"Add {d} to the policy's types, or remove the {d.lower()} rules.",
                        policy=p.ref, types=list(p.types), ignored=len(p.rules(d))))
        if "Egress" in p.types and not p.staged:
            for i, r in enumerate(p.egress):
                if r.reaches_metadata() and selected[p.ref]:
                    findings.append(_finding(
                        "NW523", Severity.HIGH, p.ref,
                        f"{p.ref} allows egress to the metadata endpoint 169.254.169.254",
                        "Except 169.254.169.254/32 (ipBlock.except / notNets) or deny it "
                        "before, so pods cannot fetch the node's cloud credentials.",
                        policy=p.ref, rule=i, nets=list(r.nets) or ["any"],
                        pods_selected=len(selected[p.ref])))
                    break

    # NW522: an Allow in a lower-order policy selecting (at least) the same endpoints and
    # matching (at most) the Deny's criteria lets the traffic through first.
    for i, later in enumerate(active):
        later_eps = {(e.kind, e.namespace, e.name) for e in selected[later.ref]}
        if not later_eps:
            continue
        for d in DIRECTIONS:
            for deny in later.rules(d):
                if deny.action != "Deny":
                    continue
                dc = deny.criteria()
                hit = None
                for earlier in active[:i]:
                    if earlier.order >= later.order or earlier.kubernetes:
                        continue
                    eps_e = {(e.kind, e.namespace, e.name) for e in selected[earlier.ref]}
                    if not later_eps <= eps_e:
                        continue
                    for allow in earlier.rules(d):
                        if allow.action == "Allow" and all(
                                dc.get(k) == v for k, v in allow.criteria().items()):
                            hit = (earlier, allow)
                            break
                    if hit:
                        break
                if hit:
                    findings.append(_finding(
                        "NW522", Severity.MEDIUM, later.ref,
                        f"a {d.lower()} Deny in {later.ref} (order {later.order:g}) is "
                        f"shadowed by an Allow in {hit[0].ref} (order {hit[0].order:g})",
                        "Give the Deny a lower order than the Allow, or narrow the Allow.",
                        deny_policy=later.ref, allow_policy=hit[0].ref, direction=d,
                        deny=dict(deny.raw), allow=dict(hit[1].raw)))

    namespaces = []
    for ns in sorted(ns_labels):
        ns_pods = [e for e in pods if e.namespace == ns]
        deny = {d: _default_deny(active, ns, d, ns_labels) for d in DIRECTIONS}
        for d, id_, sev in (("Ingress", "NW520", Severity.MEDIUM),
                            ("Egress", "NW521", Severity.LOW)):
            if deny[d] is None:
                findings.append(_finding(
                    id_, sev, f"namespace/{ns}",
                    f"namespace {ns} has no default-deny for {d.lower()}",
                    f"Add a NetworkPolicy with podSelector {{}} and policyTypes [{d}] and no "
                    f"{d.lower()} rules (or a Calico (Global)NetworkPolicy with selector "
                    "all()), then allow what the pods need.",
                    namespace=ns, pods=len(ns_pods), direction=d,
                    note="without an egress baseline pods also reach 169.254.169.254"
                    if d == "Egress" else ""))
        if deny["Egress"] is not None:
            applying = [p for p in active if "Egress" in p.types and (
                p.selects_all_of(ns, ns_labels) or any(
                    e in selected[p.ref] for e in ns_pods))]
            dns = [p for p in applying for r in p.egress
                   if r.action == "Allow" and (r.allows_port(53, "UDP") or
                                               r.allows_port(53, "TCP"))]
            if not dns:
                findings.append(_finding(
                    "NW524", Severity.MEDIUM, f"namespace/{ns}",
                    f"namespace {ns} denies egress by default and nothing allows DNS",
                    "Allow UDP and TCP 53 to the cluster DNS pods (k8s-app == 'kube-dns') "
                    "in a policy that applies to the namespace, before the deny.",
                    namespace=ns, default_deny=deny["Egress"].ref))
        namespaces.append({"name": ns, "pods": len(ns_pods),
                           "default_deny": {d.lower(): deny[d].ref if deny[d] else None
                                            for d in DIRECTIONS}})

    report = tuple({
        "ref": p.ref, "kind": p.kind, "name": p.name, "namespace": p.namespace,
        "order": None if p.order == float("inf") else p.order, "types": list(p.types),
        "staged": p.staged, "rules": {"ingress": len(p.ingress), "egress": len(p.egress)},
        "selects": {"pods": sum(e.kind == "pod" for e in selected[p.ref]),
                    "host_endpoints": sum(e.kind == "host" for e in selected[p.ref]),
                    "sample": [f"{e.kind}/{e.namespace + '/' if e.namespace else ''}{e.name}"
                               for e in selected[p.ref][:SAMPLE]]},
        "errors": list(p.errors)} for p in pols)
    findings.sort(key=lambda f: (-f.severity, f.id, f.component))
    summary = {"policies": len(pols), "staged": sum(p.staged for p in pols),
               "namespaces": len(namespaces), "pods": len(pods),
               "host_endpoints": len(eps) - len(pods), "findings": len(findings)}
    return Audit(report, tuple(namespaces), tuple(findings), tuple(unknown), summary)
