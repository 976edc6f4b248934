"""The pure planner, its renderings, the safety checks and the `enforce` config section."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from nodeward import config as config_mod
from nodeward.config import ConfigError
from nodeward.enforce import safety
from nodeward.enforce import settings as settings_mod
from nodeward.enforce.plan import (
    Match,
    Packet,
    PlanError,
    Rule,
    build_plan,
    ipt_quote,
    iptables_rule_lines,
    nft_table_text,
    render_iptables,
    render_nft,
    verdict,
)
from nodeward.model import Address, BindScope, Interface, NodeSnapshot, ProcessInfo, Socket

NODE, PEER, STRANGER, POD = "10.77.0.1", "10.77.0.2", "203.0.113.9", "10.244.1.2"


def cfg_of(**kw) -> config_mod.Config:
    data = {"node_cidrs": ["10.77.0.0/24"], "pod_cidrs": ["10.244.0.0/16"], "mode": "enforce",
            "enforce": {"control_plane": [f"{PEER}/32"], "api_server": f"{PEER}:6443"}}
    data.update(kw)
    return config_mod.from_mapping(data, "test.yaml")


def sock(port: int, name: str, address: str = "0.0.0.0") -> Socket:
    return Socket("tcp", 4, address, port, port, 0, process=ProcessInfo(port, name),
                  scope=BindScope.WILDCARD)


def snap(*sockets: Socket) -> NodeSnapshot:
    eth0 = Interface("eth0", 2, addresses=(Address("eth0", 4, NODE, 24),))
    return NodeSnapshot("n", "", sockets=sockets, interfaces=(eth0,))


def plan_of(cfg=None, snapshot=None):
    cfg = cfg or cfg_of()
    return build_plan(snapshot or snap(), cfg.catalog, cfg, cfg.section("enforce"))


def v(plan, port, src, iif="eth0", dst=NODE, chain="input", proto="tcp", ct="new"):
    return verdict(plan, chain, Packet(4, proto, port, src, dst, iif, ct))


# -- policy ---------------------------------------------------------------------------------


def test_failsafe_first_then_loopback_and_established():
    rules = plan_of().chain(4, "input")
    assert rules[0].match == Match("tcp", ((22, 22),)) and rules[0].verdict == "accept"
    assert rules[1].match.iif == "lo" and rules[2].match.ct == ("established", "related")


@pytest.mark.parametrize("port", [10250, 10255, 2379, 2380, 6443, 10257, 10259])
def test_pods_and_strangers_are_dropped_on_protected_ports(port):
    p = plan_of()
    assert v(p, port, POD, iif="cali12") == "drop"
    assert v(p, port, POD, iif="eth0") == "drop"  # pod CIDR arriving elsewhere
    assert v(p, port, STRANGER) == "drop"
    assert v(p, port, "127.0.0.1", iif="lo") == "accept"


def test_allowed_sources_per_component():
    p = plan_of()
    assert v(p, 10250, PEER) == "accept"  # control plane -> kubelet
    assert v(p, 2379, PEER) == "accept"  # etcd members default to the control plane
    assert v(p, 6443, "10.77.0.50") == "accept"  # node CIDRs -> API server
    assert v(p, 10250, "10.77.0.50") == "drop"  # other nodes: not the kubelet
    assert v(p, 10255, PEER) == "drop"  # read-only port: loopback only
    assert v(p, 22, POD, iif="cali1") == "accept"  # failsafe from everywhere
    assert v(p, 8080, STRANGER) == "accept"  # nothing identified there: not ours


def test_explicit_allow_beats_pod_network():
    p = plan_of(cfg_of(enforce={"allow": {"kube-apiserver": ["10.244.1.0/24"]}}))
    assert v(p, 6443, POD, iif="cali1") == "accept"
    assert v(p, 6443, "10.244.2.2", iif="cali2") == "drop"


def test_metadata_dropped_for_pods_unless_allowed():
    p = plan_of(cfg_of(enforce={"metadata_allow": ["10.244.1.0/24"]}))
    md = "169.254.169.254"
    assert v(p, 80, "10.244.2.2", iif="cali2", dst=md, chain="forward") == "drop"
    assert v(p, 80, "10.244.2.2", iif="cali2", dst=md, chain="input") == "drop"
    assert v(p, 80, POD, iif="cali1", dst=md, chain="forward") == "accept"
    assert v(p, 80, "10.77.0.9", dst=md, chain="forward") == "accept"  # not a pod
    assert v(p, 80, "10.244.2.2", iif="cali2", dst="8.8.8.8", chain="forward") == "accept"


def test_non_strict_component_protected_only_when_identified():
    assert v(plan_of(), 8080, STRANGER) == "accept"
    p = plan_of(snapshot=snap(sock(8080, "kube-apiserver")))
    assert v(p, 8080, STRANGER) == "drop"
    assert v(p, 8080, "127.0.0.1", iif="lo") == "accept"


def test_planner_is_pure_and_ipv6_optional():
    assert plan_of() == plan_of()
    assert plan_of().families == (4,)
    p6 = plan_of(cfg_of(enforce={"ipv6": True, "control_plane": ["fd00::2/128"]}))
    assert p6.families == (4, 6)
    assert verdict(p6, "input", Packet(6, "tcp", 10250, "fd00::2", "fd00::1", "eth0")) \
        == "accept"
    assert verdict(p6, "input", Packet(6, "tcp", 10250, "fd00::9", "fd00::1", "eth0")) == "drop"


def test_unknown_allow_component_and_bad_glob_are_plan_errors():
    with pytest.raises(PlanError, match="kubelett"):
        plan_of(cfg_of(enforce={"allow": {"kubelett": ["10.0.0.0/8"]}}))
    with pytest.raises(ConfigError, match="pod_interfaces"):  # refused at load now
        cfg_of(pod_interfaces=["ca*li"])


# -- rendering ------------------------------------------------------------------------------


def test_iptables_payload_names_only_our_chains():
    text = render_iptables(plan_of(), 4, "enforce", delete_jumps={"INPUT": 2})
    lines = text.splitlines()
    assert lines[0] == "*mangle" and lines[-1] == "COMMIT"
    assert [ln for ln in lines if ln.startswith(":")] == [
        ":NODEWARD-INPUT - [0:0]", ":NODEWARD-FORWARD - [0:0]", ":NODEWARD-POD - [0:0]"]
    for ln in lines:
        if ln.startswith("-A "):
            assert ln.split()[1].startswith("NODEWARD-")
    jump = "-m comment --comment nodeward -j NODEWARD-INPUT"
    assert lines.count(f"-D INPUT {jump}") == 2
    assert f"-I INPUT 1 {jump}" in lines
    assert "-I FORWARD 1 -m comment --comment nodeward -j NODEWARD-FORWARD" in lines
    assert not any(ln.startswith(("-F", "-X", "-P")) for ln in lines)


def test_iptables_lines_are_in_save_form():
    lines = iptables_rule_lines(plan_of(), 4, "enforce")
    assert lines[0] == ('-A NODEWARD-INPUT -p tcp -m tcp --dport 22 -m comment --comment '
                        '"nodeward: failsafe tcp/22" -j RETURN')
    assert ('-A NODEWARD-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -m comment '
            '--comment "nodeward: established" -j RETURN') in lines
    assert ('-A NODEWARD-INPUT -i cali+ -m comment --comment "nodeward: pod interface cali*" '
            '-g NODEWARD-POD') in lines


def test_audit_logs_and_counts_instead_of_dropping():
    ipt = iptables_rule_lines(plan_of(), 4, "audit", log_rate=7)
    assert not any(ln.endswith("-j DROP") for ln in ipt)
    logs = [ln for ln in ipt if "-j LOG" in ln]
    assert logs and all('--log-prefix "nodeward-audit: "' in ln for ln in logs)
    assert all("-m limit --limit 7/sec" in ln for ln in logs)
    # every LOG is followed by a counting RETURN with the same match
    for i, ln in enumerate(ipt):
        if "-j LOG" in ln:
            assert ipt[i + 1].endswith("-j RETURN")
    nft = nft_table_text(plan_of(), "audit")
    assert " drop " not in nft and 'log prefix "nodeward-audit: "' in nft
    assert " drop " in nft_table_text(plan_of(), "enforce")


def test_nft_transaction_replaces_only_our_table():
    text = render_nft(plan_of(), "enforce")
    assert text.startswith("table inet nodeward {}\ndelete table inet nodeward\n"
                           "table inet nodeward {")
    assert "type filter hook input priority filter - 10; policy accept;" in text
    assert "type filter hook forward priority filter - 10; policy accept;" in text
    assert 'iifname "cali*" meta nfproto ipv4 counter goto pod' in text
    tables = [ln for ln in text.splitlines() if ln.startswith(("table", "delete", "flush"))]
    assert all("inet nodeward" in ln for ln in tables)


@pytest.mark.parametrize("text,want", [
    ("nodeward", "nodeward"), ("a b", '"a b"'), ("x/y", '"x/y"'), ("a:b", '"a:b"')])
def test_ipt_quote_matches_iptables_save(text, want):
    assert ipt_quote(text) == want


# -- safety ---------------------------------------------------------------------------------


def test_refuses_plan_that_closes_a_failsafe_port():
    cfg = cfg_of()
    p = plan_of(cfg)
    bad = dataclasses.replace(p, rules=(Rule(4, "input", Match("tcp", ((22, 22),)), "drop",
                                             "nodeward: oops"), *p.rules))
    with pytest.raises(safety.Refused, match="failsafe port tcp/22"):
        safety.check_plan(bad, cfg, cfg.section("enforce"), snap())
    safety.check_plan(p, cfg, cfg.section("enforce"), snap())  # the real plan passes


def test_refuses_cutting_other_nodes_off_a_local_api_server():
    cfg = cfg_of(node_cidrs=[], enforce={"api_server": f"{NODE}:6443"})
    with pytest.raises(safety.Refused, match="every other node"):
        safety.check_plan(plan_of(cfg), cfg, cfg.section("enforce"), snap())


def test_refuses_cutting_the_api_server_off_the_kubelet():
    cfg = cfg_of()
    p = plan_of(cfg)
    no_api = tuple(r for r in p.rules if "api-server" not in r.comment
                   and "control-plane" not in r.comment)
    with pytest.raises(safety.Refused, match="kubelet"):
        safety.check_plan(dataclasses.replace(p, rules=no_api), cfg, cfg.section("enforce"),
                          snap())


def test_failsafe_removed_is_a_config_error():
    with pytest.raises(ConfigError, match="failsafe_ports: empty"):
        safety.check_config(cfg_of(failsafe_ports=[]), settings_mod.DEFAULT, snap())
    with pytest.raises(ConfigError, match="SSH port"):
        safety.check_config(cfg_of(failsafe_ports=["tcp/2222"]), settings_mod.DEFAULT, snap())
    # sshd moved to 2222: that port is the one that must stay
    moved = snap(sock(2222, "sshd"))
    safety.check_config(cfg_of(failsafe_ports=["tcp/2222"]), settings_mod.DEFAULT, moved)
    with pytest.raises(ConfigError, match="tcp/2222"):
        safety.check_config(cfg_of(failsafe_ports=["tcp/22"]), settings_mod.DEFAULT, moved)


def test_confirm_waits_for_every_target_then_gives_up():
    calls: list[tuple[str, int]] = []

    def flaky(host, port, timeout):
        calls.append((host, port))
        return port == 1 or len(calls) > 3

    assert safety.confirm([("a", 1), ("b", 2)], 5, flaky, interval=0) == []
    assert safety.confirm([("c", 3)], 0.2, lambda *_: False, interval=0.05) == [("c", 3)]


# -- config section -------------------------------------------------------------------------


def test_settings_parse():
    s = settings_mod.parse({"control_plane": ["10.0.0.0/24"], "api_server": "[fd00::1]:6443",
                            "allow": {"kubelet": ["10.1.0.0/16"]}, "confirm_timeout": 30,
                            "probes": ["10.0.0.5:10250"], "ipv6": True}, "c: enforce")
    assert s.api_server == (ipaddress.ip_address("fd00::1"), 6443)
    assert s.etcd_sources == s.control_plane
    assert s.allow["kubelet"] == (ipaddress.ip_network("10.1.0.0/16"),)
    assert settings_mod.parse(None, "c: enforce") == settings_mod.DEFAULT


@pytest.mark.parametrize("value,msg", [
    ({"control_plane": ["10.0.0.300/24"]}, "c: enforce.control_plane: '10.0.0.300/24'"),
    ({"allow": ["x"]}, "c: enforce.allow: expected a mapping"),
    ({"allow": {"kubelet": ["nope"]}}, "c: enforce.allow.kubelet: 'nope'"),
    ({"api_server": "host:6443"}, "c: enforce.api_server: 'host' is not an IP"),
    ({"confirm_timeout": -1}, "c: enforce.confirm_timeout"),
    ({"probes": ["10.0.0.1"]}, "c: enforce.probes"),
    ({"ipv6": "yes"}, "c: enforce.ipv6"),
    ({"colour": 1}, "c: enforce.colour: unknown key (known: control_plane, "),
    ("x", "c: enforce: expected a mapping"),
])
def test_settings_errors_name_the_key(value, msg):
    with pytest.raises(ConfigError) as e:
        settings_mod.parse(value, "c: enforce")
    assert msg in str(e.value) and "\n" not in str(e.value)


# -- issue 18: /0, '*', dual-stack default, finding identity ---------------------------------


def test_zero_cidr_renders_as_no_match_and_is_noted():
    cfg = cfg_of(enforce={"control_plane": [f"{PEER}/32"], "ipv6": True,
                          "allow": {"kubelet": ["0.0.0.0/0", "::/0"]}})
    plan = plan_of(cfg)
    assert any("0.0.0.0/0 lets every IPv4 source reach kubelet" in n for n in plan.notes)
    v4 = iptables_rule_lines(plan, 4, "enforce")
    v6 = iptables_rule_lines(plan, 6, "enforce")
    assert not any("0.0.0.0/0" in ln.split("--comment")[0] for ln in v4)
    assert not any("::/0" in ln.split("--comment")[0] for ln in v6)
    assert any('--comment "nodeward: kubelet allow 0.0.0.0/0"' in ln for ln in v4)
    text = nft_table_text(plan, "enforce")
    assert "saddr 0.0.0.0/0" not in text and "saddr ::/0" not in text
    with pytest.raises(PlanError, match="pod_cidrs"):
        plan_of(cfg_of(pod_cidrs=["0.0.0.0/0"]))
    with pytest.raises(ConfigError, match="every interface"):
        cfg_of(pod_interfaces=["*"])


def test_dual_stack_default_follows_the_node():
    v4_only = snap(sock(10250, "kubelet"))
    assert plan_of(cfg_of(), v4_only).families == (4,)
    v6 = snap(sock(10250, "kubelet"), Socket("tcp", 6, "::", 10250, 10250, 0,
                                              process=ProcessInfo(1, "kubelet"),
                                              scope=BindScope.WILDCARD))
    assert plan_of(cfg_of(), v6).families == (4, 6)
    off = cfg_of(enforce={"control_plane": [f"{PEER}/32"], "ipv6": False})
    plan = plan_of(off, v6)
    assert plan.families == (4,) and plan.open_ipv6 == ("kubelet tcp/10250 on [::]",)
    loopback6 = snap(Socket("tcp", 6, "::1", 10250, 10250, 0,
                            process=ProcessInfo(1, "kubelet"), scope=BindScope.LOOPBACK))
    assert plan_of(cfg_of(), loopback6).families == (4,)
    with pytest.raises(ConfigError, match="ipv6"):
        cfg_of(enforce={"ipv6": 1})


def test_finding_key_tells_families_apart():
    from nodeward.daemon import diff_findings
    from nodeward.model import Finding, Severity

    f4 = Finding("NW205", Severity.MEDIUM, "t", "r", scope="input", evidence={"family": 4})
    f6 = Finding("NW205", Severity.MEDIUM, "t", "r", scope="input", evidence={"family": 6})
    assert f4.key != f6.key
    opened, resolved, prev = diff_findings({}, [f4, f6])
    assert len(opened) == 2
    opened, resolved, _ = diff_findings(prev, [f4])
    assert opened == [] and resolved == [f6]
