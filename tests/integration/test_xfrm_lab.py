"""Real xfrm policies in lab namespaces, read back by the collector and checked. This
kernel has no ESP/AH, so states cannot be added here: real ESP states are tested on
Debian's kernel in the guest (tests/realkernel/test_xfrm_kernel.py)."""

from __future__ import annotations

import pytest

from nodeward.checks.encryption import PeerNode, ipsec_findings
from nodeward.collect.xfrm import collect_xfrm

pytestmark = pytest.mark.lab


def _policy(lab, ns, src, dst, direction, reqid):
    s, d = (src, dst) if direction == "out" else (dst, src)
    lab.run(ns, ["ip", "xfrm", "policy", "add", "src", f"{s}/32", "dst", f"{d}/32",
                 "dir", direction, "tmpl", "src", s, "dst", d, "proto", "esp",
                 "reqid", str(reqid), "mode", "transport"])


def test_policies_each_direction(lab):
    a = lab.node("a", "10.78.0.1/24")
    peers = [PeerNode("b", ("10.78.0.2",)), PeerNode("c", ("10.78.0.3",))]
    for n, ip in enumerate(("10.78.0.2", "10.78.0.3"), 1):
        _policy(lab, a, "10.78.0.1", ip, "out", n)
        _policy(lab, a, "10.78.0.1", ip, "in", n + 10)
    _states, pols, errors = collect_xfrm(netns=a.name)
    assert errors == ()
    assert len(pols) == 4
    nw410 = [f for f in ipsec_findings((), pols, peers, ["10.78.0.1"]) if f.id == "NW410"]
    assert nw410 == []
    # Remove b's inbound policy: exactly one NW410 for b, direction in.
    lab.run(a, ["ip", "xfrm", "policy", "delete", "src", "10.78.0.2/32", "dst", "10.78.0.1/32",
                "dir", "in"])
    _, pols, _ = collect_xfrm(netns=a.name)
    got = [(f.component, f.evidence["direction"])
           for f in ipsec_findings((), pols, peers, ["10.78.0.1"]) if f.id == "NW410"]
    assert got == [("b", "in")]
    # No states at all: every remaining template lacks its SA.
    assert sorted(f.id for f in ipsec_findings((), pols, peers, ["10.78.0.1"])
                  if f.id == "NW411") == ["NW411"] * 3
