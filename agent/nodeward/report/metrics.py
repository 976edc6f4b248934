"""Prometheus metrics and the /healthz endpoint of `nodeward run`.

A registry per daemon (not the process-global default), so tests and reloads never see
another instance's series.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ..model import Finding, Severity


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.findings = Gauge("nodeward_findings", "Open findings by ID and severity",
                              ["id", "severity"], registry=r)
        self.findings_by_severity = Gauge("nodeward_findings_by_severity",
                                          "Open findings by severity", ["severity"],
                                          registry=r)
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

    def set_findings(self, findings: Iterable[Finding]) -> None:
        self.findings.clear()
        by_sev = {str(s): 0 for s in Severity}
        counts: dict[tuple[str, str], int] = {}
        for f in findings:
            key = (f.id, str(f.severity))
            counts[key] = counts.get(key, 0) + 1
            by_sev[str(f.severity)] += 1
        for (fid, sev), n in counts.items():
            self.findings.labels(fid, sev).set(n)
        for sev, n in by_sev.items():
            self.findings_by_severity.labels(sev).set(n)

    def sink_changed(self, backlog: int, dropped: int) -> None:
        self.sink_backlog.set(backlog)
        if dropped:
            self.sink_dropped.inc(dropped)


class StatusServerError(OSError):
    """The status address cannot be served (port taken, address not local): one line."""


class _BoundedServer(HTTPServer):
    """At most WORKERS requests served at once and QUEUED waiting: one more is closed at
    once instead of spawning a thread, so a scraper storm or a slowloris cannot exhaust the
    agent's threads."""

    WORKERS = 4
    QUEUED = 32
    request_queue_size = 64  # listen backlog

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.pool = ThreadPoolExecutor(self.WORKERS, thread_name_prefix="nodeward-status")
        self.slots = threading.BoundedSemaphore(self.WORKERS + self.QUEUED)

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        self.pool.submit(self._work, request, client_address)

    def _work(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        try:
            self.finish_request(request, client_address)
        except Exception:  # a broken client must not print a traceback
            pass
        finally:
            self.shutdown_request(request)
            self.slots.release()

    def server_close(self) -> None:
        super().server_close()
        self.pool.shutdown(wait=False, cancel_futures=True)


class _BoundedServer6(_BoundedServer):
    address_family = socket.AF_INET6


class StatusServer:
    """/metrics and /healthz on a small bounded HTTP server in a daemon thread."""

    TIMEOUT = 5.0  # seconds a connection may take to send its request and read the answer

    def __init__(self, address: str, metrics: Metrics,
                 healthy: Callable[[], tuple[bool, str]]) -> None:
        host, _, port = address.rpartition(":")
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            timeout = self.TIMEOUT  # per-connection socket timeout (slow clients)

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

        server_cls = _BoundedServer6 if ":" in host else _BoundedServer
        try:
            self.server = server_cls((host.strip("[]"), int(port)), Handler)
        except OSError as e:
            raise StatusServerError(e.errno, f"status server {address}: "
                                             f"{e.strerror or e}") from None
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
