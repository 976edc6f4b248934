"""The firewall stage of run_checks, from fixtures: a snapshot carrying a ruleset gets
NW2xx findings, and its bind-scope findings are annotated or downgraded by what the firewall
does on their path. No root, no sockets."""

from __future__ import annotations

from nodeward.checks import run_checks
from nodeward.config import Config, parse_cidrs
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

CFG = Config(node_cidrs=parse_cidrs(["10.0.0.0/24"], "t"),
             pod_cidrs=parse_cidrs(["10.244.0.0/16"], "t"))
IFS = (Interface("lo", 1, addresses=(Address("lo", 4, "127.0.0.1", 8),)),
       Interface("eth0", 2, addresses=(Address("eth0", 4, "10.0.0.1", 24),)),
       Interface("cali1", 5, pod_facing=True))


def proc(name: str) -> ProcessInfo:
    return ProcessInfo(pid=len(name), name=name, comm=name)


SOCKS = (Socket("tcp", 4, "0.0.0.0", 10250, 1, 0, process=proc("kubelet"),
                scope=BindScope.WILDCARD),
         Socket("tcp", 4, "0.0.0.0", 10256, 2, 0, process=proc("kube-proxy"),
                scope=BindScope.WILDCARD),
         Socket("tcp", 4, "0.0.0.0", 8088, 3, 0, process=proc("myapp"),
                scope=BindScope.WILDCARD))


def scan(rules: str | None) -> dict:
    rs = None if rules is None else Ruleset(parse_iptables_save(
        f"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n{rules}COMMIT\n"))
    snap = NodeSnapshot("n", "2026-11-25T00:00:00Z", sockets=SOCKS, interfaces=IFS,
                        ruleset=rs)
    result = run_checks(snap, CFG)
    return {(f.id, f.address if f.id == "NW204" else f.port): f for f in result.findings}


def test_without_a_ruleset_only_bind_scope():
    got = scan(None)
    assert set(got) == {("NW102", 10250), ("NW103", 10256)}
    assert "firewall" not in got[("NW102", 10250)].evidence


def test_open_firewall_adds_nw2xx_and_says_why_bind_findings_stand():
    got = scan("")
    assert {("NW201", 10250), ("NW202", 10250), ("NW203", 8088), ("NW205", None),
            ("NW102", 10250), ("NW103", 10256)} <= set(got)
    # kube-proxy healthz may be reached from anywhere by the catalog: no NW201/202 for it
    assert ("NW201", 10256) not in got and ("NW203", 10256) not in got
    nw102 = got[("NW102", 10250)]
    assert nw102.severity == Severity.HIGH
    assert set(nw102.evidence["firewall"]) == {"pod", "anywhere"}
    assert nw102.evidence["firewall"]["pod"]["action"] == "accept"
    assert got[("NW203", 8088)].process == "myapp"


def test_closing_firewall_downgrades_bind_findings_with_the_rules_as_evidence():
    got = scan("-A INPUT -i cali+ -j DROP\n"
               "-A INPUT -s 10.0.0.0/24 -j ACCEPT\n"
               "-A INPUT -i lo -j ACCEPT\n"
               "-A INPUT -p tcp -m multiport --dports 10250,10256,8088 -j REJECT\n")
    assert not {i for i, _ in got} & {"NW201", "NW202", "NW203", "NW205"}
    # FORWARD policy DROP closes 169.254.169.254; IPv6 has no tables here, so it is open
    assert [k for k in got if k[0] == "NW204"] == [("NW204", "fd00:ec2::254")]
    nw102 = got[("NW102", 10250)]
    assert nw102.severity == Severity.LOW
    assert nw102.evidence["severity_without_firewall"] == "high"
    assert nw102.evidence["firewall"]["pod"]["action"] == "drop"
    assert nw102.evidence["firewall"]["anywhere"]["action"] == "reject"
    assert "closes it from anywhere, pod" in nw102.title
    assert got[("NW103", 10256)].severity == Severity.LOW


