"""Prometheus metrics and the /healthz endpoint of `nodeward run`.

A registry per daemon (report/promtext.py: no process-global default), so tests and
reloads never see another instance's series. Names follow Prometheus' conventions (checked
by `promtool check metrics` in the tests): base units, `_total` on counters, no label value
in a name (per-severity counts are `sum by (severity) (nodeward_findings)`), no `_created`
series.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable

from .. import __version__
from ..model import Finding
from .promtext import CONTENT_TYPE, Counter, Gauge, Histogram, Registry


class Metrics:
    def __init__(self) -> None:
        # process_cpu_seconds_total, _resident_memory_bytes, ... first, then ours
        r = self.registry = Registry(process=True)
        Gauge("nodeward_build_info", "nodeward build: always 1, the version in labels",
              ["version", "python_version"], registry=r).labels(
            __version__, sys.version.split()[0]).set(1)  # = platform.python_version()
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

    def exposition(self) -> bytes:
        """What /metrics answers."""
        return self.registry.exposition()


class StatusServerError(OSError):
    """The status address cannot be served (port taken, address not local): one line."""


class _Conn:
    """One client of the status server: its request head so far, then its answer."""

    __slots__ = ("deadline", "head", "out", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline
        self.head = bytearray()
        self.out: memoryview | None = None


class StatusServer:
    """/metrics, /healthz (everything, delivery included) and /livez (the agent itself:
    for a liveness probe, since restarting it does not bring a collector back) on one
    thread with a selector.

    Why not http.server: one thread per connection and a backlog of 5 let a handful of
    idle clients (slowloris) hold /healthz hostage. Here an idle connection costs a few
    hundred bytes, not a thread; each one has TIMEOUT seconds to send its request and as
    long again to read the answer, at most MAX_CONNECTIONS are open (more are closed at
    once) and a request head is at most MAX_HEAD bytes. The answer is computed in the
    server's thread: it is cheap. (Not asyncio either: the event loop's modules cost the
    daemon several MB of RSS for what a selector does.)"""

    TIMEOUT = 5.0
    MAX_CONNECTIONS = 256
    MAX_HEAD = 8192

    def __init__(self, address: str, metrics: Metrics,
                 healthy: Callable[[], tuple[bool, str]],
                 live: Callable[[], tuple[bool, str]] | None = None) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        self.metrics = metrics
        self.healthy = healthy
        self.live = live or healthy
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self.sock = socket.create_server((host, int(port)), family=family, backlog=128)
        except OSError as e:
            why = os.strerror(e.errno) if e.errno else str(e)
            raise StatusServerError(e.errno, f"status server {address}: {why}") from None
        self.sock.setblocking(False)
        self.open = 0
        self.served = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
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
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
            self.thread.join(5)
        self.sock.close()
        self._wake_r.close()
        self._wake_w.close()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        conns: dict[int, _Conn] = {}
        self._ready.set()
        try:
            while True:
                now = time.monotonic()
                for c in [c for c in conns.values() if c.deadline <= now]:
                    self._drop(sel, conns, c)  # too slow: just close it
                timeout = min((c.deadline for c in conns.values()), default=now + 60) - now
                for key, _events in sel.select(max(timeout, 0.0)):
                    if key.fileobj is self._wake_r:
                        return
                    if key.fileobj is self.sock:
                        self._accept(sel, conns)
                        continue
                    c = conns.get(key.fd)  # type: ignore[arg-type]
                    if c is not None:
                        self._step(sel, conns, c)
        finally:
            for c in list(conns.values()):
                self._drop(sel, conns, c)
            sel.close()

    def _accept(self, sel: selectors.BaseSelector, conns: dict[int, _Conn]) -> None:
        for _ in range(64):  # then let the open connections have their turn
            try:
                sock, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ECONNABORTED, EMFILE, ...: try again on the next wakeup
                return
            if self.open >= self.MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            c = _Conn(sock, time.monotonic() + self.TIMEOUT)
            conns[sock.fileno()] = c
            self.open += 1
            sel.register(sock, selectors.EVENT_READ, None)

    def _drop(self, sel: selectors.BaseSelector, conns: dict[int, _Conn], c: _Conn) -> None:
        fd = c.sock.fileno()
        if conns.pop(fd, None) is None:
            return
        self.open -= 1
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(c.sock)
        c.sock.close()

    def _step(self, sel: selectors.BaseSelector, conns: dict[int, _Conn], c: _Conn) -> None:
        """Read more of the head, or send more of the answer; close when done or wrong."""
        try:
            if c.out is None:
                data = c.sock.recv(self.MAX_HEAD + 4 - len(c.head))
                if not data:
                    self._drop(sel, conns, c)  # gone before a whole head
                    return
                c.head += data
                end = c.head.find(b"\r\n\r\n")
                if end < 0 or end > self.MAX_HEAD:
                    if len(c.head) >= self.MAX_HEAD:
                        self._drop(sel, conns, c)  # oversized head
                    return
                c.out = memoryview(self._response(bytes(c.head[:end])))
                c.deadline = time.monotonic() + self.TIMEOUT
                sel.modify(c.sock, selectors.EVENT_WRITE, None)
            sent = c.sock.send(c.out)
            c.out = c.out[sent:]
            if not c.out:
                self.served += 1
                self._drop(sel, conns, c)
        except (BlockingIOError, InterruptedError):
            return
        except Exception:  # a broken client (or an answer that failed): close it, serve on
            self._drop(sel, conns, c)

    def _response(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            code, ctype, body = 400, "text/plain", b"bad request\n"
        else:
            code, ctype, body = self._answer(parts[1].decode("latin-1"))
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found",
                  503: "Service Unavailable"}[code]
        return (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                .encode() + (b"" if parts[:1] == [b"HEAD"] else body))

    def _answer(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE, self.metrics.exposition()
        if path in ("/healthz", "/livez"):
            ok, why = (self.healthy if path == "/healthz" else self.live)()
            return (200 if ok else 503), "text/plain", (why + "\n").encode()
        return 404, "text/plain", b"not found\n"
