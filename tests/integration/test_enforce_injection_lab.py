"""Config injection, for real: the payloads that broke out of nodeward's objects in issue
18, and names that are legal but look like syntax, applied on every backend in a network
namespace holding foreign iptables chains (kube-proxy/Calico-shaped), INPUT policy DROP and
a native nft table. Refused configs exit 2 with no byte changed anywhere; accepted ones
leave every foreign table byte-identical while installed, and uninstall restores all."""

from __future__ import annotations

import random

import pytest
import yaml

from tests.injection_cases import ISSUE_IFACES, ISSUE_NAMES, TRICKY_OK
from tests.lab import enforce_helpers as h

pytestmark = pytest.mark.lab

BACKENDS = [
    pytest.param("iptables", "nft", id="iptables-nft"),
    pytest.param("iptables", "legacy", id="iptables-legacy"),
    pytest.param("nftables", "nft", id="nftables"),
    pytest.param("python-iptables", "legacy", id="python-iptables-legacy"),
]
ACCEPTED_PER_BACKEND = 2


def _cfg(tmp_path, backend: str, name: str, iface: str = "cali*", n: int = 0):
    data = {"node_cidrs": ["10.77.0.0/24"], "pod_cidrs": ["10.244.0.0/16"],
            "mode": "enforce", "backend": backend, "pod_interfaces": [iface],
            "catalog": [{"name": name, "ports": [9999], "processes": ["thing"],
                         "description": 'd" ; flush ruleset ; \n-F', "max_scope": "loopback"}],
            "enforce": {"control_plane": [f"{h.PEER_IP}/32"], "ipv6": True}}
    path = tmp_path / f"inject-{n}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _skip(backend: str) -> None:
    reason = h.have("iptables-nft-restore", "iptables-legacy-restore", "nft")
    if backend == "python-iptables":
        reason = reason or h.have_pyiptables()
    if reason:
        h.require(reason)


def _node(lab, tmp_path, flavour: str):
    node = lab.node("node", f"{h.NODE_IP}/24")
    peer = lab.node("peer", f"{h.PEER_IP}/24")
    lab.listen(node, "sshd", tcp=[f"0.0.0.0:{h.SSH}"])
    for tool in (h.flavour_cmd(flavour), f"ip6tables-{flavour}"):  # a legacy node's hints
        lab.sh(tool, "-w", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY", ns=node)
    h.add_foreign_iptables(lab, node, flavour)
    lab.sh(h.flavour_cmd(flavour), "-w", "-I", "INPUT", "1", "-p", "tcp", "--dport", "22",
           "-j", "ACCEPT", ns=node)
    lab.sh(h.flavour_cmd(flavour), "-w", "-P", "INPUT", "DROP", ns=node)
    (tmp_path / "foreign.nft").write_text(h.FOREIGN_NFT)
    lab.sh("nft", "-f", str(tmp_path / "foreign.nft"), ns=node)
    assert lab.connect(peer, h.NODE_IP, h.SSH)
    return node, peer


def test_hostile_configs_refused(lab, tmp_path):
    """The issue's payloads, each on the next backend in turn (refused at load, before a
    backend is chosen): exit 2, one line, no byte of any table changed."""
    _skip("iptables")
    node, _peer = _node(lab, tmp_path, "nft")
    before = h.full_snapshot(lab, node)
    cases = [(n, "cali*") for n in ISSUE_NAMES] + [("thing", i) for i in ISSUE_IFACES]
    for i, (name, iface) in enumerate(cases):
        backend = ("iptables", "nftables", "python-iptables", "auto")[i % 4]
        r = h.nodeward(lab, node, _cfg(tmp_path, backend, name, iface, i), "apply")
        assert r.returncode == 2, (name, iface, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "config error" in r.stderr, r.stderr
        assert h.full_snapshot(lab, node) == before, (name, iface)
    print(f"{len(cases)} hostile configs refused with exit 2 and no byte changed")


@pytest.mark.parametrize("backend,flavour", BACKENDS)
def test_syntax_looking_names_stay_inside(lab, tmp_path, backend, flavour):
    _skip(backend)
    node, peer = _node(lab, tmp_path, flavour)
    before = h.full_snapshot(lab, node)
    rng = random.Random(f"{backend}/{flavour}")
    accepted = rng.sample(TRICKY_OK, ACCEPTED_PER_BACKEND)
    for i, name in enumerate(accepted):
        cfg = _cfg(tmp_path, backend, name, n=i)
        r = h.nodeward(lab, node, cfg, "apply")
        assert r.returncode == 0, (name, r.stderr)
        during = h.full_snapshot(lab, node)
        assert f"nodeward: pod to {name}" in during["nft list ruleset"] + "".join(
            during[t] for t in h.SAVES)
        assert h.foreign_view(during, before) == h.foreign_view(before), name
        assert lab.connect(peer, h.NODE_IP, h.SSH), "failsafe closed"
        r = h.nodeward(lab, node, cfg, "uninstall")
        assert r.returncode == 0, r.stderr
        assert h.full_snapshot(lab, node) == before, name
    print(f"{backend}/{flavour}: syntax-looking names {accepted} stayed inside our objects; "
          "every foreign table byte-identical")
