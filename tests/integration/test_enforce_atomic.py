"""Atomicity: `nodeward apply` SIGKILLed (with its children) at random moments always leaves
each family's ruleset old or new, never a mix inside a family; killed exactly between the
two families (iptables backends write IPv4, then IPv6), each family is whole, `plan` says
the apply was interrupted, and the next apply converges both."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter

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
FAMILIES = {4: "iptables", 6: "ip6tables"}


def _skip(backend: str) -> None:
    reason = h.have("iptables-nft-restore", "iptables-legacy-restore", "nft")
    if backend == "python-iptables":
        reason = reason or h.have_pyiptables()
    if reason:
        h.require(reason)


def _clean(text: str) -> str:
    text = re.sub(r"^# (Generated|Completed|Warning).*$", "", text, flags=re.M)
    return re.sub(r"counter packets \d+ bytes \d+|\[\d+:\d+\]", "", text)


def _state(lab, ns, backend: str, flavour: str) -> tuple[str, str]:
    """(IPv4, IPv6) text of where our objects live (nft: one inet table for both)."""
    if backend == "nftables":
        return _clean(h.nft_ruleset(lab, ns)), ""
    return tuple(_clean(lab.sh(f"{tool}-{flavour}-save", "-t", "mangle", ns=ns).stdout)
                 for tool in FAMILIES.values())


def _raw(lab, ns, backend: str, flavour: str) -> tuple[str, str]:
    if backend == "nftables":
        return lab.sh("nft", "list", "table", "inet", "nodeward", ns=ns).stdout, ""
    return tuple(lab.sh(f"{tool}-{flavour}-save", "-t", "mangle", ns=ns).stdout
                 for tool in FAMILIES.values())


def _reset(lab, ns, backend: str, flavour: str, old_raw: tuple[str, str]) -> None:
    """Put the old ruleset back wholesale (this is the test's own namespace)."""
    if backend == "nftables":  # only our table: iptables-nft's tables do not round-trip
        payload = f"table inet nodeward {{}}\ndelete table inet nodeward\n{old_raw[0]}"
        lab.sh("sh", "-c", f"nft -f - <<'EOF'\n{payload}\nEOF", ns=ns)
        return
    for tool, raw in zip(FAMILIES.values(), old_raw, strict=True):
        lab.sh("sh", "-c", f"{tool}-{flavour}-restore -w 5 <<'EOF'\n{raw}EOF", ns=ns)


def _configs(tmp_path, backend: str):
    """old = audit with one allowed source per family; new = enforce with others."""
    old = h.config(tmp_path, backend, mode="audit", ipv6=True,
                   allow={"kubelet": ["192.0.2.0/24", "2001:db8:1::/48"]})
    (tmp_path / "new").mkdir()
    new = h.config(tmp_path / "new", backend, mode="enforce", ipv6=True,
                   allow={"kubelet": ["198.51.100.0/24", "2001:db8:2::/48"]})
    return old, new


def _prepare(lab, tmp_path, backend, flavour):
    node = lab.netns("node")
    h.add_foreign_iptables(lab, node, flavour)
    old_cfg, new_cfg = _configs(tmp_path, backend)
    r = h.nodeward(lab, node, old_cfg, "apply")
    assert r.returncode == 0, r.stderr
    old, old_raw = _state(lab, node, backend, flavour), _raw(lab, node, backend, flavour)
    return node, new_cfg, old, old_raw


def _label(now: tuple[str, str], old: tuple[str, str], new: tuple[str, str]) -> str:
    out = []
    for i in (0, 1) if old[1] else (0,):  # nft: one inet table holds both families
        out.append("old" if now[i] == old[i] else "new" if now[i] == new[i] else "MIXED")
    return "/".join(out)


@pytest.mark.parametrize("backend,flavour", BACKENDS)
def test_sigkill_leaves_old_or_new(lab, tmp_path, backend, flavour):
    _skip(backend)
    node, new_cfg, old, old_raw = _prepare(lab, tmp_path, backend, flavour)
    t0 = time.monotonic()
    r = h.nodeward(lab, node, new_cfg, "apply")
    full = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    new = _state(lab, node, backend, flavour)
    assert old[0] != new[0] and (backend == "nftables" or old[1] != new[1])

    seed = int(os.environ.get("NODEWARD_ATOMIC_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    seen: Counter[str] = Counter()
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
        label = _label(_state(lab, node, backend, flavour), old, new)
        assert "MIXED" not in label, (f"mixed ruleset after SIGKILL at {delay:.3f}s "
                                      f"(trial {trial}, seed {seed}): {label}")
        seen[label] += 1
    print(f"{backend}/{flavour}: {TRIALS} kills over {full:.2f}s applies, seed {seed}: "
          f"states (IPv4/IPv6) {dict(seen)}")
    r = h.nodeward(lab, node, new_cfg, "apply")  # converges after any interruption
    assert r.returncode == 0, r.stderr
    assert _state(lab, node, backend, flavour) == new


@pytest.mark.parametrize("backend,flavour", [b for b in BACKENDS if b.id != "nftables"])
def test_kill_between_families(lab, tmp_path, backend, flavour):
    """The one moment two transactions cannot cover: IPv4 written, IPv6 not yet. Each
    family is whole; plan reports the interrupted apply; the next apply finishes it."""
    _skip(backend)
    node, new_cfg, old, old_raw = _prepare(lab, tmp_path, backend, flavour)
    assert h.nodeward(lab, node, new_cfg, "apply").returncode == 0
    new = _state(lab, node, backend, flavour)
    argv = ["ip", "netns", "exec", node.name, "env", "NODEWARD_TEST_FAMILY_PAUSE=30",
            sys.executable, "-m", "nodeward", "--config", str(new_cfg), "apply"]
    kills: Counter[str] = Counter()
    for _ in range(3):
        _reset(lab, node, backend, flavour, old_raw)
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        deadline = time.monotonic() + 20
        while _state(lab, node, backend, flavour)[0] == old[0]:
            assert time.monotonic() < deadline, "IPv4 never written"
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
        label = _label(_state(lab, node, backend, flavour), old, new)
        kills[label] += 1
        assert label == "new/old", label  # each family whole: IPv4 new, IPv6 old
        r = h.nodeward(lab, node, new_cfg, "plan")
        assert "died between IPv4 and IPv6" in r.stderr, r.stderr
        r = h.nodeward(lab, node, new_cfg, "apply")
        assert r.returncode == 0, r.stderr
        assert _state(lab, node, backend, flavour) == new
        r = h.nodeward(lab, node, new_cfg, "plan")
        assert "# 0 changes" in r.stdout and "died between" not in r.stderr, r.stdout
    print(f"{backend}/{flavour}: kills between families, states (IPv4/IPv6): {dict(kills)}; "
          "the next apply "
          "completed IPv6 every time")
