"""The per-chain native nf_tables read (collect/nftsplice.py) against the real thing: a real
namespace holding kube-proxy's nftables-mode table (bench/nodeshape.kube_proxy_nft_text)
and an operator's `inet host` table, seeded random steps through the real `nft` (kube-proxy
partial syncs: new endpoint chains, service chains flushed and refilled with new numgen
vmaps, stale chains flushed then deleted, service-ips / no-endpoint-services elements moved;
chains added and deleted; named sets created, filled, emptied, deleted; anonymous sets
added to a chain that is later re-read; a base chain's policy; counters reset; a new
table), and after every step the spliced model must equal a fresh full netlink read
exactly (chains in order, every Rule, every set) and the model built from
`nft -s -j list table` (what tests/lab/nftnl_compare.py compares). Most steps must be
spliced, not read in full; and a splice that ignores set events must be caught."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nodeward.collect import nftnl, nftsplice
from nodeward.collect.iptsplice import NftSaves
from nodeward.collect.nfgen import list_tables
from nodeward.ruleset.nft import parse_nft_json
from tests.lab import setns

pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(not shutil.which("nft"), reason="needs nft")]

ROOT = Path(__file__).resolve().parents[2]
RULES = 700  # ~110 services
KP = ("ip", "kube-proxy")


def _model_diffs(label: str, got: nftnl.TableRead, fresh: nftnl.TableRead,
                 ref: tuple) -> list[str]:
    """What differs between the spliced read, a fresh netlink read and nft -j's model."""
    sys.path.insert(0, str(ROOT))
    from tests.lab.nftnl_compare import _m, _vmap

    out = []
    (t,), (f,) = got.tables, fresh.tables
    if list(t.chains) != list(f.chains):
        out.append(f"{label}: chains differ from a fresh read: "
                   f"{sorted(set(t.chains) ^ set(f.chains))[:6]} (or their order)")
    for name, c in f.chains.items():
        if t.chains.get(name) != c:
            out.append(f"{label}: chain {name} differs from a fresh read")
    if got.sets != fresh.sets:
        out.append(f"{label}: sets differ from a fresh read: "
                   f"{[k for k in fresh.sets if got.sets.get(k) != fresh.sets[k]]}")
    if got.rules != fresh.rules:
        out.append(f"{label}: {got.rules} rules counted, a fresh read {fresh.rules}")
    (rt,), rsets = ref
    if set(rt.chains) != set(t.chains):
        out.append(f"{label}: chains differ from nft -j")
    for name, rc in rt.chains.items():
        oc = t.chains.get(name)
        if oc is None:
            continue
        if (rc.policy, rc.hook, rc.priority) != (oc.policy, oc.hook, oc.priority) or \
                [(r.target, r.arg, _m(r), r.effects, _vmap(r.vmap)) for r in rc.rules] != \
                [(r.target, r.arg, _m(r), r.effects, _vmap(r.vmap)) for r in oc.rules]:
            out.append(f"{label}: chain {name} differs from nft -j")
    for key, s in rsets.items():
        o = got.sets.get(key)
        if o is None or (s.type, sorted(s.members), sorted(s.elements), s.keyed) != \
                (o.type, sorted(o.members), sorted(o.elements), o.keyed):
            out.append(f"{label}: set {key} differs from nft -j")
    if set(rsets) != set(got.sets):
        out.append(f"{label}: set names differ from nft -j")
    return out


