"""The port catalog: which Kubernetes component is behind a socket, and what it may expose.

The data lives in catalog.yaml (shipped in the package) and can be extended or overridden
from the agent's config; this module validates it and answers "what is this socket?".
"""

from __future__ import annotations

import functools
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from importlib import resources
from typing import Any

from . import settings_load
from .model import SCOPE_RANK, BindScope, ProcessInfo, Severity

#: Widest acceptable bind per `max_scope` value, on the SCOPE_RANK scale.
MAX_SCOPE_RANK = {"loopback": 0, "node-private": 1, "node": 2, "any": 99}
PROTOCOLS = ("tcp", "udp")
#: How nodeward.collect.auth reads a component's authentication from its process
#: (flags, config files, environment); "never": the port has no authentication at all.
AUTH_RULES = ("kubelet", "kubelet-readonly", "etcd-client", "etcd-peer", "etcd-metrics",
              "kube-apiserver", "kube-apiserver-insecure", "delegated", "kube-proxy-metrics",
              "never")
_PROBE_PATH_CHARS = frozenset(string.ascii_letters + string.digits + "/-_.")


class CatalogError(ValueError):
    """A catalog entry is malformed; the message names the entry and field."""


@dataclass(frozen=True)
class Component:
    name: str
    ports: tuple[tuple[int, int], ...]  # inclusive ranges
    protocols: frozenset[str] = frozenset({"tcp"})
    processes: frozenset[str] = frozenset()
    strict: bool = True
    primary: bool = False
    severity: Severity = Severity.MEDIUM
    auth: bool = True
    max_scope: str = "node"
    always: bool = False
    description: str = ""
    remediation: str = ""
    auth_rule: str = ""  # one of AUTH_RULES, or "" (nothing to read)
    probe_path: str = ""  # read-only path GET without credentials on loopback ("" = none)

    def has_port(self, protocol: str, port: int) -> bool:
        return protocol in self.protocols and any(lo <= port <= hi for lo, hi in self.ports)

    def exceeds(self, scope: BindScope) -> bool:
        """True when a bind of this scope is wider than the component should have."""
        return SCOPE_RANK[scope] > MAX_SCOPE_RANK[self.max_scope]

    @property
    def specificity(self) -> int:
        """Number of ports covered; fewer is more specific (30000 beats 30000-32767)."""
        return sum(hi - lo + 1 for lo, hi in self.ports)

    @property
    def port_text(self) -> str:
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ports)


@dataclass(frozen=True)
class Identification:
    """What a socket is. `by` is "process" (name and port agree), "process-only" (the
    process's main component on a non-default port) or "port" (owner unknown: kernel
    socket or unreadable). `unexpected_process` is set when a strict component's port is
    held by a known process that is not the component; a non-strict port held by another
    process identifies nothing."""

    component: Component | None
    by: str = ""
    unexpected_process: bool = False


NO_MATCH = Identification(None)
_FIELD_NAMES = {f.name for f in fields(Component)}


def _parse_ports(value: Any, where: str) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list) or not value:
        raise CatalogError(f"{where}.ports: expected a non-empty list of ports or ranges")
    out = []
    for item in value:
        try:
            if isinstance(item, int) and not isinstance(item, bool):
                lo = hi = item
            elif isinstance(item, str) and "-" in item:
                a, b = (settings_load.port(x) for x in item.split("-", 1))
                if a is None or b is None:
                    raise ValueError  # ASCII digits only: int() takes '٨٠' and '1_0'
                lo, hi = a, b
            elif isinstance(item, str) and settings_load.port(item) is not None:
                lo = hi = int(item)
            else:
                raise ValueError
        except ValueError:
            raise CatalogError(f"{where}.ports: {item!r} is not a port or a range") from None
        if not (1 <= lo <= hi <= 65535):
            raise CatalogError(f"{where}.ports: {item!r} is outside 1-65535")
        out.append((lo, hi))
    return tuple(out)


