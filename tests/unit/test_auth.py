"""Authentication evidence (collect/auth.py) from flags, config files and environment read
through a /proc tree, and how the exposure checks word and rank it (pure)."""

from __future__ import annotations

import os
import socket
import struct
import threading
from pathlib import Path

import pytest

from nodeward.catalog import load_default
from nodeward.checks.exposure import check_socket
from nodeward.collect import auth
from nodeward.model import (
    AUTH_NONE,
    AUTH_REQUIRED,
    AUTH_UNKNOWN,
    AuthEvidence,
    BindScope,
    ProcessInfo,
    Severity,
    Socket,
)

CATALOG = load_default()

#: kubeadm's KubeletConfiguration as `kubeadm init` writes it (v1.28), trimmed.
KUBEADM_KUBELET = """\
apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
  webhook:
    cacheTTL: 0s
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 0s
    cacheUnauthorizedTTL: 0s
cgroupDriver: systemd
kind: KubeletConfiguration
"""

OPEN_KUBELET = """\
kind: KubeletConfiguration
apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: true
authorization:
  mode: AlwaysAllow
readOnlyPort: 10255
"""


def sock(port: int, name: str, argv: list[str], address: str = "0.0.0.0",
         pid: int = 4242) -> Socket:
    proc = ProcessInfo(pid=pid, name=name, comm=name, cmdline=(name, *argv))
    return Socket("tcp", 4, address, port, 1, 0, process=proc, scope=BindScope.WILDCARD)


def evidence(tmp_path: Path, s: Socket, files: dict[str, str] | None = None,
             environ: dict[str, str] | None = None) -> AuthEvidence:
    root = tmp_path / str(s.process.pid)
    for path, text in (files or {}).items():
        f = root / "root" / path.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    root.mkdir(parents=True, exist_ok=True)
    if environ is not None:
        (root / "environ").write_bytes(b"\0".join(f"{k}={v}".encode()
                                                  for k, v in environ.items()))
    got, _notes = auth.collect_auth([s], CATALOG, probe_sockets=False, proc=str(tmp_path))
    return got[s.key]


def test_parse_flags_forms():
    f = auth.parse_flags(["etcd", "--client-cert-auth", "--name", "a", "-data-dir=/x",
                          "--cert-file", "/c.pem", "--listen-client-urls=https://a:1", "pos"])
    assert f == {"client-cert-auth": "true", "name": "a", "data-dir": "/x",
                 "cert-file": "/c.pem", "listen-client-urls": "https://a:1"}


def test_yaml_lookup_gives_value_and_line():
    assert auth.yaml_lookup(KUBEADM_KUBELET, "authentication.anonymous.enabled") == ("false", 4)
    assert auth.yaml_lookup(KUBEADM_KUBELET, "authorization.mode") == ("Webhook", 11)
    assert auth.yaml_lookup(KUBEADM_KUBELET, "readOnlyPort") is None
    assert auth.yaml_lookup("{{{", "a") is None


def test_kubelet_config_file_read_through_proc_root(tmp_path):
    s = sock(10250, "kubelet", ["--config=/var/lib/kubelet/config.yaml"])
    ev = evidence(tmp_path, s, {"/var/lib/kubelet/config.yaml": KUBEADM_KUBELET})
    assert ev.state == AUTH_REQUIRED
    assert ev.decided_by.startswith(
        "/var/lib/kubelet/config.yaml:4 authentication.anonymous.enabled=false")
    ev = evidence(tmp_path, s, {"/var/lib/kubelet/config.yaml": OPEN_KUBELET})
    assert ev.state == AUTH_NONE and "AlwaysAllow" in ev.decided_by


def test_kubelet_flag_beats_config_and_unreadable_config_is_a_note(tmp_path):
    s = sock(10250, "kubelet", ["--config", "/etc/k.yaml", "--anonymous-auth=false"])
    assert evidence(tmp_path, s, {"/etc/k.yaml": OPEN_KUBELET}).decided_by.startswith(
        "--anonymous-auth=false")
    s = sock(10250, "kubelet", ["--config", "/missing.yaml"], pid=77)
    (tmp_path / "77").mkdir()
    got, notes = auth.collect_auth([s], CATALOG, probe_sockets=False, proc=str(tmp_path))
    assert got[s.key].state == AUTH_UNKNOWN
    assert notes and "/missing.yaml" in notes[0]


