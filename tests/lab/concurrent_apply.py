"""Run inside a lab namespace: PAIRS pairs of concurrent backend.apply() calls (two forked
processes released together), each pair from a reset state. Prints one JSON line:
duplicate jumps seen, final states that were neither plan ("lost update"), and for pairs
applying the same plan, how many reported a change (serialised read-modify-write: one)."""

from __future__ import annotations

import json
import os
import sys

from nodeward import config as config_mod
from nodeward.enforce import backends
from nodeward.enforce.plan import build_plan
from nodeward.model import Address, Interface, NodeSnapshot


def _plan(allow: list[str], families: tuple[int, ...]):
    cfg = config_mod.from_mapping({
        "node_cidrs": ["10.77.0.0/24"], "pod_cidrs": ["10.244.0.0/16"], "mode": "enforce",
        "enforce": {"control_plane": ["10.77.0.2/32"], "ipv6": families == (4, 6),
                    "allow": {"kubelet": allow}}}, "concurrent.yaml")
    eth0 = Interface("eth0", 2, addresses=(Address("eth0", 4, "10.77.0.1", 24),))
    snap = NodeSnapshot("n", "", interfaces=(eth0,))
    return build_plan(snap, cfg.catalog, cfg, cfg.section("enforce"))


def _backend(name: str, families: tuple[int, ...]):
    if name.startswith("iptables-"):
        from nodeward.enforce.backends.iptables import IptablesBackend

        return IptablesBackend(name.split("-", 1)[1], families)
    return backends.select(name, families)


def _jumps(backend) -> int:
    """The most jumps to one of our chains from one built-in chain, over families."""
    if backend.name == "nftables":
        return 1
    from nodeward.enforce.backends.iptables import parse_own

    return max(len(p) for f in backend.families
               for p in parse_own(backend.save(f))[2].values())


def _pair(name: str, families, plan_a, plan_b) -> list[bool]:
    r, w = os.pipe()
    results = []
    kids = []
    for plan in (plan_a, plan_b):
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(w)
            os.read(r, 1)  # released together
            changed = _backend(name, families).apply(plan, "enforce")
            os.write(out_w, b"1" if changed else b"0")
            os._exit(0)
        os.close(out_w)
        kids.append((pid, out_r))
    os.write(w, b"xx")
    for pid, out_r in kids:
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise SystemExit(f"apply child failed ({status})")
        results.append(os.read(out_r, 1) == b"1")
        os.close(out_r)
    os.close(r)
    os.close(w)
    return results


def main() -> None:
    name, pairs, fams = sys.argv[1], int(sys.argv[2]), tuple(int(f) for f in sys.argv[3])
    a, b, c = (_plan([n], fams) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))
    backend = _backend(name, fams)
    want = {}
    for label, plan in (("a", a), ("b", b)):
        backend.apply(plan, "enforce")
        want[label] = backend.current()
    stats = {"pairs": pairs, "duplicate_jumps": 0, "lost_updates": 0, "same_plan_pairs": 0,
             "same_plan_both_changed": 0, "finals": {"a": 0, "b": 0}}
    for i in range(pairs):
        # reset: from nothing installed (both would insert a jump) or from a third plan
        if i % 4 < 2:
            backend.uninstall()
        else:
            backend.apply(c, "enforce")
        same = i % 2 == 1
        changed = _pair(name, fams, a, a if same else b)
        if _jumps(backend) != 1:
            stats["duplicate_jumps"] += 1
        now = backend.current()
        final = next((k for k, v in want.items() if v == now), None)
        if final is None or (same and final != "a"):
            stats["lost_updates"] += 1
        else:
            stats["finals"][final] += 1
        if same:
            stats["same_plan_pairs"] += 1
            stats["same_plan_both_changed"] += all(changed)
    backend.uninstall()
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
