"""The one loader for every settings file: bounded before it is trusted.

Config, kubeconfig, offline cluster dumps and the catalog all come through `load_file` /
`load_text`, which refuse, with one line naming the file, what once hung or crashed the
agent: a file that is not a regular file (a FIFO blocks a read forever), larger than
`MAX_BYTES`, not UTF-8, nested deeper than `MAX_DEPTH`, or whose aliases expand past
`MAX_NODES` (a "billion laughs" bomb is small on disk and on the heap, but every walk over
it is exponential). `number` and `port` are the value checks every section uses: finite
numbers in a range (NaN compares false with everything, so `interval: .nan` once passed
`>= 1` and busy-looped the daemon) and ports of ASCII digits only (`'²'.isdigit()` is True
and `int('²')` raises).
"""

from __future__ import annotations

import math
import os
import re
import stat
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # 1 MiB: a large config is a few KiB
MAX_DEPTH = 64  # real API objects (managedFields) nest ~15 deep
MAX_NODES = 50_000  # after alias expansion; a large real config has a few thousand
_DIGITS = re.compile(r"[0-9]{1,5}")

#: The pure-Python loader: its messages are the documented ones (libyaml words errors
#: differently) and settings files are small.
_Loader: Any = yaml.SafeLoader


class SettingsError(ValueError):
    """One line: '<source>: <problem>'. config.ConfigError derives from it."""


def read_bytes(path: str, what: str = "", max_bytes: int = MAX_BYTES) -> bytes:
    """A regular file's bytes, at most `max_bytes`; OSError/FileNotFoundError pass through
    for the caller to word, anything else is a SettingsError."""
    name = what or path
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) and not _is_devnull(st):
            raise SettingsError(f"{name}: not a regular file")
        if st.st_size > max_bytes:
            raise SettingsError(f"{name}: {st.st_size} bytes, more than the limit of "
                                f"{max_bytes}")
        chunks, total = [], 0
        while data := os.read(fd, 1 << 16):
            total += len(data)
            if total > max_bytes:
                raise SettingsError(f"{name}: more than the limit of {max_bytes} bytes")
            chunks.append(data)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _is_devnull(st: os.stat_result) -> bool:
    """`--config /dev/null` means "the defaults": the one device that is read, not waited
    on (a FIFO or a terminal would block the read forever)."""
    if not stat.S_ISCHR(st.st_mode):
        return False
    try:
        return st.st_rdev == os.stat(os.devnull).st_rdev
    except OSError:
        return False


def decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SettingsError(f"{source}: not UTF-8 (invalid byte at offset {e.start})") \
            from None


def _yaml_error(e: yaml.YAMLError, source: str) -> SettingsError:
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}" if mark else "?"
    problem = getattr(e, "problem", None) or (str(e).splitlines() or ["?"])[0]
    return SettingsError(f"{source}: {where}: invalid YAML: {problem}")


def _check_events(text: str, source: str, max_nodes: int) -> None:
    """Depth and size from the event stream, before any recursive composing."""
    depth = 0
    for events, ev in enumerate(yaml.parse(text, Loader=_Loader), 1):
        if isinstance(ev, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = ev.start_mark.line + 1 if ev.start_mark else "?"
                raise SettingsError(f"{source}: line {line}: nested deeper than "
                                    f"{MAX_DEPTH} levels")
        elif isinstance(ev, yaml.CollectionEndEvent):
            depth -= 1
        if events > max_nodes:
            raise SettingsError(f"{source}: more than {max_nodes} YAML nodes")


def _expanded_size(node: yaml.Node, source: str, max_nodes: int) -> int:
    """Nodes after alias expansion, memoised per node (aliases share node objects), so a
    bomb is measured in linear time; a self-referencing alias is refused."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n: yaml.Node, depth: int) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise SettingsError(f"{source}: a YAML alias refers to itself")
        if depth > MAX_DEPTH * 2:
            raise SettingsError(f"{source}: aliases nest deeper than {MAX_DEPTH * 2} levels")
        active.add(key)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            total += sum(size(c, depth + 1) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in n.value)
        active.discard(key)
        sizes[key] = min(total, max_nodes + 1)
        return sizes[key]

    return size(node, 0)


def load_text(text: str, source: str, multi: bool = False, max_nodes: int = MAX_NODES) -> Any:
    """YAML (or JSON) text to Python data under the limits; `multi`: a list of documents."""
    try:
        _check_events(text, source, max_nodes)
        loader = _Loader(text)
        try:
            docs = []
            while loader.check_node():
                node = loader.get_node()
                if node is not None and _expanded_size(node, source, max_nodes) > max_nodes:
                    raise SettingsError(f"{source}: YAML aliases expand to more than "
                                        f"{max_nodes} nodes")
                docs.append(None if node is None else loader.construct_document(node))
                if not multi and len(docs) > 1:
                    raise SettingsError(f"{source}: expected one YAML document, found more")
        finally:
            loader.dispose()
    except SettingsError:
        raise
    except yaml.YAMLError as e:
        raise _yaml_error(e, source) from None
    except RecursionError:
        raise SettingsError(f"{source}: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as e:  # e.g. a 5,000-digit integer
        raise SettingsError(f"{source}: invalid value: {str(e).splitlines()[0][:120]}") \
            from None
    if multi:
        return docs
    return docs[0] if docs else None


def load_file(path: str, source: str = "", multi: bool = False,
              max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES) -> Any:
    """`path` parsed under every limit; OSError passes through (the caller words 'no such
    file' differently for optional and explicit files)."""
    source = source or str(path)
    data = read_bytes(str(path), source, max_bytes)
    return load_text(decode(data, source), source, multi, max_nodes)


def number(value: Any, where: str, minimum: float, maximum: float,
           integer: bool = False, unit: str = "") -> float:
    """A finite int/float (an int when `integer`) in [minimum, maximum]."""
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if (isinstance(value, bool) or not ok
            or (isinstance(value, float) and not math.isfinite(value))
            or not minimum <= value <= maximum):  # an int never overflows this way
        kind = "an integer" if integer else "a number"
        unit = f" {unit}" if unit else ""
        raise SettingsError(f"{where}: expected {kind}{unit} between {_num(minimum)} and "
                            f"{_num(maximum)}, got {_show(value)}")
    return value


def port(text: str) -> int | None:
    """'443' -> 443; None unless 1-5 ASCII digits in 0..65535."""
    if not isinstance(text, str) or not _DIGITS.fullmatch(text):
        return None
    n = int(text)
    return n if n <= 65535 else None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def permission_warnings(paths: dict[str, str]) -> list[tuple[str, str]]:
    """[(path, problem)] for secret-bearing files others may read or write.

    `paths` maps a path to its kind: "secret" (token, key, kubeconfig: no group/other
    bits at all) or "config" (no group/other write: whoever can write it controls the
    firewall; it holds no credentials, those live in token files, so 0644 is fine)."""
    out = []
    for path, kind in paths.items():
        if not path:
            continue
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            continue
        bad = mode & (0o077 if kind == "secret" else 0o022)
        if bad:
            who = "group/others" if bad & 0o070 and bad & 0o007 else \
                "group" if bad & 0o070 else "others"
            out.append((path, f"mode {mode:04o}: readable or writable by {who}"))
    return out