def test_kubelet_without_any_setting_is_unknown(tmp_path):
    assert evidence(tmp_path, sock(10250, "kubelet", [])).state == AUTH_UNKNOWN


def test_etcd_flags_and_environment(tmp_path):
    tls = ["--listen-client-urls=https://127.0.0.1:2379,https://10.0.0.5:2379",
           "--client-cert-auth", "--trusted-ca-file=/etc/etcd/ca.crt",
           "--cert-file=/etc/etcd/server.crt"]
    ev = evidence(tmp_path, sock(2379, "etcd", tls, address="10.0.0.5"))
    assert ev.state == AUTH_REQUIRED and "--client-cert-auth=true" in ev.decided_by
    plain = ["--listen-client-urls", "http://127.0.0.1:2379,http://10.0.0.5:2379"]
    ev = evidence(tmp_path, sock(2379, "etcd", plain, address="10.0.0.5"))
    assert ev.state == AUTH_NONE and "http://10.0.0.5:2379" in ev.decided_by
    # etcd takes every flag from ETCD_* as well
    ev = evidence(tmp_path, sock(2379, "etcd", [], address="10.0.0.5", pid=99), environ={
        "ETCD_LISTEN_CLIENT_URLS": "https://10.0.0.5:2379", "ETCD_CLIENT_CERT_AUTH": "true",
        "ETCD_TRUSTED_CA_FILE": "/ca.crt", "ETCD_ROOT_PASSWORD": "never-kept"})
    assert ev.state == AUTH_REQUIRED and "env ETCD_CLIENT_CERT_AUTH" in ev.decided_by
    assert "never-kept" not in repr(ev) and "ETCD_ROOT_PASSWORD" not in repr(ev)
    # TLS without client certificates: encrypted, but anyone is served
    ev = evidence(tmp_path, sock(2379, "etcd", ["--listen-client-urls=https://0.0.0.0:2379"]))
    assert ev.state == AUTH_NONE and "any client" in ev.decided_by


@pytest.mark.parametrize("probe,state", [
    ({"target": "127.0.0.1:10250", "path": "/pods", "tls": "yes", "status": 200,
      "body": True}, AUTH_NONE),
    ({"target": "127.0.0.1:10250", "path": "/pods", "tls": "yes", "status": 401,
      "body": True}, AUTH_REQUIRED),
    ({"target": "127.0.0.1:10250", "path": "/pods", "tls": "yes", "status": 403,
      "body": True}, AUTH_REQUIRED),
    ({"target": "127.0.0.1:2379", "path": "/version", "tls": "client certificate required",
      "alert": "TLSV13_ALERT_CERTIFICATE_REQUIRED"}, AUTH_REQUIRED),
    ({"target": "127.0.0.1:2379", "path": "/version", "tls": "no", "status": 404,
      "body": True}, AUTH_UNKNOWN),
    ({"target": "127.0.0.1:2379", "path": "/version", "tls": "no answer"}, AUTH_UNKNOWN),
    ({"target": "127.0.0.1:2379", "path": "/version", "tls": "no", "status": 200,
      "body": False}, AUTH_UNKNOWN),
])
def test_what_a_probe_proves(probe, state):
    assert auth.from_probe(probe)[0] == state


def _findings(s: Socket, ev: AuthEvidence | None):
    ident = CATALOG.identify(s.protocol, s.port, s.process)
    return {f.id: f for f in check_socket(s._replace(scope=BindScope.WILDCARD), ident, True, ev)}


