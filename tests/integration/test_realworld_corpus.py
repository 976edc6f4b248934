"""Every real ruleset in ../shared/realworld parses: ipt/ (incl. 284 dockerd goldens) as
iptables-save text, nft/ JSON as is and nft/ text the way a node would hand it over (loaded
by the real `nft -f` into a scratch namespace, read back with `nft -j list ruleset`), and
the misc/ rule shapes (each line this machine's iptables-nft 1.8.9 printed). Zero parse
errors bar what the kernel itself refuses, zero tracebacks, counts printed."""

from __future__ import annotations

import os
import subprocess
from collections import Counter

import pytest

from nodeward.collect.ruleset import parse_ipset_save, read_dump_files
from nodeward.ruleset import RulesetParseError
from nodeward.ruleset.iptables import parse_iptables_save
from nodeward.ruleset.nft import parse_nft_json
from tests.lab import realworld as rw

pytestmark = pytest.mark.lab

#: dumps iptables-restore itself refuses (checked in test_realworld_differential): a file
#: handed over with --ruleset names the line; read live, the rule is only uncertain
KERNEL_REFUSES = {"ipt/issues/omr-1940-wrapped-paste.iptables"}
#: misc/ files that are not rulesets, with the one-line error they must give instead
WRONG_KIND = {"moby-iptablesdoc-usernet-portmap.iptables-S": "use `iptables-save`",
              "min-nft-text.nft": "nft -j list ruleset"}


BASES = "\\n".join(["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]",
                    ":OUTPUT ACCEPT [0:0]", "COMMIT", "*nat", ":PREROUTING ACCEPT [0:0]",
                    ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]",
                    "COMMIT", "*mangle", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]",
                    ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
                    ":POSTROUTING ACCEPT [0:0]", "COMMIT", ""])


def _need_corpus() -> None:
    why = rw.available()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


def _count_rules(tables) -> tuple[int, int]:
    rules = [r for t in tables for c in t.chains.values() for r in c.rules]
    unknown = sum(1 for r in rules if any(m.op == "unknown" for m in r.matches)
                  or r.target.startswith(("NFT-", "XT-", "UNREADABLE")))
    return len(rules), unknown


def test_every_saved_dump_parses():
    _need_corpus()
    counts: Counter = Counter()
    errors = []
    for path, fam in rw.ipt_files():
        try:
            rs = read_dump_files([f"v{fam}:{path}"])
        except RulesetParseError as e:
            if rw.rel(path) not in KERNEL_REFUSES:
                errors.append(f"{rw.rel(path)}: {e}")
                continue
            assert "\n" not in str(e)
            counts["refused by the kernel too (line named)"] += 1
            (table,) = parse_iptables_save(path.read_text(), source=rw.rel(path))
            assert all(r.target == "UNREADABLE" or r.matches[0].op == "unknown"
                       for c in table.chains.values() for r in c.rules)
            continue
        n, unknown = _count_rules(rs.tables)
        counts["ipt files"] += 1
        counts["ipt rules"] += n
        counts["ipt rules with an unmodelled part"] += unknown
    for path in rw.nft_json_files():
        try:
            tables, _ = parse_nft_json(path.read_text(), source=rw.rel(path))
        except RulesetParseError as e:
            errors.append(str(e))
            continue
        n, unknown = _count_rules(tables)
        counts["nft json files"] += 1
        counts["nft rules"] += n
        counts["nft rules with an unmodelled part"] += unknown
    for name, needle in WRONG_KIND.items():
        with pytest.raises(RulesetParseError) as e:
            read_dump_files([str(rw.REAL / "misc" / name)])
        assert needle in str(e.value) and "\n" not in str(e.value)
        counts["wrong-kind files refused with the fix"] += 1
    sets = parse_ipset_save((rw.REAL / "misc" / "kube-router-ipset_save.txt").read_text())
    assert sets and all(s.members or s.type for s in sets.values())
    for path in sorted((rw.REAL / "misc").glob("min-*")):
        if path.suffix in (".iptables", ".ip6tables", ".json"):
            fam = "v6:" if path.suffix == ".ip6tables" else ""
            rs = read_dump_files([fam + str(path)])
            assert rs.tables
            counts["misc reductions"] += 1
    shapes = (rw.REAL / "misc" / "iptables-nft-1.8.9-saved-match-flags.txt").read_text()
    for line in shapes.splitlines():
        (t,) = parse_iptables_save("*raw\n:PREROUTING ACCEPT\n:INPUT ACCEPT\n:OUTPUT ACCEPT\n"
                                   f"{line}\nCOMMIT\n")
        (rule,) = [r for c in t.chains.values() for r in c.rules]
        assert rule.target in ("ACCEPT", "DROP", "REJECT", "RETURN"), line
        for m in rule.matches:  # an unmodelled option is named, with its values
            if m.op == "unknown":
                assert m.text in line or m.text.replace("-m ", "", 1).split()[-1] in line
        counts["iptables 1.8.9 rule shapes"] += 1
    print("\ncorpus:", ", ".join(f"{k} {v}" for k, v in counts.items()),
          f", parse errors {len(errors)}")
    assert not errors, "\n".join(errors)
    assert counts["ipt files"] >= 300 and counts["nft json files"] >= 290


def test_nft_text_through_the_kernel_parses(lab):
    """Each nft text file loaded with the real nft -f (the README's fix-ups applied), then
    read back as a node would give it: nft -j list ruleset."""
    _need_corpus()
    ns = lab.netns("nftc")
    counts: Counter = Counter()
    refused, errors = [], []
    for path in rw.nft_text_files():
        text = rw.nft_loadable(path.read_text())
        prep = "nft flush ruleset"
        if "issue13263" in path.name:  # "base chains are left out: iptables created them"
            prep += f"; printf '{BASES}' | iptables-nft-restore"
        r = subprocess.run(["ip", "netns", "exec", ns.name, "sh", "-c",
                            f"{prep} && nft -f - && nft -j list ruleset"],
                           input=text, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            refused.append(f"{rw.rel(path)}: {r.stderr.strip().splitlines()[0]}")
            continue
        try:
            tables, _ = parse_nft_json(r.stdout, source=rw.rel(path))
        except RulesetParseError as e:
            errors.append(str(e))
            continue
        n, unknown = _count_rules(tables)
        counts["files"] += 1
        counts["rules"] += n
        counts["rules with an unmodelled part"] += unknown
    print(f"\nnft text via the kernel: {', '.join(f'{k} {v}' for k, v in counts.items())}, "
          f"refused by nft {len(refused)}, parse errors {len(errors)}")
    for x in refused:
        print("  refused:", x)
    assert not errors, "\n".join(errors)
    assert not refused, "\n".join(refused)
    assert counts["files"] >= 290
