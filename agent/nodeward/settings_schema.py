"""The vocabulary of the settings table (nodeward.settings_table): what a value may be.

Each kind parses one YAML value into the value the agent uses, or raises SettingsError with
the one line '<file>: <key>: <problem>'; says in a few words what it accepts (for
docs/settings.md and `config keys`); shows a parsed value back as YAML would write it (for
`config check`); and names a few values it must refuse (the fuzz test feeds each key those).
A Section is a mapping of Keys and builds a frozen dataclass generated from them, so a key,
its default, its check and its documentation are written once.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

from . import nfquote, settings_load


class ConfigError(settings_load.SettingsError):
    """One clear line: '<file>: <key>: <problem>'."""


Error = ConfigError


class Kind:
    """A value's type and check. `what`: the docs' words; `bad`: values it must refuse."""

    what = "a value"
    bad: tuple[Any, ...] = ()

    def parse(self, value: Any, where: str) -> Any:
        raise NotImplementedError

    def show(self, value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [self.show(v) for v in value]
        return value if value is None or type(value) in (bool, int, float) else str(value)


class Bool(Kind):
    what = "true or false"
    bad = ("yes", 1)

    def parse(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise Error(f"{where}: expected true or false")
        return value


class Num(Kind):
    """A finite number in [lo, hi] (settings_load.number: NaN and Inf are refused)."""

    def __init__(self, lo: float, hi: float, integer: bool = False, unit: str = "") -> None:
        self.lo, self.hi, self.integer, self.unit = lo, hi, integer, unit
        kind = "integer" if integer else "number"
        self.what = f"{kind}{' ' + unit if unit else ''}, {_n(lo)} to {_n(hi)}"
        self.bad = ("soon", True, float("nan"), hi * 2 + 1, lo - 1)

    def parse(self, value: Any, where: str) -> int | float:
        try:
            n = settings_load.number(value, where, self.lo, self.hi, self.integer, self.unit)
        except settings_load.SettingsError as e:
            raise Error(str(e)) from None
        return int(n) if self.integer else float(n)


class Str(Kind):
    what = "a string"
    bad = (3, ["x"])

    def parse(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise Error(f"{where}: expected a string")
        return value


class Choice(Kind):
    def __init__(self, options: Sequence[str]) -> None:
        self.options = tuple(options)
        self.what = " | ".join(self.options)
        self.bad = ("nonsense", 1)

    def parse(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or value not in self.options:
            raise Error(f"{where}: {_short(value)!r} is not one of {'|'.join(self.options)}")
        return value


class AutoBool(Kind):
    """auto (None: decided from the node), true or false."""

    what = "auto, true or false"
    bad = ("yes", 1)

    def parse(self, value: Any, where: str) -> bool | None:
        if not (isinstance(value, bool) or value == "auto"):
            raise Error(f"{where}: expected auto, true or false")
        return None if value == "auto" else value

    def show(self, value: Any) -> Any:
        return "auto" if value is None else value


class Cidr(Kind):
    """An IP network; `text`: kept as the string given (peer pod CIDRs)."""

    what = "CIDRs"
    bad: tuple[Any, ...] = ("10.0.0.0/33", 7)
    problem = "is not a valid CIDR"

    def __init__(self, text: bool = False) -> None:
        self.text = text

    def make(self, text: str) -> Any:
        return ipaddress.ip_network(text, strict=False)

    def parse(self, value: Any, where: str) -> Any:
        try:
            parsed = self.make(str(value))
        except ValueError:
            raise Error(f"{where}: {_short(value)!r} {self.problem}") from None
        return str(value) if self.text else parsed


class Ip(Cidr):
    """An IP address; `text`: kept as the string given."""

    what = "IP addresses"
    bad = ("db.local", "10.0.0.0/8", 7)
    problem = "is not an IP address"

    def make(self, text: str) -> Any:
        return ipaddress.ip_address(text)


class PortSpec(Kind):
    """'tcp/22' -> ('tcp', 22)."""

    what = "ports like 'tcp/22'"
    bad = ("ssh", "tcp/70000", "tcp/²")

    def parse(self, value: Any, where: str) -> tuple[str, int]:
        proto, _, port = value.partition("/") if isinstance(value, str) else ("", "", "")
        number = settings_load.port(port)
        if proto not in ("tcp", "udp") or not number:
            raise Error(f"{where}: {_short(value)!r} is not a port like 'tcp/22'")
        return proto, number

    def show(self, value: Any) -> Any:
        return f"{value[0]}/{value[1]}" if isinstance(value[0], str) else super().show(value)


class PortNumber(Kind):
    what = "a port number 1-65535"
    bad = ("http", 0, 70000, True)

    def parse(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise Error(f"{where}: {_short(value)!r} is not a port number")
        return value


class HostPort(Kind):
    """'10.0.0.1:6443' or '[fd00::1]:6443'. An IP address, never a name (a name would be
    resolved by whoever connects). `result`: "pair" (address, port), "text" ('10.0.0.1', port)
    or "raw" (the string as given). `any_port`: port 0 (the kernel picks one) is allowed."""

    what = "HOST:PORT with an IP address"

    def __init__(self, result: str = "pair", any_port: bool = False) -> None:
        self.result, self.any_port = result, any_port
        self.bad = ("localhost:80", "10.0.0.1", "10.0.0.1:٩٧", "10.0.0.1:65536", 5) + (
            () if any_port else ("10.0.0.1:0",))

    def parse(self, value: Any, where: str) -> Any:
        if not isinstance(value, str) or ":" not in value:
            raise Error(f"{where}: {_short(value)!r} is not HOST:PORT with an IP address "
                        "(e.g. 10.0.0.1:6443)")
        host, _, port = value.rpartition(":")
        number = settings_load.port(port)
        if number is None or (number == 0 and not self.any_port):
            low = 0 if self.any_port else 1
            raise Error(f"{where}: {_short(value)!r} has no valid port ({low}-65535)")
        try:
            addr = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise Error(f"{where}: {_short(host)!r} is not an IP address") from None
        if self.result == "raw":
            return value
        return (str(addr) if self.result == "text" else addr), number

    def show(self, value: Any) -> Any:
        if isinstance(value, str):
            return value
        host = str(value[0])
        return f"[{host}]:{value[1]}" if ":" in host else f"{host}:{value[1]}"


class Glob(Kind):
    """An interface name pattern, safe to quote into iptables and nft."""

    what = "interface name patterns"
    bad = ("", 'eth0"; drop', 5)

    def parse(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise Error(f"{where}: expected a list of interface name patterns")
        try:
            return nfquote.check_ifglob(value, where)
        except nfquote.UnsafeText as e:
            raise Error(str(e)) from None


#: A Kubernetes node name (DNS-1123 subdomain): it goes into API paths and report names.
_DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class NodeName(Kind):
    what = "a DNS-1123 node name"
    bad = ("../../x", "Worker_1", 5)

    def parse(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or len(value) > 253 or not _DNS1123.fullmatch(value) \
                or any(len(label) > 63 for label in value.split(".")):
            shown = value if isinstance(value, str) and len(value) <= 64 else "the value"
            raise Error(f"{where}: {shown!r} is not a valid node name (DNS-1123: lowercase "
                        f"letters, digits, '-' and '.', at most 253 characters)")
        return value


class Url(Kind):
    """An http(s) URL; never echoed (it may carry credentials); shown without user info,
    query or fragment. `empty`: "" is allowed (the default applies)."""

    what = "an http(s) URL"
    bad = ("ftp://x", "https://:99999/x", 5)

    def __init__(self, empty: bool = False) -> None:
        self.empty = empty

    def parse(self, value: Any, where: str) -> str:
        if self.empty and value == "":
            return value
        parsed = urlparse(value) if isinstance(value, str) else None
        try:
            port_ok = parsed is not None and (parsed.port is None or parsed.port > 0)
        except ValueError:  # ':99999' or ':²'
            port_ok = False
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname \
                or not port_ok or not value.isascii() or any(c in value for c in " \r\n\t"):
            raise Error(f"{where}: expected an http(s) URL")
        return value

    def show(self, value: Any) -> Any:
        if not value:
            return value
        u = urlparse(value)
        host = f"[{u.hostname}]" if ":" in (u.hostname or "") else u.hostname
        return f"{u.scheme}://{host}{':' + str(u.port) if u.port else ''}{u.path}"


class Name(Kind):
    """A component name as the catalog spells it (it becomes a chain/set name)."""

    what = "component names"
    bad = ("kube let", 5)

    def parse(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not nfquote.NAME.match(value):
            raise Error(f"{where}: {_short(value)!r} is not a component name")
        return value


class Custom(Kind):
    """A value checked by the module that owns its meaning (the catalog, finding IDs)."""

    def __init__(self, parse: Callable[[Any, str], Any], what: str, bad: tuple,
                 show: Callable[[Any], Any] | None = None) -> None:
        self._parse, self.what, self.bad, self._show = parse, what, bad, show

    def parse(self, value: Any, where: str) -> Any:
        return self._parse(value, where)

    def show(self, value: Any) -> Any:
        return self._show(value) if self._show else super().show(value)


class ListOf(Kind):
    """A list of `item`, at most `cap` long (a 170,000-entry `pod_interfaces` once made
    340,000 rules). Scalar items are named by the list's key, mapping items by key[n]."""

    def __init__(self, item: Kind, cap: int, expected: str = "", nonempty: bool = False,
                 into: Callable[[Any], Any] = tuple, noun: str = "") -> None:
        self.item, self.cap, self.nonempty, self.into = item, cap, nonempty, into
        self.expected = expected or f"expected a list of {item.what}"
        self.what = f"list of {noun or item.what}, at most {cap}"
        self.bad = ("x", {"a": 1}, ["x"] * (cap + 1)) + (([],) if nonempty else ())

    def parse(self, value: Any, where: str) -> tuple:
        if not isinstance(value, list) or (self.nonempty and not value):
            raise Error(f"{where}: {self.expected}")
        if len(value) > self.cap:
            raise Error(f"{where}: {len(value)} entries, more than the limit of {self.cap}")
        if isinstance(self.item, Section):
            return self.into(self.item.parse(v, f"{where}[{n}]") for n, v in enumerate(value))
        return self.into(self.item.parse(v, where) for v in value)

    def show(self, value: Any) -> Any:
        shown = [self.item.show(v) for v in value]
        return sorted(shown) if isinstance(value, frozenset) else shown


