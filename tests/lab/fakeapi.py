"""A local stand-in for the Kubernetes API that speaks the real list/watch protocol:
paginated LISTs carrying a resourceVersion, WATCH as a chunked stream of JSON events after a
resourceVersion, BOOKMARK events, `ERROR 410 Gone` for a version older than what it keeps,
`timeoutSeconds`. It counts requests and bytes per resource so benchmarks can compare
list-every-cycle with list-then-watch. Loopback only; stop() ends every stream.

    api = FakeApi().start()
    api.put("/api/v1/nodes", node_obj)      # ADDED or MODIFIED, new resourceVersion
    api.delete("/api/v1/nodes", "n3")
    api.compact()                           # older versions -> 410 Gone on watch
    api.token_users["tok"] = "system:serviceaccount:ns:sa"   # TokenReview says who "tok" is
"""

from __future__ import annotations

import copy
import json
import ssl
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class FakeApi:
    def __init__(self, token: str = "", bookmark_interval: float = 1.0,
                 port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.token = token
        self.tls = tls  # a server context: HTTPS, as the in-cluster API is
        self.bookmark_interval = bookmark_interval
        self.port = port
        self.rv = 100
        self.objects: dict[str, dict[str, dict]] = defaultdict(dict)
        self.history: list[tuple[int, str, str, dict]] = []  # (rv, path, type, obj)
        self.oldest = 0  # versions before it are compacted away
        self.cond = threading.Condition()
        self.requests: dict[str, int] = defaultdict(int)  # "LIST path" / "WATCH path"
        self.bytes: dict[str, int] = defaultdict(int)
        self.served_paths: set[str] = set()  # paths that exist (others 404)
        self.token_users: dict[str, str] = {}  # bearer token -> username, for TokenReview
        self.server: ThreadingHTTPServer | None = None
        self._closing = False

    # -- the store ------------------------------------------------------------------------

    def serve(self, *paths: str) -> FakeApi:
        self.served_paths.update(paths)
        return self

    def put(self, path: str, obj: dict) -> int:
        with self.cond:
            self.served_paths.add(path)
            self.rv += 1
            obj = copy.deepcopy(obj)
            obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
            name = obj["metadata"]["name"]
            kind = "MODIFIED" if name in self.objects[path] else "ADDED"
            self.objects[path][name] = obj
            self.history.append((self.rv, path, kind, obj))
            self.cond.notify_all()
            return self.rv

    def delete(self, path: str, name: str) -> None:
        with self.cond:
            obj = self.objects[path].pop(name)
            self.rv += 1
            obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
            self.history.append((self.rv, path, "DELETED", obj))
            self.cond.notify_all()

    def compact(self) -> None:
        """Forget history: a watch from any version before now gets 410 Gone."""
        with self.cond:
            self.oldest = self.rv + 1
            self.history.clear()
            self.cond.notify_all()

    def reset_counters(self) -> None:
        self.requests.clear()
        self.bytes.clear()

    # -- the server -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self.server is not None
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                api._handle(self)

            def do_POST(self):
                api._review(self)

        self._closing = False
        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # a relay and its agents connect many at once

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]  # a restart comes back on the same port
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """The server goes away: listener closed, every open watch stream ended."""
        self._closing = True
        with self.cond:
            self.cond.notify_all()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def _send(self, h: BaseHTTPRequestHandler, code: int, body: dict, what: str) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        self.bytes[what] += len(data)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        u = urlparse(h.path)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        path = u.path
        watching = q.get("watch") in ("1", "true")
        what = f"{'WATCH' if watching else 'LIST'} {path}"
        self.requests[what] += 1
        if self.token and h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(h, 401, {"kind": "Status", "code": 401}, what)
        if path not in self.served_paths:
            return self._send(h, 404, {"kind": "Status", "code": 404}, what)
        if watching:
            return self._watch(h, path, q, what)
        with self.cond:
            items = sorted(self.objects[path].values(), key=lambda o: o["metadata"]["name"])
            rv = self.rv
        limit = int(q.get("limit", "0") or 0)
        start = int(q.get("continue", "0") or 0)
        page = items[start:start + limit] if limit else items[start:]
        meta: dict = {"resourceVersion": str(rv)}
        if limit and start + limit < len(items):
            meta["continue"] = str(start + limit)
        self._send(h, 200, {"kind": "List", "apiVersion": "v1", "metadata": meta,
                            "items": page}, what)

    def _review(self, h: BaseHTTPRequestHandler) -> None:
        """POST tokenreviews (authentication.k8s.io/v1): authenticated when the token is
        in `token_users`; the caller itself must hold the server's token, if one is set."""
        what = "CREATE tokenreviews"
        self.requests[what] += 1
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        if self.token and h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(h, 401, {"kind": "Status", "code": 401}, what)
        if urlparse(h.path).path != "/apis/authentication.k8s.io/v1/tokenreviews":
            return self._send(h, 404, {"kind": "Status", "code": 404}, what)
        try:
            review = json.loads(body)
            token = review["spec"]["token"]
        except (ValueError, KeyError, TypeError):
            return self._send(h, 400, {"kind": "Status", "code": 400}, what)
        user = self.token_users.get(token)
        status: dict = {"authenticated": user is not None}
        if user is not None:
            status["user"] = {"username": user, "groups": ["system:serviceaccounts"]}
            if review["spec"].get("audiences"):
                status["audiences"] = review["spec"]["audiences"]
        self._send(h, 201, {**review, "status": status}, what)

    def _watch(self, h: BaseHTTPRequestHandler, path: str, q: dict, what: str) -> None:
        since = int(q.get("resourceVersion", "0") or 0)
        timeout = float(q.get("timeoutSeconds", "300"))
        bookmarks = q.get("allowWatchBookmarks") == "true"
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def chunk(event: dict) -> bool:
            data = json.dumps(event).encode() + b"\n"
            try:
                h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                h.wfile.flush()
            except OSError:
                return False
            self.bytes[what] += len(data)
            return True

        end = time.monotonic() + timeout
        last_bookmark = time.monotonic()
        if since < self.oldest - 1:
            chunk({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                                                "status": "Failure", "reason": "Expired",
                                                "code": 410}})
        else:
            sent = since
            while not self._closing and time.monotonic() < end:
                with self.cond:
                    if self.oldest - 1 > sent:  # compacted under a running watch
                        pending = None
                    else:
                        pending = [e for e in self.history if e[0] > sent and e[1] == path]
                    if pending == []:
                        self.cond.wait(min(0.2, max(0.0, end - time.monotonic())))
                        pending = [e for e in self.history if e[0] > sent and e[1] == path]
                    rv_now = self.rv
                if pending is None:
                    chunk({"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                                        "reason": "Expired"}})
                    break
                ok = True
                for rv, _p, kind, obj in pending:
                    ok = chunk({"type": kind, "object": obj})
                    sent = rv
                    if not ok:
                        break
                if not ok:
                    return
                if bookmarks and time.monotonic() - last_bookmark >= self.bookmark_interval:
                    sent = max(sent, rv_now)
                    if not chunk({"type": "BOOKMARK", "object": {
                            "kind": "Node", "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(sent)}}}):
                        return
                    last_bookmark = time.monotonic()
        try:
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
        except OSError:
            pass
        h.close_connection = True


# -- helpers for the tests that drive it --------------------------------------------------


def felix(enabled: bool) -> dict:
    """Calico's default FelixConfiguration with WireGuard on or off."""
    return {"apiVersion": "crd.projectcalico.org/v1", "kind": "FelixConfiguration",
            "metadata": {"name": "default"}, "spec": {"wireguardEnabled": enabled}}


def until(pred, timeout: float = 5.0) -> bool:
    """Poll pred every 20 ms for up to `timeout` seconds; its last answer."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()
