"""The per-chain iptables-nft read (collect/iptsplice.py) against the real thing: on a real
namespace, random kube-proxy-like churn through iptables-nft-restore and iptables-nft (new
and deleted KUBE-SEP chains, a rewritten KUBE-SVC chain, policy changes, flushes, renames,
IPv6 too), and after every step the spliced text must equal a fresh full
`iptables-nft-save` exactly (comment lines and counters aside). Steps the splice cannot
prove (a new table) must fall back to a full save, and most steps must not."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from nodeward.collect import nfgen
from nodeward.collect.iptsplice import NftSaves
from nodeward.collect.ruleset import LIVE, ParseCache, collect_ruleset, run_local
from nodeward.ruleset.iptables import parse_iptables_save
from tests.lab import setns

pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(not shutil.which("iptables-nft"), reason="needs iptables-nft")]

SERVICES = 60
_COUNTERS = re.compile(r" \[\d+:\d+\]$")


def _base(v6: bool) -> str:
    net = "fd00:96::" if v6 else "10.96.0."
    pod = "fd00:244::" if v6 else "10.244.0."
    plen = 128 if v6 else 32
    nat = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
           ":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-MARK-MASQ - [0:0]",
           '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
           "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"]
    for i in range(SERVICES):
        svc, sep = f"KUBE-SVC-{i:016X}", f"KUBE-SEP-{i:08X}00000000"
        nat[6:6] = [f":{svc} - [0:0]", f":{sep} - [0:0]"]
        nat += [f'-A KUBE-SERVICES -d {net}{i + 1}/{plen} -p tcp -m comment --comment '
                f'"ns/svc{i}:http cluster IP" -m tcp --dport 80 -j {svc}',
                f"-A {svc} -m statistic --mode random --probability 0.50000000000 -j {sep}",
                f"-A {sep} -s {pod}{i + 1}/{plen} -j KUBE-MARK-MASQ",
                f"-A {sep} -p tcp -m tcp -j DNAT --to-destination "
                f"{'[' + pod + str(i + 1) + ']' if v6 else pod + str(i + 1)}:8080"]
    filt = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            ":KUBE-FIREWALL - [0:0]", "-A INPUT -j KUBE-FIREWALL",
            "-A KUBE-FIREWALL -p tcp -m tcp --dport 10250 -j DROP"]
    return "\n".join([*nat, "COMMIT", *filt, "COMMIT"]) + "\n"


def _norm(lines) -> list[str]:
    return [_COUNTERS.sub(" [0:0]", x) for x in lines if x and not x.startswith("#")]


class Churn:
    """kube-proxy-like writes, through the real tools, into one namespace."""

    def __init__(self, lab, ns, rnd: random.Random) -> None:
        self.lab, self.ns, self.rnd = lab, ns, rnd
        self.seps = {4: {i: [f"KUBE-SEP-{i:08X}00000000"] for i in range(SERVICES)},
                     6: {i: [f"KUBE-SEP-{i:08X}00000000"] for i in range(SERVICES)}}
        self.n = 0

    def restore(self, fam: int, text: str) -> None:
        tool = "iptables-nft-restore" if fam == 4 else "ip6tables-nft-restore"
        r = subprocess.run(["ip", "netns", "exec", self.ns.name, tool, "--noflush"],
                           input=text, text=True, capture_output=True, timeout=60)
        assert r.returncode == 0, f"{tool}: {r.stderr.strip()}\n{text[:2000]}"

    def ipt(self, fam: int, *args: str) -> None:
        self.lab.sh("iptables-nft" if fam == 4 else "ip6tables-nft", *args, ns=self.ns)

    def endpoints(self, fam: int) -> str:
        """kube-proxy >= 1.28 partial sync: a service's endpoints change, so new KUBE-SEP
        chains, its KUBE-SVC chain rewritten, the old KUBE-SEP chains deleted."""
        self.n += 1
        i = self.rnd.randrange(SERVICES)
        svc = f"KUBE-SVC-{i:016X}"
        old = self.seps[fam][i]
        new = [f"KUBE-SEP-{i:08X}{self.n:04X}{k:04X}" for k in range(self.rnd.randint(0, 3))]
        pod = "fd00:245::" if fam == 6 else "10.245.0."
        # as kube-proxy does: the stale chains are declared (flushed) and then deleted
        lines = ["*nat", f":{svc} - [0:0]", *(f":{s} - [0:0]" for s in [*new, *old])]
        for k, s in enumerate(new):
            addr = f"{pod}{self.n % 250 + k + 1}"
            lines += [f"-A {svc} -m comment --comment \"ns/svc{i}:http -> {addr}\" -j {s}",
                      f"-A {s} -p tcp -m tcp -j DNAT --to-destination "
                      f"{'[' + addr + ']' if fam == 6 else addr}:8080"]
        lines += [f"-X {s}" for s in old]
        self.restore(fam, "\n".join([*lines, "COMMIT"]) + "\n")
        self.seps[fam][i] = new
        return f"endpoints of svc{i} (v{fam}): {len(old)} -> {len(new)}"

    def step(self) -> str:
        fam = self.rnd.choice((4, 4, 6))
        kind = self.rnd.choice(["endpoints"] * 4 + ["policy", "flush", "rename", "append",
                                                    "insert", "delete", "services", "zero"])
        if kind == "endpoints":
            return self.endpoints(fam)
        if kind == "policy":
            chain, pol = self.rnd.choice(["INPUT", "FORWARD"]), self.rnd.choice(["DROP",
                                                                              "ACCEPT"])
            self.ipt(fam, "-P", chain, pol)
            return f"policy {chain} {pol} (v{fam})"
        if kind == "flush":
            self.ipt(fam, "-F", "KUBE-FIREWALL")
            return f"flush KUBE-FIREWALL (v{fam})"
        if kind == "rename":
            name = f"KUBE-TMP-{self.n}"
            self.n += 1
            self.ipt(fam, "-N", name)
            self.ipt(fam, "-A", name, "-j", "RETURN")
            new = f"KUBE-REN-{self.n}"
            self.ipt(fam, "-E", name, new)
            self.ipt(fam, "-A", "INPUT", "-j", new)
            return f"rename {name} -> {new} (v{fam})"
        if kind == "append":
            self.ipt(fam, "-A", "KUBE-FIREWALL", "-p", "udp", "--dport",
                     str(self.rnd.randrange(1, 65535)), "-m", "comment", "--comment",
                     "a \"quoted\" comment", "-j", "REJECT")
            return f"append to KUBE-FIREWALL (v{fam})"
        if kind == "insert":
            self.ipt(fam, "-t", "nat", "-I", "KUBE-SERVICES", "1", "-p", "udp", "-j",
                     "RETURN")
            return f"insert at the head of nat KUBE-SERVICES (v{fam})"
        if kind == "delete":
            self.ipt(fam, "-t", "nat", "-D", "KUBE-SERVICES", str(self.rnd.randint(1, 5)))
            return f"delete from nat KUBE-SERVICES (v{fam})"
        if kind == "services":  # the chain kube-proxy rewrites whole on every sync
            rules = self.lab.sh("iptables-nft" if fam == 4 else "ip6tables-nft", "-t", "nat",
                                "-S", "KUBE-SERVICES", ns=self.ns).stdout.splitlines()[1:]
            self.rnd.shuffle(rules)
            self.restore(fam, "\n".join(["*nat", ":KUBE-SERVICES - [0:0]", *rules,
                                         "COMMIT"]) + "\n")
            return f"rewrite nat KUBE-SERVICES (v{fam})"
        self.ipt(fam, "-Z")  # counters only: nothing to read again
        return f"zero counters (v{fam})"


def test_spliced_read_equals_full_save_under_churn(lab) -> None:
    ns = lab.netns("splice")
    rnd = random.Random(1717)
    churn = Churn(lab, ns, rnd)
    churn.restore(4, _base(False))
    have6 = shutil.which("ip6tables-nft-restore") is not None
    if have6:
        churn.restore(6, _base(True))
    saves = NftSaves()
    fams = (4, 6) if have6 else (4,)

    def read_both(run=run_local):
        saves.begin()
        out = {}
        for f in fams:
            cmd = "iptables-nft-save" if f == 4 else "ip6tables-nft-save"
            out[f] = saves.read(f, lambda c=cmd: run_local([c], lines=True), run)
            # as the collector does: the next splice lays its re-read chains over the parse
            saves.parsed(f, parse_iptables_save(out[f], frontend="iptables-nft", family=f))
        full = {f: run_local(["iptables-nft-save" if f == 4 else "ip6tables-nft-save"],
                             lines=True) for f in fams}
        return out, full, nfgen.generation_id()

    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        pool.submit(read_both).result(60)
        assert saves.full_reads == len(fams)
        spliced = 0
        for n in range(40):
            what = churn.step()
            fulls = saves.full_reads
            got, full, _g = pool.submit(read_both).result(60)
            for f in fams:
                assert _norm(got[f]) == _norm(full[f]), f"step {n}: {what}: v{f} differs"
            spliced += saves.full_reads == fulls
        # a write while it reads (kube-proxy syncing meanwhile): the chains that write
        # touched are read again on top, with no full save, and the text is what a save
        # after the write prints
        churn.endpoints(4)
        wrote: list[str] = []

        def racing(argv):
            if not wrote:
                wrote.append(churn.endpoints(4))
            return run_local(argv)

        fulls = saves.full_reads
        got, full, _g = pool.submit(read_both, racing).result(60)
        assert wrote and saves.full_reads == fulls, "a write during the read: saved in full"
        for f in fams:
            assert _norm(got[f]) == _norm(full[f]), f"v{f} differs after a write during the read"
        # a full rewrite (kube-proxy's full sync) is too many changes to follow: the watch
        # gives up, the next read saves in full, and the one after splices again
        import nodeward.collect.nfchanges as nc

        saved, nc.MAX_CHANGES = nc.MAX_CHANGES, 50
        try:
            churn.restore(4, _base(False).replace("10250", "10251"))
            fulls = saves.full_reads
            got, full, _g = pool.submit(read_both).result(60)
        finally:
            nc.MAX_CHANGES = saved
        assert _norm(got[4]) == _norm(full[4]) and saves.full_reads == fulls + len(fams)
        churn.endpoints(4)
        fulls = saves.full_reads
        got, full, _g = pool.submit(read_both).result(60)
        assert _norm(got[4]) == _norm(full[4]) and saves.full_reads == fulls
        # a new table cannot be spliced: saved in full, and still equal
        churn.ipt(4, "-t", "raw", "-A", "PREROUTING", "-j", "ACCEPT")
        fulls = saves.full_reads
        got, full, _g = pool.submit(read_both).result(60)
        assert _norm(got[4]) == _norm(full[4]) and saves.full_reads == fulls + 1
        # and a table deleted behind iptables' back
        lab.sh("nft", "delete", "table", "ip", "raw", ns=ns) if shutil.which("nft") else None
        got, full, _g = pool.submit(read_both).result(60)
        assert _norm(got[4]) == _norm(full[4])
    saves.close()
    assert spliced >= 30, f"only {spliced} of 40 steps were spliced"
    assert saves.chain_reads > 0


def test_collector_reads_changed_chains_only(lab) -> None:
    """Through collect_ruleset, as the daemon runs it: after one full save, an endpoint
    change is read with `-S` of the chains it touched, no save, and the parsed ruleset is
    the one a fresh collector (full save) gives."""
    ns = lab.netns("splicecoll")
    churn = Churn(lab, ns, random.Random(7))
    churn.restore(4, _base(False))
    cache = ParseCache()
    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        def read(c):
            import nodeward.collect.iptsplice as sp

            calls: list[str] = []
            real, lines = sp.NftSaves._chain, sp.Rendered.__getitem__

            def chain(self, family, table, chain, t, run):
                calls.append(f"-S {table} {chain}")
                return real(self, family, table, chain, t, run)

            def line(self, k):  # the splice's rule lines the parse reads one by one
                got = lines(self, k)
                if isinstance(got, str) and got.startswith("-A "):
                    calls.append("line")
                return got
            sp.NftSaves._chain, sp.Rendered.__getitem__ = chain, line
            try:
                rs = collect_ruleset(run_local, c, probes=LIVE)
            finally:
                sp.NftSaves._chain, sp.Rendered.__getitem__ = real, lines
            return rs, calls

        pool.submit(read, cache).result(60)
        assert cache.nft_saves is not None and cache.nft_saves.full_reads >= 1
        fulls = cache.nft_saves.full_reads
        churn.endpoints(4)
        rs, calls = pool.submit(read, cache).result(60)
        assert cache.nft_saves.full_reads == fulls, "an endpoint change was saved in full"
        assert any(c.startswith("-S nat KUBE-SVC-") for c in calls), calls
        # the unchanged chains were taken whole: their rules' lines not read (nor unpacked)
        rules = sum(len(c.rules) for t in rs.tables if t.frontend == "iptables-nft"
                    for c in t.chains.values())
        assert calls.count("line") < rules // 4, (calls.count("line"), rules)
        fresh, _ = pool.submit(read, ParseCache()).result(60)
    assert rs.fingerprint == fresh.fingerprint
    def shape(r):
        return {(t.family, t.name): {n: (c.policy, c.rule_texts())
                                     for n, c in t.chains.items()} for t in r.tables}

    assert shape(rs) == shape(fresh)


@pytest.mark.skipif(not shutil.which("ipset") or not shutil.which("nft"),
                    reason="needs ipset and nft")
def test_set_contents_are_never_stale(lab) -> None:
    """What a rule's set holds changes verdicts without any rule changing: an ipset (not
    nf_tables: no generation id, no event) is read every cycle, so an `ipset add` or an
    `ipset swap` (kube-proxy's and Calico's way to replace a set's content) shows in the
    next read while nf_tables is not read again; an nft set element bumps the generation
    id, so its table is listed again."""
    ns = lab.netns("splicesets")
    lab.sh("ipset", "create", "allowed", "hash:ip", ns=ns)
    lab.sh("ipset", "add", "allowed", "10.1.1.1", ns=ns)
    lab.sh("ipset", "create", "staged", "hash:ip", ns=ns)
    lab.sh("ipset", "add", "staged", "10.2.2.2", ns=ns)
    lab.sh("iptables-nft", "-A", "INPUT", "-m", "set", "--match-set", "allowed", "src",
           "-j", "ACCEPT", ns=ns)
    lab.sh("nft", "add table inet mine; add set inet mine peers { type ipv4_addr; }; "
           "add chain inet mine c { type filter hook input priority 10; }; "
           "add rule inet mine c ip saddr @peers accept", ns=ns)
    cache = ParseCache()
    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        def read():
            rs = collect_ruleset(run_local, cache, probes=LIVE)
            return {n: s.members for n, s in rs.sets.items()}, cache.reads_skipped

        sets, skipped = pool.submit(read).result(60)
        assert sets["allowed"] == ("10.1.1.1",)
        lab.sh("ipset", "add", "allowed", "10.1.1.9", ns=ns)
        sets, skipped2 = pool.submit(read).result(60)
        assert skipped2 == skipped + 1  # nf_tables untouched: not read again
        assert sorted(sets["allowed"]) == ["10.1.1.1", "10.1.1.9"]
        lab.sh("ipset", "swap", "allowed", "staged", ns=ns)
        sets, skipped3 = pool.submit(read).result(60)
        assert sets["allowed"] == ("10.2.2.2",) and skipped3 == skipped2 + 1
        peers = next(k for k in sets if k.endswith("peers"))
        assert sets[peers] == ()
        lab.sh("nft", "add element inet mine peers { 10.3.3.3 }", ns=ns)
        sets, skipped4 = pool.submit(read).result(60)
        assert sets[peers] == ("10.3.3.3/32",) and skipped4 == skipped3  # read again


def _corpus() -> list[tuple[object, int]]:
    from tests.lab import realworld as rw

    files = rw.ipt_files()
    moby = [f for f in files if "moby" in str(f[0])]
    return [f for f in files if "moby" not in str(f[0])] + moby[::20]


def test_chain_listing_prints_what_the_save_prints_on_real_rulesets(lab) -> None:
    """The splice takes each re-read chain from `iptables-nft -S CHAIN` and the rest from
    the last save: it is only right if both print every rule the same way. Every real
    iptables dump of the corpus (and every 20th dockerd golden) is loaded with the real
    iptables-nft-restore, each of its chains read with -S, and the text rebuilt from those
    alone must equal the save."""
    from tests.lab import realworld as rw

    if rw.available():
        pytest.skip(rw.available())
    from nodeward.collect.iptsplice import TableText, kept, render, reproducible

    ns = lab.netns("splicereal")
    saves = NftSaves()
    checked = 0
    refused: list[str] = []
    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        for path, fam in _corpus():
            text = path.read_text()
            lab.sh("nft", "flush", "ruleset", ns=ns, check=False)
            for cmd in rw.ipt_objects(text, fam):
                lab.sh(*cmd, ns=ns, check=False)
            tool = "iptables-nft-restore" if fam == 4 else "ip6tables-nft-restore"
            r = subprocess.run(["ip", "netns", "exec", ns.name, tool], input=text, text=True,
                               capture_output=True, timeout=60)
            if r.returncode != 0:
                refused.append(f"{rw.rel(path)}: {r.stderr.strip()[:80]}")
                continue
            save = "iptables-nft-save" if fam == 4 else "ip6tables-nft-save"

            def relist(fam=fam, save=save):
                lines = run_local([save], lines=True)
                if not reproducible(lines):
                    return None, lines
                tables = kept(parse_iptables_save(lines, frontend="iptables-nft",
                                                  family=fam))
                rebuilt = {}
                for name, t in tables.items():
                    new = TableText(list(t.builtins))  # nothing kept: every chain read
                    for chain in [*t.builtins, *sorted(c for c in t.names()
                                                       if c not in t.builtins)]:
                        assert saves._chain(fam, name, chain, new, run_local), (name, chain)
                    rebuilt[name] = new
                return render(rebuilt), lines

            got, lines = pool.submit(relist).result(120)
            assert got is not None, f"{rw.rel(path)}: its save is not reproducible"
            assert got == _norm(lines), rw.rel(path)
            checked += 1
    assert checked >= 30, (checked, refused)


def test_superseded_rulesets_are_freed_and_the_kept_text_is_the_rules_own(lab) -> None:
    """Memory under churn, as the daemon reads (one ParseCache, the per-chain read): after
    each kube-proxy-like change every chain and table of the superseded ruleset that the
    new one does not carry over is garbage (weak references die once the caller lets the
    old ruleset go), the unchanged chains are carried over (the same objects, not parsed
    again), and what the splice keeps is the live tables' own chains (their rules' texts
    are its lines), not a copy of the text."""
    import gc
    import weakref

    ns = lab.netns("splicemem")
    churn = Churn(lab, ns, random.Random(23))
    churn.restore(4, _base(False))
    if shutil.which("ip6tables-nft-restore"):
        churn.restore(6, _base(True))
    cache = ParseCache()

    def read():
        return collect_ruleset(run_local, cache, probes=LIVE)

    def chains(rs):
        return [c for t in rs.tables if t.frontend == "iptables-nft"
                for c in t.chains.values()]

    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        rs = pool.submit(read).result(60)
        seen: list[weakref.ref] = []
        carried = replaced = 0
        for n in range(12):
            before = {id(c) for c in chains(rs)}
            seen += [weakref.ref(c) for c in chains(rs)]
            seen += [weakref.ref(t) for t in rs.tables]
            if n % 3 == 2:
                churn.step()  # any of the other changes (policy, flush, rename, ...)
            else:
                churn.endpoints(4)
            new = pool.submit(read).result(60)
            del rs
            gc.collect()
            live = {id(c) for c in chains(new)} | {id(t) for t in new.tables}
            alive = [r() for r in seen if r() is not None]
            stray = [x for x in alive if id(x) not in live]
            assert not stray, f"step {n}: {len(stray)} superseded chains/tables alive"
            now = {id(c) for c in chains(new)}
            carried += len(now & before)
            replaced += len(before - now)
            rs = new
            del new, alive
            # what the splice keeps is the live tables' own chains, nothing beside them
            state = cache.nft_saves.states[4]  # type: ignore[union-attr]
            live4 = {t.name: t.chains for t in rs.tables
                     if t.frontend == "iptables-nft" and t.family == "ip"}
            assert state is not None and set(state) == set(live4), n
            assert all(t.base is live4[name] and not t.rules and not t.policy and not t.gone
                       for name, t in state.items()), f"step {n}: a copy kept beside the rules"
            del state, live4  # the test holds nothing of this ruleset but `rs`
    assert replaced > 0 and carried > 10 * replaced, (carried, replaced)
