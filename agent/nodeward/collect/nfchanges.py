"""Which nf_tables chains changed, from the kernel's own change events.

The kernel sends every committed nf_tables change to the NFNLGRP_NFTABLES multicast group
(what `nft monitor` reads): one message per rule, chain, table, set, ... added or deleted,
naming its table and chain, then NFT_MSG_NEWGEN with the transaction's generation id. A
socket subscribed before a full read therefore learns exactly which chains a writer touched
since (kube-proxy: a few endpoint chains per sync), at a cost proportional to the change,
where a fresh `iptables-nft-save` costs 1.2 s of CPU at 50,000 rules and a raw rule dump
~1 s (the kernel resumes a dump by walking what it already sent).

Nothing is trusted unless provably complete: the generation ids of the transactions seen
must run without a gap from the last read's id to the current one (NFT_MSG_GETGEN), and a
socket that overflowed (ENOBUFS: the kernel dropped events) says so. Either failure means
"read everything". Read-only; the network namespace of the thread that opened the socket.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from .nfgen import (
    _HDR,
    _NFGEN,
    _NLA,
    FAMILY_NUMBERS,
    NETLINK_NETFILTER,
    NFNL_SUBSYS_NFTABLES,
    DumpSocket,
    NetlinkReadFailed,
)

NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SO_RCVBUFFORCE = 33
NFT_MSG_NEWTABLE, NFT_MSG_DELTABLE = 0, 2
NFT_MSG_NEWCHAIN, NFT_MSG_GETCHAIN, NFT_MSG_DELCHAIN = 3, 4, 5
NFT_MSG_NEWRULE, NFT_MSG_DELRULE = 6, 8
NFT_MSG_NEWSET, NFT_MSG_DELSET, NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 9, 11, 12, 14
NFT_MSG_NEWGEN = 15
NFTA_GEN_ID = 1
#: every nf_tables object message names its table in attribute 1 (NFTA_*_TABLE)
NFTA_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_PAD = 3, 4, 9
#: Events that dropped messages or a corrupt answer: read everything.
RCVBUF = 16 << 20


#: One object event: (family, kind, table, chain). kind "rule" or "chain" (with its
#: chain), "set" (a set or its elements, with the set's name in the chain slot: the native
#: splice re-reads that set), "table", or "other" (stateful objects, flowtables).
#: iptables-nft writes no sets or objects.
Change = tuple[str, str, str, str]


@dataclass
class Transaction:
    gen: int
    changes: set[Change] = field(default_factory=set)


def _attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type without flags, start of the attribute, end of its value)."""
    a = start
    while a + 4 <= end:
        nla_len, nla_type = _NLA.unpack_from(data, a)
        if nla_len < 4:
            raise OSError("corrupt netlink attribute")
        yield nla_type & 0x3FFF, a, min(a + nla_len, end)
        a += (nla_len + 3) & ~3


