"""Test servers and helpers shared by the sink tests: a real HTTP(S) log collector."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Collector:
    """A real HTTP(S) collector on 127.0.0.1 whose answer is chosen per request by `behave`:
    'ok' (200 + record), 'redirect' (302 to /elsewhere, whose GET would answer 200),
    'trickle' (the status line one byte per 0.3 s), '503', '400'. With `token`, a POST
    without `Authorization: Bearer <token>` is answered 401 and counted in bad_auth;
    `down = True` answers 503 whatever `behave` says."""

    def __init__(self, tls: tuple[str, str] | None = None, token: str | None = None) -> None:
        self.behave: Callable[[], str] = lambda: "ok"
        self.down = False
        self.accepted: list[dict] = []
        self.posts = 0
        self.bad_auth = 0
        self.gets = 0
        self.bodies: list[bytes] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # what a followed redirect would do
                outer.gets += 1
                self._answer(200)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts += 1
                outer.bodies.append(body)
                outer.headers.append(dict(self.headers))
                if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
                    outer.bad_auth += 1
                    self._answer(401)
                    return
                mode = "503" if outer.down else outer.behave()
                if mode == "ok":
                    outer.accepted.extend(json.loads(body)["events"])
                    self._answer(200)
                elif mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", "http://u:pw@127.0.0.1:1/elsewhere?k=v")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif mode == "trickle":
                    try:
                        for ch in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" * 50:
                            self.wfile.write(bytes([ch]))
                            self.wfile.flush()
                            time.sleep(0.3)
                    except OSError:
                        pass
                    self.close_connection = True
                else:
                    self._answer(int(mode))

            def _answer(self, code: int) -> None:
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/v1/findings"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait(pred, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def events(n: int, start: int = 0) -> list[dict]:
    return [{"event": "finding_opened", "finding_id": "NW101", "seq": i}
            for i in range(start, start + n)]
