"""Read-only commands change nothing, and apply -> uninstall leaves no trace, checked on the
whole netfilter state: iptables-legacy-save, ip6tables-legacy-save, iptables-nft-save,
ip6tables-nft-save (all without `-t`, which would instantiate a legacy table) and `nft list
ruleset`, byte-identical counters aside. Two starting points: an empty namespace, and one
holding real dumps (a kubeadm + flannel node's kube-proxy rules in iptables-nft, Calico's
failsafe rules in iptables-legacy, as a mixed node has them) plus a native nft table."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from tests.lab import enforce_helpers as h

pytestmark = pytest.mark.lab

REALWORLD = Path(__file__).resolve().parents[2].parent / "shared" / "realworld"
KUBE_PROXY = REALWORLD / "ipt" / "flannel-kubeadm-worker1.iptables"
CALICO = REALWORLD / "ipt" / "issues" / "k8s-61005-cali-failsafe.iptables"
BACKENDS = ["auto", "iptables", "nftables", "python-iptables"]
#: Commands that build a backend run once per backend; the others do not depend on it.
PER_BACKEND = [["plan"], ["plan", "--mode", "audit"], ["status", "--format", "json"]]
ONCE = [["scan", "--format", "json"], ["scan", "--explain", "10250"], ["status"],
        ["run", "--cycles", "1"]]


def _skip() -> None:
    reason = h.have("iptables-nft-restore", "iptables-legacy-restore", "nft")
    if reason:
        h.require(reason)


def _diff(a: dict[str, str], b: dict[str, str]) -> str:
    out = []
    for k in a:
        if a[k] != b[k]:
            out += [f"== {k}", *difflib.unified_diff(a[k].splitlines(), b[k].splitlines(),
                                                   lineterm="", n=0)]
    return "\n".join(out[:40])


def _node(lab, tmp_path: Path, shape: str):
    node = lab.node("node", f"{h.NODE_IP}/24")
    lab.listen(node, "kubelet", tcp=[f"0.0.0.0:{h.PORTS['kubelet']}"])
    lab.listen(node, "sshd", tcp=[f"0.0.0.0:{h.SSH}"])
    if shape == "k8s":
        if not KUBE_PROXY.exists():
            pytest.fail(f"real-world dumps missing: {REALWORLD}")
        lab.sh("sh", "-c", f"iptables-nft-restore < {KUBE_PROXY}", ns=node)
        lab.sh("sh", "-c", f"iptables-legacy-restore < {CALICO}", ns=node)
        # kubelet's canary chains, which every kubelet creates in its flavour's mangle
        for tool in ("iptables-legacy", "ip6tables-legacy"):
            lab.sh(tool, "-w", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY", ns=node)
        lab.sh("ip6tables-nft", "-w", "-N", "KUBE-FIREWALL", ns=node)
        lab.sh("ip6tables-nft", "-w", "-A", "INPUT", "-j", "KUBE-FIREWALL", ns=node)
        (tmp_path / "foreign.nft").write_text(h.FOREIGN_NFT)
        lab.sh("nft", "-f", str(tmp_path / "foreign.nft"), ns=node)
    return node


@pytest.mark.parametrize("shape", ["empty", "k8s"])
def test_read_only_commands_touch_nothing(lab, tmp_path, shape):
    _skip()
    node = _node(lab, tmp_path, shape)
    before = h.full_snapshot(lab, node)
    runs = 0
    for backend in BACKENDS:
        cfg = h.config(tmp_path, backend, mode="report", ipv6=True)
        for argv in PER_BACKEND + (ONCE if backend == "auto" else []):
            r = h.nodeward(lab, node, cfg, *argv)
            ok = (0, 1, 2) if backend == "python-iptables" else (0, 1)  # 2: refused (nft host)
            assert r.returncode in ok, f"{backend} {argv}: {r.returncode} {r.stderr}"
            now = h.full_snapshot(lab, node)
            assert now == before, f"{backend} {' '.join(argv)} changed:\n{_diff(before, now)}"
            runs += 1
    print(f"{shape}: {runs} read-only runs over {len(BACKENDS)} backends: all byte-identical")


@pytest.mark.parametrize("shape", ["empty", "k8s"])
@pytest.mark.parametrize("backend", ["iptables", "nftables", "python-iptables"])
def test_apply_uninstall_restores_every_table(lab, tmp_path, shape, backend):
    """Tables that existed are left as they were, tables nodeward created are removed --
    except a legacy table, which the kernel cannot remove: on an empty namespace the
    legacy backends leave an empty mangle table (ACCEPT) and say so; a kubelet node has
    its legacy mangle already."""
    _skip()
    if backend == "python-iptables" and h.have_pyiptables():
        h.require(h.have_pyiptables())
    node = _node(lab, tmp_path, shape)
    if backend == "python-iptables" and shape == "empty":  # libiptc needs a legacy host
        for tool in ("iptables-legacy", "ip6tables-legacy"):
            lab.sh(tool, "-w", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT", ns=node)
    before = h.full_snapshot(lab, node)
    cfg = h.config(tmp_path, backend, mode="enforce", ipv6=True)
    r = h.nodeward(lab, node, cfg, "apply")
    assert r.returncode == 0, r.stderr
    during = h.full_snapshot(lab, node)
    assert during != before
    assert h.foreign_view(during, before) == h.foreign_view(before), "foreign objects moved"
    r = h.nodeward(lab, node, cfg, "uninstall")
    assert r.returncode == 0, r.stderr
    after = h.full_snapshot(lab, node)
    legacy_fresh = shape == "empty" and backend == "iptables" and "legacy" in r.stdout
    if legacy_fresh:
        pytest.fail("auto flavour picked legacy on an empty namespace")
    assert after == before, _diff(before, after)
