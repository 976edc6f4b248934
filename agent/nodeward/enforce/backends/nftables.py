"""nftables backend: `table inet nodeward`, replaced in one `nft -f` transaction.

Our base chains hook input/forward at priority filter - 10, ahead of iptables-nft's and
legacy's filter tables; an `accept` there only ends *our* chain, so every other table still
sees the packet, while a `drop` is final.
"""

from __future__ import annotations

import json
import re

from ... import nfquote
from ..plan import NFT_TABLE, Plan, nft_table_text, render_nft
from . import BackendError, Counter, run

_COUNTER = re.compile(r"counter packets \d+ bytes \d+")
_HANDLE = re.compile(r" # handle \d+")


def normalise(listing: str) -> str:
    """`nft list table` text with counters reset to a bare `counter`."""
    return _HANDLE.sub("", _COUNTER.sub("counter", listing))


class NftablesBackend:
    name = "nftables"

    def __init__(self, families: tuple[int, ...] = (4,), log_rate: int = 10):
        self.families = families
        self.log_rate = log_rate

    def _list(self) -> str:
        r = run(["nft", "list", "table", "inet", NFT_TABLE], check=False)
        if r.returncode != 0:
            if "No such file" in r.stderr or "does not exist" in r.stderr:
                return ""
            raise BackendError(f"nft list table inet {NFT_TABLE} failed: {r.stderr.strip()}")
        return r.stdout

    def _run(self, payload: str) -> None:
        nfquote.check_nft_payload(payload, NFT_TABLE, ("input", "pod", "forward"))
        run(["nft", "-f", "-"], stdin=payload)

    def current(self) -> str:
        return normalise(self._list())

    def desired(self, plan: Plan, mode: str) -> str:
        return nft_table_text(plan, mode, self.log_rate)

    def apply(self, plan: Plan, mode: str) -> bool:
        from .. import state

        with state.writer_lock():
            if self.current() == self.desired(plan, mode):
                return False
            self._run(render_nft(plan, mode, self.log_rate))
        return True

    def uninstall(self) -> bool:
        from .. import state

        with state.writer_lock():
            if not self._list():
                return False
            self._run(f"delete table inet {NFT_TABLE}\n")
        return True

    def snapshot_all(self) -> str:
        return self._list()

    def restore(self, saved: str) -> None:
        from .. import state

        head = f"table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n"
        with state.writer_lock():
            self._run(head + (saved if saved.strip() else ""))

    def status(self) -> list[Counter]:
        r = run(["nft", "-j", "list", "table", "inet", NFT_TABLE], check=False)
        if r.returncode != 0:
            return []
        out = []
        for item in json.loads(r.stdout).get("nftables", []):
            rule = item.get("rule")
            if not rule:
                continue
            packets = bytes_ = 0
            for expr in rule.get("expr", []):
                if isinstance(expr, dict) and "counter" in expr and expr["counter"]:
                    packets, bytes_ = expr["counter"]["packets"], expr["counter"]["bytes"]
            verdict = next((k for e in rule.get("expr", []) if isinstance(e, dict)
                            for k in e if k in ("accept", "drop", "goto", "log")), "")
            out.append(Counter(rule["chain"], verdict, packets, bytes_, rule.get("comment", "")))
        return out
