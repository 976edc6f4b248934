"""`nodeward scan` on real sockets in a namespace the test builds.

A "node" namespace with a node address (in node_cidrs), a second address outside node_cidrs,
a pod namespace behind a pod-facing veth (cali*), a real etcd from Debian's etcd-server where
installed, and listeners whose process names are kubelet, kube-apiserver, kube-scheduler, a
squatter on the controller manager's port and UDP services. The scan must classify every
socket, attribute the right pid and process, and report exactly the expected findings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

NODEWARD = [sys.executable, "-m", "nodeward"]
NODE_IP, ODD_IP, POD_GW = "10.77.0.1", "192.168.50.1", "10.244.1.1"
NODE6 = "fd77::1"


def scan(lab, ns, config_text: str, *extra: str) -> tuple[int, str, str]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config_text)
    try:
        r = lab.sh(*NODEWARD, "--config", f.name, "scan", *extra, ns=ns, check=False,
                   timeout=60)
    finally:
        os.unlink(f.name)
    return r.returncode, r.stdout, r.stderr


CONFIG = """
node_name: lab-node
node_cidrs: [10.77.0.0/24, fd77::/64]
pod_cidrs: [10.244.0.0/16]
"""


@pytest.fixture(scope="module")
def node(module_lab, tmp_path_factory):
    lab = module_lab
    node = lab.node("node", f"{NODE_IP}/24")
    lab.addr(node, "eth0", f"{NODE6}/64")
    other = lab.netns("other")
    lab.veth(node, "eth1", other, "eth0")
    lab.addr(node, "eth1", f"{ODD_IP}/24")
    pod = lab.pod(node, "10.244.1.2/24", f"{POD_GW}/24", host_if="cali1a2b")
    procs = {}
    procs["kubelet"] = lab.listen(node, "kubelet", tcp=[
        "0.0.0.0:10250", "127.0.0.1:10248", f"{POD_GW}:10255", "127.0.0.1:10350"])
    procs["kube-apiserver"] = lab.listen(node, "kube-apiserver", tcp=["[::]:6443"])
    procs["kube-scheduler"] = lab.listen(node, "kube-scheduler", tcp=[f"{ODD_IP}:10259"])
    procs["squatter"] = lab.listen(node, "squatter", tcp=[f"{NODE_IP}:10257"])
    procs["wireguard-go"] = lab.listen(node, "wireguard-go", udp=["0.0.0.0:51820"])
    procs["kube-proxy"] = lab.listen(node, "kube-proxy", tcp=["0.0.0.0:10249"], device="lo")
    procs["dnsmasq"] = lab.listen(node, "dnsmasq", udp=[f"{POD_GW}:53", f"[{NODE6}]:53"])
    if shutil.which("etcd"):
        data = tmp_path_factory.mktemp("etcd")
        procs["etcd"] = lab.spawn(node, [
            "etcd", "--name", "lab", "--data-dir", str(data),
            "--listen-client-urls", f"http://127.0.0.1:2379,http://{NODE_IP}:2379",
            "--advertise-client-urls", f"http://{NODE_IP}:2379",
            "--listen-peer-urls", "http://0.0.0.0:2380",  # Go binds [::] dual-stack
            "--initial-advertise-peer-urls", f"http://{NODE_IP}:2380",
            "--initial-cluster", f"lab=http://{NODE_IP}:2380",
            "--listen-metrics-urls", "http://127.0.0.1:2381",
        ])
        wait_listening(lab, node, 2381)
    else:
        # No etcd-server package: a listener named etcd stands in.
        procs["etcd"] = lab.listen(node, "etcd", tcp=[
            "127.0.0.1:2379", f"{NODE_IP}:2379", "[::]:2380", "127.0.0.1:2381"])
    return lab, node, pod, procs


def wait_listening(lab, ns, port: int, timeout: float = 20) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = lab.sh("ss", "-Hltn", f"sport = :{port}", ns=ns).stdout
        if out.strip():
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


EXPECTED_SOCKETS = {
    # (proto, address, port): (scope, interface, process key, component)
    ("tcp", "0.0.0.0", 10250): ("wildcard", "", "kubelet", "kubelet"),
    ("tcp", "127.0.0.1", 10248): ("loopback", "", "kubelet", "kubelet-healthz"),
    ("tcp", POD_GW, 10255): ("pod", "cali1a2b", "kubelet", "kubelet-readonly"),
    ("tcp", "127.0.0.1", 10350): ("loopback", "", "kubelet", "kubelet"),
    ("tcp", "::", 6443): ("wildcard", "", "kube-apiserver", "kube-apiserver"),
    ("tcp", ODD_IP, 10259): ("node", "eth1", "kube-scheduler", "kube-scheduler"),
    ("tcp", NODE_IP, 10257): ("node-private", "eth0", "squatter", ""),
    ("udp", "0.0.0.0", 51820): ("wildcard", "", "wireguard-go", "wireguard"),
    # SO_BINDTODEVICE lo: a wildcard bind that only loopback traffic reaches
    ("tcp", "0.0.0.0", 10249): ("loopback", "lo", "kube-proxy", "kube-proxy-metrics"),
    ("udp", POD_GW, 53): ("pod", "cali1a2b", "dnsmasq", ""),
    ("udp", NODE6, 53): ("node-private", "eth0", "dnsmasq", ""),
    ("tcp", "127.0.0.1", 2379): ("loopback", "", "etcd", "etcd-client"),
    ("tcp", NODE_IP, 2379): ("node-private", "eth0", "etcd", "etcd-client"),
    ("tcp", "::", 2380): ("wildcard", "", "etcd", "etcd-peer"),
    ("tcp", "127.0.0.1", 2381): ("loopback", "", "etcd", "etcd-metrics"),
}

EXPECTED_FINDINGS = {
    ("NW102", "kubelet", "0.0.0.0", 10250),
    ("NW101", "kubelet-readonly", POD_GW, 10255),
    ("NW102", "kubelet-readonly", POD_GW, 10255),
    ("NW103", "kubelet-readonly", POD_GW, 10255),
    ("NW102", "kube-apiserver", "::", 6443),
    ("NW102", "kube-scheduler", ODD_IP, 10259),
    ("NW104", "kube-controller-manager", NODE_IP, 10257),
    ("NW102", "etcd-peer", "::", 2380),
    ("NW103", "etcd-peer", "::", 2380),
}

#: The node namespace has no firewall at all, so the default scan (which evaluates the live
#: ruleset) adds: every component beyond its max_scope reachable from pods and from
#: anywhere; every unidentified host service reachable from pods, on the address pods
#: reach; both metadata endpoints through FORWARD; no INPUT chain for IPv4 nor IPv6. Not
#: here: kube-proxy 10249 (bound to lo), the loopback-only sockets, wireguard (max_scope
#: any).
EXPECTED_FIREWALL = {
    *((nw, comp, addr, port)
      for nw in ("NW201", "NW202")
      for comp, addr, port in (("kubelet", "0.0.0.0", 10250), ("kubelet-readonly", POD_GW, 10255),
                               ("kube-apiserver", "::", 6443), ("kube-scheduler", ODD_IP, 10259),
                               ("etcd-client", NODE_IP, 2379), ("etcd-peer", "::", 2380))),
    ("NW203", "", POD_GW, 53), ("NW203", "", NODE6, 53), ("NW203", "", NODE_IP, 10257),
    ("NW204", "", "169.254.169.254", 80), ("NW204", "", "fd00:ec2::254", 80),
    ("NW205", "", "", None),
}


def test_scan_classifies_attributes_and_finds_exactly(node):
    lab, ns, _pod, procs = node
    rc, out, err = scan(lab, ns, CONFIG, "--format", "json")
    assert rc == 1, err  # high findings, default --fail-on high
    doc = json.loads(out)
    assert doc["node"] == "lab-node"
    assert doc["socket_source"] == "netlink"
    got = {(s["protocol"], s["address"], s["port"]): s for s in doc["sockets"]}
    assert set(got) == set(EXPECTED_SOCKETS), "scan saw other sockets than the test made"
    for key, (scope, iface, proc, comp) in EXPECTED_SOCKETS.items():
        s = got[key]
        assert (s["scope"], s["interface"], s["component"]) == (scope, iface, comp), key
        assert s["pid"] == procs[proc].pid, key
        assert s["process"] == proc, key
    found = {(f["id"], f["component"], f["address"], f["port"]) for f in doc["findings"]}
    assert found == EXPECTED_FINDINGS | EXPECTED_FIREWALL
    assert sorted(f["evidence"]["family"] for f in doc["findings"] if f["id"] == "NW205") == [
        4, 6]
    # Nothing closes any path here, so no bind-scope finding was downgraded.
    for f in doc["findings"]:
        if f["id"] in ("NW102", "NW103"):
            assert "severity_without_firewall" not in f["evidence"], f
            assert f["evidence"]["firewall"], f
    rc, out, err = scan(lab, ns, CONFIG, "--format", "json", "--no-firewall")
    doc = json.loads(out)
    found = {(f["id"], f["component"], f["address"], f["port"]) for f in doc["findings"]}
    assert found == EXPECTED_FINDINGS
    etcd_exe = got[("tcp", "::", 2380)]
    if shutil.which("etcd"):
        assert Path(etcd_exe["exe"]).name == "etcd"
    for f in doc["findings"]:
        assert f["remediation"] and f["title"] and f["severity"]
        assert f["evidence"]["bind_scope"] == f["scope"]
        assert "firewall" not in f["evidence"]


def test_procfs_fallback_sees_the_same(node):
    lab, ns, _pod, _procs = node
    _, out_nl, _ = scan(lab, ns, CONFIG, "--format", "json", "--no-firewall")
    _rc, out_pf, _ = scan(lab, ns, CONFIG, "--format", "json", "--procfs", "--no-firewall")
    a, b = json.loads(out_nl), json.loads(out_pf)
    assert b["socket_source"] == "procfs"
    assert any("/proc/net" in n for n in b["notes"])
    device_bound = [s for s in a["sockets"] if s["bound_device"]]
    assert [(s["port"], s["scope"]) for s in device_bound] == [(10249, "loopback")]
    # /proc/net has no SO_BINDTODEVICE: that one socket is judged by its address there.
    by_key = {(s["protocol"], s["address"], s["port"]): s for s in b["sockets"]}
    fallback = by_key[("tcp", "0.0.0.0", 10249)]
    assert (fallback["scope"], fallback["bound_device"]) == ("wildcard", "")
    same = [s for s in a["sockets"] if not s["bound_device"]]
    assert same == [s for s in b["sockets"] if s["port"] != 10249]
    extra = {(f["id"], f["port"]) for f in b["findings"]} - {
        (f["id"], f["port"]) for f in a["findings"]}
    assert extra == {("NW102", 10249), ("NW103", 10249)}

def test_jsonl_table_log_and_fail_on(node):
    lab, ns, _pod, _procs = node
    total = len(EXPECTED_FINDINGS) + len(EXPECTED_FIREWALL) + 1  # NW205 for IPv4 and IPv6
    rc, out, _ = scan(lab, ns, CONFIG, "--format", "jsonl")
    lines = [json.loads(x) for x in out.splitlines()]
    assert rc == 1 and len(lines) == total
    assert all(x["node"] == "lab-node" and "remediation" in x for x in lines)
    rc, out, _ = scan(lab, ns, CONFIG, "--fail-on", "critical", "--no-firewall")
    assert rc == 0  # by bind nothing is critical: etcd client is loopback + node-private
    rc, out, _ = scan(lab, ns, CONFIG, "--fail-on", "critical")
    assert rc == 1  # but no firewall keeps pods off etcd: NW201 etcd-client is critical
    assert "kubelet-readonly" in out and "NW101" in out and "PROCESS" in out
    rc, out, _ = scan(lab, ns, CONFIG, "--format", "log")
    events = [json.loads(x) for x in out.splitlines()]
    finding_events = [e for e in events if e["event"] == "finding"]
    assert len(finding_events) == total
    for e in finding_events:
        assert {"timestamp", "level", "event", "node", "finding_id", "severity"} <= set(e)
    assert events[-1]["event"] == "scan_complete"


def test_suppression_removes_finding_and_keeps_it_visible(node):
    lab, ns, _pod, _procs = node
    cfg = CONFIG + ("suppress:\n  - {id: NW102, port: 6443, "
                    "reason: API server must serve the LB on every address}\n")
    _, out, _ = scan(lab, ns, cfg, "--format", "json")
    doc = json.loads(out)
    found = {(f["id"], f["port"]) for f in doc["findings"]}
    assert ("NW102", 6443) not in found
    assert [(s["id"], s["port"], s["reason"]) for s in doc["suppressed"]] == [
        ("NW102", 6443, "API server must serve the LB on every address")]


def test_scan_in_host_namespace(tmp_path):
    """No `ip netns exec`: the scan reads the namespace it runs in (here the host's)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to read other processes' sockets")
    listener = Path(__file__).resolve().parent.parent / "lab" / "listener.py"
    p = subprocess.Popen(["kube-scheduler", str(listener), "--tcp", "127.0.0.1:0"],
                         executable=sys.executable, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONHOME": sys.base_prefix})
    try:
        assert "ready" in p.stdout.readline()
        r = subprocess.run([*NODEWARD, "--config", "/dev/null", "scan", "--format", "json"],
                           capture_output=True, text=True, timeout=60)
        doc = json.loads(r.stdout)
        mine = [s for s in doc["sockets"] if s["pid"] == p.pid]
        assert len(mine) == 1
        assert mine[0]["scope"] == "loopback"
        assert mine[0]["component"] == "kube-scheduler"  # by process, on a random port
        assert mine[0]["identified_by"] == "process-only"
    finally:
        p.terminate()
        p.wait(5)
