"""`nodeward run` on a realistic node: RSS, RSS slope, CPU share, cycle time, verdicts reused.

Builds a lab namespace shaped like a busy Kubernetes node — 10,000 listening sockets, 20,000
established connections spread over a few proxy-like processes, a 50,000-rule kube-proxy-sized
ruleset on iptables-nft, iptables-legacy or native nft — and runs the daemon in it, sampling
its RSS every second and its CPU time (its own plus every command it waited for:
iptables-save, nft, ipset) from half a second after start (start-up imports left out). With
--churn a kube-proxy-like writer syncs new endpoints for five services every 10 s
(--churn-mode partial: kube-proxy >= 1.27's partial sync; full: every chain rewritten, as
older kube-proxy does each sync; see bench/nodeshape.churn_payloads). Native nft: the table
of kube-proxy's nftables mode (nodeshape.kube_proxy_nft_text) and its partial syncs.

Printed per run: RSS first (after the first cycle) / last / peak (VmHWM) and the peak of the
agent together with the commands it runs (sampled every 5 ms), the RSS slope per
hour (least squares over the samples after the second cycle), CPU share in the steady state
(after the cold first cycle, which parses everything) and over the whole run, cycle time
(scan_complete duration_ms: median and max), ruleset reads done and skipped, verdicts reused
in the last cycle. Targets (issue 17): RSS slope under 1 MB/h and peak under 100 MB with 50k
rules; CPU under 1% of a core at 30 s with an unchanged ruleset, under 3% with churn.

    sudo python bench/agent.py --frontend iptables-nft [--interval 30] [--minutes 10]
        [--churn] [--listeners 10000] [--established 20000] [--rules 50000] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.nodeshape import churn, install_ruleset, node_shape  # noqa: E402
from tests.lab import Lab, have_netns  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
TARGET_SLOPE_MB_H = 1.0
TARGET_PEAK_MB = 100.0
API_PORT = 6443  # on the loopback of the namespace the bench made: nothing else there


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


def tree_rss_kb(pid: int) -> tuple[int, int]:
    """(RSS of `pid` plus its children's, the children's) in kB: what a cgroup's memory limit
    sees while the agent runs iptables-save or nft (their own peak comes before they print)."""
    kids: list[str] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += f.read().split()
    except OSError:
        return 0, 0

    def rss(p: str | int) -> int:
        try:
            with open(f"/proc/{p}/statm") as f:
                return int(f.read().split()[1]) * PAGE_KB
        except (OSError, IndexError, ValueError):
            return 0

    def execed(p: str) -> bool:  # not the vfork'ed child still in our address space
        try:
            with open(f"/proc/{p}/comm") as f, open(f"/proc/{pid}/comm") as g:
                return f.read() != g.read()
        except OSError:
            return False

    child = sum(rss(k) for k in kids if execed(k))
    return rss(pid) + child, child


class TreeSampler(threading.Thread):
    """Samples tree_rss_kb every 5 ms (a front-end command lives a second or less)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = self.child_peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            both, child = tree_rss_kb(self.pid)
            self.peak = max(self.peak, both)
            self.child_peak = max(self.child_peak, child)