class MapOf(Kind):
    """A mapping of `key` names to `value`s, at most `cap` entries."""

    def __init__(self, key: Kind, value: Kind, cap: int, expected: str) -> None:
        self.key, self.value, self.cap, self.expected = key, value, cap, expected
        self.what = f"mapping of {key.what} to ({value.what}), at most {cap} entries"
        self.bad = (["x"], {"kube let": []}, {f"c{i}": [] for i in range(cap + 1)})

    def parse(self, value: Any, where: str) -> dict:
        if not isinstance(value, Mapping):
            raise Error(f"{where}: {self.expected}")
        if len(value) > self.cap:
            raise Error(f"{where}: {len(value)} entries, more than the limit of {self.cap}")
        return {self.key.parse(k, where): self.value.parse(v, f"{where}.{k}")
                for k, v in value.items()}

    def show(self, value: Any) -> Any:
        return {k: self.value.show(v) for k, v in value.items()}


@dataclasses.dataclass(frozen=True)
class Key:
    """One setting. `derived`: the nodeward.derive.Derived field that supplies it when the
    config leaves it at its default (explicit config wins); `derived_from`: what in the
    cluster that is, for the docs. `missing`: the problem named when a required key is
    absent or blank."""

    name: str
    kind: Kind
    default: Any = None
    doc: str = ""
    required: bool = False
    missing: str = "required"
    derived: str = ""
    derived_from: str = ""
    default_doc: str = ""  # the default in words, when it is not a constant
    factory: Callable[[], Any] | None = None  # the default, made per instance


