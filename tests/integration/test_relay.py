"""agent -> `nodeward relay` -> API server, all real: the relay list-then-watches a local API
server that speaks the real protocol (tests/lab/fakeapi.py, with TokenReview), serves agents
over TLS with a certificate from an openssl-made CA, and the agents are the daemon's own
ClusterWatcher pointed at it (`cluster.relay`). Loopback only, no root.

What must hold: a node added, a WireGuard key rotated and a FelixConfiguration change reach
the agent within one cycle; a kubelet's heartbeat-only Node update sends agents nothing; a
relay restart makes agents list again (from the relay); the API's 410 makes the relay list
again and agents end with the API's state without listing; a bad token, a user not on the
allow list, and an agent pinned to another CA are refused and said so; a relay whose
upstream fails tells its agents instead of serving an old view."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest

from nodeward.collect.cluster import ClusterSettings
from nodeward.collect.watch import ClusterWatcher
from nodeward.kubeapi import ApiConfig, ApiUnavailable, KubeApi
from nodeward.relay.auth import TokenReviewer
from nodeward.relay.client import relay_api
from nodeward.relay.server import Relay, RelayOptions
from nodeward.settings_table import RelaySettings
from tests.lab.authlab import make_pki
from tests.lab.fakeapi import FakeApi, felix, until

NODES = "/api/v1/nodes"
FELIX = "/apis/crd.projectcalico.org/v1/felixconfigurations"
RELAY_TOKEN = "relay-sa-token"  # the relay's own credential to the API server
AGENT_TOKEN = "agent-sa-token"
AGENT_USER = "system:serviceaccount:nodeward:nodeward"
WG = "projectcalico.org/WireguardPublicKey"


def node(name: str, ip: str, key: str, beat: str = "2026-12-01T00:00:00Z") -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name},
                         "annotations": {WG: key, "node.alpha.kubernetes.io/ttl": "0"},
                         "managedFields": [{"manager": "kubelet", "time": beat}] * 5},
            "spec": {"podCIDR": f"10.244.{ip.rsplit('.', 1)[1]}.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                       "conditions": [{"type": "Ready", "status": "True",
                                       "lastHeartbeatTime": beat}],
                       "images": [{"names": ["registry/x:1"], "sizeBytes": 1}] * 20}}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> tuple[Path, Path]:
    """The relay's CA and serving certificate; a second, unrelated CA."""
    good = make_pki(tmp_path_factory.mktemp("relay-pki"))
    other = make_pki(tmp_path_factory.mktemp("other-pki"))
    return good, other


@pytest.fixture
def api():
    a = FakeApi(token=RELAY_TOKEN, bookmark_interval=0.3).start()
    a.token_users[AGENT_TOKEN] = AGENT_USER
    a.token_users["someone-else"] = "system:serviceaccount:default:default"
    a.put(NODES, node("n1", "10.0.0.1", "k1"))
    a.put(NODES, node("n2", "10.0.0.2", "k2"))
    a.put(FELIX, felix(True))
    yield a
    a.stop()


def start_relay(api: FakeApi, pki: Path, port: int = 0, stale_after_s: float = 30.0) -> Relay:
    upstream = KubeApi(ApiConfig(url=api.url, token=RELAY_TOKEN, connect_timeout=1,
                                 read_timeout=2, retries=0))
    reviewer = TokenReviewer(KubeApi(ApiConfig(url=api.url, token=RELAY_TOKEN,
                                               connect_timeout=1, read_timeout=2, retries=0)),
                             frozenset([AGENT_USER]))
    opts = RelayOptions(host="127.0.0.1", port=port, cert_file=str(pki / "server.crt"),
                        key_file=str(pki / "server.key"), bookmark_interval_s=0.5,
                        stale_after_s=stale_after_s, upstream_watch_timeout_s=3,
                        upstream_backoff_s=0.05)
    relay = Relay(upstream, reviewer, opts).start()
    assert relay.watcher.wait_synced(5)
    return relay


