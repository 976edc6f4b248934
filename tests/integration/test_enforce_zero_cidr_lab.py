"""A `/0` in an allow list: applied once, then every later apply (and so every daemon
cycle) is a no-op on each backend, and the operator is told what the `/0` does; `'*'` as a
pod interface is refused before anything changes."""

from __future__ import annotations

import re

import pytest

from tests.lab import enforce_helpers as h

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("backend,flavour", [("iptables", "nft"), ("iptables", "legacy"),
                                             ("nftables", "nft")])
def test_zero_cidr_idempotent(lab, tmp_path, backend, flavour):
    if h.have("iptables-nft-restore", "iptables-legacy-restore", "nft"):
        h.require(h.have("iptables-nft-restore", "iptables-legacy-restore", "nft"))
    node = lab.node("node", f"{h.NODE_IP}/24")
    if flavour == "legacy":
        lab.sh("iptables-legacy", "-w", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT", ns=node)
    cfg = h.config(tmp_path, backend, ipv6=True,
                   allow={"kubelet": ["0.0.0.0/0", "::/0"]}, metadata_allow=["0.0.0.0/0"])
    r = h.nodeward(lab, node, cfg, "apply")
    assert r.returncode == 0, r.stderr
    assert "0.0.0.0/0 lets every IPv4 source reach kubelet" in r.stderr, r.stderr
    assert "::/0 lets every IPv6 source reach kubelet" in r.stderr, r.stderr
    for _ in range(2):
        r = h.nodeward(lab, node, cfg, "apply")
        assert r.returncode == 0 and re.search(r"apply: 0 changes", r.stdout), r.stdout
    r = h.nodeward(lab, node, cfg, "plan")
    assert "# 0 changes" in r.stdout, r.stdout
    before = h.full_snapshot(lab, node)
    star = h.config_raw(tmp_path, {"mode": "enforce", "backend": backend,
                                   "pod_interfaces": ["*"]}, "star.yaml")
    r = h.nodeward(lab, node, star, "apply")
    assert r.returncode == 2 and "every interface" in r.stderr, r.stderr
    assert h.full_snapshot(lab, node) == before
