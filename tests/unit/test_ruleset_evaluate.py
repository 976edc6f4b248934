"""Evaluator semantics that the kernel differential test does not reach cheaply: uncertain
matches, goto/return, NOTRACK on loopback, state matches; reach and NW2xx."""

from __future__ import annotations

from nodeward.checks.reachability import ALLOWED, Role, findings
from nodeward.model import ProcessInfo, Severity, Socket
from nodeward.ruleset import Packet, Ruleset, evaluate
from nodeward.ruleset.iptables import parse_iptables_save
from nodeward.ruleset.nft import parse_nft_json
from nodeward.ruleset.reach import ReachMemo, reachability

LOCAL = ["10.0.0.1", "10.244.0.1"]


def rs(body: str, chains: str = "", frontend: str = "iptables-legacy", policy: str = "ACCEPT",
       table: str = "filter") -> Ruleset:
    text = f"*{table}\n:INPUT {policy} [0:0]\n:FORWARD {policy} [0:0]\n{chains}{body}COMMIT\n"
    return Ruleset(parse_iptables_save(text, frontend=frontend))


def pkt(src="10.244.1.2", dst="10.0.0.1", port=10250, iif="cali0", **kw) -> Packet:
    return Packet(4, src, dst, "tcp", port, iif=iif, **kw)


def test_unknown_match_forks_and_reports_why():
    r = rs("-A INPUT -m recent --rcheck --name x -j DROP\n")
    v = evaluate(r, pkt(), local_addresses=LOCAL)
    assert v.action == "accept" and not v.certain
    assert any("--rcheck" in why for why in v.reasons)
    # both forks agree -> certain
    r = rs("-A INPUT -m recent --rcheck --name x -j ACCEPT\n", policy="ACCEPT")
    assert evaluate(r, pkt(), local_addresses=LOCAL).certain


def test_goto_returns_to_callers_caller_and_user_chain_return():
    chains = ":A - [0:0]\n:B - [0:0]\n"
    body = ("-A INPUT -j A\n-A INPUT -j DROP\n-A A -g B\n-A A -j ACCEPT\n"
            "-A B -p udp -j ACCEPT\n")
    v = evaluate(rs(body, chains), pkt(), local_addresses=LOCAL)
    # B falls off -> back to INPUT (not to A), INPUT #2 drops
    assert v.action == "drop" and v.trace[-1].chain == "INPUT" and v.trace[-1].index == 2


def test_negations_wildcards_multiport_addrtype_sets():
    body = ("-A INPUT ! -i cali+ -j ACCEPT\n"
            "-A INPUT -p tcp -m multiport --dports 22,10250:10255 -m addrtype "
            "--dst-type LOCAL -j REJECT\n")
    r = rs(body, policy="DROP")
    assert evaluate(r, pkt(iif="eth0"), local_addresses=LOCAL).action == "accept"
    assert evaluate(r, pkt(), local_addresses=LOCAL).action == "reject"
    assert evaluate(r, pkt(port=9100), local_addresses=LOCAL).action == "drop"
    assert evaluate(r, pkt(dst="10.9.9.9"), local_addresses=LOCAL).action == "drop"
    r2 = rs("-A INPUT -m set --match-set unknownset src -j DROP\n")
    v = evaluate(r2, pkt(), local_addresses=LOCAL)
    assert not v.certain and "unknownset" in " ".join(v.reasons)


def test_notrack_changes_state_except_on_loopback():
    raw = "*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j CT --notrack\nCOMMIT\n"
    filt = ("*filter\n:INPUT DROP [0:0]\n-A INPUT -m conntrack --ctstate NEW -j ACCEPT\n"
            "COMMIT\n")
    r = Ruleset(parse_iptables_save(raw + filt))
    assert evaluate(r, pkt(), local_addresses=LOCAL).action == "drop"  # UNTRACKED
    lo = pkt(src="127.0.0.1", dst="127.0.0.1", iif="lo")
    # the kernel's CT target leaves already-tracked (looped-back) packets alone
    assert evaluate(r, lo, local_addresses=LOCAL).action == "accept"