def _string(data: bytes, a: int, end: int) -> str:
    return data[a + 4:end].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def parse_events(data: bytes | bytearray, pending: set[Change], out: list[Transaction],
                 size: int | None = None) -> None:
    """Add to `pending` each object event in the first `size` bytes of `data` (all of it
    by default), and close it into a Transaction in `out` at each NFT_MSG_NEWGEN. Pure
    (tested on bytes built by hand). Raises OSError on a corrupt buffer."""
    off = 0
    size = len(data) if size is None else size
    unpack_hdr, unpack_nla = _HDR.unpack_from, _NLA.unpack_from
    while off + _HDR.size <= size:
        length, mtype, _f, _seq, _pid = unpack_hdr(data, off)
        if length < _HDR.size + _NFGEN.size or off + length > size:
            raise OSError("corrupt netlink event")
        end = off + length
        if mtype >> 8 == NFNL_SUBSYS_NFTABLES:
            msg = mtype & 0xFF
            fam = _FAMILIES.get(data[off + _HDR.size], "?")
            a = off + _HDR.size + _NFGEN.size
            if msg == NFT_MSG_NEWGEN:
                gen = None
                for t, x, e in _attrs(data, a, end):
                    if t == NFTA_GEN_ID and e - x >= 8:
                        gen = struct.unpack_from(">I", data, x + 4)[0]
                if gen is None:
                    raise OSError("NFT_MSG_NEWGEN without an id")
                out.append(Transaction(gen, set(pending)))
                pending.clear()
            else:
                rule = msg in (NFT_MSG_NEWRULE, NFT_MSG_DELRULE)
                named = rule or msg in _NAMED_MSGS  # NFTA_SET_NAME, ..._ELEM_LIST_SET: 2
                want = NFTA_RULE_CHAIN if rule or msg in _SET_MSGS else NFTA_CHAIN_NAME
                table = chain = ""
                while a + 4 <= end:  # the kernel puts the table and chain first
                    nla_len, nla_type = unpack_nla(data, a)
                    if nla_len < 4:
                        raise OSError("corrupt netlink attribute")
                    t = nla_type & 0x3FFF
                    if t == NFTA_TABLE:
                        table = data[a + 4:min(a + nla_len, end)].split(b"\0", 1)[0].decode(
                            "utf-8", "surrogateescape")
                    elif t == want:
                        chain = data[a + 4:min(a + nla_len, end)].split(b"\0", 1)[0].decode(
                            "utf-8", "surrogateescape")
                    if table and (chain or not named):
                        break
                    a += (nla_len + 3) & ~3
                if not table or (named and not chain):
                    raise OSError("nf_tables event without its table or chain")
                if rule:
                    pending.add((fam, "rule", table, chain))
                elif msg in _CHAIN_MSGS:
                    pending.add((fam, "chain", table, chain))
                elif msg in _SET_MSGS:
                    pending.add((fam, "set", table, chain))
                elif msg in (NFT_MSG_NEWTABLE, NFT_MSG_DELTABLE):
                    pending.add((fam, "table", table, ""))
                else:
                    pending.add((fam, "other", table, ""))
        off += (length + 3) & ~3


_FAMILIES = {v: k for k, v in FAMILY_NUMBERS.items()}
_CHAIN_MSGS = (NFT_MSG_NEWCHAIN, NFT_MSG_DELCHAIN)
_SET_MSGS = (NFT_MSG_NEWSET, NFT_MSG_DELSET, NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM)
_NAMED_MSGS = _CHAIN_MSGS + _SET_MSGS
#: Transactions kept between two reads; past it the watch gives up (read everything).
MAX_PENDING = 10_000
#: Distinct (family, kind, table, chain) changes in one transaction past which the watch
#: gives up: that many chains are cheaper read by one save than one by one.
MAX_CHANGES = 1000


class Watch:
    """A subscription to nf_tables change events, drained by its own thread as they come
    (a kube-proxy sync is ~30,000 events: left in the socket between two reads they
    would pass any sane buffer, and socket memory is charged to the daemon's cgroup).
    Only what changed is kept: per transaction, the set of (family, kind, table, chain).
    Open it before the read it follows."""

    def __init__(self) -> None:
        """Raises OSError when it cannot subscribe (no nf_tables, not CAP_NET_ADMIN)."""
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            try:  # root may pass rmem_max: room for one sync while the thread catches up
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self.sock.bind((0, 0))
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
            self.sock.settimeout(0.5)  # so close() is noticed
        except OSError:
            self.sock.close()
            raise
        self._cond = threading.Condition()
        self._txns: list[Transaction] = []
        self._last: int | None = None  # the last transaction's generation id
        self._lost = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="nf-events", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """False once it gave up (events lost, or too many to follow): open a new one."""
        return not self._lost and not self._closed

    def _give_up(self) -> None:
        """Stop listening: take() answers None from now on (read everything)."""
        with self._cond:
            self._lost = True
            self._txns.clear()
            self._cond.notify_all()
        self.close()

    def _run(self) -> None:
        pending: set[Change] = set()
        buf = bytearray(1 << 20)  # one buffer: no megabyte allocation per message batch
        while not self._closed:
            try:
                got = self.sock.recv_into(buf)
            except TimeoutError:
                continue
            except OSError:  # ENOBUFS (the kernel dropped events), or closed
                self._give_up()
                return
            out: list[Transaction] = []
            try:
                parse_events(buf, pending, out, got)  # in place: no copy per datagram
            except OSError:
                self._give_up()
                return
            # a full rewrite (kube-proxy's full sync: every chain) is read in full anyway:
            # following its ~150,000 events would only cost CPU
            if len(pending) > MAX_CHANGES or any(len(t.changes) > MAX_CHANGES for t in out):
                self._give_up()
                return
            if not out:
                continue
            with self._cond:
                for t in out:
                    if self._last is not None and t.gen != _next(self._last):
                        self._lost = True  # a transaction without its NEWGEN
                    self._last = t.gen
                self._txns += out
                if len(self._txns) > MAX_PENDING:
                    self._lost = True
                if self._lost:
                    self._txns.clear()
                self._cond.notify_all()
            if self._lost:
                self.close()
                return

    def take(self, upto: int, wait: float = 0.5) -> list[Transaction] | None:
        """The transactions up to generation `upto` since the last take (waiting up to
        `wait` s for the thread to see `upto`'s events), in order; later ones stay. None
        when events were lost: read everything then (and open a new Watch)."""
        with self._cond:
            self._cond.wait_for(lambda: self._lost or (self._last is not None
                                and not _after(upto, self._last)), wait)
            if self._lost:
                return None
            got = [t for t in self._txns if not _after(t.gen, upto)]
            self._txns = [t for t in self._txns if _after(t.gen, upto)]
            return got

    def close(self) -> None:
        self._closed = True
        self.sock.close()


