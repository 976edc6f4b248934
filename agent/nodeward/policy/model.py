"""Every kind of network policy as one shape, and the endpoints policies select. Pure.

Kubernetes NetworkPolicy (networking.k8s.io/v1), Calico NetworkPolicy and
GlobalNetworkPolicy (projectcalico.org/v3 or crd.projectcalico.org/v1), and their staged
forms (StagedNetworkPolicy, StagedGlobalNetworkPolicy, StagedKubernetesNetworkPolicy) are
read into `Policy`; pods and host endpoints into `Endpoint`. Calico gives Kubernetes
policies order 1000 and evaluates them with its own; a staged policy is listed but
enforces nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .selector import SelectorError, parse

K8S_ORDER = 1000.0  # the order Calico gives Kubernetes NetworkPolicies
METADATA = ipaddress.ip_address("169.254.169.254")
KINDS = ("NetworkPolicy", "GlobalNetworkPolicy", "StagedNetworkPolicy",
         "StagedGlobalNetworkPolicy", "StagedKubernetesNetworkPolicy")


@dataclass(frozen=True)
class Endpoint:
    kind: str  # "pod" | "host"
    name: str
    namespace: str = ""  # "" for host endpoints
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    """One ingress or egress rule, reduced to what the audit judges."""

    action: str  # Allow | Deny | Log | Pass
    protocol: str = ""  # "" = any
    ports: tuple[str, ...] = ()  # destination ports as written; () = any
    nets: tuple[str, ...] = ()  # the peer's nets (egress: destination; ingress: source)
    not_nets: tuple[str, ...] = ()
    peer_selector: str | None = None  # selector on the peer end, if any
    any_peer: bool = True  # no peer restriction at all (nets/selectors absent)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def criteria(self) -> dict[str, Any]:
        return {k: v for k, v in self.raw.items() if k not in ("action", "metadata")}

    def allows_port(self, port: int, protocol: str = "TCP") -> bool:
        if self.protocol and self.protocol.upper() != protocol.upper():
            return False
        return not self.ports or any(_port_in(p, port) for p in self.ports)

    def reaches_metadata(self) -> bool:
        """An Allow that lets the metadata endpoint (169.254.169.254:80) through."""
        if self.action != "Allow" or not self.allows_port(80):
            return False
        if self.peer_selector is not None:
            return False  # a selector names endpoints, never the metadata address
        if _covers(self.not_nets):
            return False
        return self.any_peer or _covers(self.nets)


def _port_in(spec: str, port: int) -> bool:
    s = str(spec)
    if ":" in s:
        lo, _, hi = s.partition(":")
        return lo.isdigit() and hi.isdigit() and int(lo) <= port <= int(hi)
    return s.isdigit() and int(s) == port


def _covers(nets: Iterable[str]) -> bool:
    for n in nets:
        try:
            if METADATA in ipaddress.ip_network(str(n), strict=False):
                return True
        except ValueError:
            continue
    return False


@dataclass(frozen=True)
class Policy:
    kind: str  # KubernetesNetworkPolicy | NetworkPolicy | GlobalNetworkPolicy | Staged...
    name: str
    namespace: str = ""  # "" for global policies
    order: float = float("inf")
    selector: str = "all()"  # Calico expression (Kubernetes policies: see pod_selector)
    namespace_selector: str = ""  # GlobalNetworkPolicy only
    pod_selector: Mapping[str, Any] | None = None  # Kubernetes LabelSelector
    types: tuple[str, ...] = ()
    types_explicit: bool = False
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    staged: bool = False
    errors: tuple[str, ...] = ()  # selectors that could not be parsed

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.namespace + '/' if self.namespace else ''}{self.name}"

    @property
    def kubernetes(self) -> bool:
        return self.kind in ("KubernetesNetworkPolicy", "StagedKubernetesNetworkPolicy")

    def rules(self, direction: str) -> tuple[Rule, ...]:
        return self.ingress if direction == "Ingress" else self.egress

    def selects(self, ep: Endpoint, ns_labels: Mapping[str, Mapping[str, str]]) -> bool:
        if self.errors:
            return False
        if self.kubernetes:
            return ep.kind == "pod" and ep.namespace == self.namespace and \
                label_selector_matches(self.pod_selector or {}, ep.labels)
        if self.namespace:  # Calico NetworkPolicy: workload endpoints of its namespace
            return ep.kind == "pod" and ep.namespace == self.namespace and \
                parse(self.selector).match(calico_labels(ep))
        if self.namespace_selector:
            sel = parse(self.namespace_selector)
            if ep.kind == "pod":
                if not sel.match(ns_labels.get(ep.namespace, {}), namespaced=True):
                    return False
            elif not sel.match({}, namespaced=False):
                return False
        return parse(self.selector).match(calico_labels(ep))

    def selects_all_of(self, namespace: str, ns_labels: Mapping[str, Mapping[str, str]]
                       ) -> bool:
        """Selects every pod of `namespace`, present and future (by construction, not by
        today's pods): the shape a default-deny has."""
        if self.errors:
            return False
        if self.kubernetes:
            ps = self.pod_selector or {}
            return self.namespace == namespace and not ps.get("matchLabels") and \
                not ps.get("matchExpressions")
        if parse(self.selector).op != "all":
            return False
        if self.namespace:
            return self.namespace == namespace
        if self.namespace_selector:
            return parse(self.namespace_selector).match(ns_labels.get(namespace, {}))
        return True


def calico_labels(ep: Endpoint) -> dict[str, str]:
    """What Calico's selectors see on an endpoint: its labels, and for a pod the
    namespace and orchestrator pseudo-labels Calico adds."""
    if ep.kind != "pod":
        return dict(ep.labels)
    return {**ep.labels, "projectcalico.org/namespace": ep.namespace,
            "projectcalico.org/orchestrator": "k8s"}


def label_selector_matches(sel: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes LabelSelector: matchLabels and matchExpressions (In, NotIn, Exists,
    DoesNotExist); an empty selector selects everything."""
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != str(v):
            return False
    for e in sel.get("matchExpressions") or []:
        k, op, vals = e.get("key"), e.get("operator"), [str(x) for x in e.get("values") or []]
        if op == "In" and labels.get(k) not in vals:
            return False
        if op == "NotIn" and k in labels and labels[k] in vals:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def _meta(o: Mapping) -> Mapping:
    return o.get("metadata") or {}


def _calico_rule(r: Mapping, direction: str) -> Rule:
    peer = (r.get("destination") if direction == "Egress" else r.get("source")) or {}
    dest = r.get("destination") or {}
    sel = peer.get("selector") or peer.get("namespaceSelector")
    if not sel and peer.get("serviceAccounts"):
        sel = "<serviceAccounts>"  # a peer restriction that is not a label selector
    nets = tuple(str(n) for n in peer.get("nets") or ())
    not_nets = tuple(str(n) for n in peer.get("notNets") or ())
    return Rule(action=str(r.get("action", "")), protocol=str(r.get("protocol") or ""),
                ports=tuple(str(p) for p in dest.get("ports") or ()),
                nets=nets, not_nets=not_nets,
                peer_selector=sel if isinstance(sel, str) else None,
                any_peer=not (nets or sel), raw=dict(r))


def _k8s_rules(rules: Sequence[Mapping], direction: str) -> tuple[Rule, ...]:
    out = []
    key = "to" if direction == "Egress" else "from"
    for r in rules or ():
        peers = r.get(key) or []
        ports = tuple(str(p.get("port")) + (f":{p['endPort']}" if p.get("endPort") else "")
                      for p in r.get("ports") or [] if p.get("port") is not None)
        protos = {str(p.get("protocol", "TCP")) for p in r.get("ports") or []}
        proto = protos.pop() if len(protos) == 1 else ""
        if not peers:
            out.append(Rule("Allow", proto, ports, raw=dict(r)))
            continue
        for peer in peers:
            block = peer.get("ipBlock")
            if block:
                out.append(Rule("Allow", proto, ports, nets=(str(block.get("cidr")),),
                                not_nets=tuple(str(x) for x in block.get("except") or ()),
                                any_peer=False, raw=dict(r)))
            else:
                out.append(Rule("Allow", proto, ports, peer_selector="<k8s selector>",
                                any_peer=False, raw=dict(r)))
    return tuple(out)


def from_object(obj: Mapping) -> Policy | None:
    """A Policy from a Kubernetes or Calico policy object; None for other kinds."""
    kind = str(obj.get("kind", ""))
    api = str(obj.get("apiVersion", ""))
    meta, spec = _meta(obj), obj.get("spec") or {}
    name, ns = str(meta.get("name", "")), str(meta.get("namespace", "") or "")
    if kind not in KINDS:
        return None
    k8s = kind == "StagedKubernetesNetworkPolicy" or (
        kind == "NetworkPolicy" and api.startswith("networking.k8s.io"))
    staged = kind.startswith("Staged")
    if k8s:
        types = tuple(spec.get("policyTypes") or (
            ["Ingress"] + (["Egress"] if spec.get("egress") else [])))
        return Policy(kind="StagedKubernetesNetworkPolicy" if staged
                      else "KubernetesNetworkPolicy", name=name, namespace=ns or "default",
                      order=K8S_ORDER, pod_selector=spec.get("podSelector") or {},
                      types=types, types_explicit=bool(spec.get("policyTypes")),
                      ingress=_k8s_rules(spec.get("ingress") or [], "Ingress"),
                      egress=_k8s_rules(spec.get("egress") or [], "Egress"), staged=staged)
    global_kind = "Global" in kind
    order = spec.get("order")
    types = tuple(spec.get("types") or (
        ["Ingress"] + (["Egress"] if spec.get("egress") else [])))
    errors = []
    selector = str(spec.get("selector") or "all()")
    nsel = str(spec.get("namespaceSelector") or "") if global_kind else ""
    ingress = tuple(_calico_rule(r, "Ingress") for r in spec.get("ingress") or []
                    if isinstance(r, Mapping))
    egress = tuple(_calico_rule(r, "Egress") for r in spec.get("egress") or []
                   if isinstance(r, Mapping))
    texts = [("selector", selector), ("namespaceSelector", nsel)] + [
        (f"{d.lower()}[{i}] selector", r.peer_selector) for d, rs in
        (("Ingress", ingress), ("Egress", egress)) for i, r in enumerate(rs)
        if r.peer_selector and not r.peer_selector.startswith("<")]
    for where, text in texts:
        if not text:
            continue
        try:
            parse(text)
        except SelectorError as e:
            errors.append(f"{where} {text!r}: {e}")
    return Policy(kind=kind, name=name, namespace="" if global_kind else (ns or "default"),
                  order=float(order) if isinstance(order, (int, float)) else float("inf"),
                  selector=selector, namespace_selector=nsel, types=types,
                  types_explicit=bool(spec.get("types")), ingress=ingress, egress=egress,
                  staged=staged, errors=tuple(errors))


def endpoints(objects: Iterable[Mapping]) -> tuple[list[Endpoint], dict[str, dict]]:
    """Pods and host endpoints, and the labels of each namespace (Namespace objects, plus
    `kubernetes.io/metadata.name`, which the API server sets on every namespace)."""
    eps: list[Endpoint] = []
    ns_labels: dict[str, dict] = {}
    for o in objects:
        kind, meta = o.get("kind"), _meta(o)
        if kind == "Pod":
            ns = str(meta.get("namespace") or "default")
            eps.append(Endpoint("pod", str(meta.get("name", "")), ns,
                                dict(meta.get("labels") or {})))
            ns_labels.setdefault(ns, {"kubernetes.io/metadata.name": ns})
        elif kind == "HostEndpoint":
            eps.append(Endpoint("host", str(meta.get("name", "")), "",
                                dict(meta.get("labels") or {})))
        elif kind == "Namespace":
            name = str(meta.get("name", ""))
            ns_labels[name] = {**dict(meta.get("labels") or {}),
                               "kubernetes.io/metadata.name": name}
    return eps, ns_labels