def test_state_matches_decide_for_new_packets_in_both_flavours():
    body = "-A INPUT -m state --state ESTABLISHED,RELATED -j DROP\n"
    for fe in ("iptables-legacy", "iptables-nft"):
        v = evaluate(rs(body, frontend=fe), pkt(), local_addresses=LOCAL)
        assert v.certain and v.action == "accept"
    v = evaluate(rs("-A INPUT -m conntrack ! --ctstate NEW -j DROP\n"), pkt(ctstate="INVALID"),
                 local_addresses=LOCAL)
    assert v.action == "drop"


def test_a_drop_in_any_frontend_drops():
    legacy = rs("-A INPUT -s 10.244.0.0/16 -j DROP\n")
    nft = rs("-A INPUT -j ACCEPT\n", frontend="iptables-nft")
    both = legacy.merge(nft)
    v = evaluate(both, pkt(), local_addresses=LOCAL)
    assert v.action == "drop" and v.trace[-1].frontend == "iptables-legacy"


def test_reach_and_findings():
    r = rs("-A INPUT -i cali+ -p tcp -m tcp --dport 2379 -j DROP\n"
           "-A FORWARD -d 169.254.169.254/32 -j DROP\n")
    web = ProcessInfo(pid=77, name="nginx", comm="nginx", exe="/usr/sbin/nginx")
    socks = [Socket("tcp", 4, "0.0.0.0", 2379, 1, 0), Socket("tcp", 4, "0.0.0.0", 10250, 2, 0),
             Socket("tcp", 4, "127.0.0.1", 10248, 3, 0), Socket("tcp", 4, "0.0.0.0", 53, 4, 0),
             Socket("tcp", 4, "0.0.0.0", 8081, 5, 0, process=web)]
    reach = reachability(socks, r, node_addresses=["10.0.0.1"], node_cidrs=["10.0.0.0/24"],
                         pod_cidrs=["10.244.0.0/16"], pod_interfaces=["cali+"])
    by_port = {x.socket.port: x for x in reach}
    assert by_port[2379].verdicts["pod"].action == "drop"
    assert by_port[2379].verdicts["anywhere"].action == "accept"
    assert set(by_port[10248].verdicts) == {"loopback"}
    roles = {socks[0]: Role("etcd", Severity.CRITICAL, ALLOWED["loopback"]),
             socks[1]: Role("kubelet", Severity.HIGH, ALLOWED["node"]),
             socks[3]: Role("dns", Severity.LOW, ALLOWED["any"])}
    got = findings(reach, r, roles, pod_cidrs=["10.244.0.0/16"])
    ids = sorted((f.id, f.port) for f in got)
    assert ("NW201", 10250) in ids and ("NW201", 2379) not in ids
    assert ("NW202", 2379) in ids and ("NW202", 10250) in ids
    # NW203 is for host services the catalog does not know (nginx on 8081), not for
    # components (NW201's) nor for ones pods may reach (max_scope any).
    assert [(f.port, f.process, f.address) for f in got if f.id == "NW203"] == \
        [(8081, "nginx", "10.0.0.1")]
    assert not any(f.port == 53 for f in got)
    assert not any(f.id == "NW204" and f.address == "169.254.169.254" for f in got)
    nw205 = [f for f in got if f.id == "NW205"]  # INPUT ACCEPT and 10250 uncovered
    assert len(nw205) == 1 and nw205[0].evidence["uncovered"] == ["tcp/10250"]
    f = next(f for f in got if f.id == "NW201")
    assert f.evidence["rule_path"] and f.evidence["certain"]


