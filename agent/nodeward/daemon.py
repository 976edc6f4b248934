"""`nodeward run`: scan every interval and log what changed.

Each cycle takes a snapshot, runs the checks, and logs `finding_opened` for findings that
appeared and `finding_resolved` for those that went away (same fields as a scan's findings,
identity = Finding.key), a `finding` event for every open finding every
`daemon.full_report_every` cycles, and `scan_complete`. Events also go to the HTTP sink when
one is configured. SIGHUP reloads the config between cycles (a bad config keeps the old one
and says why); SIGTERM/SIGINT finish the current cycle and exit 0.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

from . import config as config_mod
from . import probe
from .checks import CheckResult, run_checks, with_findings
from .collect.ruleset import ParseCache
from .daemon_settings import DaemonSettings
from .model import Finding, NodeSnapshot
from .report.logs import finding_fields, log_finding, make_logger
from .report.metrics import Metrics, StatusServer
from .report.sink import HttpSink
from .ruleset.reach import ReachMemo
from .snapshot import take_snapshot


def diff_findings(previous: dict[tuple, Finding],
                  current: Iterable[Finding]) -> tuple[list[Finding], list[Finding],
                                                       dict[tuple, Finding]]:
    """(opened, resolved, current-by-key); pure."""
    now = {f.key: f for f in current}
    opened = [f for k, f in now.items() if k not in previous]
    resolved = [f for k, f in previous.items() if k not in now]
    return opened, resolved, now


@dataclass
class CycleOutcome:
    snapshot: NodeSnapshot
    result: CheckResult
    opened: list[Finding]
    resolved: list[Finding]
    duration: float


class Agent:
    def __init__(self, config_path: str | None, cfg: config_mod.Config,
                 out: IO[str], snapshotter: Callable[..., NodeSnapshot] | None = None,
                 ) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.out = out
        # Kept for the agent's lifetime: an unchanged ruleset is neither parsed nor
        # evaluated again (a kube-proxy node's 50,000 rules, thousands of sockets).
        self.ruleset_cache = ParseCache()
        self.reach_memo = ReachMemo()
        self.snapshotter = snapshotter or self._snapshot
        self.log = make_logger(cfg.node_name, out)
        self.metrics = Metrics()
        self.previous: dict[tuple, Finding] = {}
        self.cycles = 0  # successful cycles
        self.attempts = 0
        self.last_ok = 0.0
        self.last_error = ""
        self._wake = threading.Event()
        self._stop = False
        self._reload = False
        self.applied_once = False
        self._probed: list[Finding] | None = None  # NW601 findings of the last probe round
        self._probe_cycles = 0
        self.sink: HttpSink | None = None
        self.status: StatusServer | None = None

    # -- settings ---------------------------------------------------------------------------
    @property
    def settings(self) -> DaemonSettings:
        return self.cfg.section("daemon")

    def _start_sink(self) -> None:
        if self.sink is not None:
            self.sink.close()
            self.sink = None
        if self.settings.sink is not None:
            self.sink = HttpSink(self.settings.sink, self.cfg.node_name, self.log,
                                 on_change=self.metrics.sink_changed)
            self.sink.start()

    def reload(self) -> None:
        try:
            new = config_mod.load(self.config_path)
        except config_mod.ConfigError as e:
            self.metrics.reloads.labels("failed").inc()
            self.log.error("config_reload_failed", error=str(e), keeping=self.cfg.source)
            return
        old_sink = self.settings.sink
        self.cfg = new
        self.log = make_logger(new.node_name, self.out)
        if self.settings.sink != old_sink:
            self._start_sink()
        self.metrics.reloads.labels("ok").inc()
        self.log.info("config_reloaded", source=new.source, mode=new.mode,
                      interval=new.interval)

    # -- health -----------------------------------------------------------------------------
    def healthy(self) -> tuple[bool, str]:
        if self.last_ok == 0.0:
            if self.attempts == 0:
                return True, "starting"
            return False, f"no successful scan yet: {self.last_error}"
        age = time.time() - self.last_ok
        limit = 3 * self.cfg.interval + 30
        if age > limit:
            return False, f"last successful scan {age:.0f}s ago: {self.last_error}"
        return True, "ok"

    # -- one cycle --------------------------------------------------------------------------
    def _snapshot(self, cfg: config_mod.Config) -> NodeSnapshot:
        return take_snapshot(cfg, ruleset_cache=self.ruleset_cache)

    def cycle(self) -> CycleOutcome:
        start = time.perf_counter()
        snap = self.snapshotter(self.cfg)
        result = run_checks(snap, self.cfg, self.reach_memo)
        cluster = self.cfg.section("cluster")
        if cluster is not None:  # encryption and Calico checks, as `nodeward scan` runs them
            from .clusterscan import with_cluster

            snap, result = with_cluster(snap, result, cluster, self.cfg.suppress)
        result = self._with_probes(snap, result)
        # a firewall stage that failed resolves nothing: its last findings stay, stale
        from .checks.firewall import stage_problems, stale_findings

        result = with_findings(result, stale_findings(
            self.previous.values(), result.findings, stage_problems(snap)), self.cfg.suppress)
        opened, resolved, self.previous = diff_findings(self.previous, result.findings)
        duration = time.perf_counter() - start
        self.cycles += 1
        events: list[dict[str, Any]] = []

        def emit(f: Finding, event: str) -> None:
            log_finding(self.log, f, event)
            events.append({"event": event, "node": self.cfg.node_name,
                           "scanned_at": snap.scanned_at, **finding_fields(f)})

        for note in snap.notes:
            self.log.warning("collector_note", note=note)
        for f in opened:
            emit(f, "finding_opened")
        for f in resolved:
            emit(f, "finding_resolved")
        if self.cycles % self.settings.full_report_every == 0:
            for f in result.findings:
                emit(f, "finding")
        self.log.info("scan_complete", cycle=self.cycles, sockets=len(snap.sockets),
                      findings=len(result.findings), opened=len(opened),
                      resolved=len(resolved), suppressed=len(result.suppressed),
                      duration_ms=round(duration * 1000, 1), socket_source=snap.socket_source,
                      firewall_rules=None if snap.ruleset is None else sum(
                          len(c.rules) for t in snap.ruleset.tables for c in t.chains.values()),
                      verdicts_reused=self.reach_memo.hits)
        if self.cfg.mode in ("audit", "enforce"):
            self.enforce(snap)
        if self.settings.policy_report and (opened or resolved or self.cycles == 1):
            self.write_policy_report(snap, result)
        if self.sink is not None:
            self.sink.submit(events)
        self.metrics.set_findings(result.findings)
        self.metrics.scan_duration.observe(duration)
        self.metrics.scans.labels("ok").inc()
        self.metrics.sockets.set(len(snap.sockets))
        self.metrics.last_scan.set(time.time())
        self.last_ok = time.time()
        return CycleOutcome(snap, result, opened, resolved, duration)

    def _with_probes(self, snap: NodeSnapshot, result: CheckResult) -> CheckResult:
        """Every `probe_peers.every` cycles, probe the configured peers' sensitive ports
        and add NW601 findings; in between, carry the last probe findings forward so they
        neither resolve nor reopen between probe rounds."""
        ps = self.settings.probe_peers
        if not (ps.enabled and ps.peers):
            return result
        self._probe_cycles += 1
        if self._probed is None or self._probe_cycles % ps.every == 0:
            plan = probe.targets([probe.Peer(n, a) for n, a in ps.peers], ps.ports,
                                 [a.address for i in snap.interfaces for a in i.addresses])
            results = probe.probe(plan, ps.timeout, ps.max_per_second)
            reachable = [r for r in results if r.reachable]
            self.log.info("peer_probe", probes=len(results),
                          reachable=[f"{r.peer}/{r.address}:{r.port}" for r in reachable])
            self._probed = probe.probe_findings(results, self.cfg.catalog)
        return with_findings(result, self._probed, self.cfg.suppress)

    def write_policy_report(self, snap: NodeSnapshot, result: CheckResult) -> None:
        """Server-side apply this node's ClusterPolicyReport when findings changed; the API
        settings come from the `cluster` section (in-cluster by default)."""
        from .collect.cluster import ClusterSettings, api_config
        from .kubeapi import ApiUnavailable, KubeApi
        from .report import policyreport

        report = policyreport.build(self.cfg.node_name, snap.scanned_at, result.findings)
        path = ("/apis/wgpolicyk8s.io/v1alpha2/clusterpolicyreports/"
                + report["metadata"]["name"])
        try:
            api = KubeApi(api_config(self.cfg.section("cluster") or ClusterSettings()))
            try:
                api.apply(path, report)
            finally:
                api.close()
        except ApiUnavailable as e:
            self.log.error("policy_report_failed", reason=e.reason)
            return
        self.log.info("policy_report_written", name=report["metadata"]["name"],
                      findings=len(result.findings))

    def enforce(self, snap: NodeSnapshot) -> None:
        """Re-assert the plan every cycle: idempotent when nothing drifted, and the only
        thing that restores a jump Felix or kube-proxy moved or removed. A refusal or a
        backend error is logged and leaves the rules as they were."""
        from .enforce import cycle

        try:
            prepared = cycle.prepare(self.cfg, snap)
            changed = prepared.backend.apply(prepared.plan, self.cfg.mode)
        except Exception as e:  # Refused, PlanError, BackendError, ConfigError
            self.log.error("enforce_failed", mode=self.cfg.mode, error=f"{type(e).__name__}: {e}")
            return
        if changed:
            self.metrics.rules_applied.inc(len(prepared.plan.rules))
            if self.applied_once:
                self.metrics.drift_repairs.inc()
            self.log.warning("rules_applied" if not self.applied_once else "drift_repaired",
                             mode=self.cfg.mode, backend=prepared.backend.name,
                             rules=len(prepared.plan.rules))
        self.applied_once = True

    # -- loop -------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True
        self._wake.set()

    def run(self, max_cycles: int | None = None) -> int:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.status = StatusServer(self.cfg.metrics_address, self.metrics, self.healthy)
        self.status.start()
        self._start_sink()
        self.log.info("daemon_started", config=self.cfg.source, mode=self.cfg.mode,
                      interval=self.cfg.interval, status_address=self.status.address)
        try:
            while not self._stop:
                if self._reload:
                    self._reload = False
                    self.reload()
                self.attempts += 1
                try:
                    self.cycle()
                except Exception as e:  # a failed scan must not kill the agent
                    self.last_error = f"{type(e).__name__}: {e}"
                    self.metrics.scans.labels("failed").inc()
                    self.log.error("scan_failed", error=self.last_error)
                if max_cycles is not None and self.attempts >= max_cycles:
                    break
                self._wake.wait(self.cfg.interval)
                self._wake.clear()
        finally:
            self.log.info("daemon_stopping", cycles=self.cycles)
            if self.sink is not None:
                self.sink.close()
            self.status.close()
        return 0
