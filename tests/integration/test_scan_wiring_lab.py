"""`nodeward scan` with the reachability evaluator (--firewall, --explain) and the cluster
checks (--offline, `cluster:` config) wired in, on a lab node."""

from __future__ import annotations

import json
import sys

import pytest

pytestmark = pytest.mark.lab

CONFIG = "node_name: n1\nnode_cidrs: [10.77.0.0/24]\npod_cidrs: [10.244.0.0/16]\n"


def scan(lab, ns, tmp_path, *args, config=CONFIG):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config)
    return lab.sh(sys.executable, "-m", "nodeward", "--config", str(cfg), "scan", *args,
                  ns=ns, check=False)


def test_firewall_verdicts_and_explain(lab, tmp_path):
    node = lab.node("node", "10.77.0.1/24")
    lab.pod(node, "10.244.1.2/24", "10.244.1.1/24", host_if="cali7")
    lab.listen(node, "kubelet", tcp=["0.0.0.0:10250"])
    r = scan(lab, node, tmp_path, "--format", "json")  # the firewall is on by default
    ids = {(f["id"], f["port"]) for f in json.loads(r.stdout)["findings"]}
    assert ("NW201", 10250) in ids and ("NW202", 10250) in ids  # no firewall at all
    # --no-firewall (or `firewall: false`): the bind-scope findings only.
    for args, config in ((["--no-firewall"], CONFIG), ([], CONFIG + "firewall: false\n")):
        r = scan(lab, node, tmp_path, *args, "--format", "json", config=config)
        assert not {f["id"] for f in json.loads(r.stdout)["findings"]} & {"NW201", "NW202"}
    lab.sh("iptables", "-A", "INPUT", "-i", "cali+", "-p", "tcp", "--dport", "10250",
           "-j", "DROP", ns=node)
    r = scan(lab, node, tmp_path, "--format", "json")
    ids = {(f["id"], f["port"]) for f in json.loads(r.stdout)["findings"]}
    assert ("NW201", 10250) not in ids and ("NW202", 10250) in ids
    r = scan(lab, node, tmp_path, "--explain", "10250")
    assert r.returncode == 0, r.stderr
    pod = r.stdout.split("from pod")[1].split("from anywhere")[0]
    assert ": drop" in pod and "INPUT #1" in pod and "cali+" in pod
    assert "from anywhere" in r.stdout and ": accept" in r.stdout.split("from anywhere")[1]
    r = scan(lab, node, tmp_path, "--explain", "10250", "--no-firewall")
    assert r.returncode == 2 and "--explain needs the firewall" in r.stderr


def test_firewall_that_closes_the_path_downgrades_bind_findings(lab, tmp_path):
    """kubelet on 0.0.0.0 is NW102 (high) by its bind; a real ruleset that keeps pods and
    the outside world off 10250 makes it low, with the kernel's rules as evidence — and a
    real pod connection attempt agrees with the verdict."""
    node = lab.node("node", "10.77.0.1/24")
    pod = lab.pod(node, "10.244.1.2/24", "10.244.1.1/24", host_if="cali7")
    lab.listen(node, "kubelet", tcp=["0.0.0.0:10250"])
    r = scan(lab, node, tmp_path, "--format", "json")
    before = {f["id"]: f for f in json.loads(r.stdout)["findings"] if f["port"] == 10250}
    assert before["NW102"]["severity"] == "high"
    assert before["NW102"]["evidence"]["firewall"]["pod"]["action"] == "accept"
    assert lab.connect(pod, "10.77.0.1", 10250)
    rules = tmp_path / "rules.v4"
    rules.write_text("""*filter
:INPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -s 10.77.0.0/24 -p tcp -m tcp --dport 10250 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 10250 -j REJECT
COMMIT
""")
    lab.sh("iptables-restore", str(rules), ns=node)
    r = scan(lab, node, tmp_path, "--format", "json")
    after = {f["id"]: f for f in json.loads(r.stdout)["findings"] if f["port"] == 10250}
    assert set(after) == {"NW102"}, after
    f = after["NW102"]
    assert f["severity"] == "low" and f["evidence"]["severity_without_firewall"] == "high"
    fw = f["evidence"]["firewall"]
    assert {c: v["action"] for c, v in fw.items()} == {"pod": "reject", "anywhere": "reject"}
    assert any("--dport 10250 -j REJECT" in step for step in fw["pod"]["rule_path"])
    assert not lab.connect(pod, "10.77.0.1", 10250)


