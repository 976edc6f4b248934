"""Assemble an immutable NodeSnapshot from the read-only collectors.

This is the only place the report path touches the live system (sockets, processes,
addresses, and the netfilter ruleset); everything after it (checks, reporters) works on
the snapshot alone.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from operator import attrgetter
from typing import Any

from .collect.addresses import collect_interfaces
from .collect.auth import ProbeCache, collect_auth
from .collect.procs import OwnerMemo, attribute
from .collect.ruleset import (
    DEFAULT_MAX_RULES,
    ParseCache,
    RulesetUnavailable,
    collect_ruleset,
    has_net_admin,
)
from .collect.sockets import collect_sockets
from .config import Config
from .gcpause import paused_gc
from .model import NodeSnapshot, Socket
from .ruleset.errors import RulesetParseError
from .ruleset.model import Problem, Ruleset
from .scope import classify


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def take_snapshot(config: Config, force_procfs: bool = False, firewall: bool | None = None,
                  ruleset_cache: ParseCache | None = None,
                  ruleset: Ruleset | None = None, auth_probe: bool = False,
                  auth_cache: ProbeCache | None = None,
                  owner_memo: OwnerMemo | None = None) -> NodeSnapshot:
    """`firewall` (default: config.firewall) also reads the live ruleset, unless `ruleset`
    is given (a saved dump); a daemon passes one ParseCache for its lifetime so an
    unchanged ruleset is not parsed again, and one OwnerMemo so each socket's owner is
    checked where it was found last cycle instead of walked for again. `auth_probe` (scan
    and daemon pass config.auth_probe; enforcement commands leave it off: they need no
    authentication evidence and must not add traffic) probes component sockets on
    loopback; a daemon's ProbeCache probes a socket at most once per ProbeCache.every
    seconds."""
    with paused_gc():
        snap = _take_snapshot(config, force_procfs, owner_memo)
        auth, auth_notes = collect_auth(snap.sockets, config.catalog,
                                        probe_sockets=auth_probe, cache=auth_cache,
                                        identities=snap.identities)
        snap = replace(snap, auth=auth, notes=snap.notes + tuple(auth_notes))
        if ruleset is not None:
            snap = replace(snap, ruleset=ruleset, notes=snap.notes + ruleset.notes)
        elif config.firewall if firewall is None else firewall:
            ruleset, problems = read_ruleset(ruleset_cache,
                                             max_rules=config.firewall_max_rules)
            notes = ruleset.notes if ruleset is not None else \
                tuple(f"firewall not evaluated: {p}" for p in problems)
            snap = replace(snap, ruleset=ruleset, notes=snap.notes + notes,
                           ruleset_unavailable=problems)
        return snap


def add_cluster(snap: NodeSnapshot, settings: Any, view: Any = None,
                derived: Any = None) -> NodeSnapshot:
    """The snapshot with the cluster's facts (collect stage: the cluster view, or `view`
    when the daemon watches it, plus WireGuard/xfrm/routes as the expected encryption
    needs), their collector notes and the derived settings. Checks then read one
    snapshot, node and cluster alike."""
    from .clusterscan import collect_cluster_scan

    scan = collect_cluster_scan(settings, snap, view=view, derived=derived)
    return replace(snap, cluster=scan, notes=snap.notes + tuple(scan.notes),
                   derived=scan.derived.summary())


def read_ruleset(cache: ParseCache | None = None,
                 net_admin: bool | None = None, max_rules: int = DEFAULT_MAX_RULES,
                 ) -> tuple[Ruleset | None, tuple[Problem, ...]]:
    """The live ruleset, or None and why (Problems, each an NW206 finding) when it cannot
    be read. `net_admin` (default: this process's CapEff) False: not even tried, since
    without CAP_NET_ADMIN some front-ends print an empty ruleset instead of failing."""
    if net_admin is None:
        net_admin = has_net_admin()
    if net_admin is False:
        return None, (Problem("ruleset", "no CAP_NET_ADMIN: netfilter cannot be read (run "
                                         "as root or grant CAP_NET_ADMIN)"),)
    try:
        rs = collect_ruleset(cache=cache, max_rules=max_rules)
    except RulesetUnavailable as e:
        return None, (Problem(e.source, str(e)),)
    except RulesetParseError as e:
        return None, (Problem(e.source, e.message, e.line),)
    return rs, ()


def _take_snapshot(config: Config, force_procfs: bool,
                   owner_memo: OwnerMemo | None = None) -> NodeSnapshot:
    interfaces = collect_interfaces(config.pod_interfaces)
    raw, source, notes = collect_sockets(force_procfs=force_procfs)
    procs, proc_notes, gaps = attribute((s.inode for s in raw), owner_memo)
    by_index = {i.index: i for i in interfaces}
    sockets = []
    scopes: dict[tuple, tuple] = {}  # thousands of sockets, a handful of bind addresses
    for r in raw:
        key = (r.address, r.ifindex)
        hit = scopes.get(key)
        if hit is None:
            hit = scopes[key] = classify(r.address, interfaces, config.node_cidrs,
                                         by_index.get(r.ifindex) if r.ifindex else None)
        scope, iface = hit
        sockets.append(Socket(
            protocol=r.protocol, family=r.family, address=r.address, port=r.port,
            inode=r.inode, uid=r.uid,
            interface=by_index[r.ifindex].name if r.ifindex in by_index else "",
            process=procs.get(r.inode), scope=scope, scope_interface=iface, v6only=r.v6only,
        ))
    sockets.sort(key=attrgetter("protocol", "port", "family", "address"))
    catalog = config.catalog
    return NodeSnapshot(
        node=config.node_name, scanned_at=now_rfc3339(), sockets=tuple(sockets),
        interfaces=tuple(interfaces), socket_source=source, notes=tuple(notes + proc_notes),
        identities={s: catalog.identify(s.protocol, s.port, s.process) for s in sockets},
        attribution=gaps,
    )
