"""The DaemonSet's own ConfigMap, as shipped, plus a cluster view: enforcement closes the
kubelet (10250) and the API server (6443) to the pod namespace and keeps them open where
the cluster says they must be, with nothing typed in. Real connections in namespaces.

The shipped config had `failsafe_ports: [tcp/22, tcp/6443, tcp/10250]` and a guessed
`pod_cidrs`: `apply --mode enforce` left both ports open to every pod. Now the control plane,
the node addresses and the pod CIDRs come from the cluster view (here an offline directory
standing in for the API: Nodes with node-role labels, an IPPool)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.lab import enforce_helpers as h

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 0.5


def shipped_config() -> dict:
    """kubernetes/config/config.yaml: what the kustomization turns into the ConfigMap (a
    deploy test keeps kubernetes/configmap.yaml equal to it)."""
    return yaml.safe_load((ROOT / "kubernetes" / "config" / "config.yaml").read_text())


def k8s_node(name: str, ip: str, cidr: str, roles=()) -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name,
                         "labels": {f"node-role.kubernetes.io/{r}": "" for r in roles}},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


def test_shipped_configmap_has_no_kubelet_or_apiserver_failsafe():
    cfg = shipped_config()
    assert cfg["failsafe_ports"] == ["tcp/22"]
    assert "pod_cidrs" not in cfg and "node_cidrs" not in cfg, "nothing guessed"
    assert cfg["cluster"] == {}, "cluster checks on, in-cluster credentials"


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_shipped_config_closes_kubelet_and_apiserver_to_pods(lab, tmp_path, backend):
    reason = h.have("nft", "iptables-nft-restore")
    if reason:
        pytest.skip(reason)
    t = h.build(lab)  # node 10.77.0.1, peer 10.77.0.2, outside 10.77.0.3, pod 10.244.1.2
    view = tmp_path / "cluster"
    view.mkdir()
    (view / "nodes.json").write_text(json.dumps({"apiVersion": "v1", "kind": "NodeList",
                                                 "items": [
        k8s_node("worker-1", h.NODE_IP, "10.244.1.0/24"),
        k8s_node("cp-1", h.PEER_IP, "10.244.0.0/24", roles=("control-plane",)),
        k8s_node("worker-2", h.OUTSIDE_IP, "10.244.3.0/24")]}))
    (view / "pools.yaml").write_text(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: default}\n"
        "spec: {cidr: 10.244.0.0/16}\n")
    data = shipped_config()
    # the shipped config with the test's cluster source instead of the in-cluster API
    data.update(node_name="worker-1", backend=backend,
                cluster={"offline_dir": str(view)})
    cfg = h.config_raw(tmp_path, data, "shipped.yaml")

    # Before: everyone reaches both (the assertions below can fail).
    for ns in (t.pod, t.peer, t.outside):
        assert t.lab.connect(ns, h.NODE_IP, 10250, TIMEOUT)
        assert t.lab.connect(ns, h.NODE_IP, 6443, TIMEOUT)

    plan = h.nodeward(lab, t.node, cfg, "plan", "--mode", "enforce")
    assert plan.returncode == 0, plan.stderr
    assert "failsafe tcp/10250" not in plan.stdout and "failsafe tcp/6443" not in plan.stdout
    r = h.nodeward(lab, t.node, cfg, "apply", "--mode", "enforce")
    assert r.returncode == 0, r.stderr + r.stdout

    # pods: closed
    assert not t.lab.connect(t.pod, h.NODE_IP, 10250, TIMEOUT)
    assert not t.lab.connect(t.pod, h.NODE_IP, 6443, TIMEOUT)
    # the control-plane node (node-role label): kubelet and API server open
    assert t.lab.connect(t.peer, h.NODE_IP, 10250, TIMEOUT)
    assert t.lab.connect(t.peer, h.NODE_IP, 6443, TIMEOUT)
    # another node: the API server open (node addresses), the kubelet not (control plane only)
    assert t.lab.connect(t.outside, h.NODE_IP, 6443, TIMEOUT)
    assert not t.lab.connect(t.outside, h.NODE_IP, 10250, TIMEOUT)
    # SSH, the one failsafe, from everywhere
    for ns in (t.pod, t.peer, t.outside):
        assert t.lab.connect(ns, h.NODE_IP, h.SSH, TIMEOUT)
    h.nodeward(lab, t.node, cfg, "uninstall")
