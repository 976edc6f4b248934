"""The rule texts an operator is shown (a Step of a verdict's evidence, Chain.rule_text) are
exactly the lines the kernel's tool printed, now that each chain holds its rules' texts
packed (model.Chain.texts) rather than one str per rule. Checked on every real dump of the
corpus: iptables-save lines against the dump file itself, nft -j renderings against the
unpacked per-rule rendering of the same JSON."""

from __future__ import annotations

import json
import re

import pytest

from nodeward.ruleset import nft as nftmod
from nodeward.ruleset.evaluate import evaluate
from nodeward.ruleset.iptables import parse_iptables_save
from nodeward.ruleset.model import Packet, Ruleset, pack_texts, unpack_texts
from tests.lab import realworld as rw

_COUNTERS = re.compile(r"^\[\d+:\d+\]\s*")


def _save_lines(text: str) -> dict[tuple[str, str], list[str]]:
    """(table, chain) -> its -A lines as the file has them (counters and surrounding blanks
    off, as iptables-restore reads them), read without the parser."""
    out: dict[tuple[str, str], list[str]] = {}
    table = ""
    for raw in text.splitlines():
        line = _COUNTERS.sub("", raw.strip())
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith("-A "):
            out.setdefault((table, line.split()[1]), []).append(line)
    return out


def _packets(fam: int) -> list[Packet]:
    if fam == 6:
        return [Packet(6, "fd00::2", "fd00::1", "tcp", 22, iif="eth0"),
                Packet(6, "2001:db8::9", "fd00::1", "udp", 53, iif="eth0")]
    return [Packet(4, "10.0.0.2", "10.0.0.1", "tcp", p, iif="eth0") for p in (22, 80, 443,
                                                                            10250, 30080)] + \
        [Packet(4, "10.244.1.5", "10.96.0.10", "udp", 53, iif="cni0"),
         Packet(4, "192.0.2.7", "10.0.0.1", "tcp", 6443, iif="eth0")]


def _steps_shown(tables, fam: int) -> list:
    rs = Ruleset(tuple(tables))
    return [s for p in _packets(fam) for s in evaluate(rs, p).trace if s.index]


def test_every_real_iptables_rule_text_is_its_save_line() -> None:
    if rw.available():
        pytest.skip(rw.available())
    dumps = rules = shown = 0
    for path, fam in rw.ipt_files():
        text = path.read_text()
        try:
            tables = parse_iptables_save(text.splitlines(), family=fam)
        except ValueError:  # not a dump this parser takes (the corpus's broken inputs)
            continue
        want = _save_lines(text)
        again = parse_iptables_save(text.splitlines(), family=fam, reuse=tables)
        for t in (*tables, *again):
            for c in t.chains.values():
                lines = want.get((t.name, c.name), [])
                assert c.rule_texts() == lines, (rw.rel(path), t.name, c.name)
                assert [c.rule_text(i) for i in range(len(c.rules))] == lines
                assert c.texts or not lines  # packed: no str per rule
                assert all(r.text == "" for r in c.rules)
                rules += len(lines)
        for s in _steps_shown(tables, fam):
            line = want[(s.table, s.chain)][s.index - 1]
            assert s.text == line and f"#{s.index}: {line} -> " in str(s), rw.rel(path)
            shown += 1
        dumps += 1
    assert dumps >= 20 and rules >= 3000 and shown >= 100, (dumps, rules, shown)


