"""The iptables-legacy read asks the real kernel first (collect/xtables.py): each table's blob
digested with its counters zeroed, so an unchanged table spawns no iptables-legacy-save
(libiptc: twice the blob, 238 MiB at 250,000 kube-proxy rules); a same-size edit is seen; the
rule count from the blob walk equals what iptables-legacy-save prints, and the ceiling is
enforced from it before any child runs. The collector runs in a thread moved into a lab
namespace (the raw socket, /proc/thread-self/net and its children follow that thread)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from bench.ruleset import kube_proxy_dump

from nodeward.collect import xtables
from nodeward.collect.ruleset import LIVE, ParseCache, collect_ruleset, run_local
from tests.lab import setns

pytestmark = pytest.mark.skipif(not shutil.which("iptables-legacy-restore"),
                                reason="needs iptables-legacy")

#: 300 services: nat and filter with comment, statistic, DNAT, MARK, REJECT, conntrack
DUMP = kube_proxy_dump(300, 3000, hardened=True)


#: the first service's rule, its port changed: the same size in the blob
EDIT = ("iptables-legacy", "-t", "nat", "-R", "KUBE-SERVICES", "1", "-d", "10.96.0.1/32", "-p",
        "tcp", "-m", "comment", "--comment", "ns0/svc0:http cluster IP", "-m", "tcp",
        "--dport", "81", "-j", "KUBE-SVC-0000000000000000")


def restore(ns, text: str, *flags: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns.name, "iptables-legacy-restore", *flags],
                   input=text, text=True, check=True, capture_output=True, timeout=60)


def save(ns, table: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns.name, "iptables-legacy-save", "-t", table],
                          text=True, check=True, capture_output=True, timeout=60).stdout


def with_counters(text: str, pkts: int) -> str:
    """The dump with every rule's counters set (iptables-restore -c)."""
    return "\n".join(f"[{pkts}:{pkts * 60}] {x}" if x.startswith("-A ") else x
                     for x in text.splitlines()) + "\n"


def test_blob_digest_ignores_counters_sees_same_size_edits_and_counts_rules(lab) -> None:
    ns = lab.netns("xtd")
    restore(ns, DUMP)
    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        def digests():
            return {n: xtables.table_digest(4, n) for n in xtables.table_names(4) or ()}

        first = pool.submit(digests).result(60)
        assert sorted(first) == ["filter", "nat"]
        for name, d in first.items():
            text = save(ns, name)
            assert d.rules == text.count("\n-A ")  # the blob walk counts what the save prints
            assert d.chains == sum(1 for x in text.splitlines() if x.startswith(":")) - \
                bin(d.info.hooks[0]).count("1")
            assert d.info.entries > d.rules and d.info.size > 0
        restore(ns, with_counters(DUMP, 7), "-c")  # same rules, other counters
        assert "[7:420]" in subprocess.run(
            ["ip", "netns", "exec", ns.name, "iptables-legacy-save", "-c", "-t", "nat"],
            text=True, capture_output=True, check=True).stdout
        second = pool.submit(digests).result(60)
        assert {n: d.digest for n, d in second.items()} == \
            {n: d.digest for n, d in first.items()}
        # same size, other port: only the blob's bytes tell
        lab.sh(*EDIT, ns=ns)
        third = pool.submit(digests).result(60)
        assert third["nat"].info.size == first["nat"].info.size
        assert third["nat"].digest != first["nat"].digest
        assert third["filter"].digest == first["filter"].digest


class Spawned:
    """Every command the collector spawns (subprocess.Popen), in order."""

    def __init__(self, monkeypatch) -> None:
        self.argv: list[str] = []
        real = subprocess.Popen

        def popen(args, *a, **kw):
            self.argv.append(" ".join(args))
            return real(args, *a, **kw)

        monkeypatch.setattr(subprocess, "Popen", popen)

    def saves(self) -> list[str]:
        out = [a for a in self.argv if a.startswith("iptables-legacy-save")]
        self.argv.clear()
        return out


#: the save path alone (no in-process decode), as before collect/xtdecode.py
SAVE_ONLY = dataclasses.replace(LIVE, legacy_lines=lambda family, name: None)


def _texts(rs) -> list[tuple[str, str, str]]:
    return [(t.name, c.name, text) for t in rs.tables for c in t.chains.values()
            for text in c.rule_texts()]


