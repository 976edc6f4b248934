"""The relay: one ClusterWatcher on the API server feeding a RelayStore, and an HTTPS
server answering agents' LIST and WATCH requests from that store in the API server's own
protocol (paginated lists with a resourceVersion, chunked watch streams, BOOKMARK, ERROR
410 Gone), so the agents' ClusterWatcher needs nothing but another URL and CA.

A relay whose upstream watch of a kind has failed for longer than `stale_after_s` stops
answering for that kind (503 on lists, an ERROR event ending watches): each agent's view
then names the kind as unknown instead of silently ageing. `/healthz` (unauthenticated,
says only ok/not ready) is the readiness probe: a relay not yet synced gets no traffic.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from ..collect.watch import ClusterWatcher
from ..kubeapi import KubeApi
from ..report.logs import get_logger
from .auth import TokenReviewer
from .store import Expired, KindState, RelayStore

log = get_logger("nodeward.relay")


@dataclass(frozen=True)
class RelayOptions:
    host: str = "0.0.0.0"
    port: int = 5443
    cert_file: str = ""
    key_file: str = ""
    bookmark_interval_s: float = 60.0
    max_watch_timeout_s: float = 1800.0
    stale_after_s: float = 90.0  # upstream failing this long: agents are told, not fed
    upstream_watch_timeout_s: int = 300
    upstream_backoff_s: float = 0.5


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, addr: tuple[str, int], handler: Any, relay: RelayServer) -> None:
        self.relay = relay
        super().__init__(addr, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # the handshake in the connection's own thread: a slow client never stalls accept()
        self.relay.maybe_reload()
        request.settimeout(10)
        try:
            conn = self.relay.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.relay.count("tls_refused")
            log.info("relay_tls_refused", peer=client_address[0], reason=type(e).__name__)
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def shutdown_request(self, request: Any) -> None:
        with contextlib.suppress(OSError):
            request.shutdown(socket.SHUT_WR)
        request.close()


class RelayServer:
    """The agents' side: serves a RelayStore over HTTPS to authenticated agents."""

    def __init__(self, store: RelayStore, reviewer: TokenReviewer, opts: RelayOptions,
                 candidate_paths: dict[str, tuple[str, ...]]) -> None:
        self.store, self.reviewer, self.opts = store, reviewer, opts
        self.candidates = candidate_paths  # kind -> every path an agent may try for it
        self.ctx = tls_context(opts.cert_file, opts.key_file)
        self._cert_mtime = self._mtimes()
        self._checked = time.monotonic()
        self.requests: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, int] = defaultdict(int)  # list / events / bookmarks / errors
        self._count_lock = threading.Lock()
        self.closing = False
        self.server: _TLSServer | None = None

    # -- bookkeeping ----------------------------------------------------------------------

    def count(self, what: str, n: int = 1, *, nbytes: int = 0) -> None:
        with self._count_lock:
            self.requests[what] += n
            if nbytes:
                self.bytes[what] += nbytes

    def _mtimes(self) -> tuple[float, float]:
        try:
            return (os.stat(self.opts.cert_file).st_mtime, os.stat(self.opts.key_file).st_mtime)
        except OSError:
            return (0.0, 0.0)

    def maybe_reload(self) -> None:
        """A rotated serving certificate (cert-manager, a re-created Secret) is picked up
        within 30 s, without a restart that would send every agent to re-list."""
        if time.monotonic() - self._checked < 30:
            return
        self._checked = time.monotonic()
        m = self._mtimes()
        if m != self._cert_mtime:
            try:
                self.ctx = tls_context(self.opts.cert_file, self.opts.key_file)
                self._cert_mtime = m
                log.info("relay_cert_reloaded")
            except (ssl.SSLError, OSError) as e:
                log.error("relay_cert_reload_failed", reason=str(e))

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    def start(self) -> RelayServer:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60  # idle keep-alive connections are closed

            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                relay.handle(self)

        self.closing = False
        self.server = _TLSServer((self.opts.host, self.opts.port), Handler, self)
        threading.Thread(target=self.server.serve_forever, daemon=True,
                         name="nodeward-relay-accept").start()
        return self

    def stop(self) -> None:
        self.closing = True
        for ks in self.store.kinds.values():
            with ks.cond:
                ks.cond.notify_all()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # -- requests -------------------------------------------------------------------------

    def _send(self, h: BaseHTTPRequestHandler, code: int, body: bytes, what: str,
              phrase: str | None = None) -> None:
        h.send_response(code, phrase)  # the phrase is what an agent's NW500 will quote
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
        self.count(what, 0, nbytes=len(body))

    def _status(self, h: BaseHTTPRequestHandler, code: int, reason: str, message: str,
                phrase: str | None = None) -> None:
        body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "code": code, "reason": reason, "message": message}).encode()
        self._send(h, code, body, "errors", phrase)

    def _kind(self, path: str) -> tuple[KindState | None, bool]:
        """The kind served at `path`, and whether `path` may yet be served (not synced)."""
        for kind, paths in self.candidates.items():
            if path in paths:
                ks = self.store.kinds[kind]
                if not ks.synced:
                    return None, True
                return (ks if ks.served and ks.path == path else None), False
        return None, False

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        u = urlparse(h.path)
        if u.path == "/healthz":
            ready = all(ks.synced and not ks.unhealthy for ks in self.store.kinds.values())
            return self._send(h, 200 if ready else 503, b"ok" if ready else b"not ready",
                              "healthz")
        verdict = self.reviewer.check(h.headers.get("Authorization"))
        if verdict.status != 200:
            self.count(f"refused {verdict.status}")
            log.warning("relay_refused", peer=h.client_address[0], code=verdict.status,
                        reason=verdict.reason)
            return self._status(h, verdict.status, "Unauthorized" if verdict.status == 401
                                else "Forbidden" if verdict.status == 403
                                else "ServiceUnavailable", verdict.reason)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        ks, pending = self._kind(u.path)
        if ks is None:
            if pending:
                return self._status(h, 503, "ServiceUnavailable", "relay: not synced yet",
                                    "Relay Not Synced Yet")
            return self._status(h, 404, "NotFound", f"{u.path}: not served")
        if ks.unhealthy:
            return self._status(h, 503, "RelayUpstreamStale",
                                f"relay: upstream {ks.kind}: {ks.unhealthy}",
                                "Relay Upstream Stale")
        if q.get("watch") in ("1", "true"):
            self.count("watch")
            return self._watch(h, ks, q)
        self.count("list")
        return self._list(h, ks, q)

    def _list(self, h: BaseHTTPRequestHandler, ks: KindState, q: dict[str, str]) -> None:
        with ks.cond:
            version, items = self.store.items(ks)
            assert ks.snapshot is not None
            snap = ks.snapshot[0]
        try:
            limit = max(0, int(q.get("limit", "0") or 0))
            cont = q.get("continue", "")
            start, at = 0, version
            if cont:
                at, _, off = cont.rpartition(":")
                c_snap, _, c_version = at.partition("@")
                start = int(off)
                if int(c_snap) != snap:
                    return self._status(h, 410, "Expired", "continue token expired: list "
                                        "again")
                version = c_version
        except ValueError:
            return self._status(h, 400, "BadRequest", "malformed limit or continue")
        page = items[start:start + limit] if limit else items[start:]
        meta: dict[str, str] = {"resourceVersion": version}
        if limit and start + limit < len(items):
            meta["continue"] = f"{snap}@{version}:{start + limit}"
        body = b'{"kind":"List","apiVersion":"v1","metadata":%s,"items":[%s]}' % (
            json.dumps(meta).encode(), b",".join(page))
        self._send(h, 200, body, "list")

    def _watch(self, h: BaseHTTPRequestHandler, ks: KindState, q: dict[str, str]) -> None:
        try:
            timeout = min(float(q.get("timeoutSeconds", "300")), self.opts.max_watch_timeout_s)
        except ValueError:
            return self._status(h, 400, "BadRequest", "malformed timeoutSeconds")
        bookmarks = q.get("allowWatchBookmarks") == "true"
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def chunk(data: bytes, what: str) -> bool:
            try:
                h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                h.wfile.flush()
            except OSError:
                return False
            self.count(what, 0, nbytes=len(data))
            return True

        def error(code: int, reason: str, message: str) -> None:
            chunk(json.dumps({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                "reason": reason, "message": message}}).encode() + b"\n", "errors")

        try:
            sent = self.store.parse(q.get("resourceVersion", ""))
        except Expired:
            sent = -1
        end = time.monotonic() + timeout
        # without bookmarks asked for, the next one is never due (and never waited for)
        next_bookmark = time.monotonic() + (self.opts.bookmark_interval_s if bookmarks
                                            else timeout + 1)
        while not self.closing:
            left = end - time.monotonic()
            if left <= 0:
                break
            with ks.cond:
                try:
                    pending = self.store.after(ks, sent)
                    if not pending and not ks.unhealthy:
                        ks.cond.wait(min(left, max(0.0, next_bookmark - time.monotonic()),
                                         5.0))
                        pending = self.store.after(ks, sent)
                except Expired:
                    pending = None
                now_n = self.store.now()
                unhealthy = ks.unhealthy
            if pending is None:
                error(410, "Expired", "resourceVersion too old for this relay: list again")
                break
            if pending:
                if not chunk(b"".join(e for _n, e in pending), "events"):
                    return
                sent = pending[-1][0]
            elif unhealthy:
                error(503, "RelayUpstreamStale", f"relay: upstream {ks.kind}: {unhealthy}")
                break
            elif bookmarks and time.monotonic() >= next_bookmark:
                sent = now_n
                line = json.dumps({"type": "BOOKMARK", "object": {
                    "kind": ks.kind, "apiVersion": "v1",
                    "metadata": {"resourceVersion": self.store.version(now_n)}}}).encode()
                if not chunk(line + b"\n", "bookmarks"):
                    return
                next_bookmark = time.monotonic() + self.opts.bookmark_interval_s
        try:
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
        except OSError:
            pass
        h.close_connection = True