def test_memo_reuses_verdicts_only_for_the_same_ruleset():
    text = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -i cali+ -j DROP\nCOMMIT\n"
    tables = parse_iptables_save(text)
    socks = [Socket("tcp", 4, "0.0.0.0", p, p, 0) for p in (22, 80)]
    memo = ReachMemo()
    kw = {"node_addresses": ["10.0.0.1"], "memo": memo}
    first = reachability(socks, Ruleset(tables, fingerprint="a"), **kw)
    again = reachability(socks, Ruleset(tables, fingerprint="a"), **kw)
    assert memo.hits == 2 and [x.verdicts for x in again] == [x.verdicts for x in first]
    opened = Ruleset(parse_iptables_save(text.replace("DROP", "ACCEPT")), fingerprint="b")
    changed = reachability(socks, opened, **kw)
    assert memo.hits == 2 and changed[0].verdicts["pod"].action == "accept"
    assert first[0].verdicts["pod"].action == "drop"


def test_device_bound_sockets_only_see_their_interface():
    r = rs("-A INPUT -i eth1 -j DROP\n")
    socks = [Socket("tcp", 4, "0.0.0.0", 10249, 1, 0, interface="lo"),
             Socket("tcp", 4, "0.0.0.0", 9000, 2, 0, interface="cali3"),
             Socket("tcp", 4, "0.0.0.0", 9001, 3, 0, interface="eth1")]
    got = {x.socket.port: x for x in reachability(
        socks, r, node_addresses=["10.0.0.1"], pod_interfaces=["cali+"])}
    assert set(got[10249].verdicts) == {"loopback"}
    assert set(got[9000].verdicts) == {"pod"}
    assert set(got[9001].verdicts) == {"node", "anywhere"}
    assert got[9001].verdicts["node"].action == "drop"  # judged as arriving on eth1


def test_dual_stack_wildcard_is_judged_on_both_families():
    """[::] without IPV6_V6ONLY takes IPv4 too: an IPv4 path left open is an exposure even
    when ip6tables closes IPv6."""
    r = Ruleset(parse_iptables_save("*filter\n:INPUT DROP [0:0]\nCOMMIT\n", family=6))
    dual = Socket("tcp", 6, "::", 6443, 1, 0)
    v6only = Socket("tcp", 6, "::", 6444, 2, 0, v6only=True)
    got = {x.socket.port: x for x in reachability(
        [dual, v6only], r, node_addresses=["10.0.0.1", "fd00::1"])}
    assert got[6443].verdicts["pod"].action == "accept"
    assert got[6443].destinations["pod"] == "10.0.0.1"
    assert got[6444].verdicts["pod"].action == "drop"


def test_pod_gateway_addresses_are_local_and_a_pod_destination():
    """A pod can aim a wildcard socket at its gateway address on the node; a rule that
    guards only the node address leaves that path open. And addrtype LOCAL knows the
    gateway address."""
    r = rs("-A INPUT -d 10.0.0.1/32 -p tcp -m tcp --dport 10250 -j DROP\n"
           "-A INPUT -m addrtype ! --dst-type LOCAL -j DROP\n")
    socks = [Socket("tcp", 4, "0.0.0.0", 10250, 1, 0), Socket("tcp", 4, "10.244.1.1", 53, 2, 0)]
    got = {x.socket.port: x for x in reachability(
        socks, r, node_addresses=["10.0.0.1"], pod_gateways=["10.244.1.1"])}
    assert got[10250].verdicts["pod"].action == "accept"
    assert got[10250].destinations["pod"] == "10.244.1.1"
    assert got[10250].verdicts["node"].action == "drop"  # node class aims at node addresses
    assert got[53].verdicts["pod"].action == "accept"  # LOCAL: not dropped by rule 2
    without = {x.socket.port: x for x in reachability(socks, r, node_addresses=["10.0.0.1"])}
    assert without[53].verdicts["pod"].action == "drop"


