"""Prometheus metrics and the /healthz endpoint of `nodeward run`.

A registry per daemon (not the process-global default), so tests and reloads never see
another instance's series. Names follow Prometheus' conventions (checked by `promtool
check metrics` in the tests): base units, `_total` on counters, no label value in a name
(per-severity counts are `sum by (severity) (nodeward_findings)`), no `_created` series.
"""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import threading
from collections.abc import Callable, Iterable

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


class StatusServerError(OSError):
    """The status address cannot be served (port taken, address not local): one line."""


class StatusServer:
    """/metrics, /healthz (everything, delivery included) and /livez (the agent itself:
    for a liveness probe, since restarting it does not bring a collector back) on one
    asyncio thread.

    Why not http.server: one thread per connection and a backlog of 5 let a handful of
    idle clients (slowloris) hold /healthz hostage. Here an idle connection costs a few
    hundred bytes, not a thread; each one has TIMEOUT seconds to send its request and read
    the answer, at most MAX_CONNECTIONS are open (more are closed at once) and a request
    head is at most 8 KiB. The answer is computed in the loop thread: it is cheap."""

    TIMEOUT = 5.0
    MAX_CONNECTIONS = 256

    def __init__(self, address: str, metrics: Metrics,
                 healthy: Callable[[], tuple[bool, str]],
                 live: Callable[[], tuple[bool, str]] | None = None) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        self.registry = metrics.registry
        self.healthy = healthy
        self.live = live or healthy
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self.sock = socket.create_server((host, int(port)), family=family, backlog=128)
        except OSError as e:
            why = os.strerror(e.errno) if e.errno else str(e)
            raise StatusServerError(e.errno, f"status server {address}: {why}") from None
        self.open = 0
        self.served = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="nodeward-status",
                                       daemon=True)

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def start(self) -> None:
        self.thread.start()
        self._ready.wait(5)

    def close(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, sock=self.sock, limit=8192))
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()

    def _answer(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path in ("/healthz", "/livez"):
            ok, why = (self.healthy if path == "/healthz" else self.live)()
            return (200 if ok else 503), "text/plain", (why + "\n").encode()
        return 404, "text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if self.open >= self.MAX_CONNECTIONS:
            writer.close()
            return
        self.open += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.TIMEOUT)
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
                code, ctype, body = 400, "text/plain", b"bad request\n"
            else:
                code, ctype, body = self._answer(parts[1].decode("latin-1"))
            reason = {200: "OK", 400: "Bad Request", 404: "Not Found",
                      503: "Service Unavailable"}[code]
            writer.write(f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                         .encode() + (b"" if parts[:1] == [b"HEAD"] else body))
            await asyncio.wait_for(writer.drain(), self.TIMEOUT)
            self.served += 1
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, OSError):
            pass  # a slow, broken or oversized client: just close it
        finally:
            self.open -= 1
            writer.close()
