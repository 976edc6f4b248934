"""Agent configuration: a YAML file whose every key is optional.

The defaults let `nodeward scan` run on a bare Linux machine with no cluster. Anything
malformed is a ConfigError whose one-line message names the file, the key and the problem;
the CLI turns it into exit code 2 before anything (least of all a firewall rule) changes.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import catalog as catalog_mod
from . import settings_load

DEFAULT_PATH = "/etc/nodeward/config.yaml"
NODE_NAME_ENV = "NODEWARD_NODE_NAME"

#: Interfaces that face pods in the common CNIs (Calico, flannel, Cilium, Weave, Docker,
#: bridge/ptp CNI, kube-router, Antrea, OVN).
DEFAULT_POD_INTERFACES = (
    "cali*", "cni0", "cni-podman*", "flannel.*", "flannel-wg", "vxlan.calico",
    "vxlan-v6.calico", "tunl0", "wireguard.cali", "wg-v6.cali", "cilium_*", "lxc*",
    "docker0", "br-*", "veth*", "weave", "vethwe*", "kube-bridge", "antrea-gw0", "ovn-k8s-*",
)
MODES = ("report", "audit", "enforce")
BACKENDS = ("auto", "iptables", "nftables", "python-iptables")
DEFAULT_FAILSAFE = (("tcp", 22),)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(settings_load.SettingsError):
    """One clear line: '<file>: <key>: <problem>'."""


#: A Kubernetes node name (DNS-1123 subdomain): it goes into API paths and report names.
_DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def node_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > 253 or not _DNS1123.fullmatch(value) \
            or any(len(label) > 63 for label in value.split(".")):
        shown = value if isinstance(value, str) and len(value) <= 64 else "the value"
        raise ConfigError(f"{where}: {shown!r} is not a valid node name (DNS-1123: lowercase "
                          f"letters, digits, '-' and '.', at most 253 characters)")
    return value


@dataclass(frozen=True)
class Suppression:
    id: str
    reason: str
    port: int | None = None
    component: str | None = None

    def matches(self, finding_id: str, port: int | None, component: str) -> bool:
        return (self.id == finding_id
                and (self.port is None or self.port == port)
                and (self.component is None or self.component == component))


@dataclass(frozen=True)
class Config:
    node_name: str = ""
    node_cidrs: tuple[IPNetwork, ...] = ()
    pod_cidrs: tuple[IPNetwork, ...] = ()
    pod_interfaces: tuple[str, ...] = DEFAULT_POD_INTERFACES
    failsafe_ports: tuple[tuple[str, int], ...] = DEFAULT_FAILSAFE
    mode: str = "report"
    backend: str = "auto"
    suppress: tuple[Suppression, ...] = ()
    catalog: catalog_mod.Catalog = field(default_factory=catalog_mod.load_default)
    interval: float = 60.0
    metrics_address: str = "127.0.0.1:9737"
    firewall: bool = True  # evaluate every socket through the live ruleset (NW2xx)
    auth_probe: bool = True  # probe components' sockets on loopback (nodeward.collect.auth)
    #: rules read per scan past which the firewall stage stops parsing and reports itself
    #: partial (NW206): memory stays bounded on a runaway ruleset
    firewall_max_rules: int = 260_000
    sections: Mapping[str, Any] = field(default_factory=dict)
    source: str = "<defaults>"

    def section(self, key: str) -> Any:
        """The parsed settings of a nested section (see SECTIONS), or its defaults."""
        if key in self.sections:
            return self.sections[key]
        return _section_module(key).DEFAULT


# -- field parsers: each takes (value, where) and raises ConfigError ----------------------


def section_mapping(value: Any, where: str, keys: Sequence[str]) -> Mapping[str, Any]:
    """A nested section's value: absent is empty; anything but a mapping, or a key not in
    `keys`, is the one-line error."""
    v = value if value is not None else {}
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = set(v) - set(keys)
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} "
                          f"(known: {', '.join(keys)})")
    return v


def parse_cidrs(value: Any, where: str) -> tuple[IPNetwork, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of CIDRs")
    out = []
    for item in value:
        try:
            out.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise ConfigError(f"{where}: {item!r} is not a valid CIDR") from None
    return tuple(out)


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string")
    return value


def _globs(value: Any, where: str) -> tuple[str, ...]:
    from . import nfquote

    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: expected a list of interface name patterns")
    try:
        return tuple(nfquote.check_ifglob(v, where) for v in value)
    except nfquote.UnsafeText as e:
        raise ConfigError(str(e)) from None


def parse_port_spec(text: Any, where: str) -> tuple[str, int]:
    """'tcp/22' -> ('tcp', 22)."""
    if not isinstance(text, str) or "/" not in text:
        raise ConfigError(f"{where}: {text!r} is not a port like 'tcp/22'")
    proto, _, port = text.partition("/")
    number = settings_load.port(port)
    if proto not in ("tcp", "udp") or not number:
        raise ConfigError(f"{where}: {text!r} is not a port like 'tcp/22'")
    return proto, number


def _ports(value: Any, where: str) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list like ['tcp/22']")
    return tuple(parse_port_spec(v, where) for v in value)


def _choice(options: tuple[str, ...]):
    def parse(value: Any, where: str) -> str:
        if value not in options:
            raise ConfigError(f"{where}: {value!r} is not one of {'|'.join(options)}")
        return value
    return parse


def _suppress(value: Any, where: str) -> tuple[Suppression, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of {{id, port?, component?, reason}}")
    out = []
    for n, item in enumerate(value):
        here = f"{where}[{n}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{here}: expected a mapping with id and reason")
        unknown = set(item) - {"id", "port", "component", "reason"}
        if unknown:
            raise ConfigError(f"{here}: unknown key {sorted(unknown)[0]!r}")
        if not isinstance(item.get("id"), str) or not item["id"]:
            raise ConfigError(f"{here}.id: required (a finding ID such as NW101)")
        from .findings import registry

        if item["id"] not in registry():
            raise ConfigError(f"{here}.id: unknown finding ID {item['id']!r} "
                              "(`nodeward explain --all` lists them)")
        reason = item.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise ConfigError(f"{here}.reason: required: say why this finding is accepted")
        port = item.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                 or not 1 <= port <= 65535):
            raise ConfigError(f"{here}.port: {port!r} is not a port number")
        comp = item.get("component")
        if comp is not None and not isinstance(comp, str):
            raise ConfigError(f"{here}.component: expected a component name")
        out.append(Suppression(item["id"], reason.strip(), port, comp))
    return tuple(out)


def _catalog(value: Any, where: str) -> catalog_mod.Catalog:
    try:
        return catalog_mod.Catalog.from_entries(value, where, catalog_mod.load_default())
    except catalog_mod.CatalogError as e:
        raise ConfigError(str(e)) from None


def _interval(value: Any, where: str) -> float:
    return float(number(value, where, 1, 86400, unit="of seconds"))


def number(value: Any, where: str, minimum: float, maximum: float, integer: bool = False,
           unit: str = "") -> float:
    """settings_load.number raising ConfigError: finite, in range, never NaN/Inf."""
    try:
        return settings_load.number(value, where, minimum, maximum, integer, unit)
    except settings_load.SettingsError as e:
        raise ConfigError(str(e)) from None


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false")
    return value


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected a whole number >= 1")
    return value


def _hostport(value: Any, where: str) -> str:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{where}: expected HOST:PORT, e.g. 127.0.0.1:9737")
    host, _, port = value.rpartition(":")
    if settings_load.port(port) is None:
        raise ConfigError(f"{where}: {value!r} has no valid port")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ConfigError(f"{where}: {host!r} is not an IP address") from None
    return value


def _hostname_as_node_name(hostname: str) -> str:
    """The hostname made a DNS-1123 name (lowercase, other characters to '-'): a bare
    machine with `my_host` as its hostname must still scan, with a safe name."""
    name = re.sub(r"[^a-z0-9.-]", "-", hostname.lower())
    name = ".".join(label.strip("-")[:63] for label in name.split(".") if label.strip("-"))
    return name[:253].rstrip(".-") or "localhost"


PARSERS = {
    "node_name": _str,
    "node_cidrs": parse_cidrs,
    "pod_cidrs": parse_cidrs,
    "pod_interfaces": _globs,
    "failsafe_ports": _ports,
    "mode": _choice(MODES),
    "backend": _choice(BACKENDS),
    "suppress": _suppress,
    "catalog": _catalog,
    "interval": _interval,
    "metrics_address": _hostport,
    "firewall": _bool,
    "auth_probe": _bool,
    "firewall_max_rules": _count,
}


#: Nested sections owned by the feature that uses them: each module has
#: `parse(value, where) -> settings` (raising ConfigError) and `DEFAULT`. Imported only when
#: the key is used, so a feature's dependencies load only where it is configured.
SECTIONS = {
    "enforce": "nodeward.enforce.settings",
    "cluster": "nodeward.cluster_settings",
    "daemon": "nodeward.daemon_settings",
    "verify": "nodeward.policy.verify_settings",
}


def _section_module(key: str) -> Any:
    import importlib

    return importlib.import_module(SECTIONS[key])


def from_mapping(data: Any, source: str) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level")
    kwargs: dict[str, Any] = {"source": source}
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            sections[key] = _section_module(key).parse(value, f"{source}: {key}")
            continue
        parser = PARSERS.get(key)
        if parser is None:
            known = ", ".join([*PARSERS, *SECTIONS])
            raise ConfigError(f"{source}: {key}: unknown key (known: {known})")
        kwargs[key] = parser(value, f"{source}: {key}")
    kwargs["sections"] = sections
    env = os.environ.get(NODE_NAME_ENV)
    if env:
        kwargs["node_name"] = node_name(env, NODE_NAME_ENV)
    elif kwargs.get("node_name"):
        kwargs["node_name"] = node_name(kwargs["node_name"], f"{source}: node_name")
    else:  # the kubelet's default node name is the lowercased hostname
        kwargs["node_name"] = _hostname_as_node_name(socket.gethostname())
    return Config(**kwargs)


def load(path: str | None) -> Config:
    """Load `path`; with None, the default path if it exists, else the defaults. Every
    limit of settings_load applies (size, depth, aliases, UTF-8, regular file)."""
    explicit = path is not None
    p = str(path or DEFAULT_PATH)
    try:
        data = settings_load.load_file(p)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{p}: no such file") from None
        return from_mapping({}, "<defaults>")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    except settings_load.SettingsError as e:
        raise ConfigError(str(e)) from None
    return from_mapping(data, p)