def test_ipv6_wildcard_reached_over_link_local():
    """A v6-only [::] socket on a node without global IPv6: pods still reach it at the
    node's fe80:: address on their veth, unless ip6tables says otherwise."""
    sock = Socket("tcp", 6, "::", 2380, 1, 0, v6only=True)
    kw = {"node_addresses": ["10.0.0.1"], "pod_interfaces": ["cali+"],
          "link_local": {"pod": ["fe80::ecee:eeff:feee:eeee"], "node": ["fe80::1"]}}
    open_ = reachability([sock], Ruleset(()), **kw)[0]
    assert set(open_.verdicts) == {"loopback", "node", "pod"}  # fe80 is not routed: no "anywhere"
    assert open_.destinations["pod"] == "fe80::ecee:eeff:feee:eeee"
    closed = Ruleset(parse_iptables_save(
        "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s fe80::/10 -i cali+ -j DROP\nCOMMIT\n",
        family=6))
    got = reachability([sock], closed, **kw)[0]
    assert got.verdicts["pod"].action == "drop" and got.verdicts["node"].action == "accept"
    assert set(reachability([sock], Ruleset(()), node_addresses=["10.0.0.1"])[0].verdicts) \
        == {"loopback"}


def _nft_rule(family: str, expr: list) -> dict:
    return {"rule": {"family": family, "table": "t", "chain": "c", "handle": 9, "expr": expr}}


def _nft_doc(family: str, rules: list, hook: str = "input", prio: int = 0) -> str:
    import json

    return json.dumps({"nftables": [
        {"table": {"family": family, "name": "t", "handle": 1}},
        {"set": {"family": family, "name": "pods6", "table": "t", "type": "ipv6_addr",
                 "handle": 2, "flags": ["interval"],
                 "elem": [{"prefix": {"addr": "fd44::", "len": 16}}]}},
        {"chain": {"family": family, "table": "t", "name": "c", "handle": 3, "type": "filter",
                   "hook": hook, "prio": prio, "policy": "accept"}},
        *(_nft_rule(family, r) for r in rules)]})


def test_ip6tables_addrtype_requires_every_type_named():
    """Found by the kernel differential test. ip6tables' addrtype is not IPv4's "one of":
    every type named must hold (xt_addrtype match_type6), so --dst-type UNICAST matches the
    node's own address and --src-type LOCAL,MULTICAST matches no unicast address (::1 was
    dropped by the evaluator, accepted by the kernel)."""
    def v6(rule: str, src: str, dst: str, iif: str) -> str:
        r = Ruleset(parse_iptables_save(f"*filter\n:INPUT ACCEPT [0:0]\n{rule}\nCOMMIT\n",
                                        family=6))
        return evaluate(r, Packet(6, src, dst, "tcp", 2379, iif=iif),
                        local_addresses=["fd77::1"]).action

    lo, pod = ("::1", "::1", "lo"), ("fd44:1::2", "fd77::1", "cali0")
    assert v6("-A INPUT -m addrtype --src-type LOCAL,MULTICAST -j DROP", *lo) == "accept"
    assert v6("-A INPUT -m addrtype --dst-type UNICAST -j DROP", *lo) == "drop"
    assert v6("-A INPUT -m addrtype --dst-type UNICAST -j DROP", *pod) == "drop"
    assert v6("-A INPUT -m addrtype --dst-type LOCAL -j DROP", *pod) == "drop"
    assert v6("-A INPUT -m addrtype ! --dst-type LOCAL,UNICAST -j DROP", *pod) == "accept"
    assert v6("-A INPUT -m addrtype --src-type LOCAL -j DROP", *pod) == "accept"
    # IPv4 keeps "the address's type is one of them"
    r4 = rs("-A INPUT -m addrtype --dst-type LOCAL,MULTICAST -j DROP\n"
            "-A INPUT -m addrtype --dst-type UNICAST -j REJECT\n")
    assert evaluate(r4, pkt(), local_addresses=LOCAL).action == "drop"
    # and so does nft's fib (one type per address), for IPv6 too
    fib = [{"match": {"op": "==", "left": {"fib": {"flags": ["daddr"], "result": "type"}},
                      "right": {"set": ["local", "multicast"]}}}, {"drop": None}]
    tables, sets = parse_nft_json(_nft_doc("inet", [fib]))
    v = evaluate(Ruleset(tables, sets), Packet(6, *pod[:2], "tcp", 2379, iif="cali0"),
                 local_addresses=["fd77::1"])
    assert v.action == "drop" and v.certain


