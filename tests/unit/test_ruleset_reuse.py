"""parse_iptables_save(reuse=last parse): a re-read builds only what changed, and what it
gives is exactly what a fresh parse of the same text gives (line numbers of carried-over
rules aside). Checked on every real iptables dump of the corpus, each changed the ways a
live ruleset changes (rules inserted, deleted, rewritten; chains created and deleted,
including a chain that takes the name of a target some rule jumps to)."""

from __future__ import annotations

import random

import pytest

from nodeward.ruleset.iptables import parse_iptables_save
from tests.lab import realworld as rw


def _value(tables) -> list:
    return [(t.frontend, t.family, t.name,
             [(c.name, c.policy, c.hook, c.priority, [r._replace(line=0) for r in c.rules],
               c.rule_texts()) for c in t.chains.values()]) for t in tables]


def _parse(lines, fam, reuse=()):
    return parse_iptables_save(lines, frontend="iptables-nft", family=fam, reuse=reuse)


def _mutate(lines: list[str], rnd: random.Random) -> list[str]:
    """One live-like change of a save's lines."""
    out = list(lines)
    rules = [i for i, x in enumerate(out) if x.startswith("-A ")]
    decls = [i for i, x in enumerate(out) if x.startswith(":")]
    kind = rnd.choice(["insert", "delete", "rewrite", "newchain", "target-chain",
                       "dropchain"])
    if kind == "insert" and rules:
        i = rnd.choice(rules)
        chain = out[i].split()[1]
        out.insert(i, f"-A {chain} -s 10.9.9.9/32 -p tcp -m tcp --dport 99 -j DROP")
    elif kind == "delete" and rules:
        del out[rnd.choice(rules)]
    elif kind == "rewrite" and rules:
        i = rnd.choice(rules)
        out[i] = out[i].replace(" -j ", " -p udp -j ", 1) if " -j " in out[i] else \
            out[i] + " -j ACCEPT"
    elif kind in ("newchain", "target-chain") and decls:
        # a chain named after a target a rule uses turns that `-j X` into a jump
        targets = sorted({x.rsplit(" -j ", 1)[1].split()[0] for x in out
                          if x.startswith("-A ") and " -j " in x} -
                         {"ACCEPT", "DROP", "RETURN", "QUEUE"})
        name = rnd.choice(targets) if kind == "target-chain" and targets else \
            f"NEW-{rnd.randrange(1 << 20)}"
        if f":{name} " not in "\n".join(out):
            out.insert(rnd.choice(decls) + 1, f":{name} - [0:0]")
    elif kind == "dropchain" and decls:
        i = rnd.choice(decls)
        name = out[i][1:].split()[0]
        if out[i].split()[1] == "-":  # a user chain: its rules and the jumps to it go
            out = [x for j, x in enumerate(out) if j != i and not x.startswith(f"-A {name} ")]
    return out


def test_reuse_gives_what_a_fresh_parse_gives_on_real_dumps() -> None:
    if rw.available():
        pytest.skip(rw.available())
    rnd = random.Random(17)
    checked = reused = 0
    for path, fam in rw.ipt_files():
        lines = path.read_text().splitlines()
        try:
            last = _parse(lines, fam)
        except ValueError:  # not a dump this parser takes (the corpus's broken inputs)
            continue
        for _step in range(4):
            lines = _mutate(lines, rnd)
            try:
                fresh = _parse(lines, fam)
            except ValueError:
                break  # a mutation made it unreadable (a rule of a dropped chain's jump)
            again = _parse(lines, fam, reuse=last)
            assert _value(again) == _value(fresh), rw.rel(path)
            old = {id(r) for t in last for c in t.chains.values() for r in c.rules}
            reused += sum(id(r) in old for t in again for c in t.chains.values()
                          for r in c.rules)
            last = again
            checked += 1
    assert checked >= 300, checked
    assert reused > 1000, reused


def test_unchanged_chains_are_the_same_objects_and_a_target_turned_chain_is_not() -> None:
    save = ["*nat", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            ":KUBE-SERVICES - [0:0]", ":KUBE-SVC-A - [0:0]",
            "-A PREROUTING -j KUBE-SERVICES",
            "-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j KUBE-SVC-A",
            "-A KUBE-SVC-A -j DNAT --to-destination 10.244.0.5:6443",
            "-A OUTPUT -j MARKER", "COMMIT"]
    first = _parse(save, 4)
    same = _parse(list(save), 4, reuse=first)
    assert same[0] is first[0]  # nothing changed: the very table, its hook index too
    # a new endpoint: only KUBE-SVC-A is built again
    moved = [x.replace("10.244.0.5", "10.244.0.6") for x in save]
    second = _parse(moved, 4, reuse=first)
    a, b = first[0].chains, second[0].chains
    assert b["KUBE-SERVICES"] is a["KUBE-SERVICES"] and b["PREROUTING"] is a["PREROUTING"]
    assert b["KUBE-SVC-A"] is not a["KUBE-SVC-A"]
    assert b["KUBE-SVC-A"].rules[0].arg == "10.244.0.6:6443"
    # `-j MARKER` names no chain (a target) until a chain of that name exists
    assert a["OUTPUT"].rules[0].target == "MARKER"
    declared = [*moved[:4], ":MARKER - [0:0]", *moved[4:]]
    third = _parse(declared, 4, reuse=second)
    out = third[0].chains["OUTPUT"].rules[0]
    assert (out.target, out.arg) == ("JUMP", "MARKER")
    assert _value(third) == _value(_parse(declared, 4))
    # and back: the chain deleted, the jump is a target again
    fourth = _parse(moved, 4, reuse=third)
    assert fourth[0].chains["OUTPUT"].rules[0].target == "MARKER"
    # the other family's tables are never taken
    assert _parse(save, 6, reuse=first)[0].chains["KUBE-SERVICES"] is not a["KUBE-SERVICES"]


