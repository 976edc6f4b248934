"""The `enforce` config section: who may reach each protected component, and the safety net.

    enforce:
      control_plane: [10.0.0.0/24]        # API servers: may reach kubelet 10250 (+ etcd)
      etcd_members: [10.0.0.0/24]         # may reach etcd 2379/2380 (default: control_plane)
      allow:                              # extra sources per catalog component
        kube-apiserver: [192.0.2.0/24]    #   e.g. admin networks, or a pod CIDR on purpose
        kubelet: [10.244.7.0/24]          #   e.g. metrics-server's pods
      api_server: 10.0.0.10:6443          # cut-off check and post-apply health check
      metadata_addresses: [169.254.169.254, fd00:ec2::254]
      metadata_allow: [10.244.3.0/24]     # pod CIDRs that may reach the metadata service
      confirm_timeout: 0                  # seconds; >0: roll back unless healthy in time
      probes: [10.0.0.11:10250]           # more HOST:PORT that must connect after apply
      ipv6: auto                          # IPv6 rules when the node serves IPv6; false
                                          #   only on purpose (plan/apply then list every
                                          #   IPv6 path left open and need --allow-open-ipv6)
      log_rate: 10                        # audit log lines per second (counters count all)
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import nfquote, settings_load
from ..config import ConfigError, parse_cidrs, section_mapping

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class EnforceSettings:
    control_plane: tuple[IPNetwork, ...] = ()
    etcd_members: tuple[IPNetwork, ...] | None = None  # None: same as control_plane
    allow: Mapping[str, tuple[IPNetwork, ...]] = field(default_factory=dict)
    api_server: tuple[IPAddress, int] | None = None
    metadata_addresses: tuple[IPAddress, ...] = (
        ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"))
    metadata_allow: tuple[IPNetwork, ...] = ()
    confirm_timeout: float = 0.0
    probes: tuple[tuple[IPAddress, int], ...] = ()
    ipv6: bool | None = None  # None: auto (see plan.families_for)
    log_rate: int = 10

    @property
    def etcd_sources(self) -> tuple[IPNetwork, ...]:
        return self.control_plane if self.etcd_members is None else self.etcd_members


DEFAULT = EnforceSettings()
KEYS = ("control_plane", "etcd_members", "allow", "api_server", "metadata_addresses",
        "metadata_allow", "confirm_timeout", "probes", "ipv6", "log_rate")


def hostport(value: Any, where: str) -> tuple[IPAddress, int]:
    """'10.0.0.1:6443' or '[fd00::1]:6443' -> (address, port)."""
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{where}: expected HOST:PORT with an IP address, e.g. 10.0.0.1:6443")
    host, _, port = value.rpartition(":")
    number = settings_load.port(port)
    if not number:
        raise ConfigError(f"{where}: {value!r} has no valid port")
    try:
        return ipaddress.ip_address(host.strip("[]")), number
    except ValueError:
        raise ConfigError(f"{where}: {host!r} is not an IP address") from None


def parse(value: Any, where: str) -> EnforceSettings:
    v = section_mapping(value, where, KEYS)
    kw: dict[str, Any] = {}
    for key in ("control_plane", "etcd_members", "metadata_allow"):
        if key in v:
            kw[key] = parse_cidrs(v[key], f"{where}.{key}")
    if "allow" in v:
        allow = v["allow"]
        if not isinstance(allow, Mapping):
            raise ConfigError(f"{where}.allow: expected a mapping of component name to CIDRs")
        out = {}
        for name, cidrs in allow.items():
            if not isinstance(name, str) or not nfquote.NAME.match(name):
                raise ConfigError(f"{where}.allow: {name!r} is not a component name")
            out[name] = parse_cidrs(cidrs, f"{where}.allow.{name}")
        kw["allow"] = out
    if v.get("api_server") is not None:
        kw["api_server"] = hostport(v["api_server"], f"{where}.api_server")
    if "metadata_addresses" in v:
        addrs = v["metadata_addresses"]
        if not isinstance(addrs, list):
            raise ConfigError(f"{where}.metadata_addresses: expected a list of IP addresses")
        try:
            kw["metadata_addresses"] = tuple(ipaddress.ip_address(str(a)) for a in addrs)
        except ValueError as e:
            raise ConfigError(f"{where}.metadata_addresses: {e}") from None
    if "confirm_timeout" in v:
        t = v["confirm_timeout"]
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) \
                or not 0 <= t <= 3600:
            raise ConfigError(f"{where}.confirm_timeout: expected seconds between 0 and 3600")
        kw["confirm_timeout"] = float(t)
    if "probes" in v:
        if not isinstance(v["probes"], list):
            raise ConfigError(f"{where}.probes: expected a list of HOST:PORT")
        kw["probes"] = tuple(hostport(p, f"{where}.probes") for p in v["probes"])
    if "ipv6" in v:
        if not (isinstance(v["ipv6"], bool) or v["ipv6"] == "auto"):
            raise ConfigError(f"{where}.ipv6: expected auto, true or false")
        kw["ipv6"] = None if v["ipv6"] == "auto" else v["ipv6"]
    if "log_rate" in v:
        r = v["log_rate"]
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= 10000:
            raise ConfigError(f"{where}.log_rate: expected an integer between 1 and 10000")
        kw["log_rate"] = r
    return EnforceSettings(**kw)
