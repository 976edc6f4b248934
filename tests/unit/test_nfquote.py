"""The netfilter-text gate: hostile names, descriptions and interface patterns either fail
at config load (one line, ConfigError) or render into text that names only nodeward's own
objects -- checked by an oracle independent of nfquote's own payload checks."""

from __future__ import annotations

import re
import shlex

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeward import config as config_mod
from nodeward import nfquote
from nodeward.config import ConfigError
from nodeward.enforce.plan import (
    IPT_CHAINS,
    build_plan,
    render_iptables,
    render_nft,
)
from nodeward.model import Address, BindScope, Interface, NodeSnapshot, ProcessInfo, Socket
from tests.injection_cases import ISSUE_IFACES, ISSUE_NAMES, TRICKY_OK, strategy

OURS = set(IPT_CHAINS.values())


def _config(name: str, description: str = "d", iface: str = "cali*"):
    data = {"node_cidrs": ["10.77.0.0/24"], "pod_cidrs": ["10.244.0.0/16"], "mode": "enforce",
            "pod_interfaces": [iface, "veth*"],
            "catalog": [{"name": name, "ports": [9999], "description": description,
                         "processes": ["thing"], "max_scope": "loopback"}],
            "enforce": {"control_plane": ["10.77.0.2/32"], "ipv6": True,
                        "allow": {name: ["10.9.0.0/16", "fd00:9::/64"]}}}
    return config_mod.from_mapping(data, "fuzz.yaml")


def _snap() -> NodeSnapshot:
    eth0 = Interface("eth0", 2, addresses=(Address("eth0", 4, "10.77.0.1", 24),))
    s = Socket("tcp", 4, "0.0.0.0", 9999, 9999, 0, process=ProcessInfo(9, "thing"),
               scope=BindScope.WILDCARD)
    return NodeSnapshot("n", "", sockets=(s,), interfaces=(eth0,))


def _assert_ipt_contained(text: str) -> None:
    """Oracle: shlex-split every line the way iptables-restore tokenises it."""
    assert "\x00" not in text and "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "*mangle" and lines[-1] == "COMMIT"
    assert sum(1 for ln in lines if ln.startswith("*")) == 1
    assert lines.count("COMMIT") == 1
    for ln in lines[1:-1]:
        tok = shlex.split(ln)
        if ln.startswith(":"):
            assert tok[0][1:] in OURS and tok[1:] == ["-", "[0:0]"], ln
            continue
        assert tok[0] in ("-A", "-D", "-I"), ln
        if tok[0] == "-A":
            assert tok[1] in OURS, ln
        else:
            assert tok[1] in ("INPUT", "FORWARD") and tok[-1] in OURS, ln
        jumps = [i for i, t in enumerate(tok) if t in ("-j", "-g")]
        assert len(jumps) == 1 and tok[jumps[0] + 1] in (*OURS, "RETURN", "DROP", "LOG"), ln
        assert not any(t in ("-F", "-X", "-P", "-N", "-t") for t in tok), ln


def _assert_nft_contained(text: str) -> None:
    """Oracle: outside quoted strings, braces nest only as table > chain, and every
    top-level statement names `inet nodeward`."""
    assert "\x00" not in text
    depth, stmt = 0, ""
    for ch_line in text.splitlines():
        line = re.sub(r'"[^"\n]*"', "S", ch_line)
        assert '"' not in line, ch_line
        for tok in re.findall(r"\{|\}|;|[^{};]+", line):
            if tok == "{":
                depth += 1
                assert depth <= 3, ch_line  # table { chain { dport { set } } }
            elif tok == "}":
                depth -= 1
                assert depth >= 0, ch_line
            elif depth == 0 and tok.strip():
                stmt = tok.strip()
                assert stmt in ("table inet nodeward", "delete table inet nodeward"), ch_line
    assert depth == 0


def _check(name: str, description: str, iface: str) -> str:
    try:
        cfg = _config(name, description, iface)
    except ConfigError as e:
        assert "\n" not in str(e), repr(str(e))
        return "refused"
    assert nfquote.NAME.match(name)
    plan = build_plan(_snap(), cfg.catalog, cfg, cfg.section("enforce"))
    for mode in ("enforce", "audit"):
        for fam in (4, 6):
            text = render_iptables(plan, fam, mode, delete_jumps={"INPUT": 2})
            _assert_ipt_contained(text)
            nfquote.check_ipt_payload(text, ("mangle",), tuple(OURS), ("INPUT", "FORWARD"))
        text = render_nft(plan, mode)
        _assert_nft_contained(text)
        nfquote.check_nft_payload(text, "nodeward", ("input", "pod", "forward"))
        assert f'"nodeward: pod to {name}"' in text  # the name arrived intact
    return "rendered"


@pytest.mark.parametrize("name", ISSUE_NAMES)
def test_issue_names_refused_at_load(name):
    assert _check(name, "d", "cali*") == "refused"


@pytest.mark.parametrize("iface", ISSUE_IFACES)
def test_issue_interfaces_refused_at_load(iface):
    assert _check("thing", "d", iface) == "refused"


@pytest.mark.parametrize("name", TRICKY_OK)
def test_syntax_looking_names_stay_inside(name):
    assert _check(name, "d", "cali*") == "rendered"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=strategy(), description=strategy(), iface=st.one_of(strategy(),
                                                                 st.sampled_from(["cali*"])))
def test_fuzz_every_renderer(name, description, iface):
    """Descriptions are free text (never rendered); names and patterns are refused or
    contained, on the iptables (both families, both modes) and nft renderers."""
    _check(name, description, iface)


def test_payload_checks_refuse_breakouts():
    with pytest.raises(nfquote.UnsafeText):
        nfquote.check_ipt_payload("*mangle\n-F\nCOMMIT\n", ("mangle",), tuple(OURS), ("INPUT",))
    with pytest.raises(nfquote.UnsafeText):
        nfquote.check_ipt_payload("*mangle\n-A NODEWARD-INPUT -j ACCEPT\nCOMMIT\n",
                                  ("mangle",), tuple(OURS), ("INPUT",))
    with pytest.raises(nfquote.UnsafeText):
        nfquote.check_nft_payload('table inet nodeward {\n\tchain input {\n\t\tcounter comment '
                                  '"x" ; } ; flush ruleset ; table inet nodeward { chain input '
                                  '{\n\t}\n}\n', "nodeward", ("input",))
    with pytest.raises(nfquote.UnsafeText):
        nfquote.comment_text('nodeward: x"')


def test_kernel_interface_rules():
    assert nfquote.check_ifglob("a" * 15, "w") and nfquote.check_ifglob("a" * 15 + "*", "w")
    for bad in ("a" * 16, ".", "..", "a b", "a:b", "a/b", "*", "a*b", "a+", ""):
        with pytest.raises(nfquote.UnsafeText):
            nfquote.check_ifglob(bad, "w")