def test_every_real_nft_rule_text_is_its_rendering() -> None:
    if rw.available():
        pytest.skip(rw.available())
    files = rules = shown = 0
    for path in rw.nft_json_files():
        try:
            tables, _sets = nftmod.parse_nft_json(path.read_text(), source=rw.rel(path))
        except ValueError:
            continue
        items = json.loads(path.read_text()).get("nftables", [])
        want: dict[tuple, list[str]] = {}
        for n, item in enumerate(items):
            r = item.get("rule") if isinstance(item, dict) else None
            if r is None:
                continue
            try:  # the rendering as a Rule outside a chain holds it
                one = nftmod._rule(r, n, lambda s: s, None).text
            except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
                continue
            want.setdefault((r["family"], r["table"], r["chain"]), []).append(one)
        for t in tables:
            for c in t.chains.values():
                got = c.rule_texts()
                assert len(got) == len(c.rules)
                key = (t.family, t.name, c.name)
                if key in want and len(want[key]) == len(got):
                    assert got == want[key], (rw.rel(path), key)
                    rules += len(got)
        by_name = {(t.name, c): want.get((t.family, t.name, c)) for t in tables
                   for c in t.chains}
        for s in _steps_shown(tables, 4):
            lines = by_name.get((s.table, s.chain))
            if lines is not None:
                assert s.text == lines[s.index - 1], rw.rel(path)
                shown += 1
        files += 1
    assert files >= 20 and rules >= 1000 and shown >= 50, (files, rules, shown)


def test_packing_keeps_any_text_but_nul() -> None:
    odd = ['-A X -m comment --comment "two\nlines" -j DROP', "ü \udcff é", "", "-A X"]
    assert unpack_texts(pack_texts(odd)) == odd  # type: ignore[arg-type]
    assert unpack_texts(pack_texts(odd, "X"), "X") == odd  # type: ignore[arg-type]
    assert pack_texts(["a\0b"]) is None and pack_texts(["a", "b"]) != pack_texts(["a b"])
    assert pack_texts(["-A X -m comment --comment \x01"], "X") is None


def test_a_chain_whose_rules_come_in_two_runs_keeps_them_all_in_order() -> None:
    save = ["*filter", ":INPUT ACCEPT [0:0]", ":X - [0:0]", "-A INPUT -j X",
            "-A X -p tcp -j ACCEPT", "-A INPUT -p udp -j DROP", "-A X -p icmp -j DROP",
            '-A X -m comment --comment "a\0b" -j DROP', "COMMIT"]
    for reuse in ((), parse_iptables_save([*save[:-3], "COMMIT"])):
        chains = parse_iptables_save(save, reuse=reuse)[0].chains
        assert chains["INPUT"].rule_texts() == ["-A INPUT -j X", "-A INPUT -p udp -j DROP"]
        assert chains["X"].rule_texts() == [save[4], save[6], save[7]]  # (NUL: unpacked)
        assert not chains["X"].texts and chains["INPUT"].texts


def test_the_splice_renders_the_kept_chains_texts_as_they_are_read() -> None:
    """iptsplice.render's lines (a kept chain's unpacked when reached): the same lines, by
    index, slice and iteration, as the eager rendering, on every real iptables dump."""
    from nodeward.collect.iptsplice import kept, render

    if rw.available():
        pytest.skip(rw.available())
    rendered = 0
    for path, fam in rw.ipt_files()[::7]:
        try:
            tables = parse_iptables_save(path.read_text().splitlines(), family=fam)
        except ValueError:
            continue
        if not tables:
            continue
        state = kept(tables)
        want: list[str] = []
        for name, t in state.items():
            order = [*t.builtins, *sorted(c for c in t.names() if c not in set(t.builtins))]
            want += [f"*{name}", *(f":{c} {t.policy_of(c)} [0:0]" for c in order)]
            for c in order:
                want += t.lines(c)
            want.append("COMMIT")
        got = render(state)
        assert list(got) == want and len(got) == len(want)
        assert [got[i] for i in range(len(want))] == want and got[-1] == "COMMIT"
        assert [got[i] for i in reversed(range(len(want)))] == want[::-1]
        assert [x for i in range(0, len(want), 7) for x in got[i:i + 7]] == want
        assert got[3:2] == [] and got[::2] == want[::2]
        again = parse_iptables_save(got, family=fam, reuse=tables)
        assert all(c is t.chains[n] for a, t in zip(again, tables, strict=True)
                   for n, c in a.chains.items())  # (the chains in the splice's order)
        rendered += 1
    assert rendered >= 20, rendered
