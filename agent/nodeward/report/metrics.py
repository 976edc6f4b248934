"""Prometheus metrics and the /healthz endpoint of `nodeward run`.

A registry per daemon (not the process-global default), so tests and reloads never see
another instance's series. Names follow Prometheus' conventions (checked by `promtool
check metrics` in the tests): base units, `_total` on counters, no label value in a name
(per-severity counts are `sum by (severity) (nodeward_findings)`), no `_created` series.
"""

from __future__ import annotations

import platform
import socket
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import prometheus_client
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from .. import __version__
from ..model import Finding

# `_created` samples double every counter's series for a timestamp nobody queries; the
# switch is process-wide in prometheus_client, and this process exports nothing else.
prometheus_client.disable_created_metrics()


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_cpu_seconds_total, _resident_memory_bytes, ...
        Gauge("nodeward_build_info", "nodeward build: always 1, the version in labels",
              ["version", "python_version"], registry=r).labels(
            __version__, platform.python_version()).set(1)
        self.findings = Gauge("nodeward_findings", "Open findings by ID and severity",
                              ["id", "severity"], registry=r)
        self.findings_opened = Counter("nodeward_findings_opened",
                                       "Findings that appeared (new since the previous "
                                       "scan; at start every open finding is new)",
                                       ["id", "severity"], registry=r)
        self.scan_duration = Histogram("nodeward_scan_duration_seconds",
                                       "Duration of a scan cycle", registry=r,
                                       buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.scans = Counter("nodeward_scans", "Scan cycles", ["result"], registry=r)
        self.last_scan = Gauge("nodeward_last_scan_timestamp_seconds",
                               "Unix time of the last successful scan", registry=r)
        self.sockets = Gauge("nodeward_listening_sockets", "Listening sockets seen",
                             registry=r)
        self.rules_applied = Counter("nodeward_rules_applied",
                                     "Firewall rules written by apply transactions",
                                     registry=r)
        self.drift_repairs = Counter("nodeward_drift_repairs",
                                     "Times the agent re-asserted its rules after drift",
                                     registry=r)
        self.sink_backlog = Gauge("nodeward_sink_backlog_events",
                                  "Events spooled and not yet delivered", registry=r)
        self.sink_dropped = Counter("nodeward_sink_dropped_events",
                                    "Events dropped (spool bound or rejected)", registry=r)
        self.reloads = Counter("nodeward_config_reloads", "Config reloads", ["result"],
                               registry=r)
        for result in ("ok", "failed"):  # both series exist from the start: rate() works
            self.scans.labels(result)
            self.reloads.labels(result)
        self._open: set[tuple] = set()

    def set_findings(self, findings: Iterable[Finding]) -> None:
        self.findings.clear()
        counts: dict[tuple[str, str], int] = {}
        keys = set()
        for f in findings:
            key = (f.id, str(f.severity))
            counts[key] = counts.get(key, 0) + 1
            ident = (*f.key, f.evidence.get("family", ""))
            keys.add(ident)
            if ident not in self._open:
                self.findings_opened.labels(*key).inc()
        self._open = keys
        for (fid, sev), n in counts.items():
            self.findings.labels(fid, sev).set(n)

    def sink_changed(self, backlog: int, dropped: int) -> None:
        self.sink_backlog.set(backlog)
        if dropped:
            self.sink_dropped.inc(dropped)


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class StatusServer:
    """/metrics and /healthz on a small threaded HTTP server in a daemon thread."""

    def __init__(self, address: str, metrics: Metrics,
                 healthy: Callable[[], tuple[bool, str]]) -> None:
        host, _, port = address.rpartition(":")
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, ctype, code = generate_latest(registry), CONTENT_TYPE_LATEST, 200
                elif self.path == "/healthz":
                    ok, why = healthy()
                    body, ctype, code = (why + "\n").encode(), "text/plain", 200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass  # the agent's own log is the structured one

        server_cls = _Server6 if ":" in host else ThreadingHTTPServer
        self.server = server_cls((host.strip("[]"), int(port)), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       name="nodeward-status", daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
