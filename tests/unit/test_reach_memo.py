"""The verdict memo across ruleset changes: a socket's verdicts are reused only while every
chain its evaluations walked (or jumped to) is unchanged, and the base-chain layout and the
sets are too. Property: after any sequence of rule changes, the memo's verdicts equal a fresh
evaluation's, and on a kube-proxy-style endpoint change most sockets are not re-evaluated."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nodeward.collect.ruleset import parse_ipset_save
from nodeward.model import Socket
from nodeward.ruleset import Ruleset
from nodeward.ruleset.iptables import parse_iptables_save
from nodeward.ruleset.reach import ReachMemo, reachability

PORTS = [22, 80, 2379, 6443, 10250, 30001, 30002, 30003]
SOCKETS = [Socket("tcp", 4, "0.0.0.0", p, i, 0) for i, p in enumerate(PORTS, 1)] + \
    [Socket("tcp", 4, "127.0.0.1", 9099, 99, 0)]
KW = {"node_addresses": ["10.0.1.5"], "node_cidrs": ["10.0.0.0/16"],
      "pod_cidrs": ["10.244.0.0/16"]}


def base() -> dict:
    """A mutable model of a small kube-proxy node: nat nodeports -> svc -> sep, a filter
    INPUT with an operator's rules and a jump into a chain that may be missing."""
    return {
        "policy": "ACCEPT",
        "input": ["-A INPUT -j KUBE-FIREWALL",
                  "-A INPUT -s 10.244.0.0/16 -p tcp -m tcp --dport 10250 -j DROP",
                  "-A INPUT -m set --match-set blocked src -j DROP"],
        "firewall": ["-A KUBE-FIREWALL -d 127.0.0.0/8 ! -s 127.0.0.0/8 -j DROP"],
        "extra_chain": False,
        "seps": {1: "10.244.1.2", 2: "10.244.1.3", 3: "10.244.1.4"},
        "blocked": ["192.0.2.0/24"],
    }


def text(m: dict) -> tuple[str, str]:
    nat = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
           ":POSTROUTING ACCEPT [0:0]", ":KUBE-NODEPORTS - [0:0]",
           "-A PREROUTING -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"]
    for i in m["seps"]:
        nat += [f":KUBE-SVC-{i} - [0:0]", f":KUBE-SEP-{i} - [0:0]"]
    for i, pod in m["seps"].items():
        nat += [f"-A KUBE-NODEPORTS -p tcp -m tcp --dport {30000 + i} -j KUBE-SVC-{i}",
                f"-A KUBE-SVC-{i} -j KUBE-SEP-{i}",
                f"-A KUBE-SEP-{i} -p tcp -m tcp -j DNAT --to-destination {pod}"]
    filt = ["*filter", f":INPUT {m['policy']} [0:0]", ":KUBE-FIREWALL - [0:0]"]
    if m["extra_chain"]:
        filt += [":EXTRA - [0:0]", "-A EXTRA -p tcp -m tcp --dport 6443 -j REJECT"]
    filt += [*m["input"], *m["firewall"], "-A INPUT -j EXTRA" if m["extra_chain"] else
             "-A INPUT -p tcp -m tcp --dport 1 -j EXTRA", "-A INPUT -i lo -j ACCEPT"]
    ipt = "\n".join([*nat, "COMMIT", *filt, "COMMIT"]) + "\n"
    ipset = "create blocked hash:net family inet\n" + "".join(
        f"add blocked {n}\n" for n in m["blocked"])
    return ipt, ipset


def ruleset(m: dict, n: int) -> Ruleset:
    ipt, ipset = text(m)
    return Ruleset(parse_iptables_save(ipt), parse_ipset_save(ipset), fingerprint=f"fp{n}")


MUTATIONS = ["sep", "input_drop", "input_remove", "firewall", "policy", "extra_chain",
             "set", "none"]


def mutate(m: dict, kind: str, k: int) -> None:
    if kind == "sep":  # an endpoint change: local (hairpin to the node) or a pod
        i = 1 + k % 3
        m["seps"][i] = "10.0.1.5" if k % 2 else f"10.244.9.{k % 200 + 1}"
    elif kind == "input_drop":
        m["input"].insert(k % (len(m["input"]) + 1),
                          f"-A INPUT -p tcp -m tcp --dport {PORTS[k % len(PORTS)]} -j DROP")
    elif kind == "input_remove" and len(m["input"]) > 1:
        m["input"].pop(k % len(m["input"]))
    elif kind == "firewall":
        m["firewall"].append(f"-A KUBE-FIREWALL -p tcp -m tcp --dport {PORTS[k % 8]} "
                             "-j REJECT")
    elif kind == "policy":
        m["policy"] = "DROP" if m["policy"] == "ACCEPT" else "ACCEPT"
    elif kind == "extra_chain":
        m["extra_chain"] = not m["extra_chain"]
    elif kind == "set":
        m["blocked"] = ["198.51.100.0/24"] if m["blocked"] == ["192.0.2.0/24"] else \
            ["192.0.2.0/24"]


def verdicts(reach) -> list:
    return [(r.socket.port, r.socket.address, r.verdicts, r.destinations) for r in reach]


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 50)),
                      min_size=1, max_size=6))
def test_memo_equals_fresh_evaluation_after_any_changes(steps) -> None:
    m = base()
    memo = ReachMemo()
    reachability(SOCKETS, ruleset(m, 0), memo=memo, **KW)
    for n, (kind, k) in enumerate(steps, 1):
        mutate(m, kind, k)
        rs = ruleset(m, n)
        got = reachability(SOCKETS, rs, memo=memo, **KW)
        want = reachability(SOCKETS, rs, **KW)
        assert verdicts(got) == verdicts(want), (kind, k)


def test_endpoint_change_reevaluates_only_the_sockets_that_walked_it() -> None:
    m = base()
    memo = ReachMemo()
    reachability(SOCKETS, ruleset(m, 0), memo=memo, **KW)
    assert memo.hits == 0
    mutate(m, "sep", 1)  # KUBE-SEP-2 (node port 30002) now DNATs to the node itself
    got = reachability(SOCKETS, ruleset(m, 1), memo=memo, **KW)
    # only the socket whose packets walked KUBE-SEP-2 (tcp/30002) was evaluated again
    assert memo.reevaluated == 1 and memo.hits == len(SOCKETS) - 1
    assert verdicts(got) == verdicts(reachability(SOCKETS, ruleset(m, 1), **KW))
