"""`nodeward run` in a lab namespace: changes show up as opened/resolved findings within two
cycles, /healthz and /metrics answer, SIGHUP with a broken config keeps the agent running on
the old one, SIGTERM exits 0."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.lab

INTERVAL = 1.0


class DaemonLog:
    """Reads the daemon's JSON lines as they come."""

    @classmethod
    def start(cls, lab, ns, cfg) -> DaemonLog:
        """`nodeward run` with `cfg` in namespace `ns`, its stdout read as events."""
        return cls(lab.spawn(ns, [sys.executable, "-m", "nodeward", "--config", str(cfg),
                                  "run"], stdout=subprocess.PIPE, text=True))

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.events: list[dict] = []
        self.partial = b""  # the start of a line not yet complete
        self.cursor = 0  # events before it were looked at by an earlier wait_for
        self.sel = selectors.DefaultSelector()
        self.sel.register(proc.stdout, selectors.EVENT_READ)

    def wait_for(self, pred, timeout: float) -> dict:
        """The first event after the last one returned that `pred` matches."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while self.cursor < len(self.events):
                e = self.events[self.cursor]
                self.cursor += 1
                if pred(e):
                    return e
            if self.sel.select(0.2):
                # every complete line that arrived (a buffered readline() took two lines
                # from the pipe and returned one: the second waited unseen for the next)
                data = os.read(self.proc.stdout.fileno(), 1 << 16)
                if not data:
                    break
                *lines, self.partial = (self.partial + data).split(b"\n")
                self.events += [json.loads(line) for line in lines]
        raise AssertionError(f"no matching event in {timeout}s; last: {self.events[-5:]}")


def http_get(lab, ns, url: str) -> tuple[int, str]:
    code = ("import sys,urllib.request,urllib.error\n"
            f"try:\n r=urllib.request.urlopen({url!r},timeout=5); print(r.status); "
            "print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode())\n")
    out = lab.sh(sys.executable, "-c", code, ns=ns).stdout
    status, _, body = out.partition("\n")
    return int(status), body


def test_run_opens_and_resolves_reloads_and_stops(lab, tmp_path):
    node = lab.node("node", "10.77.0.1/24")
    lab.pod(node, "10.244.1.2/24", "10.244.1.1/24", host_if="calid1")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"node_name: lab-daemon\nnode_cidrs: [10.77.0.0/24]\ninterval: {INTERVAL}\n"
                   "metrics_address: 127.0.0.1:9737\ndaemon: {full_report_every: 1000}\n")
    log = DaemonLog.start(lab, node, cfg)
    proc = log.proc
    log.wait_for(lambda e: e["event"] == "daemon_started", 15)
    first = log.wait_for(lambda e: e["event"] == "scan_complete", 15)
    assert first["node"] == "lab-daemon" and first["firewall_rules"] == 0
    # The namespace has no firewall: pods reach both metadata endpoints through FORWARD.
    assert sorted(e["address"] for e in log.events if e["event"] == "finding_opened") == [
        "169.254.169.254", "fd00:ec2::254"]
    assert first["findings"] == 2

    # A kubelet read-only port appears on the pod-facing address...
    started_at = len(log.events)
    kubelet = lab.listen(node, "kubelet", tcp=["10.244.1.1:10255"])
    opened = log.wait_for(lambda e: e["event"] == "finding_opened"
                          and e["finding_id"] == "NW101", 10)
    assert sum(1 for e in log.events[started_at:log.events.index(opened)]
               if e["event"] == "scan_complete") <= 1  # seen in the first or second cycle
    assert opened["port"] == 10255 and opened["pid"] == kubelet.pid
    assert opened["level"] == "error" and opened["severity"] == "high"
    log.wait_for(lambda e: e["event"] == "scan_complete"
                 and log.events.index(e) > log.events.index(opened), 10)
    ids = {e["finding_id"] for e in log.events[started_at:] if e["event"] == "finding_opened"}
    # by its bind (NW101-103) and through the (absent) firewall (NW201/202, NW205 IPv4)
    assert ids == {"NW101", "NW102", "NW103", "NW201", "NW202", "NW205"}

    status, body = http_get(lab, node, "http://127.0.0.1:9737/healthz")
    assert (status, body.strip()) == (200, "ok")
    status, body = http_get(lab, node, "http://127.0.0.1:9737/metrics")
    assert status == 200
    assert 'nodeward_findings{id="NW101",severity="high"} 1.0' in body
    assert "nodeward_scan_duration_seconds_count" in body

    # ...and goes away: resolved within two cycles.
    lab.stop(kubelet)
    stopped_at = len(log.events)
    resolved = log.wait_for(lambda e: e["event"] == "finding_resolved"
                            and e["finding_id"] == "NW101", 10)
    cycles = sum(1 for e in log.events[stopped_at:log.events.index(resolved) + 1]
                 if e["event"] == "scan_complete")
    assert cycles <= 2

    # SIGHUP with a broken config: keeps running on the old config.
    cfg.write_text("interval: [broken\n")
    proc.send_signal(signal.SIGHUP)
    failed = log.wait_for(lambda e: e["event"] == "config_reload_failed", 10)
    assert str(cfg) in failed["error"] and "invalid YAML" in failed["error"]
    after = log.wait_for(lambda e: e["event"] == "scan_complete"
                         and log.events.index(e) > log.events.index(failed), 10)
    assert after["node"] == "lab-daemon" and proc.poll() is None

    # A good config applies on the next SIGHUP.
    cfg.write_text("node_name: renamed\ninterval: 1\nmetrics_address: 127.0.0.1:9737\n")
    proc.send_signal(signal.SIGHUP)
    log.wait_for(lambda e: e["event"] == "config_reloaded", 10)
    log.wait_for(lambda e: e["event"] == "scan_complete" and e["node"] == "renamed", 10)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert log.wait_for(lambda e: e["event"] == "daemon_stopping", 5)


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (nftables)")
def test_run_enforce_applies_and_repairs_drift(lab, tmp_path):
    """In enforce mode the daemon applies the plan, and re-asserts it when someone removes
    it: a pod loses the kubelet again on the next cycle."""
    node = lab.node("node", "10.77.0.1/24")
    pod = lab.pod(node, "10.244.1.2/24", "10.244.1.1/24", host_if="calie1")
    lab.listen(node, "kubelet", tcp=["0.0.0.0:10250"])
    assert lab.connect(pod, "10.77.0.1", 10250)  # open before the agent
    cfg = tmp_path / "config.yaml"
    cfg.write_text("node_name: lab-enforce\nnode_cidrs: [10.77.0.0/24]\n"
                   "pod_cidrs: [10.244.0.0/16]\nmode: enforce\nbackend: nftables\n"
                   "interval: 1\nmetrics_address: 127.0.0.1:9737\n"
                   "enforce: {control_plane: [10.77.0.0/24]}\n")
    log = DaemonLog.start(lab, node, cfg)
    proc = log.proc
    applied = log.wait_for(lambda e: e["event"] in ("rules_applied", "enforce_failed"), 20)
    assert applied["event"] == "rules_applied", applied
    assert not lab.connect(pod, "10.77.0.1", 10250)
    lab.sh("nft", "delete", "table", "inet", "nodeward", ns=node)  # drift
    # (No connect here to show the gap: with a 1 s interval the daemon may already have
    # repaired it, which made that assertion flaky. The repair event and counter say it.)
    log.wait_for(lambda e: e["event"] == "drift_repaired", 10)
    assert not lab.connect(pod, "10.77.0.1", 10250)
    _status, body = http_get(lab, node, "http://127.0.0.1:9737/metrics")
    assert "nodeward_drift_repairs_total 1.0" in body
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def test_signals_as_the_loop_goes_to_sleep_never_hang_it(lab, tmp_path):
    """A SIGHUP the moment a cycle ends (as config management sends one after a change
    it saw logged) lands as the loop goes to sleep: it must end the sleep and be handled,
    1,000 times in a row, and SIGTERM must still stop the daemon. (A handler that set a
    threading.Event deadlocked on the lock of the Event whose wait it interrupted: the
    daemon never scanned again: about once in 1,200 such signals, and in 1 of 6 runs of
    the SIGHUP fuzz test.)"""
    node = lab.node("node", "10.80.0.1/24")
    cfg = tmp_path / "config.yaml"
    cfg.write_text("node_name: burst\ninterval: 30\nmetrics_address: 127.0.0.1:9737\n"
                   "daemon: {full_report_every: 1000}\n")
    log = DaemonLog.start(lab, node, cfg)
    proc = log.proc
    log.wait_for(lambda e: e["event"] == "scan_complete", 20)
    for n in range(1000):
        mark = len(log.events)
        proc.send_signal(signal.SIGHUP)
        # the 30 s sleep ended: reloaded and scanned again (else the signal was lost or
        # the loop hangs)
        log.wait_for(lambda e, m=mark: e["event"] == "scan_complete" and
                     log.events.index(e) >= m, 10 if n else 20)
    assert sum(e["event"] == "config_reloaded" for e in log.events) == 1000
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=15)  # (reading: a full stdout pipe would block its logging)
    assert proc.returncode == 0