def _str_list(value: Any, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CatalogError(f"{where}: expected a list of strings")
    return frozenset(value)


def _component_fields(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate one raw entry into Component keyword arguments (only the keys given)."""
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: expected a mapping")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _FIELD_NAMES:
            raise CatalogError(f"{where}: unknown key {key!r}")
        here = f"{where}.{key}"
        if key == "name":
            from .nfquote import UnsafeText, check_name

            try:  # names reach rule comments: the one netfilter-text gate checks them
                out[key] = check_name(value, here)
            except UnsafeText as e:
                raise CatalogError(str(e)) from None
        elif key == "ports":
            out[key] = _parse_ports(value, where)
        elif key == "protocols":
            protos = _str_list(value, here)
            bad = protos - set(PROTOCOLS)
            if bad or not protos:
                raise CatalogError(f"{here}: expected a list of tcp/udp, got {sorted(bad)}")
            out[key] = protos
        elif key == "processes":
            out[key] = _str_list(value, here)
        elif key == "severity":
            try:
                out[key] = Severity.parse(str(value))
            except ValueError as e:
                raise CatalogError(f"{here}: {e}") from None
        elif key == "max_scope":
            if value not in MAX_SCOPE_RANK:
                raise CatalogError(f"{here}: expected one of {'|'.join(MAX_SCOPE_RANK)}, "
                                   f"got {value!r}")
            out[key] = value
        elif key == "auth_rule":
            if value not in AUTH_RULES:
                raise CatalogError(f"{here}: expected one of {'|'.join(AUTH_RULES)}, "
                                   f"got {value!r}")
            out[key] = value
        elif key == "probe_path":
            if (not isinstance(value, str) or not value.startswith("/") or len(value) > 64
                    or not set(value) <= _PROBE_PATH_CHARS):
                raise CatalogError(f"{here}: expected a plain path like /healthz")
            out[key] = value
        elif key in ("strict", "primary", "auth", "always"):
            if not isinstance(value, bool):
                raise CatalogError(f"{here}: expected true or false")
            out[key] = value
        else:  # description, remediation
            if not isinstance(value, str):
                raise CatalogError(f"{here}: expected a string")
            out[key] = " ".join(value.split())
    return out


@dataclass(frozen=True)
class Catalog:
    components: tuple[Component, ...]

    @classmethod
    def from_entries(cls, entries: Sequence[Mapping[str, Any]], source: str,
                     base: Catalog | None = None) -> Catalog:
        """Build from raw entries; with `base`, entries naming an existing component
        override just the fields they give, and new names are appended."""
        comps = list(base.components) if base else []
        index = {c.name: i for i, c in enumerate(comps)}
        if not isinstance(entries, list):
            raise CatalogError(f"{source}: expected a list of components")
        for n, raw in enumerate(entries):
            where = f"{source}[{n}]"
            kw = _component_fields(raw, where)
            name = kw.get("name")
            if not name:
                raise CatalogError(f"{where}: missing 'name'")
            if name in index:
                comps[index[name]] = replace(comps[index[name]], **kw)
            else:
                if "ports" not in kw:
                    raise CatalogError(f"{where}: new component {name!r} needs 'ports'")
                index[name] = len(comps)
                comps.append(Component(**kw))
        return cls(tuple(comps))

    def get(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)

    @functools.cached_property
    def _port_index(self) -> dict[tuple[str, int], Component]:
        """(protocol, port) -> most specific component; built once, read per socket."""
        index: dict[tuple[str, int], Component] = {}
        for c in sorted(self.components, key=lambda c: -c.specificity):
            for proto in c.protocols:
                for lo, hi in c.ports:
                    for port in range(lo, hi + 1):
                        index[(proto, port)] = c  # later (more specific) entries win
        return index

    @functools.cached_property
    def _owned_memo(self) -> dict[tuple[frozenset[str], str], tuple[Component, ...]]:
        return {}

    def by_port(self, protocol: str, port: int) -> Component | None:
        """The most specific component listing this port."""
        return self._port_index.get((protocol, port))

    def owned_by(self, names: frozenset[str], protocol: str) -> tuple[Component, ...]:
        """Components a process with these names may run over `protocol`, in catalog
        order. Memoised: a node has thousands of sockets but few distinct owners."""
        key = (names, protocol)
        hit = self._owned_memo.get(key)
        if hit is None:
            hit = self._owned_memo[key] = tuple(
                c for c in self.components if c.processes & names and protocol in c.protocols)
        return hit

    def identify(self, protocol: str, port: int,
                 process: ProcessInfo | None) -> Identification:
        """Process name first, port second (see the header of catalog.yaml)."""
        names = process.names() if process else frozenset()
        if names:
            owned = self.owned_by(names, protocol)
            for c in owned:
                if c.has_port(protocol, port):
                    return Identification(c, "process")
            primary = next((c for c in owned if c.primary), None)
            if primary is not None:
                return Identification(primary, "process-only")
        comp = self.by_port(protocol, port)
        if comp is None:
            return NO_MATCH
        if not names:  # kernel socket, or owner unreadable: the port is all we know
            return Identification(comp, "port")
        if comp.strict:  # a known process that is not the component squats its port
            return Identification(comp, "port", unexpected_process=True)
        return NO_MATCH  # e.g. any web server on 8080


def load_default() -> Catalog:
    """The shipped catalog; cached because it is immutable and read on every config load."""
    text = resources.files("nodeward").joinpath("catalog.yaml").read_text()
    return Catalog.from_entries(settings_load.load_text(text, "catalog.yaml")["components"],
                                "catalog.yaml")


def load(overrides: Iterable[Mapping[str, Any]] = (), source: str = "config.catalog") -> Catalog:
    base = load_default()
    entries = list(overrides)
    return Catalog.from_entries(entries, source, base) if entries else base
