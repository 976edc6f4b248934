"""Real ESP states and policies on Debian 12's kernel, in the guest (the host kernel has
no ESP/AH): read by nodeward's NETLINK_XFRM state dump and policy parser inside node a,
checked, and cross-read with `ip -s xfrm state/policy` through the text parser."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.realkernel

LA = "10.78.0.1"


@pytest.fixture(scope="module")
def ipsec(guest):
    return guest.call("tests.realkernel.scenarios:ipsec_states", timeout=240)


def _f(read, component=None):
    assert read["errors"] == [], read["errors"]
    return [tuple(f) for f in read["findings"] if component in (None, f[1])]


def test_healthy_pair_no_finding_and_counters_rise(ipsec):
    h = ipsec["healthy"]
    assert _f(h) == []
    by_spi = {s["spi"]: s for s in h["states"]}
    assert sorted(by_spi) == [0x100, 0x101]
    for s in by_spi.values():  # two pings went out through 0x100 and came back in 0x101
        assert s["algorithms"] == [["aead", "rfc4106(gcm(aes))"]]
        assert s["lifetime"]["packets"] == 2 and s["lifetime"]["bytes"] > 0
        assert s["lifetime"]["add_time"] > 0 and s["lifetime"]["use_time"] > 0
    assert sorted((p["dir"], p["tmpls"][0]["reqid"]) for p in h["policies"]) == [
        ("in", 1), ("out", 1)]


def test_netlink_states_agree_with_ip_s_xfrm_text(ipsec):
    """The struct decoder and the text parser, on the same kernel's states and policies
    (`ip -s` output: numbers like `0x00000501(1281)` and `5(0x00000005)`)."""
    f = ipsec["faults"]
    key = ("src", "dst", "proto", "spi", "reqid", "mode", "algorithms")
    assert [tuple(s[k] for k in key) for s in f["states"]] == \
        [tuple(s[k] for k in key) for s in f["text_states"]]
    assert f["policies"] == f["text_policies"]
    assert "(1281)" in f["text_stats"] and "0x0102030405060708" not in repr(f["states"])


def test_missing_inbound_state_is_nw411(ipsec):
    assert _f(ipsec["faults"], f"10.78.0.3->{LA}") == [
        ("NW411", f"10.78.0.3->{LA}", "high")]


def test_weak_and_null_algorithms_are_nw412(ipsec):
    f = ipsec["faults"]
    algs = {s["spi"]: s["algorithms"] for s in f["states"]}
    assert algs[0x300] == [["auth-trunc", "hmac(md5)"], ["enc", "cbc(des3_ede)"]]
    assert algs[0x301] == [["auth-trunc", "digest_null"], ["enc", "ecb(cipher_null)"]]
    assert _f(f, f"{LA}->10.78.0.4") == [("NW412", f"{LA}->10.78.0.4", "medium")] * 2
    assert _f(f, f"10.78.0.4->{LA}") == [("NW412", f"10.78.0.4->{LA}", "high")] * 2


def test_hard_expired_state_is_gone_and_nw411(ipsec):
    f = ipsec["faults"]
    assert 0x400 not in {s["spi"] for s in f["states"]}  # the kernel deleted it
    assert _f(f, f"{LA}->10.78.0.5") == [("NW411", f"{LA}->10.78.0.5", "high")]


def test_soft_limit_passed_without_rekey_is_nw413(ipsec):
    f = ipsec["faults"]
    (sa,) = [s for s in f["states"] if s["spi"] == 0x500]
    assert sa["lifetime"]["soft_packets"] == 2 and sa["lifetime"]["packets"] == 3
    assert _f(f, f"{LA}->10.78.0.6") == [("NW413", f"{LA}->10.78.0.6", "medium")]


def test_wildcard_and_optional_templates_are_not_nw411(ipsec):
    """Cilium's templates: `tmpl src 0.0.0.0` takes the flow's address (the kernel used
    SA 0x700 for the ping: its counter rose), and a `level use` fwd template needs no SA."""
    f = ipsec["faults"]
    (sa,) = [s for s in f["states"] if s["spi"] == 0x700]
    assert sa["lifetime"]["packets"] >= 1
    fwd = [p for p in f["policies"] if p["dir"] == "fwd"]
    assert [t["optional"] for p in fwd for t in p["tmpls"]] == [True]
    assert [x for x in _f(f) if "10.78.0.7" in x[1] or x[1].startswith("0.0.0.0")] == []


def test_exactly_these_findings(ipsec):
    assert len(_f(ipsec["faults"])) == 7


def test_many_states_dump_read_whole(guest):
    many = guest.call("tests.realkernel.scenarios:xfrm_many_states", timeout=240)
    assert many["got"]["spis"] == many["text_spis"] == list(range(0x1000, 0x1000 + 500))
    assert many["got"]["algs"] == [["aead", "rfc4106(gcm(aes))"]]


def test_nodeward_scan_command_reports_the_same(ipsec):
    """`nodeward scan` in node a (cluster section: ipsec, the other nodes offline) gives
    exactly the faults phase's findings and exits 1."""
    import json

    cli = ipsec["cli"]
    assert cli["rc"] == 1, cli["stderr"]
    got = sorted([f["id"], f["component"], f["severity"]]
                 for f in json.loads(cli["stdout"])["findings"] if f["id"].startswith("NW4"))
    assert [tuple(f) for f in got] == _f(ipsec["faults"])