def _splice(last, lines: list[str], fam: int):
    """The iptables-nft splice's lines for `lines` over the state of `last` (its parse):
    the chains whose lines or policy changed re-read (lists), the others kept (packed)."""
    from nodeward.collect.iptsplice import kept, render

    state = kept(last)
    new = {t.name: t for t in _parse(lines, fam)}
    for name, t in state.items():
        now = new.get(name)
        if now is None:
            return None  # a table gone: the splice saves in full
        for chain in t.names():
            if chain not in now.chains:
                t.drop(chain)
        for chain, c in now.chains.items():
            was = t.base.get(chain)
            if was is None or chain in t.gone or was.rule_texts() != c.rule_texts() or \
                    was.policy != c.policy:
                t.put(chain, c.policy or "-", c.rule_texts())
    return render(state) if set(new) == set(state) else None


def test_the_splice_kept_chains_taken_whole_give_what_a_fresh_parse_gives() -> None:
    """parse_iptables_save(kept=): a splice's unchanged chains are the last parse's Chain
    objects, taken without reading their lines, and the tables (and digest_tables, the
    fingerprint) equal a fresh parse's of the same lines, on every real dump the splice
    keeps, changed as above (a chain named after a target a kept rule uses included)."""
    from nodeward.collect.iptsplice import reproducible
    from nodeward.collect.ruleset import digest_tables

    if rw.available():
        pytest.skip(rw.available())
    rnd = random.Random(24)
    checked = whole = 0
    for path, fam in rw.ipt_files():
        lines = path.read_text().splitlines()
        if not reproducible(lines):
            continue
        try:
            last = _parse(lines, fam)
        except ValueError:
            continue
        for _step in range(4):
            lines = _mutate(lines, rnd)
            try:
                _parse(lines, fam)
            except ValueError:
                break
            spliced = _splice(last, lines, fam)
            if spliced is None:
                break
            flat = list(spliced)
            fresh = _parse(flat, fam)
            again = parse_iptables_save(spliced, frontend="iptables-nft", family=fam,
                                        reuse=last, kept=spliced.kept)
            assert _value(again) == _value(fresh), rw.rel(path)
            assert digest_tables(again) == digest_tables(fresh), rw.rel(path)
            olds = {id(c) for t in last for c in t.chains.values() if c.rules}
            whole += sum(id(c) in olds for t in again for c in t.chains.values())
            last = again
            checked += 1
    assert checked >= 250, checked
    assert whole > 2000, whole


def test_a_kept_chain_is_not_taken_whole_when_its_parse_would_change() -> None:
    """A kept chain whose `-j X` becomes a jump (X declared meanwhile), or with a line
    whose parse hangs on more than its target (two -j: only this parser's input, never
    iptables-save's; the first one's chain deleted), is parsed again, not taken: the
    result is a fresh parse's."""
    from nodeward.collect.iptsplice import kept, render

    save = ["*filter", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            ":FORWARD ACCEPT [0:0]", ":KUBE-A - [0:0]", ":KUBE-B - [0:0]",
            "-A INPUT -j KUBE-A", "-A KUBE-A -s 10.0.0.1/32 -j DROP",
            "-A OUTPUT -p tcp -j MARKER", "-A FORWARD -j KUBE-B -j ACCEPT", "COMMIT"]
    first = _parse(save, 4)
    assert first[0].tangled == {"FORWARD"}
    state = kept(first)
    # nothing re-read: every chain but the tangled one taken whole
    rendered = render(state)
    same = parse_iptables_save(rendered, frontend="iptables-nft", reuse=first,
                               kept=rendered.kept)
    assert same[0].chains["OUTPUT"] is first[0].chains["OUTPUT"]
    assert same[0].tangled == {"FORWARD"}
    # MARKER declared, KUBE-B deleted: OUTPUT's rule is a jump now, and FORWARD's line
    # is a KUBE-B target (its options: the rest), no longer an ACCEPT
    state["filter"].put("MARKER", "-", [])
    state["filter"].drop("KUBE-B")
    rendered = render(state)
    again = parse_iptables_save(rendered, frontend="iptables-nft", reuse=same,
                                kept=rendered.kept)
    fresh = _parse(list(rendered), 4)
    assert _value(again) == _value(fresh)
    out = again[0].chains["OUTPUT"].rules[0]
    assert (out.target, out.arg) == ("JUMP", "MARKER")
    assert again[0].chains["KUBE-A"] is first[0].chains["KUBE-A"]  # still taken whole
    assert first[0].chains["FORWARD"].rules[0].target == "ACCEPT"
    assert again[0].chains["FORWARD"].rules[0].target == "KUBE-B"
