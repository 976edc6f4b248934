"""Ruleset values: front-ends, tables, chains, rules, matches; packets and verdicts.

Frozen so the evaluator is a pure function of them. Matches keep their original text and an
`op` the evaluator knows; an op it does not know is kept (op="unknown") and evaluated as
"may match", never silently dropped.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any, NamedTuple

#: Hook priorities of the iptables tables (as iptables-nft registers them, and the legacy
#: xtables order): raw < mangle < nat(dstnat) < filter < security.
IPT_PRIORITY = {"raw": -300, "mangle": -150, "nat": -100, "filter": 0, "security": 50}
IPT_HOOKS = {"PREROUTING": "prerouting", "INPUT": "input", "FORWARD": "forward",
             "OUTPUT": "output", "POSTROUTING": "postrouting"}


class Match(NamedTuple):
    """One condition of a rule. `args` is op-specific parsed data; `text` the source form.
    A NamedTuple, like Rule: a kube-proxy node has 50,000 rules and a frozen dataclass costs
    several times more to build."""

    op: str  # src dst iif oif proto sport dport ctstate addrtype set tcpflags comment unknown
    args: tuple[Any, ...]
    negate: bool = False
    text: str = ""


class Rule(NamedTuple):
    matches: tuple[Match, ...]
    target: str  # ACCEPT DROP REJECT RETURN LOG JUMP GOTO DNAT REDIRECT NOTRACK "" (none)...
    arg: str = ""  # chain for JUMP/GOTO, destination for DNAT, ports for REDIRECT/TPROXY
    #: The rule as its front-end's tool prints it (the save line, nft's rendering), until
    #: the rule is in a Chain: the chain then holds its rules' texts packed (Chain.texts)
    #: and this is "". Read it as Chain.rule_text(i).
    text: str = ""
    line: int = 0
    #: Mark changes applied when the rule matches, before its target, in order:
    #: ("set", dst, src, keep, xor): dst = (src & keep) ^ xor;
    #: ("mix", dst, src, keep, take): dst = (dst & ~keep) ^ (src & take);
    #: dst/src are "mark" (the packet mark) or "ct" (the connection's mark).
    effects: tuple[tuple, ...] = ()
    #: nft verdict map: (key selectors, set name) when the target is "VMAP"
    vmap: tuple = ()


#: Preset dictionary of the packed rule texts: the words iptables-save and nft print most
#: (a chain of kube-proxy's holds 2-3 rules, too few for deflate to find its own repeats).
#: Part of the packed form: changing it changes every chain's signature (one cold cycle).
_ZDICT = (
    b' {"numgen":{"mode":"random","mod":2,"offset":0}} vmap { { 0, goto endpoint-'
    b" ip daddr . meta l4proto . th dport vmap @ ip saddr != 10.244.0.0/16"
    b" tcp dport 80 meta l4proto tcp dnat to 10.244.0.1:8080 jump mark-for-masquerade"
    b" ip kube-proxy endpoint-/tcp/p80__10.244.0.1/8080 handle 1"
    b" counter packets 0 bytes 0 meta l4proto udp meta l4proto tcp th dport ip6 daddr"
    b" ip6 saddr ip daddr ip saddr ct state new ct state established,related fib daddr"
    b" type local numgen random mod vmap @ dnat to masquerade reject accept drop return"
    b" goto jump inet kube-proxy handle -m conntrack --ctstate NEW,RELATED,ESTABLISHED"
    b" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS -j KUBE-POSTROUTING -j KUBE-FIREWALL"
    b" -m mark --mark 0x4000/0x4000 -j MARK --set-xmark 0x4000/0x4000 -j MASQUERADE"
    b" -m statistic --mode random --probability 0.50000000000 -j KUBE-MARK-MASQ"
    b" -m udp -p udp -m tcp -p tcp --dport -j DNAT --to-destination 10.244.0.1:8080"
    b" -j KUBE-SEP-0000000000000000 -j KUBE-SVC-0000000000000000 -j KUBE-EXT-"
    b' -s 10.244.0.0/32 -d 10.96.0.0/32 -m comment --comment "default/kubernetes:https'
    b' cluster IP" ip kube-proxy service-"'
    b"\n-A KUBE-SEP-0000000000000000 -s 10.244.0.10/32 -m comment --comment "
)
_WBITS = -12  # raw deflate, 4 KB window: a chain's texts are small, and so is the state


def pack_texts(texts: Sequence[str], chain: str = "") -> bytes | None:
    """The rule texts of one chain (named `chain`) as one deflated blob (~1.5 MB instead
    of ~8.4 MB of one str per rule at 50,000 kube-proxy rules), or None when a text holds
    NUL (the separator) or \\x01 (the chain's name, which every text of nft's and
    iptables-save's names once and kube-proxy's are long and random), and so cannot be
    packed: no text the kernel's tools print does (netlink strings end at a NUL; \\x01
    in a comment is the only way). Equal texts give equal blobs."""
    joined = "\0".join(texts)
    if joined.count("\0") != len(texts) - 1 or "\x01" in joined:
        return None
    if chain:
        joined = joined.replace(chain, "\x01")
    z = zlib.compressobj(6, zlib.DEFLATED, _WBITS, 4, zlib.Z_DEFAULT_STRATEGY, _ZDICT)
    return z.compress(joined.encode("utf-8", "surrogatepass")) + z.flush()


def unpack_texts(blob: bytes, chain: str = "") -> list[str]:
    """pack_texts' texts again (`chain`: the name given to it)."""
    z = zlib.decompressobj(_WBITS, _ZDICT)
    joined = (z.decompress(blob) + z.flush()).decode("utf-8", "surrogatepass")
    return (joined.replace("\x01", chain) if chain else joined).split("\0")


