"""Machine-read output is compact, human-read output indented: `scan --format json` indents
on a terminal only; jsonl, log lines and the sink are compact. Start-up does not import
pyroute2 or requests until they are needed."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

AGENT = str(Path(__file__).resolve().parents[2] / "agent")
SCAN = [sys.executable, "-m", "nodeward", "--config", "/dev/null", "scan", "--no-firewall",
        "--format", "json"]
ENV = {**os.environ, "PYTHONPATH": AGENT, "NODEWARD_NODE_NAME": "t"}


def test_json_compact_into_a_pipe_indented_on_a_terminal() -> None:
    piped = subprocess.run(SCAN, capture_output=True, text=True, env=ENV, timeout=60)
    assert piped.returncode in (0, 1), piped.stderr
    assert "\n  " not in piped.stdout and '":' in piped.stdout
    doc = json.loads(piped.stdout)
    leader, follower = pty.openpty()
    try:
        p = subprocess.run(SCAN, stdout=follower, stderr=subprocess.DEVNULL, env=ENV,
                           timeout=60)
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 1 << 16)
            except OSError:  # EIO once the writer is gone
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(leader)
    text = b"".join(chunks).decode().replace("\r\n", "\n")
    assert p.returncode in (0, 1) and '\n  "node": "t"' in text
    assert json.loads(text).keys() == doc.keys()


def test_log_lines_are_compact(capsys) -> None:
    from nodeward.report.logs import make_logger

    make_logger("n", sys.stdout).info("scan_complete", sockets=3)
    line = capsys.readouterr().out.strip()
    assert json.loads(line)["sockets"] == 3 and ", " not in line and '": ' not in line


def test_start_up_imports_neither_pyroute2_nor_requests() -> None:
    code = ("import sys; from nodeward import cli, daemon; from nodeward.config import Config;"
            " c = Config(); c.section('cluster'); c.section('daemon');"
            " print(sorted(m for m in ('pyroute2', 'requests') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=ENV, timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_daemon_imports_no_event_loop_logging_or_metrics_library() -> None:
    """`nodeward run`'s modules (agent, status server, logs, metrics, the cluster and relay
    clients) load neither asyncio, structlog nor prometheus_client (~17 MB of RSS), nor
    http.server/wsgiref, which only the relay server and the test harness serve with."""
    code = ("import sys; from nodeward import cli, daemon, snapshot, checks;"
            " from nodeward.collect import cluster, watch, ruleset;"
            " from nodeward.relay import client; from nodeward.commands import daemon as d;"
            " print(sorted(m for m in ('asyncio', 'structlog', 'prometheus_client',"
            " 'http.server', 'wsgiref') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=ENV, timeout=60, check=True).stdout
    assert out.strip() == "[]"
