"""The cluster collector and Calico checks against a real HTTPS server that answers like
the Kubernetes API: TLS with a CA made at test time, bearer token required, paginated
lists, and Calico CRDs. Bad token, timeout, 500 and malformed JSON each yield NW500 and a
`cluster_state_unknown` log line; the scan is never interrupted by an exception."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from nodeward.checks.calico import calico_findings
from nodeward.collect.cluster import ClusterSettings, collect_cluster
from nodeward.report.logs import capture_logs

TOKEN = "s3cret-token"


def _node(name: str, ip: str, cidr: str) -> dict:
    return {"kind": "Node", "metadata": {"name": name, "annotations": {
        "projectcalico.org/WireguardPublicKey": f"key-{name}"}},
        "spec": {"podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                 {"type": "Hostname", "address": name}]}}


OBJECTS = {
    "/api/v1/nodes": [_node("n1", "10.0.0.1", "10.244.1.0/24"),
                      _node("n2", "10.0.0.2", "10.244.2.0/24"),
                      _node("n3", "10.0.0.3", "10.244.3.0/24")],
    "/apis/crd.projectcalico.org/v1/blockaffinities": [
        {"metadata": {"name": "n2-aff"}, "spec": {"node": "n2", "cidr": "192.168.7.0/26",
                                                  "state": "confirmed"}}],
    "/apis/crd.projectcalico.org/v1/ippools": [
        {"metadata": {"name": "default-ipv4-ippool"}, "spec": {"cidr": "192.168.0.0/16"}}],
    "/apis/crd.projectcalico.org/v1/hostendpoints": [
        {"metadata": {"name": "n1-auto", "labels": {"role": "node"}},
         "spec": {"node": "n1", "interfaceName": "*"}}],
    "/apis/crd.projectcalico.org/v1/felixconfigurations": [
        {"metadata": {"name": "default"},
         "spec": {"defaultEndpointToHostAction": "Accept", "wireguardEnabled": True}}],
    "/apis/crd.projectcalico.org/v1/globalnetworkpolicies": [
        {"metadata": {"name": "allow-ssh"}, "spec": {
            "order": 10, "selector": "role == 'node'",
            "ingress": [{"action": "Allow", "protocol": "TCP",
                         "destination": {"ports": [22]}}]}},
        {"metadata": {"name": "deny-ssh"}, "spec": {
            "order": 100, "selector": "role == 'node'",
            "ingress": [{"action": "Deny", "protocol": "TCP",
                         "destination": {"ports": [22]}}]}},
        {"metadata": {"name": "default-deny"}, "spec": {
            "order": 1000, "selector": "all()", "types": ["Ingress"]}}],
}


class Api(BaseHTTPRequestHandler):
    mode = "good"
    calls: list[str]

    def log_message(self, *a):  # keep pytest output clean
        pass

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.server.calls.append(self.path)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, b'{"kind":"Status","code":401,"reason":"Unauthorized"}')
        mode = self.server.mode
        if mode == "timeout":
            time.sleep(1.5)
        if mode == "500":
            return self._send(500, b'{"kind":"Status","code":500}')
        if mode == "malformed":
            return self._send(200, b'{"kind": "NodeList", "items": [')
        u = urlparse(self.path)
        items = OBJECTS.get(u.path)
        if items is None:
            return self._send(404, b'{"kind":"Status","code":404}')
        # Paginate one item per page to exercise `continue`.
        start = int(parse_qs(u.query).get("continue", ["0"])[0])
        page = items[start:start + 1]
        meta = {"continue": str(start + 1)} if start + 1 < len(items) else {}
        self._send(200, json.dumps({"kind": "List", "metadata": meta,
                                    "items": page}).encode())


class QuietServer(ThreadingHTTPServer):
    """Client-side aborts (timeout case, wrong-CA handshake) are expected here."""

    def handle_error(self, request, client_address) -> None:
        pass


def _pki(tmp) -> tuple[str, str, str]:
    def ossl(*a):
        subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=tmp)
    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
         "ca.crt", "-days", "1", "-subj", "/CN=nodeward-test-ca")
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
         "-subj", "/CN=127.0.0.1")
    (tmp / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ossl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "srv.crt", "-days", "1", "-extfile", "ext")
    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out",
         "other.crt", "-days", "1", "-subj", "/CN=other-ca")
    return str(tmp / "ca.crt"), str(tmp / "srv.crt"), str(tmp / "srv.key")


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl CLI to make a test CA")
    tmp = tmp_path_factory.mktemp("pki")
    _, crt, key = _pki(tmp)
    srv = QuietServer(("127.0.0.1", 0), Api)
    srv.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.mode, srv.calls = "good", []
    (tmp / "token").write_text(TOKEN + "\n")
    (tmp / "badtoken").write_text("wrong\n")
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv, tmp
    finally:
        srv.shutdown()
        srv.server_close()


def _settings(srv, tmp, token="token", ca="ca.crt", node="n1") -> ClusterSettings:
    return ClusterSettings.from_dict({
        "kubernetes": {"api_url": f"https://127.0.0.1:{srv.server_address[1]}",
                       "token_file": str(tmp / token), "ca_file": str(tmp / ca),
                       "timeout": 0.5, "retries": 1},
        "encryption": "wireguard", "node_name": node})


def test_good_cluster_view_and_calico_findings(api):
    srv, tmp = api
    srv.mode, srv.calls = "good", []
    view = collect_cluster(_settings(srv, tmp), "ignored")
    assert view.unknown == () and view.source == "api" and view.calico_present
    assert [n.name for n in view.peers] == ["n2", "n3"]
    n2 = view.peers[0]
    assert n2.addresses == ("10.0.0.2",)
    assert n2.pod_cidrs == ("10.244.2.0/24", "192.168.7.0/26")  # podCIDRs + block affinity
    assert n2.wireguard_public_key == "key-n2"
    assert any("continue=" in c for c in srv.calls)  # paginated
    ids = sorted(f.id for f in calico_findings(view, "wireguard"))
    assert ids == ["NW503", "NW507"]  # Accept, and allow-ssh shadows deny-ssh
    # Node n2 has no HostEndpoint: the host-protection bypass.
    view2 = collect_cluster(_settings(srv, tmp, node="n2"), "")
    f = [x for x in calico_findings(view2, "wireguard") if x.id == "NW501"]
    assert len(f) == 1 and f[0].component == "n2"


@pytest.mark.parametrize("mode,token,ca,expect", [
    ("good", "badtoken", "ca.crt", "HTTP 401"),
    ("timeout", "token", "ca.crt", "ReadTimeout"),
    ("500", "token", "ca.crt", "HTTP 500"),
    ("malformed", "token", "ca.crt", "malformed JSON"),
    ("good", "token", "other.crt", "TLS verification failed"),
])
def test_api_failure_is_unknown_finding_and_log_line(api, mode, token, ca, expect):
    srv, tmp = api
    srv.mode, srv.calls = mode, []
    t0 = time.monotonic()
    with capture_logs() as logs:
        view = collect_cluster(_settings(srv, tmp, token=token, ca=ca), "n1")
    elapsed = time.monotonic() - t0
    findings = calico_findings(view, "wireguard")
    assert [f.id for f in findings] == ["NW500"], findings
    assert expect in findings[0].title
    lines = [e for e in logs if e["event"] == "cluster_state_unknown"]
    assert lines and expect in lines[0]["reason"] and lines[0]["log_level"] == "error"
    if mode in ("500", "timeout"):
        assert len(srv.calls) == 2  # one bounded retry
        assert "after 2 attempts" in findings[0].title
    elif ca == "ca.crt":
        assert len(srv.calls) == 1  # 401 and bad JSON are not retried
    assert elapsed < 5
