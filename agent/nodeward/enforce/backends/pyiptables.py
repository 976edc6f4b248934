"""python-iptables backend (libiptc): legacy xtables hosts only.

libiptc writes the *legacy* tables. On a host whose iptables is nft-backed, rules written
here would land in a second ruleset beside the one `iptables`, kube-proxy and operators
see, so this backend refuses there. All changes go into one libiptc commit (a single
table replace: atomic), made under the xtables lock so a concurrent iptables-legacy or
kube-proxy write is not lost in the read-modify-write.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from ... import nfquote
from ..plan import HOOKED, IPT_CHAINS, MARKER, Match, Plan, Rule
from ..state import flock_within
from . import BackendError, detect_flavour
from .iptables import OUR_CHAINS, IptablesBackend, removal_lines

XTABLES_LOCK = os.environ.get("XTABLES_LOCKFILE", "/run/xtables.lock")


class RefusedBackend(BackendError):
    refusal = True


@contextmanager
def xtables_lock(timeout: float = 5.0):
    fd = os.open(XTABLES_LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        if not flock_within(fd, timeout, 0.05):
            raise BackendError(f"xtables lock {XTABLES_LOCK} busy for {timeout:g}s")
        yield
    finally:
        os.close(fd)


def _iptc():
    try:
        import iptc
    except ImportError:
        raise RefusedBackend("backend python-iptables: the python-iptables package is not "
                             "installed (pip install python-iptables)") from None
    return iptc


def add_match(iptc, rule, m: Match, comment: str) -> None:
    if m.saddr:
        rule.src = m.saddr
    if m.daddr:
        rule.dst = m.daddr
    if m.iif:
        rule.in_interface = nfquote.ipt_iface(m.iif)
    if m.proto:
        rule.protocol = m.proto
    if m.ct:
        ct = rule.create_match("conntrack")
        ct.ctstate = ",".join(s.upper() for s in m.ct)
    if m.dports:
        if len(m.dports) == 1:
            pm = rule.create_match(m.proto)
            lo, hi = m.dports[0]
            pm.dport = str(lo) if lo == hi else f"{lo}:{hi}"
        else:
            pm = rule.create_match("multiport")
            pm.dports = ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in m.dports)
    c = rule.create_match("comment")
    c.comment = nfquote.comment_text(comment)


class PyIptablesBackend(IptablesBackend):
    """Reads through iptables-legacy-save (same text as the iptables backend, so the same
    diff and status); writes through libiptc."""

    def __init__(self, families: tuple[int, ...] = (4,), log_rate: int = 10):
        """Reads nothing with libiptc: python-iptables is imported, and a table opened
        (which instantiates it in the kernel), only when rules are written."""
        super().__init__("legacy", families, log_rate)
        self.name = "python-iptables"
        self._iptc = None
        if detect_flavour() != "legacy":
            raise RefusedBackend(
                "backend python-iptables: this host's iptables is nft-backed (iptables-nft "
                "holds the rules); libiptc writes legacy xtables, which would split the "
                "ruleset in two. Use backend: iptables or nftables")

    @property
    def iptc(self):
        if self._iptc is None:
            self._iptc = _iptc()
        return self._iptc

    def _tables(self, families: tuple[int, ...]):
        iptc = self.iptc
        for f in families:
            try:
                yield f, (iptc.Table(iptc.Table.MANGLE) if f == 4
                          else iptc.Table6(iptc.Table6.MANGLE))
            except Exception as e:  # libiptc reports a missing kernel table this way
                raise BackendError(f"backend python-iptables: this kernel has no legacy "
                                   f"xtables mangle table for IPv{f} ({e})") from None

    def _rule(self, family: int, r: Rule, verdict: str, mode: str):
        iptc = self.iptc
        rule = self._new_rule(family)
        add_match(iptc, rule, r.match, r.comment)
        if verdict == "log":
            lim = rule.create_match("limit")
            lim.limit = f"{self.log_rate}/sec"
            lim.limit_burst = str(2 * self.log_rate)
            t = rule.create_target("LOG")
            t.log_prefix = "nodeward-audit: "
        elif verdict == "goto-pod":
            rule.create_target(IPT_CHAINS["pod"], goto=True)
        else:
            rule.create_target({"accept": "RETURN", "drop": "DROP"}[verdict])
        return rule

    def _new_rule(self, family: int):
        """A libiptc rule that looks for chain targets in the mangle table only: stock
        python-iptables opens every table to ask "is this a chain?", which instantiates
        nat, filter, raw and security in the kernel."""
        iptc = self.iptc
        base = iptc.Rule if family == 4 else iptc.Rule6
        table = iptc.Table(iptc.Table.MANGLE) if family == 4 else iptc.Table6(
            iptc.Table6.MANGLE)
        cls = type("MangleOnlyRule", (base,), {"tables": property(lambda _self: [table])})
        return cls()

    @staticmethod
    def _is_our_jump(rule) -> bool:
        if rule.target.name not in OUR_CHAINS:
            return False
        return any(m.name == "comment" and m.comment == MARKER for m in rule.matches)

    def _write(self, plan: Plan | None, mode: str, families: tuple[int, ...]) -> None:
        """One commit per family: our chains refilled (or removed when plan is None)."""
        iptc = self.iptc
        for f in families:  # objects an older version left in filter
            old = removal_lines(self.save(f, table="filter"), "filter")
            if old:
                self._restore(f, "\n".join(old) + "\n")
        with xtables_lock():
            for f, table in self._tables(families):
                table.autocommit = False
                table.refresh()
                for builtin in HOOKED.values():
                    chain = iptc.Chain(table, builtin)
                    for rule in [r for r in chain.rules if self._is_our_jump(r)]:
                        chain.delete_rule(rule)
                existing = {c.name for c in table.chains}
                for name in OUR_CHAINS:
                    if name in existing:
                        table.flush_entries(name)
                if plan is None:
                    for name in OUR_CHAINS:
                        if name in existing:
                            table.delete_chain(name)
                    table.commit()
                    continue
                for name in OUR_CHAINS:
                    if name not in existing:
                        table.create_chain(name)
                for chain_key in ("input", "pod", "forward"):
                    chain = iptc.Chain(table, IPT_CHAINS[chain_key])
                    for r in plan.chain(f, chain_key):
                        if r.verdict == "drop" and mode == "audit":
                            chain.append_rule(self._rule(f, r, "log", mode))
                            chain.append_rule(self._rule(f, r, "accept", mode))
                        else:
                            chain.append_rule(self._rule(f, r, r.verdict, mode))
                for key, builtin in HOOKED.items():
                    jump = self._new_rule(f)
                    jump.create_match("comment").comment = MARKER
                    jump.create_target(IPT_CHAINS[key])
                    iptc.Chain(table, builtin).insert_rule(jump, 0)
                table.commit()
                table.autocommit = True

    def apply(self, plan: Plan, mode: str) -> bool:
        from .. import state

        with state.writer_lock():
            if self.current() == self.desired(plan, mode):
                return False
            if len(self.families) > 1:
                state.journal_begin(self.name, self.families)
            for i, f in enumerate(self.families):  # one libiptc commit per family
                if i:
                    state.between_families()
                self._write(plan, mode, (f,))
            state.journal_end()
        return True

    def uninstall(self) -> bool:
        from .. import state

        with state.writer_lock():
            fams = tuple(f for f in (4, 6) if self.table_exists(f, "mangle")
                         and ":NODEWARD-" in self.save(f))
            if not fams:
                return False
            self._write(None, "enforce", fams)
        return True

    def restore(self, saved: str) -> None:
        """Rollback goes through iptables-legacy-restore: the saved text is rule lines."""
        super().restore(saved)
