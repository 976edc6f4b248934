"""Full `nodeward` scan vs psutil.net_connections(kind="inet") on 10,000 listening sockets.

Builds a network namespace, opens N listening TCP sockets in it (one holder process, so the
inode map has real work to do), then runs each contender several times in its own fresh
process inside that namespace and prints best wall time, the ratio and peak RSS.
Target (issue 2): the scan takes at most a third of psutil's time.

    sudo python bench/scan.py [--sockets 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.lab import Lab, have_netns  # noqa: E402

HOLDER = r"""
import resource, socket, sys, time
sys.path.insert(0, {root!r})
from tests.lab.netns import setns
setns({ns!r})
n = {n}
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1024, n + 1024))
socks = []
for i in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 20000 + i))
    s.listen(1)
    socks.append(s)
print("ready", flush=True)
time.sleep(3600)
"""

CONTENDER = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from tests.lab.netns import setns
setns({ns!r})
which = {which!r}
parts = {{}}
if which == "nodeward":
    from nodeward.config import Config
    from nodeward.snapshot import take_snapshot
    from nodeward.checks import run_checks
    from nodeward.collect import procs, sockets
    cfg = Config(node_name="bench", firewall=False)  # sockets vs sockets; see bench/ruleset.py
    def run():
        snap = take_snapshot(cfg)
        run_checks(snap, cfg)
        # The same two collector steps again, timed alone, to show where the time goes.
        t0 = time.perf_counter()
        raw = sockets.collect_sockets()[0]
        t1 = time.perf_counter()
        procs.inode_owners(r.inode for r in raw)
        parts.update(sock_diag=t1 - t0, fd_walk=time.perf_counter() - t1)
        return len(snap.sockets)
else:
    import psutil
    def run():
        return sum(1 for c in psutil.net_connections(kind="inet") if c.status == "LISTEN")
t = time.perf_counter()
count = run()
elapsed = time.perf_counter() - t - sum(parts.values())
print(json.dumps({{"elapsed": elapsed, "count": count, "parts": parts,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def hold_sockets(lab: Lab, role: str, n: int):
    """A lab namespace with one process holding `n` listening TCP sockets in it."""
    ns = lab.netns(role)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(root=str(ROOT), ns=ns.name, n=n)],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    lab.procs.append(holder)
    if "ready" not in holder.stdout.readline():
        raise RuntimeError("socket holder failed to start")
    return ns


def contend(which: str, ns: str, rounds: int) -> dict:
    best: dict | None = None
    for _ in range(rounds):
        code = CONTENDER.format(root=str(ROOT), ns=ns, which=which)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True)
        res = json.loads(r.stdout)
        if best is None or res["elapsed"] < best["elapsed"]:
            best = res
    assert best is not None
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sockets", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    reason = have_netns()
    if reason:
        print(f"bench/scan.py: skipped: {reason}")
        return 0
    with Lab() as lab:
        ns = hold_sockets(lab, "bench", args.sockets)
        ours = contend("nodeward", ns.name, args.rounds)
        theirs = contend("psutil", ns.name, args.rounds)
    assert ours["count"] == theirs["count"] == args.sockets, (ours, theirs)
    ratio = ours["elapsed"] / theirs["elapsed"]
    print(f"sockets:                       {args.sockets} listening TCP (best of {args.rounds})")
    print(f"nodeward full scan:            {ours['elapsed'] * 1000:8.1f} ms   "
          f"peak RSS {ours['maxrss_kb'] / 1024:6.1f} MB")
    print(f"  of which sock_diag dump:     {ours['parts']['sock_diag'] * 1000:8.1f} ms")
    print(f"  of which /proc/PID/fd walk:  {ours['parts']['fd_walk'] * 1000:8.1f} ms   "
          "(one readlink per fd: the only socket->pid map the kernel offers; "
          "psutil walks it too)")
    print(f"psutil.net_connections(inet):  {theirs['elapsed'] * 1000:8.1f} ms   "
          f"peak RSS {theirs['maxrss_kb'] / 1024:6.1f} MB")
    print(f"ratio nodeward/psutil:         {ratio:8.3f}   "
          f"(target <= 0.333: {'met' if ratio <= 1 / 3 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