@pytest.mark.parametrize("way", ["decode", "save"])
def test_unchanged_legacy_table_spawns_no_save(lab, monkeypatch, way) -> None:
    """An unchanged table is not read again; a changed one is decoded in-process (no child
    at all) or, on the save path, read by its own `-t TABLE` save."""
    ns = lab.netns("xtg")
    restore(ns, DUMP)
    cache = ParseCache()
    spawned = Spawned(monkeypatch)
    probes = LIVE if way == "decode" else SAVE_ONLY

    def saves(*argv: str) -> list[str]:
        return list(argv) if way == "save" else []

    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        def read(**kw):
            return collect_ruleset(run_local, cache, probes=probes, **kw)

        first = pool.submit(read).result(60)
        assert spawned.saves() == saves("iptables-legacy-save -t filter",
                                        "iptables-legacy-save -t nat")
        rules = sum(len(c.rules) for t in first.tables for c in t.chains.values())
        assert rules == DUMP.count("\n-A ") and not first.problems
        if way == "decode":  # the same rules as the save gives, parsed the same
            saved = pool.submit(lambda: collect_ruleset(run_local, ParseCache(),
                                                        probes=SAVE_ONLY)).result(60)
            spawned.saves()
            assert _texts(first) == _texts(saved)
            assert first.fingerprint == saved.fingerprint  # both: the blob digests
        restore(ns, with_counters(DUMP, 9), "-c")  # counters moved, rules did not
        second = pool.submit(read).result(60)
        assert spawned.saves() == []  # no child at all
        assert second.fingerprint == first.fingerprint
        assert [t is u for t, u in zip(second.tables, first.tables, strict=True)] == \
            [True, True]
        lab.sh(*EDIT, ns=ns)
        third = pool.submit(read).result(60)
        assert spawned.saves() == saves("iptables-legacy-save -t nat")  # filter: unchanged
        nat = next(t for t in third.tables if t.name == "nat")
        assert "--dport 81" in nat.chains["KUBE-SERVICES"].rule_text(0)
        assert third.fingerprint != first.fingerprint
        # the ceiling, from the blob walk, before any child: nat is past it, filter not
        fourth = pool.submit(lambda: collect_ruleset(run_local, ParseCache(), probes=probes,
                                                     max_rules=1000)).result(60)
        assert spawned.saves() == saves("iptables-legacy-save -t filter")
        (p,) = fourth.problems
        assert p.source == "iptables-legacy-save"
        assert "iptables-legacy-save -t nat:" in p.reason and "not read" in p.reason
        assert [t.name for t in fourth.tables] == ["filter"]


def test_a_big_table_is_not_held_but_decoded_again(lab, monkeypatch) -> None:
    """Past LEGACY_HOLD_MAX_RULES a table's parse is not kept between reads (its blob would
    sit beside it): an unchanged read decodes it again, no child, same fingerprint."""
    from nodeward.collect import ruleset

    monkeypatch.setattr(ruleset, "LEGACY_HOLD_MAX_RULES", 1000)  # nat: 2,700; filter less
    ns = lab.netns("xth")
    restore(ns, DUMP)
    cache = ParseCache()
    spawned = Spawned(monkeypatch)
    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        first = pool.submit(lambda: collect_ruleset(run_local, cache, probes=LIVE)).result(60)
        second = pool.submit(lambda: collect_ruleset(run_local, cache, probes=LIVE)).result(60)
    assert spawned.saves() == []
    assert second.fingerprint == first.fingerprint and _texts(second) == _texts(first)
    held = {t.name: any(t is u for u in first.tables) for t in second.tables}
    assert held == {"filter": True, "nat": False}


def collect_ruleset_fresh(pool: ThreadPoolExecutor, max_rules: int):
    return pool.submit(lambda: collect_ruleset(run_local, ParseCache(), probes=LIVE,
                                               max_rules=max_rules)).result(60)


def test_a_table_the_decoder_does_not_print_is_read_by_the_save(lab, monkeypatch) -> None:
    """Found at layout (an unknown target) or only while printing (conntrack's port
    options): either way that table alone falls back to its save, the others decode."""
    ns = lab.netns("xtf")
    restore(ns, DUMP)
    restore(ns, "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -m "
                "conntrack --ctorigdstport 20:30 -j ACCEPT\nCOMMIT\n*mangle\n"
                ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n"
                ":OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -j "
                "TPROXY --on-port 1 --tproxy-mark 0x1/0x1\nCOMMIT\n")
    spawned = Spawned(monkeypatch)
    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        rs = pool.submit(lambda: collect_ruleset(run_local, ParseCache(), probes=LIVE)).result(60)
    assert sorted(spawned.saves()) == ["iptables-legacy-save -t mangle",
                                       "iptables-legacy-save -t raw"]
    assert not rs.problems
    raw = next(t for t in rs.tables if t.name == "raw")
    assert "--ctorigdstport 20:30" in raw.chains["PREROUTING"].rule_text(0)
    assert {t.name for t in rs.tables} >= {"filter", "nat", "raw", "mangle"}


def test_a_table_read_by_the_save_says_so_while_it_is_unchanged(lab, monkeypatch) -> None:
    """Why a table went to the save is a note of the ruleset, on the read that decoded it
    and on every unchanged read after (the notes are the snapshot's state: a note that came
    and went would change the check results' key and the log), until the table decodes."""
    ns = lab.netns("xtn")
    restore(ns, DUMP)
    restore(ns, "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n"
                ":FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
                "-A PREROUTING -p tcp -j TPROXY --on-port 1 --tproxy-mark 0x1/0x1\nCOMMIT\n")
    cache = ParseCache()
    spawned = Spawned(monkeypatch)

    def mangle_notes(rs) -> list[str]:
        return [n for n in rs.notes if "iptables-legacy-save -t mangle" in n]

    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        first = pool.submit(lambda: collect_ruleset(run_local, cache, probes=LIVE)).result(60)
        second = pool.submit(lambda: collect_ruleset(run_local, cache, probes=LIVE)).result(60)
        assert spawned.saves() == ["iptables-legacy-save -t mangle"]  # the second: no child
        restore(ns, "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n"
                    ":FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
                    "-A PREROUTING -p tcp -j MARK --set-xmark 0x1/0xffffffff\nCOMMIT\n")
        third = pool.submit(lambda: collect_ruleset(run_local, cache, probes=LIVE)).result(60)
    said = mangle_notes(first)
    assert len(said) == 1 and "TPROXY" in said[0], first.notes
    assert mangle_notes(second) == said and second.notes == first.notes
    assert mangle_notes(third) == []
    assert not any("iptables-legacy table" in n for n in third.notes)
