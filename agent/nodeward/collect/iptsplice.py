"""`iptables-nft-save` kept per chain and re-read only where nf_tables says it changed.

kube-proxy rewrites a few endpoint chains per sync; a fresh `iptables-nft-save` of a
50,000-rule ruleset costs 1.2 s of CPU each time (it grows about quadratically), where
`iptables-nft -t nat -S CHAIN` fetches one table's chain list and one chain's rules (a few
ms). So after one full save, the text is kept per table and chain, and a read
- takes the nf_tables change events since the last read (nfchanges.Watch), provably
  complete (generation ids without a gap, no overflow) or else saves everything;
- re-reads each chain a rule or chain event names (`-S CHAIN`), and after a chain event
  the table's chain list (one NFT_MSG_GETCHAIN dump: creations, deletions, renames);
- saves everything instead on a table, set or object event in an iptables table, an
  unexpected answer, more than MAX_CHAINS chains to read, or a write during the read (the
  spliced text would mix two moments; one save is one consistent snapshot).
The text it returns is what `iptables-nft-save` prints, without its comment lines and with
chain counters [0:0]: tables in the last save's order, each table's built-in chains in the
last save's order then the other chains by name, rules grouped in that chain order.
Read-only.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import nfchanges, nfgen

#: Past this many chains to re-read, one save is cheaper than that many `-S`.
MAX_CHAINS = 200
IPT_TABLES = frozenset({"filter", "nat", "mangle", "raw", "security"})
_DECL = re.compile(r"^:(\S+) (\S+)(?: \[\d+:\d+\])?$")

Lines = list[str]
Runner = Callable[[Sequence[str]], str | None]


@dataclass
class TableText:
    builtins: list[str]  # built-in chains, in save order
    policy: dict[str, str] = field(default_factory=dict)  # chain -> policy ("-": user)
    #: chain -> its -A lines, joined: keeping the line strings themselves (shared with the
    #: parsed rules) saved 5 MB after the first read at 50,000 rules but cost 25 MB of RSS
    #: after churn re-reads (long-lived strings pin the pages each freed parse used)
    rules: dict[str, str] = field(default_factory=dict)


def index(lines: Sequence[str]) -> dict[str, TableText] | None:
    """The tables of one iptables-nft-save, or None when it has anything this module does
    not reproduce (an "incompatible" table note, a line of another form)."""
    tables: dict[str, TableText] = {}
    cur: TableText | None = None
    pending: dict[str, list[str]] = {}
    for line in lines:
        if not line or line[0] == "#":
            if "incompatible" in line:
                return None
            continue
        if line[0] == "*":
            name = line[1:]
            if cur is not None or name in tables or name not in IPT_TABLES:
                return None
            cur = tables[name] = TableText([])
            pending = {}
        elif cur is None:
            return None
        elif line == "COMMIT":
            cur.rules = {c: "\n".join(r) for c, r in pending.items()}
            cur = None
        elif line[0] == ":":
            m = _DECL.match(line)
            if not m or m.group(1) in cur.policy:
                return None
            cur.policy[m.group(1)] = m.group(2)
            if m.group(2) != "-":
                if any(cur.policy[b] == "-" for b in cur.policy if b != m.group(1)):
                    return None  # a built-in after a user chain: not the order we know
                cur.builtins.append(m.group(1))
        elif line.startswith("-A "):
            chain = line[3:].split(" ", 1)[0]
            if chain not in cur.policy:
                return None
            pending.setdefault(chain, []).append(line)
        else:
            return None
    return tables if cur is None else None


def render(tables: dict[str, TableText]) -> Lines:
    out: Lines = []
    for name, t in tables.items():
        out.append(f"*{name}")
        order = [*t.builtins, *sorted(c for c in t.policy if c not in t.builtins)]
        out += [f":{c} {t.policy[c]} [0:0]" for c in order]
        for c in order:
            body = t.rules.get(c)
            if body:
                out += body.split("\n")
        out.append("COMMIT")
    return out


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
        #: every change committed since the last read (all tables), provably complete;
        #: None: unknown (the native splice, collect/nftsplice.py, then reads in full)
        self.changes: set[nfchanges.Change] | None = None
        self.full_reads = 0
        self.chain_reads = 0
        # the watch's thread and socket go with this object (a dropped ParseCache)
        self._box: list[nfchanges.Watch | None] = [None]
        weakref.finalize(self, _close, self._box)

    def close(self) -> None:
        _close(self._box)
        self.watch = self._box[0] = None

    def begin(self) -> None:
        """Before the reads of one cycle: what changed since the last, per family."""
        self.plan = {}
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
        self.plan = plan

    def read(self, family: int, full: Callable[[], Lines | None],
             run: Runner) -> Lines | None:
        """One family's save lines: spliced when provably possible, else `full()`."""
        state = self.states.get(family)
        todo = self.plan.get(family)
        if state is None or todo is None:
            return self._full(family, full)
        if not todo:
            return render(state)
        if len(todo) > MAX_CHAINS or not self._splice(family, state, todo, run):
            return self._full(family, full)
        if nfgen.generation_id() != self.plan_gen:
            return self._full(family, full)  # written meanwhile: one consistent snapshot
        return render(state)

    def _full(self, family: int, full: Callable[[], Lines | None]) -> Lines | None:
        self.full_reads += 1
        lines = full()
        self.states[family] = index(lines) if lines is not None else None
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
            old = state[table]
            new = TableText(list(old.builtins), dict(old.policy), dict(old.rules))
            chains = {c for t, c in todo if t == table and c}
            if (table, "") in todo:
                kernel = listed.get(table, {})
                if any(base and c not in new.builtins for c, base in kernel.items()):
                    return False  # a base chain iptables-nft does not name
                for c in [c for c in new.policy if c not in kernel]:
                    if c in new.builtins:  # printed as an empty ACCEPT chain
                        new.policy[c] = "ACCEPT"
                        new.rules.pop(c, None)
                    else:
                        del new.policy[c]
                        new.rules.pop(c, None)
                chains |= {c for c in kernel if c not in new.policy}
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
            t.policy[chain] = "-"
        elif head[:2] == ["-P", chain] and len(head) == 3 and chain in t.builtins:
            t.policy[chain] = head[2]
        else:
            return False
        prefix = f"-A {chain} "
        rules = lines[1:]
        if any(not r.startswith(prefix) for r in rules):
            return False
        if rules:
            t.rules[chain] = "\n".join(rules)
        else:
            t.rules.pop(chain, None)
        return True
