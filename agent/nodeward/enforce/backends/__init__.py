"""Firewall backends: the only code in nodeward that runs netfilter-writing commands.

Every backend works in the network namespace of the calling process, touches only the
agent's own objects (NODEWARD-* chains and the jumps to them carrying the `nodeward`
comment, or `table inet nodeward`), and changes them in one kernel transaction per family.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Protocol

from ..plan import Plan


class BackendError(RuntimeError):
    """The backend cannot be used here, or a command failed; one line for the operator."""


@dataclass(frozen=True)
class Counter:
    chain: str
    rule: str
    packets: int
    bytes: int
    comment: str


class Backend(Protocol):
    name: str

    def current(self) -> str: ...
    def desired(self, plan: Plan, mode: str) -> str: ...
    def apply(self, plan: Plan, mode: str) -> bool: ...
    def snapshot_all(self) -> str: ...
    def restore(self, saved: str) -> None: ...
    def uninstall(self) -> bool: ...
    def status(self) -> list[Counter]: ...


def run(argv: list[str], stdin: str | None = None, check: bool = True,
        timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise BackendError(f"{argv[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise BackendError(f"{argv[0]}: timed out after {timeout:g}s") from None
    if check and r.returncode != 0:
        err = (r.stderr.strip() or r.stdout.strip()).splitlines()
        raise BackendError(f"{' '.join(argv[:2])} failed ({r.returncode}): "
                           f"{err[0] if err else 'no output'}")
    return r


def _rule_count(argv: list[str]) -> int:
    """Rules in every table of one iptables flavour (how kube-proxy's wrapper decides)."""
    if not shutil.which(argv[0]):
        return -1
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return -1
    if r.returncode != 0:
        return -1
    return sum(1 for line in r.stdout.splitlines() if line.startswith("-A "))


def detect_flavour() -> str:
    """'nft' or 'legacy': the iptables flavour that holds this host's rules.

    Like kube-proxy's iptables-wrapper: the flavour holding the kubelet's hint chains, else
    the one with more rules, else the one `iptables` itself points to (alternatives)."""
    for flavour in ("legacy", "nft"):  # kubelet/kube-proxy leave these in their flavour
        if not shutil.which(f"iptables-{flavour}-save"):
            continue
        text = _iptables_save(flavour, 4, "mangle")
        if ":KUBE-IPTABLES-HINT " in text or ":KUBE-KUBELET-CANARY " in text:
            return flavour
    legacy = _rule_count(["iptables-legacy-save"]) + max(0, _rule_count(["ip6tables-legacy-save"]))
    nft = _rule_count(["iptables-nft-save"]) + max(0, _rule_count(["ip6tables-nft-save"]))
    if legacy > nft:
        return "legacy"
    if nft > legacy:
        return "nft"
    target = os.path.realpath(shutil.which("iptables") or "")
    return "legacy" if "legacy" in target else "nft"


def _iptables_save(flavour: str, family: int, table: str) -> str:
    """One table's save text, or "" -- without creating it (a legacy `-t` would)."""
    from .iptables import IptablesBackend

    try:
        return IptablesBackend(flavour, (family,)).save(family, table=table)
    except BackendError:
        return ""


_TABLE_LINE = re.compile(r"^table (\S+) (\S+) \{$")
_CHAIN_LINE = re.compile(r"^\tchain (\S+) \{$")


def nft_chain_names() -> dict[tuple[str, str], set[str]] | None:
    """{(family, table): chain names} of every nf_tables table that has chains, from one
    `nft list chains` (chains only, no rules: ~20 ms of CPU at 50k rules, its text 2-3x
    cheaper than -j), or None without nft. A name the text makes ambiguous (one with a
    space, which iptables refuses) is left out: it is never one of nodeward's.

    Not `nft list tables`: nft 1.0.6 fetches every rule for it (2 s at 50k rules)."""
    if not shutil.which("nft"):
        return None
    r = run(["nft", "list", "chains"], check=False)
    if r.returncode != 0:
        raise BackendError(f"nft list chains failed: {r.stderr.strip() or 'no output'}")
    out: dict[tuple[str, str], set[str]] = {}
    names: set[str] = set()
    for line in r.stdout.splitlines():
        if m := _CHAIN_LINE.match(line):
            names.add(m.group(1))
        elif m := _TABLE_LINE.match(line):
            names = out.setdefault((m.group(1), m.group(2)), set())
    return out


def _nft_table_exists(family: str, table: str) -> bool:
    """`nft list table` of one (small: ours) table; cheap, unlike `nft list tables`."""
    r = subprocess.run(["nft", "list", "table", family, table], capture_output=True, text=True)
    return r.returncode == 0


def _foreign_nft_tables() -> bool:
    """True when native nftables tables exist that iptables-nft did not create."""
    if not shutil.which("nft"):
        return False
    r = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    compat = {"filter", "nat", "mangle", "raw", "security", "broute"}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] not in compat and parts[2] != "nodeward":
            return True
    return False


