"""Coexistence with Felix's insert mode: a Felix-shaped controller keeps its cali-INPUT and
cali-FORWARD jumps at position 1 of filter INPUT/FORWARD (and its cali-INPUT accepts pod
traffic, as a permissive workload-to-host policy does), in a loop, beside `nodeward run`
in enforce mode. nodeward hooks mangle INPUT/FORWARD, where Felix does not insert: zero
rule changes by nodeward after its first apply, zero rewrites by the controller, cali-*
byte-identical, and the pod cut off kubelet and etcd the whole time (real connections)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.lab import enforce_helpers as h

pytestmark = pytest.mark.lab

CYCLES = int(os.environ.get("NODEWARD_FELIX_CYCLES", "25"))
JUMPS = {"INPUT": ["-m", "comment", "--comment", "cali:Cz_u1IQiXIMmKD4c", "-j", "cali-INPUT"],
         "FORWARD": ["-m", "comment", "--comment", "cali:wUHhoiAYhphO9Mso", "-j",
                     "cali-FORWARD"]}


def _felix_loop(node, log: str) -> list[str]:
    """A shell controller: every 0.1 s, if its jump is not rule 1, delete and insert it at
    1 (what Felix's insert mode does), and log each rewrite."""
    body = []
    for chain, rule in JUMPS.items():
        spec = " ".join(f"'{a}'" if " " in a else a for a in rule)
        body.append(f"if ! iptables-nft -w -S {chain} 2>/dev/null | sed -n 2p | grep -q -e "
                    f"'-j {rule[-1]}'; then iptables-nft -w -D {chain} {spec} 2>/dev/null; "
                    f"iptables-nft -w -I {chain} 1 {spec} && echo {chain} >> {log}; fi")
    script = "while :; do " + "; ".join(body) + "; sleep 0.1; done"
    return ["ip", "netns", "exec", node.name, "sh", "-c", script]


def test_felix_insert_mode_no_fight(lab, tmp_path):
    if h.have("iptables-nft-restore", "nft"):
        h.require(h.have("iptables-nft-restore", "nft"))
    t = h.build(lab)
    h.add_foreign_iptables(lab, t.node, "nft")
    lab.sh("iptables-nft", "-w", "-I", "cali-INPUT", "1", "-i", "cali+", "-j", "ACCEPT",
           ns=t.node)  # Felix letting workloads reach the host
    before = h.save_text(lab, t.node, "nft")
    assert lab.connect(t.pod, h.NODE_IP, h.PORTS["kubelet"])  # open before nodeward
    log = tmp_path / "felix-rewrites"
    log.write_text("")
    felix = subprocess.Popen(_felix_loop(t.node, str(log)), start_new_session=True)
    cfg = h.config_raw(tmp_path, {
        "node_cidrs": ["10.77.0.0/24"], "pod_cidrs": ["10.244.0.0/16"], "mode": "enforce",
        "backend": "iptables", "interval": 1, "metrics_address": "127.0.0.1:0",
        "enforce": {"control_plane": [f"{h.PEER_IP}/32"]}})
    out_path, err_path = tmp_path / "run.out", tmp_path / "run.err"
    probes = blocked = 0
    run = None
    try:
        with open(out_path, "w") as out_f, open(err_path, "w") as err_f:  # no pipe to fill
            run = subprocess.Popen(["ip", "netns", "exec", t.node.name, sys.executable, "-m",
                                    "nodeward", "--config", str(cfg), "run", "--cycles",
                                    str(CYCLES)], stdout=out_f, stderr=err_f)
        deadline = time.monotonic() + 10 + 5 * CYCLES
        time.sleep(3)  # first cycle applied
        while run.poll() is None:
            assert time.monotonic() < deadline, "nodeward run did not finish"
            probes += 2
            blocked += not lab.connect(t.pod, h.NODE_IP, h.PORTS["kubelet"], timeout=0.3)
            blocked += not lab.connect(t.pod, h.NODE_IP, h.PORTS["etcd"], timeout=0.3)
            time.sleep(0.5)
    finally:
        os.killpg(felix.pid, 9)
        felix.wait(5)
        if run is not None and run.poll() is None:
            run.kill()
            run.wait(5)
    out, err = out_path.read_text(), err_path.read_text()
    events = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    names = [e.get("event") for e in events]
    applied, repaired = names.count("rules_applied"), names.count("drift_repaired")
    scans = names.count("scan_complete")
    rewrites = log.read_text().split()
    after = h.save_text(lab, t.node, "nft")
    print(f"{scans} cycles beside a Felix-shaped insert-at-1 loop: nodeward applied "
          f"{applied}x then changed rules {repaired}x; controller rewrites {len(rewrites)}; "
          f"pod blocked in {blocked}/{probes} probes during the run")
    assert scans >= CYCLES - 1, (names, err)
    assert applied == 1 and repaired == 0, names
    assert rewrites == [], rewrites
    assert h.chains_text(after, ("cali-",)) == h.chains_text(before, ("cali-",))
    assert h.builtin_foreign(after) == h.builtin_foreign(before)  # cali still first
    assert probes > 0 and blocked == probes
    assert not lab.connect(t.pod, h.NODE_IP, h.PORTS["kubelet"])
    assert lab.connect(t.pod, h.NODE_IP, h.SSH)
