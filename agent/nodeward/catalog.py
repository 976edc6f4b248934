"""The port catalog: which Kubernetes component is behind a socket, and what it may expose.

The data lives in catalog.yaml (shipped in the package) and can be extended or overridden
from the agent's config; this module validates it and answers "what is this socket?".
"""

from __future__ import annotations

import functools
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from . import settings_load
from . import settings_schema as ss
from .model import SCOPE_RANK, BindScope, ProcessInfo, Severity

_DATA = Path(__file__).parent  # catalog.yaml beside this file (see findings._DATA)

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


def _parse_ports(value: Any, where: str) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list) or not value:
        raise CatalogError(f"{where}: expected a non-empty list of ports or ranges")
    if len(value) > 64:
        raise CatalogError(f"{where}: {len(value)} entries, more than the limit of 64")
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
            raise CatalogError(f"{where}: {item!r} is not a port or a range") from None
        if not (1 <= lo <= hi <= 65535):
            raise CatalogError(f"{where}: {item!r} is outside 1-65535")
        out.append((lo, hi))
    return tuple(out)


def _name(value: Any, where: str) -> str:
    from .nfquote import UnsafeText, check_name

    try:  # names reach rule comments: the one netfilter-text gate checks them
        return check_name(value, where)
    except UnsafeText as e:
        raise CatalogError(str(e)) from None


def _severity(value: Any, where: str) -> Severity:
    try:
        return Severity.parse(str(value))
    except ValueError as e:
        raise CatalogError(f"{where}: {e}") from None


def _probe_path(value: Any, where: str) -> str:
    if (not isinstance(value, str) or not value.startswith("/") or len(value) > 64
            or not set(value) <= _PROBE_PATH_CHARS):
        raise CatalogError(f"{where}: expected a plain path like /healthz")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise CatalogError(f"{where}: expected a string")
    return " ".join(value.split())


def _show_ports(ports: Any) -> Any:
    return [lo if lo == hi else f"{lo}-{hi}" for lo, hi in ports]


_D = {f.name: f.default for f in fields(Component)}
#: One catalog entry (catalog.yaml's and the config's `catalog:`): only the keys given, so
#: an entry naming a known component overrides just those fields.
ENTRY = ss.Section("catalog entry", [
    ss.Key("name", ss.Custom(_name, "a component name", ("kube let", 5)), "",
           "the component (an existing name overrides it field by field)", required=True,
           missing="required (the component to add or override)"),
    ss.Key("ports", ss.Custom(_parse_ports, "list of ports or ranges like 30000-32767, at "
                                            "most 64", ("80", [], [70000], ["2-1"]),
                              _show_ports), None, "its ports (required for a new component)"),
    ss.Key("protocols", ss.ListOf(ss.Choice(PROTOCOLS), 2, nonempty=True, into=frozenset,
                                  expected="expected a non-empty list of tcp/udp"),
           _D["protocols"], "transport protocols"),
    ss.Key("processes", ss.ListOf(ss.Str(), 64, "expected a list of strings", into=frozenset,
                                  noun="process names"),
           _D["processes"], "process names (comm) that are this component"),
    ss.Key("strict", ss.Bool(), _D["strict"], "another process on its port is suspect"),
    ss.Key("primary", ss.Bool(), _D["primary"], "the process's main component (identifies "
           "it on a non-default port)"),
    ss.Key("severity", ss.Custom(_severity, "info | low | medium | high | critical",
                                 ("huge", 5)), _D["severity"], "severity of an exposure"),
    ss.Key("auth", ss.Bool(), _D["auth"], "it authenticates clients"),
    ss.Key("max_scope", ss.Choice(tuple(MAX_SCOPE_RANK)), _D["max_scope"],
           "the widest bind it should have"),
    ss.Key("always", ss.Bool(), _D["always"], "an exposure whatever the bind"),
    ss.Key("description", ss.Custom(_text, "text", (5,)), _D["description"], "what it is"),
    ss.Key("remediation", ss.Custom(_text, "text", (5,)), _D["remediation"], "how to fix an "
           "exposure"),
    ss.Key("auth_rule", ss.Choice(AUTH_RULES), _D["auth_rule"], "how its authentication is "
           "read from its process", default_doc="none"),
    ss.Key("probe_path", ss.Custom(_probe_path, "a plain path like /healthz",
                                   ("healthz", "/a b", 5)), _D["probe_path"],
           "read-only path GET without credentials on loopback", default_doc="none"),
], "A component of the port catalog (fields as in catalog.yaml).", build=dict)


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
            try:
                kw = ENTRY.parse(raw, where)
            except settings_load.SettingsError as e:
                raise CatalogError(str(e)) from None
            name = kw["name"]
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


@functools.cache
def load_default() -> Catalog:
    """The shipped catalog; cached because it is immutable and read on every config load."""
    text = _DATA.joinpath("catalog.yaml").read_text(encoding="utf-8")
    return Catalog.from_entries(settings_load.load_text(text, "catalog.yaml")["components"],
                                "catalog.yaml")


def load(overrides: Iterable[Mapping[str, Any]] = (), source: str = "config.catalog") -> Catalog:
    base = load_default()
    entries = list(overrides)
    return Catalog.from_entries(entries, source, base) if entries else base