def test_inet_ip6_matches_do_not_match_ipv4_packets():
    """Found by the kernel differential test. In an inet table `ip6 saddr != @set` (or
    `ip6 saddr != X`) carries an implicit "meta nfproto ipv6" that `nft -j` does not list:
    an IPv4 packet does not match it. The evaluator dropped IPv4 packets the kernel let
    through."""
    neg_set = [{"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                          "right": "@pods6"}}, {"drop": None}]
    neg_addr = [{"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "daddr"}},
                           "right": {"prefix": {"addr": "fd77::", "len": 64}}}}, {"drop": None}]
    neg_v4 = [{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                         "right": "10.244.0.0/16"}}, {"reject": None}]
    for rule in (neg_set, neg_addr):
        tables, sets = parse_nft_json(_nft_doc("inet", [rule]))
        r = Ruleset(tables, sets)
        assert evaluate(r, pkt(), local_addresses=LOCAL).action == "accept"
        v6 = Packet(6, "2001:db8::1", "2001:db8:100::1", "tcp", 2379, iif="eth0")
        assert evaluate(r, v6, local_addresses=["2001:db8:100::1"]).action == "drop"
    tables, sets = parse_nft_json(_nft_doc("inet", [neg_v4]))
    v6 = Packet(6, "fd44:1::2", "fd77::1", "udp", 53, iif="cali0")
    assert evaluate(Ruleset(tables, sets), v6, local_addresses=["fd77::1"]).action == "accept"
    assert evaluate(Ruleset(tables, sets), pkt(src="10.9.0.1"),
                    local_addresses=LOCAL).action == "reject"


def test_ct_state_is_invalid_before_conntrack():
    """Found by the kernel differential test. The raw table (priority -300) runs before
    conntrack (-200): an arriving first packet has no entry yet, so `--ctstate NEW` does not
    match there (the kernel sees INVALID) while it does in mangle/filter. Looped-back
    packets were tracked on the way out and keep NEW; NOTRACK still makes UNTRACKED."""
    def raw(rule: str, p: Packet) -> str:
        text = (f"*raw\n:PREROUTING ACCEPT [0:0]\n{rule}\nCOMMIT\n"
                "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m conntrack --ctstate INVALID "
                "-j REJECT\n-A INPUT -m conntrack --ctstate UNTRACKED -j DROP\nCOMMIT\n")
        return evaluate(Ruleset(parse_iptables_save(text)), p, local_addresses=LOCAL).action

    lo = pkt(src="127.0.0.1", dst="127.0.0.1", iif="lo")
    assert raw("-A PREROUTING -m conntrack --ctstate NEW,ESTABLISHED -j DROP", pkt()) == "accept"
    assert raw("-A PREROUTING -m conntrack --ctstate NEW,ESTABLISHED -j DROP", lo) == "drop"
    assert raw("-A PREROUTING -m state --state INVALID -j DROP", pkt()) == "drop"
    assert raw("-A PREROUTING -m conntrack --ctstate INVALID -j CT --notrack", pkt()) == "drop"
    # the state after raw is conntrack's again: NEW (not the INVALID raw saw)
    assert raw("-A PREROUTING -j LOG", pkt()) == "accept"
    # nft chains at raw priority too, not the ones after conntrack
    ct = [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
          {"drop": None}]
    for prio, want in ((-300, "accept"), (-150, "drop")):
        tables, sets = parse_nft_json(_nft_doc("ip", [ct], hook="prerouting", prio=prio))
        assert evaluate(Ruleset(tables, sets), pkt(), local_addresses=LOCAL).action == want


