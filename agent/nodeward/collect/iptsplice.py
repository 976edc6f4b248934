"""`iptables-nft-save` kept per chain and re-read only where nf_tables says it changed.

kube-proxy rewrites a few endpoint chains per sync; a fresh `iptables-nft-save` of a
50,000-rule ruleset costs 1.2 s of CPU each time (it grows about quadratically), where
`iptables-nft -t nat -S CHAIN` fetches one table's chain list and one chain's rules (a few
ms). So after one full save, its parse is kept (the live ruleset's own chains: their
rules' texts are the save's lines; the caller hands each parse over with parsed()), and a
read
- takes the nf_tables change events since the last read (nfchanges.Watch), provably
  complete (generation ids without a gap, no overflow) or else saves everything;
- re-reads each chain a rule or chain event names (`-S CHAIN`), and after a chain event
  the table's chain list (one NFT_MSG_GETCHAIN dump: creations, deletions, renames);
- after a write during the read (kube-proxy syncing meanwhile), re-reads the chains that
  write touched, on top (up to RETRIES times), so the text is one moment's: a chain no
  write touched since the plan's generation id reads the same at the last id;
- saves everything instead on a table, set or object event in an iptables table, an
  unexpected answer, more than MAX_CHAINS chains to read, or writes through every retry.
  (A full save after every racing write was 1.2 s of CPU and a 64 MB child each time,
  ~1 in 6 cycles of a node syncing every 10 s.)
The text it returns is what `iptables-nft-save` prints, without its comment lines and with
chain counters [0:0]: tables in the last save's order, each table's built-in chains in the
last save's order then the other chains by name, rules grouped in that chain order.
Read-only.
"""

from __future__ import annotations

import re
import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from ..ruleset.model import Chain, Table
from . import nfchanges, nfgen

#: Past this many chains to re-read, one save is cheaper than that many `-S`.
MAX_CHAINS = 200
#: Splices again on top when a write came while reading (then one save).
RETRIES = 3
IPT_TABLES = frozenset({"filter", "nat", "mangle", "raw", "security"})
_DECL = re.compile(r"^:(\S+) (\S+)(?: \[\d+:\d+\])?$")

Lines = Sequence[str]  # a list, or render's Rendered
Runner = Callable[[Sequence[str]], str | None]


@dataclass
class TableText:
    """One table as the splice renders it: the chains of the last parse (`base`, the live
    ruleset's own Chain objects: their rules' texts are the lines) with what was re-read
    since laid over them. Nothing of the text is copied: at 50,000 rules a table kept as
    text per chain cost ~7 MB (joined) or ~4 MB (lists of the rules' strings, dicts of
    15,000 policies) beside the parsed rules that hold the same lines."""

    builtins: list[str]  # built-in chains, in save order
    base: Mapping[str, Chain] = field(default_factory=dict)
    policy: dict[str, str] = field(default_factory=dict)  # re-read chains ("-": user)
    rules: dict[str, Sequence[str]] = field(default_factory=dict)  # re-read chains' lines
    gone: set[str] = field(default_factory=set)  # chains of `base` deleted since

    def has(self, chain: str) -> bool:
        return chain in self.policy or (chain in self.base and chain not in self.gone)

    def names(self) -> list[str]:
        return [*(c for c in self.base if c not in self.gone),
                *(c for c in self.policy if c not in self.base)]

    def policy_of(self, chain: str) -> str:
        got = self.policy.get(chain)
        if got is None:
            got = self.base[chain].policy or "-"
        return got

    def lines(self, chain: str) -> Sequence[str]:
        got = self.part(chain)
        return got.rule_texts() if isinstance(got, Chain) else got

    def part(self, chain: str) -> Sequence[str] | Chain:
        """lines(chain), or the kept Chain holding them (packed: see Rendered)."""
        got = self.rules.get(chain)
        if got is None:
            c = self.base.get(chain)
            return c if c is not None and chain not in self.gone else ()
        return got

    def put(self, chain: str, policy: str, lines: Sequence[str]) -> None:
        self.gone.discard(chain)
        self.policy[chain] = policy
        self.rules[chain] = lines

    def drop(self, chain: str) -> None:
        self.policy.pop(chain, None)
        self.rules.pop(chain, None)
        if chain in self.base:
            self.gone.add(chain)

    def copy(self) -> TableText:
        return TableText(self.builtins, self.base, dict(self.policy), dict(self.rules),
                         set(self.gone))


