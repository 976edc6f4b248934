"""No secret leaves the process: a bad bearer token, credentials in the sink URL, an inline
kubeconfig with a client key. Every output is grepped for every secret: the daemon's stdout
and stderr, /metrics and /healthz, and what the collector received; and no credential file
is left in $TMPDIR (inline kubeconfig material lives in memfds)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nodeward.checks.calico import calico_findings
from nodeward.collect.cluster import ClusterSettings, collect_cluster
from nodeward.report.logs import capture_logs

NODE = {"kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}}


def _pki(tmp: Path) -> dict[str, Path]:
    def ossl(*a: str) -> None:
        subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=tmp)

    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
         "ca.crt", "-days", "1", "-subj", "/CN=nodeward-secrets-ca")
    (tmp / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, cn in (("srv", "127.0.0.1"), ("client", "system:node:n1")):
        ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.csr", "-subj", f"/CN={cn}")
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", "ext")
    return {n: tmp / n for n in ("ca.crt", "srv.crt", "srv.key", "client.crt", "client.key")}


class MtlsApi:
    """An API server that demands a client certificate signed by the test CA."""

    def __init__(self, pki: dict[str, Path]) -> None:
        self.calls: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.calls.append(self.path)
                items = [NODE] if self.path.startswith("/api/v1/nodes") else None
                body = json.dumps({"kind": "List", "metadata": {}, "items": items}
                                  if items is not None else {"code": 404}).encode()
                self.send_response(200 if items is not None else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a) -> None:
                pass

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, *a) -> None:
                pass

        self.server = Quiet(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki["srv.crt"], pki["srv.key"])
        ctx.load_verify_locations(pki["ca.crt"])
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def kubeconfig(path: Path, url: str, pki: dict[str, Path], token: str = "") -> Path:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    user = {"client-certificate-data": b64(pki["client.crt"]),
            "client-key-data": b64(pki["client.key"])}
    if token:
        user["token"] = token
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {
            "server": url, "certificate-authority-data": b64(pki["ca.crt"])}}],
        "users": [{"name": "u", "user": user}]}))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if not shutil.which("openssl"):
        if os.environ.get("CI") == "true":
            raise AssertionError("openssl CLI missing")
        pytest.skip("needs the openssl CLI")
    return _pki(tmp_path_factory.mktemp("pki"))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_inline_kubeconfig_client_cert_works_from_memory_and_leaves_no_file(
        pki, tmp_path, monkeypatch):
    api = MtlsApi(pki)
    private_tmp = tmp_path / "tmpdir"
    private_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    kc = kubeconfig(tmp_path / "kubeconfig", api.url, pki)
    settings = ClusterSettings.from_dict({"kubernetes": {"kubeconfig": str(kc), "timeout": 2},
                                          "encryption": "none"})
    before_tmp = set(Path("/tmp").glob("nodeward-kube-*"))
    try:
        collect_cluster(settings, "n1")  # warm-up: imports, ssl
        fds = _fds()
        for _ in range(10):
            view = collect_cluster(settings, "n1")
            assert [n.name for n in view.nodes] == ["n1"] and not view.unknown
    finally:
        api.close()
    assert api.calls, "the API was never reached"
    assert list(private_tmp.iterdir()) == []
    assert set(Path("/tmp").glob("nodeward-kube-*")) == before_tmp
    assert _fds() <= fds  # the memfds are closed with each session
    print(f"10 cycles with an inline kubeconfig (mTLS): {len(api.calls)} API calls, "
          f"0 files in $TMPDIR, fds {fds} -> {_fds()}")


def test_invalid_token_is_neither_logged_nor_in_nw500(pki, tmp_path):
    api = MtlsApi(pki)
    secret = "SECRET-BAD-TOKEN with\ttab"
    kc = kubeconfig(tmp_path / "kubeconfig", api.url, pki, token=secret)
    settings = ClusterSettings.from_dict({"kubernetes": {"kubeconfig": str(kc), "timeout": 2},
                                          "encryption": "wireguard"})
    try:
        with capture_logs() as logs:
            view = collect_cluster(settings, "n1")
    finally:
        api.close()
    findings = calico_findings(view, "wireguard")
    assert [f.id for f in findings] == ["NW500"]
    text = json.dumps([f.to_dict() for f in findings], default=str) + json.dumps(
        logs, default=str)
    assert "bearer token" in text and "SECRET" not in text
    assert api.calls == []  # never sent


SECRETS = ("SECRETPW", "SECRETQ", "SECRET-SINK-TOKEN", "SECRET-KUBE-TOKEN")


def test_daemon_run_leaks_no_secret_anywhere(pki, tmp_path):
    """`nodeward run` (report mode, read-only) with a sink URL carrying userinfo and a
    query key, a world-readable sink token over http://, and an inline kubeconfig whose
    token is invalid: the warnings appear, the secrets do not."""
    received: list[bytes] = []
    auth: list[str] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            auth.append(self.headers.get("Authorization", ""))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a) -> None:
            pass

    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    api = MtlsApi(pki)
    kc = kubeconfig(tmp_path / "kubeconfig", api.url, pki, token="SECRET-KUBE-TOKEN\x7f")
    token = tmp_path / "sink-token"
    token.write_text("SECRET-SINK-TOKEN\n")
    token.chmod(0o644)
    cfg = tmp_path / "config.yaml"
    port = collector.server_address[1]
    cfg.write_text(
        "node_name: secrets-node\ninterval: 1\nmetrics_address: 127.0.0.1:0\nfirewall: false\n"
        f"cluster: {{kubernetes: {{kubeconfig: '{kc}', timeout: 2}}, encryption: wireguard}}\n"
        f"daemon:\n  sink:\n    url: 'http://collector:SECRETPW@127.0.0.1:{port}/v1?key=SECRETQ'\n"
        f"    token_file: '{token}'\n    spool_dir: '{tmp_path / 'spool'}'\n")
    cfg.chmod(0o600)
    private_tmp = tmp_path / "tmpdir"
    private_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "nodeward", "--config", str(cfg), "run",
                             "--cycles", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    early = []
    while not early or early[-1]["event"] != "daemon_started":
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        early.append(json.loads(line))
    address = early[-1]["status_address"]
    pages = []
    try:
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            time.sleep(0.2)
        for path in ("/metrics", "/healthz"):
            try:
                with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as r:
                    pages.append(r.read().decode())
            except urllib.error.HTTPError as e:
                pages.append(e.read().decode())
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        collector.shutdown()
        api.close()
    out = "".join(json.dumps(e) + "\n" for e in early) + out
    events = [json.loads(line) for line in out.splitlines()]
    names = {e["event"] for e in events}
    assert proc.returncode == 0, err
    assert received, "the sink delivered nothing"
    assert {"sink_cleartext_credentials", "file_permissions_too_open"} <= names
    assert any(e.get("finding_id") == "NW500" for e in events)
    assert all(a == "Bearer SECRET-SINK-TOKEN" for a in auth)  # where it belongs, only
    key_b64 = base64.b64encode(pki["client.key"].read_bytes()).decode()
    key_lines = [ln for ln in pki["client.key"].read_text().splitlines() if "-----" not in ln]
    haystacks = {"stdout": out, "stderr": err, "metrics+healthz": "\n".join(pages),
                 "sink payload": b"\n".join(received).decode()}
    for where, text in haystacks.items():
        for s in (*SECRETS, key_b64[:40], *key_lines[:3]):
            assert s not in text, f"{s[:12]}... found in {where}"
    assert list(private_tmp.iterdir()) == []
    print(f"grepped {sum(len(t) for t in haystacks.values())} bytes of output "
          f"({len(events)} log lines, {len(received)} sink posts): no secret; "
          f"$TMPDIR empty")