class Relay:
    """The whole relay: upstream watch -> store -> server, and the monitor that tells
    agents when the upstream view stopped being current."""

    def __init__(self, api: KubeApi, reviewer: TokenReviewer, opts: RelayOptions) -> None:
        self.opts = opts
        self.watcher = ClusterWatcher(api, watch_timeout_s=opts.upstream_watch_timeout_s,
                                      backoff_s=opts.upstream_backoff_s)
        self.store = RelayStore([rw.kind for rw in self.watcher.kinds])
        self.watcher.sink = self.store
        self.server = RelayServer(self.store, reviewer, opts,
                                  {rw.kind: rw.paths for rw in self.watcher.kinds})
        self._stop = threading.Event()
        self._failing_since: dict[str, float] = {}

    def start(self) -> Relay:
        self.watcher.start()
        self.server.start()
        threading.Thread(target=self._monitor, daemon=True, name="nodeward-relay-monitor"
                         ).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.server.stop()
        # the upstream streams end with the process (daemon threads): a SIGTERM'd relay
        # does not wait out 7 blocked reads
        self.watcher.stop(timeout=0.1)

    def _monitor(self) -> None:
        step = max(0.05, min(1.0, self.opts.stale_after_s / 4))
        while not self._stop.wait(step):
            self.check_health(time.monotonic())

    def check_health(self, now: float) -> None:
        failing = self.watcher.failing()
        for kind, ks in self.store.kinds.items():
            reason = failing.get(kind, "")
            if reason and ks.synced:
                since = self._failing_since.setdefault(kind, now)
                mark = reason if now - since >= self.opts.stale_after_s else ""
            else:
                self._failing_since.pop(kind, None)
                mark = ""
            if mark != ks.unhealthy:
                with ks.cond:
                    ks.unhealthy = mark
                    ks.cond.notify_all()
                if mark:
                    log.error("relay_upstream_stale", kind=kind, reason=mark)
                else:
                    log.info("relay_upstream_current", kind=kind)