class Steps:
    """Seeded kube-proxy-like and operator writes, through the real nft."""

    def __init__(self, lab, ns, rnd: random.Random) -> None:
        from bench.nodeshape import kube_proxy_nft_churn

        self.lab, self.ns, self.rnd = lab, ns, rnd
        self.syncs = kube_proxy_nft_churn(RULES, seed=rnd.randrange(1 << 30))
        self.n = 0
        self.extra: list[str] = []  # chains this test added
        self.sets: list[str] = []

    def nft(self, script: str) -> None:
        r = subprocess.run(["ip", "netns", "exec", self.ns.name, "nft", "-f", "-"],
                           input=script, text=True, capture_output=True, timeout=60)
        assert r.returncode == 0, f"nft: {r.stderr.strip()}\n{script[:1500]}"

    def step(self, kind: str = "") -> str:
        self.n += 1
        kind = kind or self.rnd.choice(["sync"] * 5 + ["chain+", "chain-", "set", "anon",
                                                       "policy", "element", "counters"])
        k = "ip kube-proxy"
        if kind == "sync":
            txns = next(self.syncs)
            for t in txns:
                self.nft(t)
            return f"kube-proxy sync ({len(txns)} transactions)"
        if kind == "chain+" or (kind == "chain-" and not self.extra):
            c = f"extra-{self.n}"
            self.nft(f"add chain {k} {c}\nadd rule {k} {c} tcp dport {1000 + self.n} drop\n"
                     f"add rule {k} services jump {c}\n")
            self.extra.append(c)
            return f"chain {c} added, jumped to from services"
        if kind == "chain-":
            c = self.extra.pop(self.rnd.randrange(len(self.extra)))
            h = subprocess.run(["ip", "netns", "exec", self.ns.name, "nft", "-a", "list",
                                "chain", "ip", "kube-proxy", "services"], capture_output=True,
                               text=True, check=True).stdout
            handle = next(x.rsplit(" ", 1)[1] for x in h.splitlines() if f"jump {c} " in
                          x + " ")
            self.nft(f"delete rule {k} services handle {handle}\ndelete chain {k} {c}\n")
            return f"chain {c} deleted"
        if kind == "set":
            if self.sets and self.rnd.random() < 0.4:
                s = self.sets.pop()
                self.nft(f"flush set {k} {s}\ndelete set {k} {s}\n")
                return f"set {s} deleted"
            s = self.sets[-1] if self.sets and self.rnd.random() < 0.5 else f"allow-{self.n}"
            if s not in self.sets:
                self.nft(f"add set {k} {s} {{ type ipv4_addr ; flags interval ; }}\n")
                self.sets.append(s)
            self.nft(f"add element {k} {s} {{ 10.{self.n % 250}.0.0/16, "
                     f"192.168.{self.n % 250}.7 }}\n")
            return f"elements into set {s}"
        if kind == "anon":
            self.nft(f"add rule {k} filter-input ip saddr {{ 10.9.{self.n % 250}.1, "
                     f"10.9.{self.n % 250}.2 }} tcp dport {{ 22, {2000 + self.n} }} drop\n")
            return "a rule with anonymous sets appended to filter-input"
        if kind == "policy":
            pol = self.rnd.choice(["drop", "accept"])
            self.nft(f"chain inet host input {{ policy {pol} ; }}\n")
            return f"inet host input policy {pol}"
        if kind == "element":
            ip = f"10.97.{self.n % 250}.{self.rnd.randrange(1, 250)}"
            self.nft(f"add element {k} service-ips {{ {ip} . tcp . 443 : goto reject-chain }}\n"
                     f"add element {k} cluster-ips {{ {ip} }}\n")
            return f"service-ips / cluster-ips element {ip} added"
        self.nft("reset counters\n" if self.rnd.random() < 0.5 else
                 f"add rule {k} filter-input counter\n")
        return "counters"


