"""`nodeward verify` in network namespaces: a node with two pods behind it, a
Kubernetes-style policy enforced by iptables rules this test writes (pod A may reach the
kubelet, pod B may not, neither may reach the metadata listener), and verify run inside the
node's namespace must report exactly which connections were blocked and how, matching the
test's own connections from each pod.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from nodeward.policy.verify import discover
from tests.lab import enforce_helpers as h

pytestmark = pytest.mark.lab

POD_B_IP = "10.244.2.2"
TIMEOUT = 0.4
#: The policy, as a CNI would write it for "allow metrics-server (pod A) to the kubelet;
#: nothing else from pods to node components; no pod to the metadata service". Pod B gets
#: three flavours of "no": DROP (times out), REJECT with a TCP reset (refused) and REJECT
#: with icmp-host-prohibited (rejected), so verify must tell them apart.
POLICY = [
    ["-A", "INPUT", "-s", f"{h.POD_IP}/32", "-p", "tcp", "--dport", "10250", "-j", "ACCEPT"],
    ["-A", "INPUT", "-s", f"{POD_B_IP}/32", "-p", "tcp", "--dport", "2379", "-j", "REJECT",
     "--reject-with", "tcp-reset"],
    ["-A", "INPUT", "-s", f"{POD_B_IP}/32", "-p", "tcp", "--dport", "6443", "-j", "REJECT",
     "--reject-with", "icmp-host-prohibited"],
    ["-A", "INPUT", "-i", "cali+", "-p", "tcp", "-m", "multiport", "--dports",
     "10250,10255,2379,6443", "-j", "DROP"],
    ["-A", "FORWARD", "-i", "cali+", "-d", f"{h.METADATA}/32", "-j", "DROP"],
]
#: (pod, port) -> what the rules above do; anything else from a pod to the node is open.
EXPECTED = {
    ("a", 10250): "open", ("a", 10255): "dropped", ("a", 2379): "dropped",
    ("a", 6443): "dropped", ("a", 22): "open",
    ("b", 10250): "dropped", ("b", 10255): "dropped", ("b", 2379): "refused",
    ("b", 6443): "rejected", ("b", 22): "open",
}


def test_verify_reports_what_pods_really_reach(lab, tmp_path):
    reason = h.have("iptables-nft")
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} under CI (apt package iptables, tests/run.sh)")
        pytest.skip(reason)
    t = h.build(lab)
    pod_b = lab.pod(t.node, f"{POD_B_IP}/24", gateway="10.244.2.1/24", host_if="cali1",
                    role="podb")
    lab.route(t.peer, "10.244.0.0/16", h.NODE_IP)
    for rule in POLICY:
        lab.sh("iptables-nft", "-w", *rule, ns=t.node)
    pods = {"a": t.pod, "b": pod_b}
    cfg = h.config_raw(tmp_path, {
        "node_cidrs": ["10.77.0.0/24"], "pod_cidrs": ["10.244.0.0/16"],
        "pod_interfaces": ["cali*"],
        # nodeward's own policy: metrics-server (pod A) may reach the kubelet
        "enforce": {"allow": {"kubelet": [f"{h.POD_IP}/32"]}},
        "verify": {"timeout": TIMEOUT, "rate": 200},
    })

    # The test's own connections: the rules do what the table says (this can fail).
    for (pod, port), what in EXPECTED.items():
        assert lab.connect(pods[pod], h.NODE_IP, port, timeout=TIMEOUT) == (what == "open"), \
            (pod, port)
    assert not lab.connect(t.pod, h.METADATA, 80, timeout=TIMEOUT)
    assert not lab.connect(pod_b, h.METADATA, 80, timeout=TIMEOUT)
    assert lab.connect(t.node, h.METADATA, 80, timeout=TIMEOUT)  # the listener is there

    # Discovery (from this process's namespace) lists both pods' named namespaces, once
    found = {p.name: p for p in discover()}
    for ns in (t.pod, pod_b):
        assert found[f"netns {ns.name}"].inode == os.stat(f"/run/netns/{ns.name}").st_ino

    r = h.nodeward(lab, t.node, cfg, "verify", "--netns", t.pod.name, "--netns",
                   pod_b.name, "--expect-blocked", f"{h.NODE_IP}:22", "--expect-open",
                   f"{h.PEER_IP}:9", "--format", "json", "--fail-on", "critical")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    names = {f"netns {t.pod.name}": "a", f"netns {pod_b.name}": "b"}
    got = {(names[c["netns"]], c["target"], c["port"]): c for c in doc["connections"]}

    # Every component listening on the node, at every node address (pod gateways too)
    for pod in "ab":
        for (p, port), what in EXPECTED.items():
            if p != pod or port == 22:
                continue
            for host in (h.NODE_IP, "10.244.1.1", "10.244.2.1"):
                c = got.pop((pod, host, port))
                assert c["observed"] == what, (pod, host, port, c)
                # pod A's kubelet is allowed (enforce.allow); everything else is not
                allowed = (pod, port) == ("a", 10250)
                assert c["expected"] == ("open" if allowed else "blocked"), c
                assert c["ok"], c
                assert c["kind"] == "component"
        ssh = got[(pod, h.NODE_IP, 22)]
        assert (ssh["observed"], ssh["expected"], ssh["ok"]) == ("open", "blocked", False)
        src = {"a": h.POD_IP, "b": POD_B_IP}[pod]
        assert {c["source"] for (p, _h, _p), c in got.items() if p == pod} == {src}
        md = got[(pod, h.METADATA, 80)]
        assert (md["observed"], md["expected"], md["ok"]) == ("dropped", "blocked", True)
        dead = got[(pod, h.PEER_IP, 9)]  # nothing listens there: the peer resets
        assert (dead["observed"], dead["expected"], dead["ok"]) == ("refused", "open", False)

    # nothing else was probed
    assert sorted(k for k in got if k[1] != h.NODE_IP or k[2] != 22) == sorted(
        (p, host, port) for p in "ab" for host, port in ((h.METADATA, 80), (h.PEER_IP, 9)))
    ids = sorted((f["id"], names[f["evidence"]["netns"]], f["address"], f["port"])
                 for f in doc["findings"])
    # ssh was expected blocked and is open (NW533, both pods); the peer's port 9 was
    # expected open and is not (NW532, both pods); nothing else is a mismatch
    assert ids == sorted([
        ("NW533", "a", h.NODE_IP, 22), ("NW533", "b", h.NODE_IP, 22),
        ("NW532", "a", h.PEER_IP, 9), ("NW532", "b", h.PEER_IP, 9)])

    # Open the kubelet and the metadata service to pod B: verify must now say so
    lab.sh("iptables-nft", "-w", "-I", "INPUT", "1", "-s", f"{POD_B_IP}/32", "-p", "tcp",
           "--dport", "10250", "-j", "ACCEPT", ns=t.node)
    lab.sh("iptables-nft", "-w", "-I", "FORWARD", "1", "-s", f"{POD_B_IP}/32", "-j",
           "ACCEPT", ns=t.node)
    assert lab.connect(pod_b, h.NODE_IP, 10250, timeout=TIMEOUT)
    assert lab.connect(pod_b, h.METADATA, 80, timeout=TIMEOUT)
    r = h.nodeward(lab, t.node, cfg, "verify", "--netns", pod_b.name)
    assert r.returncode == 1, r.stdout + r.stderr  # NW530/NW531 are high
    assert "NW530" in r.stdout and "NW531" in r.stdout and "MISMATCH" in r.stdout
    assert f"{POD_B_IP}" in r.stdout


def _pod_cgroup(name: str, uid: str) -> Path | None:
    """A real cgroup whose path names a pod the way the kubelet's cgroupfs driver does
    (…/kubepods/besteffort/pod<uid>), on cgroup v2 or v1's pids hierarchy."""
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/pids")):
        if (root / "cgroup.procs").exists() and os.access(root, os.W_OK):
            leaf = root / name / "kubepods" / "besteffort" / f"pod{uid}"
            try:
                leaf.mkdir(parents=True)
            except OSError:
                continue
            return leaf
    return None


