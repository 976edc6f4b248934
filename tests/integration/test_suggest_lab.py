"""`nodeward suggest` in network namespaces: audit mode on a node, real traffic from peers
and a pod, then the suggested Calico YAML (validated against Calico's own CRD schemas) and
the suggested enforce.allow config; applied with `apply --mode enforce`, that config must
admit exactly the connections audit mode saw and block the rest (real connections).

Topology (tests/lab/enforce_helpers): node 10.77.0.1 (kubelet 10250/10255, etcd 2379,
kube-apiserver 6443, sshd 22), peer 10.77.0.2 (the control plane), a second peer
10.77.0.3, pod A 10.244.1.2 behind cali0, and pod B 10.244.2.2 behind cali1 that sends
nothing during audit.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.lab import enforce_helpers as h
from tests.ux.test_formats import _strict

pytestmark = pytest.mark.lab

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
POD_B_IP = "10.244.2.2"
OTHER = h.OUTSIDE_IP  # 10.77.0.3: on the node network, not control plane
TIMEOUT = 0.4
#: (who, port, times) during audit mode
AUDIT_TRAFFIC = [("pod", 10250, 3), ("other", 10250, 1), ("peer", 10250, 1),
                 ("peer", 2379, 2), ("other", 6443, 1), ("peer", 6443, 1)]
#: after enforce with the suggested config: exactly the observed (who, port) pairs open
PROBES = [(who, port) for who in ("pod", "podb", "other", "peer")
          for port in (10250, 10255, 2379, 6443)]


def calico_validator(kind: str) -> jsonschema.Draft7Validator:
    files = {"HostEndpoint": "crd.projectcalico.org_hostendpoints.yaml",
             "GlobalNetworkPolicy": "crd.projectcalico.org_globalnetworkpolicies.yaml",
             "StagedGlobalNetworkPolicy":
                 "crd.projectcalico.org_stagedglobalnetworkpolicies.yaml"}
    crd = yaml.safe_load((SCHEMAS / files[kind]).read_text())
    assert crd["spec"]["names"]["kind"] == kind
    (v,) = [x for x in crd["spec"]["versions"] if x["name"] == "v1"]
    return jsonschema.Draft7Validator(_strict(copy.deepcopy(v["schema"]["openAPIV3Schema"])))


def assert_calico_valid(docs: list[dict]) -> None:
    for doc in docs:
        errors = list(calico_validator(doc["kind"]).iter_errors(doc))
        assert not errors, (doc["kind"], errors[0])


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_suggest_from_audit_then_enforce_admits_exactly_what_was_seen(lab, tmp_path, backend):
    reason = h.have("nft", "iptables-nft-restore", "conntrack")
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} under CI (apt packages in tests/run.sh)")
        pytest.skip(reason)
    t = h.build(lab)
    pod_b = lab.pod(t.node, f"{POD_B_IP}/24", gateway="10.244.2.1/24", host_if="cali1",
                    role="podb")
    who = {"pod": t.pod, "podb": pod_b, "other": t.outside, "peer": t.peer}
    cfg = h.config(tmp_path, backend, mode="audit")
    r = h.nodeward(lab, t.node, cfg, "apply", "--mode", "audit")
    assert r.returncode == 0, r.stderr

    for name, port, times in AUDIT_TRAFFIC:
        for _ in range(times):
            assert lab.connect(who[name], h.NODE_IP, port, timeout=TIMEOUT), (name, port)

    calico, allow = tmp_path / "calico.yaml", tmp_path / "allow.yaml"
    r = h.nodeward(lab, t.node, cfg, "suggest", "--calico-out", str(calico), "--allow-out",
                   str(allow))
    assert r.returncode == 0, r.stderr
    # every default source of a listening component sent something: no warning
    assert "sent nothing" not in r.stderr, r.stderr
    text = calico.read_text()
    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == ["HostEndpoint", "StagedGlobalNetworkPolicy"]
    assert_calico_valid(docs)
    hep, pol = docs
    assert hep["spec"]["node"] == t.node.name.lower() or hep["spec"]["node"]
    assert h.NODE_IP in hep["spec"]["expectedIPs"]
    label, value = next(iter(hep["metadata"]["labels"].items()))
    assert pol["spec"]["selector"] == f"{label} == '{value}'"

    # The allow rules name exactly the observed sources per component port
    allowed = {}
    for rule in pol["spec"]["ingress"]:
        if rule["action"] == "Allow" and "source" in rule:
            for port in rule["destination"]["ports"]:
                allowed[port] = sorted(rule["source"]["nets"])
    assert allowed == {10250: sorted([f"{h.POD_IP}/32", f"{OTHER}/32", f"{h.PEER_IP}/32"]),
                       2379: [f"{h.PEER_IP}/32"], 6443: sorted([f"{OTHER}/32", f"{h.PEER_IP}/32"])}
    # every protected port is denied after its allows, and the rest is left alone
    denied = [p for rule in pol["spec"]["ingress"] if rule["action"] == "Deny"
              for p in rule["destination"]["ports"]]
    assert {10250, 10255, 2379, 2380, 6443} <= set(denied)
    assert pol["spec"]["ingress"][-1] == {"action": "Allow"}
    # counters as comments: 3 pod + 1 other SYNs hit the kubelet audit rules; the peer's
    # were allowed by default (control plane) and are not audited
    status = json.loads(h.nodeward(lab, t.node, cfg, "status", "--format", "json").stdout)
    kubelet_pkts = sum(max(x["packets"] for x in status["rules"] if x["comment"] == c)
                       for c in {x["comment"] for x in status["rules"]}
                       if c in ("nodeward: kubelet closed", "nodeward: pod to kubelet"))
    assert kubelet_pkts == 4
    assert ("kubelet tcp/10250: 3 source(s), 5 connection(s) observed, 4 of them ones "
            "enforce mode would drop; audit counters: 4 packet(s)") in text
    assert f'"{h.POD_IP}/32"  # 3 connection(s), 3 audited, seen in conntrack' in text

    # The global variant is the same policy, also schema-valid
    r = h.nodeward(lab, t.node, cfg, "suggest", "--kind", "global")
    assert r.returncode == 0, r.stderr
    gdocs = list(yaml.safe_load_all(r.stdout))
    assert gdocs[1]["kind"] == "GlobalNetworkPolicy"
    assert gdocs[1]["spec"] == pol["spec"]
    assert_calico_valid(gdocs)

    # The allow config: same sources as the Calico policy, per component
    data = yaml.safe_load(allow.read_text())
    assert data["enforce"]["allow"] == {
        "kubelet": sorted([f"{h.PEER_IP}/32", f"{OTHER}/32", f"{h.POD_IP}/32"],
                          key=lambda n: ipaddress.ip_network(n).network_address.packed),
        "etcd-client": [f"{h.PEER_IP}/32"],
        "kube-apiserver": [f"{h.PEER_IP}/32", f"{OTHER}/32"]}
    assert data["node_cidrs"] == ["10.77.0.0/24"]  # the rest of the config is kept

    # --watch: conntrack events only (no listing): pod B's one connection, made while it
    # watches, is the only source it can know of
    events = tmp_path / "events.yaml"
    w = subprocess.Popen(["ip", "netns", "exec", t.node.name, sys.executable, "-m",
                          "nodeward", "--config", str(cfg), "suggest", "--no-conntrack",
                          "--watch", "2", "--calico-out", str(events)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "watching conntrack" in w.stderr.readline()
        time.sleep(0.3)  # the event subscription is up
        assert lab.connect(pod_b, h.NODE_IP, 10250, timeout=TIMEOUT)
        _out, err = w.communicate(timeout=60)
    finally:
        if w.poll() is None:
            w.kill()
            w.communicate()
    assert w.returncode == 0, err
    wpol = list(yaml.safe_load_all(events.read_text()))[1]
    assert [r["source"]["nets"] for r in wpol["spec"]["ingress"] if "source" in r] == [
        [f"{POD_B_IP}/32"]]

    # Control: the original config in enforce mode blocks the pod and the other peer
    r = h.nodeward(lab, t.node, cfg, "apply", "--mode", "enforce")
    assert r.returncode == 0, r.stderr
    assert not lab.connect(t.pod, h.NODE_IP, 10250, timeout=TIMEOUT)
    assert not lab.connect(t.outside, h.NODE_IP, 10250, timeout=TIMEOUT)

    # The suggested config in enforce mode: exactly the observed pairs connect
    r = h.nodeward(lab, t.node, allow, "apply", "--mode", "enforce")
    assert r.returncode == 0, r.stderr
    seen = {(name, port) for name, port, _n in AUDIT_TRAFFIC}
    got = {(name, port): lab.connect(who[name], h.NODE_IP, port, timeout=TIMEOUT)
           for name, port in PROBES}
    assert got == {k: k in seen for k in PROBES}
    assert lab.connect(pod_b, h.NODE_IP, h.SSH, timeout=TIMEOUT)  # not a component: open

    # and verify, reading the same config, proves it from both pods' side: pod A reaches
    # the kubelet it is allowed, nothing else; pod B nothing; the metadata service neither
    r = h.nodeward(lab, t.node, allow, "verify", "--netns", t.pod.name, "--netns",
                   pod_b.name, "--timeout", str(TIMEOUT), "--rate", "200", "--format", "json",
                   "--fail-on", "low")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["findings"] == []
    opened = {(c["source"], c["target"], c["port"]) for c in doc["connections"]
              if c["observed"] == "open"}
    assert opened == {(h.POD_IP, addr, 10250) for addr in (h.NODE_IP, "10.244.1.1",
                                                            "10.244.2.1")}
    assert {c["observed"] for c in doc["connections"] if c["port"] == 80} == {"dropped"}