def reproducible(lines: Sequence[str]) -> bool:
    """Whether kept() of this save's parse renders it again: False when it has anything
    this module does not reproduce (an "incompatible" table note, a line of another form,
    a table twice, a built-in chain after a user chain, a rule of no declared chain)."""
    tables: set[str] = set()
    cur: set[str] | None = None
    user = False
    for line in lines:
        if not line or line[0] == "#":
            if "incompatible" in line:
                return False
            continue
        if line[0] == "*":
            name = line[1:]
            if cur is not None or name in tables or name not in IPT_TABLES:
                return False
            tables.add(name)
            cur, user = set(), False
        elif cur is None:
            return False
        elif line == "COMMIT":
            cur = None
        elif line[0] == ":":
            m = _DECL.match(line)
            if not m or m.group(1) in cur:
                return False
            cur.add(m.group(1))
            if m.group(2) == "-":
                user = True
            elif user:
                return False  # a built-in after a user chain: not the order we know
        elif line.startswith("-A "):
            if line[3:].split(" ", 1)[0] not in cur or line != line.strip():
                return False
        else:
            return False
    return cur is None


def kept(tables: Sequence[Table]) -> dict[str, TableText]:
    """The splice's state from the parse of a save reproducible() accepted."""
    return {t.name: TableText([c for c, ch in t.chains.items() if ch.policy is not None],
                              t.chains) for t in tables}


class Rendered(Sequence[str]):
    """render's lines, made as they are read: a kept chain's are its rules' texts, held
    packed (model.Chain.texts) and unpacked when the reader reaches them, so the splice's
    50,000 lines never all exist at once beside the ruleset (read in order, as the digest
    and the parser do, each chain is unpacked once a pass)."""

    __slots__ = ("_at", "_cur", "_cur_end", "_cur_start", "_kept", "_n", "_parts", "_starts")

    def __init__(self, parts: list[Sequence[str] | Chain]) -> None:
        self._parts = [p for p in parts if (p.rules if isinstance(p, Chain) else p)]
        self._starts: list[int] = []
        self._kept: list[int] = []  # the parts that are kept chains
        n = 0
        for p in self._parts:
            self._starts.append(n)
            if isinstance(p, Chain):
                self._kept.append(len(self._starts) - 1)
                n += len(p.rules)
            else:
                n += len(p)
        self._n = n
        self._at = -1
        self._cur: Sequence[str] = ()
        self._cur_start = self._cur_end = 0  # the lines self._cur holds: [start, end)

    def _part(self, i: int) -> Sequence[str]:
        if i != self._at:
            p = self._parts[i]
            self._at, self._cur = i, (p.rule_texts() if isinstance(p, Chain) else p)
            self._cur_start = self._starts[i]
            self._cur_end = self._cur_start + len(self._cur)
        return self._cur

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, k):  # type: ignore[override]
        if type(k) is int and self._cur_start <= k < self._cur_end:  # the parser's way
            return self._cur[k - self._cur_start]
        if isinstance(k, slice):
            lo, hi, step = k.indices(self._n)
            if step != 1:
                return [self[j] for j in range(lo, hi, step)]
            out: list[str] = []
            i = bisect_right(self._starts, lo) - 1 if lo < hi else len(self._parts)
            while lo < hi and i < len(self._parts):
                part, at = self._part(i), self._starts[i]
                out += part[lo - at:hi - at]
                lo = at + len(part)
                i += 1
            return out
        if k < 0:
            k += self._n
        if not 0 <= k < self._n:
            raise IndexError(k)
        self._part(bisect_right(self._starts, k) - 1)  # (a no-op when it is the current)
        return self._cur[k - self._cur_start]

    def __iter__(self) -> Iterator[str]:
        for p in self._parts:
            yield from (p.rule_texts() if isinstance(p, Chain) else p)

    def kept(self, k: int) -> tuple[int, Chain | None]:
        """(j, chain): the first kept chain whose lines start at j >= k, (len, None) past
        the last; the parse takes it whole (parse_iptables_save's `kept`), unpacked never."""
        starts = self._starts
        i = bisect_left(self._kept, k, key=starts.__getitem__)
        if i == len(self._kept):
            return self._n, None
        part = self._kept[i]
        return starts[part], self._parts[part]  # type: ignore[return-value]

    def count_rules(self) -> int:
        """The `-A` lines, a kept chain's without unpacking it (counting, digesting and
        parsing each unpacked every kept chain: 15,000 a churn cycle, three times)."""
        return sum(len(p.rules) if isinstance(p, Chain) else
                   sum(1 for x in p if x[:3] == "-A " or x[:1] == "[") for p in self._parts)

    def __eq__(self, other: object) -> bool:
        """Equal to a sequence of the same lines (a list of them, as a save's)."""
        if isinstance(other, str) or not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]