def test_nft_reject_with_tcp_reset_only_matches_tcp():
    """Found by the kernel differential test (UDP probes). nft lists `meta l4proto tcp
    reject with tcp reset` as `reject with tcp reset`: the l4proto check is still in the
    kernel, so UDP goes on to the next rule. The evaluator rejected UDP."""
    rst = [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "cali0"}},
           {"reject": {"type": "tcp reset"}}]
    tables, sets = parse_nft_json(_nft_doc("ip", [rst]))
    r = Ruleset(tables, sets)
    assert evaluate(r, pkt(), local_addresses=LOCAL).action == "reject"
    udp = Packet(4, "10.244.1.2", "10.0.0.1", "udp", 53, iif="cali0")
    assert evaluate(r, udp, local_addresses=LOCAL).action == "accept"


def _nat(rules: str, family: int = 4, filt: str = "") -> Ruleset:
    return Ruleset(parse_iptables_save(
        f"*nat\n:PREROUTING ACCEPT [0:0]\n{rules}COMMIT\n"
        f"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n{filt}COMMIT\n", family=family))


def test_nat_is_skipped_for_looped_back_and_untracked_packets():
    """Found by the kernel differential test. nat PREROUTING only sees a connection's first
    packet when conntrack can bind it there: a looped-back packet was bound in OUTPUT, and
    a NOTRACKed one is never NATed. The evaluator DNATed both."""
    r = _nat("-A PREROUTING -p tcp -m tcp --dport 30080 -j DNAT --to-destination "
             "10.0.0.1:2379\n", filt="-A INPUT -p tcp -m tcp --dport 2379 -j REJECT\n")
    assert evaluate(r, pkt(port=30080), local_addresses=LOCAL).action == "reject"
    lo = pkt(src="127.0.0.1", dst="127.0.0.1", port=30080, iif="lo")
    assert evaluate(r, lo, local_addresses=LOCAL).action == "accept"
    raw = Ruleset(parse_iptables_save(
        "*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j CT --notrack\nCOMMIT\n"))
    v = evaluate(raw.merge(r), pkt(port=30080), local_addresses=LOCAL)
    assert v.action == "accept" and v.certain


def test_first_nat_binding_wins():
    """Two nat chains on a hook: once one DNATs, the connection is bound and later nat
    chains are not consulted (nf_nat_inet_fn); a lab test proves it on the kernel."""
    first = _nat("-A PREROUTING -p tcp -m tcp --dport 30080 -j DNAT --to-destination "
                 "10.0.0.1:6443\n", filt="-A INPUT -p tcp -m tcp --dport 2379 -j REJECT\n")
    second = Ruleset(parse_iptables_save(
        "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -j DNAT --to-destination "
        "10.0.0.1:2379\nCOMMIT\n", frontend="iptables-nft"))
    both = first.merge(second)
    assert evaluate(both, pkt(port=30080), local_addresses=LOCAL).action == "accept"
    assert evaluate(both, pkt(port=6443), local_addresses=LOCAL).action == "reject"


def test_redirect_follows_the_incoming_interfaces_first_address():
    """REDIRECT goes to the incoming interface's first address of the family (IPv6: the
    first `ip addr` lists, i.e. the newest, of the destination's scope), port --to-ports.
    Without the interface addresses the evaluator cannot follow it and says so."""
    ifaddrs = {"eth0": ("10.0.0.1", "10.9.0.1", "2001:db8::1", "fd00::1", "fe80::1"),
               "cali0": ("fe80::2",)}
    r = _nat("-A PREROUTING -p tcp -m tcp --dport 30080 -j REDIRECT --to-ports 6443\n",
             filt="-A INPUT -d 10.0.0.1 -p tcp -m tcp --dport 6443 -j DROP\n")
    p = pkt(src="10.1.1.1", dst="10.9.0.1", port=30080, iif="eth0")
    assert evaluate(r, p, local_addresses=["10.0.0.1", "10.9.0.1"],
                    interface_addresses=ifaddrs).action == "drop"
    v = evaluate(r, p, local_addresses=["10.0.0.1", "10.9.0.1"])
    assert not v.certain and any("REDIRECT" in why for why in v.reasons)
    r6 = _nat("-A PREROUTING -p udp -m udp --dport 30080 -j REDIRECT --to-ports 6443\n",
              family=6, filt="-A INPUT -d 2001:db8::1 -p udp -m udp --dport 6443 -j REJECT\n")
    p6 = Packet(6, "2001:db8::9", "fd00::1", "udp", 30080, iif="eth0")
    assert evaluate(r6, p6, local_addresses=["2001:db8::1", "fd00::1"],
                    interface_addresses=ifaddrs).action == "reject"
    # no global address on cali0: the kernel drops what it cannot redirect
    p6 = Packet(6, "fd44::2", "fd00::1", "udp", 30080, iif="cali0")
    assert evaluate(r6, p6, local_addresses=["fd00::1"],
                    interface_addresses=ifaddrs).action == "drop"