def test_half_closed_path_keeps_severity():
    got = scan("-A INPUT -i cali+ -j DROP\n")  # pods blocked, the rest of the world not
    nw102 = got[("NW102", 10250)]
    assert nw102.severity == Severity.HIGH and ("NW202", 10250) in got
    assert got[("NW103", 10256)].severity == Severity.LOW  # NW103 is about pods only


def test_uncertain_block_is_not_a_mitigation():
    got = scan("-A INPUT -m owner --uid-owner 0 -j ACCEPT\n-A INPUT -j DROP\n")
    nw102 = got[("NW102", 10250)]
    assert nw102.severity == Severity.HIGH
    assert nw102.evidence["firewall"]["pod"]["certain"] is False


def test_no_pod_paths_on_a_node_without_pods():
    """No pod-facing interface and no pod CIDR: nothing to say about pods (NW201/203/204),
    but the outside world still counts (NW202)."""
    rs = Ruleset(parse_iptables_save("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"))
    snap = NodeSnapshot("n", "2026-11-25T00:00:00Z", sockets=SOCKS, interfaces=IFS[:2],
                        ruleset=rs)
    ids = {f.id for f in run_checks(snap, Config()).findings}
    assert "NW202" in ids and not ids & {"NW201", "NW203", "NW204"}
    ids = {f.id for f in run_checks(snap, CFG).findings}  # pod_cidrs configured
    assert {"NW201", "NW203", "NW204"} <= ids


def test_reports_show_verdicts_per_socket():
    from nodeward.report import render

    rs = Ruleset(parse_iptables_save(
        "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -i cali+ -j DROP\nCOMMIT\n"))
    snap = NodeSnapshot("n", "2026-11-25T00:00:00Z", sockets=SOCKS, interfaces=IFS,
                        ruleset=rs)
    result = run_checks(snap, CFG)
    doc = render.document(snap, result, CFG.catalog)
    kubelet = next(s for s in doc["sockets"] if s["port"] == 10250)
    assert doc["firewall_evaluated"] is True
    assert {c: v["action"] for c, v in kubelet["firewall"].items()} == {
        "loopback": "accept", "node": "accept", "pod": "drop", "anywhere": "accept"}
    assert "-i cali+ -j DROP" in kubelet["firewall"]["pod"]["decided_by"]
    table = render.to_table(snap, result, CFG.catalog, width=200)
    assert "REACHABLE FROM" in table
    assert any("0.0.0.0:10250" in ln and "lo node any" in ln for ln in table.splitlines())
    off = NodeSnapshot("n", "2026-11-25T00:00:00Z", sockets=SOCKS, interfaces=IFS)
    doc = render.document(off, run_checks(off, CFG), CFG.catalog)
    assert doc["firewall_evaluated"] is False and doc["sockets"][0]["firewall"] is None
    assert "REACHABLE FROM" not in render.to_table(off, run_checks(off, CFG), CFG.catalog)


def test_nw205_follows_jumps_and_gotos_from_input():
    """A port filtered in a chain INPUT jumps (or goes) to is covered; one filtered in a
    chain nothing on INPUT reaches is not."""
    from nodeward.checks.reachability import _policy_findings

    def nw205(rules: str) -> list[str]:
        rs = Ruleset(parse_iptables_save(
            "*filter\n:INPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n:ORPHAN - [0:0]\n"
            f"{rules}COMMIT\n"))
        got = _policy_findings(rs, [("tcp", 10250, 4), ("tcp", 2379, 4)])
        return got[0].evidence["uncovered"] if got else []

    assert nw205("-A INPUT -j A\n-A A -g B\n-A B -p tcp -m tcp --dport 10250 -j DROP\n"
                 "-A ORPHAN -p tcp -m tcp --dport 2379 -j DROP\n") == ["tcp/2379"]
    assert nw205("-A INPUT -p tcp -m multiport --dports 2379,10250 -j DROP\n") == []
    assert nw205("-A ORPHAN -p tcp -m tcp --dport 10250 -j DROP\n") == ["tcp/10250",
                                                                          "tcp/2379"]
