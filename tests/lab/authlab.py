"""Real servers with known authentication, for the auth lab tests and bench/peers.py: a PKI
made with openssl, Debian's etcd with or without TLS and client certificates, and the
kubelet-shaped HTTPS server (kubelet_server.py) with a KubeletConfiguration it names."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .netns import Lab, Netns

KUBELET_SERVER = Path(__file__).resolve().parent / "kubelet_server.py"

#: A KubeletConfiguration; line 5 is authentication.anonymous.enabled, line 7
#: authorization.mode.
KUBELET_CONFIG = """\
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: {anon}
authorization:
  mode: {mode}
readOnlyPort: 0
"""


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def make_pki(d: Path, *ips: str) -> Path:
    """ca.crt/key, server.crt/key (for 127.0.0.1, ::1, localhost and `ips`) and
    client.crt/key, all signed by the CA."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"),
            "-days", "2", "-subj", "/CN=nodeward-lab-ca")
    san = ",".join(["IP:127.0.0.1", "IP:::1", "DNS:localhost", *(f"IP:{ip}" for ip in ips)])
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        openssl("req", *ec, "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"),
                "-subj", f"/CN=nodeward-lab-{name}")
        ext = d / f"{name}.ext"
        ext.write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
                "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
                "-out", str(d / f"{name}.crt"), "-extfile", str(ext))
    return d


def wait_listening(lab: Lab, ns: Netns, port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.sh("ss", "-Hltn", f"sport = :{port}", ns=ns).stdout.strip():
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


def etcd_tls_args(pki: Path) -> list[str]:
    return ["--client-cert-auth", "--trusted-ca-file", str(pki / "ca.crt"),
            "--cert-file", str(pki / "server.crt"), "--key-file", str(pki / "server.key")]


def start_etcd(lab: Lab, ns: Netns, data: Path, client_url: str, *extra: str,
               peer_url: str = "http://127.0.0.1:2380") -> subprocess.Popen:
    advertise_peer = peer_url.replace("0.0.0.0", "127.0.0.1")
    p = lab.spawn(ns, [
        "etcd", "--name", "lab", "--data-dir", str(data),
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url.replace("0.0.0.0", "127.0.0.1"),
        "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", advertise_peer,
        "--initial-cluster", f"lab={advertise_peer}",
        "--listen-metrics-urls", "http://127.0.0.1:2381", *extra])
    wait_listening(lab, ns, 2379)
    wait_listening(lab, ns, 2381)
    return p


def start_kubelet(lab: Lab, ns: Netns, pki: Path, config: Path,
                  port: int = 10250) -> subprocess.Popen:
    """The kubelet-shaped server, exec'd as `kubelet` so the catalog identifies it."""
    args = ["kubelet", str(KUBELET_SERVER), "--netns", ns.name, "--config", str(config),
            "--port", str(port), "--tls-cert-file", str(pki / "server.crt"),
            "--tls-private-key-file", str(pki / "server.key")]
    p = subprocess.Popen(args, executable=sys.executable, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env={**os.environ, "PYTHONHOME": sys.base_prefix})
    lab.procs.append(p)
    lab._wait_line(p, "ready", 10)
    return p