@lru_cache(maxsize=8)
def _unpacked(blob: bytes, chain: str) -> tuple[str, ...]:
    """unpack_texts, the last few kept: the evidence of a verdict names rules of a few
    chains, and a chain of 5,000 rules is not unpacked once per rule shown."""
    return tuple(unpack_texts(blob, chain))


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Chain:
    """Slotted: a kube-proxy table has ~15,000 chains, and a __dict__ each cost ~2 MB.

    Its rules' texts are held packed in `texts` (pack_texts: one str per rule was the
    ruleset's biggest held cost), its rules' own `text` then "": a chain built from rules
    with texts packs them (and takes the rules without them); one built with `texts` takes
    them as its rules' (the parsers). Read them with rule_texts() / rule_text(i)."""

    name: str
    rules: tuple[Rule, ...]
    policy: str | None = None  # ACCEPT/DROP for base chains; None for user chains
    hook: str | None = None  # prerouting/input/forward/... for base chains
    priority: int = 0
    #: pack_texts of the rules' texts; b"": each rule holds its own (or there are none)
    texts: bytes = field(default=b"", repr=False)
    #: The evaluator's run index, built on first use and kept here so it dies with the
    #: chain (not part of its value: equality and hash ignore it; not an init argument, so
    #: dataclasses.replace never carries it over to other rules).
    run_index: Any = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.texts or not any(r.text for r in self.rules):
            return
        blob = pack_texts([r.text for r in self.rules], self.name)
        if blob is not None:
            object.__setattr__(self, "texts", blob)
            object.__setattr__(self, "rules", tuple(r._replace(text="") for r in self.rules))

    def rule_texts(self) -> list[str]:
        """Its rules' texts, in order (what iptables-save / nft print for them). Through
        the small cache: an iptables-nft splice's lines are a kept chain's texts, which the
        parse's reuse then compares with the same chain's (unpacked once, not twice: the
        second unpack of 15,000 chains a churn cycle doubled the re-read's CPU)."""
        if self.texts:
            return list(_unpacked(self.texts, self.name))
        return [r.text for r in self.rules]

    def rule_text(self, i: int) -> str:
        """The text of rules[i]."""
        return _unpacked(self.texts, self.name)[i] if self.texts else self.rules[i].text


@dataclass(frozen=True)
class Table:
    frontend: str  # "iptables-legacy" | "iptables-nft" | "nft"
    family: str  # "ip" | "ip6" | "inet"
    name: str
    chains: dict[str, Chain] = field(hash=False)
    #: The parser's (ruleset/iptables.py): chains with a line whose parse may hang on more
    #: than its rule's target (a long option, two targets), never taken whole by a re-parse
    tangled: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @cached_property
    def content_digest(self) -> bytes:
        """sha256 of what the table holds (its chains' names, policies, hooks and rules'
        texts; two parses of equal tables give equal digests), made once per Table: a
        re-parse gives the same Table object for an unchanged table."""
        h = hashlib.sha256(f"{self.frontend}\0{self.family}\0{self.name}\0".encode())
        for c in self.chains.values():
            body = c.texts or "\0".join(r.text for r in c.rules).encode("utf-8",
                                                                       "surrogatepass")
            h.update(f"{c.name}\0{c.policy}\0{c.hook}\0{c.priority}\0{bool(c.texts):d}"
                     f"{len(body)}\0".encode("utf-8", "surrogatepass"))
            h.update(body)
        return h.digest()

    def base_chains(self, hook: str) -> tuple[Chain, ...]:
        return self._hooks.get(hook, ())

    @cached_property
    def _hooks(self) -> dict[str, tuple[Chain, ...]]:
        """hook -> base chains, built once: a kube-proxy table has ~15,000 user chains and
        the evaluator asks for the base chains of every hook on every packet."""
        out: dict[str, list[Chain]] = {}
        for c in self.chains.values():
            if c.hook is not None:
                out.setdefault(c.hook, []).append(c)
        return {h: tuple(cs) for h, cs in out.items()}


