"""Enforcement in network namespaces, for every backend: real sockets, real netfilter.

Topology: node 10.77.0.1 (kubelet 10250/10255, etcd 2379, kube-apiserver 6443, sshd 22),
a pod 10.244.1.2 behind the node's cali0, a peer node 10.77.0.2 (the control plane), and an
"outside" namespace holding 169.254.169.254:80 routed through the node.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.lab import enforce_helpers as h

pytestmark = pytest.mark.lab

BACKENDS = [
    pytest.param("iptables", "nft", id="iptables-nft"),
    pytest.param("iptables", "legacy", id="iptables-legacy"),
    pytest.param("nftables", "nft", id="nftables"),
    pytest.param("python-iptables", "legacy", id="python-iptables-legacy"),
]
TIMEOUT = 0.5  # a dropped SYN costs this much; an open port answers at once


def _skip_unless(backend: str) -> None:
    reason = h.have("iptables-nft-restore", "iptables-legacy-restore", "nft")
    if backend == "python-iptables":
        reason = reason or h.have_pyiptables()
    if reason:
        pytest.skip(reason)


def _changes(out: str) -> int:
    m = re.search(r"apply: (\d+) changes", out)
    assert m, out
    return int(m.group(1))


def _reach(t: h.Topo, ns, port: int, host: str = h.NODE_IP) -> bool:
    return t.lab.connect(ns, host, port, timeout=TIMEOUT)


def _counts(lab, ns, cfg) -> dict[str, int]:
    """Packets per rule comment from `nodeward status` (audit: a LOG rule and a counting
    rule share a comment; the larger is the count)."""
    r = h.nodeward(lab, ns, cfg, "status", "--format", "json")
    assert r.returncode == 0, r.stderr
    counts: dict[str, int] = {}
    for rule in json.loads(r.stdout)["rules"]:
        counts[rule["comment"]] = max(counts.get(rule["comment"], 0), rule["packets"])
    return counts


def _strip_counters(text: str) -> str:
    return re.sub(r"counter packets \d+ bytes \d+", "counter", text)


@pytest.mark.parametrize("backend,flavour", BACKENDS)
def test_enforce_audit_uninstall(lab, tmp_path, backend, flavour):
    _skip_unless(backend)
    t = h.build(lab)
    h.add_foreign_iptables(lab, t.node, flavour)
    if backend == "nftables":
        (tmp_path / "foreign.nft").write_text(h.FOREIGN_NFT)
        lab.sh("nft", "-f", str(tmp_path / "foreign.nft"), ns=t.node)
    before_save = h.save_text(lab, t.node, flavour)
    before_nft = h.nft_ruleset(lab, t.node)
    cfg = h.config(tmp_path, backend)

    # Without nodeward the pod reaches everything: the assertions below can fail.
    assert all(_reach(t, t.pod, p) for p in h.PORTS.values())
    assert _reach(t, t.pod, 80, h.METADATA)

    r = h.nodeward(lab, t.node, cfg, "apply")
    assert r.returncode == 0, r.stderr
    assert _changes(r.stdout) > 0
    for name, port in h.PORTS.items():
        assert not _reach(t, t.pod, port), f"pod still reaches {name} {port}"
    assert not _reach(t, t.pod, 80, h.METADATA), "pod still reaches the metadata address"
    for name in ("kubelet", "etcd", "apiserver"):
        assert _reach(t, t.peer, h.PORTS[name]), f"allowed peer cut off {name}"
    assert not _reach(t, t.peer, h.PORTS["kubelet-readonly"])  # read-only: loopback only
    assert t.lab.connect(t.node, "127.0.0.1", h.PORTS["kubelet-readonly"])
    assert _reach(t, t.pod, h.SSH) and _reach(t, t.peer, h.SSH), "failsafe port closed"

    # Idempotent: nothing touched (a rewrite would reset the drop counters); foreign chains
    # byte-identical.
    dropped = _counts(lab, t.node, cfg)
    assert dropped.get("nodeward: pod to kubelet", 0) >= 1, dropped
    r = h.nodeward(lab, t.node, cfg, "apply")
    assert r.returncode == 0 and _changes(r.stdout) == 0, r.stdout + r.stderr
    assert _counts(lab, t.node, cfg) == dropped
    after = h.save_text(lab, t.node, flavour)
    assert h.chains_text(after) == h.chains_text(before_save)
    assert h.builtin_foreign(after) == h.builtin_foreign(before_save)
    if backend == "nftables":
        calico = lab.sh("nft", "list", "table", "ip", "calico-like", ns=t.node).stdout
        assert _strip_counters(calico) == _strip_counters(h.FOREIGN_NFT)
    else:  # our jump is first in mangle INPUT (where Felix and kube-proxy do not insert)
        mangle = h.save_text(lab, t.node, flavour, "mangle")
        assert mangle.split("-A INPUT ", 1)[1].startswith("-m comment --comment nodeward")

    # A controller removes our jump (or, for nft, a rule of ours): the next cycle restores.
    if backend == "nftables":
        handle = re.search(r'comment "nodeward: kubelet-readonly closed" # handle (\d+)',
                           lab.sh("nft", "-a", "list", "chain", "inet", "nodeward", "input",
                                  ns=t.node).stdout).group(1)
        lab.sh("nft", "delete", "rule", "inet", "nodeward", "input", "handle", handle,
               ns=t.node)
    else:
        lab.sh(h.flavour_cmd(flavour), "-w", "-t", "mangle", "-D", "INPUT", "-m", "comment",
               "--comment", "nodeward", "-j", "NODEWARD-INPUT", ns=t.node)
        lab.sh(h.flavour_cmd(flavour), "-w", "-I", "INPUT", "1", "-j", "cali-INPUT",
               ns=t.node)  # Felix-like: inserted on top
    assert _reach(t, t.peer, h.PORTS["kubelet-readonly"])  # the hole is real
    r = h.nodeward(lab, t.node, cfg, "apply")
    assert r.returncode == 0 and _changes(r.stdout) > 0, r.stdout + r.stderr
    assert not _reach(t, t.peer, h.PORTS["kubelet-readonly"])
    if backend != "nftables":
        lab.sh(h.flavour_cmd(flavour), "-w", "-D", "INPUT", "-j", "cali-INPUT", ns=t.node)

    # Audit: the same connections succeed, and the counters count them.
    r = h.nodeward(lab, t.node, cfg, "apply", "--mode", "audit")
    assert r.returncode == 0, r.stderr
    for port in h.PORTS.values():
        assert _reach(t, t.pod, port)
    assert _reach(t, t.pod, 80, h.METADATA)
    counts = _counts(lab, t.node, cfg)
    assert counts.get("nodeward: pod to kubelet", 0) >= 1, r.stdout
    assert counts.get("nodeward: pod to kubelet-readonly", 0) >= 1, r.stdout
    assert counts.get("nodeward: pod to kube-apiserver", 0) >= 1, r.stdout
    assert counts.get("nodeward: pod to etcd-client", 0) >= 1, r.stdout
    assert counts.get("nodeward: pod cali* to metadata", 0) >= 1, r.stdout

    # Uninstall: exactly what we added goes (counters aside: traffic moved them).
    r = h.nodeward(lab, t.node, cfg, "uninstall")
    assert r.returncode == 0, r.stderr
    after = h.save_text(lab, t.node, flavour)
    assert re.sub(r"\[\d+:\d+\]", "", after) == re.sub(r"\[\d+:\d+\]", "", before_save)
    assert _strip_counters(h.nft_ruleset(lab, t.node)) == _strip_counters(before_nft)
    assert _reach(t, t.pod, h.PORTS["kubelet"])


@pytest.mark.parametrize("backend,flavour", BACKENDS)
def test_uninstall_restores_exact_text(lab, tmp_path, backend, flavour):
    """No traffic in between: the save/list text after uninstall is byte-identical."""
    _skip_unless(backend)
    node = lab.netns("node")
    h.add_foreign_iptables(lab, node, flavour)
    before = (h.save_text(lab, node, "nft"), h.save_text(lab, node, "legacy"),
              h.nft_ruleset(lab, node))
    cfg = h.config(tmp_path, backend)
    r = h.nodeward(lab, node, cfg, "plan")
    assert r.returncode == 0, r.stderr
    assert ("+-A NODEWARD-INPUT " in r.stdout
            or "+table inet nodeward {" in r.stdout), r.stdout
    assert (h.save_text(lab, node, "nft"), h.save_text(lab, node, "legacy"),
            h.nft_ruleset(lab, node)) == before  # plan changes nothing
    for argv in (["apply"], ["apply", "--mode", "audit"], ["apply"], ["uninstall"]):
        r = h.nodeward(lab, node, cfg, *argv)
        assert r.returncode == 0, f"{argv}: {r.stderr}"
        if argv == ["apply"]:
            r = h.nodeward(lab, node, cfg, "plan")
            assert "# 0 changes" in r.stdout, r.stdout
    after = (h.save_text(lab, node, "nft"), h.save_text(lab, node, "legacy"),
             h.nft_ruleset(lab, node))
    assert after == before
    r = h.nodeward(lab, node, cfg, "uninstall")
    assert r.returncode == 0 and "nothing to remove" in r.stdout


BAD_CONFIGS = {
    "failsafe-removed": {"failsafe_ports": []},
    "failsafe-without-ssh": {"failsafe_ports": ["tcp/2222"]},
    "unknown-backend": {"backend": "ebtables"},
    "bad-cidr": {"enforce": {"control_plane": ["10.0.0.300/24"]}},
    "bad-allow-component": {"enforce": {"allow": {"kubelett": ["10.0.0.0/8"]}}},
    "api-server-cut-off": {"node_cidrs": [], "enforce": {"api_server": "10.77.0.1:6443"}},
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_exit_2_ruleset_unchanged(lab, tmp_path, case):
    _skip_unless("iptables")
    node = lab.node("node", f"{h.NODE_IP}/24")
    h.add_foreign_iptables(lab, node, "nft")
    before = (h.save_text(lab, node, "nft"), h.save_text(lab, node, "legacy"),
              h.nft_ruleset(lab, node))
    data = {"node_cidrs": ["10.77.0.0/24"], "mode": "enforce", "backend": "iptables",
            **BAD_CONFIGS[case]}
    cfg = h.config_raw(tmp_path, data)
    r = h.nodeward(lab, node, cfg, "apply")
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and ("error" in err or "refused" in err), err
    after = (h.save_text(lab, node, "nft"), h.save_text(lab, node, "legacy"),
             h.nft_ruleset(lab, node))
    assert after == before


def test_refusals_exit_2(lab, tmp_path):
    """python-iptables on an nft-backed host, and apply in report mode, change nothing."""
    _skip_unless("python-iptables")
    node = lab.netns("node")
    h.add_foreign_iptables(lab, node, "nft")
    before = (h.save_text(lab, node, "nft"), h.save_text(lab, node, "legacy"))
    r = h.nodeward(lab, node, h.config(tmp_path, "python-iptables"), "apply")
    assert r.returncode == 2 and "nft-backed" in r.stderr, r.stderr
    r = h.nodeward(lab, node, h.config(tmp_path, "iptables", mode="report"), "apply")
    assert r.returncode == 2 and "report" in r.stderr, r.stderr
    assert (h.save_text(lab, node, "nft"), h.save_text(lab, node, "legacy")) == before


@pytest.mark.parametrize("backend,flavour,previous", [
    pytest.param("iptables", "nft", None, id="iptables-nft-from-nothing"),
    pytest.param("iptables", "legacy", "audit", id="iptables-legacy-from-audit"),
    pytest.param("nftables", "nft", "audit", id="nftables-from-audit"),
])
def test_dead_man_rollback(lab, tmp_path, backend, flavour, previous):
    """--confirm-timeout: an unhealthy apply restores the previous rules and exits 1; a
    healthy one is kept."""
    _skip_unless(backend)
    node = lab.node("node", f"{h.NODE_IP}/24")
    peer = lab.node("peer", f"{h.PEER_IP}/24")
    lab.listen(peer, "kube-apiserver", tcp=[f"{h.PEER_IP}:6443"])
    h.add_foreign_iptables(lab, node, flavour)
    api = {"api_server": f"{h.PEER_IP}:6443"}
    if previous:
        r = h.nodeward(lab, node, h.config(tmp_path, backend, mode=previous, **api), "apply")
        assert r.returncode == 0, r.stderr
    before = (h.save_text(lab, node, flavour), h.nft_ruleset(lab, node))
    (tmp_path / "bad").mkdir()
    bad = h.config(tmp_path / "bad", backend, probes=[f"{h.PEER_IP}:9"], **api)
    t0 = time.monotonic()
    r = h.nodeward(lab, node, bad, "apply", "--confirm-timeout", "1.5")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "rolled back" in r.stderr and f"{h.PEER_IP}:9" in r.stderr
    assert time.monotonic() - t0 < 10
    after = (h.save_text(lab, node, flavour), h.nft_ruleset(lab, node))
    assert [_strip_counters(re.sub(r"\[\d+:\d+\]", "", x)) for x in after] == \
        [_strip_counters(re.sub(r"\[\d+:\d+\]", "", x)) for x in before]
    good = h.config(tmp_path, backend, **api)
    r = h.nodeward(lab, node, good, "apply", "--confirm-timeout", "5")
    assert r.returncode == 0 and "kept" in r.stdout, (r.stdout, r.stderr)
    r = h.nodeward(lab, node, good, "apply")
    assert _changes(r.stdout) == 0


def test_dead_man_survives_a_killed_apply(lab, tmp_path):
    """apply SIGKILLed inside its confirm window: the watchdog it forked rolls back."""
    _skip_unless("iptables")
    node = lab.node("node", f"{h.NODE_IP}/24")
    peer = lab.node("peer", f"{h.PEER_IP}/24")
    lab.listen(peer, "kube-apiserver", tcp=[f"{h.PEER_IP}:6443"])
    h.add_foreign_iptables(lab, node, "nft")

    def saved() -> str:
        return re.sub(r"\[\d+:\d+\]", "", h.save_text(lab, node, "nft")) + _strip_counters(
            h.nft_ruleset(lab, node))  # the health probes move counters

    before = saved()
    cfg = h.config(tmp_path, "iptables", api_server=f"{h.PEER_IP}:6443",
                   probes=[f"{h.PEER_IP}:9"])
    p = subprocess.Popen(["ip", "netns", "exec", node.name, sys.executable, "-m", "nodeward",
                          "--config", str(cfg), "apply", "--confirm-timeout", "60"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while "NODEWARD-INPUT" not in h.save_text(lab, node, "nft", "mangle"):
            assert time.monotonic() < deadline, "apply never applied"
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)  # `ip netns exec` execs: this is nodeward itself
        p.wait(5)
        deadline = time.monotonic() + 10
        while saved() != before:
            assert time.monotonic() < deadline, "watchdog did not restore the old rules"
            time.sleep(0.05)
    finally:
        if p.poll() is None:
            p.kill()


@pytest.mark.parametrize("backend,flavour", BACKENDS)
def test_ipv6_idempotent_and_removed(lab, tmp_path, backend, flavour):
    """With enforce.ipv6 the second family is managed too (ip6tables-restore / ip6 rules):
    a second apply changes nothing, uninstall leaves no trace in either family."""
    _skip_unless(backend)
    node = lab.netns("node")
    if flavour == "legacy":  # the kubelet's hint chain tells the flavour, as on a real node
        lab.sh("iptables-legacy", "-w", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT", ns=node)
    def saves() -> list[str]:
        return [re.sub(r"^# (Generated|Completed|Warning).*$", "",
                       lab.sh(f"{fam}-{flavour}-save", "-t", "filter", ns=node).stdout,
                       flags=re.M)
                for fam in ("iptables", "ip6tables")]

    for fam in ("iptables", "ip6tables"):  # a node's filter tables exist and hold rules
        lab.sh(f"{fam}-{flavour}", "-w", "-N", "KUBE-FIREWALL", ns=node)
        lab.sh(f"{fam}-{flavour}", "-w", "-A", "INPUT", "-j", "KUBE-FIREWALL", ns=node)
    before = saves()
    cfg = h.config_raw(tmp_path, {
        "node_cidrs": ["10.77.0.0/24", "fd00:77::/64"], "mode": "enforce", "backend": backend,
        "pod_cidrs": ["10.244.0.0/16", "fd00:244::/56"],
        "enforce": {"control_plane": ["10.77.0.2/32", "fd00:77::2/128"], "ipv6": True,
                    "allow": {"kube-apiserver": ["fd00:244:9::/64"]}}})
    r = h.nodeward(lab, node, cfg, "apply")
    assert r.returncode == 0 and _changes(r.stdout) > 0, r.stderr
    v6 = lab.sh(f"ip6tables-{flavour}-save", ns=node).stdout
    if backend == "nftables":
        assert "fd00:244:9::/64" in h.nft_ruleset(lab, node)
    else:
        assert "-A NODEWARD-INPUT -s fd00:244:9::/64 -p tcp -m tcp --dport 6443" in v6
    r = h.nodeward(lab, node, cfg, "apply")
    assert r.returncode == 0 and _changes(r.stdout) == 0, r.stdout + r.stderr
    assert h.nodeward(lab, node, cfg, "uninstall").returncode == 0
    assert saves() == before
    assert "nodeward" not in h.nft_ruleset(lab, node)
