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


def apply_once(cfg: Config, mode: str | None = None,
               snapshot: NodeSnapshot | None = None) -> tuple[bool, str]:
    """(changed, backend name). In report mode nothing is done: (False, "")."""
    mode = mode or cfg.mode
    if mode == "report":
        return False, ""
    p = prepare(cfg, snapshot)
    return p.backend.apply(p.plan, mode), p.backend.name
