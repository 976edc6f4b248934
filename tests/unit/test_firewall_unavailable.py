"""NW206: a firewall stage that cannot run (or runs on part of the ruleset) is a finding,
and the daemon keeps the last firewall findings (stale) instead of resolving them."""

from __future__ import annotations

import io
import json

import pytest

from nodeward import config
from nodeward.checks import run_checks
from nodeward.collect.ruleset import RulesetUnavailable, collect_ruleset, has_net_admin
from nodeward.daemon import Agent
from nodeward.model import (
    Address,
    BindScope,
    Interface,
    NodeSnapshot,
    ProcessInfo,
    Severity,
    Socket,
)
from nodeward.ruleset import Ruleset
from nodeward.ruleset.iptables import parse_iptables_save
from nodeward.ruleset.model import Problem
from nodeward.snapshot import read_ruleset

IFS = (Interface("lo", 1, addresses=(Address("lo", 4, "127.0.0.1", 8),)),
       Interface("eth0", 2, addresses=(Address("eth0", 4, "10.0.0.1", 24),)))
KUBELET = Socket("tcp", 4, "0.0.0.0", 10250, 1, 0,
                 process=ProcessInfo(pid=7, name="kubelet", comm="kubelet"),
                 scope=BindScope.WILDCARD)
OPEN = Ruleset(parse_iptables_save("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"))
CLOSED = Ruleset(parse_iptables_save("*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\n"
                                     "COMMIT\n"))


def snap(ruleset=None, unavailable=()):
    return NodeSnapshot("n1", "2026-12-01T00:00:00Z", sockets=(KUBELET,), interfaces=IFS,
                        ruleset=ruleset, ruleset_unavailable=unavailable)


def test_cap_eff_bit_12(tmp_path):
    st = tmp_path / "status"
    st.write_text("Name:\tx\nCapEff:\t000001fffeffefff\n")  # all but CAP_NET_ADMIN
    assert has_net_admin(str(st)) is False
    st.write_text("CapEff:\t000001fffeffffff\n")
    assert has_net_admin(str(st)) is True
    assert has_net_admin(str(tmp_path / "missing")) is None


def test_no_net_admin_is_not_tried_and_is_a_problem():
    rs, problems = read_ruleset(net_admin=False)
    assert rs is None and "CAP_NET_ADMIN" in problems[0].reason


def test_empty_legacy_output_while_nft_fails_is_unreadable_not_empty():
    # what this machine's tools do without CAP_NET_ADMIN (see test below for the real run)
    out = {"iptables-legacy-save": "", "ip6tables-legacy-save": ""}
    with pytest.raises(RulesetUnavailable, match="unreadable"):
        collect_ruleset(lambda argv: out.get(argv[0]))
    # a node that really has no rules: iptables-nft-save and nft answer (empty)
    out.update({"iptables-nft-save": "", "ip6tables-nft-save": "", "nft": ""})
    assert collect_ruleset(lambda argv: out.get(argv[0])).tables == ()


def test_unavailable_is_nw206_medium_with_reason_and_line():
    got = run_checks(snap(unavailable=(Problem("iptables-nft-save", "unterminated quote", 12),)),
                     config.Config())
    nw206 = [f for f in got.findings if f.id == "NW206"]
    assert len(nw206) == 1 and nw206[0].severity == Severity.MEDIUM
    assert nw206[0].component == "iptables-nft-save"
    assert nw206[0].evidence["problems"] == [{"reason": "unterminated quote", "line": 12}]
    assert nw206[0].evidence["partial"] is False
    assert not any(f.id.startswith("NW20") and f.id != "NW206" for f in got.findings)


def test_partial_read_is_nw206_and_the_rest_is_evaluated():
    rs = Ruleset(OPEN.tables, problems=(Problem("ip6tables-nft-save", "timed out"),))
    ids = {f.id for f in run_checks(snap(rs), config.Config()).findings}
    assert {"NW206", "NW202"} <= ids


def test_daemon_keeps_firewall_findings_stale_while_the_stage_fails():
    problem = (Problem("nft", "permission denied"),)
    snaps = iter([snap(OPEN), snap(unavailable=problem), snap(OPEN), snap(CLOSED)])
    out = io.StringIO()
    cfg = config.from_mapping({"node_name": "n1"}, "t")
    agent = Agent(None, cfg, out, snapshotter=lambda c: next(snaps))
    first = agent.cycle()
    fw = {f.key for f in first.result.findings if f.id in ("NW202", "NW205")}
    assert len(fw) >= 2
    failed = agent.cycle()
    assert not {f.key for f in failed.resolved} & fw
    kept = {f.key: f for f in failed.result.findings}
    assert fw <= set(kept) and all("permission denied" in kept[k].evidence["stale"] for k in fw)
    assert [f.id for f in failed.opened] == ["NW206"]
    again = agent.cycle()  # stage back: nothing reopened, NW206 resolved
    assert not again.opened and [f.id for f in again.resolved] == ["NW206"]
    closed = agent.cycle()  # firewall closed: now they really resolve
    assert fw <= {f.key for f in closed.resolved}
    events = [json.loads(x)["event"] for x in out.getvalue().splitlines()]
    assert events.count("finding_resolved") == len(closed.resolved) + 1
