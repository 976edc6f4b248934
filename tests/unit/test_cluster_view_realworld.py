"""The cluster view and what it implies, from real Calico YAML (../shared/realworld/yaml:
Calico's docs, repo and issues) and small clusters built around it. No root."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeward.checks.calico import calico_findings
from nodeward.clusterscan import ClusterScan, check_cluster_scan, collect_cluster_scan
from nodeward.collect.cluster import ClusterSettings, _json_list, collect_cluster, load_offline
from nodeward.derive import derive
from nodeward.model import NodeSnapshot, Socket

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "realworld" / "yaml"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"no real-world corpus at {REAL}")


def _copy(tmp: Path, *names: str) -> Path:
    for n in names:
        shutil.copy(REAL / n, tmp / Path(n).name)
    return tmp


def _k8s_node(name: str, ip: str, cidr: str = "", *, key: str = "", roles=(),
              cilium_key: str = "") -> str:
    ann = {}
    if key:
        ann["projectcalico.org/WireguardPublicKey"] = key
    if cilium_key:
        ann["network.cilium.io/wg-pub-key"] = cilium_key
    labels = {f"node-role.kubernetes.io/{r}": "" for r in roles}
    return json.dumps({"apiVersion": "v1", "kind": "Node",
                       "metadata": {"name": name, "annotations": ann, "labels": labels},
                       "spec": {"podCIDR": cidr} if cidr else {},
                       "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})


@needs_real
@pytest.mark.parametrize("name", ["calico-5705-calicoctl-node.yaml",
                                  "tigera-docs/reference-resources-node.yaml",
                                  "calico-confd-mesh-ipip-always.yaml"])
def test_calicoctl_node_is_no_phantom_peer(tmp_path, name):
    """Calico v3 `kind: Node` objects alone make no peers (they were phantom peers with no
    addresses: false NW401/NW410 for nodes that are not Kubernetes nodes)."""
    view = load_offline("k3s-master", _copy(tmp_path, name))
    assert view.nodes == ()
    assert view.kind("CalicoNode"), "kept as Calico's node records"
    scan = ClusterScan(view=view, derived=derive(view, encryption="wireguard"))
    ids = [f.id for f in check_cluster_scan(scan, ClusterSettings(encryption="wireguard"))]
    assert "NW401" not in ids and "NW410" not in ids


@needs_real
def test_calicoctl_node_enriches_the_kubernetes_node(tmp_path):
    """Beside a Kubernetes Node of the same name, calicoctl's Node adds its BGP address
    and the WireGuard tunnel address; roles come from the Kubernetes labels."""
    _copy(tmp_path, "calico-5705-calicoctl-node.yaml")
    (tmp_path / "nodes.json").write_text(_k8s_node("k3s-master", "10.0.0.2", "10.42.0.0/24",
                                                   roles=("control-plane", "master")))
    (n,) = load_offline("worker", tmp_path).nodes
    assert n.addresses == ("10.0.0.2", "10.200.0.1")
    assert n.wireguard_interface_addr == "10.42.0.1"
    assert n.control_plane and n.roles == ("control-plane", "master")


@needs_real
def test_nw510_no_false_positives_on_real_policies(tmp_path):
    """The real policy YAML selects pods (app == 'customer', k8s-app == 'kube-dns', ...):
    with no pods in the view, NW510 must not call those selectors dead (it did, 6 times)."""
    for p in REAL.rglob("*.yaml"):
        shutil.copy(p, tmp_path / f"{p.parent.name}-{p.name}")
    view = load_offline("node-hostname", tmp_path)
    assert view.pod_labels is None
    assert len(view.kind("GlobalNetworkPolicy")) >= 5
    assert "NW510" not in [f.id for f in calico_findings(view)]


def _snapshot(ports=()) -> NodeSnapshot:
    socks = tuple(Socket(protocol="tcp", family=4, address="0.0.0.0", port=p, inode=i + 1)
                  for i, p in enumerate(ports))
    return NodeSnapshot(node="n1", scanned_at="2026-12-01T00:00:00Z", sockets=socks)


FELIX_WG = """apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec: {wireguardEnabled: true}
"""


def test_wireguard_expected_from_felix_without_config(tmp_path):
    """The hidden-from-nobody case: Calico says WireGuard, a peer has a key, this node has
    no WireGuard interface at all, and no `encryption` key is configured -> NW401."""
    (tmp_path / "felix.yaml").write_text(FELIX_WG)
    (tmp_path / "nodes.json").write_text(
        '{"kind": "List", "apiVersion": "v1", "items": ['
        + _k8s_node("n1", "10.0.0.1", "10.244.1.0/24", key="k1") + ","
        + _k8s_node("n2", "10.0.0.2", "10.244.2.0/24", key="k2") + "]}")
    settings = ClusterSettings(offline_dir=str(tmp_path))
    assert settings.encryption == ""
    scan = collect_cluster_scan(settings, _snapshot(), uapi_dir=str(tmp_path / "none"))
    assert scan.derived.encryption == "wireguard"
    assert "wireguardEnabled: true" in scan.derived.sources["encryption"]
    fs = check_cluster_scan(scan, settings)
    nw401 = [f for f in fs if f.id == "NW401"]
    assert [f.component for f in nw401] == ["n2"]
    # Explicit config wins: encryption none -> no WireGuard checks.
    off = ClusterSettings.from_dict({"offline_dir": str(tmp_path), "encryption": "none"})
    scan = collect_cluster_scan(off, _snapshot(), uapi_dir=str(tmp_path / "none"))
    assert scan.derived.sources["encryption"] == "config"
    assert "NW401" not in [f.id for f in check_cluster_scan(scan, off)]


def test_cilium_wireguard_announced(tmp_path):
    (tmp_path / "nodes.json").write_text(
        '{"kind": "List", "apiVersion": "v1", "items": ['
        + _k8s_node("n1", "10.0.0.1", cilium_key="c1") + ","
        + _k8s_node("n2", "10.0.0.2", cilium_key="c2") + "]}")
    view = collect_cluster(ClusterSettings(offline_dir=str(tmp_path)), "n1")
    d = derive(view)
    assert d.encryption == "wireguard" and "cilium" in d.sources["encryption"]
    assert view.peers[0].wireguard_public_key == "c2"


def test_derived_cidrs_and_control_plane(tmp_path):
    (tmp_path / "pool.yaml").write_text("""apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: default-ipv4-ippool}