def render(tables: dict[str, TableText]) -> Rendered:
    out: list[Sequence[str] | Chain] = []
    for name, t in tables.items():
        builtin = set(t.builtins)
        order = [*t.builtins, *sorted(c for c in t.names() if c not in builtin)]
        out.append([f"*{name}", *(f":{c} {t.policy_of(c)} [0:0]" for c in order)])
        out += [t.part(c) for c in order]
        out.append(["COMMIT"])
    return Rendered(out)


def _plan(after: Sequence[nfchanges.Transaction]) -> dict[int, set[tuple[str, str]] | None]:
    """Per family, the (table, chain) pairs these transactions touched ("" for the chain:
    list the table's chains); None: a table, set or object event, save it in full."""
    plan: dict[int, set[tuple[str, str]] | None] = {4: set(), 6: set()}
    for t in after:
        for family, kind, table, chain in t.changes:
            fam = {"ip": 4, "ip6": 6}.get(family)
            todo = plan.get(fam) if fam is not None else None
            if todo is None or table not in IPT_TABLES:
                continue
            if kind == "rule":
                todo.add((table, chain))
            elif kind == "chain":
                todo |= {(table, chain), (table, "")}  # "": list the table's chains
            else:
                plan[fam] = None  # table, set, object: save in full
    return plan


def _close(box: list) -> None:
    if box[0] is not None:
        box[0].close()


