"""Calico host-protection and cluster-API findings (NW5xx). Pure: a ClusterView in.

    NW500  cluster state unknown (API unreachable, refused, malformed)
    NW501  no HostEndpoint for this node: Calico policy does not protect the host
    NW502  automatic host endpoints are disabled
    NW503  defaultEndpointToHostAction Accept: pods reach host services
    NW504  failsafe ports wider than Calico's defaults
    NW505  WireGuard expected but FelixConfiguration wireguardEnabled is not true
    NW506  no default-deny GlobalNetworkPolicy
    NW507  an Allow at a lower order shadows a Deny on the same selector
    NW508  egress allowed to the cloud metadata endpoint 169.254.169.254
    NW509  egress deny with no DNS allowed before it
    NW510  a GlobalNetworkPolicy selector matches no known endpoint (host endpoints and
           pods; not judged when the view has no pods: the selector may select pods)
    NW511  Calico's failsafe inbound ports admit every source to a sensitive port this
           protected node listens on (etcd, the API server: failsafes bypass all policy)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..collect.cluster import ClusterView
from ..model import Finding, Severity
from ..policy.selector import SelectorError
from ..policy.selector import parse as _parse_selector

METADATA = ipaddress.ip_address("169.254.169.254")
#: Calico's default failsafe ports (felix docs); anything more is wider than needed.
DEFAULT_FAILSAFE_IN = {("tcp", 22), ("udp", 68), ("tcp", 179), ("tcp", 2379), ("tcp", 2380),
                       ("tcp", 5473), ("tcp", 6443), ("tcp", 6666), ("tcp", 6667)}
DEFAULT_FAILSAFE_OUT = {("udp", 53), ("udp", 67), ("tcp", 179), ("tcp", 2379), ("tcp", 2380),
                        ("tcp", 5473), ("tcp", 6443), ("tcp", 6666), ("tcp", 6667)}


def _name(o: Mapping) -> str:
    return (o.get("metadata") or {}).get("name", "")


def _spec(o: Mapping) -> dict:
    return o.get("spec") or {}


def unknown_findings(view: ClusterView) -> list[Finding]:
    return [Finding(
        id="NW500", severity=Severity.MEDIUM, component="kubernetes-api",
        title="cluster state unknown: " + reason,
        remediation="Check the API URL, CA, token/RBAC (list nodes and Calico resources) and "
                    "network path to the API server; or run with --offline DIR.",
        evidence={"reason": reason, "source": view.source}) for reason in view.unknown]


def felix_config(view: ClusterView) -> dict:
    """`default` overlaid by `node.<this node>`, as Felix merges them."""
    merged: dict = {}
    by_name = {_name(o): _spec(o) for o in view.kind("FelixConfiguration")}
    for key in ("default", f"node.{view.node}"):
        merged.update(by_name.get(key, {}))
    return merged


def _ports(entries: Any) -> set[tuple[str, int]] | None:
    if entries is None:
        return None
    out = set()
    for e in entries or []:
        if isinstance(e, dict) and "port" in e:
            out.add((str(e.get("protocol", "tcp")).lower(), int(e["port"])))
    return out


#: failsafe inbound ports that expose a component no policy can then protect
SENSITIVE_FAILSAFE = {("tcp", 2379): "etcd-client", ("tcp", 2380): "etcd-peer",
                      ("tcp", 6443): "kube-apiserver", ("tcp", 5473): "calico-typha"}


def host_findings(view: ClusterView, encryption: str = "none", encryption_source: str = "",
                  listening: frozenset[tuple[str, int]] | set = frozenset()) -> list[Finding]:
    if not view.calico_present:
        return []
    out: list[Finding] = []
    heps = [h for h in view.kind("HostEndpoint") if _spec(h).get("node") == view.node]
    if not heps:
        out.append(Finding(
            id="NW501", severity=Severity.HIGH, component=view.node,
            title=f"no Calico HostEndpoint for node {view.node}: host is not protected by "
                  "Calico policy",
            remediation="Enable automatic host endpoints (KubeControllersConfiguration "
                        "controllers.node.hostEndpoint.autoCreate: Enabled) or create a "
                        "HostEndpoint for the node's interfaces, then add host policy.",
            evidence={"node": view.node,
                      "host_endpoints_total": len(view.kind("HostEndpoint"))}))
    kcc = {_name(o): _spec(o) for o in view.kind("KubeControllersConfiguration")}.get("default")
    if kcc is not None:
        auto = (((kcc.get("controllers") or {}).get("node") or {}).get("hostEndpoint")
                or {}).get("autoCreate", "Disabled")
        if auto != "Enabled":
            out.append(Finding(
                id="NW502", severity=Severity.LOW, component="calico-kube-controllers",
                title="automatic host endpoints are disabled",
                remediation="Set controllers.node.hostEndpoint.autoCreate: Enabled in the "
                            "default KubeControllersConfiguration so new nodes get one.",
                evidence={"autoCreate": auto}))
    fc = felix_config(view)
    action = fc.get("defaultEndpointToHostAction", "Drop")
    if str(action).lower() == "accept":
        out.append(Finding(
            id="NW503", severity=Severity.HIGH, component="calico-felix",
            title="defaultEndpointToHostAction is Accept: pods reach host services",
            remediation="Set defaultEndpointToHostAction: Drop (or Return with explicit host "
                        "policy) in FelixConfiguration.",
            evidence={"defaultEndpointToHostAction": action}))
    for key, default in (("failsafeInboundHostPorts", DEFAULT_FAILSAFE_IN),
                         ("failsafeOutboundHostPorts", DEFAULT_FAILSAFE_OUT)):
        ports = _ports(fc.get(key))
        if ports is not None and ports - default:
            extra = sorted(f"{p}/{n}" for p, n in ports - default)
            out.append(Finding(
                id="NW504", severity=Severity.MEDIUM, component="calico-felix",
                title=f"{key} opens more than Calico's defaults: {', '.join(extra)}",
                remediation=f"Trim {key} to what the node really needs; failsafe ports "
                            "bypass every policy.",
                evidence={"key": key, "extra": extra}))
    if encryption == "wireguard" and fc.get("wireguardEnabled") is not True \
            and fc.get("wireguardEnabledV6") is not True:
        out.append(Finding(
            id="NW505", severity=Severity.HIGH, component="calico-felix",
            title="WireGuard encryption expected but FelixConfiguration wireguardEnabled is "
                  "not true",
            remediation="Set wireguardEnabled: true in the default FelixConfiguration.",
            evidence={"wireguardEnabled": fc.get("wireguardEnabled"),
                      "expected_from": encryption_source or "config"}))
    if heps:  # a protected host: failsafe ports are the only way past its policy
        configured = _ports(fc.get("failsafeInboundHostPorts"))
        effective = DEFAULT_FAILSAFE_IN if configured is None else configured
        opened = sorted(k for k in effective & set(SENSITIVE_FAILSAFE) if k in listening)
        if opened:
            names = [f"{SENSITIVE_FAILSAFE[k]} {k[0]}/{k[1]}" for k in opened]
            out.append(Finding(
                id="NW511", severity=Severity.MEDIUM, component="calico-felix",
                title="Calico failsafe inbound ports admit every source to "
                      + ", ".join(names) + " on this protected host",
                remediation="Set failsafeInboundHostPorts to the ports the node really needs "
                            "from everywhere (often only tcp/22 and udp/68), and allow etcd "
                            "and the API server from the control plane in host policy.",
                evidence={"failsafeInboundHostPorts": "Calico default" if configured is None
                          else sorted(f"{p}/{n}" for p, n in configured),
                          "listening": [f"{p}/{n}" for p, n in opened],
                          "host_endpoints": [_name(h) for h in heps]}))
    return out


# -- selectors ------------------------------------------------------------------------------
# Calico's selector grammar lives in nodeward.policy.selector (one parser for the node
# checks and the cluster audit).

Matcher = Callable[[Mapping[str, str]], bool]


def selector_matches(sel: str, labels: Mapping[str, str]) -> bool:
    return _parse_selector(sel or "all()").match(labels)


def compile_selector(sel: str) -> Matcher:
    node = _parse_selector(sel or "all()")
    return lambda labels: node.match(labels)


def required_pair(sel: str) -> tuple[str, str] | None:
    """A (key, value) every matching label set must have (see Node.required_pair)."""
    return _parse_selector(sel or "all()").required_pair()


# -- policies -------------------------------------------------------------------------------

def _order(p: Mapping) -> float:
    o = _spec(p).get("order")
    return float(o) if isinstance(o, (int, float)) else float("inf")


def _norm_sel(p: Mapping) -> str:
    s = (_spec(p).get("selector") or "all()").strip()
    return re.sub(r"\s+", "", s)


def _types(p: Mapping) -> list[str]:
    spec = _spec(p)
    if spec.get("types"):
        return list(spec["types"])
    return ["Ingress"] + (["Egress"] if spec.get("egress") else [])


def _criteria(rule: Mapping) -> dict:
    return {k: v for k, v in rule.items() if k not in ("action", "metadata")}


def _covers_metadata(nets: Sequence[str]) -> bool:
    for n in nets or []:
        try:
            if METADATA in ipaddress.ip_network(n, strict=False):
                return True
        except (ValueError, TypeError):
            continue
    return False


def _is_dns_allow(rule: Mapping) -> bool:
    if rule.get("action") != "Allow":
        return False
    ports = (rule.get("destination") or {}).get("ports")
    return not ports or 53 in ports or "53" in ports


def policy_findings(view: ClusterView,
                    endpoint_labels: Sequence[Mapping[str, str]] = ()) -> list[Finding]:
    """`endpoint_labels`: labels of endpoints known besides host endpoints (e.g. pods);
    NW510 considers those and every HostEndpoint's labels."""
    if not view.calico_present:
        return []
    pols = [p for p in view.kind("GlobalNetworkPolicy")
            if not _name(p).startswith("staged:")]
    pols.sort(key=lambda p: (_order(p), _name(p)))
    out: list[Finding] = []

    def is_default_deny(p: Mapping) -> bool:
        if _norm_sel(p) != "all()":
            return False
        spec = _spec(p)
        if "Ingress" in _types(p):
            rules = spec.get("ingress") or []
            if not rules or any(r.get("action") == "Deny" and not _criteria(r) for r in rules):
                return True
        return False

    if not any(is_default_deny(p) for p in pols):
        out.append(Finding(
            id="NW506", severity=Severity.MEDIUM, component="calico-policy",
            title="no default-deny GlobalNetworkPolicy",
            remediation="Add a GlobalNetworkPolicy with selector all(), a high order and "
                        "types [Ingress, Egress] without allow rules, after explicit allows "
                        "(keep DNS and control-plane traffic allowed).",
            evidence={"policies": [_name(p) for p in pols]}))

    # NW507: bare or equal-criteria Allow in an earlier policy shadows a later Deny. Only
    # policies on the same selector can shadow each other: grouped once (all pairs of
    # 2,000 policies was 4 million comparisons).
    norm = {id(p): _norm_sel(p) for p in pols}
    same_sel: dict[str, list[Mapping]] = {}
    for p in pols:
        same_sel.setdefault(norm[id(p)], []).append(p)
    for later in pols:
        group = same_sel[norm[id(later)]]
        earlier_ones = group[:next(i for i, p in enumerate(group) if p is later)]
        for direction in ("ingress", "egress"):
            for deny in _spec(later).get(direction) or []:
                if deny.get("action") != "Deny":
                    continue
                dc = _criteria(deny)
                for earlier in earlier_ones:
                    if _order(earlier) == _order(later):
                        continue
                    for allow in _spec(earlier).get(direction) or []:
                        ac = _criteria(allow)
                        if allow.get("action") == "Allow" and all(
                                dc.get(k) == v for k, v in ac.items()):
                            out.append(Finding(
                                id="NW507", severity=Severity.MEDIUM, component=_name(later),
                                title=f"Deny in {_name(later)} (order {_order(later):g}) is "
                                      f"shadowed by an Allow in {_name(earlier)} (order "
                                      f"{_order(earlier):g}) on selector {_norm_sel(later)}",
                                remediation="Give the Deny a lower order than the Allow, or "
                                            "narrow the Allow.",
                                evidence={"direction": direction, "deny": dict(deny),
                                          "allow": dict(allow), "selector": _norm_sel(later),
                                          "deny_policy": _name(later),
                                          "allow_policy": _name(earlier)}))
                            break
                    else:
                        continue
                    break

    # NW508: explicit egress Allow covering the metadata address.
    for p in pols:
        for rule in _spec(p).get("egress") or []:
            dest = rule.get("destination") or {}
            if rule.get("action") == "Allow" and _covers_metadata(dest.get("nets", [])) \
                    and not _covers_metadata(dest.get("notNets", [])):
                out.append(Finding(
                    id="NW508", severity=Severity.HIGH, component=_name(p),
                    title=f"{_name(p)} allows egress to the metadata endpoint 169.254.169.254",
                    address=str(METADATA),
                    remediation="Exclude 169.254.169.254/32 (notNets) or deny it at a lower "
                                "order, so pods cannot fetch node credentials.",
                    evidence={"policy": _name(p), "rule": dict(rule),
                              "selector": _norm_sel(p)}))

    # NW509: an egress deny (explicit, or Egress type with no rules) with no DNS allow before.
    dns_seen = False
    for p in pols:
        spec = _spec(p)
        rules = spec.get("egress") or []
        if "Egress" in _types(p) and not rules and not dns_seen:
            out.append(_nw509(p, "Egress type with no rules denies all egress"))
        for rule in rules:
            if _is_dns_allow(rule):
                dns_seen = True
            elif rule.get("action") == "Deny" and not dns_seen:
                out.append(_nw509(p, "egress Deny rule", rule))
                break

    # NW510: selectors matching no known endpoint. Only with pods known: a
    # GlobalNetworkPolicy selects pods and host endpoints alike, so a selector matching no
    # host endpoint says nothing while the pods are not in the view.
    pods = list(endpoint_labels) + list(view.pod_labels or ())
    labels = [dict((h.get("metadata") or {}).get("labels") or {})
              for h in view.kind("HostEndpoint")] + [dict(x) for x in pods]
    if labels and (view.pod_labels is not None or endpoint_labels):
        distinct = list({tuple(sorted(lab.items())): lab for lab in labels}.values())
        by_pair: dict[tuple[str, str], list[Mapping[str, str]]] = {}
        for lab in distinct:
            for pair in lab.items():
                by_pair.setdefault(pair, []).append(lab)
        for p in pols:
            sel = _spec(p).get("selector") or "all()"
            try:
                match = compile_selector(sel)
                pair = required_pair(sel)
                # a selector that requires key == value can only match label sets with it
                candidates = distinct if pair is None else by_pair.get(pair, [])
                hit = any(match(lab) for lab in candidates)
            except SelectorError:
                continue  # outside the subset we evaluate: say nothing rather than guess
            if not hit:
                out.append(Finding(
                    id="NW510", severity=Severity.LOW, component=_name(p),
                    title=f"selector of {_name(p)} matches no known endpoint",
                    remediation="Fix the selector (label key/value typo?) or delete the "
                                "policy; it protects nothing.",
                    evidence={"policy": _name(p), "selector": _norm_sel(p),
                              "endpoints_considered": len(labels)}))
    return out


def _nw509(p: Mapping, why: str, rule: Mapping | None = None) -> Finding:
    return Finding(
        id="NW509", severity=Severity.LOW, component=_name(p),
        title=f"{_name(p)} denies egress with no DNS allowed before it ({why})",
        remediation="Allow UDP/TCP 53 to the cluster DNS service at a lower order than the "
                    "egress deny.",
        evidence={"policy": _name(p), "rule": dict(rule or {}), "order": _order(p)})


def calico_findings(view: ClusterView, encryption: str = "none",
                    endpoint_labels: Sequence[Mapping[str, str]] = (), *,
                    encryption_source: str = "",
                    listening: frozenset[tuple[str, int]] | set = frozenset()
                    ) -> list[Finding]:
    return (unknown_findings(view)
            + host_findings(view, encryption, encryption_source, listening)
            + policy_findings(view, endpoint_labels))
