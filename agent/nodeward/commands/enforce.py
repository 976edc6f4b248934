"""`nodeward plan | apply | status | uninstall`: the agent's own firewall rules.

Exit codes: 0 done, 1 the apply failed or was rolled back, 2 config error or refusal
(nothing changed).
"""

from __future__ import annotations

import argparse
import difflib
import sys

from ..config import Config, ConfigError

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

        try:
            return fn(args, cfg)
        except ConfigError as e:
            _err(f"config error: {e}")
            return EXIT_REFUSED
        except (PlanError, Refused) as e:
            _err(f"refused: {e}")
            return EXIT_REFUSED
        except BackendError as e:
            _err(f"backend error: {e}")
            return EXIT_REFUSED if getattr(e, "refusal", False) else EXIT_FAILED

    return wrapper


def _diff(current: str, desired: str) -> list[str]:
    return list(difflib.unified_diff(current.splitlines(), desired.splitlines(),
                                     "live", "plan", lineterm="", n=1))


def _effective_mode(args: argparse.Namespace, cfg: Config) -> str:
    return args.mode or cfg.mode


@_guard
def cmd_plan(args: argparse.Namespace, cfg: Config) -> int:
    mode = _effective_mode(args, cfg)
    _settings, plan, backend = _prepare(cfg, mode)
    shown = "enforce" if mode == "report" else mode
    diff = _diff(backend.current(), backend.desired(plan, shown))
    print(f"# backend {backend.name}, mode {mode}"
          + (" (apply refuses in report mode; showing the enforce plan)" if mode == "report"
             else "") + f", {len(plan.rules)} rules")
    for note in plan.notes:
        print(f"# note: {note}")
    changes = sum(1 for d in diff if d[:1] in "+-" and d[:3] not in ("+++", "---"))
    print(f"# {changes} changes")
    for line in diff:
        print(line)
    return EXIT_OK


@_guard
def cmd_apply(args: argparse.Namespace, cfg: Config) -> int:
    from ..enforce import safety

    mode = _effective_mode(args, cfg)
    if mode == "report":
        _err("refused: mode is report, which changes nothing; set mode: audit|enforce in "
             "the config or pass --mode")
        return EXIT_REFUSED
    settings, plan, backend = _prepare(cfg, mode)
    timeout = args.confirm_timeout if args.confirm_timeout is not None \
        else settings.confirm_timeout
    before = backend.current()
    desired = backend.desired(plan, mode)
    saved = backend.snapshot_all() if timeout > 0 else None
    watchdog = None
    if saved is not None and before != desired:
        # armed before the change: if we die before confirming, it puts `saved` back
        watchdog = safety.Watchdog(lambda: backend.restore(saved), timeout + 30)
    try:
        changed = backend.apply(plan, mode)
    except BaseException:
        if watchdog:
            watchdog.dismiss()
        raise
    changes = sum(1 for d in _diff(before, desired)
                  if d[:1] in "+-" and d[:3] not in ("+++", "---")) if changed else 0
    print(f"nodeward: apply: {changes} changes (backend {backend.name}, mode {mode})")
    if timeout > 0 and changed:
        targets = safety.health_targets(settings)
        if not targets:
            _err("warning: --confirm-timeout without enforce.api_server or probes: "
                 "nothing to check")
        failed = safety.confirm(targets, timeout)
        if failed:
            assert saved is not None
            backend.restore(saved)
            if watchdog:
                watchdog.dismiss()
            what = ", ".join(f"{h}:{p}" for h, p in failed)
            _err(f"rolled back: health check failed within {timeout:g}s ({what} did not "
                 "connect); the previous rules are restored")
            return EXIT_FAILED
        print(f"nodeward: apply: healthy within {timeout:g}s; kept")
    if watchdog:
        watchdog.dismiss()
    return EXIT_OK


def _configured_backend(cfg: Config):
    """The backend for commands that act on what is installed, without planning."""
    from ..enforce import backends

    settings = cfg.section("enforce")
    return backends.select(cfg.backend, (4, 6) if settings.ipv6 else (4,), settings.log_rate)


@_guard
def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    backend = _configured_backend(cfg)
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
    backend = _configured_backend(cfg)
    changed = backend.uninstall()
    print(f"nodeward: uninstall: {'removed' if changed else 'nothing to remove'} "
          f"(backend {backend.name})")
    return EXIT_OK


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in 0-3600")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="show the diff between the live rules and the plan")
    p.add_argument("--mode", choices=["report", "audit", "enforce"], default=None)
    p.set_defaults(handler=cmd_plan)
    a = sub.add_parser("apply", help="apply the plan (audit or enforce) atomically")
    a.add_argument("--mode", choices=["audit", "enforce"], default=None,
                   help="default: the config's mode (report refuses)")
    a.add_argument("--confirm-timeout", type=_seconds, default=None, metavar="N",
                   help="roll back unless the API server and probes connect within N s")
    a.set_defaults(handler=cmd_apply)
    s = sub.add_parser("status", help="the agent's rules with packet/byte counters")
    s.add_argument("--format", choices=["table", "json"], default="table")
    s.set_defaults(handler=cmd_status)
    u = sub.add_parser("uninstall", help="remove exactly what the agent added")
    u.set_defaults(handler=cmd_uninstall)
