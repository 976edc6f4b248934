"""iptables backend: one `iptables-restore --noflush` transaction per family.

Works with both flavours (iptables-nft writes one nf_tables batch, iptables-legacy one
table replace: either way the kernel sees the old or the new table, never a mix). Only
NODEWARD-* chains and the `nodeward`-commented jumps to them are named in a payload, and
nfquote checks every payload says nothing else before it runs.

Our chains live in the mangle table (see plan.IPT_TABLE). Reading never instantiates a
table: a legacy table that is not listed in /proc/net/ip*_tables_names is not read (a
`-t` on it would create it), and on the nft flavour, what apply had to create (the table,
the INPUT/FORWARD base chains) is remembered in empty NODEWARD-MADE-* marker chains, so
uninstall removes exactly that and the ruleset text is what it was before. Legacy tables
cannot be removed from userspace: a legacy table nodeward instantiated stays (empty,
policy ACCEPT) until the namespace goes; uninstall says so.

Families are written IPv4 then IPv6 under nodeward's writer lock, with a journal
(state.py): a death between the two leaves each family whole (old or new), `plan` and
`status` report it, and the next apply or daemon cycle completes the other.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ... import nfquote
from ..plan import (
    HOOKED,
    IPT_CHAINS,
    IPT_OLD_TABLES,
    IPT_TABLE,
    MARKER,
    Plan,
    iptables_rule_lines,
    jump_line,
    render_iptables,
)
from . import BackendError, Counter, nft_chain_names, run

OUR_CHAINS = tuple(IPT_CHAINS.values())
MADE_PREFIX = "NODEWARD-MADE-"
MADE_TABLE = MADE_PREFIX + "TABLE"
MARKERS = (MADE_TABLE, *(MADE_PREFIX + b for b in HOOKED.values()))
ALL_CHAINS = (*OUR_CHAINS, *MARKERS)
_COUNTERS = re.compile(r"^\[(\d+):(\d+)\] ")
_COMMENT = re.compile(r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))')


def _nft_family(family: int) -> str:
    return "ip" if family == 4 else "ip6"


def _is_jump(rule: str) -> bool:
    """A `-A INPUT|FORWARD ...` line that is one of our jumps."""
    return (f"--comment {MARKER} " in rule + " "
            and any(rule.endswith(f"-j {c}") for c in OUR_CHAINS))


def parse_own(save: str) -> tuple[list[str], list[str], dict[str, list[int]]]:
    """(our chain names, our rule lines, positions (1-based) of our jumps per built-in).
    Marker chains are not in the first list (see markers())."""
    chains, rules, jumps = [], [], {b: [] for b in HOOKED.values()}
    pos: dict[str, int] = {}
    for raw in save.splitlines():
        line = _COUNTERS.sub("", raw)
        if line.startswith(":"):
            name = line[1:].split()[0]
            if name in OUR_CHAINS:
                chains.append(name)
        elif line.startswith("-A "):
            chain = line.split()[1]
            pos[chain] = pos.get(chain, 0) + 1
            if chain in OUR_CHAINS:
                rules.append(line)
            elif chain in jumps and _is_jump(line):
                jumps[chain].append(pos[chain])
    return chains, rules, jumps


def markers(save: str) -> list[str]:
    return [ln[1:].split()[0] for ln in save.splitlines()
            if ln.startswith(":") and ln[1:].split()[0] in MARKERS]


def own_text(chains: list[str], rules: list[str], jumps: dict[str, list[int]]) -> str:
    """Normalised text of our objects, for comparison and diffs."""
    out = [f":{c}" for c in sorted(chains)]
    for builtin in sorted(jumps):
        out += [f"jump {builtin} at {p}" for p in jumps[builtin]]
    out += by_chain(rules)
    return "\n".join(out) + ("\n" if out else "")


def by_chain(rules: list[str]) -> list[str]:
    """Rules grouped by chain name, order kept inside a chain (how iptables-save lists)."""
    return sorted(rules, key=lambda r: r.split()[1])


def removal_lines(save: str, table: str) -> list[str]:
    """A `*table` block deleting our jumps and chains (markers included), or []."""
    chains, _rules, jumps = parse_own(save)
    marks = markers(save)
    if not chains and not marks and not any(jumps.values()):
        return []
    out = [f"*{table}"]
    for chain, builtin in HOOKED.items():
        out += [f"-D {builtin} {jump_line(chain)}"] * len(jumps[builtin])
    out += [f"-F {c}" for c in chains]
    out += [f"-X {c}" for c in [*chains, *marks]]
    out.append("COMMIT")
    return out


class IptablesBackend:
    def __init__(self, flavour: str, families: tuple[int, ...] = (4,), log_rate: int = 10):
        if flavour not in ("nft", "legacy"):
            raise BackendError(f"unknown iptables flavour {flavour!r}")
        self.flavour = flavour
        self.families = families
        self.log_rate = log_rate
        self.name = f"iptables-{flavour}"
        self.notes: list[str] = []

    def _cmd(self, family: int, tool: str) -> list[str]:
        return [f"{'ip' if family == 4 else 'ip6'}tables-{self.flavour}-{tool}"]

    # -- reading, without instantiating anything ---------------------------------------
    def table_exists(self, family: int, table: str) -> bool:
        if self.flavour == "legacy":
            names = Path(f"/proc/net/ip{'6' if family == 6 else ''}_tables_names")
            try:
                return table in names.read_text().split()
            except OSError:
                return False
        return (_nft_family(family), table) in (nft_chain_names() or {})

    def own(self, family: int, table: str = IPT_TABLE,
            listing: dict[tuple[str, str], set[str]] | None = None
            ) -> tuple[list[str], list[str], dict[str, list[int]]]:
        """parse_own() of `table` without saving it. On the nft flavour: one chain listing
        and `-S` of our chains and the built-ins hooking them (~30 ms in all), where
        `iptables-nft-save -t` fetches every table's rules (0.35 s at 50k rules, more in
        `nft list tables`); legacy's libiptc reads the whole table either way, so legacy
        saves the one table. `listing`: a nft_chain_names() result to reuse."""
        if self.flavour != "nft":
            return parse_own(self.save(family, table=table))
        if listing is None:
            listing = nft_chain_names() or {}
        names = listing.get((_nft_family(family), table), set())
        chains = [c for c in OUR_CHAINS if c in names]
        rules: list[str] = []
        for c in chains:
            rules += [ln for ln in self._list_chain(family, table, c) if ln.startswith("-A ")]
        jumps: dict[str, list[int]] = {b: [] for b in HOOKED.values()}
        for b in jumps:
            if b not in names:
                continue
            pos = 0
            for ln in self._list_chain(family, table, b):
                if ln.startswith("-A "):
                    pos += 1
                    if _is_jump(ln):
                        jumps[b].append(pos)
        return chains, by_chain(rules), jumps

    def own_markers(self, family: int, table: str = IPT_TABLE) -> list[str]:
        """markers() of `table`, by name only on the nft flavour."""
        if self.flavour != "nft":
            return markers(self.save(family, table=table))
        names = (nft_chain_names() or {}).get((_nft_family(family), table), set())
        return [m for m in MARKERS if m in names]

    def _list_chain(self, family: int, table: str, chain: str) -> list[str]:
        """`iptables-nft -t TABLE -S CHAIN`: fetches that table only, never creates it."""
        argv = [f"{'ip' if family == 4 else 'ip6'}tables-nft", "-t", table, "-S", chain]
        return run(argv).stdout.splitlines()  # listed a moment ago: a failure is an error

    def save(self, family: int, counters: bool = False, table: str = IPT_TABLE) -> str:
        if not self.table_exists(family, table):
            return ""
        argv = [*self._cmd(family, "save"), "-t", table]
        if counters:
            argv.append("-c")
        r = run(argv, check=False)
        if r.returncode != 0:
            if "does not exist" in r.stderr or "Table does not exist" in r.stderr:
                return ""
            raise BackendError(f"{argv[0]} failed: {r.stderr.strip()}")
        return r.stdout

    def _restore(self, family: int, payload: str) -> None:
        nfquote.check_ipt_payload(payload, (IPT_TABLE, *IPT_OLD_TABLES), ALL_CHAINS,
                                  tuple(HOOKED.values()))
        run([*self._cmd(family, "restore"), "-w", "5", "--noflush"], stdin=payload)

    # -- what apply must create (nft flavour), remembered as marker chains -------------
    def _nft_chains(self, family: int, table: str) -> dict[str, dict] | None:
        """Chains of the iptables-nft table `table`, None when it does not exist."""
        fam = "ip" if family == 4 else "ip6"
        r = run(["nft", "-j", "list", "table", fam, table], check=False)
        if r.returncode != 0:
            return None
        out: dict[str, dict] = {}
        for item in json.loads(r.stdout).get("nftables", []):
            if "chain" in item:
                out[item["chain"]["name"]] = {**item["chain"], "rules": 0}
            elif "rule" in item and item["rule"].get("chain") in out:
                out[item["rule"]["chain"]]["rules"] += 1
        return out

    def _made(self, family: int) -> list[str]:
        """Marker chains to declare on a first apply: what this apply is about to create."""
        if self.flavour != "nft" or not shutil.which("nft"):
            return []
        chains = self._nft_chains(family, IPT_TABLE)
        if chains is None:
            return list(MARKERS)
        return [MADE_PREFIX + b for b in HOOKED.values() if b not in chains]

    def _tidy_made(self, family: int, made: list[str]) -> None:
        """After our chains are gone: delete the empty base chains and table we created."""
        chains = self._nft_chains(family, IPT_TABLE) if made else None
        if not chains:
            return
        fam = "ip" if family == 4 else "ip6"
        cmds, left = [], set(chains)
        for b in HOOKED.values():
            c = chains.get(b)
            if MADE_PREFIX + b in made and c and c["rules"] == 0 \
                    and c.get("policy", "accept") == "accept":
                cmds.append(f"delete chain {fam} {IPT_TABLE} {b}")
                left.discard(b)
        if MADE_TABLE in made and not left:
            cmds = [f"delete table {fam} {IPT_TABLE}"]
        if cmds:
            run(["nft", "-f", "-"], stdin="\n".join(cmds) + "\n")

    # -- interface ----------------------------------------------------------------------
    def current(self) -> str:
        listing = (nft_chain_names() or {}) if self.flavour == "nft" else None
        return "".join(f"# ipv{f}\n{own_text(*self.own(f, listing=listing))}"
                       for f in self.families)

    def desired(self, plan: Plan, mode: str) -> str:
        out = []
        for f in self.families:
            rules = iptables_rule_lines(plan, f, mode, self.log_rate)
            jumps = {b: [1] for b in HOOKED.values()}
            out.append(f"# ipv{f}\n{own_text(list(OUR_CHAINS), rules, jumps)}")
        return "".join(out)

    def _old_removal(self, family: int,
                     listing: dict[tuple[str, str], set[str]] | None = None) -> list[str]:
        out = []
        for table in IPT_OLD_TABLES:
            if self.flavour == "nft":
                if listing is None:
                    listing = nft_chain_names() or {}
                names = listing.get((_nft_family(family), table), set())
                if not any(n.startswith("NODEWARD-") for n in names):
                    continue  # no chain of ours there, so no jump to one either
            out += removal_lines(self.save(family, table=table), table)
        return out

    def _apply_family(self, plan: Plan, mode: str, f: int,
                      listing: dict[tuple[str, str], set[str]] | None = None) -> bool:
        # Reads only our chains and the built-ins hooking them (own()), never the whole
        # table: a no-op cycle costs a few small listings, not a save of every rule.
        chains, rules, jumps = self.own(f, listing=listing)
        want_rules = iptables_rule_lines(plan, f, mode, self.log_rate)
        want_jumps = {b: [1] for b in HOOKED.values()}
        old = self._old_removal(f, listing)
        if (sorted(chains) == sorted(OUR_CHAINS) and rules == by_chain(want_rules)
                and jumps == want_jumps and not old):
            return False
        made = self._made(f) if not chains else []

        def payload(jumps: dict[str, list[int]]) -> str:
            text = render_iptables(plan, f, mode, self.log_rate,
                                   {b: len(p) for b, p in jumps.items()})
            if made:
                text = text.replace("COMMIT\n", "".join(f":{m} - [0:0]\n" for m in made)
                                    + "COMMIT\n")
            return "\n".join(old) + ("\n" if old else "") + text

        try:
            self._restore(f, payload(jumps))
        except BackendError:
            # Another controller moved or removed a jump between our save and our
            # restore (the `-D` lines no longer match): read again and retry once.
            _c, _r, jumps = self.own(f)
            self._restore(f, payload(jumps))
        return True

    def apply(self, plan: Plan, mode: str) -> bool:
        """Replace our chains with the plan's, one transaction per family; no-op if equal."""
        from .. import state

        changed = False
        with state.writer_lock():
            if len(self.families) > 1:
                state.journal_begin(self.name, self.families)
            # one chain listing for every family (names only; a family written below
            # does not change which chains the next one has)
            listing = (nft_chain_names() or {}) if self.flavour == "nft" else None
            for i, f in enumerate(self.families):
                if i:
                    state.between_families()
                changed |= self._apply_family(plan, mode, f, listing)
            state.journal_end()
        return changed

    def _uninstall_family(self, f: int) -> bool:
        save = self.save(f)
        made = markers(save)
        lines = removal_lines(save, IPT_TABLE) + self._old_removal(f)
        if not lines:
            return False
        self._restore(f, "\n".join(lines) + "\n")
        if self.flavour == "nft":
            self._tidy_made(f, made)
        elif not any(ln.startswith("-A ") for ln in self.save(f).splitlines()):
            self.notes.append(f"ipv{f}: the legacy {IPT_TABLE} table stays (the kernel "
                              "cannot remove a legacy table); nodeward's rules are gone")
        return True

    def uninstall(self) -> bool:
        from .. import state

        changed = False
        with state.writer_lock():
            for f in (4, 6):
                try:
                    changed |= self._uninstall_family(f)
                except BackendError:
                    if f == 6:
                        continue
                    raise
            state.journal_end()
        return changed

    def snapshot_all(self) -> str:
        """Our objects as iptables-save lines, per family: enough to put them back."""
        parts = []
        for f in self.families:
            chains, rules, jumps = parse_own(self.save(f))
            parts.append(f"#family {f}\n" + "\n".join(
                [f":{c}" for c in chains] + [f"#jump {b}" for b, p in jumps.items() if p]
                + rules))
        return "\n".join(parts) + "\n"

    def restore(self, saved: str) -> None:
        """Put back what snapshot_all() saw, in one transaction per family."""
        from .. import state

        blocks: dict[int, list[str]] = {}
        fam = 4
        for line in saved.splitlines():
            if line.startswith("#family "):
                fam = int(line.split()[1])
                blocks[fam] = []
            elif line:
                blocks.setdefault(fam, []).append(line)
        with state.writer_lock():
            for f, lines in blocks.items():
                save = self.save(f)
                chains_now, _r, jumps_now = parse_own(save)
                chains = [ln[1:] for ln in lines if ln.startswith(":")]
                hooked = {ln.split()[1] for ln in lines if ln.startswith("#jump ")}
                rules = [ln for ln in lines if ln.startswith("-A ")]
                if not chains:
                    made = markers(save)
                    payload = removal_lines(save, IPT_TABLE)
                    if payload:
                        self._restore(f, "\n".join(payload) + "\n")
                        if self.flavour == "nft":
                            self._tidy_made(f, made)
                    continue
                out = [f"*{IPT_TABLE}"]
                out += [f":{c} - [0:0]" for c in sorted(set(chains) | set(chains_now))]
                out += rules
                for chain, builtin in HOOKED.items():
                    out += [f"-D {builtin} {jump_line(chain)}"] * len(jumps_now[builtin])
                    if builtin in hooked:
                        out.append(f"-I {builtin} 1 {jump_line(chain)}")
                out += [f"-X {c}" for c in sorted(set(chains_now) - set(chains))]
                out.append("COMMIT")
                self._restore(f, "\n".join(out) + "\n")

    def status(self) -> list[Counter]:
        out = []
        for f in self.families:
            for raw in self.save(f, counters=True).splitlines():
                m = _COUNTERS.match(raw)
                if not m:
                    continue
                line = raw[m.end():]
                chain = line.split()[1] if line.startswith("-A ") else ""
                if chain not in OUR_CHAINS and not (chain in HOOKED.values() and _is_jump(line)):
                    continue
                c = _COMMENT.search(line)
                comment = (c.group(1) or c.group(2)) if c else ""
                out.append(Counter(f"ipv{f} {chain}", line, int(m.group(1)), int(m.group(2)),
                                   comment))
        return out
