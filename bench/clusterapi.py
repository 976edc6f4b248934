"""The fake API server (tests/lab/fakeapi.py) populated like bench/cluster.py's N-node cluster,
with its churn, as a process of its own: bench/agent.py --cluster runs it inside the agent's
namespace (loopback there), so its CPU and the GIL stay out of the bench's sampler.

    python bench/clusterapi.py --nodes 1000 --churn kubelet   # prints "serving URL"
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "agent")]

from bench.cluster import Churn, populate  # noqa: E402
from tests.lab.fakeapi import FakeApi  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, required=True)
    ap.add_argument("--churn", choices=["kubelet", "topology", "none"], default="kubelet")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    api = FakeApi(bookmark_interval=60, port=args.port).start()
    populate(api, args.nodes)
    churn = Churn(api, args.nodes, args.churn) if args.churn != "none" else None
    if churn is not None:
        churn.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(f"serving {api.url}", flush=True)
    done.wait()
    if churn is not None:
        churn.stop.set()
    print(f"churn_events {churn.events if churn else 0} requests "
          f"{sum(api.requests.values())}", file=sys.stderr, flush=True)
    api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
