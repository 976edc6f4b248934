"""`ip xfrm` text parsing (state text built here: this kernel cannot hold states) and the
NW410-NW412 checks."""

from __future__ import annotations

import pytest

from nodeward.checks.encryption import PeerNode, ipsec_findings
from nodeward.collect.xfrm import XfrmError, parse_policies, parse_states

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
