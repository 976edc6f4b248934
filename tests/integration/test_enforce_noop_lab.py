"""The iptables-nft backend's no-op check reads only nodeward's chains and the built-ins
hooking them (`iptables-nft -t mangle -S CHAIN`, one `nft -j list chains`), never a save of
a whole table: on a real namespace its answer equals the full `iptables-nft-save` parse in
every state (nothing, ours, a jump moved, a foreign rule in our chain, leftovers in the old
filter table, IPv6), and a no-op cycle on a 50,000-rule ruleset runs no save at all."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from nodeward.config import Config
from nodeward.enforce import backends
from nodeward.enforce.backends.iptables import (
    IptablesBackend,
    by_chain,
    markers,
    parse_own,
    removal_lines,
)
from nodeward.enforce.plan import Plan, build_plan
from nodeward.enforce.settings import EnforceSettings
from nodeward.enforce.state import RUN_DIR_ENV
from nodeward.model import NodeSnapshot
from tests.lab import setns

pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(not shutil.which("nft") or not shutil.which("iptables-nft"),
                                 reason="needs nft and iptables-nft")]

FAMILIES = (4, 6)


def _plan() -> Plan:
    cfg = Config(node_name="noop", node_cidrs=(ipaddress.ip_network("10.77.0.0/24"),),
                 pod_cidrs=(ipaddress.ip_network("10.244.0.0/16"),), pod_interfaces=("cali*",))
    return build_plan(NodeSnapshot(node="noop", scanned_at=""), cfg.catalog, cfg,
                      EnforceSettings())


def _by_save(b: IptablesBackend, f: int, table: str = "mangle"):
    chains, rules, jumps = parse_own(b.save(f, table=table))
    return sorted(chains), by_chain(rules), jumps


def _by_listing(b: IptablesBackend, f: int, table: str = "mangle"):
    chains, rules, jumps = b.own(f, table)
    return sorted(chains), rules, jumps


def _agree(b: IptablesBackend) -> None:
    for f in FAMILIES:
        for table in ("mangle", "filter"):
            assert _by_listing(b, f, table) == _by_save(b, f, table), (f, table)
        assert b.own_markers(f) == markers(b.save(f))
        assert b._old_removal(f) == removal_lines(b.save(f, table="filter"), "filter")


def _ipt(lab, ns, f: int, *args: str) -> None:
    lab.sh("iptables-nft" if f == 4 else "ip6tables-nft", *args, ns=ns)


def test_own_listing_equals_the_full_save_in_every_state(lab, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path))
    ns = lab.netns("own")
    b = IptablesBackend("nft", FAMILIES)
    plan = _plan()
    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        def check():
            _agree(b)
            return b.current()

        assert pool.submit(check).result(60) == "# ipv4\n# ipv6\n"  # no table at all
        for f in FAMILIES:  # a foreign rule before ours would be
            _ipt(lab, ns, f, "-t", "mangle", "-A", "INPUT", "-p", "tcp", "--dport", "9",
                 "-j", "ACCEPT")
        pool.submit(check).result(60)
        assert pool.submit(b.apply, plan, "enforce").result(60)
        assert pool.submit(check).result(60) == b.desired(plan, "enforce")
        assert not pool.submit(b.apply, plan, "enforce").result(60)  # the no-op

        # Felix-like: a foreign rule inserted before our jump; ours moves to position 2
        _ipt(lab, ns, 4, "-t", "mangle", "-I", "INPUT", "1", "-j", "ACCEPT")
        assert pool.submit(check).result(60) != b.desired(plan, "enforce")
        assert pool.submit(b.apply, plan, "enforce").result(60)  # repaired
        assert pool.submit(check).result(60) == b.desired(plan, "enforce")

        # someone appends to our chain (v6 only), or deletes our FORWARD jump (v4)
        _ipt(lab, ns, 6, "-t", "mangle", "-A", "NODEWARD-INPUT", "-p", "udp", "-j", "DROP")
        _ipt(lab, ns, 4, "-t", "mangle", "-D", "FORWARD", "-m", "comment", "--comment",
             "nodeward", "-j", "NODEWARD-FORWARD")
        assert pool.submit(check).result(60) != b.desired(plan, "enforce")
        assert pool.submit(b.apply, plan, "enforce").result(60)
        assert pool.submit(check).result(60) == b.desired(plan, "enforce")

        # an older version's objects in filter: the no-op check sees them and removes them
        _ipt(lab, ns, 4, "-t", "filter", "-N", "NODEWARD-INPUT")
        _ipt(lab, ns, 4, "-t", "filter", "-A", "NODEWARD-INPUT", "-j", "RETURN")
        _ipt(lab, ns, 4, "-t", "filter", "-I", "INPUT", "1", "-m", "comment", "--comment",
             "nodeward", "-j", "NODEWARD-INPUT")
        pool.submit(check).result(60)
        assert pool.submit(b.apply, plan, "enforce").result(60)
        pool.submit(check).result(60)
        assert ":NODEWARD-" not in pool.submit(b.save, 4, False, "filter").result(60)
        assert not pool.submit(b.apply, plan, "enforce").result(60)

        assert pool.submit(b.uninstall).result(60)
        assert pool.submit(check).result(60) == "# ipv4\n# ipv6\n"


class Trace:
    """Every argv the backends run, through subprocess.run (what backends.run calls)."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[str] = []
        real = subprocess.run

        def traced(argv, *a, **kw):
            self.calls.append(" ".join(argv))
            return real(argv, *a, **kw)

        monkeypatch.setattr(subprocess, "run", traced)


def test_noop_cycle_on_50k_rules_runs_no_save(lab, tmp_path, monkeypatch) -> None:
    from bench.nodeshape import kube_proxy_text

    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path))
    ns = lab.netns("noop50k")
    text = kube_proxy_text(50_000)
    subprocess.run(["ip", "netns", "exec", ns.name, "iptables-nft-restore"], input=text,
                   text=True, check=True, capture_output=True, timeout=300)
    plan = _plan()
    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        def apply():
            return backends.select("auto", FAMILIES).apply(plan, "enforce")

        assert pool.submit(apply).result(120)

        def cycle():
            b = backends.select("auto", FAMILIES)  # what the daemon does every cycle
            t0 = time.perf_counter()
            same = b.current() == b.desired(plan, "enforce")
            changed = b.apply(plan, "enforce")
            return b.name, same, changed, time.perf_counter() - t0

        trace = Trace(monkeypatch)
        name, same, changed, took = pool.submit(cycle).result(120)
        assert name == "iptables-nft" and same and not changed
        # (a legacy table the kernel instantiated is read by `installed()`: it is empty)
        saves = [c for c in trace.calls if c.split()[0].endswith("-nft-save")]
        assert not saves, saves
        assert not any("list tables" in c or "list ruleset" in c or c.endswith(" -S")
                       for c in trace.calls), trace.calls
        assert any(c == "iptables-nft -t mangle -S NODEWARD-INPUT" for c in trace.calls)
        print(f"no-op cycle at 50k rules: {took * 1000:.0f} ms, {len(trace.calls)} commands")

        # and the cheap check still sees drift: a removed jump is put back
        lab.sh("iptables-nft", "-t", "mangle", "-D", "INPUT", "-m", "comment", "--comment",
               "nodeward", "-j", "NODEWARD-INPUT", ns=ns)
        assert pool.submit(cycle).result(120)[1:3] == (False, True)
        assert pool.submit(cycle).result(120)[1:3] == (True, False)
