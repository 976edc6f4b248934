"""Applying a 2,000-rule plan: one atomic transaction vs one python-iptables insert per rule.

In a fresh network namespace (legacy xtables, so python-iptables can run), the same plan is
applied (a) through the iptables backend (one `iptables-legacy-restore --noflush`, after the
`iptables-legacy-save` that decides what to change), and (b) rule by rule through
python-iptables with autocommit, which is how per-rule agents work: every insert is a
whole-table replace. Prints both times and the ratio (target: at least 20x). The nft flavour
and the nftables backend are timed too, for reference.

Then the no-op cycle the daemon runs every interval (select the backend, compare current
with desired, apply: nothing to change) on a --noop-rules kube-proxy-sized iptables-nft
ruleset: its time, CPU (commands included) and the commands it ran.

    sudo python bench/apply.py [--rules 2000] [--repeat 3] [--noop-rules 50000]
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "agent"))

from tests.lab import Lab, have_netns  # noqa: E402
from tests.lab.netns import setns  # noqa: E402

from nodeward.config import Config  # noqa: E402
from nodeward.enforce.backends.iptables import IptablesBackend  # noqa: E402
from nodeward.enforce.backends.nftables import NftablesBackend  # noqa: E402
from nodeward.enforce.plan import IPT_CHAINS, Plan, build_plan, iptables_rule_lines  # noqa: E402
from nodeward.enforce.settings import EnforceSettings  # noqa: E402
from nodeward.model import NodeSnapshot  # noqa: E402


def make_plan(n_rules: int) -> Plan:
    """A realistic plan padded with per-source allows for the kubelet up to n_rules."""
    cfg = Config(node_name="bench", node_cidrs=(ipaddress.ip_network("10.77.0.0/24"),),
                 pod_cidrs=(ipaddress.ip_network("10.244.0.0/16"),), pod_interfaces=("cali*",))
    snap = NodeSnapshot(node="bench", scanned_at="")
    base = len(build_plan(snap, cfg.catalog, cfg, EnforceSettings()).rules)
    extra = max(0, n_rules - base)
    allow = tuple(ipaddress.ip_network(f"10.{100 + i // 250}.{i % 250}.0/24")
                  for i in range(extra))
    plan = build_plan(snap, cfg.catalog, cfg, EnforceSettings(allow={"kubelet": allow}))
    assert len(plan.rules) == max(n_rules, base), len(plan.rules)
    return plan


def per_rule_pyiptables(plan: Plan) -> float:
    import iptc

    from nodeward.enforce.backends.pyiptables import PyIptablesBackend

    helper = PyIptablesBackend.__new__(PyIptablesBackend)
    helper._iptc, helper.log_rate = iptc, 10
    table = iptc.Table(iptc.Table.MANGLE)  # where our chains live
    table.refresh()  # python-iptables caches the handle: reopen it in this namespace
    table.autocommit = True
    t0 = time.perf_counter()
    for name in IPT_CHAINS.values():
        table.create_chain(name)
    for key, name in (("input", "NODEWARD-INPUT"), ("pod", "NODEWARD-POD"),
                      ("forward", "NODEWARD-FORWARD")):
        chain = iptc.Chain(table, name)
        for r in plan.chain(4, key):
            chain.append_rule(helper._rule(4, r, r.verdict, "enforce"))
    elapsed = time.perf_counter() - t0
    return elapsed


def noop_cycle(lab: Lab, plan: Plan, rules: int, repeat: int) -> None:
    """A daemon's no-op enforce cycle on the nft flavour at `rules` foreign rules."""
    import subprocess

    from bench.nodeshape import install_ruleset

    from nodeward.enforce import backends

    ns = lab.netns("noop")
    install_ruleset(ns, "iptables-nft", rules)
    setns(ns.name)
    os.environ.setdefault("NODEWARD_RUN_DIR", f"/tmp/nw-bench-apply-{os.getpid()}")
    assert backends.select("auto", (4, 6)).apply(plan, "enforce")
    calls: list[str] = []
    real = subprocess.run

    def traced(argv, *a, **kw):
        calls.append(argv[0] if argv[0] != "nft" else " ".join(argv[:3]))
        return real(argv, *a, **kw)

    subprocess.run = traced
    times, cpus = [], []
    try:
        for _ in range(repeat):
            calls.clear()
            t0, c0 = time.perf_counter(), _cpu()
            b = backends.select("auto", (4, 6))
            same = b.current() == b.desired(plan, "enforce")
            assert same and not b.apply(plan, "enforce")
            times.append(time.perf_counter() - t0)
            cpus.append(_cpu() - c0)
    finally:
        subprocess.run = real
    counts: dict[str, int] = {}
    for c in calls:
        counts[c] = counts.get(c, 0) + 1
    print(f"no-op enforce cycle (select + current + apply, IPv4 and IPv6) at {rules} "
          f"iptables-nft rules: {statistics.median(times) * 1000:.0f} ms, CPU "
          f"{statistics.median(cpus) * 1000:.0f} ms (commands included), median of {repeat}")
    print("  commands: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--noop-rules", type=int, default=50_000,
                    help="foreign rules for the no-op cycle (0: skip it)")
    args = ap.parse_args()
    reason = have_netns()
    if reason:
        print(f"bench/apply.py: skipped: {reason}")
        return 0
    try:
        import iptc  # noqa: F401
    except ImportError:
        print("bench/apply.py: skipped: python-iptables is not installed")
        return 0
    plan = make_plan(args.rules)
    n = len(iptables_rule_lines(plan, 4, "enforce"))
    results: dict[str, list[float]] = {"legacy": [], "nft": [], "nftables": [], "pyiptc": []}
    home = os.open("/proc/self/ns/net", os.O_RDONLY)  # to step back out before teardown
    libc = ctypes.CDLL(None, use_errno=True)
    with Lab() as lab:
        try:
            for i in range(args.repeat):
                ns = lab.netns(f"bench{i}")
                setns(ns.name)  # this thread (and the commands it runs) now live in the lab
                for key, backend in (("legacy", IptablesBackend("legacy")),
                                     ("nft", IptablesBackend("nft")),
                                     ("nftables", NftablesBackend())):
                    t0 = time.perf_counter()
                    assert backend.apply(plan, "enforce")
                    results[key].append(time.perf_counter() - t0)
                    assert not backend.apply(plan, "enforce")  # idempotent
                    backend.uninstall()
                results["pyiptc"].append(per_rule_pyiptables(plan))
            if args.noop_rules:
                noop_cycle(lab, plan, args.noop_rules, args.repeat)
        finally:
            libc.setns(home, 0x40000000)  # Lab.close kills whatever is inside its namespaces
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"plan: {len(plan.rules)} rules ({n} iptables lines), median of {args.repeat}")
    print(f"  iptables-legacy-restore (atomic backend): {med['legacy'] * 1000:8.1f} ms")
    print(f"  iptables-nft-restore (atomic backend):    {med['nft'] * 1000:8.1f} ms")
    print(f"  nft -f (nftables backend):                {med['nftables'] * 1000:8.1f} ms")
    print(f"  python-iptables, one insert per rule:     {med['pyiptc'] * 1000:8.1f} ms")
    ratio = med["pyiptc"] / med["legacy"]
    print(f"ratio (per-rule python-iptables / atomic legacy restore): {ratio:.1f}x "
          f"(target >= 20x: {'met' if ratio >= 20 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
