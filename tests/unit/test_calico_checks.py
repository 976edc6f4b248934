"""Calico NW50x checks on built cluster views and an offline YAML directory (no root)."""

from __future__ import annotations

import pytest

from nodeward.checks.calico import SelectorError, calico_findings, selector_matches
from nodeward.collect.cluster import ClusterSettings, ClusterView, collect_cluster


def _view(objects: dict, node: str = "n1", calico: bool = True,
          pod_labels: tuple | None = ()) -> ClusterView:
    return ClusterView(node=node, source="offline",
                       objects={k: tuple(v) for k, v in objects.items()},
                       calico_present=calico, pod_labels=pod_labels)


def _gnp(name, order, selector="all()", **spec):
    return {"metadata": {"name": name}, "spec": {"order": order, "selector": selector, **spec}}


HEP = {"metadata": {"name": "n1-eth0", "labels": {"role": "node", "zone": "a"}},
       "spec": {"node": "n1"}}
DENY_ALL = _gnp("default-deny", 2000, types=["Ingress", "Egress"],
                egress=[])  # no rules: denies


def _ids(view, **kw):
    return sorted(f.id for f in calico_findings(view, **kw))


@pytest.mark.parametrize("sel,labels,want", [
    ("all()", {}, True),
    ("", {}, True),
    ("role == 'node'", {"role": "node"}, True),
    ("role == 'node'", {"role": "pod"}, False),
    ("role != 'node'", {}, True),
    ("has(zone) && !has(gpu)", {"zone": "a"}, True),
    ("has(zone) && !has(gpu)", {"zone": "a", "gpu": "1"}, False),
    ("zone in {'a', 'b'}", {"zone": "b"}, True),
    ("zone not in {'a', 'b'}", {"zone": "b"}, False),
    ("(role == 'x') || zone == \"a\"", {"zone": "a"}, True),
])
def test_selectors(sel, labels, want):
    assert selector_matches(sel, labels) is want


def test_selector_unparseable():
    with pytest.raises(SelectorError):
        selector_matches("role ~ 'x'", {})


def test_no_calico_no_findings_and_unknown():
    assert calico_findings(_view({}, calico=False)) == []
    v = ClusterView(node="n1", source="api", unknown=("GET /api/v1/nodes: HTTP 403 Forbidden",))
    (f,) = calico_findings(v)
    assert f.id == "NW500" and "403" in f.title


