"""The `daemon` config section: what `nodeward run` does besides scanning (a full report
every N cycles, the HTTP sink, cross-node probes, the PolicyReport). Its keys, defaults and
checks are nodeward.settings_table.DAEMON (docs/settings.md)."""

from __future__ import annotations

from .settings_table import DAEMON, DaemonSettings, ProbeSettings, SinkSettings

__all__ = ["DEFAULT", "DaemonSettings", "ProbeSettings", "SinkSettings", "parse"]

DEFAULT = DaemonSettings()
parse = DAEMON.parse
