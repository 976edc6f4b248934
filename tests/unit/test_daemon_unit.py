"""Daemon pieces without root: settings parsing, finding diff, a cycle over fixtures."""

import io
import json

import pytest

from nodeward import config, daemon_settings
from nodeward.config import ConfigError
from nodeward.daemon import Agent, diff_findings
from nodeward.model import BindScope, Finding, NodeSnapshot, ProcessInfo, Severity, Socket


def f(id_, port):
    return Finding(id=id_, severity=Severity.HIGH, title="t", remediation="r", port=port)


def test_diff_findings():
    prev = {x.key: x for x in (f("NW101", 10255), f("NW102", 10250))}
    opened, resolved, now = diff_findings(prev, [f("NW102", 10250), f("NW103", 2379)])
    assert [x.id for x in opened] == ["NW103"]
    assert [x.id for x in resolved] == ["NW101"]
    assert set(now) == {f("NW102", 10250).key, f("NW103", 2379).key}


def test_settings_defaults_and_full():
    assert daemon_settings.parse(None, "d").full_report_every == 10
    s = daemon_settings.parse({"full_report_every": 3, "policy_report": True,
                               "sink": {"url": "https://c.example/x", "batch_size": 10},
                               "probe_peers": {"enabled": True, "ports": ["tcp/10250"]}}, "d")
    assert s.sink.url == "https://c.example/x" and s.sink.batch_size == 10
    assert s.probe_peers.ports == (("tcp", 10250),) and s.policy_report


@pytest.mark.parametrize(("value", "message"), [
    ({"sink": {"url": "ftp://x"}}, "d.sink.url: expected an http(s) URL"),
    ({"sink": {"url": "http://x", "spool_max_bytes": 10}},
     "d.sink.spool_max_bytes: expected an integer between 4096 and 1000000000, got 10"),
    ({"full_report_every": 0},
     "d.full_report_every: expected an integer between 1 and 1000000000, got 0"),
    ({"probe_peers": {"ports": ["10250"]}}, "d.probe_peers.ports: '10250' is not a port like "
     "'tcp/22'"),
    ({"bogus": 1}, "d.bogus: unknown key (known: full_report_every, sink, probe_peers, "
                    "policy_report)"),
])
def test_settings_errors(value, message):
    with pytest.raises(ConfigError) as e:
        daemon_settings.parse(value, "d")
    assert str(e.value) == message


def test_cycle_logs_opened_resolved_and_full_report():
    kubelet = ProcessInfo(pid=7, name="kubelet", comm="kubelet")
    ro = Socket("tcp", 4, "10.0.0.1", 10255, 1, 0, process=kubelet,
                scope=BindScope.NODE_PRIVATE)
    snaps = iter([(ro,), (ro,), ()])

    def snapshotter(cfg):
        return NodeSnapshot("n1", "2026-01-01T00:00:00Z", sockets=next(snaps))

    out = io.StringIO()
    cfg = config.from_mapping({"node_name": "n1", "daemon": {"full_report_every": 2}}, "t")
    agent = Agent(None, cfg, out, snapshotter=snapshotter)
    outcomes = [agent.cycle() for _ in range(3)]
    assert [len(o.opened) for o in outcomes] == [2, 0, 0]
    assert [len(o.resolved) for o in outcomes] == [0, 0, 2]
    events = [json.loads(x) for x in out.getvalue().splitlines()]
    names = [e["event"] for e in events]
    assert names.count("finding_opened") == 2 and names.count("finding_resolved") == 2
    assert names.count("finding") == 2  # full report on cycle 2
    assert all(list(e)[:4] == ["timestamp", "level", "event", "node"] for e in events)


def test_unchanged_snapshot_reuses_the_check_result():
    """Checks are pure: equal inputs (time aside) give the last result back without running
    them; any change (a socket, the ruleset fingerprint, a reload) runs them again."""
    from nodeward.ruleset import Ruleset
    from nodeward.ruleset.iptables import parse_iptables_save

    kubelet = ProcessInfo(pid=7, name="kubelet", comm="kubelet")
    ro = Socket("tcp", 4, "0.0.0.0", 10255, 1, 0, process=kubelet, scope=BindScope.WILDCARD)
    tables = parse_iptables_save("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")
    a, b = Ruleset(tables, fingerprint="a"), Ruleset(tables, fingerprint="b")
    plan = iter([((ro,), a, "t1"), ((ro,), a, "t2"), ((ro,), b, "t3"), ((), b, "t4"),
                 ((), Ruleset(tables), "t5"), ((), Ruleset(tables), "t6")])

    def snapshotter(cfg):
        socks, rs, at = next(plan)
        return NodeSnapshot("n1", at, sockets=socks, ruleset=rs)

    agent = Agent(None, config.from_mapping({"node_name": "n1"}, "t"), io.StringIO(),
                  snapshotter=snapshotter)
    results = [agent.cycle().result for _ in range(6)]
    assert results[1] is results[0] and agent.checks_reused == 1
    assert results[2] is not results[1] and results[3] is not results[2]
    assert results[5] is not results[4]  # no fingerprint: never reused
    assert agent.checks_reused == 1
    assert [f.id for f in results[1].findings] == [f.id for f in results[0].findings]
