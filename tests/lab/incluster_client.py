"""The production daemon's cluster path, run in a fresh interpreter: `nodeward.daemon`
imported, an Agent built from a config whose `cluster:` is `{}` (the DaemonSet's
ConfigMap), and its cluster view read in-cluster (KUBERNETES_SERVICE_HOST/PORT, the
ServiceAccount token and CA from `SA_DIR`, here a test directory) by list-then-watch.

    python tests/lab/incluster_client.py SA_DIR CONFIG [--preimport MODULE]

Prints one JSON object: the view's node names, which HTTP-library modules were loaded, the
RSS and peak RSS in MB after the view was read. --preimport loads MODULE first
(bench/kubeclient.py: the cost of the client the daemon no longer imports, same run)."""

from __future__ import annotations

import importlib
import io
import json
import os
import shutil
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HTTP_LIBS = ("requests", "urllib3", "charset_normalizer", "idna", "certifi", "chardet")
ROOT = Path(__file__).resolve().parents[2]
NODES = "/api/v1/nodes"


@dataclass
class InCluster:
    """A pod's view of its cluster, on loopback: an HTTPS API (tests/lab/fakeapi.py) with a
    self-signed certificate for 127.0.0.1, the ServiceAccount directory holding the token
    and that certificate as ca.crt, a `cluster: {}` config and the pod's environment."""

    api: Any  # FakeApi
    sa_dir: Path
    config: Path
    env: dict

    def run(self, preimport: str = "", agent_dir: Path = ROOT / "agent") -> dict:
        """This script in a fresh interpreter; its JSON answer."""
        extra = ["--preimport", preimport] if preimport else []
        p = subprocess.run([sys.executable, __file__, str(self.sa_dir), str(self.config),
                            *extra], capture_output=True, text=True, timeout=60,
                           env={**self.env, "PYTHONPATH": str(agent_dir)})
        if p.returncode != 0:
            raise AssertionError(p.stderr)
        return json.loads(p.stdout)


def in_cluster_lab(tmp: Path, token: str, nodes: int = 2) -> InCluster:
    """Started; the caller stops `.api`. Needs the openssl CLI."""
    from tests.lab.fakeapi import FakeApi

    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "k.pem", "-out",
                    "c.pem", "-days", "1", "-subj", "/CN=kubernetes", "-addext",
                    "subjectAltName=IP:127.0.0.1"], cwd=tmp, check=True, capture_output=True)
    sa = tmp / "sa"
    sa.mkdir()
    (sa / "token").write_text(token + "\n")
    shutil.copy(tmp / "c.pem", sa / "ca.crt")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tmp / "c.pem"), str(tmp / "k.pem"))
    api = FakeApi(token=token, tls=ctx).start()
    for i in range(1, nodes + 1):
        api.put(NODES, {"kind": "Node", "metadata": {"name": f"n{i}"}})
    cfg = tmp / "config.yaml"
    cfg.write_text("node_name: n1\nfirewall: false\ncluster: {}\n")
    env = {**os.environ, "KUBERNETES_SERVICE_HOST": "127.0.0.1",
           "KUBERNETES_SERVICE_PORT": str(api.port)}
    return InCluster(api, sa, cfg, env)


def status_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str]) -> int:
    sa_dir, config_path = Path(argv[0]), argv[1]
    if argv[2:4] and argv[2] == "--preimport":
        importlib.import_module(argv[3])
    from nodeward import config, daemon, kubeapi

    kubeapi.in_cluster.__defaults__ = (sa_dir,)  # the pod's /var/run/secrets/... here
    cfg = config.load(config_path)
    cluster = cfg.section("cluster")
    agent = daemon.Agent(config_path, cfg, io.StringIO())
    try:
        view = agent._cluster_view(cluster)
        nodes = sorted(n.name for n in view.nodes)
        unknown = list(view.unknown)
        rss, peak = status_mb("VmRSS"), status_mb("VmHWM")
    finally:
        agent._stop_watcher()
    print(json.dumps({"nodes": nodes, "unknown": unknown, "rss_mb": round(rss, 1),
                      "peak_mb": round(peak, 1),
                      "http_libs": sorted(m for m in HTTP_LIBS if m in sys.modules)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
