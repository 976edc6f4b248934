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
    r = scan(lab, node, tmp_path, "--firewall", "--format", "json")
    ids = {(f["id"], f["port"]) for f in json.loads(r.stdout)["findings"]}
    assert ("NW201", 10250) in ids and ("NW202", 10250) in ids  # no firewall at all
    # Without --firewall the bind-scope findings only.
    r = scan(lab, node, tmp_path, "--format", "json")
    assert not {f["id"] for f in json.loads(r.stdout)["findings"]} & {"NW201", "NW202"}
    lab.sh("iptables", "-A", "INPUT", "-i", "cali+", "-p", "tcp", "--dport", "10250",
           "-j", "DROP", ns=node)
    r = scan(lab, node, tmp_path, "--firewall", "--format", "json")
    ids = {(f["id"], f["port"]) for f in json.loads(r.stdout)["findings"]}
    assert ("NW201", 10250) not in ids and ("NW202", 10250) in ids
    r = scan(lab, node, tmp_path, "--explain", "10250")
    assert r.returncode == 0, r.stderr
    pod = r.stdout.split("from pod")[1].split("from anywhere")[0]
    assert ": drop" in pod and "INPUT #1" in pod and "cali+" in pod
    assert "from anywhere" in r.stdout and ": accept" in r.stdout.split("from anywhere")[1]


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