def test_severity_and_wording_follow_the_evidence():
    etcd = sock(2379, "etcd", [])
    unknown = _findings(etcd, None)
    assert unknown["NW103"].severity == Severity.CRITICAL
    assert "authentication not verified" in unknown["NW103"].title
    assert not unknown["NW103"].title.startswith("unauthenticated")
    certs = _findings(etcd, AuthEvidence(AUTH_REQUIRED, "--client-cert-auth=true"))
    assert set(certs) == {"NW102"}  # still a finding: bound wide
    assert certs["NW102"].severity == Severity.HIGH  # one level lower
    assert "requires authentication" in certs["NW102"].title
    assert certs["NW102"].evidence["authentication"]["decided_by"] == "--client-cert-auth=true"
    plain = _findings(etcd, AuthEvidence(AUTH_NONE, "--listen-client-urls http://..."))
    assert plain["NW103"].title.startswith("unauthenticated etcd-client")
    assert plain["NW103"].severity == Severity.CRITICAL

    kubelet = sock(10250, "kubelet", [])
    assert set(_findings(kubelet, None)) == {"NW102"}  # authenticated by default: no NW103
    anon = _findings(kubelet, AuthEvidence(AUTH_NONE, "probe: GET ... -> 200 with a body"))
    assert anon["NW103"].severity == Severity.CRITICAL  # anonymous kubelet, pods reach it
    assert anon["NW103"].title.startswith("unauthenticated kubelet")
    hardened = _findings(kubelet, AuthEvidence(AUTH_REQUIRED, "probe: ... -> 401"))
    assert set(hardened) == {"NW102"} and hardened["NW102"].severity == Severity.HIGH


def test_catalog_rejects_bad_auth_fields():
    from nodeward.catalog import Catalog, CatalogError

    with pytest.raises(CatalogError, match="auth_rule"):
        Catalog.from_entries([{"name": "kubelet", "auth_rule": "magic"}], "t", CATALOG)
    with pytest.raises(CatalogError, match="probe_path"):
        Catalog.from_entries([{"name": "kubelet", "probe_path": "/run?cmd=rm"}], "t", CATALOG)


