"""The `daemon` config section: what `nodeward run` does besides scanning.

    daemon:
      full_report_every: 10        # cycles between full reports (every finding re-logged)
      sink:                         # optional central HTTP collector
        url: https://collector.example/v1/findings
        token_file: /etc/nodeward/sink-token
        ca_file: /etc/nodeward/sink-ca.pem      # default: system CAs
        spool_dir: /var/lib/nodeward/spool
        spool_max_bytes: 16777216
        batch_size: 500
        timeout: 10                 # seconds for a whole request (a trickling reply too)
        stall_after: 600            # /healthz unhealthy when nothing delivered this long
        max_backoff: 60             # longest pause between retries
      probe_peers:                  # cross-node verification
        enabled: false
        peers:                      # cluster nodes to probe (until the cluster view lists them)
          - {name: worker-2, addresses: [10.0.0.12]}
        every: 5                    # probe every N cycles
        ports: [tcp/10250, tcp/10255, tcp/2379, tcp/2380, tcp/6443]
        timeout: 1.0
        max_per_second: 20
      policy_report: false          # write a ClusterPolicyReport per node
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from .config import ConfigError, number, parse_port_spec


@dataclass(frozen=True)
class SinkSettings:
    url: str
    token_file: str = ""
    ca_file: str = ""
    spool_dir: str = "/var/lib/nodeward/spool"
    spool_max_bytes: int = 16 * 1024 * 1024
    batch_size: int = 500
    timeout: float = 10.0
    stall_after: float = 600.0
    max_backoff: float = 60.0


@dataclass(frozen=True)
class ProbeSettings:
    enabled: bool = False
    ports: tuple[tuple[str, int], ...] = (
        ("tcp", 10250), ("tcp", 10255), ("tcp", 2379), ("tcp", 2380), ("tcp", 6443),
        ("tcp", 10257), ("tcp", 10259), ("tcp", 4149))
    timeout: float = 1.0
    max_per_second: float = 20.0
    peers: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, addresses)
    every: int = 5


@dataclass(frozen=True)
class DaemonSettings:
    full_report_every: int = 10
    sink: SinkSettings | None = None
    probe_peers: ProbeSettings = field(default_factory=ProbeSettings)
    policy_report: bool = False


DEFAULT = DaemonSettings()


def _mapping(value: Any, where: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = set(value) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    return value


def _number(value: Any, where: str, minimum: float, integer: bool = False,
            maximum: float = 1e9) -> float:
    return number(value, where, minimum, maximum, integer)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string")
    return value


def _sink(value: Any, where: str) -> SinkSettings:
    v = _mapping(value, where, {f for f in SinkSettings.__dataclass_fields__})
    url = v.get("url")
    parsed = urlparse(url) if isinstance(url, str) else None
    try:
        port_ok = parsed is not None and (parsed.port is None or parsed.port > 0)
    except ValueError:  # ':99999' or ':²'
        port_ok = False
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname \
            or not port_ok or not url.isascii() or any(c in url for c in " \r\n\t"):
        raise ConfigError(f"{where}.url: expected an http(s) URL")  # never echo: credentials
    kw: dict[str, Any] = {"url": url}
    for key in ("token_file", "ca_file", "spool_dir"):
        if key in v:
            kw[key] = _string(v[key], f"{where}.{key}")
    if "spool_max_bytes" in v:
        kw["spool_max_bytes"] = int(_number(v["spool_max_bytes"], f"{where}.spool_max_bytes",
                                            4096, integer=True))
    if "batch_size" in v:
        kw["batch_size"] = int(_number(v["batch_size"], f"{where}.batch_size", 1, integer=True))
    if "timeout" in v:
        kw["timeout"] = float(_number(v["timeout"], f"{where}.timeout", 0.1, maximum=3600))
    for key in ("stall_after", "max_backoff"):
        if key in v:
            kw[key] = float(_number(v[key], f"{where}.{key}", 0.5, maximum=86400))
    return SinkSettings(**kw)


def _probe(value: Any, where: str) -> ProbeSettings:
    v = _mapping(value, where, {"enabled", "ports", "timeout", "max_per_second", "peers",
                                "every"})
    kw: dict[str, Any] = {}
    if "enabled" in v:
        if not isinstance(v["enabled"], bool):
            raise ConfigError(f"{where}.enabled: expected true or false")
        kw["enabled"] = v["enabled"]
    if "ports" in v:
        if not isinstance(v["ports"], list):
            raise ConfigError(f"{where}.ports: expected a list like ['tcp/10250']")
        kw["ports"] = tuple(parse_port_spec(p, f"{where}.ports") for p in v["ports"])
    if "timeout" in v:
        kw["timeout"] = float(_number(v["timeout"], f"{where}.timeout", 0.05, maximum=60))
    if "max_per_second" in v:
        kw["max_per_second"] = float(_number(v["max_per_second"], f"{where}.max_per_second",
                                             0.1, maximum=100000))
    if "every" in v:
        kw["every"] = int(_number(v["every"], f"{where}.every", 1, integer=True))
    if "peers" in v:
        kw["peers"] = _peers(v["peers"], f"{where}.peers")
    return ProbeSettings(**kw)


def _peers(value: Any, where: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of {{name, addresses}}")
    out = []
    for n, item in enumerate(value):
        here = f"{where}[{n}]"
        m = _mapping(item, here, {"name", "addresses"})
        name = m.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{here}.name: required")
        addrs = m.get("addresses")
        if not isinstance(addrs, list) or not addrs:
            raise ConfigError(f"{here}.addresses: expected a non-empty list of IP addresses")
        for a in addrs:
            try:
                ipaddress.ip_address(str(a))
            except ValueError:
                raise ConfigError(f"{here}.addresses: {a!r} is not an IP address") from None
        out.append((name, tuple(str(a) for a in addrs)))
    return tuple(out)


def parse(value: Any, where: str) -> DaemonSettings:
    v = _mapping(value or {}, where, {"full_report_every", "sink", "probe_peers",
                                      "policy_report"})
    kw: dict[str, Any] = {}
    if "full_report_every" in v:
        kw["full_report_every"] = int(_number(v["full_report_every"],
                                              f"{where}.full_report_every", 1, integer=True))
    if v.get("sink") is not None:
        kw["sink"] = _sink(v["sink"], f"{where}.sink")
    if "probe_peers" in v:
        kw["probe_peers"] = _probe(v["probe_peers"], f"{where}.probe_peers")
    if "policy_report" in v:
        if not isinstance(v["policy_report"], bool):
            raise ConfigError(f"{where}.policy_report: expected true or false")
        kw["policy_report"] = v["policy_report"]
    return DaemonSettings(**kw)
