"""`nodeward audit` over synthetic clusters (Kubernetes and Calico policy mixes) and the
real-world Calico YAML: default-deny per namespace, shadowing, metadata egress, DNS,
selector typos, type mismatches, unparseable selectors, staged policies."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nodeward.policy.audit import run_audit

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "realworld" / "yaml"


def ns(name, **labels):
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels}}


def pod(name, namespace, **labels):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels}}


def knp(name, namespace, spec):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def cnp(name, namespace, spec, kind="NetworkPolicy"):
    return {"apiVersion": "projectcalico.org/v3", "kind": kind,
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def gnp(name, spec, kind="GlobalNetworkPolicy"):
    return {"apiVersion": "projectcalico.org/v3", "kind": kind,
            "metadata": {"name": name}, "spec": spec}


def ids(audit, id_=None):
    return sorted((f.id, f.component) for f in audit.findings if id_ in (None, f.id))


BASE = [ns("shop", team="a"), ns("ops", team="b"), ns("kube-system"),
        pod("web-1", "shop", app="web"), pod("db-1", "shop", app="db"),
        pod("mon-1", "ops", app="mon"), pod("dns-1", "kube-system", **{"k8s-app": "kube-dns"})]
DNS_ALLOW = {"to": [{"namespaceSelector": {}}],
             "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}


def test_default_deny_per_namespace_kubernetes_and_calico():
    objs = [*BASE,
        knp("deny-in", "shop", {"podSelector": {}, "policyTypes": ["Ingress"]}),
        cnp("deny-eg", "shop", {"selector": "all()", "types": ["Egress"],
                                "egress": [{"action": "Allow", "protocol": "UDP",
                                            "destination": {"ports": [53]}}]}),
        # not a default-deny: selects only some pods
        knp("web-only", "ops", {"podSelector": {"matchLabels": {"app": "mon"}},
                                "policyTypes": ["Ingress"]}),
    ]
    a = run_audit(objs)
    nss = {n["name"]: n["default_deny"] for n in a.namespaces}
    assert nss["shop"] == {"ingress": "KubernetesNetworkPolicy/shop/deny-in",
                           "egress": "NetworkPolicy/shop/deny-eg"}
    assert nss["ops"] == {"ingress": None, "egress": None}
    assert ids(a, "NW520") == [("NW520", "namespace/kube-system"), ("NW520", "namespace/ops")]
    assert ids(a, "NW521") == [("NW521", "namespace/kube-system"), ("NW521", "namespace/ops")]
    assert ids(a, "NW524") == []  # shop's egress baseline allows DNS


def test_global_policy_covers_namespaces_by_namespace_selector():
    objs = [*BASE, gnp("baseline", {
        "namespaceSelector": "kubernetes.io/metadata.name not in {'kube-system'}",
        "types": ["Ingress", "Egress"]})]
    a = run_audit(objs)
    nss = {n["name"]: n["default_deny"] for n in a.namespaces}
    assert nss["shop"]["ingress"] == nss["ops"]["egress"] == "GlobalNetworkPolicy/baseline"
    assert nss["kube-system"] == {"ingress": None, "egress": None}
    # the baseline denies egress and nothing allows DNS: name resolution breaks
    assert ids(a, "NW524") == [("NW524", "namespace/ops"), ("NW524", "namespace/shop")]
    objs.append(gnp("allow-dns", {"order": 10, "selector": "all()", "types": ["Egress"],
                                  "egress": [{"action": "Allow", "protocol": "UDP",
                                              "destination": {"ports": [53]}}]}))
    assert ids(run_audit(objs), "NW524") == []


def test_an_allow_all_is_no_default_deny():
    objs = [*BASE, knp("open", "shop", {"podSelector": {}, "policyTypes": ["Ingress"],
                                        "ingress": [{}]})]
    assert ("NW520", "namespace/shop") in ids(run_audit(objs), "NW520")


def test_staged_policies_enforce_nothing():
    objs = [*BASE, cnp("staged-deny", "shop", {"selector": "all()",
                                               "types": ["Ingress", "Egress"]},
                       kind="StagedNetworkPolicy")]
    a = run_audit(objs)
    assert ("NW520", "namespace/shop") in ids(a, "NW520")
    (p,) = [p for p in a.policies if p["name"] == "staged-deny"]
    assert p["staged"] and p["selects"]["pods"] == 2


def test_shadowing_by_order_and_selection():
    objs = [*BASE,
        gnp("allow-all-web", {"order": 10, "selector": "app == 'web' || app == 'db'",
                              "ingress": [{"action": "Allow"}]}),
        cnp("deny-ssh-web", "shop", {"order": 100, "selector": "app == 'web'", "ingress": [
            {"action": "Deny", "protocol": "TCP", "destination": {"ports": [22]}}]}),
        # a Deny ordered first is not shadowed
        cnp("deny-first", "shop", {"order": 1, "selector": "app == 'db'", "ingress": [
            {"action": "Deny", "protocol": "TCP", "destination": {"ports": [22]}}]}),
    ]
    a = run_audit(objs)
    (f,) = [f for f in a.findings if f.id == "NW522"]
    assert f.evidence["deny_policy"] == "NetworkPolicy/shop/deny-ssh-web"
    assert f.evidence["allow_policy"] == "GlobalNetworkPolicy/allow-all-web"


def test_metadata_egress():
    objs = [*BASE,
        knp("world", "shop", {"podSelector": {}, "policyTypes": ["Egress"],
                              "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}),
        knp("world-safe", "ops", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}}]}]}),
        gnp("https-only", {"selector": "app == 'mon'", "types": ["Egress"], "egress": [
            {"action": "Allow", "protocol": "TCP",
             "destination": {"nets": ["0.0.0.0/0"], "ports": [443]}}]}),
        gnp("calico-any", {"selector": "app == 'db'", "types": ["Egress"],
                           "egress": [{"action": "Allow"}]}),
    ]
    assert ids(run_audit(objs), "NW523") == [("NW523", "GlobalNetworkPolicy/calico-any"),
                                            ("NW523", "KubernetesNetworkPolicy/shop/world")]


def test_selector_typo_types_mismatch_and_unparseable():
    objs = [*BASE,
        gnp("typo", {"selector": "app == 'databse'", "ingress": [{"action": "Allow"}]}),
        gnp("broken", {"selector": "app = 'db'"}),
        cnp("eg-ignored", "shop", {"selector": "all()", "types": ["Ingress"],
                                   "egress": [{"action": "Deny"}]}),
        knp("k8s-ignored", "ops", {"podSelector": {}, "policyTypes": ["Egress"],
                                   "ingress": [{}]}),
    ]
    a = run_audit(objs)
    assert ids(a, "NW525") == [("NW525", "GlobalNetworkPolicy/typo")]
    assert ids(a, "NW527") == [("NW527", "GlobalNetworkPolicy/broken")]
    assert ids(a, "NW526") == [("NW526", "KubernetesNetworkPolicy/ops/k8s-ignored"),
                               ("NW526", "NetworkPolicy/shop/eg-ignored")]


def test_without_pods_no_dead_selector_claims():
    objs = [o for o in BASE if o["kind"] != "Pod"] + [
        gnp("typo", {"selector": "app == 'databse'"})]
    assert ids(run_audit(objs), "NW525") == []


@pytest.mark.skipif(not REAL.is_dir(), reason=f"no real-world corpus at {REAL}")
def test_real_world_yaml_through_the_cli(tmp_path):
    for p in REAL.rglob("*.yaml"):
        shutil.copy(p, tmp_path / f"{p.parent.name}-{p.name}")
    r = subprocess.run([sys.executable, "-m", "nodeward", "audit", "--offline", str(tmp_path),
                        "--format", "json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    kinds = {p["kind"] for p in doc["policies"]}
    assert {"GlobalNetworkPolicy", "NetworkPolicy", "KubernetesNetworkPolicy"} <= kinds
    assert doc["summary"]["policies"] >= 15 and doc["unknown"] == []
    # the Calico docs' engineering namespace: both default-denies are recognised
    (eng,) = [n for n in doc["namespaces"] if n["name"] == "engineering"]
    assert eng["default_deny"]["ingress"] and eng["default_deny"]["egress"]
    assert [f for f in doc["findings"] if f["id"] == "NW527"] == []
