"""Agent configuration: a YAML file whose every key is optional.

The keys, their defaults, checks and docs are the table in nodeward.settings_table; this
module loads a file and applies what is not in the file: the node name from the environment
or the hostname. Anything malformed is a ConfigError whose one-line message names the file,
the key and the problem; the CLI turns it into exit code 2 before anything (least of all a
firewall rule) changes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
from typing import Any

from . import settings_load
from .settings_schema import ConfigError, NodeName
from .settings_table import (
    BACKENDS,
    DEFAULT_POD_INTERFACES,
    MODES,
    SECTIONS,
    TOP,
    Config,
    Suppression,
)

__all__ = ["BACKENDS", "DEFAULT_POD_INTERFACES", "MODES", "SECTIONS", "Config", "ConfigError",
           "Suppression", "from_mapping", "load", "parse_cidrs"]

DEFAULT_PATH = "/etc/nodeward/config.yaml"
NODE_NAME_ENV = "NODEWARD_NODE_NAME"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidrs(value: Any, where: str) -> tuple[IPNetwork, ...]:
    """A list of CIDRs checked as `node_cidrs` is (for code and tests that build a Config)."""
    return TOP.by_name["node_cidrs"].kind.parse(value, where)


def _hostname_as_node_name(hostname: str) -> str:
    """The hostname made a DNS-1123 name (lowercase, other characters to '-'): a bare
    machine with `my_host` as its hostname must still scan, with a safe name."""
    name = re.sub(r"[^a-z0-9.-]", "-", hostname.lower())
    name = ".".join(label.strip("-")[:63] for label in name.split(".") if label.strip("-"))
    return name[:253].rstrip(".-") or "localhost"


def from_mapping(data: Any, source: str) -> Config:
    cfg = TOP.parse(data, source)
    env = os.environ.get(NODE_NAME_ENV)
    if env:
        name = NodeName().parse(env, NODE_NAME_ENV)
    else:  # the kubelet's default node name is the lowercased hostname
        name = cfg.node_name or _hostname_as_node_name(socket.gethostname())
    return dataclasses.replace(cfg, node_name=name, source=source)


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
