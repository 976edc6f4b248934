"""The dead-man rollback survives the death of everything that applied it.

`apply --confirm-timeout` persists the previous state of our objects and a deadline, then
forks a watchdog in its own session. Killing the apply's whole process group inside the
confirm window: the watchdog restores at once. Killing the watchdog too (what a cgroup or
container kill does): the next nodeward to start (here `nodeward run`, in report mode)
restores it before anything else."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab import enforce_helpers as h

pytestmark = pytest.mark.lab

CONFIRM = 20  # seconds: the window the kills land in


def _state(lab, ns, backend: str) -> str:
    if backend == "nftables":
        text = h.nft_ruleset(lab, ns)
    else:
        text = "".join(h.save_text(lab, ns, "nft", t) for t in ("mangle", "filter"))
    return re.sub(r"counter packets \d+ bytes \d+|\[\d+:\d+\]", "", text)


def _nodeward_pids(lab, ns) -> list[int]:
    out = []
    for pid in lab.sh("ip", "netns", "pids", ns.name).stdout.split():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"nodeward" in cmd and b"apply" in cmd:
            out.append(int(pid))
    return out


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
@pytest.mark.parametrize("kill", ["process-group", "process-group+watchdog"])
def test_rollback_survives_killing_everything(lab, tmp_path, backend, kill):
    reason = h.have("iptables-nft-restore", "nft")
    if reason:
        h.require(reason)
    node = lab.node("node", f"{h.NODE_IP}/24")
    peer = lab.node("peer", f"{h.PEER_IP}/24")
    lab.listen(peer, "kube-apiserver", tcp=[f"{h.PEER_IP}:6443"])
    lab.listen(node, "sshd", tcp=[f"0.0.0.0:{h.SSH}"])
    h.add_foreign_iptables(lab, node, "nft")
    api = {"api_server": f"{h.PEER_IP}:6443"}
    r = h.nodeward(lab, node, h.config(tmp_path, backend, mode="audit", **api), "apply")
    assert r.returncode == 0, r.stderr
    previous = _state(lab, node, backend)
    (tmp_path / "bad").mkdir()
    bad = h.config(tmp_path / "bad", backend, probes=[f"{h.PEER_IP}:9"], **api)  # never ok
    p = subprocess.Popen(["ip", "netns", "exec", node.name, sys.executable, "-m", "nodeward",
                          "--config", str(bad), "apply", "--confirm-timeout", str(CONFIRM)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while _state(lab, node, backend) == previous:
            assert time.monotonic() < deadline, "apply never applied"
            time.sleep(0.05)
        time.sleep(0.5)  # inside the confirm window
        victims = [p.pid]
        if kill == "process-group+watchdog":
            victims += [pid for pid in _nodeward_pids(lab, node) if pid != p.pid]
            assert len(victims) >= 2, "no watchdog process found"
        t_kill = time.monotonic()
        os.killpg(p.pid, signal.SIGKILL)
        for pid in victims[1:]:
            os.kill(pid, signal.SIGKILL)
        p.wait(5)
        if kill == "process-group+watchdog":
            time.sleep(1)
            assert _state(lab, node, backend) != previous  # nobody left to roll back...
            r = h.nodeward(lab, node, h.config(tmp_path, backend, mode="report"), "run",
                           "--cycles", "1")
            assert "enforce_rolled_back" in r.stdout + r.stderr, r.stdout + r.stderr
        while _state(lab, node, backend) != previous:
            assert time.monotonic() - t_kill < CONFIRM + 10, "previous rules not restored"
            time.sleep(0.05)
        took = time.monotonic() - t_kill
        print(f"{backend}: killed {kill} ({len(victims)} pids) inside a {CONFIRM}s confirm "
              f"window: previous rules back after {took:.2f}s")
    finally:
        if p.poll() is None:
            p.kill()


def test_daemon_honours_confirm_timeout(lab, tmp_path):
    """`nodeward run` in enforce mode with enforce.confirm_timeout and a health target that
    never answers: the cycle's apply is rolled back, and later cycles do not retry it."""
    if h.have("iptables-nft-restore", "nft"):
        h.require(h.have("iptables-nft-restore", "nft"))
    node = lab.node("node", f"{h.NODE_IP}/24")
    peer = lab.node("peer", f"{h.PEER_IP}/24")
    lab.listen(peer, "kube-apiserver", tcp=[f"{h.PEER_IP}:6443"])
    before = _state(lab, node, "nftables")
    cfg = h.config_raw(tmp_path, {
        "node_cidrs": ["10.77.0.0/24"], "mode": "enforce", "backend": "nftables",
        "interval": 1, "metrics_address": "127.0.0.1:0",
        "enforce": {"control_plane": [f"{h.PEER_IP}/32"], "api_server": f"{h.PEER_IP}:6443",
                    "probes": [f"{h.PEER_IP}:9"], "confirm_timeout": 2}})
    r = h.nodeward(lab, node, cfg, "run", "--cycles", "4", timeout=60)
    events = [e for e in (ln for ln in r.stdout.splitlines()) if e.startswith("{")]
    rolled = [e for e in events if '"enforce_rolled_back"' in e]
    applied = [e for e in events if '"rules_applied"' in e or '"drift_repaired"' in e]
    print(f"daemon: {len(rolled)} rollback(s), {len(applied)} kept applies over 4 cycles")
    assert len(rolled) == 1 and applied == [], r.stdout + r.stderr
    assert _state(lab, node, "nftables") == before
