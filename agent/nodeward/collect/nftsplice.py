"""Native nf_tables tables kept per chain and re-read only where nf_tables says they changed.

kube-proxy's nftables mode changes endpoints by rewriting a few per-service chains (new
endpoint chains, the service chain flushed and refilled, the stale endpoint chains flushed
then deleted a sync later) and by adding or removing map elements; a full netlink read of
its 50,000-rule table decodes every rule and dumps every anonymous set again (~1 s of CPU).
After one full read (collect/nftnl.py) the table's model is kept, and a read
- takes the change events since the last read, provably complete (iptsplice.NftSaves owns
  the one nfchanges.Watch: generation ids without a gap, no overflow), else reads in full;
- re-reads each chain a rule or chain event names (one GETRULE dump filtered by table and
  chain), after a chain event the table's chain list (creations, deletions, order), and
  each named set an event names (GETSET, GETSETELEM); anonymous sets are fetched as the
  rules that own them are decoded;
- reads in full instead on a table event, more than MAX_OBJECTS objects to re-read, or an
  unexpected answer;
- on a write during the read (the generation id moved, or a dump was interrupted: the
  spliced model would mix two moments) takes the transactions committed meanwhile
  (iptsplice.NftSaves.native_advance) and splices again from the kept model with every
  change since it, up to RETRIES times, then reads in full. kube-proxy syncs every second
  at scale: a full read each time a sync lands inside the read was the churn's memory and
  CPU spikes.
Unchanged chains are the same Chain objects as before (the evaluator's index on them
stays). The digest is chained: the last one and every re-read object's bytes, so equal
digests still mean equal models (a fresh read's digest differs: a cache miss, no more).
Read-only: only GET requests are sent.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from ..memtrim import give_back
from ..ruleset.model import Chain, IpSet, Rule, Table
from . import nfgen, nftnl
from .nfchanges import Change
from .nfgen import FAMILY_NUMBERS, DumpSocket, NetlinkReadFailed
from .nftdelin import SetInfo, attrs, decode_rule, elem_order, finish_elems, text_attr

_NLA = struct.Struct("=HH")
#: Past this many chains and sets to re-read, one full read is cheaper.
MAX_OBJECTS = 2000
#: Splices again after a write during the read, at most this many times.
RETRIES = 3

#: What a splice that saw a write during its read asks for (NftSaves.native_advance):
#: (every change since the kept models, the generation that is complete at, the native
#: tables read earlier this cycle whose kept models those writes made stale); the first two
#: None when that cannot be proved.
Advance = Callable[[], tuple[set[Change] | None, int | None, set[tuple[str, str]]]]


class SpliceFailed(Exception):
    """The splice cannot vouch for its result: read the table in full."""


class Raced(SpliceFailed):
    """Written during the read: the splice mixed two moments (splice again, or read)."""


@dataclass
class _Kept:
    table: Table
    sets: dict[str, IpSet]
    named: dict[str, SetInfo]
    rules: int
    digest: str

    def as_read(self) -> nftnl.TableRead:
        return nftnl.TableRead((self.table,), self.sets, self.rules, self.digest, self.named)


class _Sets:
    """The sets a rule's lookup names: the named ones kept, any other (an anonymous set,
    bound to the rule being decoded) fetched with its elements on first use."""

    def __init__(self, sk: DumpSocket, fam: int, tname: bytes, named: dict[str, SetInfo],
                 h: Any) -> None:
        self.sk, self.fam, self.tname, self.named, self.h = sk, fam, tname, named, h
        self.fetched: dict[str, SetInfo | None] = {}

    def get(self, name: str) -> SetInfo | None:
        got = self.named.get(name)
        if got is not None:
            return got
        if name not in self.fetched:
            self.fetched[name] = fetch_set(self.sk, self.fam, self.tname, name, self.h)
        return self.fetched[name]


def _chain_name(msg: bytes) -> str | None:
    """NFTA_CHAIN_NAME of a NEWCHAIN message (the kernel puts it third: table, handle)."""
    a, end = 0, len(msg)
    while a + 4 <= end:
        ln, typ = _NLA.unpack_from(msg, a)
        if ln < 4:
            break
        if typ & 0x3FFF == 3:
            return msg[a + 4:a + ln].split(b"\0", 1)[0].decode("utf-8", "replace")
        a += (ln + 3) & ~3
    return None


def shared_with(new: IpSet, old: IpSet | None) -> IpSet:
    """`new` holding `old`'s own element and member objects where they are equal: a
    kube-proxy map of 8,600 elements re-read for one changed element would otherwise be
    ~2.5 MB of new tuples a sync, each beside the live model (pymalloc's arenas then
    stay, half used: the daemon's RSS grew ~15 MB over cycles of churn)."""
    if old is None or (not old.elements and not old.members):
        return new
    els = {e: e for e in old.elements}
    mem = {m: m for m in old.members}
    return IpSet(new.name, new.type, tuple([mem.get(m, m) for m in new.members]),
                 tuple([els.get(e, e) for e in new.elements]), new.keyed)


def _set_head(sk: DumpSocket, fam: int, tname: bytes, name: str, h: Any) -> SetInfo | None:
    a = sk.get(nftnl.GETSET, fam, nftnl._nla(1, tname) + nftnl._nla(2, name.encode() + b"\0"))
    h.update(b"\0set\0" + name.encode())
    if a is None:
        return None
    info = nftnl.set_info(attrs(a), h)
    if info.name != name:
        raise SpliceFailed(f"asked for set {name}, got {info.name}")
    return info


def fetch_set(sk: DumpSocket, fam: int, tname: bytes, name: str, h: Any) -> SetInfo | None:
    """One set and its elements (None: it does not exist), hashed into `h`."""
    info = _set_head(sk, fam, tname, name, h)
    if info is not None:
        nftnl.fetch_elems(sk, fam, tname, info, h)
    return info


#: Elements of a re-read map decoded and modelled per slice of this many: all of a kube-proxy
#: map's 8,600 as nft -j lists them (three dicts each) were ~9 MB at once, beside the model.
CHUNK = 512


def model_set(family: str, table: str, info: SetInfo, raw: list, old: IpSet | None) -> IpSet:
    """The named set from its raw elements, sharing `old`'s equal ones (shared_with). A map
    is decoded a CHUNK of (sorted) elements at a time; what finish_elems cannot decode, or
    an interval set (its ends pair across elements), goes the whole way at once."""
    if not info.is_map or info.flags & 0x4 or not info.key_types or len(raw) <= CHUNK:
        finish_elems(info, raw)
        return shared_with(nftnl.out_set(family, table, info), old)
    raw.sort(key=elem_order(info))
    pool = {e: e for e in old.elements} if old is not None else {}
    els: list = []
    for i in range(0, len(raw), CHUNK):
        part = replace(info, elems=[])
        finish_elems(part, raw[i:i + CHUNK])
        if not part.ok:
            finish_elems(info, raw)  # (it says what was not understood, as a full read)
            return shared_with(nftnl.out_set(family, table, info), old)
        got = nftnl.out_set(family, table, part)  # (the last slice's goes as this one comes)
        els.extend(pool.get(e, e) for e in got.elements)
        del part
    return IpSet(got.name, got.type, (), tuple(els), got.keyed)


def _touched(changes: set[Change], family: str, name: str) -> set[tuple[str, str]]:
    """The (kind, object) changes of one table."""
    return {(kind, obj) for fam, kind, table, obj in changes
            if fam == family and table == name}


class NativeTables:
    """The kept native tables of one network namespace, by (family, name)."""

    def __init__(self) -> None:
        self.kept: dict[tuple[str, str], _Kept] = {}
        self.full_reads = 0
        self.splices = 0
        self.chains_read = 0
        self.sets_read = 0
        self.why: dict[str, int] = {}  # why reads were not spliced (the benchmark prints it)
        self.retries = 0  # splices done again after a write during the read

    def retain(self, tables: Iterable[tuple[str, str]]) -> None:
        """Forget the tables not listed any more."""
        keep = set(tables)
        for key in [k for k in self.kept if k not in keep]:
            del self.kept[key]

    def read(self, family: str, name: str, max_rules: int,
             changes: set[Change] | None, gen: int | None,
             advance: Advance | None = None) -> Any:
        """The table as nftnl.read_table gives it (a TableRead), or the exception that
        stopped the read (NetlinkReadFailed, CeilingPassed), as ruleset.read_native.
        `changes`: every change since the last read, at generation `gen` (None: unknown);
        `advance`: where a splice that saw a write during its read gets the changes up to
        now (None: it reads in full)."""
        key = (family, name)
        kept = self.kept.pop(key, None)  # (a failed read keeps nothing)
        if kept is not None and kept.rules > max_rules:
            kept = None  # the ceiling moved below it (other front-ends grew): the full
            # read reports it
        if kept is not None and changes is not None and gen is not None:
            mine = _touched(changes, family, name)
            if not mine:
                self.kept[key] = kept
                return kept.as_read()
            got = None
            for attempt in range(RETRIES + 1):
                try:
                    got = self._splice(family, name, kept, mine, gen, max_rules)
                except nftnl.CeilingPassed as e:
                    return e
                except (Raced, nfgen.DumpVanished):  # (a set deleted mid-read: raced too)
                    self._note("written during the read")
                    if advance is None or attempt == RETRIES:
                        break
                    since, gen, stale = advance()
                    for other in stale - {key}:  # read in full next cycle
                        self.kept.pop(other, None)
                    if since is None or gen is None:
                        break
                    # every change since the kept model: the first read's and the writes'
                    # that raced it (a chain written in both is read once, as it is now)
                    mine = _touched(since, family, name)
                    self.retries += 1
                    continue
                except (SpliceFailed, NetlinkReadFailed, OSError, struct.error, IndexError,
                        KeyError, ValueError, TypeError, AttributeError) as e:
                    self._note(f"{type(e).__name__}: {e}")
                break
            del kept
            if got is not None:
                self.splices += 1
                self.kept[key] = got
                give_back()  # (the splice's dumps and decoded rules)
                return got.as_read()
        else:
            self._note("not read before" if kept is None else "changes unknown")
            del kept
        return self._full(family, name, max_rules)

    def _note(self, why: str) -> None:
        self.why[why[:120]] = self.why.get(why[:120], 0) + 1

    def _full(self, family: str, name: str, max_rules: int) -> Any:
        self.full_reads += 1
        try:
            got = nftnl.read_table(family, name, max_rules=max_rules)
        except (nftnl.NetlinkReadFailed, nftnl.CeilingPassed) as e:
            give_back()
            return e
        # the read's buffers, decoded dicts and memo are freed by now; glibc keeps their
        # pages between the model's objects unless asked
        give_back()
        self.kept[(family, name)] = _Kept(got.tables[0], got.sets, got.named, got.rules,
                                          got.digest)
        return got

    def _splice(self, family: str, name: str, kept: _Kept, mine: set[tuple[str, str]],
                gen: int, max_rules: int) -> _Kept | None:
        """The kept table with the changed objects re-read; None when a full read must
        decide (a table event, too much changed). Raises Raced on a write during the
        read."""
        if any(kind == "table" for kind, _o in mine):
            self._note("a table event")
            return None
        chains = {o for kind, o in mine if kind in ("rule", "chain")}
        sets = {o for kind, o in mine if kind == "set"}
        relist = any(kind == "chain" for kind, _o in mine)
        if len(chains) + len(sets) > MAX_OBJECTS:
            self._note("too many changes")
            return None
        fam = FAMILY_NUMBERS[family]
        tname = name.encode() + b"\0"
        h = hashlib.sha256(kept.digest.encode())
        try:
            sk = DumpSocket(5.0)
        except OSError as e:
            raise SpliceFailed(str(e)) from None
        try:
            named = dict(kept.named)
            out_sets = dict(kept.sets)
            lookups = _Sets(sk, fam, tname, named, h)
            for sname in sorted(sets):
                info = _set_head(sk, fam, tname, sname, h)
                raw = nftnl.read_elems(sk, fam, tname, info, h) if info is not None else []
                skey = f"nft:{family}:{name}:{sname}"
                named.pop(sname, None)
                out_sets.pop(skey, None)
                if info is None or info.anonymous:
                    if info is not None:
                        finish_elems(info, raw)
                    lookups.fetched[sname] = info  # gone, or bound to a rule decoded below
                    continue
                out_sets[skey] = model_set(family, name, info, raw, kept.sets.get(skey))
                del raw
                info.elems = []
                named[sname] = info
                self.sets_read += 1
            old = kept.table.chains
            # the new table's chains in order, the unchanged ones as they were, the changed
            # ones None until re-read below; one dict of 25,000 built, not three (a copy,
            # the chain list and its joined names were ~4 MB of glibc heap a splice)
            out: dict[str, Chain | None]
            infos: dict[str, dict[str, Any]] = {}  # a chain event's chain: its metadata
            if relist:
                out = {}
                order = hashlib.sha256()
                for _f, msg in sk.dump(nftnl.GETCHAIN, fam, nftnl._nla(1, tname)):
                    cname = _chain_name(msg)  # (25,000 chains: only the touched decoded)
                    was = old.get(cname)  # type: ignore[arg-type]
                    if was is not None:
                        # its own name, not the one just decoded: 25,000 new strs (2.4 MB)
                        # a splice kept as the new dict's keys, beside the chains' names
                        cname = was.name
                    if cname in chains:
                        a = attrs(msg)
                        if text_attr(a.get(1)) != name:
                            raise SpliceFailed("a chain of another table in the dump")
                        c = nftnl.chain_info(family, name, a)
                        cname = c["name"]  # (the key is the Chain's own name)
                        infos[cname] = c
                        out[cname] = None
                        h.update(repr(sorted(c.items())).encode())
                    elif was is not None:
                        out[cname] = was
                    else:
                        raise SpliceFailed(f"chain {cname} appeared without an event")
                    order.update(cname.encode() + b"\0")
                h.update(order.digest())  # the order
                if any(c not in out and c not in chains for c in old):
                    raise SpliceFailed("a chain went without an event")
            else:
                if any(c not in old for c in chains):
                    raise SpliceFailed("a rule event for a chain not read before")
                out = dict(old)
            memo: dict[bytes, Any] = {}
            shared: tuple[dict, dict] = ({}, {})

            def setkey(s: str) -> str:
                return f"nft:{family}:{name}:{s}"

            total = kept.rules
            for cname in [n for n in out if n in chains]:  # (in the table's order)
                was = old.get(cname)
                c = infos.get(cname)
                rules: list[Rule] = []
                h.update(b"\0chain\0" + cname.encode())
                body = nftnl._nla(1, tname) + nftnl._nla(2, cname.encode() + b"\0")
                # the whole chain first: decoding may ask for a set on the same socket
                for msg in [m for _f, m in sk.dump(nftnl.GETRULE, fam, body)]:
                    r = decode_rule(family, name, msg, lookups, h, memo)  # type: ignore[arg-type]
                    if r["chain"] != cname:
                        raise SpliceFailed(f"a rule of {r['chain']} in the dump of {cname}")
                    rules.append(nftnl.rule_model(r, setkey, shared))
                self.chains_read += 1
                total += len(rules) - (len(was.rules) if was is not None else 0)
                if c is None:  # no chain event: the chain itself is as it was
                    if was is None:
                        raise SpliceFailed(f"chain {cname} not read before")
                    out[cname] = Chain(cname, tuple(rules), was.policy, was.hook,
                                       was.priority)
                else:
                    out[cname] = nftnl.chain_model(c, tuple(rules))
            for cname in chains:
                if cname not in out and old.get(cname) is not None:
                    total -= len(old[cname].rules)  # deleted
            if total > max_rules:
                raise nftnl.CeilingPassed(f"more than {max_rules:,} rules")
            if sk.interrupted or nfgen.generation_id() != gen:
                raise Raced("written during the read")  # the model would mix two moments
        except Raced:
            raise
        except SpliceFailed:
            # what the dumps gave disagrees with the changes (a chain that appeared or went
            # without an event): a write since `gen` explains it (kube-proxy created an
            # endpoint chain while the chains were listed), so splice again on top of it
            if sk.interrupted or nfgen.generation_id() != gen:
                raise Raced("written during the read") from None
            raise
        finally:
            sk.close()
        return _Kept(Table("nft", family, name, out), out_sets, named, total,  # type: ignore[arg-type]
                     h.hexdigest())
