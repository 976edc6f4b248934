"""The real-world corpus (../shared/realworld beside the repo): which files are rulesets,
their family, and the fix-ups the realworld README names for loading them into a kernel
(ipsets and nfacct objects first; nft 1.0.6 does not know `priority dstnat` on an output
hook; kube-proxy's nft script names chains before declaring them)."""

from __future__ import annotations

import os
import re
from pathlib import Path

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "realworld"
IPT_SUFFIXES = (".iptables", ".ip6tables", ".restore", "-save.txt")


def available() -> str | None:
    """None when the corpus is there, else why not."""
    return None if (REAL / "ipt").is_dir() else f"{REAL} missing"


def ipt_files() -> list[tuple[Path, int]]:
    """(iptables-save dump, family) for every dump under ipt/, sorted."""
    out = []
    for p in sorted((REAL / "ipt").rglob("*")):
        if p.is_file() and p.name.endswith(IPT_SUFFIXES):
            out.append((p, 6 if p.name.endswith(".ip6tables") else 4))
    return out


def nft_text_files() -> list[Path]:
    return sorted(p for p in (REAL / "nft").rglob("*")
                  if p.is_file() and p.suffix in (".nft", ".nftcmd"))


def nft_json_files() -> list[Path]:
    return sorted(p for p in (REAL / "nft").rglob("*.json") if p.is_file())


_DSTNAT_OUT = re.compile(r"(hook output priority) dstnat")


def nft_loadable(text: str) -> str:
    """An nft script nft 1.0.6 loads: `dstnat` on an output hook is -100; a command
    script (`add ...` lines) gets its tables, then sets/maps, then chains, then the rest
    (its rules may name chains declared further down), and the tables it only names."""
    text = _DSTNAT_OUT.sub(r"\1 -100", text)
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines or not all(ln.startswith(("add ", "insert ", "flush ", "create "))
                            for ln in lines):
        return text
    order = {"table": 0, "set": 1, "map": 1, "chain": 2}
    tables = []
    for ln in lines:
        parts = ln.split()
        if len(parts) >= 4 and parts[1] in ("chain", "set", "map", "rule", "element"):
            t = f"add table {parts[2]} {parts[3]}"
            if t not in tables:
                tables.append(t)
    keyed = sorted(lines, key=lambda ln: order.get(ln.split()[1], 3))
    return "\n".join([*tables, *keyed]) + "\n"


def ipt_objects(text: str, family: int) -> list[list[str]]:
    """Commands creating the ipsets and nfacct objects a dump names (iptables-restore
    refuses a rule naming a missing one). ipsets are hash:net of the family, with an
    `add` of a member when a set type needs more (none do here)."""
    cmds: list[list[str]] = []
    for name in dict.fromkeys(re.findall(r"--match-set (\S+)", text)):
        cmds.append(["ipset", "create", "-exist", name, "hash:net",
                     *(["family", "inet6"] if family == 6 else [])])
    for name in dict.fromkeys(re.findall(r"--nfacct-name (\S+)", text)):
        cmds.append(["nfacct", "add", name])
    return cmds


def rel(p: Path) -> str:
    return os.path.relpath(p, REAL)