@dataclass(frozen=True)
class IpSet:
    """An ipset, or an nft set/map. `members` (text) for address sets; `elements` for nft
    sets and maps of any key: per element its key (one (lo, hi) pair per concatenated
    field, comparable with the packet's value of that field) and, for a verdict map, its
    verdict ("ACCEPT", "JUMP chain", ...). `keyed` says the fields' kinds."""

    name: str
    type: str  # hash:ip, hash:net, ...
    members: tuple[str, ...]
    elements: tuple[tuple[tuple, str], ...] = ()
    keyed: tuple[str, ...] = ()

    @cached_property
    def exact(self) -> dict[tuple, int] | None:
        """element key -> first element index when every element key is exact (no
        prefixes or ranges): a kube-proxy service map of thousands is then one dict lookup,
        of ((v, v), ...) for the packet's values v. Keyed by the elements' own key tuples,
        not new ones (~1.4 MB at 50,000 kube-proxy rules)."""
        out: dict[tuple, int] = {}
        for i, (key, _) in enumerate(self.elements):
            if any(lo != hi for lo, hi in key):
                return None
            out.setdefault(key, i)
        return out


class Problem(NamedTuple):
    """Why (part of) the ruleset could not be read: each one becomes an NW206 finding
    ("the firewall could not be evaluated", medium), so it is never a silent note.

    `source` names what failed (a command such as "iptables-nft-save", or a dump file);
    `line` is the line in it when one is to blame (0: none); `reason` is one line of text.
    Collectors append one per failed read (timeout, partial output, permission denied).
    """

    source: str
    reason: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}" if self.line else \
            f"{self.source}: {self.reason}"


@dataclass(frozen=True)
class Ruleset:
    tables: tuple[Table, ...] = ()
    sets: dict[str, IpSet] = field(default_factory=dict, hash=False)
    notes: tuple[str, ...] = ()
    #: Digest of the dumps it was parsed from ("" when built another way): equal
    #: fingerprints mean equal rulesets, so verdicts can be reused across scans.
    fingerprint: str = ""
    #: Reads that failed or were cut short (the ruleset holds what the others gave). Not
    #: empty: the firewall stage ran partially; each Problem is an NW206 finding, and the
    #: daemon keeps (stale) rather than resolves the firewall findings of the last full run.
    problems: tuple[Problem, ...] = ()

    def merge(self, other: Ruleset) -> Ruleset:
        return Ruleset(self.tables + other.tables, {**self.sets, **other.sets},
                       self.notes + other.notes, problems=self.problems + other.problems)


@dataclass(frozen=True)
class Packet:
    """The first packet of a connection (conntrack NEW unless said otherwise)."""

    family: int  # 4 | 6
    src: str
    dst: str
    protocol: str  # tcp | udp | icmp ...
    dport: int = 0
    sport: int = 40000
    iif: str = ""
    oif: str = ""  # known on the forward path only
    ctstate: str = "NEW"
    tcp_flags: frozenset[str] = frozenset({"SYN"})
    #: Packet mark and conntrack mark: 0 for the first packet of a new connection until a
    #: rule on its path sets them.
    mark: int = 0
    ctmark: int = 0
    #: Owner of the sending socket, for a locally generated packet (-m owner); None when
    #: not known (the verdict is then uncertain where a rule asks).
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class Step:
    """Evidence: one rule (or policy) the packet met that mattered."""

    frontend: str
    table: str
    chain: str
    index: int  # 1-based rule number; 0 for the chain policy
    #: the rule's text, or its chain's (named `chain`) packed texts (Chain.texts), read
    #: only when shown:
    #: the evaluator meets thousands of rules a cycle and few become evidence
    shown: str | bytes
    effect: str  # jump/goto/return/accept/drop/reject/log/dnat/policy/may-match

    @property
    def text(self) -> str:
        """The rule's text as its front-end's tool prints it."""
        if isinstance(self.shown, str):
            return self.shown
        return _unpacked(self.shown, self.chain)[self.index - 1]

    def __str__(self) -> str:
        where = f"{self.frontend} {self.table} {self.chain}"
        return f"{where} #{self.index}: {self.text} -> {self.effect}" if self.index else \
            f"{where} policy -> {self.effect}"


@dataclass(frozen=True)
class Verdict:
    action: str  # accept | drop | reject
    certain: bool = True
    reasons: tuple[str, ...] = ()  # why uncertain
    trace: tuple[Step, ...] = ()

    @property
    def reachable(self) -> bool:
        return self.action == "accept"