def test_nft_dnat_and_redirect_are_followed():
    """Found by the kernel differential test. nft's `dnat ip6 to [v6]:port` was read as the
    address "v6:port", `dnat ip6 to` in an inet table was applied to IPv4 packets too, and
    `redirect` was not understood at all."""
    dnat6 = [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                        "right": 30080}},
             {"dnat": {"family": "ip6", "addr": "fd77::1", "port": 6443}}]
    redir = [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                        "right": 30080}}, {"redirect": {"port": 2379}}]
    tables, sets = parse_nft_json(_nft_doc("inet", [dnat6, redir], hook="prerouting",
                                           prio=-100))
    (rule6, rule_r), = [c.rules for t in tables for c in t.chains.values()]
    assert (rule6.target, rule6.arg) == ("DNAT", "[fd77::1]:6443")
    assert (rule_r.target, rule_r.arg) == ("REDIRECT", "2379")
    filt = Ruleset(parse_iptables_save(
        "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 6443 -j REJECT\n"
        "-A INPUT -p udp -m udp --dport 2379 -j DROP\nCOMMIT\n", family=6))
    filt4 = Ruleset(parse_iptables_save(
        "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 6443 -j REJECT\n"
        "-A INPUT -p udp -m udp --dport 2379 -j DROP\nCOMMIT\n"))
    r = Ruleset(tables, sets).merge(filt).merge(filt4)
    local = ["fd77::1", "10.0.0.1"]
    v6 = Packet(6, "fd44::2", "fd77::1", "tcp", 30080, iif="eth0")
    assert evaluate(r, v6, local_addresses=local).action == "reject"
    assert evaluate(r, pkt(port=30080), local_addresses=local).action == "accept"  # not v4
    udp = Packet(6, "fd44::2", "fd77::1", "udp", 30080, iif="eth0")
    assert evaluate(r, udp, local_addresses=local,
                    interface_addresses={"eth0": ("fd77::1",)}).action == "drop"


def test_reach_follows_redirect_with_interface_addresses():
    """kube-proxy-style REDIRECT in nat PREROUTING: with the node's interface addresses the
    scan follows it (to the incoming interface's address) instead of calling it uncertain."""
    r = Ruleset(parse_iptables_save(
        "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -i cali+ -p tcp -m tcp --dport 10250 "
        "-j REDIRECT --to-ports 10999\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n"
        "-A INPUT -p tcp -m tcp --dport 10999 -j DROP\nCOMMIT\n"))
    sock = Socket("tcp", 4, "0.0.0.0", 10250, 1, 0)
    kw = {"node_addresses": ["10.0.0.1"], "pod_interfaces": ["cali5"]}
    blind = reachability([sock], r, **kw)[0].verdicts["pod"]
    assert not blind.certain
    seen = reachability([sock], r, **kw, interface_addresses={
        "cali5": ["10.244.1.1"], "eth0": ["10.0.0.1"]})[0].verdicts["pod"]
    assert seen.certain and seen.action == "drop"  # redirected to 10999, dropped there
