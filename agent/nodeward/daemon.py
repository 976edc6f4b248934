"""`nodeward run`: scan every interval and log what changed.

Each cycle takes a snapshot, runs the checks, and logs `finding_opened` for findings that
appeared and `finding_resolved` for those that went away (same fields as a scan's findings,
identity = Finding.key), a `finding` event for every open finding every
`daemon.full_report_every` cycles, and `scan_complete`. Events also go to the HTTP sink when
one is configured. SIGHUP reloads the config between cycles (a bad config keeps the old one
and says why); SIGTERM/SIGINT finish the current cycle and exit 0.
"""

from __future__ import annotations

import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from . import config as config_mod
from . import probe
from .checks import CheckResult, run_checks, with_findings
from .collect.auth import ProbeCache
from .collect.procs import OwnerMemo
from .collect.ruleset import ParseCache
from .daemon_settings import DaemonSettings
from .model import Finding, NodeSnapshot
from .report.logs import finding_fields, log_finding, make_logger, route_module_logs
from .report.metrics import Metrics, StatusServer, StatusServerError
from .ruleset.reach import ReachMemo
from .snapshot import take_snapshot

if TYPE_CHECKING:  # the sink (http.client, ssl) loads only when one is configured
    from .report.sink import HttpSink


def _splice_counts(cache: ParseCache) -> dict[str, Any]:
    """iptables-nft full saves and chains re-read one by one (collect/iptsplice.py), native
    tables read in full, spliced, spliced again after a write during the read, and why
    they were not spliced (collect/nftsplice.py)."""
    s = cache.nft_saves
    n = cache.nft_native  # native tables (collect/nftsplice.py)
    return {"ruleset_full_saves": s.full_reads if s else 0,
            "ruleset_chains_read": s.chain_reads if s else 0,
            "ruleset_native_full_reads": n.full_reads if n else 0,
            "ruleset_native_splices": n.splices if n else 0,
            "ruleset_native_retries": n.retries if n else 0,
            "ruleset_native_not_spliced": dict(n.why) if n else {}}


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
        self.owner_memo = OwnerMemo()
        self._last_checked: tuple[config_mod.Config, tuple, CheckResult] | None = None
        self.checks_reused = 0
        self.reach_memo = ReachMemo()
        self.auth_cache = ProbeCache()  # rate limit: one auth probe per socket per 10 min
        self.snapshotter = snapshotter or self._snapshot
        self.log = make_logger(cfg.node_name, out)
        route_module_logs(cfg.node_name, out)
        self.metrics = Metrics()
        self.previous: dict[tuple, Finding] = {}
        self.cycles = 0  # successful cycles
        self.attempts = 0
        self.last_ok = 0.0
        self.last_error = ""
        # the sleep between cycles ends on a signal through this pair: a signal handler
        # must take no lock (a threading.Event's, taken by a handler that interrupted
        # the main thread inside that Event's wait/clear, hung the daemon for good)
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        self._stop = False
        self._reload = False
        self.applied_once = False
        self.rejected: str | None = None  # desired rules a confirm_timeout rolled back
        self._probed: list[Finding] | None = None  # NW601 findings of the last probe round
        self._probe_cycles = 0
        self.sink: HttpSink | None = None
        self.status: StatusServer | None = None
        self.watcher: Any = None  # collect.watch.ClusterWatcher while the API is watched
        self._watch_key: Any = None
        self._peers: tuple[tuple[str, tuple[str, ...]], ...] = ()  # from the cluster view
        self._derived: Any = None  # what the cluster view implies, for enforcement
        self._derive_memo: tuple[Any, str, Any] | None = None  # (view, encryption, derived)

    # -- settings ---------------------------------------------------------------------------
    @property
    def settings(self) -> DaemonSettings:
        return self.cfg.section("daemon")

    def _start_sink(self) -> None:
        if self.sink is not None:
            self.sink.close()
            self.sink = None
        if self.settings.sink is not None:
            from .report.sink import HttpSink

            self.sink = HttpSink(self.settings.sink, self.cfg.node_name, self.log,
                                 on_change=self.metrics.sink_changed)
            self.sink.start()

    def reload(self) -> None:
        """Load the config again; a reload that fails for any reason keeps the old config
        (and its sink) running and says why in one line."""
        try:
            new = config_mod.load(self.config_path)
        except Exception as e:  # nothing in a config file may stop the agent
            error = str(e) if isinstance(e, config_mod.ConfigError) else \
                f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            self.metrics.reloads.labels("failed").inc()
            self.log.error("config_reload_failed", error=error, keeping=self.cfg.source)
            return
        old_cfg, old_log = self.cfg, self.log
        try:
            self.cfg = new
            self.log = make_logger(new.node_name, self.out)
            route_module_logs(new.node_name, self.out)
            if self.settings.sink != old_cfg.section("daemon").sink:
                self._start_sink()
        except Exception as e:  # keep running on the old config, as for a load error
            self.cfg, self.log = old_cfg, old_log
            route_module_logs(old_cfg.node_name, self.out)
            if self.sink is None and self.settings.sink is not None:
                self._start_sink()
            self.metrics.reloads.labels("failed").inc()
            self.log.error("config_reload_failed", error=f"{type(e).__name__}: {e}"[:200],
                           keeping=self.cfg.source)
            return
        self.metrics.reloads.labels("ok").inc()
        self.log.info("config_reloaded", source=new.source, mode=new.mode,
                      interval=new.interval)
        self.warn_permissions()

    def warn_permissions(self) -> None:
        """A token, key or kubeconfig others can read is a leaked credential; a config
        others can write is a firewall others can change."""
        from .settings_load import permission_warnings

        paths = {self.config_path or "": "config"}
        sink = self.settings.sink
        if sink is not None:
            paths[sink.token_file] = "secret"
        cluster = self.cfg.section("cluster")
        if cluster is not None:
            paths[cluster.token_file] = "secret"
            paths[cluster.kubeconfig] = "secret"
            if cluster.relay is not None:
                paths[cluster.relay.token_file] = "secret"
        for path, problem in permission_warnings(paths):
            self.log.warning("file_permissions_too_open", path=path, problem=problem,
                             hint="chmod 0600 (tokens, kubeconfig) or 0644 (config)")

    # -- health -----------------------------------------------------------------------------
    def healthy(self) -> tuple[bool, str]:
        """/healthz: scans succeed and the sink delivers."""
        if self.sink is not None:
            ok, why = self.sink.health()
            if not ok:
                return ok, why
        return self.alive()

    def alive(self) -> tuple[bool, str]:
        """/livez: scans succeed and the sink's sender runs. A stalled delivery is not in
        it: a restart would not bring the collector back (the spool survives anyway)."""
        if self.sink is not None and not self.sink.sender_alive():
            return False, "sink: sender thread is not running"
        if self.last_ok == 0.0:
            if not self.last_error:  # the first scan is still running
                return True, "starting"
            return False, f"no successful scan yet: {self.last_error}"
        age = time.time() - self.last_ok
        limit = 3 * self.cfg.interval + 30
        if age > limit:
            return False, f"last successful scan {age:.0f}s ago: {self.last_error}"
        return True, "ok"

    # -- one cycle --------------------------------------------------------------------------
    def _snapshot(self, cfg: config_mod.Config) -> NodeSnapshot:
        return take_snapshot(cfg, ruleset_cache=self.ruleset_cache, auth_probe=cfg.auth_probe,
                             auth_cache=self.auth_cache, owner_memo=self.owner_memo)

    def cycle(self) -> CycleOutcome:
        start = time.perf_counter()
        snap = self.snapshotter(self.cfg)
        cluster = self.cfg.section("cluster")
        if cluster is not None and snap.cluster is None:
            # the cluster's facts in the snapshot (from the watched view): encryption and
            # Calico checks then run with the others, as in `nodeward scan`
            from .snapshot import add_cluster

            view = self._cluster_view(cluster)
            snap = add_cluster(snap, cluster, view, self._derived_from(view, cluster))
        if snap.cluster is not None:
            self._peers = tuple((n.name, n.addresses) for n in snap.cluster.view.peers
                                if n.addresses)
            self._derived = snap.cluster.derived
        result = self._checked(snap)
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
                      verdicts_reused=self.reach_memo.hits,
                      ruleset_reads=self.ruleset_cache.reads,
                      ruleset_reads_skipped=self.ruleset_cache.reads_skipped,
                      **_splice_counts(self.ruleset_cache),
                      owners_verified=self.owner_memo.verified,
                      checks_reused=self.checks_reused)
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

    def _derived_from(self, view: Any, cluster: Any) -> Any:
        """derive() of the watched view, again only when the watcher hands over another
        view (it keeps one while nothing changed): 5,000 nodes' addresses collapsed into
        networks cost ~0.5 s, every cycle of a quiet cluster before."""
        if view is None:
            return None
        memo = self._derive_memo
        if memo is not None and memo[0] is view and memo[1] == cluster.encryption:
            return memo[2]
        from .derive import derive

        derived = derive(view, encryption=cluster.encryption)
        self._derive_memo = (view, cluster.encryption, derived)
        return derived

    def _cluster_view(self, cluster: Any) -> Any:
        """The watched cluster view (list once, then watch: nothing is listed per cycle),
        or None where the cluster stage reads it itself (offline dir, static peers, or an
        API whose settings are unusable: collect_cluster turns that into NW500)."""
        from .collect.cluster import view_api
        from .collect.watch import ClusterWatcher
        from .kubeapi import ApiUnavailable

        if cluster.offline_dir or not cluster.use_api:
            self._stop_watcher()
            return None
        key = (cluster.api_url, cluster.kubeconfig, cluster.token_file, cluster.ca_file,
               cluster.timeout, cluster.retries, cluster.relay)
        if self.watcher is None or key != self._watch_key:
            self._stop_watcher()
            try:
                api = view_api(cluster)
            except ApiUnavailable:
                return None
            self.watcher = ClusterWatcher(api).start()
            self._watch_key = key
            self.watcher.wait_synced(2 * cluster.timeout)
        return self.watcher.view(cluster.node_name or self.cfg.node_name)

    def _stop_watcher(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
            self._watch_key = None

    def _checked(self, snap: NodeSnapshot) -> CheckResult:
        """run_checks, or the last cycle's result when its inputs are equal: the checks are
        pure functions of the snapshot (its time aside) and the config, and a quiet node's
        cycles see the same sockets, owners, interfaces and ruleset (by fingerprint) again
        and again. 10,000 sockets: ~5 ms to compare instead of ~150 ms to check."""
        rs, cs = snap.ruleset, snap.cluster
        # the cluster's facts count only as the watcher's change counters (a view read
        # afresh each cycle, from files or a LIST, is never taken as unchanged)
        cluster_key = None if cs is None else (
            None if self.watcher is None else (
                self.watcher.generation(), cs.wireguard, cs.xfrm_states, cs.xfrm_policies,
                cs.routes, cs.rules, cs.listening))
        key = None if (rs is not None and not rs.fingerprint) or (
            cs is not None and cluster_key is None) else (
            snap.sockets, snap.interfaces, snap.notes, snap.ruleset_unavailable,
            None if rs is None else (rs.fingerprint, rs.problems, rs.notes),
            snap.auth, cluster_key)
        last = self._last_checked
        if key is not None and last is not None and last[0] is self.cfg and last[1] == key:
            self.checks_reused += 1
            self.reach_memo.hits += len(self.reach_memo.entries)  # every verdict reused
            return last[2]
        # the last result (and the sockets its key holds) goes before the new one is made:
        # ~4 MB at 10,000 sockets that otherwise raised every cycle's peak
        self._last_checked = last = None
        result = run_checks(snap, self.cfg, self.reach_memo)
        self._last_checked = (self.cfg, key, result) if key is not None else None
        return result

    def _with_probes(self, snap: NodeSnapshot, result: CheckResult) -> CheckResult:
        """Every `probe_peers.every` cycles, probe the configured peers' sensitive ports
        and add NW601 findings; in between, carry the last probe findings forward so they
        neither resolve nor reopen between probe rounds."""
        ps = self.settings.probe_peers
        # configured peers win; else the nodes the cluster view lists
        peers = ps.peers or self._peers
        if not (ps.enabled and peers):
            return result
        self._probe_cycles += 1
        if self._probed is None or self._probe_cycles % ps.every == 0:
            plan = probe.targets([probe.Peer(n, a) for n, a in peers], ps.ports,
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

    def _recover_rollback(self) -> None:
        """An apply killed in its confirm window with its watchdog (a cgroup or container
        kill) left the previous rules and a deadline on disk: honour that promise at start,
        in every mode (it undoes an unconfirmed change; nothing new is written)."""
        from .enforce import cycle, state

        if state.pending() is None:
            return
        try:
            done = cycle.recover_pending()
        except Exception as e:  # BackendError, LockBusy
            self.log.error("rollback_failed", error=f"{type(e).__name__}: {e}")
            return
        if done:
            self.log.warning("enforce_rolled_back", reason=done)

    def enforce(self, snap: NodeSnapshot) -> None:
        """Re-assert the plan every cycle: idempotent when nothing drifted, and the only
        thing that restores a jump Felix or kube-proxy moved or removed. A refusal or a
        backend error is logged and leaves the rules as they were."""
        from .enforce import cycle

        try:
            recovered = cycle.recover_pending()
            if recovered:
                self.log.warning("enforce_rolled_back", reason=recovered)
            prepared = cycle.prepare(self.cfg, snap, derived=self._derived)
            if prepared.plan.open_ipv6:
                self.log.warning("ipv6_left_open", paths=list(prepared.plan.open_ipv6))
            backend, timeout = prepared.backend, prepared.settings.confirm_timeout
            desired = backend.desired(prepared.plan, self.cfg.mode)
            if desired == self.rejected:  # rolled back before: not again until it changes
                return
            watchdog = None
            if timeout > 0 and backend.current() != desired:
                watchdog = cycle.arm_rollback(backend, timeout)
            changed = backend.apply(prepared.plan, self.cfg.mode)
            if watchdog is not None:
                failed = cycle.confirm_or_rollback(backend, prepared.settings, timeout,
                                                   watchdog)
                if failed:
                    self.rejected = desired
                    self.log.error("enforce_rolled_back", mode=self.cfg.mode,
                                   backend=backend.name, timeout=timeout,
                                   failed=[f"{h}:{p}" for h, p in failed])
                    return
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
        """Flags only: the C-level handler has already written to the wakeup socket."""
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True

    def _sleep(self, seconds: float) -> None:
        """Until the next cycle, or a signal (set_wakeup_fd's byte; a flag set before)."""
        if not (self._stop or self._reload):
            select.select([self._wake_r], [], [], seconds)
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def run(self, max_cycles: int | None = None) -> int:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            self.status = StatusServer(self.cfg.metrics_address, self.metrics, self.healthy,
                                       self.alive)
        except StatusServerError as e:
            print(f"nodeward: error: {e.strerror}", file=sys.stderr)
            return 2
        self.status.start()
        self.warn_permissions()
        self._start_sink()
        self.log.info("daemon_started", config=self.cfg.source, mode=self.cfg.mode,
                      interval=self.cfg.interval, status_address=self.status.address)
        self._recover_rollback()
        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
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
                self._sleep(self.cfg.interval)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            self.log.info("daemon_stopping", cycles=self.cycles)
            if self.sink is not None:
                self.sink.close()
            self._stop_watcher()
            self.status.close()
        return 0