def contiguous(txns: list[Transaction], since: int, now: int) -> list[Transaction] | None:
    """The transactions after generation `since`, when they are exactly since+1 .. now;
    None when one is missing (or the id moved without an event): not provably complete."""
    after = [t for t in txns if _after(t.gen, since) and not _after(t.gen, now)]
    expect = since
    for t in after:
        expect = _next(expect)
        if t.gen != expect:
            return None
    return after if expect == now else None


def _next(gen: int) -> int:
    return (gen + 1) & 0xFFFFFFFF


def _after(gen: int, since: int) -> bool:
    """gen is later than since (ids are 32-bit and wrap)."""
    return 0 < (gen - since) & 0xFFFFFFFF < 1 << 31


def chains(family: str, timeout: float = 5.0) -> dict[str, dict[str, bool]] | None:
    """{table: {chain: is a base chain}} of `family` from one NFT_MSG_GETCHAIN dump
    (names and hooks only, no rules: ~30 ms at 15,000 chains). None when it cannot be
    read."""
    fam = FAMILY_NUMBERS.get(family)
    if fam is None:
        return None
    raw: dict[bytes, dict[bytes, bool]] = {}
    unpack_nla = _NLA.unpack_from
    try:
        sk = DumpSocket(timeout)
    except OSError:
        return None
    try:
        for _fam, data in sk.dump(NFT_MSG_GETCHAIN, fam):
            # inline (15,000 chains): table, handle, name, then hook if any
            a, end = 0, len(data)
            table = name = b""
            base = False
            while a + 4 <= end:
                nla_len, nla_type = unpack_nla(data, a)
                if nla_len < 4:
                    return None
                t = nla_type & 0x3FFF
                if t == NFTA_TABLE:
                    table = data[a + 4:a + nla_len]
                elif t == NFTA_CHAIN_NAME:
                    name = data[a + 4:a + nla_len]
                elif t == NFTA_CHAIN_HOOK:
                    base = True
                    break
                elif t > NFTA_CHAIN_HOOK and t != NFTA_CHAIN_PAD and name:
                    break  # the hook comes before any later attribute
                a += (nla_len + 3) & ~3
            if not table or not name:
                return None
            raw.setdefault(table, {})[name] = base
        return _decoded(raw)
    except (OSError, UnicodeError, struct.error, NetlinkReadFailed):
        return None
    finally:
        sk.close()


def _decoded(raw: dict[bytes, dict[bytes, bool]]) -> dict[str, dict[str, bool]]:
    def text(b: bytes) -> str:
        return b.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")

    return {text(t): {text(n): base for n, base in names.items()} for t, names in raw.items()}