def _remove_cgroup(leaf: Path, top: str) -> None:
    d = leaf
    while d.name != top:
        d.rmdir()
        d = d.parent
    d.rmdir()


def test_discover_finds_a_pod_by_its_cgroup_and_verify_probes_through_proc(lab, tmp_path):
    uid = "5e1f2c3d-4b5a-4697-8899-aabbccddeeff"
    t = h.build(lab)
    top = f"nodeward-test-{lab.prefix}"
    sleeper = lab.spawn(t.pod, ["sleep", "60"])
    leaf = _pod_cgroup(top, uid)
    if leaf is None:
        reason = "cannot create a cgroup here (no writable cgroup v2 or v1 pids tree)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} under CI: root on a Debian 12 host can")
        pytest.skip(reason)
    try:
        pod_ino = os.stat(f"/run/netns/{t.pod.name}").st_ino
        pid = sleeper.pid  # `ip netns exec` execs the command in place
        deadline = time.monotonic() + 5
        while os.stat(f"/proc/{pid}/ns/net").st_ino != pod_ino:
            assert time.monotonic() < deadline, "sleep never entered the pod namespace"
            time.sleep(0.05)
        (leaf / "cgroup.procs").write_text(str(pid))
        found = [p for p in discover() if p.source == "cgroup" and uid in p.name]
        assert [(p.name, p.inode, p.path) for p in found] == [
            (f"pod {uid}", pod_ino, f"/proc/{pid}/ns/net")]
        # and verify enters it through /proc/PID/ns/net
        cfg = h.config_raw(tmp_path, {})
        r = h.nodeward(lab, t.node, cfg, "verify", "--netns", found[0].path, "--timeout",
                       str(TIMEOUT), "--format", "json")
        assert r.returncode == 1, r.stderr  # no policy at all: the pod reaches everything
        doc = json.loads(r.stdout)
        kubelet = [c for c in doc["connections"]
                   if (c["target"], c["port"]) == (h.NODE_IP, 10250)]
        assert [(c["source"], c["observed"]) for c in kubelet] == [(h.POD_IP, "open")]
        ids = {(f["id"], f["port"]) for f in doc["findings"]}
        assert ("NW530", 10250) in ids and ("NW531", 80) in ids
    finally:
        lab.stop(sleeper)
        root = leaf.parents[3]
        for p in (leaf / "cgroup.procs").read_text().split():
            (root / "cgroup.procs").write_text(p)
        _remove_cgroup(leaf, top)
