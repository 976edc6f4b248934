"""Where the daemon's peak RSS comes from: the agent's cycle run in a lab namespace shaped
like bench/agent.py's node, each phase wrapped to record the peak RSS (VmHWM, reset per
phase through /proc/self/clear_refs) reached inside it and, with --trace, tracemalloc's peak
of Python allocations above the phase's start.

    sudo python bench/memphases.py --frontend iptables-nft [--cycles 3] [--trace] [--churn]

Printed per cycle: each phase's peak RSS and its rise over the RSS at the phase's start;
with --trace the Python-level rise and, at the peak of the ruleset parse, the biggest
allocation sites.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.nodeshape import churn, install_ruleset, node_shape  # noqa: E402
from tests.lab import Lab, have_netns  # noqa: E402

CHILD = r"""
import gc, sys, time, tracemalloc, io
sys.path.insert(0, {agent!r})
TRACE, CYCLES, SLEEP, CFG, TRIM = {trace!r}, {cycles!r}, {sleep!r}, {cfg!r}, {trim!r}
FROM, FRAMES, STEP, HEAP, KEPT = {trace_from!r}, {frames!r}, {step!r}, {heap!r}, {kept!r}

def status():
    rss = hwm = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss / 1024, hwm / 1024

def clear_hwm():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