def test_probe_cache_rate_limits_and_reprobes_a_new_process():
    """A real loopback HTTP server counts the probes: one per socket per `every` seconds,
    and a new one when another process holds the socket."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        # dockerd is docker-api's primary process: identified on this random port too
        s = sock(port, "dockerd", [], address="127.0.0.1", pid=os.getpid())
        cache = auth.ProbeCache(every=600)
        for _ in range(3):
            got, _ = auth.collect_auth([s], CATALOG, cache=cache)
        assert hits == ["/version"]
        ev = got[s.key]
        assert ev.state == AUTH_NONE and ev.probe["status"] == 200 and ev.probe["body"]
        assert ev.decided_by == (f"probe: GET http://127.0.0.1:{port}/version without "
                                 "credentials -> 200 with a body")
        other = s._replace(process=ProcessInfo(pid=os.getpid() + 1, name="dockerd",
                                               comm="dockerd", cmdline=("dockerd",)))
        auth.collect_auth([other], CATALOG, cache=cache)
        assert hits == ["/version", "/version"]
        auth.collect_auth([other], CATALOG, cache=auth.ProbeCache(every=0))
        assert len(hits) == 3
        got, _ = auth.collect_auth([s], CATALOG, probe_sockets=False)
        assert len(hits) == 3 and got[s.key].state == AUTH_UNKNOWN  # no rule: no claim
    finally:
        server.shutdown()
        server.server_close()


def test_apiserver_delegated_and_kube_proxy_rules(tmp_path):
    ev = evidence(tmp_path, sock(6443, "kube-apiserver", ["--anonymous-auth=false"]))
    assert ev.state == AUTH_REQUIRED and ev.decided_by.startswith("--anonymous-auth=false")
    ev = evidence(tmp_path, sock(6443, "kube-apiserver", ["--authorization-mode=AlwaysAllow"]))
    assert ev.state == AUTH_NONE
    ev = evidence(tmp_path, sock(8080, "kube-apiserver", ["--insecure-port=8080"]))
    assert ev.state == AUTH_NONE and "--insecure-port=8080" in ev.decided_by
    ev = evidence(tmp_path, sock(10259, "kube-scheduler", [
        "--authentication-kubeconfig=/etc/kubernetes/scheduler.conf", "--bind-address=0.0.0.0"]))
    assert ev.state == AUTH_REQUIRED and ev.settings["--bind-address"] == "0.0.0.0"
    assert evidence(tmp_path, sock(10257, "kube-controller-manager", [])).state == AUTH_UNKNOWN
    ev = evidence(tmp_path, sock(10249, "kube-proxy", ["--config=/var/lib/kube-proxy/c.yaml"]),
                  {"/var/lib/kube-proxy/c.yaml": "kind: KubeProxyConfiguration\n"
                                                 "metricsBindAddress: 0.0.0.0:10249\n"})
    assert ev.state == AUTH_NONE
    assert ev.settings["/var/lib/kube-proxy/c.yaml:2 metricsBindAddress"] == "0.0.0.0:10249"


def test_probes_run_in_parallel_bounded_and_in_order():
    """collect_auth's probe pool: answers in the order asked, at most `workers` at once
    (yet more than one), and a probe that raises is an error answer, not a lost scan."""
    import threading
    import time

    from nodeward.collect.auth import _in_threads

    running, peak, lock = [0], [0], threading.Lock()

    def slow(x):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.1)
        with lock:
            running[0] -= 1
        if x == 5:
            raise RuntimeError("boom")
        return {"x": x}

    t0 = time.monotonic()
    out = _in_threads(slow, list(range(12)), 4)
    took = time.monotonic() - t0
    assert out == [{"x": i} if i != 5 else {"error": "RuntimeError"} for i in range(12)]
    assert peak[0] == 4 and took < 0.9, (peak, took)  # 3 rounds of 0.1 s, not 12
    assert _in_threads(slow, [], 4) == []


def _probe_served_by(handle) -> dict:
    """auth.probe against a loopback listener whose connections `handle(listener)` serves."""
    srv = socket.socket()
    try:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        t = threading.Thread(target=handle, args=(srv,), daemon=True)
        t.start()
        got = auth.probe("127.0.0.1", srv.getsockname()[1], "/version")
        t.join(5)
    finally:
        srv.close()
    return got


def _reset(conn) -> None:
    """Close with the client's bytes unread and no linger: the kernel answers with a RST,
    which is what etcd's cmux does to a ClientHello on a plain port, now and then."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def test_a_reset_during_the_tls_handshake_falls_back_to_plain_http():
    """A real loopback server resets the TLS attempt, then answers HTTP: the probe must
    reach the plain answer (it gave up there before, and a plain etcd was left unproven
    one scan in twenty)."""
    seen: list[bytes] = []

    def handle(srv) -> None:
        conn, _ = srv.accept()
        seen.append(conn.recv(1))  # the ClientHello has arrived; most of it stays unread
        _reset(conn)
        conn, _ = srv.accept()
        seen.append(conn.recv(4096))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        conn.close()

    got = _probe_served_by(handle)
    assert seen[0] == b"\x16"  # a TLS handshake record came first
    assert seen[1].startswith(b"GET /version HTTP/1.1")
    assert got["tls"] == "no" and got["status"] == 200 and got["body"], got
    assert auth.from_probe(got)[0] == AUTH_NONE


def test_a_reset_after_the_tls_handshake_proves_nothing(tmp_path):
    """Past the handshake a reset says nothing about credentials: no plain retry, no claim."""
    import ssl
    import subprocess

    def handle(srv) -> None:
        conn, _ = srv.accept()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(CERT, KEY)
        tls = ctx.wrap_socket(conn, server_side=True)
        tls.recv(1)
        _reset(tls)
        try:
            srv.settimeout(1)
            srv.accept()[0].close()
            extra.append(True)
        except OSError:
            pass

    CERT, KEY = str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=probe", "-days", "1",
                    "-keyout", KEY, "-out", CERT], check=True, capture_output=True)
    extra: list[bool] = []
    got = _probe_served_by(handle)
    assert got["tls"].startswith("yes, then "), got
    assert "status" not in got and not extra
    assert auth.from_probe(got) == auth.UNKNOWN
