"""Peak RSS and CPU share of `nodeward run` on a node with 10,000 listening sockets.

Runs the daemon at a 30 s interval for a few minutes inside a namespace holding N listening
sockets, sampling its RSS every second (peak = VmHWM, which includes start-up) and its CPU
time from /proc/PID/stat from half a second after start (so interpreter start-up and imports
are left out; every scan cycle is in, including the ruleset commands it runs). Targets
(issue 6): RSS under 60 MB, CPU under 1% of a core.

    sudo python bench/agent.py [--sockets 10000] [--minutes 3] [--interval 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scan import hold_sockets  # noqa: E402
from tests.lab import Lab, have_netns  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime + stime + the waited-for children's (iptables-save, nft, ipset: the firewall
    # read is the agent's cost too)
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sockets", type=int, default=10000)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--interval", type=float, default=30.0)
    args = ap.parse_args()
    reason = have_netns()
    if reason:
        print(f"bench/agent.py: skipped: {reason}")
        return 0
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        ns = hold_sockets(lab, "agent", args.sockets)
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(f"node_name: bench\ninterval: {args.interval}\n"
                       "metrics_address: 127.0.0.1:0\n")
        log = open(Path(tmp) / "agent.log", "w")  # noqa: SIM115 (closed below)
        agent = lab.spawn(ns, [sys.executable, "-m", "nodeward", "--config", str(cfg), "run"],
                          stdout=log)
        # `ip netns exec` execs the agent, so the spawned pid is the agent's.
        time.sleep(0.5)
        cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
        peak = 0
        samples = []
        end = t0 + args.minutes * 60
        while time.monotonic() < end:
            rss, hwm = rss_kb(agent.pid)
            peak = max(peak, hwm)
            samples.append(rss)
            time.sleep(1)
        cpu1, t1 = cpu_seconds(agent.pid), time.monotonic()
        lab.stop(agent)
        log.close()
        cycles = (Path(tmp) / "agent.log").read_text().count('"scan_complete"')
    share = (cpu1 - cpu0) / (t1 - t0) * 100
    print(f"sockets {args.sockets}, interval {args.interval:g}s, {args.minutes:g} min, "
          f"{cycles} scan cycles")
    print(f"peak RSS (VmHWM):  {peak / 1024:6.1f} MB   steady RSS {samples[-1] / 1024:6.1f} MB"
          f"   (target < 60 MB: {'met' if peak < 60 * 1024 else 'MISSED'})")
    print(f"CPU share:         {share:6.2f} % of one core"
          f"   (target < 1%: {'met' if share < 1 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