class NftSaves:
    """The incremental iptables-nft-save of both families of one network namespace (the
    one of the thread that first reads: the event socket stays in it)."""

    def __init__(self) -> None:
        self.watch: nfchanges.Watch | None = None  # opened by the first begin()
        self.gen: int | None = None  # every kept table is at or after this generation
        self.states: dict[int, dict[str, TableText] | None] = {}
        self.plan: dict[int, set[tuple[str, str]] | None] = {}
        self.plan_gen: int | None = None
        self._read_now: set[int] = set()  # families read since begin()
        #: chains written after their family was read this cycle (a retry of another
        #: family saw them): read next cycle (None: that family saves in full)
        self.carry: dict[int, set[tuple[str, str]] | None] = {}
        #: families whose last read returned lines parsed() may rebase the state on
        self._rebase: dict[int, bool] = {}
        #: every change committed since the last read (all tables), provably complete;
        #: None: unknown (the native splice, collect/nftsplice.py, then reads in full)
        self.changes: set[nfchanges.Change] | None = None
        self.full_reads = 0
        self.chain_reads = 0
        #: native tables read since begin() (collect/nftsplice.py)
        self.native_done: set[tuple[str, str]] = set()
        # the watch's thread and socket go with this object (a dropped ParseCache)
        self._box: list[nfchanges.Watch | None] = [None]
        weakref.finalize(self, _close, self._box)

    def close(self) -> None:
        _close(self._box)
        self.watch = self._box[0] = None

    def begin(self) -> None:
        """Before the reads of one cycle: what changed since the last, per family."""
        self.plan = {}
        self._read_now = set()
        self.native_done = set()
        carry, self.carry = self.carry, {}
        self.changes = None
        fresh = False
        if self.watch is None or not self.watch.alive:  # first read, or it gave up
            if self.watch is not None:
                self.watch.close()
            try:
                self.watch = self._box[0] = nfchanges.Watch()
                fresh = True  # it saw nothing before now: this read saves in full
            except OSError:
                self.watch = self._box[0] = None
        now = nfgen.generation_id()
        if fresh or self.watch is None or now is None:
            txns = None
        elif now == self.gen and self.watch.alive:
            txns = []  # nothing committed since the last read: nothing to wait for
        else:
            txns = self.watch.take(now)
        since, self.gen, self.plan_gen = self.gen, now, now
        if txns is None or now is None or since is None:
            return  # no plan: every family saves in full
        after = nfchanges.contiguous(txns, since, now)
        if after is None:
            return
        self.changes = set().union(*(t.changes for t in after))
        plan = _plan(after)
        for fam, more in carry.items():  # what the last cycle's retries saw after its reads
            todo = plan.get(fam)
            plan[fam] = None if more is None or todo is None else todo | more
        self.plan = plan

    def read(self, family: int, full: Callable[[], Lines | None],
             run: Runner) -> Lines | None:
        """One family's save lines: spliced when provably possible, else `full()`."""
        state = self.states.get(family)
        todo = self.plan.get(family)
        self._read_now.add(family)
        if state is None or todo is None:
            return self._full(family, full)
        for _attempt in range(RETRIES + 1):
            if not todo:
                break
            if len(todo) > MAX_CHAINS or not self._splice(family, state, todo, run):
                return self._full(family, full)
            now = nfgen.generation_id()
            if now == self.plan_gen:
                break  # nothing written while it read: one moment's text
            # written meanwhile (kube-proxy syncs while we read): the chains those writes
            # touched are read again on top, so the text is the last id's moment
            todo, _taken = self._advance(now, family)
            if todo is None:
                return self._full(family, full)
        else:
            return self._full(family, full)  # written through every retry: one save
        self._rebase[family] = True
        return render(state)

    def _advance(self, now: int | None, family: int
                 ) -> tuple[set[tuple[str, str]] | None, set[nfchanges.Change]]:
        """The transactions from plan_gen to `now` into the plans: `family`'s chains to
        read again (None: not provable, save it in full), added to the plans of the
        families not read yet this cycle, carried into the next cycle for those read; and
        the changes of those transactions (none when not provable)."""
        txns = self.watch.take(now) if self.watch is not None and self.watch.alive and \
            now is not None else None
        after = nfchanges.contiguous(txns, self.plan_gen, now) if txns is not None and \
            self.plan_gen is not None and now is not None else None
        self.gen = self.plan_gen = now
        if after is None:
            self.changes = None  # the native tables, read after these, read in full
            self.plan = {}  # the families not read yet save in full
            for fam in self._read_now - {family}:  # and those read, next cycle
                self.states[fam] = None
                self._rebase.pop(fam, None)
            return None, set()
        taken: set[nfchanges.Change] = set().union(*(t.changes for t in after))
        if self.changes is not None:  # the native tables are read after these families
            self.changes |= taken
        mine: set[tuple[str, str]] | None = set()
        for fam, more in _plan(after).items():
            if fam == family:
                mine = more
            elif fam in self._read_now:
                was = self.carry.get(fam, set())
                self.carry[fam] = None if more is None or was is None else was | more
            else:
                todo = self.plan.get(fam)
                self.plan[fam] = None if more is None or todo is None else todo | more
        return mine, taken

    def native_advance(self, table: tuple[str, str]
                       ) -> tuple[set[nfchanges.Change] | None, int | None,
                                  set[tuple[str, str]]]:
        """For a native splice (nftsplice.NativeTables) that saw a write during its read:
        the transactions committed since plan_gen taken in as a retry of an iptables
        family's does (the families read this cycle carry theirs into the next, the native
        tables read after see them). Returns every change since the last read and the
        generation it is complete at (None, None: not provable: read in full), and the
        native tables read earlier this cycle that those transactions touched (all of
        them when unknown): their kept models are older than the generation the next cycle
        starts from, so they must not be spliced on."""
        done = self.native_done - {table}
        now = nfgen.generation_id()
        if self.changes is None or now is None:
            return None, None, done
        _mine, taken = self._advance(now, 0)  # (0: no iptables family is this read's)
        if self.changes is None:
            return None, None, done
        return self.changes, now, {(fam, t) for fam, _k, t, _o in taken} & done

    def parsed(self, family: int, tables: Sequence[Table]) -> None:
        """The parse of the lines the last read(family) returned: the state the next read
        splices on. Without it, a full save is not kept (the next read saves again) and a
        splice keeps its own overlay."""
        if self._rebase.pop(family, False):
            self.states[family] = kept(tables)

    def _full(self, family: int, full: Callable[[], Lines | None]) -> Lines | None:
        self.full_reads += 1
        self.states[family] = None
        lines = full()
        self._rebase[family] = lines is not None and reproducible(lines)
        return lines

    def _splice(self, family: int, state: dict[str, TableText],
                todo: set[tuple[str, str]], run: Runner) -> bool:
        fam = "ip" if family == 4 else "ip6"
        tables = {t for t, _c in todo}
        if any(t not in state for t in tables):
            return False  # a table iptables-nft-save did not print before
        listed = nfchanges.chains(fam) if any(c == "" for _t, c in todo) else {}
        if listed is None:
            return False
        work: dict[str, TableText] = {}
        for table in tables:
            new = state[table].copy()
            chains = {c for t, c in todo if t == table and c}
            if (table, "") in todo:
                kernel = listed.get(table, {})
                if any(base and c not in new.builtins for c, base in kernel.items()):
                    return False  # a base chain iptables-nft does not name
                for c in [c for c in new.names() if c not in kernel]:
                    if c in new.builtins:  # printed as an empty ACCEPT chain
                        new.put(c, "ACCEPT", ())
                    else:
                        new.drop(c)
                chains |= {c for c in kernel if not new.has(c)}
                chains &= set(kernel) | set(new.builtins)
            for chain in sorted(chains):
                if not self._chain(family, table, chain, new, run):
                    return False
            work[table] = new
        state.update(work)
        return True

    def _chain(self, family: int, table: str, chain: str, t: TableText, run: Runner) -> bool:
        """Re-read one chain into `t`; False on anything unexpected."""
        tool = "iptables-nft" if family == 4 else "ip6tables-nft"
        out = run([tool, "-t", table, "-S", chain])
        self.chain_reads += 1
        if out is None:
            # gone since the event (a later transaction deleted it), or not printable:
            # the caller saves in full
            return False
        lines = out.splitlines()
        if not lines:
            return False
        head = lines[0].split(" ")
        if head[:2] == ["-N", chain] and len(head) == 2 and chain not in t.builtins:
            policy = "-"
        elif head[:2] == ["-P", chain] and len(head) == 3 and chain in t.builtins:
            policy = head[2]
        else:
            return False
        prefix = f"-A {chain} "
        rules = lines[1:]
        if any(not r.startswith(prefix) or r != r.strip() for r in rules):
            return False
        # equal lines are the kept ones (the parsed rules' texts): no second copy
        was = {x: x for x in t.lines(chain)} if t.has(chain) else {}
        t.put(chain, policy, [was.get(x, x) for x in rules])
        return True
