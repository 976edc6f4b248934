"""Native nf_tables tables read over netlink (collect/nftnl.py) against the real `nft -j`.

The oracle is nft itself: each ruleset is loaded with the real `nft -f` into a scratch
namespace and both reads of every native table are built into models and compared
(tests/lab/nftnl_compare.py): chains, every rule (target, matches, effects, verdict maps,
uncertain or not), named sets, and the verdicts of every listening port x source class.
Rulesets: the real corpus (../shared/realworld/nft: all its own files; of the 564 dockerd
goldens every 4th text file and every 4th JSON file, offset by two so the two formats cover
different rulesets; NFTNL_CORPUS=all runs every file, ~35 s), kube-proxy's nftables-mode
artefact (in the corpus), bench/ruleset.py's nft cases (kube-proxy nftables mode, the
node-shaped table), and tests/lab/nft_shapes.nft (expression shapes the corpus lacks:
ranges, interval and concatenated sets, verdict maps, flags, nat forms, tproxy, socket,
limit/quota, mark arithmetic).
Then collect_ruleset itself: no `nft` child for a native table, the note naming the path,
the ceiling, the fallback to `nft -j` when the netlink read fails, and a digest that
ignores counters but not rules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nodeward.collect import nftnl
from nodeward.collect.ruleset import LIVE, ParseCache, collect_ruleset, run_local
from tests.lab import realworld as rw
from tests.lab import setns

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = 4
SHAPES = ROOT / "tests" / "lab" / "nft_shapes.nft"


def _sample() -> list[Path]:
    files = rw.nft_text_files() + rw.nft_json_files()
    if os.environ.get("NFTNL_CORPUS") == "all":
        return files
    out = []
    for p in files:
        m = re.search(r"moby-nft-(\d+)", p.name)
        if m is None or (int(m.group(1)) + (2 if p.suffix == ".json" else 0)) % SAMPLE == 1:
            out.append(p)
    return out


def _compare(lab, paths: list[Path]) -> dict:
    ns = lab.netns("nftnl")
    r = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-m",
                        "tests.lab.nftnl_compare", *map(str, paths)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_netlink_read_models_every_ruleset_as_nft_j_does(lab, tmp_path):
    why = rw.available()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    sys.path.insert(0, str(ROOT))
    from bench.nodeshape import nft_text
    from bench.ruleset import kube_proxy_nft_json

    from tests.lab.nftnl_compare import json_loadable

    kp = tmp_path / "bench-kube-proxy-nft.json"
    kp.write_text(json_loadable(kube_proxy_nft_json(300)))
    node = tmp_path / "bench-nodeshape.nft"
    node.write_text(nft_text(3000))
    corpus = _sample()
    got = _compare(lab, [*corpus, SHAPES, kp, node])
    c = got["counts"]
    print(f"\nnetlink vs nft -j: {len(corpus)} corpus files (of "
          f"{len(rw.nft_text_files()) + len(rw.nft_json_files())}) + shapes + 2 bench "
          f"rulesets; {', '.join(f'{k} {v}' for k, v in c.items())}; refused by nft "
          f"{len(got['refused'])}")
    for x in got["refused"]:
        print("  refused:", x)
    assert not got["diffs"], "\n".join(got["diffs"][:30])
    # nft 1.0.6 refuses two corpus files (the corpus tests say why); everything else loads
    assert len(got["refused"]) <= 2 and c["files compared"] == len(corpus) + 3 - len(got["refused"])
    assert c.get("uncertain via netlink only", 0) == 0
    assert c["rules"] > 5000 and c["verdicts"] > 10000 and c["sets"] > 100
    # the kube-proxy artefact and the shapes were among them
    assert not any("kube-proxy-nftables-TestOverallNFTablesRules.nftcmd" in x
                   for x in got["refused"])


IPT = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 2379 -j DROP\nCOMMIT\n"
NATIVE = """table inet mine {
  set ports { type inet_service; elements = { 10250, 10255 } }
  chain c { type filter hook input priority 10; policy accept;
    counter
    ip saddr 10.244.0.0/16 tcp dport @ports drop
    tcp dport 6443 ct state new accept
  }
}
"""


class Counting:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, argv):
        self.calls.append(" ".join(argv))
        return run_local(argv)


def _load(ns, text: str, cmd: str = "nft") -> None:
    args = ["nft", "-f", "-"] if cmd == "nft" else [cmd]
    subprocess.run(["ip", "netns", "exec", ns.name, *args], input=text, text=True,
                   check=True, capture_output=True, timeout=30)


def _traffic() -> None:
    for _ in range(3):
        with socket.socket() as s, contextlib.suppress(OSError):
            s.settimeout(1)
            s.connect(("127.0.0.1", 6443))


def _counted() -> int:
    out = subprocess.run(["nft", "-j", "list", "chain", "inet", "mine", "c"],
                         capture_output=True, text=True, check=True).stdout
    return sum(e["counter"]["packets"] for i in json.loads(out)["nftables"] if "rule" in i
               for e in i["rule"]["expr"] if "counter" in e)


def test_collect_reads_native_tables_over_netlink_without_nft(lab):
    ns = lab.netns("nlread")
    _load(ns, IPT, "iptables-nft-restore")
    _load(ns, NATIVE)
    nft_j = dataclasses.replace(LIVE, nft_read=lambda family, table, limit: None)
    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        def read(probes, max_rules=260_000):
            run = Counting()
            return collect_ruleset(run, ParseCache(), probes=probes,
                                   max_rules=max_rules), run.calls

        rs, calls = pool.submit(read, LIVE).result(timeout=60)
        ref, ref_calls = pool.submit(read, nft_j).result(timeout=60)
        first = pool.submit(nftnl.read_table, "inet", "mine").result(timeout=30)
        pool.submit(_traffic).result(timeout=30)  # the counters move
        assert pool.submit(_counted).result(timeout=30) > 0
        again = pool.submit(nftnl.read_table, "inet", "mine").result(timeout=30)
        lab.sh("nft", "add rule inet mine c tcp dport 2380 drop", ns=ns)
        changed = pool.submit(nftnl.read_table, "inet", "mine").result(timeout=30)
        small, small_calls = pool.submit(read, LIVE, 2).result(timeout=60)

        def failing(family, table, limit):
            return nftnl.NetlinkReadFailed("refused for the test")

        fell, fell_calls = pool.submit(
            read, dataclasses.replace(LIVE, nft_read=failing)).result(timeout=60)
    assert not any(c.startswith("nft") for c in calls), calls
    assert "nft -s -j list table inet mine" in ref_calls
    assert any("read over netlink" in n for n in rs.notes)
    assert [(t.frontend, t.name) for t in rs.tables] == [("iptables-nft", "filter"),
                                                         ("nft", "mine")]
    ours, theirs = rs.tables[1].chains["c"], ref.tables[1].chains["c"]
    assert (ours.hook, ours.policy, ours.priority) == (theirs.hook, theirs.policy,
                                                       theirs.priority)
    assert [(r.target, [(m.op, m.args, m.negate) for m in r.matches]) for r in ours.rules] \
        == [(r.target, [(m.op, m.args, m.negate) for m in r.matches]) for r in theirs.rules]
    assert rs.sets["nft:inet:mine:ports"].elements == ref.sets["nft:inet:mine:ports"].elements
    # the digest (the Ruleset's fingerprint) ignores counters, not rules
    assert first.digest == again.digest != changed.digest
    assert changed.rules == 4
    # past the ceiling: a problem, the table left out, nft not run either
    assert [t.name for t in small.tables] == ["filter"]
    assert not any(c.startswith("nft") for c in small_calls)
    (p,) = small.problems
    assert "ceiling of 2" in p.reason and "not evaluated" in p.reason
    # the netlink read failing: nft -j reads the table, and the note says why
    assert "nft -s -j list table inet mine" in fell_calls
    assert any("read with `nft -j`" in n and "refused for the test" in n for n in fell.notes)
    assert [t.name for t in fell.tables] == ["filter", "mine"]


WRITER = """
import subprocess, time
end = time.monotonic() + {secs}
while time.monotonic() < end:
    subprocess.run(["nft", "add rule inet other c counter"], check=True)
