"""The daemon's iptables-legacy read under a real memory cgroup, children counted.

A DaemonSet's memory limit (256 MiB) counts the container's every process and its page cache
and shmem: `iptables-legacy-save` included. This loads a kube-proxy-shaped ruleset
(bench/nodeshape.kube_proxy_text) into a lab namespace, then runs the daemon's read
(collect_ruleset with its ParseCache, live probes) cycle after cycle in a process moved
into its own cgroup v1 memory group, with the ruleset changed between some cycles by a
kube-proxy-like partial sync (written from outside the group, as kube-proxy does). Per
cycle: memory.max_usage_in_bytes (reset before it), memory.failcnt, the OOM kills
(memory.oom_control). Two ways, each in its own group, same run:

- decode: each legacy table's kernel blob digested in-process (collect/xtables.py); a
  changed table decoded in-process (collect/xtdecode.py: no child), its blob given back as
  it is parsed, its last parse let go first; one past 100,000 rules not held between reads
  (decoded again: its parse and its blob never coexist);
- save: the same digest gate, the changed table read by `iptables-legacy-save -t TABLE`
  into a memfd (the last round's way);
- before (--ways before): no kernel digest: every cycle streams iptables-legacy-save to
  digest it while the last parse is held, and a change reads it once more.

First without a limit (the true peak of each phase), then with --limit-mib (OOM or not).
`nodeward scan` is also run once under the limit (the CLI's whole path).

    sudo python bench/legacy_cgroup.py [--rules 250000] [--cycles 6] [--limit-mib 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "agent"))

from bench.nodeshape import churn_payloads, install_ruleset  # noqa: E402
from tests.lab import Lab, have_netns  # noqa: E402

MEMCG = Path("/sys/fs/cgroup/memory")

READER = r"""
import dataclasses, json, sys, time
sys.path.insert(0, {agent!r})
from nodeward.collect.ruleset import LIVE, ParseCache, collect_ruleset, run_local
way = {way!r}
probes = LIVE if way == "decode" else dataclasses.replace(
    LIVE, legacy_lines=lambda family, name: None) if way == "save" else dataclasses.replace(
    LIVE, legacy_digests=lambda family, max_bytes: None, legacy_lines=lambda family, name: None)
cache = ParseCache()
print("ready", flush=True)
for _ in sys.stdin:
    t0 = time.perf_counter()
    rs = collect_ruleset(run_local, cache, probes=probes)
    n = sum(len(c.rules) for t in rs.tables for c in t.chains.values())
    out = {{"s": time.perf_counter() - t0, "rules": n, "problems": [str(p) for p in rs.problems],
           "hits": cache.hits, "misses": cache.misses}}
    del rs
    print(json.dumps(out), flush=True)
"""


def cgroup_reason() -> str | None:
    """None when a cgroup v1 memory group can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    if not (MEMCG / "memory.limit_in_bytes").exists():
        return f"no cgroup v1 memory controller at {MEMCG}"
    probe = MEMCG / f"nodeward-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        return f"cannot create a memory cgroup: {e}"
    return None


class Group:
    """One cgroup v1 memory group (removed on close: its processes must have exited)."""

    def __init__(self, name: str, limit_mib: int | None) -> None:
        self.path = MEMCG / name
        self.path.mkdir()
        if limit_mib:
            (self.path / "memory.limit_in_bytes").write_text(str(limit_mib << 20))
            # no swap here, but say so: a swapped page would not be counted
            (self.path / "memory.memsw.limit_in_bytes").write_text(str(limit_mib << 20))

    def enter(self) -> None:  # preexec_fn: the child and all it spawns are in the group
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def reset(self) -> None:
        (self.path / "memory.max_usage_in_bytes").write_text("0")

    def peak_mib(self) -> float:
        return int((self.path / "memory.max_usage_in_bytes").read_text()) / 2**20

    def failcnt(self) -> int:
        return int((self.path / "memory.failcnt").read_text())

    def oom_kills(self) -> int:
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def close(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def cycles(ns, way: str, limit: int | None, n: int, payloads) -> list[dict]:
    """`n` reads by one long-lived reader in its own group; the ruleset changed before
    every third cycle from the third on (cycle 0 is cold)."""
    group = Group(f"nodeward-bench-{os.getpid()}-{way}-{limit or 'free'}", limit)
    out: list[dict] = []
    try:
        p = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c",
                              READER.format(agent=str(ROOT / "agent"), way=way)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             preexec_fn=group.enter)
        assert p.stdin is not None and p.stdout is not None
        p.stdout.readline()
        for i in range(n):
            kind = "cold" if i == 0 else "changed" if i % 3 == 2 else "unchanged"
            if kind == "changed":
                subprocess.run(["ip", "netns", "exec", ns.name, "iptables-legacy-restore",
                                "--noflush"], input=next(payloads), text=True, check=True)
            group.reset()
            try:
                p.stdin.write("go\n")
                p.stdin.flush()
                line = p.stdout.readline()
            except BrokenPipeError:
                line = ""
            row = {"cycle": i, "kind": kind, "peak_mib": group.peak_mib(),
                   "failcnt": group.failcnt(), "oom_kills": group.oom_kills()}
            if not line:
                row["died"] = p.wait(30)
                out.append(row)
                break
            out.append({**row, **json.loads(line)})
        if p.poll() is None:
            p.stdin.close()
            p.wait(60)
    finally:
        group.close()
    return out


