"""One lock for every writer: pairs of concurrent applies per backend (two processes
released together, each pair from a reset state) never duplicate a jump, never end in a
ruleset that is neither plan, and when both apply the same plan exactly one writes (the
read-modify-write is serialised by nodeward's flock; iptables-restore -w takes the
xtables lock, libiptc runs under it)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from tests.lab import enforce_helpers as h

pytestmark = pytest.mark.lab

PAIRS = int(os.environ.get("NODEWARD_CONCURRENT_PAIRS", "50"))  # 100: ~85 s for four
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("backend", ["iptables-nft", "iptables-legacy", "nftables",
                                     "python-iptables"])
def test_concurrent_applies(lab, backend):
    reason = h.have("iptables-nft-restore", "iptables-legacy-restore", "nft")
    if backend == "python-iptables":
        reason = reason or h.have_pyiptables()
    if reason:
        h.require(reason)
    node = lab.netns("node")
    flavour = "legacy" if backend in ("iptables-legacy", "python-iptables") else "nft"
    h.add_foreign_iptables(lab, node, flavour)
    if flavour == "legacy":
        lab.sh("iptables-legacy", "-w", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT", ns=node)
    t0 = time.monotonic()
    r = lab.sh("sh", "-c", f"cd {ROOT} && {sys.executable} -m tests.lab.concurrent_apply "
               f"{backend} {PAIRS} 4", ns=node, timeout=600)
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"{backend}: {stats} in {time.monotonic() - t0:.1f}s")
    assert stats["duplicate_jumps"] == 0 and stats["lost_updates"] == 0, stats
    assert stats["same_plan_both_changed"] == 0, stats
    assert stats["finals"]["a"] > 0 and stats["finals"]["b"] > 0, stats  # a real race