class Section(Kind):
    """A mapping of Keys, parsed into a frozen dataclass generated from them (or `build`'s
    result). `none`: absent (and null) means None, not the defaults; `top`: the file's top
    level, whose keys are named 'file: key' rather than 'section.key'."""

    def __init__(self, name: str, keys: Sequence[Key], doc: str = "", *, none: bool = False,
                 null_is_none: bool = False, top: bool = False,
                 expected: str = "expected a mapping",
                 methods: Mapping[str, Any] | None = None, flatten: Sequence[str] = (),
                 build: Callable[[dict], Any] | None = None) -> None:
        self.name, self.keys, self.doc = name, tuple(keys), doc
        self.by_name = {k.name: k for k in self.keys}
        self.none, self.null_is_none, self.top, self.expected = none, null_is_none, top, expected
        self.what = "{" + ", ".join(k.name + ("" if k.required else "?") for k in self.keys) + "}"
        self.bad = ("x", ["x"], {"no_such_key": 1})
        self._build, self.flatten = build, tuple(flatten)
        fields = [f for k in self.keys
                  for f in (k.kind.keys if k.name in self.flatten else (k,))]
        self.cls = None if build else dataclass_of(name, fields, (), methods or {})

    def child(self, where: str, key: str) -> str:
        return f"{where}: {key}" if self.top else f"{where}.{key}"

    def parse(self, value: Any, where: str) -> Any:
        if value is None:
            value = {}
            if self.null_is_none:
                return None
        if not isinstance(value, Mapping):
            raise Error(f"{where}: {self.expected}")
        unknown = sorted(_key_text(k) for k in value if k not in self.by_name)
        if unknown:
            known = ", ".join(self.by_name)
            raise Error(f"{self.child(where, unknown[0])}: unknown key (known: {known})")
        kw: dict[str, Any] = {}
        for key in self.keys:
            here = self.child(where, key.name)
            v = value.get(key.name)
            if key.required and (v is None or (isinstance(v, str) and not v.strip())):
                raise Error(f"{here}: {key.missing}")
            if key.name not in value or (v is None and key.default is None
                                         and not isinstance(key.kind, Section)):
                continue
            kw[key.name] = key.kind.parse(v, here)
        return self.build(kw)

    def build(self, kw: dict[str, Any]) -> Any:
        for name in self.flatten:  # a nested mapping whose keys the dataclass holds
            kw.update(kw.pop(name, None) or {})
        return self._build(kw) if self._build else self.cls(**kw)

    @property
    def default(self) -> Any:
        return None if self.none else self.build({})

    def show(self, value: Any) -> Any:
        if value is None or not dataclasses.is_dataclass(value):
            return super().show(value)
        out = {}
        for k in self.keys:
            if k.name in self.flatten:
                out[k.name] = {f.name: f.kind.show(getattr(value, f.name)) for f in k.kind.keys}
            else:
                out[k.name] = k.kind.show(getattr(value, k.name))
        return out