def _run(lab, steps_n: int, seed: int, broken: bool = False) -> tuple[list[str], int, int]:
    from bench.nodeshape import kube_proxy_nft_text

    ns = lab.netns("nftsplice")
    r = subprocess.run(["ip", "netns", "exec", ns.name, "nft", "-f", "-"],
                       input=kube_proxy_nft_text(RULES), text=True, capture_output=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    steps = Steps(lab, ns, random.Random(seed))
    saves = NftSaves()
    native = nftsplice.NativeTables()

    def read(label: str) -> list[str]:
        saves.begin()
        changes = saves.changes
        if broken and changes is not None:  # the deliberately broken splice: no set events
            changes = {c for c in changes if c[1] != "set"}
        diffs = []
        listed = [t for t in list_tables() or [] if t[0] in ("ip", "ip6", "inet")]
        native.retain(listed)
        for fam, name in listed:
            got = native.read(fam, name, 10**6, changes, saves.plan_gen)
            assert isinstance(got, nftnl.TableRead), got
            fresh = nftnl.read_table(fam, name)
            text = subprocess.run(["nft", "-s", "-j", "list", "table", fam, name],
                                  capture_output=True, text=True, check=True).stdout
            diffs += _model_diffs(f"{label}: {fam} {name}", got, fresh,
                                  parse_nft_json(text, source="nft -j"))
        return diffs

    diffs: list[str] = []
    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        diffs += pool.submit(read, "first read").result(60)
        fulls = native.full_reads
        for n in range(steps_n):
            what = steps.step()
            diffs += pool.submit(read, f"step {n}: {what}").result(60)
        what = steps.step("element")
        diffs += pool.submit(read, f"last step: {what}").result(60)
        loop_fulls = native.full_reads - fulls
        # a new table is read in full (nothing kept), and the others still splice
        steps.nft("add table ip extra\nadd chain ip extra c\nadd rule ip extra c drop\n")
        diffs += pool.submit(read, "a new table").result(60)
        # a table event (its comment changed) cannot be spliced: read in full
        before = native.full_reads
        steps.nft("delete table ip extra\nadd table ip extra\nadd chain ip extra c\n")
        diffs += pool.submit(read, "a table deleted and made again").result(60)
        if not broken:
            assert native.full_reads > before, "a table event was spliced"
    saves.close()
    print("not spliced:", native.why)
    return diffs, native.splices, loop_fulls


def test_spliced_native_read_equals_fresh_read_and_nft_j(lab, monkeypatch) -> None:
    monkeypatch.setattr(nftsplice, "CHUNK", 16)  # re-read maps are modelled a slice at a time
    diffs, spliced, fulls = _run(lab, 36, seed=2217)
    assert not diffs, "\n".join(diffs[:20])
    assert spliced >= 30 and fulls <= 2, f"{spliced} table reads spliced, {fulls} full"


def test_a_splice_that_ignores_set_events_is_caught(lab) -> None:
    diffs, _s, _f = _run(lab, 10, seed=99, broken=True)
    assert any("set" in d for d in diffs), "the broken splice went unnoticed"


@pytest.mark.skipif(not shutil.which("iptables-nft"), reason="needs iptables-nft")
def test_a_native_write_during_the_iptables_read_reaches_the_native_splice(lab) -> None:
    """kube-proxy (nftables mode) syncs while the iptables-nft part is re-read: the
    iptables splice takes the transactions committed meanwhile to read its chains again;
    the native tables, read after it, must see those transactions' changes too (a native
    change lost there stays invisible until its chain is written again)."""
    from bench.nodeshape import kube_proxy_nft_text

    from nodeward.collect.ruleset import run_local
    from nodeward.ruleset.iptables import parse_iptables_save

    ns = lab.netns("nftsplice-race")
    steps = Steps(lab, ns, random.Random(5))
    steps.nft(kube_proxy_nft_text(RULES))
    lab.sh("iptables-nft", "-N", "KUBE-FIREWALL", ns=ns)
    saves, native = NftSaves(), nftsplice.NativeTables()
    ip = "10.97.200.9"
    wrote: list[str] = []

    def run(argv):  # the -S read of the iptables chain: kube-proxy writes meanwhile
        if "-S" in argv and not wrote:
            steps.nft(f"add element ip kube-proxy service-ips {{ {ip} . tcp . 443 : "
                      "goto reject-chain }\n")
            wrote.append(ip)
        return run_local(argv)

    def cycle() -> list[str]:
        saves.begin()
        got = saves.read(4, lambda: run_local(["iptables-nft-save"], lines=True), run)
        saves.parsed(4, parse_iptables_save(got, frontend="iptables-nft", family=4))
        out = native.read(*KP, 10**6, saves.changes, saves.plan_gen)
        fresh = nftnl.read_table(*KP)
        text = subprocess.run(["nft", "-s", "-j", "list", "table", *KP],
                              capture_output=True, text=True, check=True).stdout
        return _model_diffs("cycle", out, fresh, parse_nft_json(text, source="nft -j"))

    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        assert pool.submit(cycle).result(60) == []
        lab.sh("iptables-nft", "-A", "KUBE-FIREWALL", "-p", "tcp", "--dport", "1", "-j",
               "DROP", ns=ns)
        diffs = pool.submit(cycle).result(60)
    saves.close()
    assert wrote, "the iptables read did not re-read a chain (no -S): nothing was tested"
    assert not diffs, "\n".join(diffs[:10])
    assert native.splices >= 1, native.why


def test_a_set_deleted_during_the_full_read_is_read_again_not_given_up(lab, monkeypatch) -> None:
    """kube-proxy flushes a service chain while the table is read: the numgen vmap bound to
    its rule (an anonymous set) goes with it, between the set listing and the dump of its
    elements, and that dump answers ENOENT. A write raced the read: it must be read again
    (and equal a fresh read), not given up (the caller then ran `nft -j`: 370 MB)."""
    from bench.nodeshape import kube_proxy_nft_text

    from nodeward.collect.nfgen import DumpVanished

    ns = lab.netns("nftsplice-gone")
    steps = Steps(lab, ns, random.Random(7))
    steps.nft(kube_proxy_nft_text(RULES))
    real = nftnl.fetch_elems
    seen: list[str] = []

    def fetch_elems(sk, fam, tname, info, h):
        if info.anonymous and not seen:
            seen.append(info.name)  # every rule goes, and the anonymous sets bound to them
            steps.nft("flush table ip kube-proxy\n")
        try:
            return real(sk, fam, tname, info, h)
        except DumpVanished:
            seen.append("ENOENT")
            raise

    monkeypatch.setattr(nftnl, "fetch_elems", fetch_elems)
    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        got = pool.submit(nftnl.read_table, *KP).result(60)
        monkeypatch.setattr(nftnl, "fetch_elems", real)
        fresh = pool.submit(nftnl.read_table, *KP).result(60)
        text = pool.submit(lambda: subprocess.run(
            ["nft", "-s", "-j", "list", "table", *KP], capture_output=True, text=True,
            check=True).stdout).result(60)
    assert "ENOENT" in seen, f"the set did not vanish mid-read: {seen}"
    assert got.rules == 0 < len(got.sets), (got.rules, list(got.sets))
    diffs = _model_diffs("re-read", got, fresh, parse_nft_json(text, source="nft -j"))
    assert not diffs, "\n".join(diffs[:10])


def test_native_churn_frees_what_it_supersedes_and_keeps_no_copies(lab) -> None:
    """Memory under kube-proxy's churn, through the real nft: after each sync is spliced in
    and the verdict memo has seen the new ruleset, every superseded chain and set is
    garbage (weak references die), the memo holds the live sets only, and what the splice
    keeps holds no second copy of what the model already has: the table's keys are its
    chains' own names, a re-read map shares its unchanged elements with the last one, and
    the memo's chain signatures of unchanged chains are the last scan's objects (new ones
    a cycle, made beside the live ones, left pymalloc's arenas half used: the daemon's
    RSS grew ~15 MB over churn cycles)."""
    import gc
    import weakref

    from bench.nodeshape import kube_proxy_nft_text

    from nodeward.model import Socket
    from nodeward.ruleset import Ruleset
    from nodeward.ruleset.reach import ReachMemo, reachability

    ns = lab.netns("nftsplice-mem")
    steps = Steps(lab, ns, random.Random(11))
    steps.nft(kube_proxy_nft_text(RULES))
    saves, native, memo = NftSaves(), nftsplice.NativeTables(), ReachMemo()
    sockets = [Socket("tcp", 4, "0.0.0.0", p, i, 0) for i, p in enumerate((22, 80, 30002), 1)]

    def cycle(n: int) -> Ruleset:
        saves.begin()
        got = native.read(*KP, 10**6, saves.changes, saves.plan_gen)
        assert isinstance(got, nftnl.TableRead), got
        rs = Ruleset(got.tables, got.sets, fingerprint=f"{got.digest}")
        reachability(sockets, rs, node_addresses=["10.0.1.5"], node_cidrs=["10.0.0.0/16"],
                     pod_cidrs=["10.244.0.0/16"], memo=memo)
        return rs

    shared = sets_reread = 0
    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        held = [pool.submit(cycle, 0).result(60)]  # the one ruleset this test holds
        for n in range(1, 9):
            (table,) = held[0].tables
            seen = [weakref.ref(c) for c in table.chains.values()]
            old_sets = dict(held[0].sets)
            seen_sets = [weakref.ref(s) for s in held[0].sets.values()]
            old_sigs = dict(memo.chains[("nft", "ip", "kube-proxy")])
            del table
            steps.step("sync")
            new = pool.submit(cycle, n).result(60)
            held[0] = new
            (table,) = new.tables
            for key, s in new.sets.items():
                was = old_sets.get(key)
                if was is not None and s is not was and len(s.elements) > 10:
                    sets_reread += 1
                    mine = {id(e) for e in was.elements}
                    shared += sum(id(e) in mine for e in s.elements)
                    assert sum(id(e) not in mine for e in s.elements) <= 3, \
                        f"sync {n}: {key}: the unchanged elements were made again"
            del old_sets, was
            gc.collect()
            live = {id(c) for c in table.chains.values()} | {id(s) for s in new.sets.values()}
            stray = [x for r in seen + seen_sets if (x := r()) is not None and id(x) not in live]
            assert not stray, f"sync {n}: {len(stray)} superseded chains or sets alive"
            assert memo.sets is new.sets, f"sync {n}: the memo holds other sets"
            dup = [k for k, c in table.chains.items() if k is not c.name]
            assert not dup, f"sync {n}: {len(dup)} chain names held twice (e.g. {dup[:3]})"
            sigs = memo.chains[("nft", "ip", "kube-proxy")]
            same = [k for k, c in table.chains.items() if old_sigs.get(k) == sigs[k]]
            assert same and all(sigs[k] is old_sigs[k] for k in same), f"sync {n}: new ints"
            del seen, seen_sets, old_sigs, table, live, new, stray
    saves.close()
    assert native.splices >= 8 and native.full_reads == 1, (native.splices, native.why)
    assert sets_reread >= 2 and shared > 100, (sets_reread, shared)


def test_a_write_during_the_native_splice_is_spliced_again_not_read_in_full(lab,
                                                                          monkeypatch) -> None:
    """kube-proxy syncs while its table is spliced (at scale it syncs every second): the
    splice takes the transactions committed meanwhile and splices again from the kept
    model, with no full read (those were the churn's memory and CPU spikes), equal to a
    fresh read and to nft -j. A native table read earlier in the cycle that the racing
    write touched is not spliced on next cycle from a model older than the generation that
    cycle starts from: it is read again, and equals a fresh read."""
    from bench.nodeshape import kube_proxy_nft_text

    from nodeward.collect.ruleset import LIVE, ParseCache, collect_ruleset, run_local

    ns = lab.netns("nftsplice-retry")
    steps = Steps(lab, ns, random.Random(11))
    host = ("inet", "host")  # listed before kube-proxy: read first in a cycle
    steps.nft("add table inet host\nadd chain inet host input { type filter hook input "
              "priority 0 ; policy accept ; }\nadd rule inet host input tcp dport 22 accept\n")
    steps.nft(kube_proxy_nft_text(RULES))
    real = nftsplice.decode_rule
    raced: list[str] = []

    def decode_rule(family, name, *a, **kw):
        if name == KP[1] and armed and not raced:  # kube-proxy's splice: writes meanwhile
            raced.append("wrote")
            steps.nft("add rule inet host input tcp dport 2222 drop\n"
                      f"add element {KP[0]} {KP[1]} service-ips {{ 10.97.201.9 . tcp . 443 "
                      ": goto reject-chain }\n")
        return real(family, name, *a, **kw)

    monkeypatch.setattr(nftsplice, "decode_rule", decode_rule)
    cache = ParseCache()

    def cycle(keys=(host, KP)) -> list[str]:
        rs = collect_ruleset(run_local, cache, probes=LIVE)
        diffs = []
        for key in keys:
            (t,) = [t for t in rs.tables if t.frontend == "nft" and (t.family, t.name) == key]
            prefix = f"nft:{key[0]}:{key[1]}:"
            got = nftnl.TableRead((t,), {k: v for k, v in rs.sets.items()
                                         if k.startswith(prefix)},
                                  sum(len(c.rules) for c in t.chains.values()), "", {})
            fresh = nftnl.read_table(*key)
            text = subprocess.run(["nft", "-s", "-j", "list", "table", *key],
                                  capture_output=True, text=True, check=True).stdout
            diffs += _model_diffs(f"{key}", got, fresh, parse_nft_json(text, source="nft -j"))
        return diffs

    armed = False
    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        assert pool.submit(cycle).result(60) == []
        native = cache.nft_native
        fulls = native.full_reads
        steps.step("sync")
        armed = True
        # (inet host was read before kube-proxy's splice, and so before the write)
        diffs = pool.submit(cycle, (KP,)).result(60)
        assert raced, "kube-proxy's table was not spliced: nothing was tested"
        assert not diffs, "\n".join(diffs[:10])
        assert native.retries >= 1 and native.full_reads == fulls, (native.why, native.retries)
        diffs = pool.submit(cycle).result(60)  # inet host: its kept model is stale
    cache.nft_saves.close()
    assert not diffs, "\n".join(diffs[:10])
    assert native.full_reads == fulls + 1, native.why  # inet host read again, kube-proxy not


def test_a_chain_created_while_the_chains_are_listed_is_a_race_not_a_full_read(
        lab, monkeypatch) -> None:
    """kube-proxy creates an endpoint chain after the splice took its generation id and
    before it lists the table's chains: the listing shows a chain no event named. That is
    a write during the read (spliced again on top of it), not a reason to read 50,000
    rules in full (what a 150-minute churn bench did 4 times, each a memory peak)."""
    from bench.nodeshape import kube_proxy_nft_text

    from nodeward.collect.ruleset import LIVE, ParseCache, collect_ruleset, run_local

    ns = lab.netns("nftsplice-list")
    steps = Steps(lab, ns, random.Random(12))
    steps.nft(kube_proxy_nft_text(RULES))
    real = nftsplice.DumpSocket
    wrote: list[str] = []

    def dump_socket(timeout):
        if armed and not wrote:  # after the generation id, before the listing
            wrote.append("chain")
            steps.nft(f"add chain {KP[0]} {KP[1]} endpoint-NEW-raced\n")
        return real(timeout)

    monkeypatch.setattr(nftsplice, "DumpSocket", dump_socket)
    cache = ParseCache()
    armed = False
    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        pool.submit(collect_ruleset, run_local, cache, probes=LIVE).result(60)
        native = cache.nft_native
        fulls = native.full_reads
        steps.step("chain+")  # a chain event: the splice lists the table's chains
        armed = True
        rs = pool.submit(collect_ruleset, run_local, cache, probes=LIVE).result(60)
        fresh = pool.submit(nftnl.read_table, *KP).result(60)
    cache.nft_saves.close()
    assert wrote, "the splice opened no dump socket: nothing was tested"
    assert native.full_reads == fulls, native.why
    assert native.retries >= 1, native.why
    (t,) = [t for t in rs.tables if t.frontend == "nft" and (t.family, t.name) == KP]
    assert "endpoint-NEW-raced" in t.chains
    assert list(t.chains) == list(fresh.tables[0].chains)