def test_protected_node_clean():
    dns = {"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}}
    v = _view({"HostEndpoint": [HEP],
               "FelixConfiguration": [{"metadata": {"name": "default"},
                                       "spec": {"wireguardEnabled": True}}],
               "KubeControllersConfiguration": [{"metadata": {"name": "default"}, "spec": {
                   "controllers": {"node": {"hostEndpoint": {"autoCreate": "Enabled"}}}}}],
               "GlobalNetworkPolicy": [_gnp("dns", 10, egress=[dns], types=["Egress"]),
                                       DENY_ALL]})
    assert _ids(v, encryption="wireguard") == []


def test_host_findings_each():
    v = _view({
        "HostEndpoint": [{**HEP, "spec": {"node": "other"}}],
        "FelixConfiguration": [
            {"metadata": {"name": "default"}, "spec": {"wireguardEnabled": True}},
            {"metadata": {"name": "node.n1"}, "spec": {
                "defaultEndpointToHostAction": "Accept", "wireguardEnabled": False,
                "failsafeInboundHostPorts": [{"protocol": "tcp", "port": 22},
                                             {"protocol": "tcp", "port": 10250}]}}],
        "KubeControllersConfiguration": [{"metadata": {"name": "default"}, "spec": {}}],
        "GlobalNetworkPolicy": [DENY_ALL]})
    fs = {f.id: f for f in calico_findings(v, encryption="wireguard")}
    # (DENY_ALL's all() matches the other node's HEP: no NW510)
    assert sorted(fs) == ["NW501", "NW502", "NW503", "NW504", "NW505", "NW509"]
    assert fs["NW504"].evidence["extra"] == ["tcp/10250"]
    # node.n1 overrides default: wireguardEnabled false on this node only
    assert _ids(_view({"HostEndpoint": [HEP], "GlobalNetworkPolicy": [],
                       "FelixConfiguration": v.kind("FelixConfiguration")[:1]}),
                encryption="wireguard") == ["NW506"]


def test_policy_findings():
    allow = _gnp("allow-all-ssh", 10, "role == 'node'",
                 ingress=[{"action": "Allow"}])
    deny = _gnp("deny-ssh", 20, "role=='node'",
                ingress=[{"action": "Deny", "protocol": "TCP", "destination": {"ports": [22]}}])
    meta = _gnp("egress-world", 30, "role == 'node'", types=["Egress"], egress=[
        {"action": "Allow", "protocol": "TCP",
         "destination": {"nets": ["0.0.0.0/0"], "ports": [443]}},
        {"action": "Deny"}])
    typo = _gnp("typo", 40, "role == 'nod'", ingress=[{"action": "Allow"}])
    v = _view({"HostEndpoint": [HEP], "GlobalNetworkPolicy": [allow, deny, meta, typo]})
    fs = calico_findings(v)
    assert sorted(f.id for f in fs) == ["NW506", "NW507", "NW508", "NW509", "NW510"]
    (shadow,) = [f for f in fs if f.id == "NW507"]
    assert shadow.evidence["allow_policy"] == "allow-all-ssh"
    assert [f.component for f in fs if f.id == "NW510"] == ["typo"]
    # Pods not in the view: a selector matching no host endpoint may select pods.
    no_pods = _view({"HostEndpoint": [HEP], "GlobalNetworkPolicy": [typo]}, pod_labels=None)
    assert "NW510" not in _ids(no_pods)
    # ... and with the pod it selects in the view, it matches something.
    with_pod = _view({"HostEndpoint": [HEP], "GlobalNetworkPolicy": [typo]},
                     pod_labels=({"role": "nod"},))
    assert "NW510" not in _ids(with_pod)
    # An allow-all before the Deny permits DNS too: no NW509.
    meta["spec"]["egress"][0] = {"action": "Allow", "destination": {"nets": ["0.0.0.0/0"]}}
    assert "NW509" not in _ids(v)
    # Reverse the orders: the Deny now comes first, nothing is shadowed.
    v2 = _view({"HostEndpoint": [HEP], "GlobalNetworkPolicy": [
        _gnp("allow-all-ssh", 30, "role == 'node'", ingress=[{"action": "Allow"}]),
        _gnp("deny-ssh", 5, "role == 'node'", ingress=deny["spec"]["ingress"])]})
    assert "NW507" not in _ids(v2)
    # notNets excluding metadata: no NW508
    safe = _gnp("egress-safe", 30, types=["Egress"], egress=[
        {"action": "Allow", "destination": {"nets": ["0.0.0.0/0"],
                                            "notNets": ["169.254.169.254/32"]}}])
    assert "NW508" not in _ids(_view({"GlobalNetworkPolicy": [safe]}))


def test_offline_directory(tmp_path):
    (tmp_path / "nodes.yaml").write_text("""
apiVersion: v1
kind: NodeList
items:
- metadata: {name: n1}
  spec: {podCIDRs: [10.244.1.0/24]}
  status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
- metadata: {name: n2}
  spec: {podCIDR: 10.244.2.0/24}
  status: {addresses: [{type: InternalIP, address: 10.0.0.2}]}
""")
    (tmp_path / "calico.yaml").write_text("""
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec: {defaultEndpointToHostAction: Accept}
---
apiVersion: crd.projectcalico.org/v1
kind: BlockAffinity
metadata: {name: n2-192-168-5-0-26}
spec: {node: n2, cidr: 192.168.5.0/26, state: confirmed}
---
apiVersion: crd.projectcalico.org/v1
kind: BlockAffinity
metadata: {name: n2-pending}
spec: {node: n2, cidr: 192.168.9.0/26, state: pending}
""")
    (tmp_path / "broken.yaml").write_text("kind: [unclosed\n")
    view = collect_cluster(ClusterSettings.from_dict({
        "offline_dir": str(tmp_path),
        "peers": [{"name": "n9", "addresses": ["10.0.0.9"]}]}), "n1")
    assert view.source == "offline" and view.calico_present
    assert [(n.name, n.pod_cidrs) for n in view.peers] == [
        ("n2", ("10.244.2.0/24", "192.168.5.0/26")), ("n9", ())]
    ids = _ids(view)
    assert ids == ["NW500", "NW501", "NW503", "NW506"]  # broken.yaml -> unknown, scan goes on