def test_offline_cluster_objects(lab, tmp_path):
    node = lab.node("node", "10.77.0.1/24")
    d = tmp_path / "objs"
    d.mkdir()
    (d / "cluster.yaml").write_text("""
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 10.77.0.1}]}
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec: {defaultEndpointToHostAction: Accept}
""")
    r = scan(lab, node, tmp_path, "--offline", str(d), "--format", "json")
    ids = {f["id"] for f in json.loads(r.stdout)["findings"]}
    assert {"NW501", "NW503"} <= ids and "NW500" not in ids
    # The same through the config section; a bad section key is exit 2.
    r = scan(lab, node, tmp_path, "--format", "json",
             config=CONFIG + f"cluster: {{offline_dir: {d}}}\n")
    assert "NW503" in {f["id"] for f in json.loads(r.stdout)["findings"]}
    r = scan(lab, node, tmp_path, config=CONFIG + "cluster: {encryption: rot13}\n")
    assert r.returncode == 2 and "cluster.encryption" in r.stderr


def test_saved_ruleset_predicts_what_applying_it_does(lab, tmp_path):
    """`--ruleset FILE` judges the node's real sockets against a dump that is not live yet;
    applying that dump then gives exactly the predicted pod verdicts on real connections."""
    node = lab.node("node", "10.77.0.1/24")
    pod = lab.pod(node, "10.244.1.2/24", "10.244.1.1/24", host_if="cali7")
    lab.listen(node, "kubelet", tcp=["0.0.0.0:10250", "0.0.0.0:10255"])
    lab.listen(node, "kube-apiserver", tcp=["0.0.0.0:6443"])
    proposed = tmp_path / "proposed.v4"
    proposed.write_text("# Generated by iptables-save v1.8.9 (nf_tables)\n*filter\n"
                        ":INPUT ACCEPT [0:0]\n"
                        "-A INPUT -i cali+ -p tcp -m multiport --dports 10250,10255 -j DROP\n"
                        "COMMIT\n")
    r = scan(lab, node, tmp_path, "--ruleset", str(proposed), "--format", "json")
    doc = json.loads(r.stdout)
    assert any("not the live one" in n for n in doc["notes"])
    pod_reach = {f["port"] for f in doc["findings"] if f["id"] == "NW201"}
    assert pod_reach == {6443}
    # The live ruleset is still empty: the live scan says pods reach all three.
    r = scan(lab, node, tmp_path, "--format", "json")
    assert {f["port"] for f in json.loads(r.stdout)["findings"] if f["id"] == "NW201"} == {
        6443, 10250, 10255}
    lab.sh("iptables-nft-restore", str(proposed), ns=node)
    for port in (6443, 10250, 10255):
        assert lab.connect(pod, "10.77.0.1", port) == (port in pod_reach), port


def _link_local(lab, ns, dev: str) -> str:
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # wait out duplicate address detection
        out = lab.sh("ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link", ns=ns).stdout
        if out and "tentative" not in out:
            return out.split()[3].split("/")[0]
        time.sleep(0.2)
    raise TimeoutError(f"no usable link-local address on {dev}")


def _connect_ll(lab, ns, addr: str, dev: str, port: int) -> bool:
    """TCP connect to a link-local address (the scope needs the 4-tuple form)."""
    code = ("import socket,sys\n"
            "s=socket.socket(socket.AF_INET6)\ns.settimeout(1.0)\n"
            f"sys.exit(0 if s.connect_ex(({addr!r},{port},0,socket.if_nametoindex({dev!r})))"
            "==0 else 1)\n")
    return lab.sh(sys.executable, "-c", code, ns=ns, check=False).returncode == 0


def test_pods_reach_ipv6_wildcards_over_link_local(lab, tmp_path):
    """The node has no global IPv6 and iptables keeps pods off etcd-peer — over IPv4. A
    v6-only [::] socket is still reachable from the pod at the node's fe80:: address on the
    pod's veth: the scan says so (NW201 to that address), a real connection agrees, and an
    ip6tables rule closes both."""
    node = lab.node("node", "10.77.0.1/24")
    pod = lab.pod(node, "10.244.1.2/24", "10.244.1.1/24", host_if="cali7")
    lab.listen(node, "etcd", tcp=["[::]:2380"])
    lab.sh("iptables", "-A", "INPUT", "-i", "cali+", "-p", "tcp", "--dport", "2380",
           "-j", "DROP", ns=node)
    gw6 = _link_local(lab, node, "cali7")
    _link_local(lab, pod, "eth0")
    r = scan(lab, node, tmp_path, "--format", "json")
    doc = json.loads(r.stdout)
    nw201 = [f for f in doc["findings"] if f["id"] == "NW201" and f["port"] == 2380]
    assert len(nw201) == 1 and nw201[0]["evidence"]["destination"] == gw6
    assert _connect_ll(lab, pod, gw6, "eth0", 2380)
    lab.sh("ip6tables", "-A", "INPUT", "-i", "cali+", "-p", "tcp", "--dport", "2380",
           "-j", "DROP", ns=node)
    r = scan(lab, node, tmp_path, "--format", "json")
    assert not [f for f in json.loads(r.stdout)["findings"]
                if f["id"] == "NW201" and f["port"] == 2380]
    assert not _connect_ll(lab, pod, gw6, "eth0", 2380)
