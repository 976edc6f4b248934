"""The daemon writes its ClusterPolicyReport by server-side apply to a real local HTTP
server answering like the Kubernetes API; a failing API is logged and the loop goes on."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from nodeward import config
from nodeward.daemon import Agent
from nodeward.model import BindScope, NodeSnapshot, ProcessInfo, Socket


class Api:
    def __init__(self, status: int = 201) -> None:
        self.status = status
        self.patches: list[tuple[str, dict, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.patches.append((self.path, dict(self.headers), json.loads(body)))
                self.send_response(outer.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def agent_for(url: str, token_file: str, out: io.StringIO) -> Agent:
    ro = Socket("tcp", 4, "10.0.0.1", 10255, 1, 0,
                process=ProcessInfo(pid=7, name="kubelet", comm="kubelet"),
                scope=BindScope.NODE_PRIVATE)
    cfg = config.from_mapping({"node_name": "w1", "daemon": {"policy_report": True},
                               "cluster": {"kubernetes": {"api_url": url,
                                                          "token_file": token_file}}}, "t")
    return Agent(None, cfg, out,
                 snapshotter=lambda c: NodeSnapshot("w1", "2026-11-25T00:00:00Z",
                                                    sockets=(ro,)))


def test_report_applied_then_api_failure_logged(tmp_path):
    token = tmp_path / "token"
    token.write_text("tok\n")
    api = Api()
    agent = None
    try:
        out = io.StringIO()
        agent = agent_for(api.url, str(token), out)
        agent.cycle()
        agent.cycle()  # nothing changed: no second write
        assert len(api.patches) == 1
        path, headers, body = api.patches[0]
        assert path.startswith("/apis/wgpolicyk8s.io/v1alpha2/clusterpolicyreports/nodeward-w1?")
        assert "fieldManager=nodeward" in path
        assert headers["Content-Type"] == "application/apply-patch+yaml"
        assert headers["Authorization"] == "Bearer tok"
        assert body["kind"] == "ClusterPolicyReport"
        # The `cluster` section also turns on the daemon's cluster checks; this stand-in API
        # serves only the report, so their reads fail: NW500, reported like any finding.
        assert sorted(r["rule"] for r in body["results"]) == ["NW101", "NW102", "NW500"]
        api.status = 403
        agent.previous = {}  # findings "reopen": the report is written again, and fails
        agent.cycle()
        events = [json.loads(x)["event"] for x in out.getvalue().splitlines()]
        assert events.count("policy_report_written") == 1
        assert "policy_report_failed" in events
    finally:
        if agent is not None:
            agent._stop_watcher()  # its watch threads must not outlive the test
        api.close()