def agent_api(relay: Relay, ca: Path, tmp_path: Path, token: str = AGENT_TOKEN) -> KubeApi:
    """The agent's client, made the way the daemon makes it from `cluster.relay`."""
    tok = tmp_path / f"token-{abs(hash(token))}"
    tok.write_text(token + "\n")
    settings = ClusterSettings.from_dict({
        "relay": {"url": f"https://127.0.0.1:{relay.server.port}",
                  "ca_file": str(ca / "ca.crt"), "token_file": str(tok)},
        "kubernetes": {"timeout": 2, "retries": 0}})
    assert settings.relay is not None
    return relay_api(settings.relay, settings.timeout, settings.retries)


def agent(relay: Relay, ca: Path, tmp_path: Path, **kw) -> ClusterWatcher:
    return ClusterWatcher(agent_api(relay, ca, tmp_path, **kw), watch_timeout_s=5,
                          backoff_s=0.05, max_backoff_s=0.3).start()


def peer_keys(w: ClusterWatcher, me: str = "n1") -> dict[str, str]:
    return {p.name: p.wireguard_public_key for p in w.view(me).peers}


def test_changes_reach_the_agent_and_heartbeats_send_nothing(api, pki, tmp_path):
    good, _ = pki
    relay = start_relay(api, good)
    w = agent(relay, good, tmp_path)
    try:
        assert w.wait_synced(5)
        v = w.view("n1")
        assert v.unknown == () and v.source == "api-watch"
        assert peer_keys(w) == {"n2": "k2"}
        assert v.kind("FelixConfiguration")[0]["spec"] == {"wireguardEnabled": True}
        assert until(lambda: relay.server.requests["watch"] >= 2)  # Nodes, Felix
        # one cycle is the daemon's interval (60 s shipped); all three well within 5 s
        api.put(NODES, node("n3", "10.0.0.3", "k3"))
        api.put(NODES, node("n2", "10.0.0.2", "k2-rotated"))
        api.put(FELIX, felix(False))
        assert until(lambda: peer_keys(w) == {"n2": "k2-rotated", "n3": "k3"})
        assert until(lambda: w.view("n1").kind("FelixConfiguration")[0]["spec"]
                     == {"wireguardEnabled": False})
        lists = w.stats.lists

        # kubelet heartbeats: status, managedFields and resourceVersion change, nothing an
        # agent reads does. The relay receives every one and forwards none.
        before = dict(relay.server.bytes)
        seen = relay.store.stats.upstream_changes
        for i in range(30):
            for name, ip, key in (("n1", "10.0.0.1", "k1"), ("n2", "10.0.0.2", "k2-rotated"),
                                  ("n3", "10.0.0.3", "k3")):
                api.put(NODES, node(name, ip, key, beat=f"2026-12-01T00:{i:02d}:00Z"))
        assert until(lambda: relay.store.stats.upstream_changes == seen + 90)
        time.sleep(0.3)
        after = dict(relay.server.bytes)
        assert after.get("events", 0) == before.get("events", 0)
        assert after.get("list", 0) == before.get("list", 0)
        assert relay.store.stats.unchanged >= 90
        # the upstream's bytes for those 90 events, for scale: what each agent would have got
        assert api.bytes[f"WATCH {NODES}"] > 90 * 1000
        assert w.stats.lists == lists  # and the agent never listed again
        # a real change after the heartbeats still arrives
        api.put(NODES, node("n3", "10.0.0.3", "k3-rotated"))
        assert until(lambda: peer_keys(w).get("n3") == "k3-rotated")
    finally:
        w.stop()
        relay.stop()


