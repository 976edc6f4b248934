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
import sys
from pathlib import Path

HTTP_LIBS = ("requests", "urllib3", "charset_normalizer", "idna", "certifi", "chardet")


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