def installed() -> list[tuple[str, str | None]]:
    """Every place our objects are now: ('nftables', None) and/or ('iptables', flavour)."""
    from ..plan import IPT_OLD_TABLES, IPT_TABLE

    out: list[tuple[str, str | None]] = []
    if shutil.which("nft") and _nft_table_exists("inet", "nodeward"):
        out.append(("nftables", None))
    for flavour in ("legacy", "nft"):
        if not shutil.which(f"iptables-{flavour}-save"):
            continue
        if flavour == "nft":
            names = nft_chain_names() or {}
            if any(n.startswith("NODEWARD-") for fam in ("ip", "ip6")
                   for table in (IPT_TABLE, *IPT_OLD_TABLES)
                   for n in names.get((fam, table), ())):
                out.append(("iptables", flavour))
        elif any(":NODEWARD-" in _iptables_save(flavour, fam, table)
                 for fam in (4, 6) for table in (IPT_TABLE, *IPT_OLD_TABLES)):
            out.append(("iptables", flavour))
    return out


def _where_ours() -> tuple[str, str | None]:
    """('nftables', None) / ('iptables', flavour) when our objects exist, else ('auto', None)."""
    found = installed()
    return found[0] if found else ("auto", None)


def by_name(name: str, families: tuple[int, ...], log_rate: int = 10) -> Backend:
    """The backend a pending rollback names (Backend.name), without any detection."""
    if name == "nftables":
        from .nftables import NftablesBackend

        return NftablesBackend(families, log_rate)
    if name in ("iptables-nft", "iptables-legacy", "python-iptables"):
        from .iptables import IptablesBackend  # rollback text is iptables-restore lines

        return IptablesBackend("nft" if name == "iptables-nft" else "legacy", families,
                               log_rate)
    raise BackendError(f"unknown backend {name!r}")


def every_installed(families: tuple[int, ...], log_rate: int = 10) -> list[Backend]:
    """A backend for each place our objects are (uninstall removes them all in one run)."""
    out: list[Backend] = []
    for name, flavour in installed():
        if name == "nftables":
            from .nftables import NftablesBackend

            out.append(NftablesBackend(families, log_rate))
        else:
            from .iptables import IptablesBackend

            out.append(IptablesBackend(flavour or "nft", families, log_rate))
    return out


def select(name: str, families: tuple[int, ...], log_rate: int = 10) -> Backend:
    """The backend for config `backend` (auto | iptables | nftables | python-iptables).

    With auto, wherever our objects already are wins (so detection cannot flip between
    runs), then a native-nftables host gets nftables, anything else iptables."""
    flavour = None
    if name == "auto":
        name, flavour = _where_ours()
    if name == "auto":
        if shutil.which("nft") and _foreign_nft_tables() and _rule_count(
                ["iptables-legacy-save"]) <= 0 and _rule_count(["iptables-nft-save"]) <= 0:
            name = "nftables"
        elif (shutil.which("iptables-nft-restore") or shutil.which("iptables-legacy-restore")):
            name = "iptables"
        else:
            name = "nftables"
    if name == "iptables":
        from .iptables import IptablesBackend

        return IptablesBackend(flavour or detect_flavour(), families, log_rate)
    if name == "nftables":
        from .nftables import NftablesBackend

        return NftablesBackend(families, log_rate)
    if name == "python-iptables":
        from .pyiptables import PyIptablesBackend

        return PyIptablesBackend(families, log_rate)
    raise BackendError(f"unknown backend {name!r}")