"""


def test_a_write_racing_the_read_reads_again(lab, monkeypatch):
    """Writes to another table move the (global) generation id during every read: the
    table is read again until two reads agree, and the result is the table as it is."""
    ns = lab.netns("nlrace")
    rules = "\n".join(f"add rule inet big c ip daddr 10.1.{i // 250}.{i % 250} drop"
                      for i in range(3000))
    _load(ns, "add table inet big\nadd chain inet big c { type filter hook input priority 0; }"
              f"\n{rules}\nadd table inet other\nadd chain inet other c\n")
    reads: list[bool] = []
    once = nftnl._read_once

    def counted(*args):
        got = once(*args)
        reads.append(got[1])
        return got

    monkeypatch.setattr(nftnl, "_read_once", counted)
    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        quiet = pool.submit(nftnl.read_table, "inet", "big").result(timeout=60)
        assert len(reads) == 1
        writer = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c",
                                   WRITER.format(secs=20)])
        try:
            busy = [pool.submit(nftnl.read_table, "inet", "big").result(timeout=60)
                    for _ in range(3)]
        finally:
            writer.kill()
            writer.wait()
        others = subprocess.run(["ip", "netns", "exec", ns.name, "nft", "-j", "list",
                                 "chain", "inet", "other", "c"], capture_output=True,
                                text=True, check=True).stdout.count('"rule"')
    assert others > 3  # the writer did write while the reads ran
    assert len(reads) > 1 + 3  # and some reads were raced: read again
    assert quiet.rules == 3000
    for got in busy:
        assert got.rules == 3000 and got.digest == quiet.digest
        assert len(got.tables[0].chains["c"].rules) == 3000


def test_an_anonymous_chain_is_read_as_the_chain_it_is(lab):
    """`jump { ... }` (a binding chain): nft 1.0.6 -j prints it as a bare string (its JSON
    has no form for it, and ruleset/nft.py refuses the table); the kernel holds a chain the
    rule jumps to, which is what the netlink read models."""
    ns = lab.netns("nlanon")
    _load(ns, "table inet anon {\n chain c { type filter hook input priority 0;\n"
              "  tcp dport 22 jump { ip saddr 10.0.0.0/8 accept; drop; }\n }\n}\n")
    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        got = pool.submit(nftnl.read_table, "inet", "anon").result(timeout=30)
    chains = got.tables[0].chains
    (jump,) = chains["c"].rules
    assert jump.target == "JUMP" and jump.arg.startswith("__chain")
    body = chains[jump.arg]
    assert [r.target for r in body.rules] == ["ACCEPT", "DROP"] and body.hook is None
    assert [(m.op, m.args) for m in body.rules[0].matches] == [
        ("nfproto", (4,)), ("src", (4, 10 << 24, (11 << 24) - 1))]