def heap():
    # (pymalloc arenas, its blocks in use MB, glibc heap MB, its free MB)
    import ctypes, os, tempfile
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        sys.stderr.flush()
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode()
    val = {{}}
    for line in text.splitlines():
        k, eq, v = line.rpartition("=")
        if eq and v.strip().replace(",", "").isdigit():
            val[k.strip().lstrip("# ")] = int(v.strip().replace(",", ""))
    class MI(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                    "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MI
    mi = libc.mallinfo2()
    mb = 2 ** 20
    return (val.get("arenas allocated current", 0), val.get("bytes in allocated blocks", 0)
            / mb, (mi.arena + mi.hblkhd) / mb, mi.fordblks / mb)

stack = []  # [name, rss0, hwm_max, py0, py_max]
rows = []

def enter(name):
    rss, hwm = status()
    py = tracemalloc.get_traced_memory() if TRACE else (0, 0)
    if stack:
        stack[-1][2] = max(stack[-1][2], hwm)
        stack[-1][4] = max(stack[-1][4], py[1])
    stack.append([name, rss, rss, py[0], py[0]])
    clear_hwm()
    if TRACE:
        tracemalloc.reset_peak()

def leave():
    rss, hwm = status()
    py = tracemalloc.get_traced_memory() if TRACE else (0, 0)
    fr = stack.pop()
    fr[2] = max(fr[2], hwm)
    fr[4] = max(fr[4], py[1])
    rows.append((len(stack), fr[0], fr[1], fr[2], rss, (fr[4] - fr[3]) / 2**20,
                 (py[0] - fr[3]) / 2**20, heap()[:2] if HEAP else ()))
    if stack:
        stack[-1][2] = max(stack[-1][2], fr[2])
        stack[-1][4] = max(stack[-1][4], fr[4])
    clear_hwm()
    if TRACE:
        tracemalloc.reset_peak()

def wrap(mod, name, label=None):
    fn = getattr(mod, name)
    def w(*a, **k):
        enter(label or name)
        first = tracemalloc.take_snapshot() if name == KEPT and tracemalloc.is_tracing() \
            else None
        try:
            return fn(*a, **k)
        finally:
            if first is not None:
                print(f"  what {{name}} left allocated:")
                for d in tracemalloc.take_snapshot().compare_to(first, "traceback")[:10]:
                    print(f"    {{d.size_diff / 2**10:+8.1f}} kB {{d.count_diff:+7d}}")
                    for line in d.traceback.format()[::-1][:FRAMES * 2]:
                        print(f"          {{line}}")
                del first
            leave()
    setattr(mod, name, w)

if TRACE and FROM <= 1:
    tracemalloc.start(FRAMES)
from nodeward import config as config_mod, daemon, snapshot
from nodeward.collect import ruleset as cr
from nodeward import checks
from nodeward.collect import nftnl, nftsplice
cfg = config_mod.load(CFG)
agent = daemon.Agent(CFG, cfg, io.StringIO())
for mod, name in ((snapshot, "collect_interfaces"), (snapshot, "collect_sockets"),
                  (snapshot, "attribute"), (snapshot, "collect_auth"),
                  (snapshot, "read_ruleset"), (cr, "parse_iptables_save"),
                  (cr, "parse_nft_json"), (cr, "digest_lines"), (cr, "digest_dump"),
                  (nftnl, "read_table"), (nftsplice.NativeTables, "_splice"),
                  (daemon, "run_checks")):
    wrap(mod, name)
top = []
if STEP:  # (frontend, rules, syncs): kube-proxy syncs before each cycle but the first
    import subprocess
    sys.path.insert(0, {root!r})
    from bench.nodeshape import churn_payloads
    syncs = churn_payloads(STEP[0], STEP[1])
    tool = ["nft", "-f", "-"] if STEP[0] == "nft" else [STEP[0] + "-restore", "--noflush"]
for c in range(CYCLES):
    for _ in range(STEP[2] if STEP and c else 0):
        payload = next(syncs)
        for one in payload if isinstance(payload, tuple) else (payload,):
            subprocess.run(tool, input=one, text=True, check=True)
    if TRACE and c + 1 == FROM > 1:
        gc.collect()
        tracemalloc.start(FRAMES)  # (what the cycles after the first ones keep)
    rows.clear()
    enter(f"cycle {{c + 1}}")
    agent.cycle()
    leave()
    agent.out.seek(0)
    agent.out.truncate()
    if TRIM:
        import ctypes
        before = status()[0]
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        print(f"  malloc_trim(0) after the cycle: RSS {{before:.1f}} -> {{status()[0]:.1f}} MB")
    print(f"-- cycle {{c + 1}}: phase  (RSS at start -> peak inside, MB; rise)"
          + ("  [python peak rise / kept, MB]" if TRACE else ""))
    for depth, name, rss0, peak, rss1, pyrise, pykept, arenas in rows:
        print(f"  {{'  ' * depth}}{{name:22}} {{rss0:7.1f}} -> {{peak:7.1f}}"
              f"  (+{{peak - rss0:5.1f}})  end {{rss1:7.1f}}"
              + (f"  [+{{pyrise:6.1f}} / {{pykept:+6.1f}}]" if TRACE else "")
              + (f"  {{arenas[0]}} arenas, {{arenas[1]:.1f}} MB used" if arenas else ""))
    if HEAP:
        gc.collect()
        a, used, gheap, gfree = heap()
        print(f"  heap: pymalloc {{a}} arenas ({{a:.0f}} MB), {{used:.1f}} MB in use; "
              f"glibc {{gheap:.1f}} MB, {{gfree:.1f}} MB free")
    if TRACE and tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot()
        by = "lineno" if FRAMES == 1 else "traceback"
        stats = snap.statistics(by)
        print("  held after the cycle, top sites:")
        for s in stats[:12]:
            print(f"    {{s.size / 2**20:6.1f}} MB {{s.count:8d}}  {{s.traceback}}")
        if top:
            print("  grown since the last cycle:")
            for d in snap.compare_to(top[-1], by)[:8 if FRAMES == 1 else 12]:
                print(f"    {{d.size_diff / 2**10:+8.1f}} kB {{d.count_diff:+7d}}  {{d.traceback}}")
                if FRAMES > 1:
                    for line in d.traceback.format()[::-1][:FRAMES * 2]:
                        print(f"          {{line}}")
            top.clear()
        top.append(snap)
    if c + 1 < CYCLES:
        time.sleep(SLEEP)
print("VmHWM overall (MB):", status())
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frontend", choices=["iptables-nft", "iptables-legacy", "nft"],
                    default="iptables-nft")
    ap.add_argument("--rules", type=int, default=50_000)
    ap.add_argument("--listeners", type=int, default=10_000)
    ap.add_argument("--established", type=int, default=20_000)
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--sleep", type=float, default=11.0)
    ap.add_argument("--trace", action="store_true")
    ap.add_argument("--trace-from", type=int, default=1, metavar="CYCLE",
                    help="start tracing at this cycle (a traced full read is ~3x slower, "
                    "and under churn a write then races it)")
    ap.add_argument("--kept", metavar="PHASE",
                    help="with --trace: what that phase (a wrapped name) left allocated")
    ap.add_argument("--frames", type=int, default=1, help="traceback depth of --trace")
    ap.add_argument("--churn", action="store_true")
    ap.add_argument("--churn-step", type=int, default=0, metavar="SYNCS",
                    help="instead of --churn's writer every 10 s: SYNCS kube-proxy syncs "
                    "applied before each cycle but the first, never during one (a traced "
                    "read is not raced)")
    ap.add_argument("--heap", action="store_true",
                    help="after each cycle: pymalloc's arenas and blocks in use, glibc's "
                    "heap and its free part (fragmentation against what is held)")
    ap.add_argument("--trim", action="store_true",
                    help="malloc_trim(0) after each cycle: how much is freed but resident")
    args = ap.parse_args()
    reason = have_netns()
    if reason:
        print(f"bench/memphases.py: skipped: {reason}")
        return 0
    import tempfile

    with Lab() as lab, tempfile.TemporaryDirectory(prefix="nw-bench-mem-") as tmp:
        ns = lab.netns("mem")
        node_shape(lab, ns, args.listeners, args.established)
        if args.rules:
            install_ruleset(ns, args.frontend, args.rules, nft_shape="kube-proxy")
        if args.churn:
            churn(lab, ns, args.frontend, args.rules, 10.0)
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text("node_name: bench\ninterval: 30\nmetrics_address: 127.0.0.1:0\n"
                       "node_cidrs: [10.0.0.0/16]\npod_cidrs: [10.244.0.0/16]\n")
        code = CHILD.format(agent=str(ROOT / "agent"), trace=args.trace, cycles=args.cycles,
                            sleep=args.sleep, cfg=str(cfg), trim=args.trim,
                            trace_from=args.trace_from, frames=args.frames, root=str(ROOT),
                            step=(args.frontend, args.rules, args.churn_step)
                            if args.churn_step else None, heap=args.heap,
                            kept=args.kept)
        t0 = time.monotonic()
        subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c", code],
                       timeout=3600, check=False)
        print(f"({time.monotonic() - t0:.0f} s)")
        for p in lab.procs:
            if p.poll() is None:
                p.kill()
                p.wait(120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
