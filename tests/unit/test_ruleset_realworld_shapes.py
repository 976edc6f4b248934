"""Evaluator and parser on the minimal reductions of real failures (../shared/realworld/
misc/min-*) and the real dumps they came from: marks, the OUTPUT path of local packets,
nft verdict maps, xt expressions, TPROXY, loops, nesting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeward.collect.ruleset import read_dump_files
from nodeward.ruleset import Packet, Ruleset, RulesetParseError, evaluate
from nodeward.ruleset.iptables import parse_iptables_save
from nodeward.ruleset.nft import parse_nft_json

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "realworld"
LOCAL = ["10.0.0.1", "127.0.0.1", "::1"]


def real(path: str) -> Path:
    p = REAL / path
    if not p.exists():
        pytest.skip(f"{p} missing (shared/realworld is cloned beside the repo)")
    return p


def ipt(text: str) -> Ruleset:
    return Ruleset(parse_iptables_save(text))


def test_loopback_to_a_nodeport_takes_nat_output_and_is_dnated_away():
    rs = read_dump_files([str(real("misc/min-loopback-nodeport-dnat.iptables"))])
    for dst in ("127.0.0.1", "10.0.0.1"):
        v = evaluate(rs, Packet(4, "127.0.0.1", dst, "tcp", 31455, iif="lo"),
                     local_addresses=LOCAL)
        assert v.action == "drop" and v.certain, v
        assert [s.chain for s in v.trace][:2] == ["OUTPUT", "KUBE-SERVICES"]
    # another port on loopback is untouched
    v = evaluate(rs, Packet(4, "127.0.0.1", "127.0.0.1", "tcp", 10250, iif="lo"),
                 local_addresses=LOCAL)
    assert v.action == "accept" and v.certain


def test_filter_output_drop_applies_to_local_packets():
    rs = ipt("*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
             "-A OUTPUT -o lo -p tcp --dport 2379 -j DROP\nCOMMIT\n")
    v = evaluate(rs, Packet(4, "127.0.0.1", "127.0.0.1", "tcp", 2379, iif="lo"))
    assert v.action == "drop" and v.certain and v.trace[-1].chain == "OUTPUT"
    # from a peer the OUTPUT chain is not on the path
    v = evaluate(rs, Packet(4, "10.0.0.2", "10.0.0.1", "tcp", 2379, iif="eth0"),
                 local_addresses=LOCAL)
    assert v.action == "accept" and v.certain


CALICO_MARKS = """*filter
:INPUT ACCEPT [0:0]
:cali-INPUT - [0:0]
:cali-from-host-endpoint - [0:0]
-A INPUT -j cali-INPUT
-A cali-INPUT -j MARK --set-xmark 0x0/0xf0000
-A cali-INPUT -j cali-from-host-endpoint
-A cali-INPUT -m mark --mark 0x10000/0x10000 -j ACCEPT
-A cali-INPUT -p tcp -m tcp --dport 10250 -j DROP
-A cali-from-host-endpoint -s 10.0.0.0/24 -j MARK --set-xmark 0x10000/0x10000
COMMIT
"""


def test_marks_set_then_matched():
    rs = ipt(CALICO_MARKS)
    peer = evaluate(rs, Packet(4, "10.0.0.2", "10.0.0.1", "tcp", 10250, iif="eth0"),
                    local_addresses=LOCAL)
    assert peer.action == "accept" and peer.certain
    other = evaluate(rs, Packet(4, "198.51.100.7", "10.0.0.1", "tcp", 10250, iif="eth0"),
                     local_addresses=LOCAL)
    assert other.action == "drop" and other.certain


def test_connmark_restore_of_a_new_connection_is_zero_and_marks_cross_tables():
    rs = ipt("*mangle\n:PREROUTING ACCEPT [0:0]\n"
             "-A PREROUTING -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff\n"
             "-A PREROUTING -p tcp --dport 22 -j MARK --set-xmark 0x4/0x4\nCOMMIT\n"
             "*filter\n:INPUT DROP [0:0]\n-A INPUT -m mark --mark 0x4/0x4 -j ACCEPT\nCOMMIT\n")
    ssh = evaluate(rs, Packet(4, "10.0.0.2", "10.0.0.1", "tcp", 22, iif="eth0"))
    assert ssh.action == "accept" and ssh.certain
    web = evaluate(rs, Packet(4, "10.0.0.2", "10.0.0.1", "tcp", 80, iif="eth0"))
    assert web.action == "drop" and web.certain


def test_nft_mark_set_and_match():
    doc = {"nftables": [
        {"table": {"family": "inet", "name": "t"}},
        {"chain": {"family": "inet", "table": "t", "name": "pre", "type": "filter",
                   "hook": "prerouting", "prio": -150, "policy": "accept"}},
        {"chain": {"family": "inet", "table": "t", "name": "in", "type": "filter",
                   "hook": "input", "prio": 0, "policy": "drop"}},
        {"rule": {"family": "inet", "table": "t", "chain": "pre", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                       "right": 22}},
            {"mangle": {"key": {"meta": {"key": "mark"}},
                        "value": {"|": [{"meta": {"key": "mark"}}, 65536]}}}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "in", "expr": [
            {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 65536]},
                       "right": 65536}}, {"accept": None}]}}]}
    tables, sets = parse_nft_json(json.dumps(doc))
    rs = Ruleset(tables, sets)
    assert evaluate(rs, Packet(4, "10.0.0.2", "10.0.0.1", "tcp", 22, iif="eth0")).action == \
        "accept"
    v = evaluate(rs, Packet(4, "10.0.0.2", "10.0.0.1", "tcp", 80, iif="eth0"))
    assert v.action == "drop" and v.certain


def test_kube_proxy_nftables_vmaps_are_certain():
    rs = read_dump_files([str(real("nft/kube-proxy-nftables-TestOverallNFTablesRules.json"))])
    assert not any(t.frontend != "nft" for t in rs.tables)
    node = "192.168.0.2"  # the test's node address, in @nodeport-ips
    verdicts = [evaluate(rs, Packet(4, "203.0.113.5", node, "tcp", port, iif="eth0"),
                         local_addresses=[node]) for port in (22, 10250, 3001, 3003)]
    assert all(v.certain for v in verdicts), [v.reasons for v in verdicts]
    # 3001 is a nodeport without endpoints: the no-endpoint-nodeports vmap drops it;
    # 3003 one with endpoints: @service-nodeports sends it to a pod (routed away)
    assert [v.action for v in verdicts] == ["accept", "accept", "drop", "drop"]
    assert any("vmap" in s.text for s in verdicts[2].trace)
    assert any(s.effect == "dnat" for s in verdicts[3].trace)


def test_min_vmap_and_xt_comment():
    rs = read_dump_files([str(real("misc/min-vmap.json"))])
    v = evaluate(rs, Packet(4, "10.0.0.2", "10.0.0.1", "tcp", 22, iif="eth0"),
                 local_addresses=LOCAL)
    assert v.certain and v.action == "accept"  # empty service map: nothing matches
    rs = read_dump_files([str(real("misc/min-xt-comment-drop.json"))])
    v = evaluate(rs, Packet(4, "10.0.0.2", "10.0.0.1", "tcp", 22, iif="eth0"))
    assert v.action == "drop" and v.certain  # an xt comment is no reason to doubt


def test_xt_match_is_an_uncertain_match_not_an_unknown_target():
    rs = read_dump_files([str(real("nft/flannel-worker1-as-iptables-nft.json"))])
    rule = next(r for t in rs.tables for c in t.chains.values()
                for r, text in zip(c.rules, c.rule_texts(), strict=True)
                if "KUBE-PROXY-FIREWALL" in text and c.name == "INPUT")
    assert rule.target == "JUMP" and any("xt match conntrack" in m.text for m in rule.matches)


def test_tproxy_diverts_to_another_port():
    rs = ipt("*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -m tcp --dport 80 -j "
             "TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x1/0x1\nCOMMIT\n")
    v = evaluate(rs, Packet(4, "10.0.0.2", "10.0.0.1", "tcp", 80, iif="eth0"))
    assert v.action == "drop" and v.certain and "tproxy" in v.trace[-1].effect
    assert evaluate(rs, Packet(4, "10.0.0.2", "10.0.0.1", "tcp", 81, iif="eth0")).certain


@pytest.mark.parametrize("path", ["misc/min-recent-reap.iptables",
                                  "misc/min-owner-socket-exists.iptables",
                                  "misc/min-socket-transparent.iptables",
                                  "v6:misc/min-rpfilter-invert.ip6tables",
                                  "misc/min-counters.iptables"])
def test_min_shapes_parse(path):
    spec = path.startswith("v6:")
    p = real(path[3:] if spec else path)
    rs = read_dump_files([("v6:" if spec else "") + str(p)])
    assert any(c.rules for t in rs.tables for c in t.chains.values())


def test_goto_loop_is_bounded_and_uncertain():
    rs = ipt("*filter\n:INPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n-A INPUT -j A\n"
             "-A A -g B\n-A B -g A\nCOMMIT\n")
    v = evaluate(rs, Packet(4, "10.0.0.2", "10.0.0.1", "tcp", 22, iif="eth0"))
    assert not v.certain and any("loop" in r for r in v.reasons)


def test_deep_json_is_a_parse_error_not_recursion():
    deep = '{"nftables": [' + '{"a": [' * 5000 + ']}' * 5000 + ']}'
    with pytest.raises(RulesetParseError, match=r"nested|JSON"):
        parse_nft_json(deep, source="deep.json")


@pytest.mark.parametrize(("name", "needle"), [
    ("misc/min-nft-text.nft", "nft -j list ruleset"),
    ("misc/moby-iptablesdoc-usernet-portmap.iptables-S", "use `iptables-save`"),
])
def test_wrong_kind_of_dump_says_what_to_do(name, needle):
    with pytest.raises(RulesetParseError) as e:
        read_dump_files([str(real(name))])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_headerless_ip6tables_dump_is_ipv6():
    text = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s fd00::/8 -j DROP\nCOMMIT\n"
    from nodeward.ruleset.iptables import guess_family
    assert guess_family(text) == 6
    assert guess_family(text.replace("fd00::/8", "10.0.0.0/8")) == 4


def test_comment_with_newline_and_quoted_names_do_not_kill_the_dump():
    # as this machine's iptables-nft-save 1.8.9 prints them
    text = ('*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment "two\nlines" '
            '-j ACCEPT\n-A INPUT -i a"b -j DROP\n-A INPUT -i c\'d -j DROP\n'
            '-A INPUT -m set --match-set s"1 src -j DROP\n'
            '-A INPUT -m comment --comment "q\\"x y" -j DROP\nCOMMIT\n')
    (t,) = parse_iptables_save(text)
    rules = t.chains["INPUT"].rules
    assert [r.target for r in rules] == ["ACCEPT", "DROP", "DROP", "DROP", "DROP"]
    assert rules[1].matches[0].args == ('a"b', False)
    assert rules[2].matches[0].args == ("c'd", False)
    assert rules[3].matches[0].args[0] == 's"1'


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) |
    st.sampled_from(["accept", "drop", "ip", "daddr", "tcp", "dport", "meta", "mark", "@m",
                     "10.0.0.1", "eth*", "new", "0"]),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.sampled_from(["match", "op", "left", "right", "payload", "protocol", "field",
                         "vmap", "key", "data", "set", "concat", "meta", "ct", "&", "|",
                         "mangle", "value", "jump", "goto", "target", "xt", "name", "type",
                         "numgen", "mod", "dnat", "addr", "port", "elem", "val", "fib",
                         "flags", "result", "prefix", "len", "range"]), kids, max_size=3),
    max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(st.lists(_json, max_size=5), _json)
def test_nft_json_garbage_never_tracebacks(expr, elem):
    doc = {"nftables": [
        {"table": {"family": "inet", "name": "t"}},
        {"chain": {"family": "inet", "table": "t", "name": "in", "type": "filter",
                   "hook": "input", "prio": 0, "policy": "accept"}},
        {"map": {"family": "inet", "table": "t", "name": "m", "type": ["ipv4_addr",
                 "inet_service"], "map": "verdict", "elem": [elem]}},
        {"rule": {"family": "inet", "table": "t", "chain": "in", "expr": expr}}]}
    try:
        tables, sets = parse_nft_json(json.dumps(doc))
    except RulesetParseError:
        return
    v = evaluate(Ruleset(tables, sets), Packet(4, "10.0.0.2", "10.0.0.1", "tcp", 22,
                                               iif="eth0"))
    assert v.action in ("accept", "drop", "reject")


def test_one_deeply_nested_nft_rule_is_uncertain_not_the_dump():
    value = "1"
    for _ in range(400):
        value = '{"|": [' + value + ', 1]}'
    doc = ('{"nftables": [{"table": {"family": "ip", "name": "t"}}, {"chain": {"family": '
           '"ip", "table": "t", "name": "in", "type": "filter", "hook": "input", "prio": 0, '
           '"policy": "drop"}}, {"rule": {"family": "ip", "table": "t", "chain": "in", '
           '"expr": [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": ' + value +
           '}}]}}, {"rule": {"family": "ip", "table": "t", "chain": "in", "expr": [{"match": '
           '{"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, '
           '"right": 22}}, {"accept": null}]}}]}')
    tables, sets = parse_nft_json(doc)
    v = evaluate(Ruleset(tables, sets), Packet(4, "10.0.0.2", "10.0.0.1", "tcp", 22))
    assert not v.certain and any("nested" in r for r in v.reasons)
