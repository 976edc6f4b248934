"""Cross-node probes from one lab node to another: open, refused, dropped and rejected
ports are told apart, the rate limit holds, and only loopback-only components that answer
become findings."""

from __future__ import annotations

import json
import sys

import pytest

pytestmark = pytest.mark.lab

PROBE = r"""
import json, sys, time
from nodeward.probe import Peer, targets, probe, probe_findings
from nodeward.catalog import load_default
plan = targets([Peer("node-b", ("10.77.0.2",)), Peer("node-a", ("10.77.0.1",))],
               [("tcp", 10250), ("tcp", 10255), ("tcp", 2379), ("tcp", 6443), ("tcp", 4149),
                ("udp", 4789)], local_addresses=["10.77.0.1", "127.0.0.1"])
t = time.monotonic()
res = probe(plan, timeout=0.5, max_per_second=10)
elapsed = time.monotonic() - t
print(json.dumps({"elapsed": elapsed,
                  "results": [[r.peer, r.address, r.port, r.outcome] for r in res],
                  "findings": [[f.id, f.component, f.port] for f in
                               probe_findings(res, load_default())]}))
"""


def test_probe_peer_ports(lab):
    a = lab.node("a", "10.77.0.1/24")
    b = lab.node("b", "10.77.0.2/24")
    lab.listen(b, "kubelet", tcp=["0.0.0.0:10250", "0.0.0.0:10255", "0.0.0.0:4149"])
    lab.listen(b, "etcd", tcp=["0.0.0.0:2379"])
    lab.sh("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "2379", "-j", "DROP", ns=b)
    lab.sh("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "4149", "-j", "REJECT",
           "--reject-with", "icmp-admin-prohibited", ns=b)
    out = lab.sh(sys.executable, "-c", PROBE, ns=a).stdout
    doc = json.loads(out)
    got = {r[2]: r[3] for r in doc["results"]}
    assert all(r[:2] == ["node-b", "10.77.0.2"] for r in doc["results"])  # never itself
    assert got == {10250: "open", 10255: "open", 2379: "timeout", 6443: "refused",
                   4149: "unreachable"}
    assert doc["elapsed"] >= 0.4  # 5 probes started at most 10 per second
    assert doc["findings"] == [["NW601", "kubelet-readonly", 10255]]


def test_daemon_probes_configured_peers(lab, tmp_path):
    """`nodeward run` with probe_peers: NW601 opens for the peer's exposed read-only port."""
    import signal

    from tests.integration.test_daemon_lab import DaemonLog

    a = lab.node("a", "10.77.0.1/24")
    b = lab.node("b", "10.77.0.2/24")
    lab.listen(b, "kubelet", tcp=["0.0.0.0:10250", "0.0.0.0:10255"])
    cfg = tmp_path / "config.yaml"
    cfg.write_text("node_name: a\ninterval: 1\nmetrics_address: 127.0.0.1:0\n"
                   "daemon:\n  probe_peers:\n    enabled: true\n    every: 1\n"
                   "    peers: [{name: b, addresses: [10.77.0.2]}, "
                   "{name: a, addresses: [10.77.0.1]}]\n")
    log = DaemonLog.start(lab, a, cfg)
    proc = log.proc
    probe = log.wait_for(lambda e: e["event"] == "peer_probe", 20)
    assert probe["reachable"] == ["b/10.77.0.2:10250", "b/10.77.0.2:10255"]
    opened = log.wait_for(lambda e: e["event"] == "finding_opened"
                          and e["finding_id"] == "NW601", 10)
    assert (opened["address"], opened["port"]) == ("10.77.0.2", 10255)
    assert [e["port"] for e in log.events
            if e["event"] == "finding_opened" and e["finding_id"] == "NW601"] == [10255]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
