"""Dual-stack by default, with real connections: a node serving kubelet and etcd on IPv4
and IPv6, a pod behind cali0 and a peer node (not in the control plane), each with IPv4,
an IPv6 global address and its link-local one. With no `enforce.ipv6` key, apply closes
every protected port over all three paths from both, and SSH (the failsafe) stays open
over all three. `enforce.ipv6: false` is an explicit choice: plan and apply list the IPv6
paths it leaves open (real ones: they connect) and refuse without --allow-open-ipv6."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from tests.lab import enforce_helpers as h

pytestmark = pytest.mark.lab

PROBER = Path(__file__).resolve().parents[1] / "lab" / "prober.py"
NODE6, PEER6, POD6, GW6 = "fd00:77::1", "fd00:77::2", "fd00:244::2", "fd00:244::1"
PROTECTED = {"kubelet": 10250, "etcd": 2379}


def _probe(lab, ns, targets: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    req = json.dumps({"timeout": 0.6, "targets": [list(t) for t in targets]})
    r = lab.sh("sh", "-c", f"echo '{req}' | {sys.executable} {PROBER}", ns=ns)
    return dict(zip(targets, json.loads(r.stdout.splitlines()[-1]), strict=True))


def _link_local(lab, ns, ifname: str) -> str:
    out = lab.sh("ip", "-6", "-o", "addr", "show", "dev", ifname, "scope", "link", ns=ns).stdout
    return re.search(r"inet6 (fe80::[0-9a-f:]+)/64", out).group(1)


def _wait_dad(lab, *namespaces) -> None:
    deadline = time.monotonic() + 10
    for ns in namespaces:
        while lab.sh("ip", "-6", "addr", "show", "tentative", ns=ns).stdout.strip():
            assert time.monotonic() < deadline, "IPv6 DAD never finished"
            time.sleep(0.1)


@pytest.fixture
def topo(lab):
    if h.have("iptables-nft-restore", "nft"):
        h.require(h.have("iptables-nft-restore", "nft"))
    node = lab.node("node", f"{h.NODE_IP}/24")
    peer = lab.node("peer", f"{h.PEER_IP}/24")
    pod = lab.pod(node, f"{h.POD_IP}/24", gateway="10.244.1.1/24", host_if="cali0")
    for ns, dev, addr in ((node, "eth0", f"{NODE6}/64"), (peer, "eth0", f"{PEER6}/64"),
                          (node, "cali0", f"{GW6}/64"), (pod, "eth0", f"{POD6}/64")):
        lab.sh("ip", "addr", "add", addr, "dev", dev, "nodad", ns=ns)
    lab.sh("ip", "-6", "route", "add", "default", "via", GW6, ns=pod)
    lab.sysctl(node, "net.ipv6.conf.all.forwarding", "1")
    _wait_dad(lab, node, peer, pod)
    for name, port in (("kubelet", 10250), ("etcd", 2379), ("sshd", h.SSH)):
        lab.listen(node, name, tcp=[f"0.0.0.0:{port}", f"[::]:{port}"])
    paths = {
        "pod": [h.NODE_IP, NODE6, f"{_link_local(lab, node, 'cali0')}%eth0"],
        "peer": [h.NODE_IP, NODE6, f"{_link_local(lab, node, 'eth0')}%eth0"],
    }
    return node, {"pod": pod, "peer": peer}, paths


def _cfg(tmp_path, backend: str, **enforce) -> Path:
    return h.config_raw(tmp_path, {
        "node_cidrs": ["10.77.0.0/24", "fd00:77::/64"], "mode": "enforce", "backend": backend,
        "pod_cidrs": ["10.244.0.0/16", "fd00:244::/56"],
        "enforce": {"control_plane": ["10.77.0.9/32", "fd00:77::9/128"], **enforce}},
        f"dual-{backend}-{len(enforce)}.yaml")


def _matrix(lab, sources, paths, ports) -> dict[str, str]:
    out = {}
    for who, ns in sources.items():
        targets = [(host, port) for host in paths[who] for port in ports]
        for (host, port), res in _probe(lab, ns, targets).items():
            out[f"{who}->{host}:{port}"] = res
    return out


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_dual_stack_by_default(lab, tmp_path, topo, backend):
    node, sources, paths = topo
    ports = [*PROTECTED.values(), h.SSH]
    before = _matrix(lab, sources, paths, ports)
    assert set(before.values()) == {"open"}, {k: v for k, v in before.items() if v != "open"}
    r = h.nodeward(lab, node, _cfg(tmp_path, backend), "apply")
    assert r.returncode == 0, r.stderr
    assert "IPv4/IPv6" in r.stdout, r.stdout
    after = _matrix(lab, sources, paths, ports)
    for path, res in after.items():
        want = "open" if path.endswith(f":{h.SSH}") else "timeout"
        assert res == want, (path, res, after)
    print(f"{backend}: {len(after)} real connections over IPv4, IPv6 global, IPv6 "
          "link-local from a pod and a peer: protected ports dropped, failsafe open")
    assert h.nodeward(lab, node, _cfg(tmp_path, backend), "uninstall").returncode == 0


def test_ipv6_false_lists_open_paths_and_refuses(lab, tmp_path, topo):
    node, sources, paths = topo
    cfg = _cfg(tmp_path, "iptables", ipv6=False)
    for cmd in ("plan", "apply"):
        r = h.nodeward(lab, node, cfg, cmd)
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        for name, port in (("kubelet", 10250), ("etcd-client", 2379)):
            assert f"IPv6 path left open: {name} tcp/{port} on [::]" in r.stderr, r.stderr
    r = h.nodeward(lab, node, cfg, "apply", "--allow-open-ipv6")
    assert r.returncode == 0 and "IPv4)" in r.stdout, r.stdout + r.stderr
    res = _matrix(lab, {"pod": sources["pod"]}, {"pod": paths["pod"][:2]}, [10250])
    assert res == {f"pod->{h.NODE_IP}:10250": "timeout", f"pod->{NODE6}:10250": "open"}, res
