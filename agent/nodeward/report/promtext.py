"""Gauges, counters and histograms in Prometheus' text exposition format (version 0.0.4).

Written here rather than with prometheus_client: the daemon exports a dozen series, and the
client library imports asyncio, http.server and wsgiref for its own servers (2-4 MB of the
daemon's RSS, as much again for asyncio). The text is the one prometheus_client's
generate_latest writes for the same metrics (label names sorted, Go float formatting,
counters' `_total`, no `_created`), checked by promtool and by prometheus_client's own
parser in the tests.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Iterator

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Sample = tuple[str, tuple[tuple[str, str], ...], float]  # name, sorted labels, value


def go_float(v: float) -> str:
    """A value as Go's strconv writes it (what Prometheus clients print): `1.0`, `+Inf`,
    `1.7646144e+09` where Python would write `1764614400.0`."""
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    if math.isnan(v):
        return "NaN"
    s = repr(float(v))
    dot = s.find(".")
    if v > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _label_value(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _sample_line(name: str, labels: tuple[tuple[str, str], ...], value: float) -> str:
    if labels:
        name += "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in labels) + "}"
    return f"{name} {go_float(value)}\n"


class Family:
    """A metric and its series (one per label-value tuple, in creation order)."""

    TYPE = "untyped"
    SUFFIX = ""  # counters are exposed as <name>_total

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 registry: Registry | None = None) -> None:
        self.name = name + self.SUFFIX if not name.endswith(self.SUFFIX) else name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], list[float]] = {}
        if not self.labelnames:
            self._series[()] = self._fresh()
        if registry is not None:
            registry.register(self)

    def _fresh(self) -> list[float]:
        return [0.0]

    def _values(self, key: tuple[str, ...]) -> list[float]:
        values = self._series.get(key)
        if values is None:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(self.labelnames)} label values "
                                 f"expected, got {len(key)}")
            values = self._series.setdefault(key, self._fresh())
        return values

    def labels(self, *values: object) -> Series:
        if not self.labelnames:
            raise ValueError(f"{self.name} has no labels")
        key = tuple(str(v) for v in values)
        with self._lock:
            self._values(key)
        return Series(self, key)

    def clear(self) -> None:
        """Drop every labelled series (a finding that went away leaves no stale count)."""
        with self._lock:
            if self.labelnames:
                self._series.clear()

    # an unlabelled family is its own series
    def set(self, value: float) -> None:
        Series(self, ()).set(value)

    def inc(self, amount: float = 1.0) -> None:
        Series(self, ()).inc(amount)

    def observe(self, value: float) -> None:
        Series(self, ()).observe(value)

    def _update(self, key: tuple[str, ...], op: str, value: float) -> None:
        with self._lock:
            values = self._values(key)
            if op == "set":
                values[0] = float(value)
            else:
                values[0] += value

    def samples(self) -> Iterator[Sample]:
        with self._lock:
            series = [(key, list(values)) for key, values in self._series.items()]
        for key, values in series:
            yield from self._samples(tuple(sorted(zip(self.labelnames, key, strict=True))), values)

    def _samples(self, labels: tuple[tuple[str, str], ...], values: list[float],
                 ) -> Iterator[Sample]:
        yield self.name, labels, values[0]


class Series:
    """One label-value tuple of a family: what `family.labels(...)` returns."""

    __slots__ = ("_family", "_key")

    def __init__(self, family: Family, key: tuple[str, ...]) -> None:
        self._family, self._key = family, key

    def set(self, value: float) -> None:
        if self._family.TYPE != "gauge":
            raise ValueError(f"{self._family.name}: only a gauge is set")
        self._family._update(self._key, "set", value)

    def inc(self, amount: float = 1.0) -> None:
        if self._family.TYPE == "counter" and amount < 0:
            raise ValueError(f"{self._family.name}: a counter only goes up")
        if self._family.TYPE not in ("gauge", "counter"):
            raise ValueError(f"{self._family.name}: only a gauge or counter is incremented")
        self._family._update(self._key, "inc", amount)

    def observe(self, value: float) -> None:
        family = self._family
        if not isinstance(family, Histogram):
            raise ValueError(f"{family.name}: only a histogram observes")
        with family._lock:
            family._observe(family._values(self._key), value)


class Gauge(Family):
    TYPE = "gauge"


class Counter(Family):
    TYPE = "counter"
    SUFFIX = "_total"


class Histogram(Family):
    """Cumulative buckets (upper bounds, +Inf added), then _count and _sum."""

    TYPE = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 registry: Registry | None = None,
                 buckets: Iterable[float] = (.005, .01, .025, .05, .075, .1, .25, .5, .75, 1,
                                             2.5, 5, 7.5, 10)) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.bounds = tuple(bounds)
        super().__init__(name, documentation, labelnames, registry)

    def _fresh(self) -> list[float]:
        return [0.0] * (len(self.bounds) + 1)  # per-bucket counts (not cumulative), sum

    def _observe(self, values: list[float], value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                values[i] += 1
                break
        values[-1] += value

    def _samples(self, labels: tuple[tuple[str, str], ...], values: list[float],
                 ) -> Iterator[Sample]:
        total = 0.0
        for bound, n in zip(self.bounds, values[:-1], strict=True):
            total += n
            yield (f"{self.name}_bucket", tuple(sorted((*labels, ("le", go_float(bound))))),
                   total)
        yield f"{self.name}_count", labels, total
        yield f"{self.name}_sum", labels, values[-1]


class ProcessMetrics:
    """process_* as every Prometheus client exports them on Linux (from /proc/self):
    virtual and resident memory, start time, CPU seconds, open and maximum fds."""

    TICKS = os.sysconf("SC_CLK_TCK")
    PAGE = os.sysconf("SC_PAGE_SIZE")

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self.btime = 0.0
        try:
            with open(f"{proc}/stat", "rb") as f:
                for line in f:
                    if line.startswith(b"btime "):
                        self.btime = float(line.split()[1])
        except OSError:
            pass

    def families(self) -> list[tuple[str, str, str, float]]:
        """(name, type, help, value) for each metric that can be read now."""
        if not self.btime:
            return []
        out = []
        try:
            with open(f"{self.proc}/self/stat", "rb") as f:
                parts = f.read().rsplit(b")", 1)[-1].split()
            out += [
                ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
                 float(parts[20])),
                ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
                 float(parts[21]) * self.PAGE),
                ("process_start_time_seconds", "gauge",
                 "Start time of the process since unix epoch in seconds.",
                 float(parts[19]) / self.TICKS + self.btime),
                ("process_cpu_seconds_total", "counter",
                 "Total user and system CPU time spent in seconds.",
                 (float(parts[11]) + float(parts[12])) / self.TICKS),
            ]
        except (OSError, IndexError, ValueError):
            pass
        try:
            max_fds = None
            with open(f"{self.proc}/self/limits", "rb") as f:
                for line in f:
                    if line.startswith(b"Max open file"):
                        max_fds = float(line.split()[3])
                        break
            open_fds = len(os.listdir(f"{self.proc}/self/fd"))
            out.append(("process_open_fds", "gauge", "Number of open file descriptors.",
                        float(open_fds)))
            if max_fds is not None:
                out.append(("process_max_fds", "gauge",
                            "Maximum number of open file descriptors.", max_fds))
        except (OSError, IndexError, ValueError):
            pass
        return out


def _help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


class Registry:
    """The metrics one daemon exports, in registration order."""

    def __init__(self, process: bool = True) -> None:
        self.process = ProcessMetrics() if process else None
        self.families: list[Family] = []

    def register(self, family: Family) -> None:
        if any(f.name == family.name for f in self.families):
            raise ValueError(f"duplicate metric {family.name}")
        self.families.append(family)

    def exposition(self) -> bytes:
        out: list[str] = []
        for name, kind, doc, value in self.process.families() if self.process else ():
            out += [f"# HELP {name} {_help(doc)}\n", f"# TYPE {name} {kind}\n",
                    _sample_line(name, (), value)]
        for family in self.families:
            out += [f"# HELP {family.name} {_help(family.documentation)}\n",
                    f"# TYPE {family.name} {family.TYPE}\n"]
            out += [_sample_line(*s) for s in family.samples()]
        return "".join(out).encode()
