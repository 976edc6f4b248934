"""Native nf_tables tables read over netlink, without `nft`.

`nft -j list ruleset` caches every rule of the ruleset before printing one (370 MB RSS at
50,000 rules, 1.4 GB at 200,000), and a DaemonSet's memory limit counts it. This reads the
same tables with NFT_MSG_GETTABLE/GETSET/GETSETELEM/GETCHAIN/GETRULE dumps on one netlink
socket, decodes each receive buffer with `struct` and hands every rule on as it comes, so
only the model grows. Each rule's expressions are turned back into the elements `nft -j`
prints (collect/nftdelin.py), and ruleset/nft.py's own element code builds the model from
them: one parser for both paths. Read-only: only GET requests are sent.

Hand-written with `struct` rather than pyroute2's nft message classes: pyroute2 0.9.7's
NFTSocket collects a whole dump into message objects before returning it (50,000 rules:
30.8 s and 1.87 GB to fetch and walk them, no model built); this read with the model takes
~2 s and 77 MB. The kernel resumes a rule dump by skipping what it sent (~32 KB a turn),
so its own cost grows quadratically with one table's rules (~10 s of system time at
200,000); `nft` pays the same.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from sys import intern
from typing import Any

from ..ruleset.model import Chain, IpSet, Match, Rule, Table
from ..ruleset.nft import _rule, _set  # the element code nft -j listings go through
from .nfgen import FAMILY_NUMBERS, DumpSocket, DumpVanished, NetlinkReadFailed, generation_id
from .nftdelin import (
    HOOKS,
    SetInfo,
    attr_list,
    attrs,
    data_value,
    decode_rule,
    finish_elems,
    key_types,
    text_attr,
    u32_attr,
)

GETTABLE, GETCHAIN, GETRULE, GETSET, GETSETELEM = 1, 4, 7, 10, 13
NEWTABLE, NEWCHAIN, NEWRULE, NEWSET, NEWSETELEM = 0, 3, 6, 9, 12
#: Reads of one table started again when a write raced them (then: NetlinkReadFailed).
ATTEMPTS = 4

_NLA = struct.Struct("=HH")
_S32 = struct.Struct(">i")


class CeilingPassed(Exception):
    """More rules than the caller's ceiling: the table is not evaluated."""


# -- the dumps ------------------------------------------------------------------------------

def _nla(typ: int, value: bytes) -> bytes:
    b = _NLA.pack(4 + len(value), typ) + value
    return b + b"\0" * (-len(b) % 4)


def _set_info(a: dict[int, bytes]) -> SetInfo:
    fields: list[int] = []
    if 9 in a:  # NFTA_SET_DESC -> NFTA_SET_DESC_CONCAT -> field lengths
        desc = attrs(a[9])
        if 2 in desc:
            for f in attr_list(desc[2]):
                fields.append(u32_attr(attrs(f).get(1)))
    key_len = u32_attr(a.get(5))
    return SetInfo(text_attr(a.get(2)), u32_attr(a.get(3)),
                   key_types(u32_attr(a.get(4)), key_len, fields), key_len, u32_attr(a.get(6)),
                   u32_attr(a.get(7)))


@dataclass
class TableRead:
    tables: tuple[Table, ...]
    sets: dict[str, IpSet]
    rules: int
    digest: str
    #: the named sets as a rule's lookup needs them (their elements left out: the IpSets
    #: in `sets` hold them), for the per-chain splice (collect/nftsplice.py)
    named: dict[str, SetInfo] = field(default_factory=dict)


def read_table(family: str, name: str, *, max_rules: int | None = None,
               timeout: float = 30.0,
               rule_hook: Callable[[dict[str, Any]], None] | None = None) -> TableRead:
    """One native table, streamed: sets and their elements first (a rule's lookup needs
    them), then chains, then the rules, each decoded and built into a Rule as its receive
    buffer is walked. Raises NetlinkReadFailed, CeilingPassed."""
    fam = FAMILY_NUMBERS.get(family)
    if fam is None:
        raise NetlinkReadFailed(f"family {family} not known")
    tname = name.encode() + b"\0"
    last = ""
    for _ in range(ATTEMPTS):
        # sets, chains and rules come in separate dumps: a write between them (the
        # generation id moves) or during one (NLM_F_DUMP_INTR) may have torn the view, as
        # nft also checks. The id is global, so a write to another table moves it too: a
        # table read twice with the same digest did not change meanwhile.
        before = generation_id()
        try:
            got, raced = _read_once(family, fam, name, tname, max_rules, rule_hook, timeout)
        except DumpVanished:
            # a set listed a moment ago is gone: written meanwhile, so read again (before,
            # this fell back to `nft -j`: 370 MB beside the daemon on a churning node)
            if before is not None and generation_id() == before:
                raise  # (not a write: gone without one)
            last = ""
            continue
        if not raced and (before is None or generation_id() == before):
            return got
        if got.digest == last:
            return got
        last = got.digest
        del got  # (its model goes before the next read builds one)
    raise NetlinkReadFailed(f"nf_tables dump of {family} {name}: the table kept changing "
                            f"during {ATTEMPTS} reads")


