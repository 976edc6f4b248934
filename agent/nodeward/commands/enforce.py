"""`nodeward plan | apply | status | uninstall`: the agent's own firewall rules.

Exit codes: 0 done, 1 the apply failed or was rolled back, 2 config error or refusal
(nothing changed).
"""

from __future__ import annotations

import argparse
import difflib
import sys

from ..config import Config, ConfigError
from . import seconds_arg

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


def _err(msg: str) -> None:
    print(f"nodeward: {msg}", file=sys.stderr)


def _prepare(cfg: Config, mode: str | None):
    from ..clusterscan import derived_for
    from ..enforce.cycle import prepare

    p = prepare(cfg, derived=derived_for(cfg))
    return p.settings, p.plan, p.backend


def _guard(fn):
    """Turn the expected failures into one line and exit 2 (nothing changed)."""

    def wrapper(args: argparse.Namespace, cfg: Config) -> int:
        from ..enforce.backends import BackendError
        from ..enforce.plan import PlanError
        from ..enforce.safety import Refused
        from ..enforce.state import LockBusy
        from ..nfquote import UnsafeText

        try:
            return fn(args, cfg)
        except ConfigError as e:
            _err(f"config error: {e}")
            return EXIT_REFUSED
        except (PlanError, Refused, UnsafeText) as e:
            _err(f"refused: {e}")
            return EXIT_REFUSED
        except LockBusy as e:
            _err(f"busy: {e}")
            return EXIT_FAILED
        except BackendError as e:
            _err(f"backend error: {e}")
            return EXIT_REFUSED if getattr(e, "refusal", False) else EXIT_FAILED

    return wrapper


def _diff(current: str, desired: str) -> list[str]:
    return list(difflib.unified_diff(current.splitlines(), desired.splitlines(),
                                     "live", "plan", lineterm="", n=1))


def _effective_mode(args: argparse.Namespace, cfg: Config) -> str:
    return args.mode or cfg.mode


def _warn_interrupted() -> None:
    from ..enforce import state

    j = state.interrupted()
    if j is not None:
        _err(f"warning: an apply (backend {j.get('backend')}, pid {j.get('pid')}) died between "
             "IPv4 and IPv6: each family is whole, but they may differ; run apply")


def _open_ipv6_refused(plan, args: argparse.Namespace) -> bool:
    """With `enforce.ipv6: false`, list every IPv6 path left open; refuse unless allowed."""
    if not plan.open_ipv6:
        return False
    allowed = getattr(args, "allow_open_ipv6", False)
    for path in plan.open_ipv6:
        _err(f"{'warning' if allowed else 'refused'}: enforce.ipv6 is false: IPv6 path left "
             f"open: {path}")
    if allowed:
        return False
    _err(f"refused: {len(plan.open_ipv6)} IPv6 paths stay open with enforce.ipv6: false; "
         "remove it (dual-stack is the default) or pass --allow-open-ipv6")
    return True


@_guard
def cmd_plan(args: argparse.Namespace, cfg: Config) -> int:
    mode = _effective_mode(args, cfg)
    _settings, plan, backend = _prepare(cfg, mode)
    _warn_interrupted()
    shown = "enforce" if mode == "report" else mode
    diff = _diff(backend.current(), backend.desired(plan, shown))
    print(f"# backend {backend.name}, mode {mode}"
          + (" (apply refuses in report mode; showing the enforce plan)" if mode == "report"
             else "") + f", {len(plan.rules)} rules, IPv{'/IPv'.join(map(str, plan.families))}")
    for note in plan.notes:
        print(f"# note: {note}")
    changes = sum(1 for d in diff if d[:1] in "+-" and d[:3] not in ("+++", "---"))
    print(f"# {changes} changes")
    for line in diff:
        print(line)
    return EXIT_REFUSED if _open_ipv6_refused(plan, args) else EXIT_OK


