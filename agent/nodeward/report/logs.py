"""Structured JSON-lines logging with a stable schema, for a central log collector.

Every line has: timestamp (RFC 3339, UTC), level, event, node; finding events add
finding_id, severity, title, component, protocol, address, port, scope, pid, process,
remediation, evidence. Loggers are built per call site rather than configured globally.
"""

from __future__ import annotations

import sys
from typing import IO, Any

import structlog

from ..model import Finding, Severity
from ..redact import scrub

LEVEL_OF = {
    Severity.INFO: "info",
    Severity.LOW: "info",
    Severity.MEDIUM: "warning",
    Severity.HIGH: "error",
    Severity.CRITICAL: "critical",
}


HEAD = ("timestamp", "level", "event", "node")


def _head_first(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Put the schema's fixed keys first, so lines read the same in any collector."""
    return {**{k: event.pop(k) for k in HEAD if k in event}, **event}


def _redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """No secret in any log line, whatever a call site passed (see nodeward.redact)."""
    return scrub(event)


def _processors(node: str) -> list[Any]:
    def add_node(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("node", node)
        return event

    return [
        add_node,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.format_exc_info,
        _head_first,
        _redact,
        structlog.processors.JSONRenderer(sort_keys=False, default=str, separators=(",", ":")),
    ]


def make_logger(node: str, stream: IO[str] | None = None) -> Any:
    return structlog.wrap_logger(
        structlog.PrintLogger(stream or sys.stderr),
        processors=_processors(node),
        wrapper_class=structlog.BoundLogger,
    ).bind(node=node)


def route_module_logs(node: str, stream: IO[str] | None = None) -> None:
    """Send the module-level loggers (kubeapi, cluster collector, ...) to `stream` (None:
    whatever sys.stderr is at each call) in the same JSON schema: structlog's default is
    console text on stdout, which a log pipeline cannot parse and which corrupted
    `scan --format json`. The one process-wide setting the CLI and the daemon make."""

    def factory(*_args: Any) -> Any:
        return structlog.PrintLogger(stream if stream is not None else sys.stderr)

    structlog.configure(processors=_processors(node), wrapper_class=structlog.BoundLogger,
                        logger_factory=factory, cache_logger_on_first_use=False)


def finding_fields(f: Finding) -> dict[str, Any]:
    d = f.to_dict()
    d["finding_id"] = d.pop("id")
    return d


def log_finding(log: Any, f: Finding, event: str = "finding", **extra: Any) -> None:
    getattr(log, LEVEL_OF[f.severity])(event, **finding_fields(f), **extra)