def slope_per_hour(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS (kB) over time (s), in MB per hour."""
    if len(samples) < 3:
        return float("nan")
    ts = [t for t, _ in samples]
    ys = [y for _, y in samples]
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    if not var:
        return float("nan")
    k = sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var
    return k * 3600 / 1024


def events(log: Path) -> list[dict]:
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def run(args) -> dict:
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="nw-bench-agent-") as tmp:
        ns = lab.netns("agent")
        node_shape(lab, ns, args.listeners, args.established)
        load_s = install_ruleset(ns, args.frontend, args.rules, nft_shape="kube-proxy") \
            if args.rules else 0.0
        if args.churn:
            churn(lab, ns, args.frontend, args.rules, args.churn_every, args.churn_mode)
        cfg = Path(tmp) / "config.yaml"
        api = None
        if args.cluster:
            # the fake API in the agent's namespace, on its loopback: the DaemonSet's
            # `cluster: {}` (list once, then watch Nodes and the Calico kinds)
            api = lab.spawn(ns, [sys.executable, str(ROOT / "bench" / "clusterapi.py"),
                                 "--nodes", str(args.cluster), "--churn", args.cluster_churn,
                                 "--port", str(API_PORT)],
                            wait_for="serving", timeout=300, stderr=subprocess.PIPE)
        cfg.write_text(f"node_name: bench\ninterval: {args.interval}\n"
                       "metrics_address: 127.0.0.1:0\n"
                       "node_cidrs: [10.0.0.0/16]\npod_cidrs: [10.244.0.0/16]\n"
                       + (cluster_config(f"http://127.0.0.1:{API_PORT}", Path(tmp)) if api else ""))
        logp = Path(tmp) / "agent.log"
        with open(logp, "w") as log:
            agent = lab.spawn(ns, [sys.executable, "-m", "nodeward", "--config", str(cfg),
                                   "run"], stdout=log,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "agent")})
            time.sleep(0.5)
            tree = TreeSampler(agent.pid)
            tree.start()
            cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
            samples: list[tuple[float, int]] = []
            done: list[tuple[float, float, int]] = []  # (t, cpu, rss) at each cycle's end
            peak = 0
            end = t0 + args.minutes * 60
            seen = 0
            tail = open(logp)  # noqa: SIM115 (closed below)
            while time.monotonic() < end:
                rss, hwm = rss_kb(agent.pid)
                peak = max(peak, hwm)
                now = time.monotonic() - t0
                samples.append((now, rss))
                seen += tail.read().count('"scan_complete"')
                while len(done) < seen:
                    done.append((now, cpu_seconds(agent.pid), rss))
                time.sleep(1)
            cpu1, t1 = cpu_seconds(agent.pid), time.monotonic()
            tree.done.set()
            tree.join()
            tail.close()
            lab.stop(agent)
            api_stats = stop_api(lab, api) if api else ""
        evs = events(logp)
        if args.log:
            shutil.copy(logp, args.log)
        # 10,000-socket holders take a while to die on a loaded machine: kill and wait here
        # (Lab.stop gives up after 5 s)
        for p in lab.procs:
            if p.poll() is None:
                p.kill()
                p.wait(120)
    cycles = [e for e in evs if e.get("event") == "scan_complete"]
    # steady state: from the end of the first (cold: parses everything) cycle on; the RSS
    # slope from the end of the second on
    first_t, first_cpu, first_rss = done[0] if done else (0.0, cpu0, samples[0][1])
    warm_from = done[1][0] if len(done) >= 2 else first_t
    warm = [(t, r) for t, r in samples if t >= warm_from] or samples
    steady_s = (t1 - t0) - first_t
    durations = [e["duration_ms"] for e in cycles if "duration_ms" in e]
    last = cycles[-1] if cycles else {}
    reused = [e.get("verdicts_reused", 0) for e in cycles]
    return {
        "frontend": args.frontend, "churn": args.churn and args.churn_mode,
        "interval": args.interval,
        "minutes": args.minutes, "listeners": args.listeners,
        "established": args.established, "rules": args.rules, "load_s": round(load_s, 1),
        "cycles": len(cycles), "failed": sum(e.get("event") == "scan_failed" for e in evs),
        "rss_first_mb": first_rss / 1024, "rss_last_mb": samples[-1][1] / 1024,
        "rss_peak_mb": peak / 1024, "slope_mb_h": slope_per_hour(warm),
        "tree_peak_mb": tree.peak / 1024, "child_peak_mb": tree.child_peak / 1024,
        "slope_2nd_half_mb_h": slope_per_hour(warm[len(warm) // 2:]),
        "cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100,
        "cpu_steady_pct": (cpu1 - first_cpu) / steady_s * 100 if steady_s > 0 else None,
        "first_cycle_s": round(first_t, 1), "first_cycle_cpu_s": round(first_cpu - cpu0, 2),
        "cycle_ms_median": statistics.median(durations) if durations else None,
        "cycle_ms_max": max(durations) if durations else None,
        "firewall_rules": last.get("firewall_rules"),
        "ruleset_reads": last.get("ruleset_reads"),
        "ruleset_reads_skipped": last.get("ruleset_reads_skipped"),
        "full_saves": last.get("ruleset_full_saves"),
        "chains_read": last.get("ruleset_chains_read"),
        "native_full_reads": last.get("ruleset_native_full_reads"),
        "native_retries": last.get("ruleset_native_retries"),
        "native_not_spliced": last.get("ruleset_native_not_spliced"),
        "native_splices": last.get("ruleset_native_splices"),
        "checks_reused": last.get("checks_reused"),
        "verdicts_reused_last": (reused[-1] - reused[-2]) if len(reused) >= 2 else None,
        "sockets": last.get("sockets"),
        **cluster_figures(args, evs, api_stats),
    }


def cluster_config(url: str, tmp: Path) -> str:
    """The `cluster` section pointed at the fake API (plain http on the namespace's
    loopback; a token as the in-cluster config has one)."""
    token = tmp / "token"
    token.write_text("bench-token")
    token.chmod(0o600)
    return (f"cluster:\n  node_name: node-00000\n  kubernetes:\n    api_url: {url}\n"
            f"    token_file: {token}\n")


def stop_api(lab: Lab, p: subprocess.Popen) -> str:
    """SIGTERM; what it says it served (churn events, requests)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        lab.stop(p)
        return ""
    return err.strip().splitlines()[-1] if err.strip() else ""


def cluster_figures(args, evs: list[dict], api_stats: str) -> dict:
    """What proves the cluster stage ran: the peers the view listed (each is NW401 here: the
    fake's Felix announces WireGuard and the namespace has none), NW500 (state unknown)."""
    if not args.cluster:
        return {"cluster": 0}
    by_id: dict[str, set] = {}
    for e in evs:
        if e.get("event") in ("finding_opened", "finding"):
            by_id.setdefault(e.get("finding_id", ""), set()).add(e.get("component"))
    return {"cluster": args.cluster, "cluster_churn": args.cluster_churn,
            "peers_seen": len(by_id.get("NW401", ())),
            "nw500": sorted(str(c) for c in by_id.get("NW500", ())),
            "cluster_unknown_logs": sum(e.get("event") == "cluster_state_unknown"
                                        for e in evs),
            "api_stats": api_stats}


def report(r: dict) -> str:
    target_cpu = 3.0 if r["churn"] else 1.0
    churned = f" + {r['churn']} churn every 10 s" if r["churn"] else ""
    ok = lambda good: "met" if good else "MISSED"  # noqa: E731
    lines = [
        f"{r['frontend']}{churned}: {r['rules']} rules "
        f"(loaded in {r['load_s']} s), {r['listeners']} listeners, {r['established']} "
        f"established, interval {r['interval']:g} s, {r['minutes']:g} min, {r['cycles']} "
        f"cycles ({r['failed']} failed), {r['sockets']} sockets, "
        f"{r['firewall_rules']} rules read",
        f"  RSS first {r['rss_first_mb']:.1f} MB  last {r['rss_last_mb']:.1f} MB  peak "
        f"{r['rss_peak_mb']:.1f} MB (target < {TARGET_PEAK_MB:g}: "
        f"{ok(r['rss_peak_mb'] < TARGET_PEAK_MB)}); with the commands it runs (iptables-save, "
        f"nft; sampled every 5 ms, as the DaemonSet's 256 MiB limit counts them) "
        f"{r['tree_peak_mb']:.1f} MB, the commands alone up to {r['child_peak_mb']:.1f} MB",
        f"  RSS slope {r['slope_mb_h']:+.2f} MB/h (target < {TARGET_SLOPE_MB_H:g}: "
        f"{ok(r['slope_mb_h'] < TARGET_SLOPE_MB_H)}); second half of the run "
        f"{r['slope_2nd_half_mb_h']:+.2f} MB/h (the allocator settles after the first re-read)",
        f"  CPU steady state (after the cold first cycle) {r['cpu_steady_pct']:.2f} % of a core "
        f"(target < {target_cpu:g}% at 30 s: "
        f"{ok(r['cpu_steady_pct'] < target_cpu) if r['interval'] >= 30 else 'n/a'}); whole "
        f"run {r['cpu_pct']:.2f} % (first cycle {r['first_cycle_cpu_s']} s of CPU, ended at "
        f"{r['first_cycle_s']} s)",
        f"  cycle median {r['cycle_ms_median']} ms  max {r['cycle_ms_max']} ms; nf_tables "
        f"reads {r['ruleset_reads']} done / {r['ruleset_reads_skipped']} skipped (generation "
        f"id unchanged), iptables-nft full saves {r.get('full_saves')}, chains re-read "
        f"{r.get('chains_read')}, native tables read in full {r.get('native_full_reads')} / "
        f"spliced {r.get('native_splices')} (spliced again after a write during the read "
        f"{r.get('native_retries')}; not spliced: {r.get('native_not_spliced')}); verdicts "
        f"reused in the last cycle "
        f"{r['verdicts_reused_last']}; "
        f"check results reused {r['checks_reused']} times",
    ]
    if r.get("cluster"):
        lines.append(
            f"  cluster: {r['cluster']} nodes watched, {r['cluster_churn']} churn; peers in the "
            f"view {r['peers_seen']} of {r['cluster'] - 1} (NW401 each: WireGuard announced, "
            f"none here); fake API: {r['api_stats'] or 'no stats'}")
        if r["nw500"] or r["cluster_unknown_logs"] or r["peers_seen"] < r["cluster"] - 1:
            lines.append(f"  !!! CLUSTER STAGE DID NOT HOLD THE VIEW: NW500 {r['nw500']}, "
                         f"cluster_state_unknown logged {r['cluster_unknown_logs']} times, "
                         f"{r['peers_seen']} peers seen: NOT a measurement with the watch !!!")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frontend", choices=["iptables-nft", "iptables-legacy", "nft"],
                    default="iptables-nft")
    ap.add_argument("--rules", type=int, default=50_000)
    ap.add_argument("--listeners", type=int, default=10_000)
    ap.add_argument("--established", type=int, default=20_000)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=30.0)
    ap.add_argument("--churn", action="store_true")
    ap.add_argument("--churn-every", type=float, default=10.0)
    ap.add_argument("--churn-mode", choices=["partial", "full"], default="partial",
                    help="kube-proxy >= 1.27's partial sync, or every chain rewritten "
                         "(older kube-proxy, and its periodic full resync)")
    ap.add_argument("--cluster", type=int, default=0, metavar="N",
                    help="also watch a local fake API with N nodes (bench/cluster.py's "
                         "objects), as the DaemonSet's `cluster: {}` does; 0: no cluster")
    ap.add_argument("--cluster-churn", choices=["kubelet", "topology", "none"],
                    default="kubelet", help="kubelet: every node re-posted every 5 min")
    ap.add_argument("--out", help="also append the result as one JSON line here")
    ap.add_argument("--log", help="keep the agent's log here")
    args = ap.parse_args()
    reason = have_netns()
    if reason:
        print(f"bench/agent.py: skipped: {reason}")
        return 0
    # killed (a run cut short): unwind, so the Lab removes its namespace, holders and agent
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    r = run(args)
    print(report(r), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
