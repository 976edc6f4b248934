"""The daemon's cluster view kept by list-then-watch, against a local API server that speaks
the real protocol (tests/lab/fakeapi.py: paginated LIST with resourceVersion, chunked WATCH
streams, BOOKMARK, ERROR 410 Gone, timeoutSeconds). No root: loopback only.

What must hold: a node added, a WireGuard key rotated and a FelixConfiguration change are
in the view within one daemon cycle; nothing is LISTed per cycle; a 410 makes it list
again; the server going away keeps the last view (and says so) and a server coming back is
watched again."""

from __future__ import annotations

import io
import json
import time

import pytest

from nodeward import config
from nodeward.collect.watch import ClusterWatcher
from nodeward.daemon import Agent
from nodeward.kubeapi import ApiConfig, KubeApi
from nodeward.model import NodeSnapshot
from tests.lab.fakeapi import FakeApi, felix, until

NODES = "/api/v1/nodes"
FELIX = "/apis/crd.projectcalico.org/v1/felixconfigurations"
TOKEN = "watch-test-token"


def node(name: str, ip: str, key: str = "", cidr: str = "") -> dict:
    ann = {"projectcalico.org/WireguardPublicKey": key} if key else {}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {**ann, "kubeadm.alpha/x": "y" * 200},
                         "managedFields": [{"manager": "kubelet"}] * 20},
            "spec": {"podCIDR": cidr or f"10.244.{ip.rsplit('.', 1)[1]}.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                       "images": [{"names": ["registry/x:1"], "sizeBytes": 1}] * 30}}


@pytest.fixture
def api():
    a = FakeApi(token=TOKEN, bookmark_interval=0.3).start()
    a.put(NODES, node("n1", "10.0.0.1", "k1"))
    a.put(NODES, node("n2", "10.0.0.2", "k2"))
    a.put(FELIX, felix(True))
    yield a
    a.stop()


def watcher(api: FakeApi) -> ClusterWatcher:
    return ClusterWatcher(KubeApi(ApiConfig(url=api.url, token=TOKEN, connect_timeout=1,
                                            read_timeout=2, retries=0)),
                          watch_timeout_s=2, backoff_s=0.05, max_backoff_s=0.2).start()


def test_list_then_watch_follows_changes(api):
    w = watcher(api)
    try:
        assert w.wait_synced(5)
        v = w.view("n1")
        assert [p.name for p in v.peers] == ["n2"] and v.unknown == ()
        assert v.peers[0].wireguard_public_key == "k2"
        # trimmed to what the checks read
        (stored,) = [o for o in w.kinds[0].objects.values() if o["metadata"]["name"] == "n2"]
        assert "managedFields" not in stored["metadata"] and "images" not in stored["status"]
        lists = dict(api.requests)
        api.put(NODES, node("n3", "10.0.0.3", "k3"))
        assert until(lambda: "n3" in [p.name for p in w.view("n1").peers])
        api.put(NODES, node("n2", "10.0.0.2", "k2-rotated"))
        assert until(lambda: w.view("n1").peers[0].wireguard_public_key == "k2-rotated")
        api.put(FELIX, felix(False))
        assert until(lambda: (w.view("n1").kind("FelixConfiguration")[0]["spec"]
                              ["wireguardEnabled"]) is False)
        api.delete(NODES, "n3")
        assert until(lambda: [p.name for p in w.view("n1").peers] == ["n2"])
        # none of that was a LIST: the list count is what it was after the first sync
        assert {k: n for k, n in api.requests.items() if k.startswith("LIST")} == \
            {k: n for k, n in lists.items() if k.startswith("LIST")}
        assert w.stats.bookmarks >= 1 or until(lambda: w.stats.bookmarks >= 1)
    finally:
        w.stop()


def test_a_status_re_post_leaves_the_view_unchanged(api):
    """kubelet re-posts its Node's status every 5 minutes (images, conditions,
    heartbeats): none of it is what the checks read, so the watcher's generation (the
    daemon's key for reusing the last check result) stays; a change the checks read (an
    address, a WireGuard key) moves it."""
    w = watcher(api)
    try:
        assert w.wait_synced(5)
        gen, events = w.generation(), w.stats.events
        held = w.view("n1")
        assert w.view("n1") is held  # nothing changed: the view is not built again
        beat = node("n2", "10.0.0.2", "k2")
        beat["status"]["conditions"] = [{"type": "Ready", "status": "True",
                                         "lastHeartbeatTime": "2026-12-01T00:05:00Z"}]
        beat["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"] = "0"
        api.put(NODES, beat)
        assert until(lambda: w.stats.events > events)
        assert w.generation() == gen
        assert w.view("n1") is held
        assert w.view("n2").node == "n2"  # another node's view is its own
        assert w.view("n1") == held and w.view("n1") is not held
        api.put(NODES, node("n2", "10.0.0.22", "k2"))
        assert until(lambda: w.generation() != gen)
        assert w.view("n1").peers[0].addresses == ("10.0.0.22",)
        assert held.peers[0].addresses == ("10.0.0.2",)  # the view handed out stays as it was
    finally:
        w.stop()


def test_410_gone_lists_again(api):
    w = watcher(api)
    try:
        assert w.wait_synced(5)
        lists_before = api.requests[f"LIST {NODES}"]
        # While the watcher is cut off, the server moves on and compacts: the version the
        # watcher resumes from is gone (as after an etcd compaction).
        api.stop()
        api.put(NODES, node("n4", "10.0.0.4", "k4"))
        api.compact()
        api.start()
        assert until(lambda: w.stats.relists_after_gone >= 1)
        assert until(lambda: "n4" in [p.name for p in w.view("n1").peers])
        assert api.requests[f"LIST {NODES}"] > lists_before
        # every kind's watch recovers (some may still be in their backoff for a moment)
        assert until(lambda: w.view("n1").unknown == (), 5)
    finally:
        w.stop()


def test_server_goes_away_and_comes_back(api):
    w = watcher(api)
    try:
        assert w.wait_synced(5)
        api.stop()
        # the last view stays (no phantom "no nodes"), and it says the watch is failing
        assert until(lambda: w.view("n1").unknown != (), 8)
        assert [p.name for p in w.view("n1").peers] == ["n2"]
        api.put(NODES, node("n5", "10.0.0.5", "k5"))  # changed while it was away
        api.start()
        assert until(lambda: "n5" in [p.name for p in w.view("n1").peers], 10)
        assert until(lambda: w.view("n1").unknown == (), 5)
        assert w.stats.errors >= 1
    finally:
        w.stop()


def cluster_agent(api: FakeApi, tmp_path) -> Agent:
    """An in-process Agent watching `api` as node n1, a fixture snapshot instead of the
    node's sockets and no firewall stage."""
    (tmp_path / "token").write_text(TOKEN)
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(json.dumps({
        "node_name": "n1", "firewall": False,
        "cluster": {"kubernetes": {"api_url": api.url, "token_file": str(tmp_path / "token"),
                                   "timeout": 2, "retries": 0}}}))
    return Agent(str(cfg_path), config.load(str(cfg_path)), io.StringIO(),
                 snapshotter=lambda c: NodeSnapshot(node="n1",
                                                    scanned_at="2026-12-01T00:00:00Z"))


def test_daemon_sees_changes_within_one_cycle(api, tmp_path):
    """Agent cycles (in-process, a fixture snapshot instead of the node's sockets): the
    WireGuard expectation comes from FelixConfiguration, with no `encryption` configured;
    this node has no WireGuard, so every peer is NW401; a new node is NW401 on the next
    cycle; Felix turning WireGuard off resolves them; the API is never LISTed per cycle."""
    agent = cluster_agent(api, tmp_path)
    try:
        first = agent.cycle()
        assert sorted(f.component for f in first.result.findings if f.id == "NW401") == ["n2"]
        assert first.snapshot.derived["encryption"]["value"] == "wireguard"
        lists = sum(n for k, n in api.requests.items() if k.startswith("LIST"))
        api.put(NODES, node("n6", "10.0.0.6", "k6"))
        time.sleep(0.5)  # an event is in the view within one cycle (intervals are >= 1 s)
        second = agent.cycle()
        assert [f.component for f in second.opened if f.id == "NW401"] == ["n6"]
        api.put(FELIX, felix(False))
        time.sleep(0.5)
        third = agent.cycle()
        assert sorted(f.component for f in third.resolved if f.id == "NW401") == ["n2", "n6"]
        assert third.snapshot.derived["encryption"]["value"] == "none"
        assert sum(n for k, n in api.requests.items() if k.startswith("LIST")) == lists
    finally:
        agent._stop_watcher()


def test_a_quiet_cluster_is_derived_once(api, tmp_path, monkeypatch):
    """A quiet cluster's cycles take the watcher's held view and what was derived from it
    (5,000 nodes: ~0.6 s a cycle of building and collapsing before); a change the checks
    read builds and derives again, and the derived settings follow it."""
    import nodeward.derive

    calls = []
    real = nodeward.derive.derive
    monkeypatch.setattr(nodeward.derive, "derive",
                        lambda view, **kw: calls.append(view) or real(view, **kw))
    agent = cluster_agent(api, tmp_path)
    try:
        first = agent.cycle()
        for _ in range(3):
            again = agent.cycle()
            assert again.snapshot.cluster.view is first.snapshot.cluster.view
            assert again.snapshot.derived == first.snapshot.derived
        assert len(calls) == 1 and agent.checks_reused == 3
        assert "10.0.0.9" not in first.snapshot.derived["node_addresses"]["value"]
        api.put(NODES, node("n9", "10.0.0.9", "k9"))
        assert until(lambda: "n9" in [p.name for p in agent.watcher.view("n1").peers])
        moved = agent.cycle()
        assert len(calls) == 2 and agent.checks_reused == 3
        assert "10.0.0.9/32" in moved.snapshot.derived["node_addresses"]["value"]
        assert [f.component for f in moved.opened if f.id == "NW401"] == ["n9"]
    finally:
        agent._stop_watcher()
