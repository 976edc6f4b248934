"""`ip xfrm` text parsing (built text and real `ip -s` output from shared/realworld) and
the NW410-NW413 checks. Real kernel states: tests/realkernel/test_xfrm_kernel.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nodeward.checks.encryption import PeerNode, ipsec_findings
from nodeward.collect.xfrm import (
    XfrmError,
    XfrmLifetime,
    XfrmState,
    XfrmTmpl,
    parse_policies,
    parse_states,
)

KEY = "0x0102030405060708091011121314151617181920"

STATES = f"""src 10.0.0.1 dst 10.0.0.2
\tproto esp spi 0x00000100 reqid 1 mode transport
\treplay-window 0
\taead rfc4106(gcm(aes)) {KEY} 128
\tanti-replay context: seq 0x0, oseq 0x0, bitmap 0x00000000
\tsel src 0.0.0.0/0 dst 0.0.0.0/0
src 10.0.0.2 dst 10.0.0.1
\tproto esp spi 0x00000200 reqid 2 mode transport
\treplay-window 0
\tauth-trunc hmac(md5) {KEY} 96
\tenc ecb(cipher_null)
"""

POLICIES = """src 10.0.0.1/32 dst 10.0.0.2/32
\tdir out priority 0 ptype main
\ttmpl src 10.0.0.1 dst 10.0.0.2
\t\tproto esp reqid 1 mode transport
src 10.0.0.2/32 dst 10.0.0.1/32
\tdir in priority 0 ptype main
\ttmpl src 10.0.0.2 dst 10.0.0.1
\t\tproto esp reqid 2 mode transport
src 10.0.0.1/32 dst 10.0.0.3/32
\tdir out action block priority 5 ptype main
src ::/0 dst ::/0
\tsocket in priority 0 ptype main
"""


def test_parse_states_drops_keys():
    a, b = parse_states(STATES)
    assert (a.src, a.dst, a.proto, a.spi, a.reqid) == ("10.0.0.1", "10.0.0.2", "esp", 0x100, 1)
    assert a.algorithms == (("aead", "rfc4106(gcm(aes))"),)
    assert b.algorithms == (("auth-trunc", "hmac(md5)"), ("enc", "ecb(cipher_null)"))
    assert KEY not in repr((a, b))


def test_parse_policies():
    p = parse_policies(POLICIES)
    assert [(x.dir, x.action) for x in p] == [("out", "allow"), ("in", "allow"),
                                              ("out", "block"), ("socket-in", "allow")]
    assert p[0].tmpls[0].reqid == 1 and p[0].tmpls[0].mode == "transport"
    assert p[2].priority == 5 and p[2].tmpls == ()


@pytest.mark.parametrize("text", ["\tproto esp\n", "src 1.1.1.1\n\tfoo\n",
                                  "src 1.1.1.1 dst 2.2.2.2\n\tproto esp spi zz\n"])
def test_parse_states_malformed(text):
    with pytest.raises(XfrmError):
        parse_states(text)


def test_ipsec_findings():
    b = PeerNode("b", ("10.0.0.2",))
    c = PeerNode("c", ("10.0.0.3",))
    states, pols = parse_states(STATES), parse_policies(POLICIES)
    fs = ipsec_findings(states, pols, [b, c], ["10.0.0.1"])
    got = sorted((f.id, f.component, str(f.severity)) for f in fs)
    assert got == [("NW410", "c", "high"), ("NW410", "c", "high"),  # block is no protection
                   ("NW412", "10.0.0.2->10.0.0.1", "high"),  # cipher_null
                   ("NW412", "10.0.0.2->10.0.0.1", "medium")]  # hmac(md5)
    # drop the second state: its policy's template has no SA any more
    fs = ipsec_findings(states[:1], pols, [b], ["10.0.0.1"])
    assert [(f.id, f.evidence["tmpl"]["reqid"]) for f in fs] == [("NW411", 2)]


REALWORLD = Path(__file__).resolve().parents[2].parent / "shared" / "realworld" / "xfrm"


def _realworld(name: str) -> str:
    path = REALWORLD / name
    if not path.exists():
        pytest.skip(f"{path} missing (shared/realworld sits beside the repo)")
    return path.read_text()


def test_ip_s_xfrm_policy_real_output():
    """`ip -s xfrm policy` prints `reqid 1(0x00000001)` in templates: that raised an
    uncaught ValueError."""
    (p,) = parse_policies(_realworld("cilium-doc-policy-stats.txt"))
    assert (p.dir, p.action, p.priority) == ("fwd", "allow", 2975)
    assert p.tmpls == (XfrmTmpl("0.0.0.0", "10.92.0.164", "esp", 1, "tunnel", optional=True),)


def test_ip_s_xfrm_state_real_output():
    (s,) = parse_states(_realworld("cilium-doc-state-stats.txt"))
    assert (s.src, s.dst, s.spi, s.reqid, s.mode) == ("10.92.1.189", "10.92.0.164", 3, 1,
                                                      "tunnel")
    assert s.algorithms == (("aead", "rfc4106(gcm(aes))"),)
    assert "856f15d0" not in repr(s)


def test_policy_bad_numbers_are_xfrm_errors():
    for text in ("src 1.1.1.1/32 dst 2.2.2.2/32\n\tdir out priority x\n",
                 "src 1.1.1.1/32 dst 2.2.2.2/32\n\tdir out\n\ttmpl src 1.1.1.1 dst 2.2.2.2\n"
                 "\t\tproto esp reqid (1)\n"):
        with pytest.raises(XfrmError):
            parse_policies(text)


def test_soft_lifetime_nw413_unless_rekeyed():
    old = XfrmState("10.0.0.1", "10.0.0.2", "esp", 0x100, 1, lifetime=XfrmLifetime(
        soft_add_s=3600, hard_add_s=3900, add_time=1000))
    now = 1000 + 3700
    assert [f.id for f in ipsec_findings([old], [], [], [], now=now)] == ["NW413"]
    assert ipsec_findings([old], [], [], [], now=1000 + 60) == []
    assert ipsec_findings([old], [], [], []) == []  # no clock: time limits not judged
    new = XfrmState("10.0.0.1", "10.0.0.2", "esp", 0x101, 1, lifetime=XfrmLifetime(
        soft_add_s=3600, add_time=now - 100))
    assert ipsec_findings([old, new], [], [], [], now=now) == []


def test_cilium_templates_real_output():
    """Cilium's fwd template is `level use` with a wildcard source: no SA is needed; its
    out template is satisfied by its state, its in template has none in this excerpt."""
    fwd = parse_policies(_realworld("cilium-doc-policy-stats.txt"))
    assert fwd[0].tmpls[0].optional
    assert ipsec_findings((), fwd, [], ["10.92.1.189"]) == []
    pols = parse_policies(_realworld("cilium-doc-policy-tmpl.txt"))
    states = parse_states(_realworld("cilium-doc-state-short.txt"))
    got = [(f.id, f.component) for f in ipsec_findings(states, pols, [], ["10.56.0.17"])]
    assert got == [("NW411", "10.56.1.238->10.56.0.17")]
    wild = XfrmTmpl("0.0.0.0", "10.56.1.238", "esp", 1, "tunnel")
    out = [dataclasses.replace(pols[0], tmpls=(wild,))]
    assert ipsec_findings(states, out, [], ["10.56.0.17"]) == []


def test_optional_only_policy_does_not_require_encryption():
    pols = parse_policies(POLICIES.replace("proto esp reqid 1 mode transport",
                                           "proto esp reqid 1 mode transport\n\t\tlevel use"))
    fs = ipsec_findings(parse_states(STATES), pols, [PeerNode("b", ("10.0.0.2",))],
                        ["10.0.0.1"])
    assert [(f.id, f.evidence.get("direction")) for f in fs if f.id != "NW412"] == [
        ("NW410", "out")]