def _read_once(family: str, fam: int, name: str, tname: bytes, max_rules: int | None,
               rule_hook, timeout: float) -> tuple[TableRead, bool]:
    """One read, and whether a write raced it (the dump said so)."""
    h = hashlib.sha256()
    try:
        sk = DumpSocket(timeout)
    except OSError as e:
        raise NetlinkReadFailed(f"netlink socket: {e}") from None
    try:
        got = _read(sk, family, fam, name, tname, h, max_rules, rule_hook)
        return got, sk.interrupted
    except OSError as e:
        raise NetlinkReadFailed(f"nf_tables dump of {family} {name}: {e}") from None
    except (struct.error, IndexError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise NetlinkReadFailed(f"nf_tables dump of {family} {name} not understood: "
                                f"{type(e).__name__}: {e}") from None
    finally:
        sk.close()


def fetch_elems(sk: DumpSocket, fam: int, tname: bytes, info: SetInfo, h: Any) -> None:
    """One set's elements (one GETSETELEM dump) into info.elems, hashed into `h`."""
    finish_elems(info, read_elems(sk, fam, tname, info, h))


def read_elems(sk: DumpSocket, fam: int, tname: bytes, info: SetInfo, h: Any) -> list:
    """One set's raw elements (key, data, flags, key end), hashed into `h`."""
    raw = []
    body = _nla(1, tname) + _nla(2, info.name.encode() + b"\0")
    for _f, msg in sk.dump(GETSETELEM, fam, body):
        a = attrs(msg)
        for el in attr_list(a.get(3, b"")):
            ea = attrs(el)
            key = data_value(ea.get(1))
            kend = data_value(ea.get(10)) if 10 in ea else None
            raw.append((key, ea.get(2), u32_attr(ea.get(3)), kend))
            h.update(ea.get(1, b""))
            h.update(ea.get(2, b""))
            h.update(ea.get(3, b""))
    return raw


def set_info(a: dict[int, bytes], h: Any) -> SetInfo:
    """A NEWSET message's attributes -> SetInfo (no elements yet), hashed into `h`."""
    for t in (2, 3, 4, 5, 6, 7):
        h.update(a.get(t, b""))
    return _set_info(a)


def chain_info(family: str, name: str, a: dict[int, bytes]) -> dict[str, Any]:
    """A NEWCHAIN message's attributes -> the chain as nft -j lists it (no rules)."""
    # interned: the rules jumping to it (Rule.arg, interned) then share the chain's name
    c: dict[str, Any] = {"family": family, "table": name,
                         "name": intern(text_attr(a.get(3)))}
    if 4 in a:
        hk = attrs(a[4])
        num = u32_attr(hk.get(1))
        c["type"] = text_attr(a.get(7)) or "filter"
        c["hook"] = HOOKS[num] if num < len(HOOKS) else str(num)
        c["prio"] = _S32.unpack_from(hk[2])[0] if 2 in hk else 0
        c["policy"] = "accept" if u32_attr(a.get(5), 1) == 1 else "drop"
    return c


def chain_model(c: dict[str, Any], rules: tuple[Rule, ...] | Chain) -> Chain:
    """The chain of `c`, with `rules` (or those of a Chain holding them, texts packed)."""
    hook = c.get("hook") if c.get("type") in ("filter", "nat", "route") else None
    texts = b""
    if isinstance(rules, Chain):
        rules, texts = rules.rules, rules.texts
    return Chain(c["name"], rules, c.get("policy", "accept").upper() if hook else None, hook,
                 int(c.get("prio", 0)) if hook else 0, texts)


def _tuple(got: list[Rule] | tuple | Chain) -> tuple[Rule, ...] | Chain:
    return got if isinstance(got, Chain) else tuple(got)


def _packed(name: str, got: list[Rule] | Chain) -> list[Rule] | Chain:
    """A chain's rules read so far as a Chain holding their texts packed (model.Chain), once
    the dump has gone on to another chain's: 50,000 rule texts never all wait for the end
    of the dump (~9 MB of the read's peak, then holes in the heap); back to a list when
    its rules come again (the kernel dumps a chain's rules together)."""
    if isinstance(got, list):
        return Chain(name, tuple(got)) if got else got
    return [r._replace(text=t) for r, t in zip(got.rules, got.rule_texts(), strict=True)]


def rule_model(r: dict[str, Any], setkey, shared: tuple[dict, dict]) -> Rule:
    """A decoded rule -> Rule. Its `line` is the rule's handle: stable while other chains
    change (a spliced read and a fresh one agree), and what `nft -a` shows."""
    try:
        return _rule(r, r["handle"], setkey, shared)
    except RecursionError:
        why = "expression nested too deeply"
        return Rule((Match("unknown", (why,), False, why),), "NFT-nested", "",
                    f"{r['family']} {r['table']} {r['chain']}", r["handle"])


def out_set(family: str, name: str, info: SetInfo) -> IpSet:
    key = f"nft:{family}:{name}:{info.name}"
    s = {"family": family, "table": name, "name": info.name, "type": info.type_json(),
         "elem": info.elems if info.ok else [{"netlink": "elements not decoded"}]}
    if info.is_map:
        s["map"] = "verdict" if info.verdict_map else "data"
    return _set(s, key, info.is_map)


class _BoundOnce:
    """The sets as a rule's lookup asks for them, an anonymous set handed out once and
    then forgotten: the kernel binds one to a single lookup (a second bind is EBUSY), and
    kube-proxy's numgen vmaps are ~10,000 of them whose elements would otherwise all wait
    for the end of the rule dump (a second ask would read "set not read": may match)."""

    __slots__ = ("sets",)

    def __init__(self, sets: dict[str, SetInfo]) -> None:
        self.sets = sets

    def get(self, name: str) -> SetInfo | None:
        info = self.sets.get(name)
        if info is not None and info.anonymous:
            del self.sets[name]
        return info


def _read(sk: DumpSocket, family: str, fam: int, name: str, tname: bytes, h: Any,
          max_rules: int | None, rule_hook) -> TableRead:
    sets: dict[str, SetInfo] = {}
    for _f, msg in sk.dump(GETSET, fam, _nla(1, tname)):
        a = attrs(msg)
        if text_attr(a.get(1)) != name:
            continue
        info = set_info(a, h)
        sets[info.name] = info
    out_sets = {}
    named = {}
    for info in sets.values():
        fetch_elems(sk, fam, tname, info, h)
        if info.anonymous:
            continue  # (a rule's listing shows its elements)
        # modelled at once and its nft -j elements dropped: kube-proxy's maps hold
        # thousands, and all of them waiting for the rules were ~9 MB of the read's peak
        out_sets[f"nft:{family}:{name}:{info.name}"] = out_set(family, name, info)
        info.elems = []  # (the IpSet has them)
        named[info.name] = info
    chains: dict[str, Any] = {}
    for _f, msg in sk.dump(GETCHAIN, fam, _nla(1, tname)):
        a = attrs(msg)
        if text_attr(a.get(1)) != name:
            continue
        c = chain_info(family, name, a)
        h.update(repr(sorted(c.items())).encode())
        # a user chain is its name (25,000 of kube-proxy's: a dict each was ~4 MB while
        # the rules are read)
        chains[c["name"]] = c if "hook" in c else None
    rules: dict[str, list[Rule] | Chain] = {c: [] for c in chains}
    n = 0
    last = ""

    def setkey(s: str) -> str:
        return f"nft:{family}:{name}:{s}"

    lookups = _BoundOnce(sets)
    memo: dict[bytes, Any] = {}
    shared: tuple[dict, dict] = ({}, {})  # one object per distinct Match / tuple, as nft -j's
    for _f, msg in sk.dump(GETRULE, fam, _nla(1, tname)):
        r = decode_rule(family, name, msg, lookups, h, memo)  # type: ignore[arg-type]
        n += 1
        if max_rules is not None and n > max_rules:
            raise CeilingPassed(f"more than {max_rules:,} rules")
        if rule_hook is not None:
            rule_hook(r)
        cname = r["chain"]
        if cname != last:
            if last:
                rules[last] = _packed(last, rules[last])
            got = rules.get(cname)
            if isinstance(got, Chain):
                rules[cname] = _packed(cname, got)
            last = cname
        rules.setdefault(cname, []).append(rule_model(r, setkey, shared))  # type: ignore
        del r
    if last:
        rules[last] = _packed(last, rules[last])
    del memo, shared, lookups  # (the model holds what it uses)
    # each chain's list goes as its tuple is made: 25,000 of them never all twice
    ch = {cname: chain_model(c if c is not None else {"name": cname},
                             _tuple(rules.pop(cname, ()))) for cname, c in chains.items()}
    return TableRead((Table("nft", family, name, ch),), out_sets, n, h.hexdigest(), named)
