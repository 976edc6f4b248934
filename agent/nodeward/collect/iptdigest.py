"""Which iptables-nft chains changed, from a raw rule dump, when no change events can say.

A full rewrite (older kube-proxy every sync, modern kube-proxy's hourly resync: every chain
flushed and re-added in one transaction) is ~150,000 nf_tables events, past what
nfchanges.Watch follows, so iptsplice.NftSaves would save everything again (1.4 s of CPU at
50,000 rules, growing about quadratically). Yet such a rewrite re-adds mostly the same
rules. One NFT_MSG_GETRULE dump per table, not decoded (~0.3 s at 50,000 rules), digested
per chain (each rule's expression bytes, the live counters of `counter` expressions and the
rule handles left out), plus one NFT_MSG_GETCHAIN dump for the policies, tells which chains
differ from the last read: only those are read again with `iptables-nft -S CHAIN`.
Read-only.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable

from . import nfgen
from .iptsplice import MAX_CHAINS, Lines, NftSaves, Runner, render
from .nfgen import FAMILY_NUMBERS, DumpSocket, NetlinkReadFailed

GETCHAIN, GETRULE = 4, 7
_NLA = struct.Struct("=HH")
#: Expressions whose attributes carry live state: only their name is digested.
_STATEFUL = (b"counter\0", b"quota\0", b"last\0", b"connlimit\0")

#: table -> chain -> (policy or "" for a user chain, digest of its rules)
Digests = dict[str, dict[str, tuple[str, bytes]]]


def _nla(typ: int, value: bytes) -> bytes:
    b = _NLA.pack(4 + len(value), typ) + value
    return b + b"\0" * (-len(b) % 4)


def _attrs(buf: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    a, end = 0, len(buf)
    while a + 4 <= end:
        ln, typ = _NLA.unpack_from(buf, a)
        if ln < 4:
            raise NetlinkReadFailed("corrupt netlink attribute")
        out[typ & 0x3FFF] = buf[a + 4:a + ln]
        a += (ln + 3) & ~3
    return out


def _text(b: bytes | None) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "surrogateescape") if b else ""


#: The NFTA_EXPR_NAME attribute of each of them, as the kernel lays it out (a rule's
#: expressions are compared with these at their start: no decoding of the others).
_STATEFUL_NAMES = tuple(_NLA.pack(4 + len(n), 1) + n for n in _STATEFUL)


def rule_bytes(msg: bytes) -> tuple[str, bytes]:
    """(chain, what the rule is): its expressions with stateful ones reduced to their
    name, and its user data; not its handle or position. Pure. (50,000 rules a read: the
    expressions are walked by their lengths only.)"""
    unpack = _NLA.unpack_from
    a, end = 0, len(msg)
    chain, user = b"", b""
    ex, ex_end = 0, 0
    while a + 4 <= end:
        ln, typ = unpack(msg, a)
        if ln < 4:
            raise NetlinkReadFailed("corrupt netlink attribute")
        t = typ & 0x3FFF
        if t == 2:
            chain = msg[a + 4:a + ln]
        elif t == 4:
            ex, ex_end = a + 4, min(a + ln, end)
        elif t == 7:
            user = msg[a + 4:a + ln]
        a += (ln + 3) & ~3
    parts = []
    keep = pos = ex
    while pos + 4 <= ex_end:
        ln, _t = unpack(msg, pos)
        if ln < 4:
            raise NetlinkReadFailed("corrupt netlink attribute")
        if msg.startswith(_STATEFUL_NAMES, pos + 4):  # its name only, not its state
            name_len = unpack(msg, pos + 4)[0]
            parts.append(msg[keep:pos + 4 + name_len])
            keep = pos + ((ln + 3) & ~3)
        pos += (ln + 3) & ~3
    parts.append(msg[keep:ex_end])
    parts.append(b"\0u\0" + user)
    return chain.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"), b"\0e\0".join(parts)


def chain_digests(family: str, tables: Iterable[str], timeout: float = 30.0
                  ) -> tuple[Digests, bool]:
    """The digests of every chain of `tables` (iptables-nft's own) of `family` ("ip",
    "ip6"), and whether a write interrupted a dump (then they mix two moments). Raises
    NetlinkReadFailed."""
    fam = FAMILY_NUMBERS[family]
    want = set(tables)
    out: Digests = {}
    try:
        sk = DumpSocket(timeout)
    except OSError as e:
        raise NetlinkReadFailed(f"netlink socket: {e}") from None
    try:
        policies: dict[str, dict[str, str]] = {}
        for _f, msg in sk.dump(GETCHAIN, fam):
            a = _attrs(msg)
            table = _text(a.get(1))
            if table in want:
                pol = ("ACCEPT" if struct.unpack(">I", a[5][:4])[0] == 1 else "DROP") \
                    if 5 in a and 4 in a else ""
                policies.setdefault(table, {})[_text(a.get(3))] = pol
        for table in want:
            chains = policies.get(table, {})
            hashers = {c: hashlib.blake2b(digest_size=16) for c in chains}
            for _f, msg in sk.dump(GETRULE, fam, _nla(1, table.encode() + b"\0")):
                chain, body = rule_bytes(msg)
                h = hashers.get(chain)
                if h is None:
                    raise NetlinkReadFailed(f"a rule of chain {chain} not listed")
                h.update(struct.pack("=I", len(body)))
                h.update(body)
            out[table] = {c: (chains[c], h.digest()) for c, h in hashers.items()}
        return out, sk.interrupted
    except OSError as e:
        raise NetlinkReadFailed(f"nf_tables dump: {e}") from None
    finally:
        sk.close()


def changed(old: Digests, new: Digests) -> set[tuple[str, str]] | None:
    """(table, chain) pairs to read again, with (table, "") when the table's chain list
    changed (iptsplice's plan form); None when a table appeared or went."""
    if set(old) != set(new):
        return None
    todo: set[tuple[str, str]] = set()
    for table, chains in new.items():
        was = old[table]
        if set(was) != set(chains):
            todo.add((table, ""))
        for c, d in chains.items():
            if was.get(c) != d:
                todo.add((table, c))
        todo |= {(table, c) for c in was if c not in chains}
    return todo


class DigestSaves(NftSaves):
    """iptsplice.NftSaves where the events cannot say what changed (the watch gave up on a
    full rewrite, or lost events) but a save was read before: the chains whose digest
    moved are re-read with `-S`, the rest kept; a save in full only when that cannot be
    proved (a table appeared or went, more than MAX_CHAINS chains differ, a write during
    the read). Digests are kept only after a save that was not the first (a node whose
    events are followed never needs them) and dropped after an event-based splice."""

    def __init__(self) -> None:
        super().__init__()
        self.digests: dict[int, Digests | None] = {}
        self.digest_reads = 0  # reads decided by digests, not events
        self._first: set[int] = set()
        self._last_failure = ""

    def read(self, family: int, full: Callable[[], Lines | None],
             run: Runner) -> Lines | None:
        state = self.states.get(family)
        old = self.digests.get(family)
        if state is not None and self.plan.get(family) is None and old is not None:
            for _ in range(2):  # a write during the read: once more, then a save
                got = self._by_digest(family, state, old, run)
                if got is not None:
                    return got
                if self.digests.get(family) is None and got is None and \
                        self._last_failure != "moved":
                    break
        if self.plan.get(family) is not None:  # events decide (and digests go stale)
            if self.plan[family]:
                self.digests[family] = None
            return super().read(family, full, run)
        self.digests[family] = None
        if family not in self._first or state is None:
            self._first.add(family)
            return super().read(family, full, run)
        # the baseline for the next full rewrite, taken before the save and kept when no
        # write came between the two
        before = nfgen.generation_id()
        base = self._digests(family, state)
        lines = super().read(family, full, run)
        if base is not None and lines is not None and before is not None and \
                nfgen.generation_id() == before and set(base) == {
                    x[1:] for x in lines if x.startswith("*")}:
            self.digests[family] = base
        return lines

    def _digests(self, family: int, tables) -> Digests | None:
        try:
            got, torn = chain_digests("ip" if family == 4 else "ip6", tables)
        except NetlinkReadFailed:
            return None
        return None if torn else got

    def _by_digest(self, family: int, state, old: Digests, run: Runner) -> Lines | None:
        """The save by digests, consistent at one generation id; None (and why in
        _last_failure: "moved" when a write came during it) when it cannot be."""
        self.digests[family] = None
        self._last_failure = "other"
        before = nfgen.generation_id()
        new = self._digests(family, state)
        if new is None or before is None:
            self._last_failure = "moved" if new is None else "other"
            return None
        todo = changed(old, new)
        if todo is None or len(todo) > MAX_CHAINS:
            return None
        if nfgen.generation_id() != before:
            self._last_failure = "moved"
            self.digests[family] = old
            return None
        work = {t: x.copy() for t, x in state.items()}
        if todo and not self._splice(family, work, todo, run):
            return None
        if nfgen.generation_id() != before:
            self._last_failure = "moved"
            self.digests[family] = old
            return None
        state.update(work)
        self.digests[family] = new
        self.digest_reads += 1
        self._rebase[family] = True  # parsed() keeps the parse of these lines
        return render(state)
