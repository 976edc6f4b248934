"""The finding-ID registry (findings.yaml): meaning, general fix and help URL per ID.

Data next to the check catalog, so `explain`, SARIF rules and config validation read one
source, and an ID a check emits without an entry here is caught by a test.
"""

from __future__ import annotations

import functools
import textwrap
from dataclasses import dataclass
from pathlib import Path

import yaml

#: The package's data files (a plain path: importlib.resources pulls in tempfile, zipfile
#: and random for the daemon, for files pip always installs as files).
_DATA = Path(__file__).parent


@dataclass(frozen=True)
class FindingInfo:
    id: str
    title: str
    severity: str
    check: str
    explain: str
    fix: str
    help_url: str

    def text(self) -> str:
        """The `nodeward explain ID` answer."""
        return "\n".join([f"{self.id}: {self.title}", f"  severity: {self.severity}",
                          f"  check:    {self.check}", "", *textwrap.wrap(self.explain, 88),
                          "", *textwrap.wrap(f"Fix: {self.fix}", 88), "",
                          f"More: {self.help_url}"]) + "\n"

    def markdown(self) -> str:
        return (f"## {self.id}\n\n**{self.title}** — severity {self.severity}, "
                f"{self.check} check.\n\n{self.explain}\n\nFix: {self.fix}\n")


@functools.cache
def registry() -> dict[str, FindingInfo]:
    data = yaml.safe_load(_DATA.joinpath("findings.yaml").read_text(encoding="utf-8"))
    base = data["help_base"]
    return {fid: FindingInfo(fid, e["title"], str(e["severity"]), e["check"],
                             " ".join(e["explain"].split()), " ".join(e["fix"].split()),
                             f"{base}#{fid.lower()}")
            for fid, e in data["findings"].items()}


def get(finding_id: str) -> FindingInfo | None:
    return registry().get(finding_id.strip().upper())


def info(finding_id: str) -> FindingInfo:
    """The entry, or a plain stand-in for an ID a newer check emits before it has one
    (reporters never drop a finding for want of help text)."""
    hit = get(finding_id)
    if hit is not None:
        return hit
    base = next(iter(registry().values())).help_url.split("#")[0]
    return FindingInfo(finding_id, finding_id, "", "", "", "", base)


def markdown() -> str:
    """docs/findings.md."""
    head = ("# Finding IDs\n\nGenerated from agent/nodeward/findings.yaml by "
            "`nodeward explain --all --markdown`; `nodeward explain ID` prints one entry.\n")
    return head + "".join("\n" + i.markdown() for i in registry().values())
