"""KubeApi's own HTTP on the standard library, against loopback servers: kept-alive
connections reused, one the server dropped redialled without a retry or an error, proxies
from the environment not used, close() ending a watch in flight, and no secret in an error.
And the production daemon's in-cluster path (`cluster: {}`) over verified TLS without
requests, urllib3, charset_normalizer or idna loaded (~7-9 MB of RSS)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import threading
import time

import pytest

from nodeward.kubeapi import ApiConfig, ApiUnavailable, KubeApi
from nodeward.report.logs import capture_logs
from tests.lab.incluster_client import in_cluster_lab

NODES = "/api/v1/nodes"
TOKEN = "kubeapi-http-token"
LIST = json.dumps({"kind": "NodeList", "metadata": {"resourceVersion": "7"},
                   "items": [{"metadata": {"name": "n1"}}]}).encode()


class RawApi:
    """A loopback HTTP/1.1 server written on sockets, so a test decides when a kept-alive
    connection ends: `per_conn` answers on a connection, then it is closed (an idle
    timeout or a restarted API server, as the client sees it)."""

    def __init__(self, per_conn: int = 1000) -> None:
        self.per_conn = per_conn
        self.conns = 0
        self.heads: list[str] = []
        self.release = threading.Event()  # ends watch streams
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        f = c.makefile("rb")
        with c, f:
            for _ in range(self.per_conn):
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = f.readline()
                    if not line:
                        return
                    head += line
                self.heads.append(head.decode())
                if "watch=1" in head.split(b"\r\n")[0].decode():
                    event = json.dumps({"type": "ADDED", "object": {
                        "metadata": {"name": "n2", "resourceVersion": "8"}}}).encode() + b"\n"
                    c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"%x\r\n%s\r\n" % (len(event), event))
                    self.release.wait(10)
                    return
                body, enc = LIST, b""
                if "accept-encoding: gzip" in head.decode().lower():
                    body, enc = gzip.compress(LIST), b"Content-Encoding: gzip\r\n"
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%s"
                          b"Content-Length: %d\r\n\r\n%s" % (enc, len(body), body))

    def close(self) -> None:
        self.release.set()
        self.sock.close()


@pytest.fixture
def raw():
    servers: list[RawApi] = []

    def make(per_conn: int = 1000) -> RawApi:
        servers.append(RawApi(per_conn))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _api(srv: RawApi, **kw) -> KubeApi:
    return KubeApi(ApiConfig(url=f"http://127.0.0.1:{srv.port}", token=TOKEN,
                             connect_timeout=1, read_timeout=2, retries=0, **kw))


def test_kept_alive_connection_is_reused(raw):
    srv = raw()
    api = _api(srv)
    try:
        for _ in range(3):
            assert api.get(NODES, {"limit": 1})["items"][0]["metadata"]["name"] == "n1"
        assert srv.conns == 1 and len(srv.heads) == 3
        assert srv.heads[0].startswith(f"GET {NODES}?limit=1 HTTP/1.1\r\n")
        assert f"Authorization: Bearer {TOKEN}\r\n" in srv.heads[0]
        assert "Accept-Encoding: gzip\r\n" in srv.heads[0]  # and the gzip answer read
    finally:
        api.close()


def test_a_dropped_keepalive_is_redialled_without_retry_or_error(raw):
    srv = raw(per_conn=1)  # every connection closed after one answer
    api = _api(srv)  # retries=0: a failure would be an error
    try:
        with capture_logs() as logs:
            for _ in range(3):
                assert api.get(NODES)["items"]
            time.sleep(0.1)
            assert api.get(NODES)["items"]
        assert srv.conns == 4 and len(srv.heads) == 4
        assert not [e for e in logs if e["event"] == "kubeapi_retry"]
    finally:
        api.close()


def test_proxy_environment_is_not_used(raw, monkeypatch):
    srv = raw()
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # discard port: nothing answers
    monkeypatch.setenv("NO_PROXY", "")
    api = _api(srv)
    try:
        assert api.get(NODES)["items"] and srv.conns == 1
    finally:
        api.close()


def test_close_ends_a_watch_in_flight(raw):
    srv = raw()
    api = _api(srv)
    got: list[str] = []
    errors: list[str] = []

    def run() -> None:
        try:
            for ev in api.watch(NODES, "7", timeout_s=30):
                got.append(ev["object"]["metadata"]["name"])
        except ApiUnavailable as e:
            errors.append(e.reason)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == ["n2"]  # the event arrived while the stream is still open
    t0 = time.monotonic()
    api.close()
    t.join(3)
    assert not t.is_alive() and time.monotonic() - t0 < 1.5
    assert srv.heads[0].startswith(f"GET {NODES}?watch=1&resourceVersion=7&")
    assert api.get(NODES)["items"]  # usable again after close, on a new connection


def test_no_secret_in_transport_errors():
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    cfg = ApiConfig(url=f"https://admin:pw-SECRET@127.0.0.1:{port}", token="tok-SECRET",
                    connect_timeout=1, read_timeout=1, retries=1, backoff=0.01)
    api = KubeApi(cfg)
    reasons = []
    for call in (lambda: api.get(NODES), lambda: list(api.watch(NODES, "1")),
                 lambda: api.apply("/x", {"a": 1})):
        with pytest.raises(ApiUnavailable) as e:
            call()
        reasons.append(e.value.reason)
    assert all("ConnectionError" in r and "SECRET" not in r for r in reasons), reasons
    assert reasons[0].endswith("(after 2 attempts)")


def test_incluster_daemon_path_loads_no_http_library(tmp_path):
    """The DaemonSet's `cluster: {}`: in-cluster service host, ServiceAccount token and CA,
    an Agent listing and watching over verified TLS; requests & co. are never loaded."""
    if not shutil.which("openssl"):
        if os.environ.get("CI") == "true":
            raise AssertionError("openssl CLI missing")
        pytest.skip("needs the openssl CLI")
    lab = in_cluster_lab(tmp_path, TOKEN)
    try:
        out = lab.run()
    finally:
        lab.api.stop()
    assert out["nodes"] == ["n1", "n2"] and out["unknown"] == []
    assert lab.api.requests[f"LIST {NODES}"] >= 1
    assert out["http_libs"] == []
    print(f"in-cluster daemon path: RSS {out['rss_mb']} MB, no HTTP library loaded")


def test_gzip_answers_bounded_and_checked(monkeypatch):
    from nodeward import kubeapi

    assert kubeapi._gunzip(gzip.compress(LIST), "GET /x") == LIST
    with pytest.raises(ApiUnavailable, match="GET /x: malformed gzip answer"):
        kubeapi._gunzip(b"\x1f\x8bnot gzip", "GET /x")
    monkeypatch.setattr(kubeapi, "MAX_BODY", 1 << 20)
    with pytest.raises(ApiUnavailable, match="GET /x: answer over 1 MiB uncompressed"):
        kubeapi._gunzip(gzip.compress(b" " * (2 << 20)), "GET /x")
