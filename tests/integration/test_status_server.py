"""The status server under hostile clients: idle connections that never send a request
(slowloris) neither block /healthz nor add threads beyond the pool; a taken port is one
line and exit 2, not a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request

from nodeward.report.metrics import Metrics, StatusServer


def test_idle_connections_cannot_starve_or_multiply_threads():
    server = StatusServer("127.0.0.1:0", Metrics(), lambda: (True, "ok"))
    server.start()
    host, port = server.address.rsplit(":", 1)
    idle = []
    try:
        base = threading.active_count()
        for _ in range(200):  # far more than workers + queue
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never finish the request
            idle.append(s)
        time.sleep(0.3)
        threads = threading.active_count() - base
        assert threads == 0, threads  # not one thread per connection
        start = time.monotonic()
        with urllib.request.urlopen(f"http://{server.address}/healthz", timeout=2) as r:
            assert r.status == 200 and r.read() == b"ok\n"
        took = time.monotonic() - start
        assert took < 1
        # The idle ones are closed after the per-connection timeout.
        idle[0].settimeout(server.TIMEOUT + 5)
        assert idle[0].recv(100) == b""
        print(f"200 idle connections: +{threads} threads, /healthz answered in "
              f"{took * 1000:.0f} ms, idle ones closed after {server.TIMEOUT:g}s")
    finally:
        for s in idle:
            s.close()
        server.close()


def test_port_in_use_is_one_line_and_exit_2(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"metrics_address: 127.0.0.1:{port}\ninterval: 1\nnode_name: n1\n"
                   "firewall: false\n")
    try:
        r = subprocess.run([sys.executable, "-m", "nodeward", "--config", str(cfg), "run",
                            "--cycles", "1"], capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"nodeward: error: status server 127.0.0.1:{port}: Address already in use"]


def _send(address: str, data: bytes, timeout: float = 8) -> bytes:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:  # closed with our bytes unread: refused
            assert not chunks
    return b"".join(chunks)


def test_limits_and_answers_of_the_selector_server():
    """An 8 KiB head without its blank line is closed unanswered; past MAX_CONNECTIONS
    a client is closed at once while those already open are still answered; HEAD has no
    body; other methods are 400, other paths 404; /metrics is the exposition."""
    server = StatusServer("127.0.0.1:0", Metrics(), lambda: (False, "sink down"),
                          lambda: (True, "ok"))
    server.MAX_CONNECTIONS = 5
    server.start()
    host, port = server.address.rsplit(":", 1)
    held = []
    try:
        start = time.monotonic()
        assert _send(server.address, b"GET /" + b"a" * 9000) == b""
        assert time.monotonic() - start < server.TIMEOUT  # closed on size, not on time
        assert _send(server.address, b"HEAD /livez HTTP/1.1\r\n\r\n").endswith(
            b"Content-Length: 3\r\nConnection: close\r\n\r\n")
        assert _send(server.address, b"GET /healthz HTTP/1.1\r\n\r\n").startswith(
            b"HTTP/1.1 503 Service Unavailable\r\n")
        assert _send(server.address, b"POST /livez HTTP/1.1\r\n\r\n").startswith(
            b"HTTP/1.1 400 ")
        assert _send(server.address, b"GET /x HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")
        assert _send(server.address, b"\r\n\r\n").startswith(b"HTTP/1.1 400 ")  # empty
        metrics = _send(server.address, b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n" in metrics
        assert b'\r\n\r\n# HELP process_' in metrics and b"nodeward_scans_total" in metrics
        for _ in range(server.MAX_CONNECTIONS):
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(b"GET /livez HTTP/1.1\r\n")  # the rest later
            held.append(s)
        time.sleep(0.3)
        assert server.open == server.MAX_CONNECTIONS
        start = time.monotonic()
        assert _send(server.address, b"GET /livez HTTP/1.1\r\n\r\n") == b""  # refused
        assert time.monotonic() - start < 1
        held[0].sendall(b"\r\n")
        assert held[0].recv(100).startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        for s in held:
            s.close()
        server.close()
    assert not server.thread.is_alive()
