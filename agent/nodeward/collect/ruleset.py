"""Read-only ruleset collector: which netfilter front-ends hold rules, and their rules.

Detection follows kube-proxy/iptables-wrapper: run `iptables-nft-save` and
`iptables-legacy-save` (v4 and v6) and look for rules; both may hold rules, and a packet
must pass both, so both are read and a note says so. Native nftables tables come from
`nft -s -j list ruleset` (stateless: no counters), skipping the tables iptables-nft owns
(they were read through iptables-nft-save already). ipset contents come from `ipset save`.
Nothing here writes.

A daemon re-reads the ruleset every cycle; a ParseCache keeps the parsed tables of each
dump keyed by its text (legacy chain counters stripped), so an unchanged kube-proxy ruleset
is not parsed again, and the Ruleset's fingerprint lets later stages reuse verdicts.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from ..ruleset.iptables import guess_family, parse_iptables_save
from ..ruleset.model import IpSet, Problem, Ruleset, Table
from ..ruleset.nft import parse_nft_json

Runner = Callable[[Sequence[str]], str | None]

FLAVOURS = (("iptables-nft", "iptables-nft-save", "ip6tables-nft-save"),
            ("iptables-legacy", "iptables-legacy-save", "ip6tables-legacy-save"))


NFT_LIST = ("nft", "-s", "-j", "list", "ruleset")
#: Chain counters (legacy iptables-save prints live ones): zeroed so an unchanged ruleset
#: gives an unchanged text. Anchored on "\n:" (chain lines only), which the regex engine
#: finds far faster than a multi-line "^".
_COUNTERS = re.compile(r"(\n:[^ \n]+ [^ \n]+) \[\d+:\d+\]")


class RulesetUnavailable(Exception):
    """No front-end could be read (tools missing, or not root): nothing to evaluate.
    `source` names the command to blame (NW206's evidence)."""

    def __init__(self, message: str, source: str = "ruleset") -> None:
        super().__init__(message)
        self.source = source


#: CAP_NET_ADMIN's bit in /proc/PID/status CapEff.
CAP_NET_ADMIN = 12


#: CAP_NET_RAW's bit: the legacy iptables tools read the tables through a raw socket and
#: fail ("Permission denied") without it, while iptables-nft-save and nft still answer.
CAP_NET_RAW = 13


def has_net_raw(status_path: str = "/proc/self/status") -> bool | None:
    """Whether CAP_NET_RAW is effective; None when the status file cannot tell."""
    try:
        with open(status_path, encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_RAW & 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def has_net_admin(status_path: str = "/proc/self/status") -> bool | None:
    """Whether this process may read netfilter (CAP_NET_ADMIN effective); None when the
    status file cannot tell. Without it iptables-legacy-save exits 0 with empty output,
    which must not be read as "no rules"."""
    try:
        with open(status_path, encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


class ParseCache:
    """Parsed tables per dump text, for the dumps seen in the last read only (bounded)."""

    __slots__ = ("_last", "_now", "hits")

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], Any] = {}
        self._now: dict[tuple[str, str], Any] = {}
        self.hits = 0

    def get(self, cmd: str, text: str, parse: Callable[[str], Any],
            text_digest: str = "") -> Any:
        # keyed by digest, not by the text: a kube-proxy dump is megabytes
        key = (cmd, text_digest or hashlib.sha256(text.encode()).hexdigest())
        hit = self._last.get(key, self._now.get(key))
        if hit is None:
            hit = parse(text)
        else:
            self.hits += 1
        self._now[key] = hit
        return hit

    def rotate(self) -> None:
        self._last, self._now = self._now, {}


def run_local(argv: Sequence[str]) -> str | None:
    """stdout of a read-only command, or None when it is missing or fails."""
    if not shutil.which(argv[0]):
        return None
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def has_rules(tables: Sequence[Table]) -> bool:
    """Rules or a non-ACCEPT policy anywhere: an empty ACCEPT skeleton does not count."""
    return any(c.rules or (c.policy not in (None, "ACCEPT"))
               for t in tables for c in t.chains.values())


def parse_ipset_save(text: str) -> dict[str, IpSet]:
    types: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "create":
            types[parts[1]] = parts[2]
            members.setdefault(parts[1], [])
        elif len(parts) >= 3 and parts[0] == "add":
            if "nomatch" in parts[3:]:
                types[parts[1]] = types.get(parts[1], "") + "+nomatch"  # not modelled
            members.setdefault(parts[1], []).append(parts[2])
    return {n: IpSet(n, types.get(n, ""), tuple(members[n])) for n in members}


def collect_ruleset(run: Runner = run_local, cache: ParseCache | None = None) -> Ruleset:
    """The node's ruleset across front-ends, with notes an operator should see. Raises
    RulesetUnavailable when no front-end answered (or only empty legacy output while the
    installed nft front-ends failed: no CAP_NET_ADMIN), RulesetParseError on a bad dump.
    A read that failed or was cut short while others answered belongs in the Ruleset's
    `problems` (model.Problem): each is an NW206 finding."""
    tables: list[Table] = []
    notes: list[str] = []
    holding: list[str] = []
    digest = hashlib.sha256()
    answered = 0

    def parsed(cmd: str, text: str, parse: Callable[[str], Any]) -> Any:
        one = hashlib.sha256(text.encode()).hexdigest()
        digest.update(f"{cmd}\0{one}\0".encode())
        return cache.get(cmd, text, parse, one) if cache is not None else parse(text)

    failed: list[str] = []
    blank: list[str] = []
    for frontend, save4, save6 in FLAVOURS:
        found: list[Table] = []
        for fam, cmd in ((4, save4), (6, save6)):
            text = run([cmd])
            if text is None:
                failed.append(cmd)
                continue
            if not text.strip():
                blank.append(cmd)
            answered += 1
            text = _COUNTERS.sub(r"\1 [0:0]", text)
            found.extend(parsed(cmd, text, lambda t, fe=frontend, f=fam, c=cmd:
                                parse_iptables_save(t, frontend=fe, family=f, source=c)))
        if has_rules(found):
            holding.append(frontend)
        tables.extend(found)
    if len(holding) == 2:
        notes.append("both iptables-legacy and iptables-nft hold rules; a packet must pass "
                     "both (kube-proxy would pick iptables-nft)")
    sets: dict[str, IpSet] = {}
    nft_text = run(list(NFT_LIST))
    if nft_text is not None:
        answered += 1
    else:
        failed.append("nft")
    installed = shutil.which if run is run_local else (lambda _cmd: True)
    if "iptables-nft-save" in failed and "nft" in failed and blank and \
            answered == len(blank) and installed("iptables-nft-save") and installed("nft"):
        # Without CAP_NET_ADMIN iptables-nft-save and nft fail ("Permission denied") while
        # iptables-legacy-save exits 0 printing nothing: that is "unreadable", not "no rules".
        raise RulesetUnavailable(
            f"iptables-nft-save and nft failed and {', '.join(blank)} printed nothing: the "
            "ruleset is unreadable (no CAP_NET_ADMIN?), not empty", "iptables-nft-save")
    if nft_text:
        # iptables-nft's own tables show up here too (xt compat); already read above.
        owned = {("ip" if t.family == "ip" else "ip6", t.name) for t in tables
                 if t.frontend == "iptables-nft"}
        # what is skipped changes the result, so it is part of the cache key
        nft_tables, nft_sets = parsed(
            f"nft skip={sorted(owned)}", nft_text,
            lambda t: parse_nft_json(t, source="nft -j list ruleset", skip=owned))
        tables.extend(nft_tables)
        sets.update(nft_sets)
    ipset_text = run(["ipset", "save"])
    if ipset_text:
        sets.update(parsed("ipset", ipset_text, parse_ipset_save))
    if cache is not None:
        cache.rotate()
    if not answered:
        raise RulesetUnavailable("no iptables-save, ip6tables-save or nft answered "
                                 "(missing, or not run as root)")
    # Found by running the image without NET_RAW (tests/deploy/test_image.py): the legacy
    # tables were skipped with no word. Only when the capability is provably missing, so a
    # kernel without legacy iptables is not reported.
    legacy = [c for c in failed if "legacy" in c and installed(c)]
    problems = tuple(
        Problem(cmd, "failed without CAP_NET_RAW (the legacy tools need a raw socket): "
                     "iptables-legacy rules, if any, were not evaluated")
        for cmd in legacy if run is run_local and has_net_raw() is False)
    return Ruleset(tuple(tables), sets, tuple(notes), digest.hexdigest(), problems=problems)


def read_dump_files(paths: Sequence[str]) -> Ruleset:
    """A Ruleset from saved dumps instead of the live kernel: `iptables-save` /
    `ip6tables-save` text (family and flavour from its "# Generated by" header; without
    one, the family of its addresses; prefix a path with `v4:`/`v6:` to say) or
    `nft -j list ruleset` JSON.
    Raises RulesetParseError (naming the file and line) or OSError."""
    from ..ruleset.errors import RulesetParseError
    tables: list[Table] = []
    sets: dict[str, IpSet] = {}
    notes: list[str] = []
    digest = hashlib.sha256()
    for spec in paths:
        family = 6 if spec.startswith("v6:") else 0
        path = spec[3:] if spec.startswith(("v4:", "v6:")) else spec
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise RulesetParseError(path, 1, f"not UTF-8 text ({e.reason})") from None
        digest.update(f"{spec}\0{text}\0".encode())
        if text.lstrip().startswith("{"):
            nft_tables, nft_sets = parse_nft_json(text, source=path)
            tables.extend(nft_tables)
            sets.update(nft_sets)
            continue
        head = text.lstrip()[:200]
        if not family:
            first = head.split("\n", 1)[0]
            family = 6 if "ip6tables" in first else 4 if "iptables" in first else \
                guess_family(text)
            if not family:
                family = 4
                notes.append(f"{path}: no '# Generated by' header and no address to tell "
                             "the family: judged as IPv4 (prefix the path with v6: if it "
                             "is ip6tables-save output)")
        frontend = "iptables-nft" if "nf_tables" in head or "-nft-save" in head \
            else "iptables-legacy"
        tables.extend(parse_iptables_save(text, frontend=frontend, family=family, source=path,
                                          strict=True))
    return Ruleset(tuple(tables), sets, (f"ruleset from {', '.join(paths)}, not the live "
                                         "one", *notes), digest.hexdigest())