def test_relay_restart_makes_agents_list_again_from_the_relay(api, pki, tmp_path):
    good, _ = pki
    relay = start_relay(api, good)
    port = relay.server.port
    w = agent(relay, good, tmp_path)
    try:
        assert w.wait_synced(5)
        assert until(lambda: relay.server.requests["watch"] >= 2)
        relay.stop()
        api.put(NODES, node("n4", "10.0.0.4", "k4"))  # happens while no relay runs
        # the agent keeps its last view and says it is not current
        assert until(lambda: w.view("n1").unknown != ())
        assert "n2" in peer_keys(w)
        api_lists = api.requests[f"LIST {NODES}"]
        relay = start_relay(api, good, port=port)  # a new process: a new epoch
        assert until(lambda: w.stats.relists_after_gone >= 1 and "n4" in peer_keys(w)
                     and w.view("n1").unknown == (), 10)
        assert relay.server.requests["list"] >= 1  # the agent listed from the relay ...
        assert api.requests[f"LIST {NODES}"] == api_lists + 1  # ... the API saw the relay's
    finally:
        w.stop()
        relay.stop()


def test_gone_from_the_api_relists_the_relay_not_the_agents(api, pki, tmp_path):
    good, _ = pki
    relay = start_relay(api, good)
    w = agent(relay, good, tmp_path)
    try:
        assert w.wait_synced(5)
        assert until(lambda: relay.server.requests["watch"] >= 2)
        agent_lists = w.stats.lists
        with api.cond:  # changes the relay's watch has not seen, then compaction: 410
            api.put(NODES, node("n5", "10.0.0.5", "k5"))
            api.delete(NODES, "n2")
            api.put(NODES, node("n1", "10.0.0.1", "k1-new"))
            api.compact()
        assert until(lambda: relay.watcher.stats.relists_after_gone >= 1)
        assert until(lambda: peer_keys(w, "n5") == {"n1": "k1-new"})
        # consistent: the agent holds exactly what the API holds, projected
        assert sorted(p.name for p in w.view("n1").nodes) == sorted(api.objects[NODES])
        assert relay.store.stats.relists >= 1
        assert w.stats.lists == agent_lists and w.stats.relists_after_gone == 0
    finally:
        w.stop()
        relay.stop()