def dataclass_of(name: str, keys: Sequence[Key], extra: Sequence[tuple],
               methods: Mapping[str, Any]) -> type:
    fields = []
    for k in keys:
        if k.factory is not None:
            fields.append((k.name, Any, dataclasses.field(default_factory=k.factory)))
        elif isinstance(k.default, dict):
            fields.append((k.name, Any, dataclasses.field(default_factory=dict)))
        else:
            fields.append((k.name, Any, dataclasses.field(default=k.default)))
    cls = dataclasses.make_dataclass(name, [*fields, *extra], frozen=True,
                                     namespace=dict(methods))
    cls.__module__ = "nodeward.settings_table"  # where it is defined (and pickled from)
    return cls


def _key_text(key: Any) -> str:
    """An unknown key as a message names it: as typed when short and printable, else quoted
    and cut (a key with a newline must not make the message two lines)."""
    text = str(key)
    return text if text.isprintable() and len(text) <= 64 else repr(text)[:64]


def _n(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _short(value: Any) -> Any:
    """A value as echoed in a message: long ones cut (a message stays one short line)."""
    if isinstance(value, str) and len(value) > 64:
        return value[:61] + "..."
    if isinstance(value, list | dict | tuple):
        text = repr(value)
        return value if len(text) <= 64 else text[:61] + "..."
    return value
