"""The `verify` config section (CLI options override it, lists add to it).

    verify:
      metadata: [169.254.169.254:80]     # metadata endpoints pods must not reach
      expect_open: [10.96.0.10:53]       # every probed pod must connect here
      expect_blocked: [10.0.0.5:5432]    # no probed pod may connect here
      max_pods: 20                       # namespaces probed per run
      timeout: 1.0                       # seconds until a connect counts as dropped
      rate: 20                           # new connections per second per namespace
      max_targets: 64                    # connections per namespace
      ipv6: false                        # also probe the node's IPv6 addresses
"""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass, replace
from typing import Any

from ..config import ConfigError, section_mapping


@dataclass(frozen=True)
class VerifySettings:
    metadata: tuple[tuple[str, int], ...] = (("169.254.169.254", 80),)
    expect_open: tuple[tuple[str, int], ...] = ()
    expect_blocked: tuple[tuple[str, int], ...] = ()
    max_pods: int = 20
    timeout: float = 1.0
    rate: float = 20.0
    max_targets: int = 64
    ipv6: bool = False


DEFAULT = VerifySettings()
KEYS = ("metadata", "expect_open", "expect_blocked", "max_pods", "timeout", "rate",
        "max_targets", "ipv6")
#: (key, low, high): bounded so a typo cannot make verify hammer a node for hours.
_NUMBERS = {"max_pods": (1, 1000), "timeout": (0.05, 30), "rate": (0.1, 1000),
            "max_targets": (1, 1024)}


def hostport(value: Any, where: str) -> tuple[str, int]:
    """'10.0.0.1:6443' or '[fd00::1]:6443' -> ('10.0.0.1', 6443): IP addresses only (a
    name would be resolved inside the pod, by the pod's resolver)."""
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{where}: {value!r}: expected HOST:PORT with an IP address")
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{where}: {value!r} has no valid port (1-65535)")
    try:
        return str(ipaddress.ip_address(host.strip("[]"))), int(port)
    except ValueError:
        raise ConfigError(f"{where}: {host!r} is not an IP address") from None


def _number(key: str, value: Any, label: str) -> float:
    lo, hi = _NUMBERS[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ConfigError(f"{label}: expected a number between {lo} and {hi}")
    return value


def parse(value: Any, where: str) -> VerifySettings:
    v = section_mapping(value, where, KEYS)
    kw: dict[str, Any] = {}
    for key in ("metadata", "expect_open", "expect_blocked"):
        if key in v:
            if not isinstance(v[key], list):
                raise ConfigError(f"{where}.{key}: expected a list of HOST:PORT")
            kw[key] = tuple(hostport(x, f"{where}.{key}") for x in v[key])
    for key in _NUMBERS:
        if key in v:
            n = _number(key, v[key], f"{where}.{key}")
            kw[key] = int(n) if key in ("max_pods", "max_targets") else float(n)
    if "ipv6" in v:
        if not isinstance(v["ipv6"], bool):
            raise ConfigError(f"{where}.ipv6: expected true or false")
        kw["ipv6"] = v["ipv6"]
    return VerifySettings(**kw)


def merged(vs: VerifySettings, args: argparse.Namespace) -> VerifySettings:
    """CLI over config: --metadata replaces, --expect-* add, numbers override."""
    kw: dict[str, Any] = {}
    if args.metadata:
        kw["metadata"] = tuple(args.metadata)
    if args.expect_open:
        kw["expect_open"] = vs.expect_open + tuple(args.expect_open)
    if args.expect_blocked:
        kw["expect_blocked"] = vs.expect_blocked + tuple(args.expect_blocked)
    for key in ("max_pods", "timeout", "rate"):
        value = getattr(args, key)
        if value is not None:
            kw[key] = _number(key, value, "--" + key.replace("_", "-"))
    return replace(vs, **kw)