@_guard
def cmd_apply(args: argparse.Namespace, cfg: Config) -> int:
    from ..enforce import cycle, state

    mode = _effective_mode(args, cfg)
    if mode == "report":
        _err("refused: mode is report, which changes nothing; set mode: audit|enforce in "
             "the config or pass --mode")
        return EXIT_REFUSED
    recovered = cycle.recover_pending()
    if recovered:
        _err(recovered)
    settings, plan, backend = _prepare(cfg, mode)
    if _open_ipv6_refused(plan, args):
        return EXIT_REFUSED
    for note in plan.notes:
        _err(f"note: {note}")
    timeout = args.confirm_timeout if args.confirm_timeout is not None \
        else settings.confirm_timeout
    before = backend.current()
    desired = backend.desired(plan, mode)
    watchdog = None
    if timeout > 0 and before != desired:
        if not safety_targets(settings):
            _err("warning: --confirm-timeout without enforce.api_server or probes: "
                 "nothing to check")
        # armed before the change: if we die before confirming, the detached watchdog
        # (or, if it died with us, the next nodeward to start) puts the previous rules back
        watchdog = cycle.arm_rollback(backend, timeout)
    try:
        changed = backend.apply(plan, mode)
    except BaseException:
        if watchdog:
            p = state.pending()
            if p is not None:
                backend.restore(p.saved)
            state.disarm()
            watchdog.dismiss()
        raise
    changes = sum(1 for d in _diff(before, desired)
                  if d[:1] in "+-" and d[:3] not in ("+++", "---")) if changed else 0
    print(f"nodeward: apply: {changes} changes (backend {backend.name}, mode {mode}, "
          f"IPv{'/IPv'.join(map(str, plan.families))})")
    if watchdog is not None:
        failed = cycle.confirm_or_rollback(backend, settings, timeout, watchdog)
        if failed:
            what = ", ".join(f"{h}:{p}" for h, p in failed)
            _err(f"rolled back: health check failed within {timeout:g}s ({what} did not "
                 "connect); the previous rules are restored")
            return EXIT_FAILED
        print(f"nodeward: apply: healthy within {timeout:g}s; kept")
    return EXIT_OK


def safety_targets(settings) -> list[tuple[str, int]]:
    from ..enforce import safety

    return safety.health_targets(settings)


def _families(settings) -> tuple[int, ...]:
    return (4,) if settings.ipv6 is False else (4, 6)


def _configured_backend(cfg: Config):
    """The backend for commands that act on what is installed, without planning."""
    from ..enforce import backends

    settings = cfg.section("enforce")
    return backends.select(cfg.backend, _families(settings), settings.log_rate)


@_guard
def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    backend = _configured_backend(cfg)
    _warn_interrupted()
    counters = backend.status()
    if args.format == "json":
        import json

        print(json.dumps({"backend": backend.name, "rules": [
            {"chain": c.chain, "comment": c.comment, "packets": c.packets, "bytes": c.bytes,
             "rule": c.rule} for c in counters]}, indent=1))
        return EXIT_OK
    print(f"# backend {backend.name}: {len(counters)} rules")
    print(f"{'PACKETS':>10} {'BYTES':>12}  {'CHAIN':<22} COMMENT")
    for c in counters:
        label = c.comment or c.rule
        print(f"{c.packets:>10} {c.bytes:>12}  {c.chain:<22} {label}")
    return EXIT_OK


@_guard
def cmd_uninstall(args: argparse.Namespace, cfg: Config) -> int:
    """Remove our objects from every backend that holds them (a backend switch leaves two),
    and cancel a pending rollback (there is nothing left to roll back to)."""
    from ..enforce import backends, state

    settings = cfg.section("enforce")
    state.disarm()
    found = backends.every_installed((4, 6), settings.log_rate)
    removed = []
    for backend in found:
        if backend.uninstall():
            removed.append(backend.name)
        for note in getattr(backend, "notes", ()):
            _err(f"note: {note}")
    state.journal_end()
    what = f"removed from {', '.join(removed)}" if removed else "nothing to remove"
    print(f"nodeward: uninstall: {what}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="show the diff between the live rules and the plan")
    p.add_argument("--mode", choices=["report", "audit", "enforce"], default=None)
    p.add_argument("--allow-open-ipv6", action="store_true",
                   help="with enforce.ipv6: false, list the open IPv6 paths but exit 0")
    p.set_defaults(handler=cmd_plan)
    a = sub.add_parser("apply", help="apply the plan (audit or enforce) atomically")
    a.add_argument("--mode", choices=["audit", "enforce"], default=None,
                   help="default: the config's mode (report refuses)")
    a.add_argument("--confirm-timeout", type=seconds_arg(3600), default=None, metavar="N",
                   help="roll back unless the API server and probes connect within N s")
    a.add_argument("--allow-open-ipv6", action="store_true",
                   help="with enforce.ipv6: false, apply IPv4 only and leave IPv6 open")
    a.set_defaults(handler=cmd_apply)
    s = sub.add_parser("status", help="the agent's rules with packet/byte counters")
    s.add_argument("--format", choices=["table", "json"], default="table")
    s.set_defaults(handler=cmd_status)
    u = sub.add_parser("uninstall", help="remove exactly what the agent added")
    u.set_defaults(handler=cmd_uninstall)
