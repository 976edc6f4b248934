"""Structured JSON-lines logging with a stable schema, for a central log collector.

Every line has: timestamp (RFC 3339, UTC), level, event, node; finding events add
finding_id, severity, title, component, protocol, address, port, scope, pid, process,
remediation, evidence. Then the bound context and the call's fields in the order given, and
`exception` (the formatted traceback) when the call passed exc_info. Loggers are built per
call site rather than configured globally; the module loggers (`get_logger`) follow the one
process-wide route `route_module_logs` sets.

Written here rather than with structlog: the daemon needs one renderer, and structlog's
import (its dev and traceback modules, rich and pygments where installed) cost the daemon
4-8 MB of RSS for it. The lines are the ones structlog's JSONRenderer wrote with the
processors the daemon used.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
import threading
from collections.abc import Iterator
from typing import IO, Any

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

#: Log method name -> the level written (`warn` is the stdlib's alias; `exception` is
#: `error` with the current traceback).
METHODS = {"debug": "debug", "info": "info", "warning": "warning", "warn": "warning",
           "error": "error", "exception": "error", "critical": "critical"}

_WRITE_LOCK = threading.Lock()  # one line at a time from the sink, watch and status threads


def _exception_text(value: Any) -> str | None:
    """The traceback an `exc_info` field stands for: an exception, an exc_info tuple, or a
    true value for the exception being handled (None when there is none)."""
    if isinstance(value, BaseException):
        info = (type(value), value, value.__traceback__)
    elif (isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException)):
        info = value
    elif value:
        info = sys.exc_info()
        if info[1] is None:
            return None
    else:
        return None
    import traceback

    return "".join(traceback.format_exception(*info)).rstrip("\n")


def render(node: str, level: str, event: str, fields: dict[str, Any]) -> str:
    """One log line (no newline): the head keys first, then `fields` in order, redacted."""
    d = dict(fields)
    d["event"] = event
    d.setdefault("node", node)
    d["level"] = level
    d["timestamp"] = datetime.datetime.now(datetime.timezone.utc).isoformat().replace(
        "+00:00", "Z")
    if "exc_info" in d:
        text = _exception_text(d.pop("exc_info"))
        if text is not None:
            d["exception"] = text
    line = {k: d.pop(k) for k in HEAD if k in d}
    line.update(d)
    return json.dumps(scrub(line), default=str, separators=(",", ":"))


def _write(stream: IO[str] | None, line: str) -> None:
    out = stream if stream is not None else sys.stderr
    with _WRITE_LOCK:
        out.write(line + "\n")
        out.flush()


class Logger:
    """A logger bound to a node, a stream (None: sys.stderr at each call) and context."""

    __slots__ = ("_context", "_node", "_stream")

    def __init__(self, node: str, stream: IO[str] | None,
                 context: dict[str, Any] | None = None) -> None:
        self._node, self._stream = node, stream
        self._context = context or {}

    def bind(self, **fields: Any) -> Logger:
        return Logger(self._node, self._stream, {**self._context, **fields})

    def _where(self) -> tuple[str, IO[str] | None]:
        """The node its lines name and the stream they go to."""
        return self._node, self._stream

    def _log(self, method: str, event: str, fields: dict[str, Any]) -> None:
        if method == "exception":
            fields.setdefault("exc_info", True)
        node, stream = self._where()
        _write(stream, render(node, METHODS[method], event, {**self._context, **fields}))

    def debug(self, event: str, **fields: Any) -> None:
        self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log("warning", event, fields)

    def warn(self, event: str, **fields: Any) -> None:
        self._log("warn", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log("exception", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._log("critical", event, fields)


class _Route:
    """Where the module loggers write: the one process-wide logging setting."""

    node = ""
    stream: IO[str] | None = None
    captured: list[dict[str, Any]] | None = None


class ModuleLogger(Logger):
    """`get_logger(name)`: writes wherever `route_module_logs` last pointed (JSON on
    sys.stderr until then), so a module imported before the config is loaded logs to the
    right place and with the right node."""

    __slots__ = ("name",)

    def __init__(self, name: str, context: dict[str, Any] | None = None) -> None:
        super().__init__("", None, context)
        self.name = name

    def bind(self, **fields: Any) -> ModuleLogger:
        return ModuleLogger(self.name, {**self._context, **fields})

    def _where(self) -> tuple[str, IO[str] | None]:
        return _Route.node, _Route.stream

    def _log(self, method: str, event: str, fields: dict[str, Any]) -> None:
        if _Route.captured is not None:
            _Route.captured.append({**self._context, **fields, "event": event,
                                    "log_level": METHODS[method]})
            return
        super()._log(method, event, fields)


def get_logger(name: str) -> ModuleLogger:
    return ModuleLogger(name)


def make_logger(node: str, stream: IO[str] | None = None) -> Logger:
    return Logger(node, stream if stream is not None else sys.stderr, {"node": node})


def route_module_logs(node: str, stream: IO[str] | None = None) -> None:
    """Send the module-level loggers (kubeapi, cluster collector, ...) to `stream` (None:
    whatever sys.stderr is at each call) in the same JSON schema, never to stdout, where
    they would corrupt `scan --format json`. The one process-wide setting the CLI and the
    daemon make."""
    _Route.node, _Route.stream = node, stream


@contextlib.contextmanager
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """For tests: the module loggers' events as given by the call site (before redaction,
    so a test sees what the code passed), each with its `log_level`, instead of lines."""
    saved, _Route.captured = _Route.captured, []
    try:
        yield _Route.captured
    finally:
        _Route.captured = saved


def finding_fields(f: Finding) -> dict[str, Any]:
    d = f.to_dict()
    d["finding_id"] = d.pop("id")
    return d


def log_finding(log: Logger, f: Finding, event: str = "finding", **extra: Any) -> None:
    getattr(log, LEVEL_OF[f.severity])(event, **finding_fields(f), **extra)
