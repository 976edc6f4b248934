"""iptables backend: one `iptables-restore --noflush` transaction per family.

Works with both flavours (iptables-nft writes one nf_tables batch, iptables-legacy one
table replace: either way the kernel sees the old or the new table, never a mix). Only
NODEWARD-* chains and the `nodeward`-commented jumps to them are named in a payload.
"""

from __future__ import annotations

import re

from ..plan import (
    HOOKED,
    IPT_CHAINS,
    MARKER,
    Plan,
    iptables_rule_lines,
    jump_line,
    render_iptables,
)
from . import BackendError, Counter, run

OUR_CHAINS = tuple(IPT_CHAINS.values())
_COUNTERS = re.compile(r"^\[(\d+):(\d+)\] ")
_COMMENT = re.compile(r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))')


def _is_jump(rule: str) -> bool:
    """A `-A INPUT|FORWARD ...` line that is one of our jumps."""
    return (f"--comment {MARKER} " in rule + " "
            and any(rule.endswith(f"-j {c}") for c in OUR_CHAINS))


def parse_own(save: str) -> tuple[list[str], list[str], dict[str, list[int]]]:
    """(our chain names, our rule lines, positions (1-based) of our jumps per built-in)."""
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


class IptablesBackend:
    def __init__(self, flavour: str, families: tuple[int, ...] = (4,), log_rate: int = 10):
        if flavour not in ("nft", "legacy"):
            raise BackendError(f"unknown iptables flavour {flavour!r}")
        self.flavour = flavour
        self.families = families
        self.log_rate = log_rate
        self.name = f"iptables-{flavour}"

    def _cmd(self, family: int, tool: str) -> list[str]:
        return [f"{'ip' if family == 4 else 'ip6'}tables-{self.flavour}-{tool}"]

    def save(self, family: int, counters: bool = False) -> str:
        argv = [*self._cmd(family, "save"), "-t", "filter"]
        if counters:
            argv.append("-c")
        r = run(argv, check=False)
        if r.returncode != 0:
            if "does not exist" in r.stderr or "Table does not exist" in r.stderr:
                return ""
            raise BackendError(f"{argv[0]} failed: {r.stderr.strip()}")
        return r.stdout

    def _restore(self, family: int, payload: str) -> None:
        run([*self._cmd(family, "restore"), "-w", "5", "--noflush"], stdin=payload)

    # -- interface ----------------------------------------------------------------------
    def current(self) -> str:
        return "".join(f"# ipv{f}\n{own_text(*parse_own(self.save(f)))}" for f in self.families)

    def desired(self, plan: Plan, mode: str) -> str:
        out = []
        for f in self.families:
            rules = iptables_rule_lines(plan, f, mode, self.log_rate)
            jumps = {b: [1] for b in HOOKED.values()}
            out.append(f"# ipv{f}\n{own_text(list(OUR_CHAINS), rules, jumps)}")
        return "".join(out)

    def apply(self, plan: Plan, mode: str) -> bool:
        """Replace our chains with the plan's, one transaction per family; no-op if equal."""
        changed = False
        for f in self.families:
            chains, rules, jumps = parse_own(self.save(f))
            want_rules = iptables_rule_lines(plan, f, mode, self.log_rate)
            want_jumps = {b: [1] for b in HOOKED.values()}
            if (sorted(chains) == sorted(OUR_CHAINS) and rules == by_chain(want_rules)
                    and jumps == want_jumps):
                continue
            payload = render_iptables(plan, f, mode, self.log_rate,
                                      {b: len(p) for b, p in jumps.items()})
            try:
                self._restore(f, payload)
            except BackendError:
                # Another controller moved or removed a jump between our save and our
                # restore (the `-D` lines no longer match): read again and retry once.
                _c, _r, jumps = parse_own(self.save(f))
                self._restore(f, render_iptables(plan, f, mode, self.log_rate,
                                                 {b: len(p) for b, p in jumps.items()}))
            changed = True
        return changed

    def _uninstall_payload(self, save: str) -> str | None:
        chains, _rules, jumps = parse_own(save)
        if not chains and not any(jumps.values()):
            return None
        out = ["*filter"]
        for chain, builtin in HOOKED.items():
            out += [f"-D {builtin} {jump_line(chain)}"] * len(jumps[builtin])
        out += [f"-F {c}" for c in chains]
        out += [f"-X {c}" for c in chains]
        out.append("COMMIT")
        return "\n".join(out) + "\n"

    def uninstall(self) -> bool:
        changed = False
        for f in self.families if 6 in self.families else (4, 6):
            try:
                payload = self._uninstall_payload(self.save(f))
            except BackendError:
                if f == 6:
                    continue
                raise
            if payload:
                self._restore(f, payload)
                changed = True
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
        blocks: dict[int, list[str]] = {}
        fam = 4
        for line in saved.splitlines():
            if line.startswith("#family "):
                fam = int(line.split()[1])
                blocks[fam] = []
            elif line:
                blocks.setdefault(fam, []).append(line)
        for f, lines in blocks.items():
            save = self.save(f)
            chains_now, _r, jumps_now = parse_own(save)
            chains = [ln[1:] for ln in lines if ln.startswith(":")]
            hooked = {ln.split()[1] for ln in lines if ln.startswith("#jump ")}
            rules = [ln for ln in lines if ln.startswith("-A ")]
            if not chains:
                payload = self._uninstall_payload(save)
                if payload:
                    self._restore(f, payload)
                continue
            out = ["*filter"]
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
