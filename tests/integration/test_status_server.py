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
