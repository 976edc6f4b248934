"""Enforcement and reachability agree: after `nodeward apply`, `nodeward scan` evaluates the
node's live ruleset (nodeward's own chains among kube-proxy- and Calico-shaped ones) and
predicts, for every protected port, exactly what a real pod connection then does; the
findings the plan closes are gone and the bind-scope ones drop to low. Every backend."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_enforce_lab import BACKENDS, TIMEOUT, _skip_unless
from tests.lab import enforce_helpers as h

pytestmark = pytest.mark.lab


def _scan(lab, ns, cfg) -> dict:
    r = h.nodeward(lab, ns, cfg, "scan", "--format", "json")
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("backend,flavour", BACKENDS)
def test_scan_predicts_enforced_ruleset(lab, tmp_path, backend, flavour):
    _skip_unless(backend)
    t = h.build(lab)
    h.add_foreign_iptables(lab, t.node, flavour)
    cfg = h.config(tmp_path, backend)

    before = _scan(lab, t.node, cfg)
    ids = {(f["id"], f["port"]) for f in before["findings"]}
    assert {("NW201", 10250), ("NW201", 2379), ("NW204", 80)} <= ids, ids

    r = h.nodeward(lab, t.node, cfg, "apply")
    assert r.returncode == 0, r.stderr
    after = _scan(lab, t.node, cfg)
    by_port = {s["port"]: s for s in after["sockets"] if s["protocol"] == "tcp"}
    for name, port in h.PORTS.items():
        predicted = by_port[port]["firewall"]["pod"]
        real = t.lab.connect(t.pod, h.NODE_IP, port, timeout=TIMEOUT)
        assert (predicted["action"] == "accept") == real, (name, predicted, real)
        assert predicted["certain"], predicted
        assert "nodeward" in predicted["decided_by"] or "NODEWARD" in predicted["decided_by"]
    # sshd is a failsafe port: open from pods, and the scan says so.
    assert by_port[h.SSH]["firewall"]["pod"]["action"] == "accept"
    assert t.lab.connect(t.pod, h.NODE_IP, h.SSH, timeout=TIMEOUT)

    found = {(f["id"], f["port"]): f for f in after["findings"]}
    for port in h.PORTS.values():
        assert ("NW201", port) not in found, found.get(("NW201", port))
    assert not [f for f in after["findings"]
                if f["id"] == "NW204" and f["address"] == h.METADATA]
    assert not t.lab.connect(t.pod, h.METADATA, 80, timeout=TIMEOUT)
    kubelet = found[("NW102", 10250)]
    assert kubelet["severity"] == "low", kubelet
    assert kubelet["evidence"]["firewall"]["pod"]["action"] in ("drop", "reject")
