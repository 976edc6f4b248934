"""The daemon's RSS on its in-cluster path (`cluster: {}`, the DaemonSet's ConfigMap):
`import nodeward.daemon`, an Agent, its cluster view listed and watched over verified TLS
from a loopback API (tests/lab/incluster_client.py). The alternative, in the same run: the
same path with requests imported first, what the client on requests loaded (requests,
urllib3, charset_normalizer, idna, certifi). `--before DIR` adds an older agent tree (e.g.
`git archive <commit> agent | tar -x -C DIR`) run the same way.

    python bench/kubeclient.py [--nodes 200] [--runs 3] [--before DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "agent")]

from tests.lab.incluster_client import in_cluster_lab  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before", type=Path)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nodeward-kubeclient-") as tmp:
        lab = in_cluster_lab(Path(tmp), "bench-token", a.nodes)
        try:
            variants = {"stdlib client": {}, "+ requests imported": {"preimport": "requests"}}
            if a.before:
                variants[f"agent tree {a.before}"] = {"agent_dir": a.before / "agent"}
            rss: dict[str, float] = {}
            for name, kw in variants.items():
                runs = [lab.run(**kw) for _ in range(a.runs)]
                assert all(len(r["nodes"]) == a.nodes and not r["unknown"] for r in runs), runs
                rss[name] = statistics.median(r["peak_mb"] for r in runs)
                print(f"{name:40} peak RSS {rss[name]:6.1f} MB  libs {runs[0]['http_libs']}")
        finally:
            lab.api.stop()
    base = rss["stdlib client"]
    for name, v in rss.items():
        if name != "stdlib client":
            print(f"{name}: {v - base:+.1f} MB ({v / base:.3f}x the stdlib client)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
