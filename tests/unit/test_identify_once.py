"""A socket's component is identified once, when the snapshot is taken: the checks, the
firewall roles, the planner and the reporters read that identification instead of asking
the catalog again (they did, three to five times per socket per scan)."""

from __future__ import annotations

from nodeward import config as config_mod
from nodeward.catalog import Catalog
from nodeward.checks import run_checks
from nodeward.enforce.plan import protected_components
from nodeward.model import BindScope, NodeSnapshot, ProcessInfo, Socket
from nodeward.report import render
from nodeward.ruleset.iptables import parse_iptables_save
from nodeward.ruleset.model import Ruleset

SAVE = """*filter
:INPUT DROP [0:0]
-A INPUT -p tcp --dport 22 -j ACCEPT
COMMIT
"""


def test_each_socket_is_identified_once(monkeypatch):
    cfg = config_mod.from_mapping({"node_name": "n1", "pod_cidrs": ["10.244.0.0/16"]}, "t")
    socks = tuple(Socket("tcp", 4, "0.0.0.0", port, i + 1, 0,
                         process=ProcessInfo(pid=10 + i, name=name, comm=name),
                         scope=BindScope.WILDCARD)
                  for i, (port, name) in enumerate([(10250, "kubelet"), (2379, "etcd"),
                                                    (6443, "kube-apiserver"), (22, "sshd")]))
    calls: list[int] = []
    real = Catalog.identify

    def counting(self, protocol, port, process):
        calls.append(port)
        return real(self, protocol, port, process)

    monkeypatch.setattr(Catalog, "identify", counting)
    ids = {s: cfg.catalog.identify(s.protocol, s.port, s.process) for s in socks}
    assert sorted(calls) == [22, 2379, 6443, 10250]
    calls.clear()
    rs = Ruleset(tuple(parse_iptables_save(SAVE, frontend="iptables-nft", family=4,
                                           source="t")), {}, (), "fp")
    snap = NodeSnapshot("n1", "2026-12-01T00:00:00Z", sockets=socks, identities=ids,
                        ruleset=rs)
    result = run_checks(snap, cfg)
    assert result.findings, "the checks ran"
    render.to_json(snap, result, cfg.catalog)
    render.to_table(snap, result, cfg.catalog)
    protected_components(snap, cfg.catalog, result.findings)
    assert calls == [], f"identified again: {calls}"
    # a snapshot built without identities still works (asks the catalog)
    bare = NodeSnapshot("n1", "2026-12-01T00:00:00Z", sockets=socks)
    assert run_checks(bare, cfg).findings and calls