spec: {cidr: 192.168.0.0/16}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: old}
spec: {cidr: 10.99.0.0/16, disabled: true}
""")
    (tmp_path / "nodes.json").write_text(
        '{"kind": "List", "apiVersion": "v1", "items": ['
        + _k8s_node("cp1", "10.0.0.10", "10.244.0.0/24", roles=("control-plane",)) + ","
        + _k8s_node("cp2", "10.0.0.11", "10.244.1.0/24", roles=("control-plane",)) + ","
        + _k8s_node("w1", "10.0.0.20", "10.244.2.0/24") + "]}")
    d = derive(load_offline("w1", tmp_path))
    assert [str(n) for n in d.pod_cidrs] == ["10.244.0.0/23", "10.244.2.0/24",
                                             "192.168.0.0/16"]
    assert [str(n) for n in d.control_plane] == ["10.0.0.10/31"]
    assert d.etcd_members == d.control_plane
    assert [str(n) for n in d.node_addresses] == ["10.0.0.10/31", "10.0.0.20/32"]
    assert "IPPool" in d.sources["pod_cidrs"]
    summary = d.summary()
    assert summary["control_plane"]["source"].startswith("node-role.kubernetes.io/control")


def test_failsafe_defaults_open_etcd_and_apiserver(tmp_path):
    """A protected host (it has a HostEndpoint) with Calico's default failsafe list and
    etcd/API server listening: NW511 says failsafes admit every source there."""
    (tmp_path / "hep.yaml").write_text("""apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1-eth0}
spec: {node: n1, interfaceName: eth0}
""")
    view = load_offline("n1", tmp_path)
    fs = calico_findings(view, listening={("tcp", 2379), ("tcp", 6443), ("tcp", 22)})
    (f,) = [f for f in fs if f.id == "NW511"]
    assert f.evidence["listening"] == ["tcp/2379", "tcp/6443"]
    assert "NW511" not in [f.id for f in calico_findings(view, listening={("tcp", 22)})]
    (tmp_path / "felix.yaml").write_text("""apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec:
  failsafeInboundHostPorts: [{protocol: tcp, port: 22}, {protocol: udp, port: 68}]
""")
    view = load_offline("n1", tmp_path)
    assert "NW511" not in [f.id for f in calico_findings(view, listening={("tcp", 2379)})]


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c,
                                                                        max_size=4),
                    max_leaves=20),
       st.booleans())
def test_streamed_json_list_equals_json_loads(doc, wrap):
    """The offline loader decodes a List's items one by one (a 5,000-node `kubectl get
    nodes -o json` is 170 MB as objects): the result equals json.loads, whatever the
    document, and what json.loads refuses it refuses too."""
    if wrap:
        doc = {"kind": "List", "items": doc if isinstance(doc, list) else [doc], "x": doc}
    for text in (json.dumps(doc), json.dumps(doc, indent=1)):
        assert _json_list(text, lambda o: o) == json.loads(text)
    for bad in ('{"a": 1,}', '{"items": [1,]}', '{"items": [1 2]}', '{"a": 1} x', '{"a" 1}'):
        with pytest.raises(ValueError):
            _json_list(bad, lambda o: o)
