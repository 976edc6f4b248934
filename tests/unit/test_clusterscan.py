"""The lead's entry point: settings decide which encryption checks run; nothing raises
when the API is absent."""

from __future__ import annotations

from nodeward.checks.encryption import PeerNode, Route
from nodeward.clusterscan import ClusterScan, check_cluster_scan, collect_cluster_scan
from nodeward.collect.cluster import ClusterSettings, ClusterView
from nodeward.collect.wireguard import WgDevice, WgPeer
from nodeward.model import NodeSnapshot

VIEW = ClusterView(node="a", source="config",
                   nodes=(PeerNode("a", ("10.0.0.1",), ("10.244.1.0/24",)),
                          PeerNode("b", ("10.0.0.2",), ("10.244.2.0/24",))))


def test_encryption_mode_selects_checks():
    scan = ClusterScan(VIEW, routes=(Route("10.244.2.0/24", "vxlan.calico"),))
    none = ClusterSettings.from_dict({})
    assert check_cluster_scan(scan, none, now=0) == []
    wg = ClusterSettings.from_dict({"encryption": "wireguard"})
    assert sorted(f.id for f in check_cluster_scan(scan, wg, now=0)) == ["NW401", "NW404"]
    ok = ClusterScan(VIEW, wireguard=(WgDevice("wg0", peers=(WgPeer(
        "k", "10.0.0.2:51820", ("10.244.2.0/24",), last_handshake=99.0),)),),
        routes=(Route("10.244.2.0/24", "wg0"),))
    assert check_cluster_scan(ok, wg, now=100.0) == []
    ipsec = ClusterSettings.from_dict({"encryption": "ipsec"})
    got = [(f.id, f.evidence["direction"]) for f in
           check_cluster_scan(ClusterScan(VIEW, local_addresses=("10.0.0.1",)), ipsec, now=0)]
    assert got == [("NW410", "out"), ("NW410", "in")]


def test_collect_without_cluster_is_unknown_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    snap = NodeSnapshot(node="a", scanned_at="2026-01-01T00:00:00Z")
    scan = collect_cluster_scan(ClusterSettings.from_dict({}), snap, uapi_dir=str(tmp_path))
    ids = [f.id for f in check_cluster_scan(scan, ClusterSettings.from_dict({}), now=0)]
    assert ids == ["NW500"]
    static = ClusterSettings.from_dict({"use_api": False, "peers": [
        {"name": "b", "addresses": ["10.0.0.2"], "pod_cidrs": ["10.244.2.0/24"]}]})
    scan = collect_cluster_scan(static, snap, uapi_dir=str(tmp_path))
    assert scan.view.source == "config" and [p.name for p in scan.view.peers] == ["b"]