def test_bad_tokens_and_the_wrong_ca_are_refused(api, pki, tmp_path):
    good, other = pki
    relay = start_relay(api, good)
    try:
        with pytest.raises(ApiUnavailable, match="HTTP 401"):
            agent_api(relay, good, tmp_path, token="not-a-real-token").get(NODES)
        with pytest.raises(ApiUnavailable, match="HTTP 403"):
            agent_api(relay, good, tmp_path, token="someone-else").get(NODES)
        bare = KubeApi(ApiConfig(url=f"https://127.0.0.1:{relay.server.port}",
                                 ca_file=str(good / "ca.crt"), retries=0))
        with pytest.raises(ApiUnavailable, match="HTTP 401"):
            bare.get(NODES)
        assert relay.server.requests["refused 401"] == 2
        assert relay.server.requests["refused 403"] == 1
        # the good token is reviewed once, then cached (under its hash)
        reviews = api.requests["CREATE tokenreviews"]
        ok = agent_api(relay, good, tmp_path)
        for _ in range(5):
            assert ok.get(NODES)["items"]
        assert api.requests["CREATE tokenreviews"] == reviews + 1
        assert AGENT_TOKEN not in repr(relay.server.reviewer._cache)
        # an agent opening its 7 watches at once is reviewed once, not 7 times
        import threading

        api.token_users["fresh"] = AGENT_USER
        reviews = api.requests["CREATE tokenreviews"]
        verdicts: list[int] = []
        threads = [threading.Thread(target=lambda: verdicts.append(
            relay.server.reviewer.check("Bearer fresh").status)) for _ in range(7)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert verdicts == [200] * 7
        assert api.requests["CREATE tokenreviews"] == reviews + 1

        # an agent pinned to another CA refuses the relay, and its view says why
        w = agent(relay, other, tmp_path)
        try:
            w.wait_synced(3)
            v = w.view("n1")
            assert v.nodes == () and v.unknown
            assert "TLS verification failed" in v.unknown[0]
        finally:
            w.stop()
        assert until(lambda: relay.server.requests["tls_refused"] >= 1)
    finally:
        relay.stop()


def test_a_relay_whose_upstream_fails_tells_its_agents(api, pki, tmp_path):
    good, _ = pki
    relay = start_relay(api, good, stale_after_s=0.5)
    w = agent(relay, good, tmp_path)
    try:
        assert w.wait_synced(5)
        assert w.view("n1").unknown == ()
        api.stop()  # the API server goes away; the relay itself stays up
        assert until(lambda: any("Relay Upstream Stale" in u or "RelayUpstreamStale" in u
                                 for u in w.view("n1").unknown), 8)
        assert "n2" in peer_keys(w)  # the last state is kept, marked as not current
        api.start()  # back on the same port
        api.put(NODES, node("n6", "10.0.0.6", "k6"))
        assert until(lambda: "n6" in peer_keys(w) and w.view("n1").unknown == (), 10)
    finally:
        w.stop()
        relay.stop()


def test_relay_settings_are_checked():
    """cluster.relay goes through the settings owner like every key: only verified TLS."""
    from nodeward import config

    def relay(value):
        return config.from_mapping({"cluster": {"relay": value}}, "c").section("cluster").relay

    assert relay(None) is None
    s = relay({"url": "https://relay.nodeward.svc:5443/", "ca_file": "/ca"})
    assert s == RelaySettings("https://relay.nodeward.svc:5443", "/ca", "")
    for bad, msg in (({"url": "http://relay:5443"}, "cluster.relay.url: expected https"),
                     ({"url": 1}, "cluster.relay.url"),
                     ({"url": "https://r/path"}, "cluster.relay.url"),
                     ({"url": "https://u:p@r"}, "cluster.relay.url"),
                     ({}, "cluster.relay.url: expected https"),
                     ({"url": "https://r", "ca": "/x"}, "cluster.relay.ca: unknown key"),
                     ("x", "cluster.relay: expected a mapping")):
        with pytest.raises(config.ConfigError, match=msg):
            relay(copy.deepcopy(bad))


def daemon(relay: Relay, ca: Path, tmp_path: Path):
    """The daemon itself (in-process cycles, a fixture snapshot for the node's own side),
    configured with `cluster.relay` only: no API server URL, no kubeconfig."""
    import io
    import json

    from nodeward import config
    from nodeward.daemon import Agent
    from nodeward.model import NodeSnapshot

    (tmp_path / "agent-token").write_text(AGENT_TOKEN)
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(json.dumps({"node_name": "n1", "firewall": False, "cluster": {
        "kubernetes": {"timeout": 2, "retries": 0},
        "relay": {"url": f"https://127.0.0.1:{relay.server.port}",
                  "ca_file": str(ca / "ca.crt"), "token_file": str(tmp_path / "agent-token")}}}))
    return Agent(str(cfg_path), config.load(str(cfg_path)), io.StringIO(),
                 snapshotter=lambda c: NodeSnapshot(node="n1",
                                                    scanned_at="2026-12-01T00:00:00Z"))


def test_the_daemon_through_the_relay_sees_changes_within_one_cycle(api, pki, tmp_path):
    """FelixConfiguration's wireguardEnabled and the peers' keys come through the relay:
    this node has no WireGuard, so every peer is NW401; a node added is NW401 on the next
    cycle; Felix turning WireGuard off resolves them. An agent pinned to another CA gets
    NW500 naming the TLS failure, and no peers."""
    good, other = pki
    relay = start_relay(api, good)
    agent = daemon(relay, good, tmp_path)
    try:
        first = agent.cycle()
        assert sorted(f.component for f in first.result.findings if f.id == "NW401") == ["n2"]
        assert first.snapshot.derived["encryption"]["value"] == "wireguard"
        api.put(NODES, node("n3", "10.0.0.3", "k3"))
        time.sleep(0.5)  # an event is in the view within one cycle (intervals are >= 1 s)
        second = agent.cycle()
        assert [f.component for f in second.opened if f.id == "NW401"] == ["n3"]
        api.put(FELIX, felix(False))
        time.sleep(0.5)
        third = agent.cycle()
        assert sorted(f.component for f in third.resolved if f.id == "NW401") == ["n2", "n3"]
        assert relay.server.requests["list"] == 2  # listed once per served kind, then watched
    finally:
        agent._stop_watcher()
    wrong = daemon(relay, other, tmp_path / "..")
    try:
        out = wrong.cycle()
        nw500 = [f for f in out.result.findings if f.id == "NW500"]
        assert nw500 and "TLS verification failed" in json_text(nw500[0])
        assert not [f for f in out.result.findings if f.id == "NW401"]
    finally:
        wrong._stop_watcher()
        relay.stop()


def json_text(finding) -> str:
    import dataclasses
    import json

    return json.dumps(dataclasses.asdict(finding), default=str)


def test_the_relay_command_serves_and_refuses_bad_input(api, pki, tmp_path):
    """`nodeward relay` as the Deployment runs it: serves on the port it prints, stops on
    SIGTERM with 0; an unreadable certificate is one line on stderr and exit 2."""
    import os
    import signal
    import subprocess
    import sys

    good, _ = pki
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "agent")}
    (tmp_path / "relay-token").write_text(RELAY_TOKEN)
    base = [sys.executable, "-m", "nodeward", "relay", "--listen", "127.0.0.1:0",
            "--api-url", api.url, "--token-file", str(tmp_path / "relay-token")]
    bad = subprocess.run([*base, "--cert", str(tmp_path / "missing.crt"), "--key",
                          str(good / "server.key")], capture_output=True, text=True,
                         timeout=30, env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "missing.crt" in bad.stderr
    proc = subprocess.Popen([*base, "--cert", str(good / "server.crt"), "--key",
                             str(good / "server.key"), "--stale-after", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = ""
        while not line.startswith("nodeward relay: serving"):
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
        port = int(line.rsplit(":", 1)[1])
        client = KubeApi(ApiConfig(url=f"https://127.0.0.1:{port}", token=AGENT_TOKEN,
                                   ca_file=str(good / "ca.crt"), retries=0))
        assert until(lambda: client.request("GET", "/healthz").status == 200)
        names = sorted(o["metadata"]["name"] for o in client.get(NODES)["items"])
        assert names == ["n1", "n2"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_rotated_token_file_is_sent_not_the_first_one(api, pki, tmp_path):
    """The projected token expires (1 h) and the kubelet rewrites the file: the agent sends
    what the file holds now, so it is not locked out an hour after it started."""
    good, _ = pki
    relay = start_relay(api, good)
    try:
        tok = tmp_path / "rotating-token"
        tok.write_text("token-one\n")
        api.token_users["token-one"] = AGENT_USER
        url = f"https://127.0.0.1:{relay.server.port}"
        client = relay_api(RelaySettings(url, str(good / "ca.crt"), str(tok)), 2, 0,
                           token_refresh_s=0)
        assert client.get(NODES)["items"]
        tok.write_text("token-two\n")  # rotated; the old one expires
        api.token_users["token-two"] = api.token_users.pop("token-one")
        relay.server.reviewer._cache.clear()
        assert client.get(NODES)["items"]
        once = KubeApi(ApiConfig(url=url, token="token-one", ca_file=str(good / "ca.crt"),
                                 retries=0))
        with pytest.raises(ApiUnavailable, match="HTTP 401"):
            once.get(NODES)
    finally:
        relay.stop()
