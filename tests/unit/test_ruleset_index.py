"""The run index (exact destination address / exact destination ports) is an optimisation
only: for any chain, the indexed walk must give the same verdict and trace as a plain walk."""

from __future__ import annotations

import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from nodeward.ruleset import Packet, Ruleset, evaluate
from nodeward.ruleset.iptables import parse_iptables_save

# The package re-exports the function under the module's name; take the module itself.
ev = sys.modules["nodeward.ruleset.evaluate"]

ADDRS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
PORTS = [22, 80, 443, 10250]


KINDS = ["dst", "dport", "multiport", "range", "neg", "plain"]


def _rule(draw, kind: str) -> str:
    target = draw(st.sampled_from(["ACCEPT", "DROP", "REJECT", "RETURN", "LOG"]))
    proto = draw(st.sampled_from(["tcp", "udp"]))
    if kind == "dst":
        m = f"-d {draw(st.sampled_from(ADDRS))}/32 -p {proto} -m {proto} " \
            f"--dport {draw(st.sampled_from(PORTS))}"
    elif kind == "dport":
        m = f"-p {proto} -m {proto} --dport {draw(st.sampled_from(PORTS))}"
    elif kind == "multiport":
        ports = draw(st.lists(st.sampled_from(PORTS), min_size=1, max_size=3, unique=True))
        m = f"-p {proto} -m multiport --dports {','.join(map(str, ports))}"
    elif kind == "range":
        lo = draw(st.sampled_from(PORTS))
        m = f"-p {proto} -m {proto} --dport {lo}:{lo + draw(st.sampled_from([0, 5, 100]))}"
    elif kind == "neg":
        m = f"-p {proto} -m {proto} ! --dport {draw(st.sampled_from(PORTS))}"
    else:
        m = f"-s {draw(st.sampled_from(['10.0.0.0/8', '192.168.0.0/16']))}"
    return f"-A CHK {m} -j {target}\n"


@st.composite
def rulesets(draw) -> str:
    """Blocks of same-kind rules, long enough that runs get indexed, mixed with others."""
    rules = ""
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(KINDS))
        rules += "".join(_rule(draw, kind) for _ in range(draw(st.integers(1, 14))))
    return ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:CHK - [0:0]\n"
            f"-A INPUT -j CHK\n{rules}-A INPUT -j DROP\nCOMMIT\n")


@settings(max_examples=150, deadline=None)
@given(text=rulesets(), dst=st.sampled_from(ADDRS), port=st.sampled_from([*PORTS, 85, 9999]),
       proto=st.sampled_from(["tcp", "udp", "icmp"]))
def test_indexed_walk_equals_plain_walk(text, dst, port, proto) -> None:
    ruleset = Ruleset(parse_iptables_save(text))
    p = Packet(4, "10.1.2.3", dst, proto, port if proto != "icmp" else 0, iif="eth0")
    fast = evaluate(ruleset, p, local_addresses=ADDRS)
    saved = ev.MIN_RUN
    ev.MIN_RUN = 10**9
    try:
        slow = evaluate(ruleset, p, local_addresses=ADDRS)
    finally:
        ev.MIN_RUN = saved
        assert fast == slow


def test_index_is_used_on_long_runs() -> None:
    """So the property above compares two different walks, not one walk twice."""
    body = "".join(f"-A INPUT -p tcp -m tcp --dport {1000 + i} -j DROP\n" for i in range(50))
    ruleset = Ruleset(parse_iptables_save(f"*filter\n:INPUT ACCEPT [0:0]\n{body}COMMIT\n"))
    chain = ruleset.tables[0].chains["INPUT"]
    index = ev._chain_index(chain)
    assert index is not None and index[1][0][1] == "dport" and index[1][0][2][1040] == [40]
    v = evaluate(ruleset, Packet(4, "10.1.2.3", "10.0.0.1", "tcp", 1040, iif="eth0"))
    assert v.action == "drop" and v.trace[-1].index == 41