def scan_once(ns, limit: int) -> dict:
    """`nodeward scan` (the CLI's whole path) once, in its own group under the limit."""
    group = Group(f"nodeward-bench-{os.getpid()}-scan", limit)
    try:
        t0 = time.perf_counter()
        r = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-m", "nodeward",
                            "scan", "--format", "json"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT / "agent")},
                           preexec_fn=group.enter, timeout=600)
        return {"rc": r.returncode, "s": time.perf_counter() - t0, "peak_mib": group.peak_mib(),
                "failcnt": group.failcnt(), "oom_kills": group.oom_kills(),
                "stderr": r.stderr.strip().splitlines()[-1:]}
    finally:
        group.close()


def show(way: str, limit: int | None, rows: list[dict]) -> float:
    top = max(r["peak_mib"] for r in rows)
    print(f"  {way:6} {'limit ' + str(limit) + ' MiB' if limit else 'no limit':14} peak "
          f"{top:6.1f} MiB; per cycle: " + ", ".join(
              f"{r['kind']} {r['peak_mib']:.0f}" + (f" ({r['s']:.1f} s)" if "s" in r else "")
              for r in rows))
    died = [r for r in rows if r.get("died") is not None]
    if limit:
        print(f"         failcnt {rows[-1]['failcnt']}, OOM kills {rows[-1]['oom_kills']} "
              f"(per cycle: {[r['oom_kills'] for r in rows]}), rules read per cycle: "
              f"{[r.get('rules') for r in rows]}"
              + (f"; the reader died (exit {died[0]['died']}) in cycle {died[0]['cycle']}"
                 if died else ""))
    problems = {p for r in rows for p in r.get("problems", ())}
    if problems:
        print(f"         problems: {sorted(problems)}")
    return top


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", type=int, default=250_000)
    ap.add_argument("--cycles", type=int, default=6)
    ap.add_argument("--limit-mib", type=int, default=256)
    ap.add_argument("--ways", default="decode,save", help="of decode, save, before")
    args = ap.parse_args()
    reason = have_netns() or cgroup_reason()
    if reason:
        print(f"skipped: {reason}")
        return
    payloads = churn_payloads("iptables-legacy", args.rules, "partial")
    with Lab() as lab:
        ns = lab.netns("cg")
        load = install_ruleset(ns, "iptables-legacy", args.rules)
        print(f"iptables-legacy, {args.rules:,} kube-proxy rules (loaded in {load:.1f} s), "
              f"{args.cycles} daemon reads each, a partial sync before every third; "
              "peak = memory.max_usage_in_bytes of the reader's cgroup (its children, page "
              "cache and shmem counted)")
        tops: dict[tuple[str, int | None], float] = {}
        for limit in (None, args.limit_mib):
            for way in args.ways.split(","):
                rows = cycles(ns, way, limit, args.cycles, payloads)
                tops[(way, limit)] = show(way, limit, rows)
        ways = args.ways.split(",")
        now, before = tops[(ways[0], None)], tops[(ways[-1], None)]
        print(f"  peak {ways[0]} {now:.1f} MiB vs {ways[-1]} {before:.1f} MiB "
              f"({now / before:.2f}x); "
              f"against the {args.limit_mib} MiB limit: "
              f"{'MET' if now <= args.limit_mib else 'MISSED'} "
              f"({now / args.limit_mib:.0%} of it)")
        s = scan_once(ns, args.limit_mib)
        print(f"  nodeward scan under {args.limit_mib} MiB: exit {s['rc']}, {s['s']:.1f} s, "
              f"peak {s['peak_mib']:.1f} MiB, failcnt {s['failcnt']}, OOM kills "
              f"{s['oom_kills']}" + (f"; {(s['stderr'] or ['(no stderr)'])[0]}" if s["rc"] else ""))


if __name__ == "__main__":
    main()
