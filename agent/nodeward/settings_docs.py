"""The settings table in words: docs/settings.md (`nodeward config keys --markdown`), the
plain list (`nodeward config keys`) and what `nodeward config check` says of a valid file
(which keys it sets, and what a cluster view would derive for the ones it leaves unset)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from .settings_schema import Key, ListOf, Section
from .settings_table import SECTIONS, TOP

HEADER = """# Settings

<!-- Generated from agent/nodeward/settings_table.py by `nodeward config keys --markdown`;
edit the table, not this file (tests/unit/test_settings_table.py compares them). -->

YAML at `/etc/nodeward/config.yaml` (or `--config PATH`). Every key is optional; with no
file the defaults apply. An unknown key, a value of the wrong type or out of range, or a list
longer than its limit is one line naming the file, the key and the problem, and exit 2,
before anything runs: `nodeward config check` runs exactly that check and then lists what
the file sets (and, with `--offline DIR`, what the cluster view would derive).

Keys marked *derived* are filled from the cluster view (the `cluster` section) when the file
leaves them at their default; a value in the file always wins, and `scan --format json`
says where each derived value came from.
"""


def _inline(value: Any) -> str:
    """A value as one line of YAML flow style."""
    if value == "":
        return '""'
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def default_text(key: Key) -> str:
    if key.required:
        return "(required)"
    if key.default_doc:
        return key.default_doc
    if isinstance(key.kind, Section):
        return "absent" if key.kind.none else "see below"
    if key.default is None:
        return "none"
    return _inline(key.kind.show(key.default))


def _sections(section: Section, path: str) -> Iterator[tuple[str, Section]]:
    yield path, section
    for k in section.keys:
        inner = k.kind.item if isinstance(k.kind, ListOf) else k.kind
        if isinstance(inner, Section):
            sub = f"{path}.{k.name}" if path else k.name
            yield from _sections(inner, sub + ("[]" if inner is not k.kind else ""))


def _meaning(key: Key) -> str:
    text = key.doc
    if key.derived:
        text += f"; *derived* from {key.derived_from} when unset"
    return text


def markdown() -> str:
    out = [HEADER]
    for path, section in _sections(TOP, ""):
        out.append(f"\n## {'`' + path + '`' if path else 'Top level'}\n\n{section.doc}\n")
        out.append("| Key | Type | Default | Meaning |\n|---|---|---|---|")
        for k in section.keys:
            what = k.kind.what
            if isinstance(k.kind, Section):
                what = f"mapping (`{path + '.' if path else ''}{k.name}` below)"
            cell = [f"`{k.name}`", what, default_text(k), _meaning(k)]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cell) + " |")
    return "\n".join(out) + "\n"


def text() -> str:
    """One line per key: dotted path, type, default, meaning."""
    lines = []
    for path, section in _sections(TOP, ""):
        for k in section.keys:
            if isinstance(k.kind, Section):
                continue
            full = f"{path}.{k.name}" if path else k.name
            lines.append(f"{full}  ({k.kind.what}; default {default_text(k)}): {_meaning(k)}")
    return "\n".join(lines) + "\n"


def set_keys(raw: Any, cfg: Any) -> list[tuple[str, Any]]:
    """(dotted path, value as parsed) of every key the file sets: a section's own keys, a
    list or other value whole."""
    out: list[tuple[str, Any]] = []
    if not isinstance(raw, Mapping):
        return out
    for k in TOP.keys:
        if k.name not in raw:
            continue
        if k.name in SECTIONS:
            _walk_section(k.kind, raw[k.name], cfg.section(k.name), k.name, out)
        else:
            out.append((k.name, k.kind.show(getattr(cfg, k.name))))
    return out


def _walk_section(section: Section, raw: Any, obj: Any, path: str,
                  out: list[tuple[str, Any]]) -> None:
    if not isinstance(raw, Mapping) or not raw or obj is None:
        out.append((path, {} if obj is not None else None))  # every key at its default
        return
    for k in section.keys:
        if k.name not in raw:
            continue
        here = f"{path}.{k.name}"
        if k.name in section.flatten:
            _walk_section(k.kind, raw[k.name], obj, here, out)
        elif isinstance(k.kind, Section):
            _walk_section(k.kind, raw[k.name], getattr(obj, k.name), here, out)
        else:
            out.append((here, k.kind.show(getattr(obj, k.name))))


def derived_keys(cfg: Any, derived: Any) -> list[tuple[str, Any, str]]:
    """(dotted path, derived value, where it came from) of every derivable key the config
    leaves at its default, as nodeward.derive.with_derived fills them in."""
    from .derive import fills

    out = [(f"{section}.{key.name}" if section else key.name, key.kind.show(value),
            derived.sources.get(key.derived, ""))
           for section, key, value in fills(cfg, derived)]
    cluster = cfg.section("cluster")
    if cluster is not None and not cluster.encryption:
        out.append(("cluster.encryption", derived.encryption,
                    derived.sources.get("encryption", "")))
    return out


def shown(value: Any, width: int = 100) -> str:
    text = _inline(value)
    return text if len(text) <= width else text[:width - 3] + "..."
