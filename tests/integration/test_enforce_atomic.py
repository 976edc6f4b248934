"""Atomicity: `nodeward apply` SIGKILLed (with its children) at random moments always leaves
the old ruleset or the new one, never a mix, and the next apply converges."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.lab import enforce_helpers as h

pytestmark = pytest.mark.lab

TRIALS = int(os.environ.get("NODEWARD_ATOMIC_TRIALS", "30"))
BACKENDS = [
    pytest.param("iptables", "nft", id="iptables-nft"),
    pytest.param("iptables", "legacy", id="iptables-legacy"),
    pytest.param("nftables", "nft", id="nftables"),
    pytest.param("python-iptables", "legacy", id="python-iptables-legacy"),
]


def _state(lab, ns, backend: str, flavour: str) -> str:
    text = h.nft_ruleset(lab, ns) if backend == "nftables" else h.save_text(lab, ns, flavour)
    return re.sub(r"counter packets \d+ bytes \d+|\[\d+:\d+\]", "", text)


def _reset(lab, ns, backend: str, flavour: str, old_raw: str) -> None:
    """Put the old ruleset back wholesale (this is the test's own namespace)."""
    if backend == "nftables":  # only our table: iptables-nft's tables do not round-trip
        payload = f"table inet nodeward {{}}\ndelete table inet nodeward\n{old_raw}"
        lab.sh("sh", "-c", f"nft -f - <<'EOF'\n{payload}\nEOF", ns=ns)
    else:
        lab.sh("sh", "-c", f"{h.flavour_cmd(flavour, 'restore')} -w 5 <<'EOF'\n{old_raw}EOF",
               ns=ns)


def _raw(lab, ns, backend: str, flavour: str) -> str:
    if backend == "nftables":
        return lab.sh("nft", "list", "table", "inet", "nodeward", ns=ns).stdout
    return lab.sh(h.flavour_cmd(flavour, "save"), "-t", "filter", ns=ns).stdout


@pytest.mark.parametrize("backend,flavour", BACKENDS)
def test_sigkill_leaves_old_or_new(lab, tmp_path, backend, flavour):
    reason = h.have("iptables-nft-restore", "iptables-legacy-restore", "nft")
    if backend == "python-iptables":
        reason = reason or h.have_pyiptables()
    if reason:
        pytest.skip(reason)
    node = lab.netns("node")
    h.add_foreign_iptables(lab, node, flavour)
    # old = an audit-mode plan with one allowed source; new = enforce with another.
    old_cfg = h.config(tmp_path, backend, mode="audit",
                       allow={"kubelet": ["192.0.2.0/24"]})
    (tmp_path / "new").mkdir()
    new_cfg = h.config(tmp_path / "new", backend, mode="enforce",
                       allow={"kubelet": ["198.51.100.0/24"]})
    r = h.nodeward(lab, node, old_cfg, "apply")
    assert r.returncode == 0, r.stderr
    old, old_raw = _state(lab, node, backend, flavour), _raw(lab, node, backend, flavour)
    t0 = time.monotonic()
    r = h.nodeward(lab, node, new_cfg, "apply")
    full = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    new = _state(lab, node, backend, flavour)
    assert old != new

    seed = int(os.environ.get("NODEWARD_ATOMIC_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    outcomes = {"old": 0, "new": 0}
    argv = ["ip", "netns", "exec", node.name, sys.executable, "-m", "nodeward",
            "--config", str(new_cfg), "apply"]
    for trial in range(TRIALS):
        _reset(lab, node, backend, flavour, old_raw)
        assert _state(lab, node, backend, flavour) == old
        delay = rng.uniform(0.3 * full, 1.1 * full)  # the first 30% is interpreter start-up
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):  # nodeward and its restore/nft child
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
        now = _state(lab, node, backend, flavour)
        assert now in (old, new), (f"mixed ruleset after SIGKILL at {delay:.3f}s "
                                   f"(trial {trial}, seed {seed})")
        outcomes["old" if now == old else "new"] += 1
    print(f"{backend}/{flavour}: {TRIALS} kills over {full:.2f}s applies, seed {seed}: "
          f"{outcomes}")
    r = h.nodeward(lab, node, new_cfg, "apply")  # converges after any interruption
    assert r.returncode == 0, r.stderr
    assert _state(lab, node, backend, flavour) == new
