"""One enforcement pass, shared by `nodeward apply` and the daemon loop.

The daemon should call `apply_once` every cycle in audit/enforce mode: it is idempotent
(no change, no write), and it is what re-asserts a jump that Felix or kube-proxy moved or
removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..model import NodeSnapshot
from . import backends, safety
from .plan import Plan, build_plan
from .settings import EnforceSettings


@dataclass(frozen=True)
class Prepared:
    settings: EnforceSettings
    plan: Plan
    backend: Any  # backends.Backend


def prepare(cfg: Config, snapshot: NodeSnapshot | None = None,
            derived: Any = None) -> Prepared:
    """Settings, snapshot, plan, safety checks, backend: everything short of a change.
    `derived` (nodeward.derive.Derived): what the cluster view implies fills the keys the
    config left unset (control plane, etcd members, node and pod CIDRs).
    Raises ConfigError / PlanError / Refused / BackendError."""
    from ..checks import run_checks
    from ..derive import with_derived
    from ..snapshot import take_snapshot

    cfg = with_derived(cfg, derived)
    settings = cfg.section("enforce")
    snap = snapshot if snapshot is not None else take_snapshot(cfg)
    safety.check_config(cfg, settings, snap)
    findings = run_checks(snap, cfg).findings
    plan = build_plan(snap, cfg.catalog, cfg, settings, findings)
    safety.check_plan(plan, cfg, settings, snap)
    backend = backends.select(cfg.backend, plan.families, settings.log_rate)
    return Prepared(settings, plan, backend)


def recover_pending() -> str | None:
    """Put back the rules of an apply that was never confirmed and whose deadline passed
    or whose process is gone (killed with its cgroup, say). Every writer calls this first:
    `apply`, `uninstall`, the daemon at start and every cycle. Returns what was done."""
    from . import state

    p = state.pending()
    if p is None or not state.due(p):
        return None
    backend = backends.by_name(p.backend, p.families, p.log_rate)
    backend.restore(p.saved)
    state.disarm()
    return (f"rolled back an unconfirmed apply (backend {p.backend}, pid {p.pid}): the "
            "previous rules are restored")


def arm_rollback(backend: Any, timeout: float, grace: float = 10.0) -> Any:
    """Persist the previous state of our objects with a deadline, and fork the detached
    watchdog (own session) that restores it if we die or hang. Returns the watchdog."""
    import os
    import time

    from . import state

    saved = backend.snapshot_all()
    state.arm(state.Pending(backend.name, tuple(backend.families), saved,
                            time.time() + timeout + grace, os.getpid(),
                            getattr(backend, "log_rate", 10)))

    def restore() -> None:
        if state.pending() is None:  # confirmed (disarmed) just before we died
            return
        backend.restore(saved)
        state.disarm()

    return safety.Watchdog(restore, timeout + grace)


def confirm_or_rollback(backend: Any, settings: EnforceSettings, timeout: float,
                        watchdog: Any = None) -> list[tuple[str, int]]:
    """Health-check within `timeout`; on failure restore the persisted previous state.
    Returns the targets that failed (empty: kept)."""
    from . import state

    failed = safety.confirm(safety.health_targets(settings), timeout)
    p = state.pending()
    if failed and p is not None:
        backend.restore(p.saved)
    state.disarm()
    if watchdog is not None:
        watchdog.dismiss()
    return failed


def apply_once(cfg: Config, mode: str | None = None,
               snapshot: NodeSnapshot | None = None) -> tuple[bool, str]:
    """(changed, backend name). In report mode nothing is done: (False, "")."""
    mode = mode or cfg.mode
    if mode == "report":
        return False, ""
    p = prepare(cfg, snapshot)
    return p.backend.apply(p.plan, mode), p.backend.name
