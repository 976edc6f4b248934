"""The `cluster` config section (see nodeward.collect.cluster.ClusterSettings).

Absent means "no cluster checks": a bare machine is not a node with an unknown cluster."""

from __future__ import annotations

from typing import Any

from .collect.cluster import ClusterSettings
from .config import ConfigError, node_name

DEFAULT: ClusterSettings | None = None


def parse(value: Any, where: str) -> ClusterSettings:
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping")
    try:
        settings = ClusterSettings.from_dict(value)
    except ValueError as e:
        raise ConfigError(f"{where}.{e}") from None
    if settings.node_name:
        node_name(settings.node_name, f"{where}.node_name")
    return settings
